"""Inference API (``init_detector``, ``inference_detector``, saving results) and the
synthetic-data experiment (``run_demo``, ``train_and_evaluate``)."""
from .inference import (
    LoadImageOrArray,
    add_model_arguments,
    build_inference_pipeline,
    dataset_meta_from_config,
    inference_detector,
    init_detector,
    init_detector_from_args,
    load_checkpoint_weights,
    prepare_inputs,
    same_size_batches,
)
from .results import IMAGE_EXTENSIONS, detections_to_dict, infer_and_save, list_images
from .synthetic_experiment import build_synthetic_config, run_demo, train_and_evaluate

__all__ = ['IMAGE_EXTENSIONS', 'LoadImageOrArray', 'add_model_arguments',
           'build_inference_pipeline', 'build_synthetic_config', 'dataset_meta_from_config',
           'detections_to_dict',
           'infer_and_save', 'inference_detector', 'init_detector', 'init_detector_from_args',
           'list_images', 'load_checkpoint_weights', 'prepare_inputs', 'run_demo',
           'same_size_batches', 'train_and_evaluate']
