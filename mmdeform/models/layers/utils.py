"""Small functions shared by model components."""
from typing import Optional

import torch


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Logit of ``x`` clamped to [0, 1], both sides clamped at ``eps``.

    ``log(clamp(x, eps) / clamp(1 - x, eps))``: 1.0 maps to ``log(1/eps)``.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def boxes_from_reference(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Decode a box branch's output relative to a reference point or box.

    Args:
        delta (Tensor): (..., 4) box head output in inverse-sigmoid space.
        reference (Tensor): (..., 4) normalized cxcywh reference boxes, or
            (..., 2) normalized (x, y) reference points.

    Returns:
        Tensor: (..., 4) normalized cxcywh boxes,
        ``sigmoid(delta + inverse_sigmoid(reference))``; a 2-d reference only
        shifts the centre, the size comes from ``delta`` alone.
    """
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    if reference.shape[-1] != 2:
        raise ValueError('boxes_from_reference: reference must end in 2 or 4 values, '
                         f'got shape {tuple(reference.shape)}')
    centre = delta[..., :2] + inverse_sigmoid(reference)
    return torch.cat([centre, delta[..., 2:]], dim=-1).sigmoid()


def stage_layer_cfg(owner: str, layer_cfg: Optional[dict], **owned) -> dict:
    """A stage's ``layer_cfg`` completed with the sizes the stage owns.

    The encoder or decoder receives ``embed_dims`` and ``num_levels`` (from
    the detector, which takes them from the neck) and hands them to every
    layer; a ``layer_cfg`` that sets one of them itself would write the same
    size twice, so it is refused.

    Args:
        owner (str): class name of the stage, named in errors.
        layer_cfg (dict, optional): keyword arguments of one layer.
        **owned: the sizes the stage passes to each layer.

    Returns:
        dict: ``layer_cfg`` with ``owned`` added.
    """
    layer_cfg = dict(layer_cfg or {})
    for key in owned:
        if key in layer_cfg:
            raise ValueError(f'{owner}: {key} is given to {owner} itself (by the detector, '
                             f'from the neck), not in layer_cfg; remove layer_cfg.{key}')
    return {**layer_cfg, **owned}
