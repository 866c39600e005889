"""``FPN``: backbone maps -> L maps of equal width, with a top-down pathway."""
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from .multi_scale_projection import check_neck_args, check_neck_inputs, conv_norm, init_conv_norms


@MODELS.register_module()
class FPN(BaseModule):
    """Feature pyramid network (Lin et al., 2017) in place of the input projection.

    The constructor and output contracts are those of
    ``MultiScaleProjection``; the difference is the top-down pathway, which
    lets every level see the coarser ones before the encoder does.

    - Lateral l: 1x1 conv + GroupNorm of input map l.
    - Top-down, coarsest to finest: ``merged_l = lateral_l +
      nearest_upsample(merged_{l+1}, size of lateral_l)``; the coarsest
      input's ``merged`` is its lateral.
    - Output l: 3x3 conv + GroupNorm of ``merged_l``.
    - Extra level 0: 3x3 stride-2 conv (padding 1) + GroupNorm on the **raw**
      last backbone map (as ``MultiScaleProjection``); extra level k > 0:
      the same on the previous extra level's output.

    Args:
        in_channels (Sequence[int]): Channels of the backbone maps, finest
            first, e.g. [512, 1024, 2048] (C3..C5).
        out_channels (int): Channels of every output level (embed_dims).
        num_extra_levels (int): Extra stride-2 levels after the last input.
        num_groups (int): GroupNorm groups; must divide ``out_channels``.
        init_cfg (dict | list[dict], optional): mmengine init config; without
            it conv weights are Xavier-uniform (gain 1) and biases 0.

    Attributes:
        lateral_convs (nn.ModuleList): ``len(in_channels)`` (conv 1x1, GroupNorm).
        output_convs (nn.ModuleList): ``len(in_channels)`` (conv 3x3, GroupNorm).
        extra_convs (nn.ModuleList): ``num_extra_levels`` (conv 3x3 s2, GroupNorm).
        num_levels (int): ``len(in_channels) + num_extra_levels``.
    """

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), out_channels: int = 256,
                 num_extra_levels: int = 1, num_groups: int = 32,
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        in_channels = check_neck_args('FPN', in_channels, out_channels, num_extra_levels,
                                      num_groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_extra_levels = num_extra_levels
        self.num_levels = len(in_channels) + num_extra_levels
        self.lateral_convs = nn.ModuleList(
            conv_norm(c, out_channels, 1, 1, num_groups) for c in in_channels)
        self.output_convs = nn.ModuleList(
            conv_norm(out_channels, out_channels, 3, 1, num_groups) for _ in in_channels)
        extra_in = [in_channels[-1]] + [out_channels] * (num_extra_levels - 1)
        self.extra_convs = nn.ModuleList(
            conv_norm(c, out_channels, 3, 2, num_groups) for c in extra_in[:num_extra_levels])
        self._init_default()

    def _init_default(self) -> None:
        """Xavier-uniform conv weights, zero biases, GroupNorm weight 1 and bias 0."""
        init_conv_norms([*self.lateral_convs, *self.output_convs, *self.extra_convs])

    def init_weights(self) -> None:
        """The default initialization, or mmengine's handling of ``init_cfg``."""
        if self.init_cfg is None:
            self._init_default()
        else:
            super().init_weights()

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Build the pyramid and append the extra levels.

        Args:
            feats (Sequence[Tensor]): ``len(in_channels)`` maps, map l of shape
                (B, in_channels[l], H_l, W_l), finest first.

        Returns:
            tuple[Tensor]: ``num_levels`` maps (B, out_channels, H_l, W_l); the
            input levels keep their sizes, extra level k has ``ceil(H / 2)``
            rows of the level before it.
        """
        check_neck_inputs('FPN', feats, self.in_channels)
        merged = [lateral(feat) for lateral, feat in zip(self.lateral_convs, feats)]
        for level in range(len(merged) - 2, -1, -1):
            # (B, C, H_{l+1}, W_{l+1}) -> (B, C, H_l, W_l), nearest neighbour
            coarser = F.interpolate(merged[level + 1], size=merged[level].shape[-2:],
                                    mode='nearest')
            merged[level] = merged[level] + coarser
        outs = [conv(m) for conv, m in zip(self.output_convs, merged)]
        extra = feats[-1]  # raw last backbone map feeds the first extra level
        for conv in self.extra_convs:
            extra = conv(extra)
            outs.append(extra)
        return tuple(outs)
