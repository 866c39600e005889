"""Parity with HuggingFace transformers' Deformable DETR, and the transformers converter.

A small random ``DeformableDetrForObjectDetection`` (transformers' own
ResNet-18, no pretrained weights, nothing downloaded) is saved with
``save_pretrained``, converted with ``tools/convert_hf_ckpt.py`` and loaded
into our model through ``init_detector``; both run a padded batch of two
images of different sizes (``pixel_mask`` / our ``img_shape``) and must give
the same logits and boxes of every decoder layer, and the same two-stage
encoder outputs, in float64 at 1e-10.

transformers computes everything in the model's dtype; the official model
(and ours) computes a few parameter-free pieces in float32 ("float32
islands", README "Equality with the official model"). For the float64
comparison transformers' model runs those pieces in float32 too, through
wrappers that do not depend on transformers' signatures (4.x and 5.x call
them differently): :func:`in_float32` runs a method with every float64
tensor and dtype argument in float32 (the sine position encoding and the
valid ratios); for two-stage, :func:`official_proposals` and
:func:`official_proposal_encoding` keep transformers' own results for what
has weights and take the proposal boxes and their sine encoding from the
official float32 computation (our ``make_proposals`` / ``proposal_pos_embed``,
checked against the official fixtures; a float32 ``log`` in transformers'
differs by an ulp), finding their inputs by type, not by name or position.
The float32 tests run both models unchanged. The converter is exercised on
the files the installed transformers writes (4.x: every head name; 5.x:
tied copies dropped); tests/test_hf_ties.py covers the other layout.
"""
import functools
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pytest
import torch
from mmengine.config import Config

from mmdeform.apis import init_detector
from mmdeform.converters.hf import convert_hf_state_dict, hf_model_overrides, load_hf_checkpoint
from mmdeform.converters.hf_export import hf_config_kwargs
from mmdeform.models.query_generators.two_stage_proposals import make_proposals, proposal_pos_embed
from mmdeform.testing.hf_models import HF_VARIANTS as VARIANTS
from mmdeform.testing.hf_models import IMAGE_SIZES, padded_batch, randomize, save_kwargs
from mmdeform.testing.hf_models import tiny_hf_config as hf_config

transformers = pytest.importorskip('transformers')
from transformers.models.deformable_detr import modeling_deformable_detr as hf_modeling  # noqa

REPO_ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-10


@functools.cache
def saved_hf_model(variant: str, tmp_root: str) -> Path:
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(hf_config(variant)).eval()
    randomize(model)
    folder = Path(tmp_root) / f'hf_{variant}'
    model.save_pretrained(folder, **save_kwargs(model, VARIANTS[variant][0]))
    return folder


@pytest.fixture(scope='module')
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('hf'))


def _float32(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
        return value.float()
    return torch.float32 if value is torch.float64 else value


def in_float32(method):
    """``method`` run with its float64 tensors and dtype arguments in float32, whatever its
    signature (its float32 result stays float32, as the official island's does)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        args, kwargs = [_float32(a) for a in args], {k: _float32(v) for k, v in kwargs.items()}
        return method(self, *args, **kwargs)
    return wrapper


def official_proposals(method):
    """``gen_encoder_output_proposals``: ``(object queries, proposals)``, the queries its own
    (model dtype), the proposal boxes the official float32 computation (our
    ``make_proposals``, checked against the official fixtures; transformers' float32 ``log``
    differs by an ulp). Its inputs are found by type: the boolean padding mask (B, S) and
    the (H, W) of each level."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        queries, _ = method(self, *args, **kwargs)
        inputs = [*args, *kwargs.values()]
        mask = next(a for a in inputs if isinstance(a, torch.Tensor) and a.dtype == torch.bool)
        shapes = next(a for a in inputs if isinstance(a, (list, tuple)) or (
            isinstance(a, torch.Tensor) and a.dtype == torch.long))
        proposals, _ = make_proposals(mask, [tuple(int(x) for x in s) for s in shapes])
        return queries, proposals.to(queries.dtype)
    return wrapper


def official_proposal_encoding(method):
    """``get_proposal_pos_embed`` as the official model computes it (``dim_t`` a float32
    island, the rest in the model's dtype: our ``proposal_pos_embed``); its input is its
    one tensor argument, the channels per coordinate a quarter of its own output's."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        expected = method(self, *args, **kwargs)
        coords = next(a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor))
        return proposal_pos_embed(coords, expected.shape[-1] // 4).to(expected.dtype)
    return wrapper


def float32_islands(stack: ExitStack) -> None:
    """Run transformers' parameter-free float32 pieces as the official model does."""
    model = hf_modeling.DeformableDetrModel
    for owner, name, wrap in (
            (hf_modeling.DeformableDetrSinePositionEmbedding, 'forward', in_float32),
            (model, 'get_valid_ratio', in_float32),
            (model, 'get_proposal_pos_embed', official_proposal_encoding),
            (model, 'gen_encoder_output_proposals', official_proposals)):
        stack.enter_context(mock.patch.object(owner, name, wrap(getattr(owner, name))))


def hf_every_layer(model, images, pixel_mask):
    """transformers' logits / boxes of every decoder layer, (D, B, Q, K) / (D, B, Q, 4)."""
    out = model(pixel_values=images, pixel_mask=pixel_mask)
    logits, boxes = [], []
    for layer in range(out.intermediate_hidden_states.shape[1]):
        reference = out.init_reference_points if layer == 0 else \
            out.intermediate_reference_points[:, layer - 1]
        reference = hf_modeling.inverse_sigmoid(reference)
        hidden = out.intermediate_hidden_states[:, layer]
        delta = model.bbox_embed[layer](hidden)
        if reference.shape[-1] == 4:
            delta = delta + reference
        else:
            delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
        logits.append(model.class_embed[layer](hidden))
        boxes.append(delta.sigmoid())
    assert torch.equal(logits[-1], out.logits) and torch.equal(boxes[-1], out.pred_boxes)
    return torch.stack(logits), torch.stack(boxes), out


@functools.cache
def run_pair(variant: str, tmp_root: str, dtype: torch.dtype = torch.float64):
    """(transformers outputs, our HeadOutput, our QueryOutput) on the padded batch."""
    folder = saved_hf_model(variant, tmp_root)
    dst = Path(tmp_root) / f'ours_{variant}'
    if not (dst / 'model.pth').is_file():
        subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'convert_hf_ckpt.py'),
                        str(folder), str(dst)], check=True, cwd=REPO_ROOT, capture_output=True)
    ours = init_detector(dst / 'config.py', dst / 'model.pth').to(dtype)
    hf = transformers.DeformableDetrForObjectDetection.from_pretrained(folder).eval().to(dtype)
    images, pixel_mask, samples = padded_batch(dtype)
    with torch.no_grad(), ExitStack() as stack:
        if dtype == torch.float64:
            float32_islands(stack)
        hf_logits, hf_boxes, hf_out = hf_every_layer(hf, images, pixel_mask)
        head_output, query_output = ours.forward_stages(images, samples)
    return dict(hf_logits=hf_logits, hf_boxes=hf_boxes, hf=hf_out, head=head_output,
                query=query_output, model=ours)


def assert_close(actual, expected, atol, what):
    assert actual.shape == expected.shape, f'{what}: shape {actual.shape} != {expected.shape}'
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f'{what}: {m}')


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_every_layer_equal_in_float64(variant, tmp_root):
    result = run_pair(variant, tmp_root)
    assert_close(result['head'].logits, result['hf_logits'], ATOL, 'logits of every layer')
    assert_close(result['head'].boxes_cxcywh, result['hf_boxes'], ATOL, 'boxes of every layer')
    hf = result['hf']
    if VARIANTS[variant][1]:
        assert_close(result['query'].enc_logits, hf.enc_outputs_class, ATOL, 'enc logits')
        assert_close(result['query'].enc_boxes_cxcywh, hf.enc_outputs_coord_logits.sigmoid(),
                     ATOL, 'enc boxes')
    else:
        assert result['query'].enc_logits is None


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_float32_close(variant, tmp_root):
    """float32 without mirroring: transformers' own dtype choices, our islands."""
    result = run_pair(variant, tmp_root, torch.float32)
    assert_close(result['head'].logits, result['hf_logits'], 1e-4, 'logits')
    assert_close(result['head'].boxes_cxcywh, result['hf_boxes'], 1e-5, 'boxes')


def test_converted_folder(tmp_root):
    folder = saved_hf_model('refine_twostage', tmp_root)
    run_pair('refine_twostage', tmp_root)
    dst = Path(tmp_root) / 'ours_refine_twostage'
    assert sorted(p.name for p in dst.iterdir()) == ['config.py', 'model.pth']
    model = init_detector(dst / 'config.py', dst / 'model.pth')
    assert model.dataset_meta['classes'] == tuple(f'thing{i}' for i in range(7))
    assert model.query_generator.num_queries == 20 and model.bbox_head.num_classes == 7
    assert {p.name for p in folder.iterdir()} & {'model.safetensors', 'pytorch_model.bin'}


# ----------------------------------------------------------------------------- errors

def tiny_state_dict(variant: str) -> tuple:
    torch.manual_seed(0)
    config = hf_config(variant)
    return transformers.DeformableDetrForObjectDetection(config).state_dict(), config.to_dict()


def test_converter_names_unknown_and_missing_keys():
    state_dict, config = tiny_state_dict('base')
    state_dict['model.mystery.weight'] = torch.zeros(1)
    with pytest.raises(KeyError, match=r'model\.mystery\.weight'):
        convert_hf_state_dict(state_dict, config)
    state_dict, _ = tiny_state_dict('base')
    del state_dict['model.decoder.layers.1.self_attn.k_proj.bias']
    with pytest.raises(KeyError, match=r'k_proj\.bias'):
        convert_hf_state_dict(state_dict, config)


@pytest.mark.parametrize('variant,alias', [('base', 'class_embed.2.bias'),
                                           ('refine_twostage', 'model.decoder.bbox_embed.1.'
                                                               'layers.0.weight')])
def test_converter_rejects_diverging_alias(variant, alias):
    state_dict, config = tiny_state_dict(variant)
    state_dict = {k: v.clone() for k, v in state_dict.items()}
    state_dict[alias] += 1
    with pytest.raises(ValueError, match=alias.replace('.', r'\.')):
        convert_hf_state_dict(state_dict, config)


@pytest.mark.parametrize('key,value', [('activation_function', 'gelu'),
                                       ('position_embedding_type', 'learned'),
                                       ('num_feature_levels', 2), ('two_stage', True)])
def test_unsupported_variants_are_refused(key, value):
    config = hf_config('base').to_dict()
    config[key] = value
    with pytest.raises(ValueError, match=key):
        hf_model_overrides(config)


def test_unsupported_backbone_is_refused():
    config = hf_config('base').to_dict()
    config['backbone_config']['depths'] = [1, 1, 1, 1]
    with pytest.raises(ValueError, match='ResNet'):
        hf_model_overrides(config)
    config = dict(hf_config('base').to_dict(), use_timm_backbone=True, backbone='convnext_tiny')
    with pytest.raises(ValueError, match='convnext_tiny'):
        hf_model_overrides(config)


def test_timm_backbone_names_map_to_ours():
    """timm's ResNet keeps torchvision's names: our names with transformers' prefix."""
    state_dict, config = tiny_state_dict('base')
    prefix = 'model.backbone.conv_encoder.model.'
    ours = convert_hf_state_dict(state_dict, config)
    timm_like = {k: v for k, v in state_dict.items()  # 4.x and 5.x backbone names
                 if not k.startswith((prefix, 'model.backbone.model.'))}
    timm_like.update({prefix + k[len('backbone.'):]: v for k, v in ours.items()
                      if k.startswith('backbone.')})
    config = dict(config, use_timm_backbone=True, backbone='resnet18', backbone_config=None)
    converted = convert_hf_state_dict(timm_like, config)
    assert set(converted) == set(ours)
    assert hf_model_overrides(config)['backbone']['depth'] == 18


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_round_trip_through_a_transformers_folder(variant, tmp_root):
    """transformers -> ours -> tools/export_hf.py -> from_pretrained: same weights, same outputs."""
    ours = run_pair(variant, tmp_root)['model']
    dst, out = Path(tmp_root) / f'ours_{variant}', Path(tmp_root) / f'back_{variant}'
    subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'export_hf.py'),
                    str(dst / 'config.py'), str(dst / 'model.pth'), str(out)],
                   check=True, cwd=REPO_ROOT, capture_output=True)
    original = transformers.DeformableDetrForObjectDetection.from_pretrained(
        saved_hf_model(variant, tmp_root)).state_dict()
    back = transformers.DeformableDetrForObjectDetection.from_pretrained(out).eval().double()
    assert set(back.state_dict()) == set(original)
    for key, value in back.state_dict().items():
        assert torch.equal(value.float(), original[key]), key
    assert back.config.id2label == {i: f'thing{i}' for i in range(7)}
    processor = transformers.DeformableDetrImageProcessor.from_pretrained(out)
    assert processor.image_mean == pytest.approx([0.485, 0.456, 0.406])
    images, pixel_mask, samples = padded_batch(torch.float64)
    with torch.no_grad(), ExitStack() as stack:
        float32_islands(stack)
        hf_logits, hf_boxes, _ = hf_every_layer(back, images, pixel_mask)
        head_output, _ = ours.double().forward_stages(images, samples)
    assert_close(head_output.logits, hf_logits, ATOL, 'logits after the round trip')
    assert_close(head_output.boxes_cxcywh, hf_boxes, ATOL, 'boxes after the round trip')


@pytest.mark.parametrize('change,message', [
    (dict(decoder=dict(type='DeformableDecoder'),
          query_generator=dict(type='TwoStageProposals', share_head_branches=True)),
     'two-stage proposals without box refinement'),
    (dict(encoder=dict(layer_cfg=dict(self_attn_cfg=dict(type='SameLevelDeformAttn')))),
     'SameLevelDeformAttn')])
def test_export_refuses_what_transformers_cannot_express(change, message, tmp_root):
    run_pair('refine_twostage', tmp_root)
    cfg = Config.fromfile(Path(tmp_root) / 'ours_refine_twostage' / 'config.py')
    cfg.merge_from_dict(dict(model=change))
    with pytest.raises(ValueError, match=message):
        hf_config_kwargs(cfg.model)


@pytest.mark.parametrize('variant', ['base', 'refine_twostage'])
def test_post_processing_agrees(variant, tmp_root):
    """Our predict vs transformers' post_process_object_detection (top-k over Q*K)."""
    result = run_pair(variant, tmp_root)
    _, _, samples = padded_batch(torch.float64)
    predictions = result['model'].bbox_head.predict(result['head'], samples)
    sizes = torch.tensor(IMAGE_SIZES, dtype=torch.float64)
    expected = transformers.DeformableDetrImageProcessor().post_process_object_detection(
        result['hf'], threshold=-1.0, target_sizes=sizes, top_k=100)
    for image, (sample, ref) in enumerate(zip(predictions, expected)):
        pred = sample.pred_instances
        assert torch.equal(pred.labels, ref['labels']), f'image {image} labels'
        assert_close(pred.scores, ref['scores'], ATOL, f'image {image} scores')
        assert_close(pred.bboxes, ref['boxes'], 1e-8, f'image {image} boxes (pixels)')


# ----------------------------------------------------------------------------- 5.x names

V5_RENAMES = [(r'^model\.backbone\.conv_encoder\.model\.', 'model.backbone.model.'),
              (r'(?<!\.mlp)\.(fc[12])\.', r'.mlp.\1.'),
              (r'self_attn\.out_proj', 'self_attn.o_proj')]


@pytest.mark.parametrize('variant', ['base', 'refine_twostage'])
def test_transformers_5_names_convert_alike(variant):
    """A live 5.x model's names (``backbone.model``, ``mlp.fc1``, ``o_proj``), and 5.x
    files, which keep the refine heads only as ``model.decoder.*``, convert alike."""
    state_dict, config = tiny_state_dict(variant)
    expected = convert_hf_state_dict(state_dict, config)
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in V5_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    as_saved = {key: value for key, value in state_dict.items()
                if not (VARIANTS[variant][0] and re.match(r'(class|bbox)_embed\.', key))}
    for variant_dict in (renamed, as_saved):
        converted = convert_hf_state_dict(variant_dict, config)
        assert set(converted) == set(expected)
        for name, value in expected.items():
            assert torch.equal(converted[name], value), name


def test_tool_names_missing_weights(tmp_path):
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(hf_config('base'))
    model.save_pretrained(tmp_path / 'src', **save_kwargs(model, False))
    _, state_dict = load_hf_checkpoint(tmp_path / 'src')
    del state_dict['model.level_embed']
    for name in ('model.safetensors', 'pytorch_model.bin'):
        (tmp_path / 'src' / name).unlink(missing_ok=True)
    torch.save(state_dict, tmp_path / 'src' / 'pytorch_model.bin')
    run = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'convert_hf_ckpt.py'),
                          str(tmp_path / 'src'), str(tmp_path / 'dst')], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert run.returncode != 0 and 'encoder.level_embed' in run.stderr
    assert not (tmp_path / 'dst' / 'model.pth').exists()
