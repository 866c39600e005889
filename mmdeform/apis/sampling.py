"""Detect objects in one image and record where deformable attention looked
(the pipeline of ``tools/visualize_sampling.py``).

The capture and the mapping to image pixels are in
:mod:`mmdeform.visualization.sampling`, the drawing in
:mod:`mmdeform.visualization.sampling_plot`; this module runs the detector.
"""
import os.path as osp
from typing import List, Optional, Tuple

import mmcv
import torch

from mmdeform.visualization.sampling import (
    SamplingRun,
    attention_module_names,
    capture_sampling,
    detection_sampling,
    encoder_pixel_sampling,
)
from mmdeform.visualization.sampling_plot import plot_sampling

from .inference import inference_detector


def run_with_sampling(model: torch.nn.Module, image, encoder_layer: int = -1,
                      decoder_layer: int = -1) -> SamplingRun:
    """Detect objects in one image (path or BGR array, see
    :func:`~mmdeform.apis.inference_detector`) and record the sampling of
    encoder layer ``encoder_layer`` and decoder layer ``decoder_layer``
    (default: the last ones)."""
    names = []
    for prefix, index in (('encoder', encoder_layer), ('decoder', decoder_layer)):
        candidates = attention_module_names(model, prefix)
        if not candidates:
            raise ValueError(f'run_with_sampling: the model has no MSDeformAttn under {prefix}')
        try:
            names.append(candidates[index])
        except IndexError:
            raise IndexError(f'run_with_sampling: {prefix} layer {index} out of range '
                             f'({len(candidates)} layers)') from None
    head_outputs = []
    handle = model.bbox_head.register_forward_hook(
        lambda module, args, output: head_outputs.append(output))
    try:
        with capture_sampling(model, names) as records:
            sample = inference_detector(model, image)
    finally:
        handle.remove()
    return SamplingRun(sample=sample, encoder=records[names[0]], decoder=records[names[1]],
                       logits=head_outputs[-1].logits[-1, 0])


def visualize_sampling(model: torch.nn.Module, image_path: str, out_dir: str, topk: int = 3,
                       score_thr: float = 0.0, layout: str = 'levels',
                       encoder_point: Optional[Tuple[float, float]] = None,
                       encoder_level: int = 0, encoder_layer: int = -1,
                       decoder_layer: int = -1) -> List[str]:
    """Draw the sampling points of one image's best detections and of one
    encoder query.

    Writes ``<out_dir>/<name>_decoder.png``: the ``topk`` detections with
    score >= ``score_thr`` and the sampling points of decoder layer
    ``decoder_layer``'s cross-attention (default the last), and
    ``<out_dir>/<name>_encoder.png``: the encoder layer ``encoder_layer``'s
    self-attention sampling of the level-``encoder_level`` token at pixel
    ``encoder_point`` (x, y) of the original image (default: its centre).

    Returns:
        list[str]: The written files (the decoder one only if some detection
        passed ``score_thr``).
    """
    run = run_with_sampling(model, image_path, encoder_layer, decoder_layer)
    img_rgb = mmcv.imread(image_path)[..., ::-1]
    name = osp.splitext(osp.basename(image_path))[0]
    classes = (model.dataset_meta or {}).get('classes')
    written = []
    detections = detection_sampling(run, topk=topk, score_thr=score_thr, classes=classes)
    if detections:
        written.append(plot_sampling(
            img_rgb, detections, osp.join(out_dir, f'{name}_decoder.png'), layout,
            f'decoder layer {decoder_layer} cross-attention: top {len(detections)} detections'))
    if encoder_point is None:
        height, width = img_rgb.shape[:2]
        encoder_point = (width / 2, height / 2)
    query = encoder_pixel_sampling(run, encoder_point, level=encoder_level)
    written.append(plot_sampling(
        img_rgb, [query], osp.join(out_dir, f'{name}_encoder.png'), layout,
        f'encoder layer {encoder_layer} self-attention: query at pixel '
        f'({encoder_point[0]:.0f}, {encoder_point[1]:.0f})'))
    return written
