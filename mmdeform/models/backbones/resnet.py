"""``ResNet``: torchvision-layout ResNet-18/34/50/101 with configurable normalization."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule, initialize
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdeform.registry import MODELS

from .frozen_batch_norm import FrozenBatchNorm2d
from .norm import build_norm_layer, check_norm_cfg
from .pretrained import load_pretrained

_DEFAULT_NORM_CFG = dict(type='FrozenBN')


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1,
             dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34).

    Args:
        in_channels (int): Input channels.
        planes (int): Channels of both convs and of the output.
        stride (int): Stride of the first conv.
        dilation (int): Must be 1 (as in torchvision).
        downsample (nn.Module, optional): Maps the input to the output's shape.
        norm_cfg (dict): Normalization after each conv (see
            :func:`~mmdeform.models.backbones.norm.build_norm_layer`).
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, norm_cfg: dict = _DEFAULT_NORM_CFG):
        super().__init__()
        if dilation != 1:
            raise ValueError(f'BasicBlock: dilation must be 1, got {dilation}')
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = build_norm_layer(norm_cfg, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = build_norm_layer(norm_cfg, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, dilated), 1x1 convs with a residual (ResNet-50/101).

    The stride sits on the 3x3 conv (torchvision "v1.5", mmdet
    ``style='pytorch'``).

    Args:
        in_channels (int): Input channels.
        planes (int): Channels of the inner convs; the output has 4 times more.
        stride (int): Stride of the 3x3 conv.
        dilation (int): Dilation (and padding) of the 3x3 conv.
        downsample (nn.Module, optional): Maps the input to the output's shape.
        norm_cfg (dict): Normalization after each conv (see
            :func:`~mmdeform.models.backbones.norm.build_norm_layer`).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, norm_cfg: dict = _DEFAULT_NORM_CFG):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = build_norm_layer(norm_cfg, planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = build_norm_layer(norm_cfg, planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = build_norm_layer(norm_cfg, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


_ARCHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def _make_stage(block: type, in_channels: int, planes: int, num_blocks: int, stride: int,
                dilation: int, norm_cfg: dict) -> nn.Sequential:
    """One stage as torchvision builds it.

    Only the first block strides; with ``dilation > 1`` the stage does not
    stride at all, its first block keeps dilation 1 and the others use
    ``dilation`` (torchvision's ``replace_stride_with_dilation``).
    """
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride),
                                   build_norm_layer(norm_cfg, out_channels))
    blocks = [block(in_channels, planes, stride, 1, downsample, norm_cfg)]
    blocks += [block(out_channels, planes, 1, dilation, norm_cfg=norm_cfg)
               for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


@MODELS.register_module()
class ResNet(BaseModule):
    """ResNet with torchvision's parameter names, configurable norm, no classifier.

    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ..
    ``layer4``, ``layerX.0.downsample.{0,1}``) without ``fc``, so
    torchvision checkpoints and the official Deformable DETR backbone
    (``backbone.0.body.*``) load by name. Stages after the last one in
    ``out_indices`` are not built.

    Args:
        depth (int): 18, 34 (BasicBlock) or 50, 101 (Bottleneck).
        out_indices (Sequence[int]): Increasing stage indices 0..3 (layer1 ..
            layer4) whose outputs are returned. (1, 2, 3) gives C3, C4, C5.
        frozen_stages (int): The stem and the first ``frozen_stages`` stages
            get ``requires_grad=False`` and their norm layers stay in eval
            mode; 0 freezes the stem only and -1 nothing. The official model
            uses 1.
        dilate_last_stage (bool): DC5: layer4 uses stride 1 and dilation 2
            (output stride 16). Bottleneck depths only, as in torchvision.
        norm_cfg (dict): Normalization after every conv, as in MMDetection:
            ``dict(type='FrozenBN'|'BN'|'SyncBN'|'GN', requires_grad=...)``
            (GN also ``num_groups``); see
            :mod:`mmdeform.models.backbones.norm`. Default FrozenBN, the
            official model's. Layers keep torchvision's names (``bn1`` ..).
        norm_eval (bool): Keep BN/SyncBN layers in eval mode (running
            statistics used and not updated) while the model trains, as
            MMDetection's ``norm_eval``. No effect on FrozenBN and GN.
        base_channels (int): Channels of the stem and of the first stage's
            inner convs; stage ``i`` has ``base_channels * 2**i`` (times 4
            for Bottleneck outputs). MMDetection's key; 64 is torchvision's
            ResNet (and loads its checkpoints), 32 a half-width one.
        init_cfg (dict | list[dict], optional): mmengine init config.
            ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix=None)``
            loads a torchvision-format checkpoint strictly (see
            :meth:`init_weights`). Without it, convs are Kaiming-normal
            (fan_out, relu) and every norm layer is the identity.

    Attributes:
        out_channels (list[int]): Channels of each returned map.
        out_strides (list[int]): Stride of each returned map w.r.t. the input.
    """

    def __init__(self, depth: int = 50, out_indices: Sequence[int] = (1, 2, 3),
                 frozen_stages: int = 1, dilate_last_stage: bool = False,
                 norm_cfg: Optional[dict] = None, norm_eval: bool = True,
                 base_channels: int = 64, init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        norm_cfg = dict(_DEFAULT_NORM_CFG) if norm_cfg is None else norm_cfg
        self._check_args(depth, out_indices, frozen_stages, dilate_last_stage)
        if base_channels < 1:
            raise ValueError(f'ResNet: base_channels must be >= 1, got {base_channels}')
        check_norm_cfg(norm_cfg)
        norm_cfg = dict(norm_cfg)
        block, stage_blocks = _ARCHS[depth]
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_cfg = norm_cfg
        self.norm_eval = norm_eval
        self.num_stages = self.out_indices[-1] + 1
        self.base_channels = base_channels
        self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels, stride_total = base_channels, 4
        stage_channels, stage_strides = [], []
        for i in range(self.num_stages):
            planes = base_channels * 2 ** i
            stride = 1 if i == 0 else 2
            dilation = 1
            if i == 3 and dilate_last_stage:
                stride, dilation = 1, 2
            stage = _make_stage(block, in_channels, planes, stage_blocks[i], stride, dilation,
                                norm_cfg)
            self.add_module(f'layer{i + 1}', stage)
            in_channels = planes * block.expansion
            stride_total *= stride
            stage_channels.append(in_channels)
            stage_strides.append(stride_total)
        self.out_channels = [stage_channels[i] for i in self.out_indices]
        self.out_strides = [stage_strides[i] for i in self.out_indices]
        self._init_default()
        self._freeze_stages()

    @staticmethod
    def _check_args(depth, out_indices, frozen_stages, dilate_last_stage) -> None:
        if depth not in _ARCHS:
            raise ValueError(f'ResNet: depth must be one of {sorted(_ARCHS)}, got {depth}')
        indices = tuple(out_indices)
        if not indices or any(i not in range(4) for i in indices) or \
                list(indices) != sorted(set(indices)):
            raise ValueError('ResNet: out_indices must be a non-empty increasing sequence of '
                             f'stage indices in 0..3, got {out_indices}')
        if frozen_stages not in range(-1, 5):
            raise ValueError(f'ResNet: frozen_stages must be in -1..4, got {frozen_stages}')
        if dilate_last_stage and _ARCHS[depth][0] is not Bottleneck:
            raise ValueError(f'ResNet: dilate_last_stage needs a Bottleneck depth (50, 101), '
                             f'got depth {depth}')
        if dilate_last_stage and indices[-1] != 3:
            raise ValueError('ResNet: dilate_last_stage=True needs stage 3 in out_indices, '
                             f'got {out_indices}')

    def _init_default(self) -> None:
        """torchvision's initialization: Kaiming-normal convs, identity norm layers
        (weight 1, bias 0; BN statistics reset to mean 0, variance 1)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, FrozenBatchNorm2d):
                m.reset_stats()
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
                if isinstance(m, _BatchNorm):
                    m.reset_running_stats()
                if m.affine:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> List[nn.Module]:
        """The stem and the first ``frozen_stages`` stages (none for -1)."""
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f'layer{i + 1}')
                                         for i in range(min(self.frozen_stages, self.num_stages))]

    def _freeze_stages(self) -> None:
        """``requires_grad=False`` and eval mode for the frozen stages."""
        for module in self._frozen_modules():
            module.eval()
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> 'ResNet':
        """Set training mode, keeping frozen stages and, with ``norm_eval``,
        every BN layer in eval mode (MMDetection's ``ResNet.train``)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:
        """Initialize, then apply ``init_cfg``.

        Always starts from the default initialization. Non-``Pretrained``
        entries of ``init_cfg`` are applied through mmengine. A ``Pretrained``
        entry (keys ``checkpoint``, optional ``prefix`` and ``map_location``)
        is loaded by :func:`load_pretrained`: every tensor of this ResNet must
        be in the checkpoint with the same shape, otherwise
        ``CheckpointMismatchError`` naming the keys; ``fc.*`` keys are ignored
        (logged), ``num_batches_tracked`` not loaded,
        ``{'state_dict'|'model': ...}`` wrappers unwrapped.
        """
        cfgs = [] if self.init_cfg is None else self.init_cfg
        cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs)
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if len(pretrained) > 1:
            raise ValueError(f'ResNet: init_cfg has {len(pretrained)} Pretrained entries, '
                             'expected at most one')
        self._init_default()
        if others:
            initialize(self, others)
        if pretrained:
            cfg = dict(pretrained[0])
            if 'checkpoint' not in cfg:
                raise KeyError(f'ResNet: Pretrained init_cfg needs a checkpoint, got {cfg}')
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                            map_location=cfg.get('map_location', 'cpu'),
                            ignore_prefixes=('fc.',))
        self.is_init = True

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Feature maps of the stages in ``out_indices``.

        Args:
            x (Tensor): (B, 3, H, W) normalized images.

        Returns:
            tuple[Tensor]: one (B, out_channels[k], ceil(H / out_strides[k]),
            ceil(W / out_strides[k])) map per entry of ``out_indices``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'ResNet: expected images (B, 3, H, W), got {tuple(x.shape)}')
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, base_channels, H/4, W/4)
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f'layer{i + 1}')(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
