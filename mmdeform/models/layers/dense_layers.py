"""Post-norm layers of DETR's dense transformer (Carion et al., 2020).

The baseline of Deformable DETR's ablations: every query attends to every
key with ``nn.MultiheadAttention`` (batch-first). Inner pieces built by
``DenseEncoder`` / ``DenseDecoder``, not registered. Names follow the
deformable layers (``self_attn``, ``cross_attn``, ``*_norm``, ``ffn``).
"""
from typing import Optional

import torch
from torch import nn

from .transformer_layers import FFN
from .utils import stage_layer_cfg

DENSE_LAYER_KEYS = ('embed_dims', 'num_heads', 'feedforward_dims', 'dropout')


def check_dense_layer_cfg(layer_cfg: Optional[dict], owner: str, embed_dims: int) -> dict:
    """``layer_cfg`` with ``embed_dims`` added, after rejecting keys the dense layers do not take.

    Args:
        layer_cfg (dict, optional): keyword arguments of a dense layer,
            without ``embed_dims`` (the stage owns it).
        owner (str): class name of the encoder / decoder, named in errors.
        embed_dims (int): channels C, given by the stage to every layer.

    Returns:
        dict: the keyword arguments of every layer.
    """
    layer_cfg = stage_layer_cfg(owner, layer_cfg, embed_dims=embed_dims)
    if 'num_levels' in layer_cfg:
        raise ValueError(f'{owner}: give num_levels to {owner}, not in layer_cfg')
    unknown = sorted(set(layer_cfg) - set(DENSE_LAYER_KEYS))
    if unknown:
        raise ValueError(f'{owner}: layer_cfg has unknown keys {unknown} (dense attention has '
                         f'no sampling points or attention config); allowed: '
                         f'{[key for key in DENSE_LAYER_KEYS if key != "embed_dims"]}')
    return layer_cfg


class DenseEncoderLayer(nn.Module):
    """DETR encoder layer: full self-attention, then FFN (post-norm).

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Attention heads.
        feedforward_dims (int): Hidden channels of the FFN.
        dropout (float): Dropout in the attention weights, after the
            attention and inside the FFN.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_dims: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout,
                                               batch_first=True)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.self_attn_norm = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, feedforward_dims, dropout)
        self.ffn_norm = nn.LayerNorm(embed_dims)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor,
                padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Update every token (padded ones included) from all un-padded tokens.

        Args:
            query (Tensor): (B, S, C) tokens of all levels; also the values.
            query_pos (Tensor): (B, S, C) position encoding, added to the
                attention queries and keys, not to the values.
            padding_mask (Tensor, optional): (B, S) bool, True at padded
                tokens, which are never attended to.

        Returns:
            Tensor: (B, S, C) updated tokens.
        """
        query_with_pos = query + query_pos
        attn_out = self.self_attn(query_with_pos, query_with_pos, query,
                                  key_padding_mask=padding_mask, need_weights=False)[0]
        query = self.self_attn_norm(query + self.self_attn_dropout(attn_out))
        return self.ffn_norm(query + self.ffn(query))


class DenseDecoderLayer(nn.Module):
    """DETR decoder layer: self-attention, full cross-attention, FFN (post-norm).

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads of both attentions.
        feedforward_dims (int): Hidden channels of the FFN.
        dropout (float): Dropout in the attention weights, after each
            attention and inside the FFN.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_dims: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.embed_dims = embed_dims
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout,
                                               batch_first=True)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.self_attn_norm = nn.LayerNorm(embed_dims)
        self.cross_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout,
                                                batch_first=True)
        self.cross_attn_dropout = nn.Dropout(dropout)
        self.cross_attn_norm = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, feedforward_dims, dropout)
        self.ffn_norm = nn.LayerNorm(embed_dims)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor,
                memory_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Update the object queries.

        Args:
            query (Tensor): (B, Q, C) content queries.
            query_pos (Tensor): (B, Q, C) positional queries, added to the
                queries and keys of self-attention and to the cross-attention
                queries, never to values.
            memory (Tensor): (B, S, C) encoder output (cross-attention values).
            memory_pos (Tensor): (B, S, C) position encoding of the memory,
                added to the cross-attention keys.
            memory_padding_mask (Tensor, optional): (B, S) bool, True at
                padded memory tokens, which are never attended to.

        Returns:
            Tensor: (B, Q, C) updated queries.
        """
        query_with_pos = query + query_pos
        attn_out = self.self_attn(query_with_pos, query_with_pos, query,
                                  need_weights=False)[0]
        query = self.self_attn_norm(query + self.self_attn_dropout(attn_out))
        attn_out = self.cross_attn(query + query_pos, memory + memory_pos, memory,
                                   key_padding_mask=memory_padding_mask,
                                   need_weights=False)[0]
        query = self.cross_attn_norm(query + self.cross_attn_dropout(attn_out))
        return self.ffn_norm(query + self.ffn(query))
