"""``DeformableEncoder``: the multi-scale deformable transformer encoder."""
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from ..layers import DeformableEncoderLayer, init_deformable_transformer, stage_layer_cfg
from ..stage_outputs import EncoderOutput


def get_valid_ratios(mask: torch.Tensor) -> torch.Tensor:
    """Valid (un-padded) fraction of one level, in float32.

    The counts come from the first row (width) and first column (height) of
    the mask, as in the official model. This is one of its float32 islands:
    the result is float32 whatever the model dtype.

    Args:
        mask (Tensor): (B, H, W) bool, True at padding.

    Returns:
        Tensor: (B, 2) float32 ratios (x, y) = (valid_w / W, valid_h / H).
    """
    _, height, width = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).to(torch.float32)
    valid_w = (~mask[:, 0, :]).sum(1).to(torch.float32)
    return torch.stack([valid_w / width, valid_h / height], -1)


def get_encoder_reference_points(spatial_shapes_list: Sequence[Tuple[int, int]],
                                 valid_ratios: torch.Tensor) -> torch.Tensor:
    """Reference point of every encoder token for every level, in float32.

    The token at cell (i, j) of level l gets the cell centre normalized by the
    valid size of its own level, ``((j + 0.5) / (rx_l * W_l), (i + 0.5) /
    (ry_l * H_l))``; this point is then multiplied by the valid ratios of
    every level. The operations and their order are the official ones (a
    float32 island), so they are not simplified algebraically.

    Args:
        spatial_shapes_list (Sequence[tuple[int, int]]): L pairs (H_l, W_l)
            as Python ints (``EncoderOutput.spatial_shapes_list``).
        valid_ratios (Tensor): (B, L, 2) float32 ratios (x, y).

    Returns:
        Tensor: (B, S, L, 2) float32 normalized (x, y) points.
    """
    device = valid_ratios.device
    points = []
    for level, (height, width) in enumerate(spatial_shapes_list):
        centre_y = torch.arange(height, dtype=torch.float32, device=device) + 0.5
        centre_x = torch.arange(width, dtype=torch.float32, device=device) + 0.5
        grid_y, grid_x = torch.meshgrid(centre_y, centre_x, indexing='ij')
        # (H*W,) -> (B, H*W) normalized by this level's valid size
        ref_y = grid_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        ref_x = grid_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    # (B, S, 1, 2) * (B, 1, L, 2) -> (B, S, L, 2)
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


def check_encoder_inputs(name: str, num_levels: int, embed_dims: int,
                         feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                         pos_embeds: Sequence[torch.Tensor]) -> None:
    """Raise a ValueError naming the bad input of an encoder's ``forward``.

    Args:
        name (str): Encoder class name, used in the messages.
        num_levels (int): Expected number of levels L.
        embed_dims (int): Expected channels C.
        feats, masks, pos_embeds: the encoder's ``forward`` arguments.
    """
    if not len(feats) == len(masks) == len(pos_embeds) == num_levels:
        raise ValueError(
            f'{name}: expected {num_levels} levels of feats, masks and '
            f'pos_embeds, got {len(feats)}, {len(masks)} and {len(pos_embeds)}')
    for level, (feat, mask, pos) in enumerate(zip(feats, masks, pos_embeds)):
        if feat.dim() != 4 or feat.shape[1] != embed_dims:
            raise ValueError(f'{name}: feats[{level}] must be (B, '
                             f'{embed_dims}, H, W), got {tuple(feat.shape)}')
        b, _, h, w = feat.shape
        if mask.shape != (b, h, w) or mask.dtype != torch.bool:
            raise ValueError(f'{name}: masks[{level}] must be bool ({b}, {h}, '
                             f'{w}), got {mask.dtype} {tuple(mask.shape)}')
        if pos.shape != feat.shape:
            raise ValueError(f'{name}: pos_embeds[{level}] must have the shape '
                             f'of feats[{level}] {tuple(feat.shape)}, got {tuple(pos.shape)}')


def get_level_shapes(feats: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
    """(H_l, W_l) of every level, read from the maps' shapes (not from data).

    Args:
        feats (Sequence[Tensor]): L maps (B, C, H_l, W_l).

    Returns:
        list[tuple[int, int]]: L pairs (H_l, W_l), Python ints (symbolic
        sizes under ``torch.compile(dynamic=True)``).
    """
    return [(feat.shape[-2], feat.shape[-1]) for feat in feats]


def flatten_levels(feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                   pos_embeds: Sequence[torch.Tensor], level_embed: Optional[torch.Tensor]
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the levels into one token sequence.

    Args:
        feats (Sequence[Tensor]): L maps (B, C, H_l, W_l).
        masks (Sequence[Tensor]): L bool masks (B, H_l, W_l), True at padding.
        pos_embeds (Sequence[Tensor]): L position encodings (B, C, H_l, W_l).
        level_embed (Tensor, optional): (L, C) added to the position
            encoding of each level's tokens; ``None`` adds nothing.

    Returns:
        tuple: ``query`` (B, S, C) tokens, ``query_pos`` (B, S, C) position
        encodings plus level embeddings, ``padding_mask`` (B, S) bool and
        ``spatial_shapes`` (L, 2) int64 rows (H_l, W_l).
    """
    tokens: List[torch.Tensor] = []
    positions: List[torch.Tensor] = []
    for level, (feat, pos) in enumerate(zip(feats, pos_embeds)):
        # (B, C, H, W) -> (B, H*W, C)
        tokens.append(feat.flatten(2).transpose(1, 2))
        pos = pos.flatten(2).transpose(1, 2)
        if level_embed is not None:
            pos = pos + level_embed[level].view(1, 1, -1)
        positions.append(pos)
    padding_mask = torch.cat([mask.flatten(1) for mask in masks], 1)
    spatial_shapes = torch.as_tensor(get_level_shapes(feats), dtype=torch.long,
                                     device=feats[0].device)
    return torch.cat(tokens, 1), torch.cat(positions, 1), padding_mask, spatial_shapes


def get_level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """First flattened token of each level.

    Args:
        spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).

    Returns:
        Tensor: (L,) int64, ``[0, H_0*W_0, H_0*W_0 + H_1*W_1, ...]``.
    """
    return torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))


@MODELS.register_module()
class DeformableEncoder(BaseModule):
    """Stack of post-norm deformable self-attention layers over all levels.

    Flattens the multi-scale feature maps into one token sequence (row-major
    per level, levels concatenated), adds a learned level embedding to each
    level's position encoding and runs the layers. Every token, padded ones
    included, is updated; padded tokens are never read as values.

    Args:
        num_layers (int): Number of encoder layers.
        embed_dims (int): Channels C (given to each layer). The detector
            passes the neck's ``out_channels``; configs do not write it.
        num_levels (int): Feature levels L (given to each layer). The
            detector passes the neck's ``num_levels``.
        layer_cfg (dict, optional): Keyword arguments of
            ``DeformableEncoderLayer`` except ``embed_dims`` and
            ``num_levels``: ``num_heads`` (8), ``num_points`` (4),
            ``feedforward_dims`` (1024), ``dropout`` (0.1), ``self_attn_cfg``
            (``dict(type='MSDeformAttn')``).
        init_cfg (dict, optional): mmengine init config, applied by
            ``init_weights`` after the official initialization.
    """

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, num_levels: int = 4,
                 layer_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        layer_cfg = stage_layer_cfg('DeformableEncoder', layer_cfg,
                                    embed_dims=embed_dims, num_levels=num_levels)
        if num_layers < 1:
            raise ValueError(f'DeformableEncoder: num_layers must be >= 1, got {num_layers}')
        self.num_levels = num_levels
        self.embed_dims = embed_dims
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(**layer_cfg) for _ in range(num_layers))
        self.level_embed = nn.Parameter(torch.empty(num_levels, self.embed_dims))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official init: Xavier (dim > 1), MSDeformAttn init, normal level embed."""
        init_deformable_transformer(self)
        nn.init.normal_(self.level_embed)

    def init_weights(self) -> None:
        """Official initialization, then ``init_cfg`` (if any) on top."""
        self._reset_parameters()
        super().init_weights()

    def _check_inputs(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                      pos_embeds: Sequence[torch.Tensor]) -> None:
        check_encoder_inputs('DeformableEncoder', self.num_levels, self.embed_dims,
                             feats, masks, pos_embeds)

    def flatten_levels(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                       pos_embeds: Sequence[torch.Tensor]
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``flatten_levels`` (module function) with this encoder's level embedding."""
        return flatten_levels(feats, masks, pos_embeds, self.level_embed)

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                pos_embeds: Sequence[torch.Tensor]) -> EncoderOutput:
        """Encode the multi-scale features.

        Args:
            feats (Sequence[Tensor]): L maps (B, C, H_l, W_l).
            masks (Sequence[Tensor]): L bool masks (B, H_l, W_l), True at padding.
            pos_embeds (Sequence[Tensor]): L position encodings (B, C, H_l, W_l),
                in the dtype of ``feats``.

        Returns:
            EncoderOutput: memory (B, S, C), padding_mask (B, S),
            spatial_shapes (L, 2) and spatial_shapes_list (L pairs of
            ints), level_start_index (L,), valid_ratios (B, L, 2) float32
            and memory_pos (B, S, C) (position encodings plus level
            embeddings).
        """
        self._check_inputs(feats, masks, pos_embeds)
        query, query_pos, padding_mask, spatial_shapes = self.flatten_levels(
            feats, masks, pos_embeds)
        spatial_shapes_list = get_level_shapes(feats)
        level_start_index = get_level_start_index(spatial_shapes)
        valid_ratios = torch.stack([get_valid_ratios(mask) for mask in masks], 1)
        # float32 island (official), cast once to the tokens' dtype for the op
        reference_points = get_encoder_reference_points(spatial_shapes_list, valid_ratios)
        reference_points = reference_points.to(query.dtype)
        for layer in self.layers:
            query = layer(query, query_pos, reference_points, spatial_shapes,
                          level_start_index, padding_mask)
        return EncoderOutput(memory=query, padding_mask=padding_mask,
                             spatial_shapes=spatial_shapes,
                             level_start_index=level_start_index, valid_ratios=valid_ratios,
                             memory_pos=query_pos, spatial_shapes_list=spatial_shapes_list)
