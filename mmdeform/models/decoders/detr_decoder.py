"""``DetrDecoder``: DETR's own decoder (Carion et al., 2020), without reference points."""
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from ..layers import DenseDecoderLayer, check_dense_layer_cfg, init_dense_transformer
from ..stage_outputs import DecoderOutput, EncoderOutput
from .dense_decoder import check_dense_decoder_inputs

# The reference whose inverse sigmoid is 0: boxes_from_reference(delta, 0.5) = sigmoid(delta).
NEUTRAL_REFERENCE = 0.5


@MODELS.register_module()
class DetrDecoder(BaseModule):
    """DETR's decoder: learned positional queries, content from zero, direct boxes.

    What makes it DETR's and not Deformable DETR's with dense attention
    (``DenseDecoder``):

    - the content queries start at zero; the object queries are the learned
      positional queries ``query_pos`` alone (the query generator's content
      queries and reference points are not used, so with ``LearnedQueries``
      its content half and reference-point layer get no gradient);
    - no reference points: the box of a query is ``sigmoid(MLP(hidden))``,
      DETR's head, with no anchor. The head decodes
      ``sigmoid(delta + inverse_sigmoid(reference))``; this decoder reports
      the reference 0.5 (inverse sigmoid 0) for every layer, so the shared
      head computes exactly ``sigmoid(delta)``. Nothing in the head changes:
      the references are this decoder's output, as for every decoder;
    - a LayerNorm shared by all layers is applied to every layer's output
      (DETR's decoder ``norm``, used on the intermediate outputs too).

    Each layer is DETR's post-norm layer (``DenseDecoderLayer``):
    self-attention over the queries, cross-attention to every un-padded
    memory token (keys = memory + memory_pos), FFN.

    Args:
        num_layers (int): Number of decoder layers.
        embed_dims (int): Channels C; the detector passes the neck's
            ``out_channels``.
        num_levels (int): Feature levels L of the memory; checked against
            ``encoder_output.spatial_shapes``, not used by the attention.
        layer_cfg (dict, optional): Keyword arguments of ``DenseDecoderLayer``
            except ``embed_dims``: ``num_heads`` (8), ``feedforward_dims``
            (1024), ``dropout`` (0.1).
        init_cfg (dict, optional): mmengine init config, applied by
            ``init_weights`` after DETR's initialization (Xavier, dim > 1).
    """

    refines_references = False  # no references to refine: the head may share its branches

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, num_levels: int = 1,
                 layer_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        layer_cfg = check_dense_layer_cfg(layer_cfg, 'DetrDecoder', embed_dims)
        if num_layers < 1:
            raise ValueError(f'DetrDecoder: num_layers must be >= 1, got {num_layers}')
        self.num_layers = num_layers
        self.num_levels = num_levels
        self.embed_dims = embed_dims
        self.layers = nn.ModuleList(DenseDecoderLayer(**layer_cfg) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dims)
        init_dense_transformer(self)

    def init_weights(self) -> None:
        """DETR's initialization (Xavier for dim > 1), then ``init_cfg``."""
        init_dense_transformer(self)
        super().init_weights()

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, encoder_output: EncoderOutput,
                reg_branches: Optional[nn.ModuleList] = None) -> DecoderOutput:
        """Run the layers from zero content queries.

        Args:
            query (Tensor): (B, Q, C) content queries; only the shape is used
                (DETR's content starts at zero).
            query_pos (Tensor): (B, Q, C) learned positional queries (the
                object queries).
            reference_points (Tensor): (B, Q, 2|4); only the shape is used.
            encoder_output (EncoderOutput): memory (B, S, C), memory_pos
                (B, S, C) (required), padding_mask (B, S), spatial_shapes (L, 2).
            reg_branches (nn.ModuleList, optional): ignored (nothing to
                refine); accepted so that every decoder has one interface.

        Returns:
            DecoderOutput: hidden_states (num_layers, B, Q, C), each layer's
            output after the shared norm, and references: num_layers
            tensors shaped like ``reference_points``, filled with 0.5.
        """
        check_dense_decoder_inputs('DetrDecoder', self, query, query_pos, reference_points,
                                   encoder_output)
        output = torch.zeros_like(query)
        hidden_states = []
        for layer in self.layers:
            output = layer(output, query_pos, encoder_output.memory, encoder_output.memory_pos,
                           encoder_output.padding_mask)
            hidden_states.append(self.norm(output))
        neutral = torch.full_like(reference_points, NEUTRAL_REFERENCE)
        return DecoderOutput(hidden_states=torch.stack(hidden_states),
                             references=[neutral] * self.num_layers)
