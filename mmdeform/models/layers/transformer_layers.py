"""Post-norm layers of the deformable transformer.

These are inner pieces built by the encoder and decoder, not swap points, so
they are not registered. Names of the official model map as follows:

* encoder layer: ``norm1`` -> ``self_attn_norm``, ``norm2`` -> ``ffn_norm``,
  ``linear1/2`` -> ``ffn.linear1/2``;
* decoder layer: ``norm2`` -> ``self_attn_norm``, ``norm1`` ->
  ``cross_attn_norm``, ``norm3`` -> ``ffn_norm``, ``linear1/2`` ->
  ``ffn.linear1/2``; ``self_attn`` and ``cross_attn`` keep their names.
"""
from typing import Optional

import torch
from torch import nn

from mmdeform.ops import MSDeformAttn
from mmdeform.registry import MODELS


def build_deformable_attention(attn_cfg: Optional[dict], embed_dims: int, num_heads: int,
                               num_levels: int, num_points: int, owner: str) -> nn.Module:
    """Build a deformable attention (``MSDeformAttn`` or a subclass) from a config.

    The layer owns the sizes (the argument names of mmcv's
    ``MultiScaleDeformableAttention``): they are filled in here and must not
    appear in the config.

    Args:
        attn_cfg (dict, optional): ``dict(type=...)`` of a registered
            attention taking ``(embed_dims, num_heads, num_levels, num_points)``;
            ``None`` means ``dict(type='MSDeformAttn')``.
        embed_dims (int): Channels C.
        num_heads (int): Heads M.
        num_levels (int): Levels L.
        num_points (int): Points P per head and level.
        owner (str): ``'<Layer>.<argument>'``, named in errors.

    Returns:
        nn.Module: the attention module.
    """
    cfg = dict(type='MSDeformAttn') if attn_cfg is None else dict(attn_cfg)
    if 'type' not in cfg:
        raise ValueError(f"{owner}: the attention config needs a 'type', got {attn_cfg}")
    sizes = dict(embed_dims=embed_dims, num_heads=num_heads, num_levels=num_levels,
                 num_points=num_points)
    for key in sizes:
        if key in cfg:
            raise ValueError(f'{owner}: {key!r} must not be set in the attention config; '
                             f'the layer fills {", ".join(sizes)} from its own arguments')
    return MODELS.build(dict(cfg, **sizes))


class FFN(nn.Module):
    """Two-layer feed-forward block with ReLU, without residual or norm.

    ``dropout(linear2(dropout(relu(linear1(x)))))``; the layer that owns it
    adds the residual and normalizes.

    Args:
        embed_dims (int): Input and output channels C.
        feedforward_dims (int): Hidden channels.
        dropout (float): Dropout after the activation and after ``linear2``.
    """

    def __init__(self, embed_dims: int = 256, feedforward_dims: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        self.linear1 = nn.Linear(embed_dims, feedforward_dims)
        self.activation = nn.ReLU()
        self.hidden_dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_dims, embed_dims)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (Tensor): (..., C). Returns: Tensor: (..., C)."""
        hidden = self.hidden_dropout(self.activation(self.linear1(x)))
        return self.out_dropout(self.linear2(hidden))


class DeformableEncoderLayer(nn.Module):
    """Encoder layer: deformable self-attention, then FFN (post-norm).

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Attention heads.
        num_levels (int): Feature levels L.
        num_points (int): Sampling points per head and level.
        feedforward_dims (int): Hidden channels of the FFN.
        dropout (float): Dropout after attention and inside the FFN.
        self_attn_cfg (dict, optional): Config of the self-attention, a
            registered ``MSDeformAttn`` variant, e.g.
            ``dict(type='SameLevelDeformAttn')``; default
            ``dict(type='MSDeformAttn')``. Its sizes come from this layer, so
            it must not set ``embed_dims``, ``num_heads``, ``num_levels`` or ``num_points``.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, feedforward_dims: int = 1024, dropout: float = 0.1,
                 self_attn_cfg: Optional[dict] = None):
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = build_deformable_attention(
            self_attn_cfg, embed_dims, num_heads, num_levels, num_points,
            owner='DeformableEncoderLayer.self_attn_cfg')
        self.self_attn_dropout = nn.Dropout(dropout)
        self.self_attn_norm = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, feedforward_dims, dropout)
        self.ffn_norm = nn.LayerNorm(embed_dims)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor,
                padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Update every token (padded ones included) from the multi-scale tokens.

        Args:
            query (Tensor): (B, S, C) tokens of all levels; also the values.
            query_pos (Tensor): (B, S, C) position encoding (level embedding
                included), added to the attention query only.
            reference_points (Tensor): (B, S, L, 2) normalized (x, y) points,
                already scaled into each level's valid region; same dtype as
                ``query``.
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).
            level_start_index (Tensor): (L,) int64 first token of each level.
            padding_mask (Tensor, optional): (B, S) bool, True at padded
                tokens; their values are zeroed inside the attention.

        Returns:
            Tensor: (B, S, C) updated tokens.
        """
        attn_out = self.self_attn(query + query_pos, reference_points, query,
                                  spatial_shapes, level_start_index, padding_mask)
        query = self.self_attn_norm(query + self.self_attn_dropout(attn_out))
        return self.ffn_norm(query + self.ffn(query))


class DeformableDecoderLayer(nn.Module):
    """Decoder layer: self-attention, deformable cross-attention, FFN (post-norm).

    ``self_attn`` is a batch-second ``nn.MultiheadAttention`` as in the
    official model (parameters ``in_proj_weight`` with rows q, k, v,
    ``in_proj_bias``, ``out_proj``).

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads of both attentions.
        num_levels (int): Feature levels L of the memory.
        num_points (int): Sampling points per head and level.
        feedforward_dims (int): Hidden channels of the FFN.
        dropout (float): Dropout in the self-attention weights, after each
            attention and inside the FFN.
        cross_attn_cfg (dict, optional): Config of the cross-attention, a
            registered ``MSDeformAttn`` variant, e.g.
            ``dict(type='PerLevelDeformAttn')``; default
            ``dict(type='MSDeformAttn')``. Its sizes come from this layer, so
            it must not set ``embed_dims``, ``num_heads``, ``num_levels`` or ``num_points``.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, feedforward_dims: int = 1024, dropout: float = 0.1,
                 cross_attn_cfg: Optional[dict] = None):
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.self_attn_norm = nn.LayerNorm(embed_dims)
        self.cross_attn = build_deformable_attention(
            cross_attn_cfg, embed_dims, num_heads, num_levels, num_points,
            owner='DeformableDecoderLayer.cross_attn_cfg')
        self.cross_attn_dropout = nn.Dropout(dropout)
        self.cross_attn_norm = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, feedforward_dims, dropout)
        self.ffn_norm = nn.LayerNorm(embed_dims)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                memory_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Update the object queries.

        Args:
            query (Tensor): (B, Q, C) content queries.
            query_pos (Tensor): (B, Q, C) positional queries, added to the
                queries and keys of self-attention and to the cross-attention
                query, never to values.
            reference_points (Tensor): (B, Q, L, 2) points or (B, Q, L, 4)
                cxcywh boxes, already scaled by the valid ratios of each
                level; same dtype as ``memory``.
            memory (Tensor): (B, S, C) encoder output.
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).
            level_start_index (Tensor): (L,) int64 first token of each level.
            memory_padding_mask (Tensor, optional): (B, S) bool, True at
                padded memory tokens.

        Returns:
            Tensor: (B, Q, C) updated queries.
        """
        query_with_pos = query + query_pos
        # (B, Q, C) -> (Q, B, C): the attention is batch-second
        attn_out = self.self_attn(query_with_pos.transpose(0, 1),
                                  query_with_pos.transpose(0, 1),
                                  query.transpose(0, 1))[0].transpose(0, 1)
        query = self.self_attn_norm(query + self.self_attn_dropout(attn_out))
        attn_out = self.cross_attn(query + query_pos, reference_points, memory,
                                   spatial_shapes, level_start_index, memory_padding_mask)
        query = self.cross_attn_norm(query + self.cross_attn_dropout(attn_out))
        return self.ffn_norm(query + self.ffn(query))


def init_dense_transformer(module: nn.Module) -> None:
    """DETR's initialization: Xavier-uniform for every parameter with more
    than one dimension; biases and norms keep their PyTorch defaults.

    Args:
        module (nn.Module): Dense encoder or decoder (also the first step of
            ``init_deformable_transformer``).
    """
    for param in module.parameters():
        if param.dim() > 1:
            nn.init.xavier_uniform_(param)


def init_deformable_transformer(module: nn.Module) -> None:
    """The official transformer initialization, applied to ``module``.

    Xavier-uniform for every parameter with more than one dimension (biases
    and norms keep their PyTorch defaults), then each ``MSDeformAttn``'s own
    ``init_weights()`` (which overrides its Xavier weights); subclasses of
    ``MSDeformAttn`` (the level-restricted variants) get the same init.

    Args:
        module (nn.Module): Encoder or decoder (or any module holding
            deformable transformer layers).
    """
    init_dense_transformer(module)
    for submodule in module.modules():
        if isinstance(submodule, MSDeformAttn):
            submodule.init_weights()  # the paper's init, then its init_cfg
