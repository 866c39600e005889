"""The detector owns the sizes shared by its components.

Every size is written once: the detector gives each component what earlier
ones declare, a config that contradicts it is refused when the model is
built, and every variant / ablation config changes one or two model keys of
the config it inherits from.
"""
from pathlib import Path

import pytest
from mmengine.config import Config

from mmdeform import testing
from mmdeform.registry import MODELS
from projects.synthetic_ablations import CONFIG_DIR

CONFIG_ROOT = Path(__file__).resolve().parents[2] / 'configs'
BASE = CONFIG_ROOT / 'deformable_detr' / 'deformable-detr_r50_16xb2-50e_coco.py'


def single_base(path: Path):
    """The config named by ``_base_ = '...'`` (one file), or None."""
    for line in path.read_text().splitlines():
        if line.startswith("_base_ = '"):
            return (path.parent / line.split("'")[1]).resolve()
    return None


# configs whose _base_ is one other config: the variants and the ablation rows (COCO and synthetic)
DERIVED = sorted(p for root in (CONFIG_ROOT, CONFIG_DIR) for p in root.rglob('*.py')
                 if single_base(p) is not None)


def tiny(**changes) -> dict:
    model = testing.shrink_model_cfg(Config.fromfile(BASE).model, num_queries=8)
    for key, value in changes.items():
        model[key].update(value)
    return model


def flat_model_keys(path: Path) -> dict:
    def flatten(value, prefix):
        # an init_cfg is one setting (e.g. which checkpoint to start from), not a sub-model
        if not isinstance(value, dict) or prefix.endswith('.init_cfg'):
            return {prefix: value}
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f'{prefix}.{key}'))
        return out
    return flatten(Config.fromfile(path).to_dict()['model'], 'model')


def changed_model_keys(path: Path, base: Path) -> set:
    """The flat model keys whose values differ between two configs (absent counts as a value)."""
    mine, theirs = flat_model_keys(path), flat_model_keys(base)
    return {key for key in mine.keys() | theirs.keys()
            if mine.get(key, '<absent>') != theirs.get(key, '<absent>')}


def test_every_component_gets_its_sizes_from_earlier_stages():
    model = MODELS.build(tiny())
    assert model.neck.in_channels == list(model.backbone.out_channels) == [128, 256, 512]
    dims, levels = model.neck.out_channels, model.neck.num_levels
    assert (dims, levels) == (32, 4)
    assert model.positional_encoding.num_feats == dims // 2
    for stage in (model.encoder, model.decoder):
        assert (stage.embed_dims, stage.num_levels) == (dims, levels)
        attn = stage.layers[0].self_attn if stage is model.encoder else stage.layers[0].cross_attn
        assert attn.num_levels == levels
    assert model.query_generator.num_queries == 8
    assert model.bbox_head.num_layers == model.decoder.num_layers == 2
    assert model.bbox_head.cls_branches[0].in_features == dims


def test_variants_follow_from_one_key():
    refine = MODELS.build(tiny(decoder=dict(type='RefineDeformableDecoder')))
    assert not refine.bbox_head.share_branches and len(refine.bbox_head.reg_branches) == 2
    two_stage = MODELS.build(tiny(decoder=dict(type='RefineDeformableDecoder'),
                                  query_generator=dict(type='TwoStageProposals')))
    assert two_stage.query_generator.num_classes == two_stage.bbox_head.num_classes == 5
    assert two_stage.bbox_head.init_wh_bias == 0.0 and refine.bbox_head.init_wh_bias == -2.0
    single = MODELS.build(tiny(backbone=dict(out_indices=(3, )), neck=dict(num_extra_levels=0)))
    assert single.encoder.num_levels == single.decoder.num_levels == 1
    assert single.neck.in_channels == [512]


@pytest.mark.parametrize('changes, message', [
    (dict(decoder=dict(type='RefineDeformableDecoder'), bbox_head=dict(share_branches=True)),
     r'bbox_head.share_branches=True contradicts'),
    (dict(neck=dict(in_channels=[128, 256, 1024])), r'neck.in_channels=\[128, 256, 1024\]'),
    (dict(encoder=dict(num_levels=3)), r'encoder.num_levels=3 contradicts the 4'),
    (dict(decoder=dict(embed_dims=64)), r'decoder.embed_dims=64 contradicts the 32'),
    (dict(positional_encoding=dict(num_feats=8)), r'positional_encoding.num_feats=8'),
    (dict(query_generator=dict(type='TwoStageProposals', num_classes=7)),
     r'query_generator.num_classes=7 contradicts the 5'),
    (dict(decoder=dict(type='RefineDeformableDecoder'),
          query_generator=dict(type='TwoStageProposals', share_head_branches=True)),
     r'share_head_branches=True needs a head that shares'),
    (dict(encoder=dict(layer_cfg=dict(embed_dims=32))), r'remove layer_cfg.embed_dims'),
])
def test_contradicting_sizes_are_refused_at_build(changes, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(tiny(**changes))


def test_two_stage_without_refinement_can_share_the_head_branches():
    model = MODELS.build(tiny(query_generator=dict(type='TwoStageProposals',
                                                   share_head_branches=True)))
    assert not hasattr(model.query_generator, 'cls_branch')
    names = [name for name, _ in model.named_parameters()]
    assert not any(name.startswith('query_generator.cls_branch') for name in names)
    data = model.data_preprocessor(testing.make_batch([(64, 64), (48, 56)], [3, 1], 5),
                                   training=True)
    losses = model(**data, mode='loss')
    model.zero_grad()
    (losses['enc_loss_cls'] + losses['enc_loss_bbox']).backward()
    # the encoder loss trains the head's shared branches (there are no others)
    assert model.bbox_head.cls_branches[0].weight.grad.abs().sum() > 0
    cls_branch, reg_branch = model.query_generator.branches(model.bbox_head.shared_branches())
    assert cls_branch is model.bbox_head.cls_branches[0]
    assert reg_branch is model.bbox_head.reg_branches[0]
    with pytest.raises(ValueError, match='needs the head'):
        model.query_generator.branches(None)


def test_a_component_that_is_not_a_config_is_named():
    model = tiny()
    model['bbox_head'] = 'DeformableDETRHead'
    with pytest.raises(ValueError, match='bbox_head must be a config dict with a type'):
        MODELS.build(model)


@pytest.mark.parametrize('path', DERIVED, ids=lambda p: p.name)
def test_every_variant_is_one_or_two_model_keys(path):
    base = single_base(path)
    changed = changed_model_keys(path, base)
    assert len(changed) <= 2, f'{path.name} changes {sorted(changed)} of {base.name}'


def readme_variant_table() -> dict:
    """configs/README.md's "What each variant changes": config -> (base, count, keys named)."""
    rows = {}
    for line in (CONFIG_ROOT / 'README.md').read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if len(cells) != 4 or not cells[0].startswith('`'):
            continue

        def resolve(cell):
            name = cell.strip('`')
            if name.startswith('<synthetic>/'):
                return (CONFIG_DIR / name[len('<synthetic>/'):]).resolve()
            return (CONFIG_ROOT / name).resolve()

        keys = {'model.' + key for key in cells[3].split('`')[1::2]}
        rows[resolve(cells[0])] = (resolve(cells[1]), int(cells[2]), keys)
    return rows


def test_configs_readme_lists_every_variant_with_its_base_and_keys():
    table = readme_variant_table()
    listed, derived = set(table), {p.resolve() for p in DERIVED}
    assert not listed - derived, f'configs/README.md lists configs that are not derived: ' \
                                 f'{sorted(p.name for p in listed - derived)}'
    demo = {p for p in derived if 'synthetic_ablations/configs/' in str(p)
            and p.parent.name not in ('ablations', 'convergence')}
    assert not derived - listed - demo, f'configs/README.md misses ' \
                                        f'{sorted(p.name for p in derived - listed - demo)}'
    for path, (base, count, keys) in table.items():
        assert base == single_base(path), f'{path.name}: README says it inherits {base.name}'
        changed = changed_model_keys(path, base)
        assert count == len(changed), f'{path.name}: README says {count} keys, {sorted(changed)}'
        assert keys == changed, f'{path.name}: README names {sorted(keys)}, {sorted(changed)}'
