"""``DenseEncoder``: DETR's encoder (full self-attention over all tokens)."""
from typing import Optional, Sequence

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from ..layers import DenseEncoderLayer, check_dense_layer_cfg, init_dense_transformer
from ..stage_outputs import EncoderOutput
from .deformable_encoder import (
    check_encoder_inputs,
    flatten_levels,
    get_level_shapes,
    get_level_start_index,
    get_valid_ratios,
)


@MODELS.register_module()
class DenseEncoder(BaseModule):
    """Stack of post-norm dense self-attention layers (DETR, Carion et al. 2020).

    The baseline of Deformable DETR's ablations, with the call contract of
    ``DeformableEncoder``: the levels are flattened the same way and every
    token attends to every un-padded token of every level (cost quadratic in
    S). With ``num_levels > 1`` a learned level embedding is added to each
    level's position encoding, as in ``DeformableEncoder``; with one level
    there is none (DETR).

    Args:
        num_layers (int): Number of encoder layers.
        embed_dims (int): Channels C, given to every layer; the detector passes
            the neck's ``out_channels``.
        num_levels (int): Feature levels L.
        layer_cfg (dict, optional): Keyword arguments of
            ``DenseEncoderLayer`` except ``embed_dims``: ``num_heads`` (8),
            ``feedforward_dims`` (1024), ``dropout`` (0.1). Other keys
            (``num_points``, ``self_attn_cfg``, ``num_levels``) are an error.
        init_cfg (dict, optional): mmengine init config, applied by
            ``init_weights`` after DETR's initialization.
    """

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, num_levels: int = 1,
                 layer_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        layer_cfg = check_dense_layer_cfg(layer_cfg, 'DenseEncoder', embed_dims)
        if num_layers < 1:
            raise ValueError(f'DenseEncoder: num_layers must be >= 1, got {num_layers}')
        if num_levels < 1:
            raise ValueError(f'DenseEncoder: num_levels must be >= 1, got {num_levels}')
        self.num_levels = num_levels
        self.layers = nn.ModuleList(DenseEncoderLayer(**layer_cfg) for _ in range(num_layers))
        self.embed_dims = embed_dims
        if num_levels > 1:
            self.level_embed = nn.Parameter(torch.empty(num_levels, self.embed_dims))
        else:
            self.register_parameter('level_embed', None)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """DETR's init (Xavier for dim > 1), then a normal level embedding."""
        init_dense_transformer(self)
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed)

    def init_weights(self) -> None:
        """DETR's initialization, then ``init_cfg`` (if any) on top."""
        self._reset_parameters()
        super().init_weights()

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                pos_embeds: Sequence[torch.Tensor]) -> EncoderOutput:
        """Encode the (multi-scale) features.

        Args:
            feats (Sequence[Tensor]): L maps (B, C, H_l, W_l).
            masks (Sequence[Tensor]): L bool masks (B, H_l, W_l), True at padding.
            pos_embeds (Sequence[Tensor]): L position encodings (B, C, H_l, W_l),
                in the dtype of ``feats``.

        Returns:
            EncoderOutput: memory (B, S, C), padding_mask (B, S),
            spatial_shapes (L, 2) and spatial_shapes_list (L pairs of ints),
            level_start_index (L,), valid_ratios (B, L, 2) float32 (as
            ``DeformableEncoder``) and memory_pos
            (B, S, C) (position encodings plus level embeddings).
        """
        check_encoder_inputs('DenseEncoder', self.num_levels, self.embed_dims,
                             feats, masks, pos_embeds)
        query, query_pos, padding_mask, spatial_shapes = flatten_levels(
            feats, masks, pos_embeds, self.level_embed)
        valid_ratios = torch.stack([get_valid_ratios(mask) for mask in masks], 1)
        for layer in self.layers:
            query = layer(query, query_pos, padding_mask)
        return EncoderOutput(memory=query, padding_mask=padding_mask,
                             spatial_shapes=spatial_shapes,
                             level_start_index=get_level_start_index(spatial_shapes),
                             valid_ratios=valid_ratios, memory_pos=query_pos,
                             spatial_shapes_list=get_level_shapes(feats))
