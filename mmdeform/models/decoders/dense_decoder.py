"""``DenseDecoder``: DETR's decoder (full cross-attention to the memory)."""
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from ..layers import DenseDecoderLayer, check_dense_layer_cfg, init_dense_transformer
from ..stage_outputs import DecoderOutput, EncoderOutput
from .deformable_decoder import check_decoder_inputs


def check_dense_decoder_inputs(owner: str, decoder: nn.Module, query: torch.Tensor,
                               query_pos: torch.Tensor, reference_points: torch.Tensor,
                               encoder_output: EncoderOutput) -> None:
    """Input checks of the decoders with dense cross-attention (``DenseDecoder``,
    ``DetrDecoder``): the shared decoder checks, a memory_pos shaped like the memory
    (the keys are memory + memory_pos) and ``decoder.num_levels`` levels.

    Raises:
        ValueError: naming ``owner`` and the offending input.
    """
    memory, memory_pos = encoder_output.memory, encoder_output.memory_pos
    check_decoder_inputs(owner, decoder.embed_dims, query, query_pos, reference_points, memory)
    if memory_pos is None:
        raise ValueError(f'{owner}: encoder_output.memory_pos is None; the dense '
                         'cross-attention needs the position encoding of the memory '
                         '(filled by DeformableEncoder and DenseEncoder)')
    if memory_pos.shape != memory.shape:
        raise ValueError(f'{owner}: encoder_output.memory_pos must have the shape of '
                         f'memory {tuple(memory.shape)}, got {tuple(memory_pos.shape)}')
    if encoder_output.spatial_shapes.shape[0] != decoder.num_levels:
        raise ValueError(f'{owner}: built for num_levels={decoder.num_levels} but '
                         f'encoder_output.spatial_shapes has '
                         f'{encoder_output.spatial_shapes.shape[0]} rows')


@MODELS.register_module()
class DenseDecoder(BaseModule):
    """Post-norm DETR decoder with the interface of ``DeformableDecoder``.

    Each layer: self-attention over the queries, cross-attention from every
    query to every un-padded memory token (keys = memory + memory_pos,
    values = memory), FFN. The reference points take no part in the
    attention and stay fixed: ``DecoderOutput.references`` repeats the input
    reference for every layer, as ``DeformableDecoder`` does, and the head
    still predicts boxes relative to it. In the ablations, a model with this
    decoder therefore differs from Deformable DETR in the attention only.
    There is no final LayerNorm (DETR has one, Deformable DETR does not).

    Args:
        num_layers (int): Number of decoder layers.
        embed_dims (int): Channels C, given to every layer; the detector passes
            the neck's ``out_channels``.
        num_levels (int): Feature levels L of the memory; the attention does
            not use it, it is checked against ``encoder_output.spatial_shapes``
            (interface symmetry with ``DeformableDecoder``).
        layer_cfg (dict, optional): Keyword arguments of
            ``DenseDecoderLayer`` except ``embed_dims``: ``num_heads`` (8),
            ``feedforward_dims`` (1024), ``dropout`` (0.1). Other keys
            (``num_points``, ``cross_attn_cfg``, ``num_levels``) are an error.
        init_cfg (dict, optional): mmengine init config, applied by
            ``init_weights`` after DETR's initialization (Xavier, dim > 1).
    """

    refines_references = False  # fixed references: the head may share its branches

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, num_levels: int = 1,
                 layer_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        layer_cfg = check_dense_layer_cfg(layer_cfg, 'DenseDecoder', embed_dims)
        if num_layers < 1:
            raise ValueError(f'DenseDecoder: num_layers must be >= 1, got {num_layers}')
        self.num_layers = num_layers
        self.num_levels = num_levels
        self.layers = nn.ModuleList(DenseDecoderLayer(**layer_cfg) for _ in range(num_layers))
        self.embed_dims = embed_dims
        init_dense_transformer(self)

    def init_weights(self) -> None:
        """DETR's initialization (Xavier for dim > 1), then ``init_cfg``."""
        init_dense_transformer(self)
        super().init_weights()

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, encoder_output: EncoderOutput,
                reg_branches: Optional[nn.ModuleList] = None) -> DecoderOutput:
        """Run the layers over the encoder memory.

        Args:
            query (Tensor): (B, Q, C) content queries.
            query_pos (Tensor): (B, Q, C) positional queries.
            reference_points (Tensor): (B, Q, 2) points (x, y) or (B, Q, 4)
                cxcywh boxes, normalized to the un-padded image; not used by
                the attention, only passed on in ``references``.
            encoder_output (EncoderOutput): memory (B, S, C), memory_pos
                (B, S, C) (required), padding_mask (B, S) and spatial_shapes
                (L, 2).
            reg_branches (nn.ModuleList, optional): ignored (the references
                stay fixed); accepted so that every decoder has the same
                interface.

        Returns:
            DecoderOutput: hidden_states (num_layers, B, Q, C) and references,
            num_layers times the input ``reference_points``.
        """
        check_dense_decoder_inputs('DenseDecoder', self, query, query_pos, reference_points,
                                   encoder_output)
        hidden_states = []
        output = query
        for layer in self.layers:
            output = layer(output, query_pos, encoder_output.memory, encoder_output.memory_pos,
                           encoder_output.padding_mask)
            hidden_states.append(output)
        return DecoderOutput(hidden_states=torch.stack(hidden_states),
                             references=[reference_points] * self.num_layers)
