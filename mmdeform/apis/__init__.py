"""Inference API (``init_detector``, ``inference_detector``, saving results, recording the
attention sampling of one image)."""
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
from .sampling import run_with_sampling, visualize_sampling

__all__ = ['IMAGE_EXTENSIONS', 'LoadImageOrArray', 'add_model_arguments',
           'build_inference_pipeline', 'dataset_meta_from_config', 'detections_to_dict',
           'infer_and_save', 'inference_detector', 'init_detector', 'init_detector_from_args',
           'list_images', 'load_checkpoint_weights', 'prepare_inputs', 'run_with_sampling',
           'same_size_batches', 'visualize_sampling']
