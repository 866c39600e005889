"""Inference API (``init_detector``, ``inference_detector``, saving results)."""
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

__all__ = ['IMAGE_EXTENSIONS', 'LoadImageOrArray', 'add_model_arguments',
           'build_inference_pipeline', 'dataset_meta_from_config', 'detections_to_dict',
           'infer_and_save', 'inference_detector', 'init_detector', 'init_detector_from_args',
           'list_images', 'load_checkpoint_weights', 'prepare_inputs', 'same_size_batches']
