"""``SinePositionalEncoding``: 2-d sine/cosine position encoding of a mask."""
import math
from typing import List, Union

import torch
from mmengine.model import BaseModule

from mmdeform.registry import MODELS


@MODELS.register_module()
class SinePositionalEncoding(BaseModule):
    """Fixed sine position encoding from the padding mask (DETR style).

    For each image, ``y`` counts the valid pixels of its column up to and
    including the row, ``x`` those of its row up to the column. With
    ``normalize``, ``v <- (v + offset) / (v_last + eps) * scale`` where
    ``v_last`` is the value in the last row (for y) or column (for x). Channel
    ``i`` (of ``num_feats``) of a coordinate ``v`` is ``sin(v / dim_t[i])`` for
    even ``i`` and ``cos(v / dim_t[i])`` for odd ``i``, with
    ``dim_t[i] = temperature ** (2 * floor(i / 2) / num_feats)``. The y
    channels come first, then the x channels.

    Everything is computed in float32 and the result is float32, whatever the
    dtype of the model: this is one of the official model's float32 islands.
    The caller casts the result to the model's dtype (``pos.to(feat.dtype)``).
    There are no parameters or buffers, so ``.double()`` changes nothing.

    Args:
        num_feats (int): Channels per coordinate (even); the output has twice
            as many.
        temperature (float): Base of the frequencies.
        normalize (bool): Normalize coordinates to about [0, scale]. Without
            it the raw counts are used and ``offset``, ``eps``, ``scale`` are
            ignored.
        scale (float): Range of normalized coordinates.
        eps (float): Added to the last count before dividing.
        offset (float): Added to the counts before normalizing (-0.5: pixel
            centers).
        init_cfg (dict | list[dict], optional): mmengine init config (unused).
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000,
                 normalize: bool = True, scale: float = 2 * math.pi, eps: float = 1e-6,
                 offset: float = -0.5, init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        if num_feats <= 0 or num_feats % 2 != 0:
            raise ValueError('SinePositionalEncoding: num_feats must be a positive even '
                             f'number, got {num_feats}')
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def _sin_cos(self, coord: torch.Tensor, dim_t: torch.Tensor) -> torch.Tensor:
        """(B, H, W) coordinates -> (B, H, W, num_feats): sin, cos, sin, cos, ..."""
        phase = coord[..., None] / dim_t  # (B, H, W, num_feats)
        # (B, H, W, F/2, 2) -> (B, H, W, F): channel 2k = sin, 2k + 1 = cos
        return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=4).flatten(3)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """Encode the positions of a padded batch.

        Args:
            mask (Tensor): (B, H, W) bool, True = padding.

        Returns:
            Tensor: (B, 2 * num_feats, H, W) float32 on ``mask``'s device:
            channels [0, num_feats) encode y, the rest x. Values at padded
            positions are meaningless.
        """
        if mask.dtype != torch.bool or mask.dim() != 3:
            raise ValueError('SinePositionalEncoding: mask must be (B, H, W) bool, got '
                             f'{tuple(mask.shape)} {mask.dtype}')
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, H, W)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        # computed here, not stored as a buffer: .double() must not change it
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_feats)  # (num_feats,)
        pos = torch.cat((self._sin_cos(y_embed, dim_t), self._sin_cos(x_embed, dim_t)), dim=3)
        return pos.permute(0, 3, 1, 2)  # (B, H, W, 2F) -> (B, 2F, H, W)
