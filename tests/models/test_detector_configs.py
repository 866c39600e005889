"""Every Deformable DETR config builds, trains (loss + backward) and predicts.

The real ResNet-50 configs are only constructed; the runs use a reduced copy
of each config (ResNet-18, or ResNet-50 for DC5, 32 channels, 2+2 layers, 20
queries, 64x64 images). No test calls ``init_weights``, so nothing is downloaded.
"""
from functools import partial
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmdeform import testing
from mmdeform.registry import MODELS
from mmdeform.testing import shrink_model_cfg

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'deformable_detr'
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob('*.py'))
NUM_CLASSES, NUM_QUERIES, DIMS = 5, 20, 32


def load(name: str) -> Config:
    cfg = Config.fromfile(CONFIG_DIR / name)
    cfg.model.backbone.init_cfg = None
    return cfg


def tiny_model_cfg(name: str) -> dict:
    """The config's model with the same components at a tiny size."""
    return shrink_model_cfg(load(name).model, embed_dims=DIMS, num_classes=NUM_CLASSES,
                            num_queries=NUM_QUERIES)


# (boxes_per_image) -> raw uint8 images of different sizes and their data samples
make_batch = partial(testing.make_batch, [(64, 64), (48, 56)], num_classes=NUM_CLASSES,
                     ori_scale=2)


@pytest.fixture(scope='module', params=CONFIGS)
def tiny_model(request):
    torch.manual_seed(0)
    return request.param, MODELS.build(tiny_model_cfg(request.param))


def test_the_five_variants_exist():
    expected = ['deformable-detr_r50_16xb2-50e_coco.py',
                'deformable-detr-refine_r50_16xb2-50e_coco.py',
                'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
                'deformable-detr-single-scale_r50_16xb2-50e_coco.py',
                'deformable-detr-single-scale-dc5_r50_16xb2-50e_coco.py']
    assert set(CONFIGS) == set(expected)


@pytest.mark.parametrize('name', CONFIGS)
def test_real_config_builds(name):
    cfg = Config.fromfile(CONFIG_DIR / name)
    assert cfg.default_scope == 'mmdeform'
    assert cfg.model.backbone.init_cfg.checkpoint.startswith('https://download.pytorch.org/')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    single_scale = 'single-scale' in name
    refine = 'refine' in name
    assert model.bbox_head.num_classes == 80
    assert len(model.encoder.layers) == len(model.decoder.layers) == 6
    assert model.encoder.num_levels == (1 if single_scale else 4)
    assert model.query_generator.num_queries == 300
    assert len(model.bbox_head.reg_branches) == (6 if refine else 1)
    assert type(model.query_generator).__name__ == (
        'TwoStageProposals' if 'twostage' in name else 'LearnedQueries')
    layer = model.encoder.layers[0]
    assert layer.ffn.linear1.out_features == 1024 and layer.self_attn.num_points == 4
    dilation = model.backbone.layer4[1].conv2.dilation  # torchvision: not the first block
    assert dilation == ((2, 2) if 'dc5' in name else (1, 1))
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(('conv1', 'bn1', 'layer1.')) for n in frozen)


def test_loss_with_ground_truth_reaches_every_learnable_parameter(tiny_model):
    name, model = tiny_model
    testing.perturb_parameters(model)
    losses = testing.loss_and_backward(model, make_batch([3, 1]))
    assert {'loss_cls', 'loss_bbox', 'loss_iou', 'd0.loss_cls'} <= set(losses)
    assert ('enc_loss_cls' in losses) == ('twostage' in name)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    no_grad = testing.parameters_without_gradient(model)
    assert not no_grad, f'{name}: no gradient reaches {no_grad}'
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith('backbone.') for n in frozen)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_loss_without_ground_truth(tiny_model):
    name, model = tiny_model
    losses = testing.loss_and_backward(model, make_batch([0, 0]))
    assert losses['loss_cls'] > 0
    for key in ('loss_bbox', 'loss_iou', 'd0.loss_bbox'):
        assert losses[key].item() == 0.0
    assert model.bbox_head.cls_branches[0].weight.grad.abs().sum() > 0


def test_predict_and_tensor_modes(tiny_model):
    name, model = tiny_model
    model.eval()
    data = model.data_preprocessor(make_batch([1, 1]), training=False)
    assert data['data_samples'][1].batch_input_shape == (64, 64)  # padded to the largest
    with torch.no_grad():
        results = model(**data, mode='predict')
        logits, boxes = model(**data, mode='tensor')
    assert logits.shape == (2, 2, NUM_QUERIES, NUM_CLASSES)
    assert boxes.shape == (2, 2, NUM_QUERIES, 4)
    for result in results:
        pred = result.pred_instances
        assert pred.scores.shape == (100,) and pred.labels.shape == (100,)
        assert pred.bboxes.shape == (100, 4)
        assert bool((pred.scores[:-1] >= pred.scores[1:]).all())
        assert pred.labels.min() >= 0 and pred.labels.max() < NUM_CLASSES
    with torch.no_grad():  # without data samples nothing is padding
        unpadded_logits, _ = model(data['inputs'])
    assert unpadded_logits.shape == logits.shape
    with pytest.raises(ValueError, match="mode must be 'loss', 'predict' or 'tensor'"):
        model(**data, mode='bogus')
