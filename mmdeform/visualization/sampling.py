"""Where deformable attention looks: sampling points of chosen queries, in image pixels.

:func:`capture_sampling` registers forward hooks on the ``MSDeformAttn``
modules and, from each call's own inputs, calls ``module.sampling(query,
reference_points, spatial_shapes)`` again to get the sampling locations and
attention weights that the call used (the same linear layers on the same
inputs). The modules are not changed and nothing is computed outside the
context, so the normal path stays as fast as before.

Coordinates. ``MSDeformAttn`` receives reference points already multiplied
by each level's valid ratio ``r_l = (valid_w_l / W_l, valid_h_l / H_l)``:
its locations are normalized to the level's *padded* map (x = 1 at the right
edge of the W_l-th cell). The model's own frame is the valid region of the
level, which it identifies with the whole un-padded image (reference points
and boxes are normalized to the image). So a location ``(x, y)`` of level
``l`` is the image pixel

    (x / r_l.x * image_w, y / r_l.y * image_h)

in continuous pixel coordinates (the left edge of pixel column 0 is 0, its
centre 0.5), in the original image when ``image_w, image_h`` is
``ori_shape`` (the normalized frame is resize-invariant). Without padding
(single images, ``inference_detector``) every ``r_l`` is 1. Where the image
size is not a multiple of a level's stride the level's last cell covers
fewer pixels than a stride; this mapping follows the model's frame, not the
stride geometry (they differ by less than one stride).
"""
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmdeform.models.encoders import get_valid_ratios
from mmdeform.ops import MSDeformAttn
from mmdeform.structures import DetDataSample


@dataclass
class SamplingRecord:
    """What one ``MSDeformAttn`` call sampled.

    Attributes:
        locations (Tensor): (N, Lq, M, L, P, 2) normalized (x, y) in each
            level's padded map.
        weights (Tensor): (N, Lq, M, L, P) attention weights (softmax over
            L*P per head).
        reference_points (Tensor): (N, Lq, L, 2|4) the references it got
            (points or cxcywh boxes, scaled by the valid ratios).
        spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).
        valid_ratios (Tensor): (N, L, 2) float32 (x, y), from the value
            padding mask (ones without a mask).
    """
    locations: torch.Tensor
    weights: torch.Tensor
    reference_points: torch.Tensor
    spatial_shapes: torch.Tensor
    valid_ratios: torch.Tensor


@dataclass
class QuerySampling:
    """One query's sampling points in image pixels, ready to draw.

    Attributes:
        reference_xy (np.ndarray): (2,) reference point (x, y).
        points_xy (np.ndarray): (M, L, P, 2) sampling points (x, y).
        weights (np.ndarray): (M, L, P) attention weights.
        label (str): Text drawn next to it.
        box_xyxy (np.ndarray, optional): (4,) detection box.
    """
    reference_xy: np.ndarray
    points_xy: np.ndarray
    weights: np.ndarray
    label: str = ''
    box_xyxy: Optional[np.ndarray] = None


def attention_module_names(model: torch.nn.Module, prefix: str) -> List[str]:
    """Names of the ``MSDeformAttn`` modules under ``prefix`` (e.g.
    ``'encoder'``, ``'decoder'``), in execution order."""
    return [name for name, module in model.named_modules()
            if isinstance(module, MSDeformAttn) and name.startswith(prefix + '.')]


def level_valid_ratios(padding_mask: Optional[torch.Tensor], spatial_shapes: torch.Tensor,
                       batch_size: int) -> torch.Tensor:
    """(N, L, 2) float32 valid ratios of each level from a (N, S) token mask."""
    shapes = [tuple(s) for s in spatial_shapes.tolist()]
    if padding_mask is None:
        return torch.ones(batch_size, len(shapes), 2, device=spatial_shapes.device)
    ratios, start = [], 0
    for height, width in shapes:
        # (N, H*W) -> (N, H, W)
        level_mask = padding_mask[:, start:start + height * width].view(-1, height, width)
        ratios.append(get_valid_ratios(level_mask))
        start += height * width
    return torch.stack(ratios, 1)


@contextmanager
def capture_sampling(model: torch.nn.Module, module_names: Optional[Sequence[str]] = None
                     ) -> Iterator[Dict[str, SamplingRecord]]:
    """Record the sampling of ``MSDeformAttn`` modules while the context is open.

    Args:
        model (nn.Module): Any model holding ``MSDeformAttn`` modules.
        module_names (Sequence[str], optional): Modules to watch (names of
            ``model.named_modules()``); default all of them.

    Yields:
        dict[str, SamplingRecord]: filled by each call (the last call of a
        module wins).
    """
    modules = {name: m for name, m in model.named_modules() if isinstance(m, MSDeformAttn)}
    names = list(modules) if module_names is None else list(module_names)
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise KeyError(f'capture_sampling: no MSDeformAttn named {unknown}; '
                       f'the model has {list(modules)}')
    records: Dict[str, SamplingRecord] = {}

    def make_hook(name):
        def hook(module, args, kwargs, output):
            inputs = inspect.signature(module.forward).bind(*args, **kwargs).arguments
            with torch.no_grad():
                locations, weights = module.sampling(
                    inputs['query'], inputs['reference_points'], inputs['spatial_shapes'])
            records[name] = SamplingRecord(
                locations=locations, weights=weights,
                reference_points=inputs['reference_points'].detach(),
                spatial_shapes=inputs['spatial_shapes'],
                valid_ratios=level_valid_ratios(inputs.get('value_padding_mask'),
                                                inputs['spatial_shapes'],
                                                inputs['query'].shape[0]))
        return hook

    handles = [modules[name].register_forward_hook(make_hook(name), with_kwargs=True)
               for name in names]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def to_image_pixels(points: torch.Tensor, valid_ratios: torch.Tensor,
                    image_wh: Tuple[float, float]) -> np.ndarray:
    """Normalized per-level locations -> image pixels (module docstring).

    Args:
        points (Tensor): (..., L, P, 2) normalized (x, y), level axis -3.
        valid_ratios (Tensor): (L, 2) valid ratios (x, y) of one image.
        image_wh (tuple): (width, height) of the target image in pixels.

    Returns:
        np.ndarray: (..., L, P, 2) float64 pixel coordinates (x, y).
    """
    ratios = valid_ratios.detach().double().cpu()[:, None, :]  # (L, 1, 2)
    size = torch.tensor(image_wh, dtype=torch.float64)
    return (points.detach().double().cpu() / ratios * size).numpy()


@dataclass
class SamplingRun:
    """One inference with the sampling of one encoder and one decoder layer.

    Attributes:
        sample (DetDataSample): The detections (``pred_instances``).
        encoder (SamplingRecord): The chosen encoder layer's self-attention.
        decoder (SamplingRecord): The chosen decoder layer's cross-attention.
        logits (Tensor): (Q, K) last decoder layer's class logits.
    """
    sample: DetDataSample
    encoder: SamplingRecord
    decoder: SamplingRecord
    logits: torch.Tensor


def detection_queries(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Query index of each detection of the head's top-k post-processing.

    The head keeps the top-k of ``sigmoid(logits)`` over all (query, class)
    pairs, flattened as ``query * K + class``; the same top-k is taken here
    and checked against the detections' scores.

    Args:
        logits (Tensor): (Q, K) last layer's logits of one image.
        scores (Tensor): (k,) the detections' scores, sorted.

    Returns:
        Tensor: (k,) int64 query indices.
    """
    top_scores, index = logits.sigmoid().flatten().topk(len(scores))
    if not torch.allclose(top_scores, scores.to(top_scores)):
        raise RuntimeError('detection_queries: the detections are not the top-k of the '
                           'last layer (a different post-processing?)')
    return index // logits.shape[-1]


def detection_sampling(run: SamplingRun, topk: int = 3, score_thr: float = 0.0,
                       classes: Optional[Sequence[str]] = None) -> List[QuerySampling]:
    """Decoder sampling points of the ``topk`` best detections with score >=
    ``score_thr``, in original image pixels. The reference point of a box
    reference is its centre."""
    pred = run.sample.pred_instances
    queries = detection_queries(run.logits, pred.scores)
    ori_h, ori_w = run.sample.ori_shape[:2]
    ratios = run.decoder.valid_ratios[0]
    chosen = []
    for k in range(min(topk, len(pred.scores))):
        score = float(pred.scores[k])
        if score < score_thr:
            break
        q, label = int(queries[k]), int(pred.labels[k])
        name = classes[label] if classes else f'class {label}'
        reference = run.decoder.reference_points[0, q, :, None, :2]  # (L, 1, 2)
        chosen.append(QuerySampling(
            reference_xy=to_image_pixels(reference, ratios, (ori_w, ori_h))[0, 0],
            points_xy=to_image_pixels(run.decoder.locations[0, q], ratios, (ori_w, ori_h)),
            weights=run.decoder.weights[0, q].detach().double().cpu().numpy(),
            label=f'{name} {score:.2f} (query {q})',
            box_xyxy=pred.bboxes[k].detach().double().cpu().numpy()))
    return chosen


def encoder_pixel_sampling(run: SamplingRun, point_xy: Tuple[float, float],
                           level: int = 0) -> QuerySampling:
    """Encoder sampling points of the level-``level`` token whose cell holds
    the original-image pixel ``point_xy`` (x, y)."""
    record = run.encoder
    shapes = [tuple(s) for s in record.spatial_shapes.tolist()]
    if not 0 <= level < len(shapes):
        raise IndexError(f'encoder_pixel_sampling: level {level} out of range '
                         f'({len(shapes)} levels)')
    ori_h, ori_w = run.sample.ori_shape[:2]
    x, y = point_xy
    if not (0 <= x < ori_w and 0 <= y < ori_h):
        raise ValueError(f'encoder_pixel_sampling: point {point_xy} is outside the '
                         f'{ori_w}x{ori_h} image')
    height, width = shapes[level]
    ratios = record.valid_ratios[0]
    valid_w = max(int(round(float(ratios[level, 0]) * width)), 1)
    valid_h = max(int(round(float(ratios[level, 1]) * height)), 1)
    # cell of the pixel in the level's valid region (the image)
    col = min(int(x / ori_w * valid_w), valid_w - 1)
    row = min(int(y / ori_h * valid_h), valid_h - 1)
    token = sum(h * w for h, w in shapes[:level]) + row * width + col
    reference = record.reference_points[0, token, :, None, :2]  # (L, 1, 2)
    return QuerySampling(
        reference_xy=to_image_pixels(reference, ratios, (ori_w, ori_h))[level, 0],
        points_xy=to_image_pixels(record.locations[0, token], ratios, (ori_w, ori_h)),
        weights=record.weights[0, token].detach().double().cpu().numpy(),
        label=f'level {level} cell ({row}, {col})')

