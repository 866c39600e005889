"""``MultiScaleProjection``: backbone maps -> L maps of equal width (no FPN)."""
from typing import List, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS


@MODELS.register_module()
class MultiScaleProjection(BaseModule):
    """Project backbone maps to ``out_channels`` and add coarser levels.

    Deformable DETR's "input projection": no top-down pathway, each level is
    projected on its own.

    - Input level l: 1x1 conv (with bias) + GroupNorm.
    - Extra level 0: 3x3 stride-2 conv (padding 1) + GroupNorm on the **raw**
      last backbone map (``in_channels[-1]`` channels), not its projection.
    - Extra level k > 0: the same on the previous extra level's output.

    Args:
        in_channels (Sequence[int]): Channels of the backbone maps, finest
            first, e.g. [512, 1024, 2048] (C3..C5) or [2048] (single scale).
        out_channels (int): Channels of every output level (d_model).
        num_extra_levels (int): Extra stride-2 levels after the last input.
        num_groups (int): GroupNorm groups; must divide ``out_channels``.
        init_cfg (dict | list[dict], optional): mmengine init config; without
            it conv weights are Xavier-uniform (gain 1) and biases 0.

    Attributes:
        projections (nn.ModuleList): One ``nn.Sequential(conv, GroupNorm)``
            per output level (the official ``input_proj`` layout).
        num_levels (int): ``len(in_channels) + num_extra_levels``.
    """

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), out_channels: int = 256,
                 num_extra_levels: int = 1, num_groups: int = 32,
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        in_channels = list(in_channels)
        if not in_channels or any(int(c) != c or c <= 0 for c in in_channels):
            raise ValueError('MultiScaleProjection: in_channels must be a non-empty list of '
                             f'positive ints, got {in_channels}')
        if num_extra_levels < 0:
            raise ValueError('MultiScaleProjection: num_extra_levels must be >= 0, '
                             f'got {num_extra_levels}')
        if num_groups <= 0 or out_channels % num_groups != 0:
            raise ValueError(f'MultiScaleProjection: out_channels ({out_channels}) must be '
                             f'divisible by num_groups ({num_groups})')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_extra_levels = num_extra_levels
        self.num_levels = len(in_channels) + num_extra_levels
        projections = [
            nn.Sequential(nn.Conv2d(c, out_channels, kernel_size=1),
                          nn.GroupNorm(num_groups, out_channels))
            for c in in_channels]
        extra_in = in_channels[-1]
        for _ in range(num_extra_levels):
            projections.append(nn.Sequential(
                nn.Conv2d(extra_in, out_channels, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(num_groups, out_channels)))
            extra_in = out_channels
        self.projections = nn.ModuleList(projections)
        self._init_default()

    def _init_default(self) -> None:
        """Xavier-uniform conv weights, zero biases, GroupNorm weight 1 and bias 0."""
        for conv, norm in self.projections:
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            norm.reset_parameters()

    def init_weights(self) -> None:
        """The default initialization, or mmengine's handling of ``init_cfg``."""
        if self.init_cfg is None:
            self._init_default()
        else:
            super().init_weights()

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Project the backbone maps and append the extra levels.

        Args:
            feats (Sequence[Tensor]): ``len(in_channels)`` maps, map l of shape
                (B, in_channels[l], H_l, W_l).

        Returns:
            tuple[Tensor]: ``num_levels`` maps (B, out_channels, H_l, W_l); the
            extra level k has ``ceil(H / 2)`` rows of the level before it.
        """
        if len(feats) != len(self.in_channels):
            raise ValueError(f'MultiScaleProjection: expected {len(self.in_channels)} feature '
                             f'maps (in_channels={self.in_channels}), got {len(feats)}')
        for level, (feat, channels) in enumerate(zip(feats, self.in_channels)):
            if feat.dim() != 4 or feat.shape[1] != channels:
                raise ValueError(f'MultiScaleProjection: feats[{level}] must be (B, {channels}, '
                                 f'H, W), got {tuple(feat.shape)}')
        outs = [proj(feat) for proj, feat in zip(self.projections, feats)]
        extra = feats[-1]  # raw last backbone map feeds the first extra level
        for proj in self.projections[len(feats):]:
            extra = proj(extra)
            outs.append(extra)
        return tuple(outs)
