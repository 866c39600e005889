"""``MultiScaleProjection``: backbone maps -> L maps of equal width (no FPN)."""
from typing import List, Sequence, Tuple, Union

import torch
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              num_groups: int) -> ConvModule:
    """mmcv's ``ConvModule``: Conv2d (with bias, 'same' padding for odd
    kernels) + GroupNorm, no activation; submodules ``conv`` and ``gn``."""
    return ConvModule(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=True,
                      norm_cfg=dict(type='GN', num_groups=num_groups), act_cfg=None)


def init_conv_norms(modules) -> None:
    """Xavier-uniform conv weights, zero biases, GroupNorm weight 1 and bias 0
    (the official init; ConvModule's own is Kaiming).

    Args:
        modules (Iterable[ConvModule]): conv + GroupNorm modules, initialized
            in this order.
    """
    for module in modules:
        nn.init.xavier_uniform_(module.conv.weight, gain=1)
        nn.init.zeros_(module.conv.bias)
        module.gn.reset_parameters()


def check_neck_args(name: str, in_channels: Sequence[int], out_channels: int,
                    num_extra_levels: int, num_groups: int) -> List[int]:
    """Validate a neck's constructor arguments; returns ``in_channels`` as a list."""
    in_channels = list(in_channels)
    if not in_channels or any(int(c) != c or c <= 0 for c in in_channels):
        raise ValueError(f'{name}: in_channels must be a non-empty list of positive ints, '
                         f'got {in_channels}')
    if num_extra_levels < 0:
        raise ValueError(f'{name}: num_extra_levels must be >= 0, got {num_extra_levels}')
    if num_groups <= 0 or out_channels % num_groups != 0:
        raise ValueError(f'{name}: out_channels ({out_channels}) must be divisible by '
                         f'num_groups ({num_groups})')
    return in_channels


def check_neck_inputs(name: str, feats: Sequence[torch.Tensor],
                      in_channels: Sequence[int]) -> None:
    """One (B, in_channels[l], H, W) map per input level, or a ValueError naming it."""
    if len(feats) != len(in_channels):
        raise ValueError(f'{name}: expected {len(in_channels)} feature maps '
                         f'(in_channels={list(in_channels)}), got {len(feats)}')
    for level, (feat, channels) in enumerate(zip(feats, in_channels)):
        if feat.dim() != 4 or feat.shape[1] != channels:
            raise ValueError(f'{name}: feats[{level}] must be (B, {channels}, H, W), '
                             f'got {tuple(feat.shape)}')


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
        out_channels (int): Channels of every output level (embed_dims).
        num_extra_levels (int): Extra stride-2 levels after the last input.
        num_groups (int): GroupNorm groups; must divide ``out_channels``.
        init_cfg (dict | list[dict], optional): mmengine init config; without
            it conv weights are Xavier-uniform (gain 1) and biases 0.

    Attributes:
        projections (nn.ModuleList): One ``ConvModule`` (``conv``, ``gn``)
            per output level (the official ``input_proj`` layout).
        num_levels (int): ``len(in_channels) + num_extra_levels``.
    """

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), out_channels: int = 256,
                 num_extra_levels: int = 1, num_groups: int = 32,
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        in_channels = check_neck_args('MultiScaleProjection', in_channels, out_channels,
                                      num_extra_levels, num_groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_extra_levels = num_extra_levels
        self.num_levels = len(in_channels) + num_extra_levels
        projections = [conv_norm(c, out_channels, 1, 1, num_groups) for c in in_channels]
        extra_in = in_channels[-1]
        for _ in range(num_extra_levels):
            projections.append(conv_norm(extra_in, out_channels, 3, 2, num_groups))
            extra_in = out_channels
        self.projections = nn.ModuleList(projections)
        self._init_default()

    def _init_default(self) -> None:
        """Xavier-uniform conv weights, zero biases, GroupNorm weight 1 and bias 0."""
        init_conv_norms(self.projections)

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
        check_neck_inputs('MultiScaleProjection', feats, self.in_channels)
        outs = [proj(feat) for proj, feat in zip(self.projections, feats)]
        extra = feats[-1]  # raw last backbone map feeds the first extra level
        for proj in self.projections[len(feats):]:
            extra = proj(extra)
            outs.append(extra)
        return tuple(outs)
