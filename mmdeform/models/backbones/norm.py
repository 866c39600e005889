"""``build_norm_layer``: the backbone's normalization from an MMDetection ``norm_cfg``.

``norm_cfg`` is ``dict(type=..., requires_grad=..., **layer_args)`` as in
MMDetection 3.x:

==========  ==========================================================
type        layer
==========  ==========================================================
FrozenBN    :class:`FrozenBatchNorm2d`: fixed statistics and affine terms
BN          ``nn.BatchNorm2d``
SyncBN      :class:`SyncBatchNorm` (all-reduce; works on CPU)
GN          ``nn.GroupNorm``; needs ``num_groups`` dividing the channels
==========  ==========================================================

``requires_grad=False`` freezes the affine parameters (default True, as
mmcv's ``build_norm_layer``); FrozenBN has none, so ``requires_grad=True``
with it is refused. Other keys (``eps``, ``momentum``, ``affine``) go to the
layer. mmcv's ``build_norm_layer`` is not used: it maps ``SyncBN`` to
torch's class, which refuses CPU tensors, knows no FrozenBN, names layers
by type (``gn1``; checkpoints here keep torchvision's ``bn1``) and reports a
missing ``num_groups`` with a bare assert.
"""
from typing import Callable, Dict

from torch import nn

from ..layers.sync_batch_norm import SyncBatchNorm
from .frozen_batch_norm import FrozenBatchNorm2d


def _group_norm(num_features: int, num_groups: int, **kwargs) -> nn.GroupNorm:
    # num_groups present: checked by check_norm_cfg
    if num_groups <= 0 or num_features % num_groups:
        raise ValueError(f"norm_cfg: type='GN' with num_groups={num_groups} needs channel "
                         f'counts divisible by it; a layer has {num_features} channels')
    return nn.GroupNorm(num_groups, num_features, **kwargs)


NORM_LAYERS: Dict[str, Callable[..., nn.Module]] = {
    'FrozenBN': FrozenBatchNorm2d,
    'BN': nn.BatchNorm2d,
    'SyncBN': SyncBatchNorm,
    'GN': _group_norm,
}


def check_norm_cfg(cfg: dict) -> None:
    """Raise a clear error for a ``norm_cfg`` that cannot build a layer.

    Raises:
        TypeError: ``cfg`` is not a dict.
        KeyError: no ``type``, an unknown ``type``, GN without ``num_groups``.
        ValueError: ``requires_grad=True`` with FrozenBN.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f'norm_cfg must be a dict, got {type(cfg).__name__}')
    if cfg.get('type') not in NORM_LAYERS:
        raise KeyError(f'norm_cfg.type must be one of {sorted(NORM_LAYERS)}, '
                       f'got {cfg.get("type")!r}')
    if cfg['type'] == 'FrozenBN' and cfg.get('requires_grad', False):
        raise ValueError("norm_cfg: type='FrozenBN' has no parameters, requires_grad=True "
                         "cannot apply; use type='BN' to train the normalization")
    if cfg['type'] == 'GN' and cfg.get('num_groups') is None:
        raise KeyError("norm_cfg: type='GN' needs num_groups, e.g. "
                       "dict(type='GN', num_groups=32, requires_grad=True)")


def build_norm_layer(cfg: dict, num_features: int) -> nn.Module:
    """The normalization layer of ``cfg`` for ``num_features`` channels.

    Args:
        cfg (dict): ``norm_cfg`` (module doc).
        num_features (int): Channels C of the (B, C, H, W) input.

    Returns:
        nn.Module: The layer, its parameters with ``requires_grad`` from ``cfg``.

    Raises:
        KeyError, ValueError, TypeError: a bad ``cfg`` (:func:`check_norm_cfg`),
            GN channels not divisible by ``num_groups``, or layer arguments the
            layer does not take (named).
    """
    check_norm_cfg(cfg)
    args = dict(cfg)
    layer_type = args.pop('type')
    requires_grad = args.pop('requires_grad', layer_type != 'FrozenBN')
    try:
        layer = NORM_LAYERS[layer_type](num_features, **args)
    except TypeError as e:
        raise TypeError(f'norm_cfg: type={layer_type!r} does not take the arguments '
                        f'{sorted(args)}: {e}') from e
    layer.requires_grad_(requires_grad)
    return layer
