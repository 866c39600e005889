"""The ablation row configs (configs/ablations, projects/synthetic_ablations/configs/ablations)
and the synthetic convergence pair (projects/synthetic_ablations/configs/convergence).

Every row builds, trains one step (loss with ground-truth boxes, backward)
and predicts on a tiny input; each row differs from its family's base
(multi-scale attention, K=4, no FPN) in exactly the keys its ablation is
about, and the built model has the structure the row names. COCO rows are
built at full size without pretrained weights (nothing is downloaded) and
run at a reduced size; synthetic rows run as they are on 128 px images.
"""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmdeform import testing
from mmdeform.models.layers import PerLevelDeformAttn, SameLevelDeformAttn
from mmdeform.models.necks import FPN, MultiScaleProjection
from mmdeform.ops import MSDeformAttn
from mmdeform.registry import MODELS
from projects.synthetic_ablations import ABLATION_DIR, CONVERGENCE_DIR

CONFIG_ROOT = Path(__file__).resolve().parents[2] / 'configs'
FAMILIES = {
    'coco': (CONFIG_ROOT / 'ablations', 'r50_16xb2-50e_coco'),
    'synthetic': (ABLATION_DIR, 'r18_1xb8-500i_synthetic'),
}
BASE_ROW = 'deformable-detr_ms-attn-k4'
SINGLE_SCALE_KEYS = {'model.backbone.out_indices', 'model.neck.num_extra_levels'}
POINTS_KEYS = {'model.encoder.layer_cfg.num_points', 'model.decoder.layer_cfg.num_points'}
WITHIN_LEVEL_KEYS = {'model.encoder.layer_cfg.self_attn_cfg.type',
                     'model.decoder.layer_cfg.cross_attn_cfg.type'}
# row -> the config keys (flattened) whose value differs from the base row's
EXPECTED_CHANGES = {
    'deformable-detr_ss-k1': SINGLE_SCALE_KEYS | POINTS_KEYS,
    'deformable-detr_ss-k4': SINGLE_SCALE_KEYS,
    'deformable-detr_ms-inputs-k1': WITHIN_LEVEL_KEYS | POINTS_KEYS,
    'deformable-detr_ms-inputs-k4': WITHIN_LEVEL_KEYS,
    'deformable-detr_ms-attn-k1': POINTS_KEYS,
    BASE_ROW: set(),
    'deformable-detr_ms-attn-k4-fpn': {'model.neck.type'},
    'dense-detr_ss': SINGLE_SCALE_KEYS | {'model.encoder.type', 'model.decoder.type'},
}
# the synthetic dense baseline is not a Table 2 row: it lives with the convergence run
FAMILY_ROWS = {'coco': list(EXPECTED_CHANGES),
               'synthetic': [row for row in EXPECTED_CHANGES if not row.startswith('dense')]}
ROWS = [(family, row) for family, rows in FAMILY_ROWS.items() for row in rows]
CONVERGENCE = CONVERGENCE_DIR


def config_path(family: str, row: str) -> Path:
    folder, suffix = FAMILIES[family]
    return folder / f'{row}_{suffix}.py'


def load(family: str, row: str) -> Config:
    cfg = Config.fromfile(config_path(family, row))
    cfg.model.backbone.init_cfg = None
    return cfg


def flatten(value, prefix: str = '') -> dict:
    """Nested dicts -> {'a.b.c': leaf}; lists and tuples are leaves."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(flatten(item, f'{prefix}.{key}' if prefix else key))
    return flat


def changed_keys(family: str, row: str) -> set:
    base = flatten(Config.fromfile(config_path(family, BASE_ROW)).to_dict())
    other = flatten(Config.fromfile(config_path(family, row)).to_dict())
    return {key for key in base.keys() | other.keys()
            if base.get(key, '<absent>') != other.get(key, '<absent>')}


def make_batch(size: int, num_classes: int):
    """Two uint8 images (the second one padded) with 3 and 1 ground-truth boxes."""
    return testing.make_batch([(size, size), (size - 16, size - 8)], [3, 1], num_classes,
                              min_box_size=4)


def deform_attns(module) -> list:
    return [m for m in module.modules() if isinstance(m, MSDeformAttn)]


def test_every_row_exists_in_both_families():
    for family, (folder, _) in FAMILIES.items():
        names = sorted(p.name for p in folder.glob('*.py'))
        assert names == sorted(config_path(family, row).name for row in FAMILY_ROWS[family])


def test_synthetic_rows_are_the_papers_plain_model_with_trainable_bn():
    model = Config.fromfile(config_path('synthetic', BASE_ROW)).model
    assert model.query_generator.type == 'LearnedQueries'
    assert model.decoder.type == 'DeformableDecoder'  # no box refinement
    assert model.backbone.norm_cfg == dict(type='BN', requires_grad=True)
    assert model.backbone.norm_eval is False and model.backbone.frozen_stages == -1


def test_convergence_pair_differs_in_attention_only():
    deformable_path, dense_path = sorted(CONVERGENCE.glob('*.py'))
    deformable = flatten(Config.fromfile(deformable_path).to_dict())
    dense = flatten(Config.fromfile(dense_path).to_dict())
    assert dense.keys() == deformable.keys()
    # the attention, and DETR's own learning rate (the paper's 1e-4)
    assert {key for key in dense if dense[key] != deformable[key]} == {
        'model.encoder.type', 'model.decoder.type', 'optim_wrapper.optimizer.lr'}
    assert dense['optim_wrapper.optimizer.lr'] == 1e-4
    # the deformable model is the single-scale ablation row, trained longer from the
    # pretrained backbone both share
    row = flatten(Config.fromfile(config_path('synthetic', 'deformable-detr_ss-k4')).to_dict())
    changed = {key for key in deformable
               if key.startswith('model.') and row.get(key) != deformable[key]}
    assert changed == {'model.backbone.init_cfg.type', 'model.backbone.init_cfg.checkpoint'}
    assert deformable['model.backbone.init_cfg.checkpoint'] == \
        deformable['backbone_pretraining.checkpoint']
    assert deformable['train_cfg.max_iters'] > row['train_cfg.max_iters']


@pytest.mark.parametrize('family,row', ROWS)
def test_row_changes_only_its_keys(family, row):
    assert changed_keys(family, row) == EXPECTED_CHANGES[row]


@pytest.mark.parametrize('family,row', ROWS)
def test_built_model_has_the_row_structure(family, row):
    cfg = load(family, row)
    model = MODELS.build(cfg.model)  # full size, random weights
    single_scale = '_ss' in row
    num_levels = 1 if single_scale else 4
    assert model.encoder.num_levels == model.neck.num_levels == num_levels
    assert type(model.neck) is (FPN if row.endswith('fpn') else MultiScaleProjection)
    attns = deform_attns(model)
    if row.startswith('dense'):
        assert not attns
        assert type(model.encoder).__name__ == 'DenseEncoder'
        assert type(model.decoder).__name__ == 'DenseDecoder'
        return
    encoder_attns = [layer.self_attn for layer in model.encoder.layers]
    decoder_attns = [layer.cross_attn for layer in model.decoder.layers]
    assert len(attns) == len(encoder_attns) + len(decoder_attns)
    assert {m.num_points for m in attns} == {1 if row.endswith('k1') else 4}
    assert {m.num_levels for m in attns} == {num_levels}
    within_level = 'ms-inputs' in row
    assert all(type(m) is (SameLevelDeformAttn if within_level else MSDeformAttn)
               for m in encoder_attns)
    assert all(type(m) is (PerLevelDeformAttn if within_level else MSDeformAttn)
               for m in decoder_attns)


@pytest.mark.parametrize('family,row', ROWS)
def test_row_trains_and_predicts_on_a_tiny_input(family, row):
    model_cfg = load(family, row).model
    if family == 'coco':
        model_cfg = testing.shrink_model_cfg(model_cfg)
        model_cfg.test_cfg = dict(max_per_img=20)
    size = 64 if family == 'coco' else 128  # two-stage synthetic rows need >= 50 tokens
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    num_classes = model.bbox_head.num_classes
    model.train()
    data = model.data_preprocessor(make_batch(size, num_classes), training=True)
    losses = model(**data, mode='loss')
    assert {'loss_cls', 'loss_bbox', 'loss_iou'} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.bbox_head.cls_branches[0].weight.grad.abs().sum() > 0
    model.eval()
    data = model.data_preprocessor(make_batch(size, num_classes), training=False)
    with torch.no_grad():
        results = model(**data, mode='predict')
    num_predictions = model_cfg.test_cfg.max_per_img
    for result in results:
        pred = result.pred_instances
        assert pred.bboxes.shape == (num_predictions, 4)
        assert pred.labels.max() < num_classes
