"""Tiny DeformableDETR models assembled from the ablation components.

DETR's dense transformer, the FPN neck and the level-restricted deformable
attentions plug into the unchanged detector: each model trains (loss with
and without ground truth, gradient to every learnable parameter) and
predicts. ResNet-18 without pretrained weights, 32 channels, 64x64 images.
"""
from functools import partial
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmdeform import testing
from mmdeform.registry import MODELS

BASE = (Path(__file__).resolve().parents[2] / 'configs' / 'deformable_detr'
        / 'deformable-detr_r50_16xb2-50e_coco.py')
NUM_CLASSES, NUM_QUERIES, DIMS = 3, 8, 32
DENSE_LAYER = dict(num_heads=4, feedforward_dims=64, dropout=0.1)
DEFORMABLE_LAYER = dict(DENSE_LAYER, num_points=2)
# name -> (backbone out_indices, neck, encoder, decoder); the detector gives them their sizes
VARIANTS = {
    'dense-single-scale': (
        (3,), dict(type='MultiScaleProjection', num_extra_levels=0),
        dict(type='DenseEncoder', layer_cfg=DENSE_LAYER),
        dict(type='DenseDecoder', layer_cfg=DENSE_LAYER)),
    'fpn-same-level-encoder-per-level-decoder': (
        (2, 3), dict(type='FPN', num_extra_levels=1),
        dict(type='DeformableEncoder', layer_cfg=dict(
            DEFORMABLE_LAYER, self_attn_cfg=dict(type='SameLevelDeformAttn'))),
        dict(type='DeformableDecoder', layer_cfg=dict(
            DEFORMABLE_LAYER, cross_attn_cfg=dict(type='PerLevelDeformAttn')))),
    'dense-encoder-deformable-decoder': (
        (2, 3), dict(type='MultiScaleProjection', num_extra_levels=0),
        dict(type='DenseEncoder', layer_cfg=DENSE_LAYER),
        dict(type='DeformableDecoder', layer_cfg=DEFORMABLE_LAYER)),
    'detr': (
        (3,), dict(type='MultiScaleProjection', num_extra_levels=0),
        dict(type='DenseEncoder', layer_cfg=DENSE_LAYER),
        dict(type='DetrDecoder', layer_cfg=DENSE_LAYER)),
    'deformable-encoder-dense-decoder': (
        (3,), dict(type='MultiScaleProjection', num_extra_levels=0),
        dict(type='DeformableEncoder', layer_cfg=DEFORMABLE_LAYER),
        dict(type='DenseDecoder', layer_cfg=DENSE_LAYER)),
}


def tiny_model_cfg(name):
    out_indices, neck, encoder, decoder = VARIANTS[name]
    model = Config.fromfile(BASE).model
    model.backbone.update(depth=18, out_indices=out_indices, init_cfg=None)
    model.neck = dict(neck, out_channels=DIMS, num_groups=8)
    model.encoder = dict(encoder, num_layers=2)
    model.decoder = dict(decoder, num_layers=2)
    model.update(num_queries=NUM_QUERIES, test_cfg=dict(max_per_img=10))
    model.bbox_head.num_classes = NUM_CLASSES
    return model


# (boxes_per_image) -> raw uint8 images of different sizes and their data samples
make_batch = partial(testing.make_batch, [(64, 64), (48, 56)], num_classes=NUM_CLASSES)


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def tiny_model(request):
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(request.param))
    testing.perturb_parameters(model)
    return request.param, model


def test_loss_with_ground_truth_reaches_every_learnable_parameter(tiny_model):
    name, model = tiny_model
    losses = testing.loss_and_backward(model, make_batch([2, 1]))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    no_grad = testing.parameters_without_gradient(model)
    # DETR's decoder has no reference points: the learned queries' reference layer is unused
    unused = {'query_generator.reference_points.weight',
              'query_generator.reference_points.bias'} if name == 'detr' else set()
    assert set(no_grad) == unused, f'{name}: no gradient reaches {no_grad}'


def test_loss_without_ground_truth(tiny_model):
    _, model = tiny_model
    losses = testing.loss_and_backward(model, make_batch([0, 0]))
    assert losses['loss_cls'] > 0
    assert losses['loss_bbox'].item() == 0.0 and losses['loss_iou'].item() == 0.0


def test_predict(tiny_model):
    _, model = tiny_model
    model.eval()
    data = model.data_preprocessor(make_batch([1, 1]), training=False)
    with torch.no_grad():
        results = model(**data, mode='predict')
        logits, boxes = model(**data, mode='tensor')
    assert logits.shape == (2, 2, NUM_QUERIES, NUM_CLASSES)
    assert boxes.shape == (2, 2, NUM_QUERIES, 4)
    for result in results:
        assert result.pred_instances.bboxes.shape == (10, 4)
        assert torch.isfinite(result.pred_instances.scores).all()
