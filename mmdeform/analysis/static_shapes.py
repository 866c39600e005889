"""Feature-map sizes as Python ints while a detector is traced, exported or FLOP-counted.

The encoder and the two-stage proposal generator read the level sizes back
from the ``spatial_shapes`` tensor with ``.tolist()``. Eagerly that is free;
under ``torch.export`` (fake tensors) it makes data-dependent sizes that the
exporter cannot resolve, and under FLOP counting with fake tensors there is
no data to read. :func:`static_spatial_shapes` records each level's
(H_l, W_l) from the feature maps the encoder receives (static for a fixed
input size) and, while open, gives those two functions the recorded ints
instead of the tensor's values. The model's modules are not changed; the
patched functions are restored on exit.
"""
from contextlib import ExitStack, contextmanager
from typing import Iterator, List, Tuple
from unittest import mock

import torch

from mmdeform.models.encoders import deformable_encoder
from mmdeform.models.query_generators import two_stage_proposals


class _RecordedShapes:
    """Stands in for the (L, 2) ``spatial_shapes`` tensor where only its
    values (``tolist()``) are read."""

    def __init__(self, shapes: List[Tuple[int, int]], spatial_shapes: torch.Tensor):
        if spatial_shapes.shape[0] != len(shapes):
            raise RuntimeError(f'static_spatial_shapes: recorded {len(shapes)} levels but '
                               f'spatial_shapes has {spatial_shapes.shape[0]} rows')
        self.shapes = shapes

    def tolist(self) -> List[List[int]]:
        return [list(shape) for shape in self.shapes]


@contextmanager
def static_spatial_shapes(model: torch.nn.Module) -> Iterator[List[Tuple[int, int]]]:
    """Serve the level sizes of ``model.encoder``'s input as Python ints.

    Args:
        model (nn.Module): A ``DeformableDETR`` (its ``encoder`` receives the
            list of level feature maps first).

    Yields:
        list[tuple[int, int]]: (H_l, W_l) of the latest forward pass.
    """
    shapes: List[Tuple[int, int]] = []

    def record(module, args, kwargs):
        feats = args[0] if args else kwargs['feats']
        shapes[:] = [(int(feat.shape[-2]), int(feat.shape[-1])) for feat in feats]

    def with_recorded(function):
        def wrapper(first, spatial_shapes, *args, **kwargs):
            return function(first, _RecordedShapes(shapes, spatial_shapes), *args, **kwargs)
        return wrapper

    def reference_points(spatial_shapes, valid_ratios):
        return original_reference_points(_RecordedShapes(shapes, spatial_shapes), valid_ratios)

    original_reference_points = deformable_encoder.get_encoder_reference_points
    handle = model.encoder.register_forward_pre_hook(record, with_kwargs=True)
    with ExitStack() as stack:
        stack.callback(handle.remove)
        stack.enter_context(mock.patch.object(
            deformable_encoder, 'get_encoder_reference_points', reference_points))
        stack.enter_context(mock.patch.object(
            two_stage_proposals, 'make_proposals',
            with_recorded(two_stage_proposals.make_proposals)))
        yield shapes
