"""Tied heads of transformers' Deformable DETR: the rule, both file layouts, the export refusal.

The rule (:func:`hf_head_ties`) is checked against the installed transformers
(its expanded ``_tied_weights_keys`` where it has them, 5.x; the tensors its
model shares and the names its ``save_pretrained`` drops, any version). The
file layouts of both transformers lines are made from one model: every name
(4.x) and tied copies dropped (5.x); both convert with the tool and load
with ``init_detector``, and transformers' model loading the folder gives our
logits / boxes in float32.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mmdeform.apis import init_detector
from mmdeform.converters.hf import convert_hf_state_dict, load_hf_checkpoint
from mmdeform.converters.hf_export import apply_ties
from mmdeform.converters.hf_ties import fill_tied_heads, hf_head_ties, tied_groups
from mmdeform.testing.hf_models import padded_batch, randomize, save_kwargs
from mmdeform.testing.hf_models import tiny_hf_config as hf_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = REPO_ROOT / 'tools'
HEADS = dict(decoder_layers=3)
HEAD = re.compile(r'^((?:model\.decoder\.)?(?:class|bbox)_embed\.\d+)\.(.+)$')


def test_rule_per_variant():
    base = hf_head_ties(dict(HEADS))
    assert base == {**{f'class_embed.{i}': 'class_embed.0' for i in (1, 2)},
                    **{f'bbox_embed.{i}': 'bbox_embed.0' for i in (1, 2)}}
    refine = hf_head_ties(dict(HEADS, with_box_refine=True))
    assert refine == {**{f'class_embed.{i}': 'class_embed.0' for i in (1, 2)},
                      **{f'bbox_embed.{i}': f'model.decoder.bbox_embed.{i}' for i in (0, 1, 2)}}
    two_stage = hf_head_ties(dict(HEADS, with_box_refine=True, two_stage=True))
    assert two_stage == {f'{kind}_embed.{i}': f'model.decoder.{kind}_embed.{i}'
                         for kind in ('class', 'bbox') for i in range(4)}
    assert hf_head_ties(dict(HEADS, with_box_refine=True, tie_word_embeddings=False)) == {}


def heads(names, tails=('weight', 'bias')):
    return {f'{name}.{tail}': torch.full((2, ), float(i)) for i, name in enumerate(names)
            for tail in tails}


def test_fill_both_directions_and_keep_present():
    config = dict(HEADS, with_box_refine=True)
    saved_by_5 = heads(['class_embed.0'] + [f'model.decoder.bbox_embed.{i}' for i in range(3)])
    filled = fill_tied_heads(saved_by_5, config)
    for i in (1, 2):
        assert filled[f'class_embed.{i}.bias'] is saved_by_5['class_embed.0.bias']
    for i in range(3):
        source = saved_by_5[f'model.decoder.bbox_embed.{i}.weight']
        assert filled[f'bbox_embed.{i}.weight'] is source
    only_targets = heads([f'bbox_embed.{i}' for i in range(3)] + ['class_embed.0', 'class_embed.2'])
    filled = fill_tied_heads(only_targets, config)
    assert filled['model.decoder.bbox_embed.1.bias'] is only_targets['bbox_embed.1.bias']
    assert filled['class_embed.1.bias'] is only_targets['class_embed.0.bias']
    assert filled['class_embed.2.bias'] is only_targets['class_embed.2.bias']  # present: kept


def test_untied_missing_head_is_named():
    config = dict(HEADS, with_box_refine=True, tie_word_embeddings=False)
    saved = heads(['class_embed.0'] + [f'model.decoder.bbox_embed.{i}' for i in range(3)])
    assert 'class_embed.1.weight' not in fill_tied_heads(saved, config)
    with pytest.raises(KeyError, match=r"'model\.decoder\.bbox_embed\.0\.weight' is an alias "
                                       r"of 'bbox_embed\.0\.weight', which is missing"):
        convert_hf_state_dict(saved, config)


class SharedHeads(nn.Module):
    """transformers-like heads: ``class_embed.i`` one Linear for every layer."""

    def __init__(self):
        super().__init__()
        self.class_embed = nn.ModuleList([nn.Linear(2, 3)] * 3)


def test_export_refuses_a_tie_that_changes_the_model():
    model, config = SharedHeads(), dict(HEADS, with_box_refine=True)
    values = {k: torch.full_like(v, float(k.split('.')[1])) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r'transformers 9\.1 ties class_embed\.1, class_embed\.2 '
                                         r'to class_embed\.0 .*allow-tie'):
        apply_ties(dict(values), model, config, '9.1')
    lines = apply_ties(values, model, config, '9.1', allow_tie=True)
    assert len(lines) == 1 and 'exported model differs' in lines[0]
    assert all(torch.equal(values[f'class_embed.{i}.weight'], torch.zeros(3, 2)) for i in (1, 2))
    equal = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    assert apply_ties(equal, model, config, '9.1') == []


# ----------------------------------------------------------------------------- transformers

def installed_ties(model) -> dict:
    """transformers' own expanded ties (5.x), else None."""
    if hasattr(model, 'get_expanded_tied_weights_keys'):
        return model.get_expanded_tied_weights_keys()
    return None


def expanded(config: dict, names) -> dict:
    """Our module-level rule on parameter names: ``{target name: source name}``."""
    ties = hf_head_ties(config)
    out = {}
    for name in names:
        module = HEAD.match(name)
        if module and module.group(1) in ties:
            out[name] = f'{ties[module.group(1)]}.{module.group(2)}'
    return out


@pytest.mark.parametrize('tie', [True, False])
@pytest.mark.parametrize('variant', ['base', 'refine', 'refine_twostage'])
def test_rule_matches_installed_transformers(variant, tie, tmp_path):
    transformers = pytest.importorskip('transformers')
    config = hf_config(variant, tie_word_embeddings=tie)
    model = transformers.DeformableDetrForObjectDetection(config)
    ours = expanded(config.to_dict(), model.state_dict())
    theirs = installed_ties(model)
    if theirs is not None:
        assert ours == theirs
    elif not tie:
        pytest.skip('transformers 4.x shares modules whatever tie_word_embeddings says')
    for group in tied_groups(model):  # every shared tensor: one source in our rule
        assert len({ours.get(name, name) for name in group}) == 1, group
    model.save_pretrained(tmp_path, **save_kwargs(model, config.with_box_refine))
    _, saved = load_hf_checkpoint(tmp_path)  # 5.x saves other names outside the heads
    names = {name for name in model.state_dict() if HEAD.match(name)}
    assert names - set(saved) <= set(ours)  # dropped: tied copies only
    assert {name for name in fill_tied_heads(saved, config.to_dict()) if HEAD.match(name)} \
        == names


def write_folder(folder: Path, config, state_dict: dict) -> None:
    from safetensors.torch import save_file
    folder.mkdir()
    config.save_pretrained(folder)
    save_file({k: v.contiguous().clone() for k, v in state_dict.items()},
              str(folder / 'model.safetensors'))


def refine_folders(transformers, tmp_path: Path, layout: str):
    """A refine model with a different class head per layer (4.x's function) written with
    every name, or in the 5.x layout (tied copies dropped: one class head, layer 0's);
    converted with the tool. Returns (transformers folder, our folder, its state_dict)."""
    config = hf_config('refine')
    hf = transformers.DeformableDetrForObjectDetection(config).eval()
    randomize(hf)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    for i in (1, 2):  # distinct heads, also where the installed transformers ties them
        state[f'class_embed.{i}.weight'] = state['class_embed.0.weight'] + i / 10
    if layout == '5.x':
        ties = expanded(config.to_dict(), state)
        state = {k: v for k, v in state.items() if k not in ties}
    write_folder(tmp_path / 'hf', config, state)
    subprocess.run([sys.executable, str(TOOLS / 'convert_hf_ckpt.py'), str(tmp_path / 'hf'),
                    str(tmp_path / 'ours')], check=True, cwd=REPO_ROOT, capture_output=True)
    return tmp_path / 'hf', tmp_path / 'ours', state


def assert_same_outputs(ours, hf) -> None:
    """Last layer's logits / boxes on the padded batch, float32, at 1e-4 / 1e-5."""
    images, pixel_mask, samples = padded_batch(torch.float32)
    with torch.no_grad():
        out = hf.eval()(pixel_values=images, pixel_mask=pixel_mask)
        head_output, _ = ours.forward_stages(images, samples)
    torch.testing.assert_close(head_output.logits[-1], out.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(head_output.boxes_cxcywh[-1], out.pred_boxes, rtol=0, atol=1e-5)


@pytest.mark.parametrize('layout', ['4.x', '5.x'])
def test_both_layouts_convert_and_run(layout, tmp_path):
    transformers = pytest.importorskip('transformers')
    folder, dst, state = refine_folders(transformers, tmp_path, layout)
    ours = init_detector(dst / 'config.py', dst / 'model.pth')
    for i in range(3):
        source = f'class_embed.{i if layout == "4.x" else 0}.weight'
        assert torch.equal(ours.bbox_head.cls_branches[i].weight, state[source]), i
    loaded = transformers.DeformableDetrForObjectDetection.from_pretrained(folder)
    heads_differ = not torch.equal(loaded.class_embed[1].weight, loaded.class_embed[0].weight)
    if heads_differ != (layout == '4.x'):
        pytest.skip(f'transformers {transformers.__version__} loads the {layout} layout as '
                    'another function (4.x does not tie the refine class heads)')
    assert_same_outputs(ours, loaded)


def test_export_of_distinct_class_heads(tmp_path):
    """Refused (naming the tie and the version) where the installed transformers ties the
    refine class heads, written with layer 0's head and a warning with --allow-tie;
    elsewhere exported as it is, the same function at 1e-4 / 1e-5 in float32."""
    transformers = pytest.importorskip('transformers')
    _, dst, _ = refine_folders(transformers, tmp_path, '4.x')
    ours = init_detector(dst / 'config.py', dst / 'model.pth')
    ties = tied_groups(transformers.DeformableDetrForObjectDetection(hf_config('refine')))
    ties_class_heads = any('class_embed.1.weight' in group for group in ties)
    command = [sys.executable, str(TOOLS / 'export_hf.py'), str(dst / 'config.py'),
               str(dst / 'model.pth'), str(tmp_path / 'out')]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if ties_class_heads:
        assert run.returncode != 0 and not (tmp_path / 'out' / 'config.json').exists()
        assert f'transformers {transformers.__version__} ties class_embed.1, class_embed.2 ' \
               'to class_embed.0' in run.stderr
        run = subprocess.run(command + ['--allow-tie'], cwd=REPO_ROOT, capture_output=True,
                             text=True)
        assert 'the exported model differs' in run.stderr
    assert run.returncode == 0, run.stderr
    back = transformers.DeformableDetrForObjectDetection.from_pretrained(tmp_path / 'out')
    for i in range(3):
        expected = ours.bbox_head.cls_branches[0 if ties_class_heads else i].weight
        assert torch.equal(back.class_embed[i].weight, expected), i
    if not ties_class_heads:
        assert_same_outputs(ours, back)
