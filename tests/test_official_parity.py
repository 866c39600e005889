"""Parity with the official Deformable DETR, and the official-checkpoint converter.

Every variant folder of the fixture directory (README there) holds the
official model's float64 outputs for synthetic weights. Our model is built
from the matching config, loads the converted official weights strictly, and
must reproduce every stored output at the README's float64 tolerances
(1e-10; 1e-8 for pixel boxes; labels exactly). The fixture directory is
``$MMDEFORM_PARITY_FIXTURES`` or ``../shared/fixtures/official_parity`` next
to the repository root; a missing variant is a failure, not a skip. The
fixtures are not part of the repository: without the directory the module
is skipped with a message saying how to get them, unless the environment
variable ``CI`` is set (then every test fails with that message).
"""
import argparse
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import CheckpointLoader
from mmengine.structures import InstanceData

from mmdeform.converters.official import convert_official_state_dict, official_name_map
from mmdeform.registry import MODELS
from mmdeform.structures import DetDataSample, box_cxcywh_to_xyxy

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO_ROOT / os.environ.get('MMDEFORM_PARITY_FIXTURES',
                                         '../shared/fixtures/official_parity')
CONFIG_DIR = REPO_ROOT / 'configs' / 'deformable_detr'
VARIANT_CONFIGS = {
    'base': 'deformable-detr_r50_16xb2-50e_coco.py',
    'box_refine': 'deformable-detr-refine_r50_16xb2-50e_coco.py',
    'two_stage': 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
    'single_scale': 'deformable-detr-single-scale_r50_16xb2-50e_coco.py',
}
MISSING_FIXTURES = (
    f'official parity fixtures not found at {FIXTURE_DIR}. They are not in the repository: '
    'copy the official_parity folder (made from the official Deformable-DETR code, described '
    'by its README.md) from the project\'s shared workspace to ../shared/fixtures/ next to the '
    'checkout, or set MMDEFORM_PARITY_FIXTURES to its path. With CI set this is a failure.')
if not FIXTURE_DIR.is_dir() and not os.environ.get('CI'):
    pytest.skip(MISSING_FIXTURES, allow_module_level=True)
FOUND = sorted(p.name for p in FIXTURE_DIR.iterdir() if p.is_dir()) if FIXTURE_DIR.is_dir() else []
VARIANTS = sorted(set(VARIANT_CONFIGS) | set(FOUND))
ATOL = 1e-10
ATOL_PIXELS = 1e-8
OFFICIAL_LOSS_NAMES = {'loss_ce': 'loss_cls', 'loss_bbox': 'loss_bbox', 'loss_giou': 'loss_iou'}


@pytest.fixture(autouse=True)
def fixtures_present():
    """In CI (the module is skipped elsewhere) missing fixtures fail every test, saying why."""
    if not FIXTURE_DIR.is_dir():
        pytest.fail(MISSING_FIXTURES)


def our_loss_name(official: str) -> str:
    """Official loss key -> ours.

    'loss_ce' -> 'loss_cls', 'loss_bbox_3' -> 'd3.loss_bbox', 'loss_giou_enc' -> 'enc_loss_iou'.
    """
    for name, ours in OFFICIAL_LOSS_NAMES.items():
        if official == name:
            return ours
        if official.startswith(name + '_'):
            suffix = official[len(name) + 1:]
            return f'enc_{ours}' if suffix == 'enc' else f'd{int(suffix)}.{ours}'
    raise KeyError(f'unknown official loss name {official!r}')


@functools.cache
def load_weights_module():
    """``weights.py`` of the fixture directory, imported from its path."""
    path = FIXTURE_DIR / 'weights.py'
    if not path.is_file():
        raise FileNotFoundError(
            f'parity fixtures: {path} is missing (set MMDEFORM_PARITY_FIXTURES)')
    spec = importlib.util.spec_from_file_location('official_parity_weights', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # make_tensor is a pure function of its arguments and the variants share
    # most tensors (the whole backbone): memoize it (make_state_dict clones
    # what it returns). box_wh_bias only affects the first box head's last
    # bias (weights.py docstring), so elsewhere it is not part of the key.
    cached = functools.cache(module.make_tensor)

    def make_tensor(name, shape, dtype, spec_seed, box_wh_bias=module.BOX_HEAD_WH_BIAS):
        if not re.search(r'(^|\.)bbox_embed\.0\.layers\.2\.bias$', name):
            box_wh_bias = module.BOX_HEAD_WH_BIAS
        return cached(name, tuple(shape), str(dtype), int(spec_seed), float(box_wh_bias))

    module.make_tensor = make_tensor
    return module


def build_model(variant: str):
    """Our detector for ``variant`` with 91 classes and no pretrained download."""
    if variant not in VARIANT_CONFIGS:
        raise KeyError(f'parity fixtures: folder {variant!r} has no matching config')
    cfg = Config.fromfile(CONFIG_DIR / VARIANT_CONFIGS[variant])
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 91
    if cfg.model.query_generator.type == 'TwoStageProposals':
        cfg.model.query_generator.num_classes = 91
    return MODELS.build(cfg.model)


def make_data_samples(inputs: dict, dtype: torch.dtype = torch.float64) -> list:
    """DetDataSamples of the fixture batch: sizes and absolute xyxy targets."""
    batch_input_shape = tuple(inputs['images'].shape[-2:])
    samples = []
    for (h, w), (ori_h, ori_w), target in zip(inputs['image_sizes'].tolist(),
                                              inputs['orig_target_sizes'].tolist(),
                                              inputs['targets']):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(ori_h, ori_w),
                                             batch_input_shape=batch_input_shape))
        scale = torch.tensor([w, h, w, h], dtype=torch.float64)
        sample.gt_instances = InstanceData(
            bboxes=(box_cxcywh_to_xyxy(target['boxes'].double()) * scale).to(dtype),
            labels=target['labels'])
        samples.append(sample)
    return samples


def run_once(model, inputs: dict, dtype: torch.dtype) -> dict:
    """One 'loss' forward in ``dtype`` with the stage outputs captured."""
    model.to(dtype)
    captured = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda module, args, output, name=name: captured.__setitem__(name, output))
        for name in ('encoder', 'query_generator', 'decoder', 'bbox_head')]
    samples = make_data_samples(inputs, dtype)
    with torch.no_grad():
        losses = model(inputs['images'].to(dtype), samples, mode='loss')
        predictions = model.bbox_head.predict(captured['bbox_head'], samples)
    for hook in hooks:
        hook.remove()
    return dict(losses=losses, predictions=predictions,
                padding_mask=model.padding_mask(inputs['images'], samples), **captured)


@functools.cache
def run_variant(variant: str) -> dict:
    """Our model on a fixture in float32 and then in float64.

    As the reference was made: the float32 weights are loaded, the float32
    run uses them as they are, then model and images are cast to float64.
    """
    folder = FIXTURE_DIR / variant
    spec = json.loads((folder / 'spec.json').read_text())
    inputs = torch.load(folder / 'inputs.pt', weights_only=True)
    reference = torch.load(folder / 'outputs.pt', weights_only=True)
    model = build_model(variant)
    official = load_weights_module().make_state_dict(spec)
    model.load_state_dict(convert_official_state_dict(official), strict=True)
    model.eval()
    float32 = run_once(model, inputs, torch.float32)
    return dict(reference=reference, inputs=inputs, float32=float32,
                **run_once(model, inputs, torch.float64))


def assert_close(actual, expected, atol=ATOL, what=''):
    assert actual.shape == expected.shape, f'{what}: shape {actual.shape} != {expected.shape}'
    assert actual.dtype == expected.dtype, f'{what}: dtype {actual.dtype} != {expected.dtype}'
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f'{what}: {m}')


def test_fixture_folders_match_configs():
    assert FIXTURE_DIR.is_dir(), f'parity fixture directory {FIXTURE_DIR} is missing'
    assert set(FOUND) == set(VARIANT_CONFIGS), (
        f'fixture folders {FOUND} differ from the variants with configs {sorted(VARIANT_CONFIGS)}')


@pytest.mark.parametrize('variant', VARIANTS)
def test_predictions_of_every_layer(variant):
    result = run_variant(variant)
    ref, head_output = result['reference']['float64'], result['bbox_head']
    assert_close(head_output.logits[-1], ref['pred_logits'], what='final logits')
    assert_close(head_output.boxes_cxcywh[-1], ref['pred_boxes'], what='final boxes')
    assert head_output.logits.shape[0] == len(ref['aux_outputs']) + 1
    for layer, aux in enumerate(ref['aux_outputs']):
        assert_close(head_output.logits[layer], aux['pred_logits'], what=f'layer {layer} logits')
        assert_close(head_output.boxes_cxcywh[layer], aux['pred_boxes'],
                     what=f'layer {layer} boxes')


@pytest.mark.parametrize('variant', VARIANTS)
def test_two_stage_encoder_outputs(variant):
    result = run_variant(variant)
    ref, query_output = result['reference']['float64'], result['query_generator']
    if 'enc_outputs' not in ref:
        assert query_output.enc_logits is None and query_output.enc_boxes_cxcywh is None
        return
    assert_close(query_output.enc_logits, ref['enc_outputs']['pred_logits'], what='enc logits')
    assert_close(query_output.enc_boxes_cxcywh, ref['enc_outputs']['pred_boxes'],
                 what='enc boxes')


@pytest.mark.parametrize('variant', VARIANTS)
def test_internals(variant):
    result = run_variant(variant)
    debug, encoder_output = result['reference']['debug'], result['encoder']
    assert torch.equal(result['padding_mask'], result['inputs']['mask'])
    assert torch.equal(encoder_output.spatial_shapes, debug['spatial_shapes'])
    assert torch.equal(encoder_output.level_start_index, debug['level_start_index'])
    assert torch.equal(encoder_output.padding_mask, debug['mask_flatten'])
    assert_close(encoder_output.valid_ratios, debug['valid_ratios'], atol=0, what='valid ratios')
    assert_close(result['query_generator'].reference_points, debug['init_reference'],
                 what='initial reference')
    references = result['decoder'].references
    assert len(references) == debug['inter_references'].shape[0]
    # references[l] is what layer l received; inter_references[l] what layer l produced
    for layer in range(1, len(references)):
        assert_close(references[layer], debug['inter_references'][layer - 1],
                     what=f'reference of layer {layer}')


@pytest.mark.parametrize('variant', VARIANTS)
def test_postprocess(variant):
    result = run_variant(variant)
    for image, (sample, ref) in enumerate(zip(result['predictions'],
                                              result['reference']['postprocess'])):
        pred = sample.pred_instances
        assert_close(pred.scores, ref['scores'], what=f'image {image} scores')
        assert torch.equal(pred.labels, ref['labels']), f'image {image} labels'
        assert_close(pred.bboxes, ref['boxes'], atol=ATOL_PIXELS, what=f'image {image} boxes')


@pytest.mark.parametrize('variant', VARIANTS)
def test_losses(variant):
    result = run_variant(variant)
    losses, ref = result['losses'], result['reference']
    expected = {our_loss_name(name): value for name, value in ref['loss_weighted'].items()}
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert_close(losses[name], value, what=name)
    assert_close(sum(losses.values()), ref['loss_total'], what='total loss')


def assert_rows_match(actual, expected, atol, what):
    """Every row of ``expected`` (Q, D) has a row of ``actual`` within ``atol``
    (max-abs): float32 may permute near-tied two-stage query slots (README 9)."""
    assert actual.shape == expected.shape, f'{what}: shape {actual.shape} != {expected.shape}'
    distance = torch.cdist(expected.double(), actual.double(), p=float('inf'))  # (Q, Q)
    worst = distance.min(dim=1).values.max().item()
    assert worst <= atol, f'{what}: a reference row is {worst:.3g} from every row of ours'


@pytest.mark.parametrize('variant', VARIANTS)
def test_float32_run_within_the_float32_tolerances(variant):
    """Our float32 model vs the official float32 outputs (README 9, float32)."""
    ref, result = run_variant(variant)['reference'], run_variant(variant)['float32']
    head_output = result['bbox_head']
    layers = ref['float32']['aux_outputs'] + [ref['float32']]
    for layer, expected in enumerate(layers):
        for image in range(len(result['predictions'])):
            assert_rows_match(head_output.logits[layer, image], expected['pred_logits'][image],
                              1e-4, f'layer {layer} image {image} logits')
            assert_rows_match(head_output.boxes_cxcywh[layer, image],
                              expected['pred_boxes'][image], 2e-5,
                              f'layer {layer} image {image} boxes')
    if 'enc_outputs' in ref['float32']:  # one row per token: no reordering
        assert_close(result['query_generator'].enc_logits,
                     ref['float32']['enc_outputs']['pred_logits'], atol=1e-4, what='enc logits')
    weights = ref['weight_dict']
    for name, value in ref['loss_dict_float32'].items():
        if name in weights:
            assert_close(result['losses'][our_loss_name(name)], value * weights[name],
                         atol=1e-4, what=name)
    assert_close(sum(result['losses'].values()), ref['loss_total_float32'], atol=1e-4,
                 what='total loss')
    for sample, expected in zip(result['predictions'], ref['postprocess_float32']):
        pred = sample.pred_instances
        assert_close(pred.scores, expected['scores'], atol=1e-5, what='scores (sorted)')
        # (score, label, box) rows, matched without relying on the order
        assert_rows_match(
            torch.cat([pred.scores[:, None] * 1e3, pred.labels[:, None] * 1e3, pred.bboxes], 1),
            torch.cat([expected['scores'][:, None] * 1e3, expected['labels'][:, None] * 1e3,
                       expected['boxes']], 1), 1e-2, 'detections')


def test_our_loss_names():
    assert our_loss_name('loss_ce') == 'loss_cls'
    assert our_loss_name('loss_giou_4') == 'd4.loss_iou'
    assert our_loss_name('loss_bbox_enc') == 'enc_loss_bbox'


# ----------------------------------------------------------------------------- converter

def tiny_official_state_dict(variant: str) -> dict:
    """Official key layout of ``variant`` with one distinct small tensor per
    canonical key; aliases get an equal copy (as in an official checkpoint)."""
    spec = json.loads((FIXTURE_DIR / variant / 'spec.json').read_text())
    state_dict = {name: torch.full((2,), float(i)) for i, (name, _, _) in
                  enumerate(spec['state_dict'])}
    for alias, canonical in spec['tied'].items():
        state_dict[alias] = state_dict[canonical].clone()
    return state_dict


@pytest.mark.parametrize('variant', sorted(VARIANT_CONFIGS))
def test_converter_finds_the_official_aliases(variant):
    spec = json.loads((FIXTURE_DIR / variant / 'spec.json').read_text())
    renames, aliases = official_name_map([name for name, _, _ in spec['state_dict']])
    assert aliases == spec['tied']
    assert len(set(renames.values())) == len(renames)  # no two keys land on one name


def test_converter_reads_canonical_values():
    state_dict = tiny_official_state_dict('base')
    converted = convert_official_state_dict(state_dict)
    assert torch.equal(converted['bbox_head.cls_branches.0.bias'], state_dict['class_embed.0.bias'])
    assert 'bbox_head.cls_branches.1.bias' not in converted
    assert torch.equal(converted['query_generator.query_embed.weight'],
                       state_dict['query_embed.weight'])
    assert torch.equal(converted['decoder.layers.2.cross_attn_norm.weight'],
                       state_dict['transformer.decoder.layers.2.norm1.weight'])


@pytest.mark.parametrize('alias', ['class_embed.3.bias', 'bbox_embed.5.layers.2.weight'])
def test_converter_rejects_diverging_alias(alias):
    state_dict = tiny_official_state_dict('base')
    state_dict[alias] = state_dict[alias] + 1
    with pytest.raises(ValueError, match=alias.replace('.', r'\.')):
        convert_official_state_dict(state_dict)


def test_converter_rejects_diverging_decoder_alias():
    state_dict = tiny_official_state_dict('two_stage')
    state_dict['transformer.decoder.class_embed.6.weight'] += 1
    with pytest.raises(ValueError, match=r'transformer\.decoder\.class_embed\.6\.weight'):
        convert_official_state_dict(state_dict)


def test_converter_names_unknown_and_missing_keys():
    state_dict = tiny_official_state_dict('box_refine')
    state_dict['transformer.mystery.weight'] = torch.zeros(1)
    with pytest.raises(KeyError, match=r'transformer\.mystery\.weight'):
        convert_official_state_dict(state_dict)
    state_dict = tiny_official_state_dict('box_refine')
    del state_dict['bbox_embed.2.layers.0.bias']
    with pytest.raises(KeyError, match=r'bbox_embed\.2\.layers\.0\.bias'):
        convert_official_state_dict(state_dict)


def test_convert_tool_end_to_end(tmp_path):
    official = tiny_official_state_dict('two_stage')
    src, dst = tmp_path / 'official.pth', tmp_path / 'mmdeform.pth'
    torch.save({'model': official, 'epoch': 49,
                'args': argparse.Namespace(lr=2e-4, two_stage=True, lr_drop_epochs=None)}, src)
    subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'convert_official_ckpt.py'),
                    str(src), str(dst)], check=True, cwd=REPO_ROOT, capture_output=True)
    saved = CheckpointLoader.load_checkpoint(str(dst), map_location='cpu')
    expected = convert_official_state_dict(official)
    assert list(saved) == ['state_dict']
    assert list(saved['state_dict']) == list(expected)
    for name, value in expected.items():
        assert torch.equal(saved['state_dict'][name], value), name
    # the names are exactly those of our two-stage model
    assert set(saved['state_dict']) == set(build_model('two_stage').state_dict())
