"""``RefineDeformableDecoder``: decoder with iterative box refinement."""
from typing import Optional

import torch
from torch import nn

from mmdeform.registry import MODELS

from ..layers.utils import boxes_from_reference
from ..stage_outputs import DecoderOutput, EncoderOutput
from .deformable_decoder import DeformableDecoder


@MODELS.register_module()
class RefineDeformableDecoder(DeformableDecoder):
    """Deformable decoder that refines its reference boxes after every layer.

    After layer l, ``delta = reg_branches[l](output)`` updates the reference
    in logit space: ``sigmoid(delta + inverse_sigmoid(ref))`` for a box, or,
    for a 2-d point, ``sigmoid(delta)`` with ``inverse_sigmoid(ref)`` added
    to the (x, y) logits only (so the first box's w, h come from ``delta``
    alone). The new reference is detached: gradients reach a branch only
    through the head's own use of it, never through later references.

    The branches are those of the head (the detector passes them; they are
    not owned here), so parameters are shared visibly. Arguments are those of
    ``DeformableDecoder``.
    """

    refines_references = True

    def update_reference(self, layer_index: int, output: torch.Tensor,
                         reference_points: torch.Tensor,
                         reg_branches: Optional[nn.ModuleList]) -> torch.Tensor:
        """Refined, detached reference for the next layer.

        Args:
            layer_index (int): Index l of the layer that produced ``output``.
            output (Tensor): (B, Q, C) that layer's output.
            reference_points (Tensor): (B, Q, 2|4) reference it received.
            reg_branches (nn.ModuleList): per-layer box branches (C -> 4).

        Returns:
            Tensor: (B, Q, 4) cxcywh boxes in (0, 1), detached.
        """
        delta = reg_branches[layer_index](output)
        if delta.shape[-1] != 4:
            raise ValueError(f'RefineDeformableDecoder: reg_branches[{layer_index}] must '
                             f'output 4 values per query, got {tuple(delta.shape)}')
        return boxes_from_reference(delta, reference_points).detach()

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, encoder_output: EncoderOutput,
                reg_branches: Optional[nn.ModuleList] = None) -> DecoderOutput:
        """Run the layers, refining the reference after each.

        Args:
            query (Tensor): (B, Q, C) content queries.
            query_pos (Tensor): (B, Q, C) positional queries.
            reference_points (Tensor): (B, Q, 2) points or (B, Q, 4) cxcywh
                boxes, normalized to the un-padded image.
            encoder_output (EncoderOutput): the encoder's output.
            reg_branches (nn.ModuleList): required; ``num_layers`` box
                branches mapping (B, Q, C) -> (B, Q, 4) logit-space deltas
                (the head's per-layer regression branches).

        Returns:
            DecoderOutput: hidden_states (num_layers, B, Q, C) and references:
            the initial reference, then the refined (detached) (B, Q, 4)
            boxes that layers 1.. received.
        """
        if reg_branches is None:
            raise ValueError('RefineDeformableDecoder: reg_branches is required (the head\'s '
                             f'{self.num_layers} per-layer box branches), got None')
        if len(reg_branches) != self.num_layers:
            raise ValueError(f'RefineDeformableDecoder: expected {self.num_layers} '
                             f'reg_branches (one per layer), got {len(reg_branches)}')
        return super().forward(query, query_pos, reference_points, encoder_output,
                               reg_branches)
