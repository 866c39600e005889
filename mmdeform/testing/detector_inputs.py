"""Seeded detector inputs and tiny model configs for tests (like ``mmdet.testing``)."""
from typing import Sequence, Tuple

import torch
from mmengine.structures import InstanceData

from mmdeform.structures import DetDataSample


def make_batch(sizes: Sequence[Tuple[int, int]], boxes_per_image: Sequence[int],
               num_classes: int, ori_scale: int = 1, min_box_size: float = 2) -> dict:
    """Random uint8 images of the given sizes, with random ground-truth boxes.

    Seeded (``torch.manual_seed(0)``), so every call gives the same batch.

    Args:
        sizes: (h, w) of each image.
        boxes_per_image: number of boxes of each image.
        num_classes: labels are drawn from ``range(num_classes)``.
        ori_scale: ``ori_shape`` is ``ori_scale`` times ``img_shape``.
        min_box_size: added to the random box width and height (pixels).

    Returns:
        dict: ``inputs`` (list of (3, h, w) uint8) and ``data_samples``.
    """
    torch.manual_seed(0)
    inputs, samples = [], []
    for (h, w), num_boxes in zip(sizes, boxes_per_image):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        top_left = torch.rand(num_boxes, 2) * torch.tensor([w / 2, h / 2])
        box_size = torch.rand(num_boxes, 2) * torch.tensor([w / 2, h / 2]) + min_box_size
        sample = DetDataSample(metainfo=dict(img_shape=(h, w),
                                             ori_shape=(ori_scale * h, ori_scale * w)))
        sample.gt_instances = InstanceData(bboxes=torch.cat([top_left, top_left + box_size], 1),
                                           labels=torch.randint(0, num_classes, (num_boxes,)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def shrink_model_cfg(model: dict, embed_dims: int = 32, num_layers: int = 2,
                     num_classes: int = 5, num_queries: int = 20) -> dict:
    """The same components as ``model`` at a tiny size, for fast tests.

    ResNet-18 (ResNet-50 when the last stage is dilated: DC5 needs
    bottleneck blocks), no pretrained weights, ``embed_dims`` channels (8
    GroupNorm groups, 4 heads, FFN of ``2 * embed_dims``), ``num_layers``
    encoder and decoder layers. Only the owning keys change: the detector
    gives every other stage its sizes.

    Args:
        model (dict): a model config (an mmengine ``ConfigDict``), changed in place.

    Returns:
        dict: ``model``.
    """
    backbone = model['backbone']
    backbone.update(depth=50 if backbone.get('dilate_last_stage') else 18, init_cfg=None)
    model['neck'].update(out_channels=embed_dims, num_groups=8)
    for stage in (model['encoder'], model['decoder']):
        stage['num_layers'] = num_layers
        stage.setdefault('layer_cfg', {}).update(num_heads=4, feedforward_dims=2 * embed_dims)
    model['bbox_head']['num_classes'] = num_classes
    model['num_queries'] = num_queries
    return model
