"""Seeded stage outputs and training steps of tiny detectors, for tests."""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from mmdeform.models.stage_outputs import EncoderOutput


def make_encoder_output(shapes: Sequence[Tuple[int, int]],
                        valid: Sequence[Sequence[Tuple[int, int]]], embed_dims: int,
                        seed: int = 0, dtype: torch.dtype = torch.float64) -> EncoderOutput:
    """A random encoder memory over padded levels.

    Args:
        shapes: (H_l, W_l) of each level.
        valid: per image, the valid (h, w) of each level (the rest is padding).
        embed_dims: channels C of the memory.
        seed: seed of the memory's values.
        dtype: dtype of the memory.

    Returns:
        EncoderOutput: memory (B, S, C) standard normal, padding_mask (B, S)
        True where padded, spatial_shapes (L, 2), level_start_index (L,),
        valid_ratios (B, L, 2) float32 as (w, h).
    """
    gen = torch.Generator().manual_seed(seed)
    batch = len(valid)
    masks = []
    for level, (h, w) in enumerate(shapes):
        mask = torch.ones(batch, h, w, dtype=torch.bool)
        for b in range(batch):
            vh, vw = valid[b][level]
            mask[b, :vh, :vw] = False
        masks.append(mask.flatten(1))  # (B, H_l * W_l)
    padding_mask = torch.cat(masks, 1)
    spatial_shapes = torch.tensor(shapes)
    sizes = spatial_shapes.prod(1)
    valid_ratios = torch.tensor(
        [[[vw / w, vh / h] for (vh, vw), (h, w) in zip(valid[b], shapes)]
         for b in range(batch)], dtype=torch.float32)
    return EncoderOutput(
        memory=torch.randn(batch, padding_mask.shape[1], embed_dims, generator=gen,
                           dtype=dtype),
        padding_mask=padding_mask, spatial_shapes=spatial_shapes,
        level_start_index=torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]),
        valid_ratios=valid_ratios)


def perturb_parameters(model: nn.Module, std: float = 0.02, seed: int = 1) -> None:
    """Add seeded noise to every parameter of ``model``.

    The official initialization zeroes some weights (sampling offsets,
    attention weights, the last box layer), which blocks the gradient to
    what lies before them at step 0.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * std)


def loss_and_backward(model: nn.Module, data_batch: dict) -> Dict[str, torch.Tensor]:
    """One training forward of a detector on a raw batch, then backward of the summed losses.

    Args:
        model (nn.Module): A detector with its ``data_preprocessor``.
        data_batch (dict): ``inputs`` and ``data_samples`` (e.g. from
            :func:`~mmdeform.testing.make_batch`).

    Returns:
        dict[str, Tensor]: The losses (gradients are in the parameters).
    """
    model.train()
    data = model.data_preprocessor(data_batch, training=True)
    losses = model(**data, mode='loss')
    model.zero_grad()
    sum(losses.values()).backward()
    return losses


def parameters_without_gradient(model: nn.Module) -> List[str]:
    """Names of the trainable parameters whose gradient is missing or all zero."""
    return [name for name, param in model.named_parameters()
            if param.requires_grad and (param.grad is None or not param.grad.abs().sum() > 0)]
