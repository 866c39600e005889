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
from mmengine.runner.utils import calc_dynamic_intervals

from mmdeform import testing
from mmdeform.models.layers import PerLevelDeformAttn, SameLevelDeformAttn
from mmdeform.models.necks import FPN, MultiScaleProjection
from mmdeform.ops import MSDeformAttn
from mmdeform.registry import MODELS
from projects.synthetic_ablations import ABLATION_DIR, CONVERGENCE_DIR

CONFIG_ROOT = Path(__file__).resolve().parents[2] / 'configs'
FAMILIES = {'coco': CONFIG_ROOT / 'ablations', 'synthetic': ABLATION_DIR}
BASE_ROW = 'deformable-detr_ms-attn-k4'
POINTS_KEYS = {'model.encoder.layer_cfg.num_points', 'model.decoder.layer_cfg.num_points'}
ENCODER_WITHIN_LEVEL = {'model.encoder.layer_cfg.self_attn_cfg.type'}
# row -> the config keys (flattened) whose value differs from the base row's
COCO_SINGLE_SCALE = {'model.backbone.out_indices', 'model.neck.num_extra_levels'}
WITHIN_LEVEL = ENCODER_WITHIN_LEVEL | {'model.decoder.layer_cfg.cross_attn_cfg.type'}
EXPECTED_CHANGES = {'coco': {
    'deformable-detr_ss-k1': COCO_SINGLE_SCALE | POINTS_KEYS,
    'deformable-detr_ss-k4': COCO_SINGLE_SCALE,
    'deformable-detr_ms-inputs-k1': WITHIN_LEVEL | POINTS_KEYS,
    'deformable-detr_ms-inputs-k4': WITHIN_LEVEL,
    'deformable-detr_ms-attn-k1': POINTS_KEYS,
    BASE_ROW: set(),
    'deformable-detr_ms-attn-k4-fpn': {'model.neck.type'},
    'dense-detr_ss': COCO_SINGLE_SCALE | {'model.encoder.type', 'model.decoder.type'},
}}
# synthetic Table 2: the backbone is wrapped by the feature cache; the within-level rows change
# the encoder only; no ms-attn-k1 (not a Table 2 row); DETR lives with the convergence run
SYNTHETIC_SINGLE_SCALE = {'model.backbone.backbone.out_indices', 'model.neck.num_extra_levels'}
EXPECTED_CHANGES['synthetic'] = {
    'deformable-detr_ss-k1': SYNTHETIC_SINGLE_SCALE | POINTS_KEYS,
    'deformable-detr_ss-k4': SYNTHETIC_SINGLE_SCALE,
    'deformable-detr_ms-inputs-k1': ENCODER_WITHIN_LEVEL | POINTS_KEYS,
    'deformable-detr_ms-inputs-k4': ENCODER_WITHIN_LEVEL,
    BASE_ROW: set(),
    'deformable-detr_ms-attn-k4-fpn': {'model.neck.type'},
}
ROWS = [(family, row) for family, rows in EXPECTED_CHANGES.items() for row in rows]
CONVERGENCE = CONVERGENCE_DIR


def config_path(family: str, row: str) -> Path:
    """The one config of ``row`` (``<row>_<rest>.py``) in the family's folder."""
    (path, ) = FAMILIES[family].glob(f'{row}_*.py')
    return path


def load(family: str, row: str) -> Config:
    cfg = Config.fromfile(config_path(family, row))
    cfg.model.backbone.init_cfg = None
    if family == 'synthetic':  # the pretrained file does not exist in tests
        cfg.model.backbone.backbone.init_cfg = None
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
    for family, folder in FAMILIES.items():
        names = sorted(p.name for p in folder.glob('*.py'))
        assert names == sorted(config_path(family, row).name for row in EXPECTED_CHANGES[family])


def test_synthetic_rows_are_the_papers_plain_model_on_a_frozen_backbone():
    cfg = Config.fromfile(config_path('synthetic', BASE_ROW))
    model = cfg.model
    assert model.query_generator.type == 'LearnedQueries' and model.num_queries == 100
    assert model.decoder.type == 'DeformableDecoder'  # no box refinement
    assert (model.encoder.num_layers, model.decoder.num_layers) == (2, 3)
    assert model.neck.out_channels == 64
    assert model.backbone.type == 'FeatureCachedBackbone'
    resnet = model.backbone.backbone
    assert (resnet.depth, resnet.base_channels, resnet.out_indices) == (18, 32, (1, 2, 3))
    assert resnet.frozen_stages == 4 and resnet.norm_cfg == dict(type='FrozenBN')
    assert resnet.init_cfg.checkpoint == cfg.backbone_pretraining.checkpoint
    built = MODELS.build(load('synthetic', BASE_ROW).model)
    assert not any(p.requires_grad for p in built.backbone.parameters())
    assert built.neck.in_channels == [64, 128, 256]
    # the paper's learning-rate multipliers, step decay at 60 %, 7 evaluations
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert keys == {'sampling_offsets': dict(lr_mult=0.1), 'reference_points': dict(lr_mult=0.1)}
    max_iters = cfg.train_cfg.max_iters
    (decay, ) = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
    assert decay.milestones == [max_iters * 3 // 5] and decay.gamma == 0.1
    first, (milestone, then) = cfg.train_cfg.val_interval, cfg.train_cfg.dynamic_intervals[0]
    evaluations = list(range(first, milestone + 1, first)) + \
        list(range(milestone + then, max_iters + 1, then))
    assert evaluations == [max_iters * k // 10 for k in (2, 4, 6, 7, 8, 9, 10)]
    assert cfg.synthetic_data.image_size == 256
    assert tuple(cfg.synthetic_data.size_class_fractions) == (0.41, 0.34, 0.25)


def test_convergence_pair_differs_in_attention_and_learning_rate_only():
    deformable_path, detr_path = sorted(CONVERGENCE.glob('*.py'))
    deformable = flatten(Config.fromfile(deformable_path).to_dict())
    detr = flatten(Config.fromfile(detr_path).to_dict())
    # besides the evaluation points (the deformable model's denser first 800 iterations, for its
    # early crossing of DETR's plateau level) and the length (where a constant-rate run stops),
    # only the attention and the rate differ
    schedule = {'train_cfg.val_interval', 'train_cfg.dynamic_intervals', 'train_cfg.max_iters',
                'default_hooks.checkpoint.interval'}
    assert deformable.keys() - detr.keys() == {'train_cfg.dynamic_intervals'}
    assert detr.keys() - deformable.keys() == set()
    assert {key for key in detr if detr[key] != deformable[key]} - schedule == {
        'model.encoder.type', 'model.decoder.type', 'optim_wrapper.optimizer.lr'}
    # DETR is scheduled for twice the deformable model's iterations, each checkpointed at its end
    assert (detr['train_cfg.max_iters'], deformable['train_cfg.max_iters']) == (8000, 4000)
    for cfg in (detr, deformable):
        assert cfg['default_hooks.checkpoint.interval'] == cfg['train_cfg.max_iters']
    assert (detr['model.encoder.type'], detr['model.decoder.type']) == ('DenseEncoder',
                                                                        'DetrDecoder')
    # the paper's ratio: DETR 1e-4, Deformable DETR 2e-4
    assert detr['optim_wrapper.optimizer.lr'] == deformable['optim_wrapper.optimizer.lr'] / 2
    # the deformable model is the single-scale row, at a constant rate after the warm-up
    row = flatten(Config.fromfile(config_path('synthetic', 'deformable-detr_ss-k4')).to_dict())
    assert {key for key in deformable if key.startswith('model.')
            and row.get(key) != deformable[key]} == set()
    assert [s['type'] for s in Config.fromfile(deformable_path).param_scheduler] == ['LinearLR']
    # the deformable model passes DETR's few-AP plateau within its first 400 iterations: it is
    # evaluated every 100 up to 800, then every 400 like DETR (a 5 % spacing) to the end
    milestones, intervals = calc_dynamic_intervals(
        deformable['train_cfg.val_interval'], deformable['train_cfg.dynamic_intervals'])
    assert intervals[0] == 100 and milestones[1] == 800 and intervals[-1] == 400
    assert detr['train_cfg.val_interval'] == 400


@pytest.mark.parametrize('family,row', ROWS)
def test_row_changes_only_its_keys(family, row):
    assert changed_keys(family, row) == EXPECTED_CHANGES[family][row]


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
    # the synthetic within-level rows keep the full model's decoder
    per_level_decoder = within_level and family == 'coco'
    assert all(type(m) is (PerLevelDeformAttn if per_level_decoder else MSDeformAttn)
               for m in decoder_attns)


@pytest.mark.parametrize('family,row', ROWS)
def test_row_trains_and_predicts_on_a_tiny_input(family, row):
    model_cfg = load(family, row).model
    if family == 'coco':
        model_cfg = testing.shrink_model_cfg(model_cfg)
        model_cfg.test_cfg = dict(max_per_img=20)
    size = 64 if family == 'coco' else 128
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
