"""Side-by-side speed of transformers' Deformable DETR and ours, same weights, same inputs.

What is timed, per case and model, in alternating rounds (the order of the
two models flips every round, so drift in the machine's speed hits both):

* ``infer HxW``: one forward pass of a batch of one image (every decoder
  layer's logits and boxes; transformers gets an all-ones ``pixel_mask``),
  under ``torch.no_grad``;
* ``train HxW``: forward with two ground-truth boxes, the loss, and
  ``backward`` (gradients reset before each step; no optimizer update).

One untimed pass per case and model comes first. Medians over the rounds
are reported, with ``ours / transformers`` ratios. Both models must train
the same weights (:func:`match_trainable`), else a training step compares
unequal work.
"""
import statistics
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from mmengine.structures import InstanceData

from mmdeform.structures import DetDataSample

from .timing import time_calls


def _ours_step(model, images: torch.Tensor, train: bool) -> Callable[[], None]:
    height, width = images.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                         batch_input_shape=(height, width)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10., 20., 200., 220.], [50., 60., 300., 400.]],
                            device=images.device),
        labels=torch.tensor([1, 5], device=images.device))

    def step() -> None:
        if train:
            model.zero_grad(set_to_none=True)
            sum(model(images, [sample], mode='loss').values()).backward()
        else:
            with torch.no_grad():
                model(images, [sample], mode='tensor')
    return step


def _hf_step(model, images: torch.Tensor, train: bool) -> Callable[[], None]:
    height, width = images.shape[-2:]
    mask = torch.ones((1, height, width), dtype=torch.long, device=images.device)
    scale = torch.tensor([width, height, width, height], device=images.device)
    xyxy = torch.tensor([[10., 20., 200., 220.], [50., 60., 300., 400.]], device=images.device)
    cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / scale
    labels = [dict(class_labels=torch.tensor([1, 5], device=images.device), boxes=cxcywh)]

    def step() -> None:
        if train:
            model.zero_grad(set_to_none=True)
            model(pixel_values=images, pixel_mask=mask, labels=labels).loss.backward()
        else:
            with torch.no_grad():
                model(pixel_values=images, pixel_mask=mask)
    return step


def trainable_count(model: torch.nn.Module) -> int:
    """Number of weights with ``requires_grad`` (what a training step computes gradients for)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def hf_resnet(hf: torch.nn.Module) -> torch.nn.Module:
    """transformers' ResNet inside its ``DeformableDetrForObjectDetection`` (4.x wraps it
    with the position encoding as ``backbone.conv_encoder.model``, 5.x has ``backbone.model``)."""
    backbone = hf.model.backbone
    return getattr(backbone, 'conv_encoder', backbone).model


def match_trainable(ours: torch.nn.Module, hf: torch.nn.Module) -> int:
    """Train ResNet stages 1-3 in transformers' backbone, as ours does; check the counts agree.

    transformers (checked with 4.57 and 5.25) means to train stages 1-3 of a ResNet
    backbone (``layer2``-``layer4``, like the official model, our
    ``frozen_stages=1`` and its own timm path), but with its own ResNet it
    looks for ``'stage.1'`` in names spelt ``'encoder.stages.1...'`` and so
    freezes the whole backbone. A training step timed that way skips the
    backbone's weight gradients that ours computes.

    Args:
        ours (nn.Module): our ``DeformableDETR`` (``frozen_stages=1``).
        hf (nn.Module): transformers' ``DeformableDetrForObjectDetection``
            with transformers' ResNet backbone.

    Returns:
        int: the number of trainable weights, equal in both.

    Raises:
        RuntimeError: the counts still differ (names both).
    """
    backbone = hf_resnet(hf)
    for name, parameter in backbone.named_parameters():
        if any(f'stages.{stage}.' in name for stage in (1, 2, 3)):
            parameter.requires_grad_(True)
    counts = trainable_count(ours), trainable_count(hf)
    if counts[0] != counts[1]:
        raise RuntimeError(f'compare_hf: ours trains {counts[0]} weights, transformers '
                           f'{counts[1]}: a training step would compare unequal work')
    return counts[0]


def compare_speed(ours: torch.nn.Module, hf: torch.nn.Module,
                  cases: Sequence[Tuple[str, int, int]], rounds: int = 5,
                  dtype: torch.dtype = torch.float32) -> Dict[str, Dict[str, List[float]]]:
    """Seconds per step of both models, alternating (module docstring).

    Args:
        ours (nn.Module): our ``DeformableDETR``.
        hf (nn.Module): transformers' ``DeformableDetrForObjectDetection``
            holding the same weights.
        cases (Sequence[tuple[str, int, int]]): ``('infer' | 'train', H, W)``.
        rounds (int): timed rounds per case.
        dtype (torch.dtype): the dtype both models and the inputs are cast to.

    Returns:
        dict: ``{case name: {'ours': [s, ...], 'transformers': [s, ...]}}``.
    """
    device = next(ours.parameters()).device
    results = {}
    for kind, height, width in cases:
        train = kind == 'train'
        for model in (ours, hf):
            model.to(dtype).train(train)
            if train:  # dropout modules off (functional dropout: build with rate 0)
                for module in model.modules():
                    if isinstance(module, torch.nn.Dropout):
                        module.eval()
        images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)
                             ).to(device=device, dtype=dtype)
        steps = {'ours': _ours_step(ours, images, train),
                 'transformers': _hf_step(hf, images, train)}
        times = {name: [] for name in steps}
        for step in steps.values():
            step()
        for index in range(rounds):
            order = list(steps) if index % 2 == 0 else list(reversed(steps))
            for name in order:
                times[name].append(time_calls(steps[name], device))
        results[f'{kind} {height}x{width}'] = times
    return results


def format_comparison(results: Dict[str, Dict[str, List[float]]], header: str = '') -> str:
    """Markdown table: medians (ms) and the ``ours / transformers`` ratio."""
    lines = [header] if header else []
    lines += ['| case | transformers (ms) | ours (ms) | ours / transformers |',
              '|---|---|---|---|']
    for case, times in results.items():
        hf, ours = statistics.median(times['transformers']), statistics.median(times['ours'])
        lines.append(f'| {case} | {hf * 1e3:.0f} | {ours * 1e3:.0f} | {ours / hf:.2f} |')
    return '\n'.join(lines)
