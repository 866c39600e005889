"""Named outputs of the detector's stages.

Conventions: masks are True at padding; boxes are normalized to the valid
(un-padded) image region; ``cxcywh`` / ``xyxy`` in a name gives the format.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch


@dataclass
class EncoderOutput:
    """What the encoder hands to query generation and the decoder.

    Attributes:
        memory (Tensor): (B, S, C) encoded tokens of all levels, flattened
            row-major per level, levels concatenated.
        padding_mask (Tensor): (B, S) bool, True at padded tokens.
        spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l), for the op.
        level_start_index (Tensor): (L,) int64 first token of each level.
        valid_ratios (Tensor): (B, L, 2) float32 valid fraction (x, y) of
            each level (un-padded width / W_l, height / H_l).
        memory_pos (Tensor, optional): (B, S, C) position encoding of every
            memory token, level embedding included (what the encoder added
            to its attention queries); needed by decoders whose keys are the
            memory tokens (``DenseDecoder``).
        spatial_shapes_list (list[tuple[int, int]], optional): the same L
            pairs (H_l, W_l) as Python ints, for code that loops over the
            levels (two-stage proposals). The encoders fill it from the
            feature maps' shapes, so nothing reads sizes back from the
            tensor and the model traces, exports and FLOP-counts with fake
            tensors as it is. Left out, it is read from ``spatial_shapes``
            (eager only).
    """
    memory: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor
    memory_pos: Optional[torch.Tensor] = None
    spatial_shapes_list: Optional[List[Tuple[int, int]]] = None

    def __post_init__(self):
        if self.spatial_shapes_list is None:
            self.spatial_shapes_list = [(int(h), int(w)) for h, w in self.spatial_shapes.tolist()]
        elif len(self.spatial_shapes_list) != self.spatial_shapes.shape[0]:
            raise ValueError(
                f'EncoderOutput: spatial_shapes_list has {len(self.spatial_shapes_list)} '
                f'levels but spatial_shapes has {self.spatial_shapes.shape[0]} rows')


@dataclass
class QueryOutput:
    """Decoder inputs made by a query generator.

    Attributes:
        query (Tensor): (B, Q, C) content queries (the decoder's ``tgt``).
        query_pos (Tensor): (B, Q, C) positional queries.
        reference_points (Tensor): (B, Q, 2) normalized (x, y) points or
            (B, Q, 4) normalized cxcywh boxes; no gradient flows into them
            from later layers when they come from proposals.
        enc_logits (Tensor, optional): (B, S, num_classes) two-stage
            proposal classification of every encoder token.
        enc_boxes_cxcywh (Tensor, optional): (B, S, 4) two-stage proposal
            boxes (sigmoid space) of every encoder token.
    """
    query: torch.Tensor
    query_pos: torch.Tensor
    reference_points: torch.Tensor
    enc_logits: Optional[torch.Tensor] = None
    enc_boxes_cxcywh: Optional[torch.Tensor] = None


@dataclass
class DecoderOutput:
    """Per-layer decoder outputs.

    Attributes:
        hidden_states (Tensor): (num_layers, B, Q, C) output of every layer.
        references (list[Tensor]): num_layers tensors, the reference each
            layer received: (B, Q, 2) points or (B, Q, 4) cxcywh boxes
            (un-scaled by valid ratios). Entry 0 is the initial reference.
    """
    hidden_states: torch.Tensor
    references: List[torch.Tensor]


@dataclass
class HeadOutput:
    """Predictions of every decoder layer (last layer last).

    Attributes:
        logits (Tensor): (num_layers, B, Q, num_classes) raw class logits.
        boxes_cxcywh (Tensor): (num_layers, B, Q, 4) normalized boxes.
    """
    logits: torch.Tensor
    boxes_cxcywh: torch.Tensor
