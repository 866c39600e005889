"""tools/convert_hf_ckpt.py and tools/export_hf.py on hostile input.

Every hostile folder is a copy of a tiny valid transformers folder written
here (``save_pretrained`` of a random ``DeformableDetrForObjectDetection``,
nothing downloaded) with one thing broken. Each must end with exit status 1,
one line naming the file and the key, and the destination untouched: an
earlier conversion in DST stays byte for byte even with ``--overwrite``, and
no temporary folder is left beside it.
"""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdeform.converters.hf import convert_hf_folder
from mmdeform.converters.hf_checks import HFCheckError

transformers = pytest.importorskip('transformers')
from safetensors.torch import save_file  # noqa: E402  (comes with transformers)

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO / 'configs' / 'deformable_detr' / 'deformable-detr_r50_16xb2-50e_coco.py'
DELETE = object()
TIMM = dict(use_timm_backbone=True, backbone='resnet18', backbone_config=None)
VALUE_PROJ = 'model.encoder.layers.0.self_attn.value_proj.weight'


def hf_folder(folder: Path, refine: bool) -> Path:
    """A random tiny transformers folder (ResNet-18, d_model 32, 3 classes)."""
    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(
        layer_type='basic', depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
        embedding_size=64, out_features=['stage2', 'stage3', 'stage4'])
    config = transformers.DeformableDetrConfig(
        use_timm_backbone=False, backbone=None, backbone_config=backbone,
        use_pretrained_backbone=False, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2, num_queries=10,
        with_box_refine=refine, num_labels=3)
    model = transformers.DeformableDetrForObjectDetection(config)
    model.save_pretrained(folder, safe_serialization=not refine)
    return folder


@pytest.fixture(scope='module')
def valid(tmp_path_factory) -> Path:
    return hf_folder(tmp_path_factory.mktemp('hf') / 'base', refine=False)


@pytest.fixture(scope='module')
def valid_state(valid):
    from safetensors.torch import load_file
    return load_file(str(valid / 'model.safetensors'))


def run_tool(script: str, *args, debug: bool = False) -> int:
    """``tools/<script> ARGS`` in this process; its exit status (output: capsys)."""
    argv = [script, *map(str, args)] + (['--debug'] if debug else [])
    old_argv, sys.argv = sys.argv, argv
    try:
        runpy.run_path(str(REPO / 'tools' / script), run_name='__main__')
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = old_argv
    return code


def snapshot(folder: Path):
    """{relative path: bytes} of every file under ``folder`` (None: absent)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
            if p.is_file()}


def leftovers(parent: Path) -> list:
    return [p.name for p in parent.iterdir() if '.staging-' in p.name or '.old-' in p.name]


@pytest.fixture
def earlier_dst(tmp_path) -> Path:
    """An output folder holding an earlier result and a stray file."""
    dst = tmp_path / 'out' / 'dst'
    dst.mkdir(parents=True)
    (dst / 'model.pth').write_bytes(b'earlier conversion')
    (dst / 'notes.txt').write_text('mine')
    return dst


def copy_folder(valid: Path, dst: Path, config=None, weights=None, name=None) -> Path:
    """``valid`` with another config.json (dict or raw text) and / or weights
    (a state_dict saved as ``name``, or raw bytes)."""
    dst.mkdir()
    text = (valid / 'config.json').read_text() if config is None else config
    (dst / 'config.json').write_text(text if isinstance(text, str) else json.dumps(text))
    name = name or 'model.safetensors'
    if weights is None:
        os.link(valid / 'model.safetensors', dst / 'model.safetensors')
    elif isinstance(weights, bytes):
        (dst / name).write_bytes(weights)
    elif name.endswith('.safetensors'):
        save_file({k: v.clone().contiguous() for k, v in weights.items()}, str(dst / name))
    else:
        torch.save(weights, dst / name)
    return dst


def patched(config: dict, changes: dict) -> dict:
    config = json.loads(json.dumps(config))
    for dotted, value in changes.items():
        *parents, key = dotted.split('.')
        target = config
        for parent in parents:
            target = target[parent]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    return config


def assert_refused(capsys, code, dst, before, *expected):
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    for text in expected:
        assert text in err, err
    assert 'weights_only=False' not in err
    assert snapshot(dst) == before and leftovers(dst.parent) == []
    return err


CONFIG_CASES = {
    'empty': ('', 'config.json is empty'),
    'not-json': ('{"d_model": 32,', 'config.json is not valid JSON (line 1'),
    'json-list': ('[1, 2]', 'holds a JSON list, not an object'),
    'num_queries-0': ({'num_queries': 0}, 'num_queries=0: must be an integer from 1 to 10000'),
    'n_points-0': ({'encoder_n_points': 0}, 'encoder_n_points=0'),
    'd_model-negative': ({'d_model': -32}, 'd_model=-32: must be an integer from 1 to 4096'),
    'd_model-huge': ({'d_model': 10 ** 9}, 'd_model=1000000000'),
    'd_model-zero': ({'d_model': 0}, 'd_model=0'),
    'd_model-float': ({'d_model': 32.0}, 'd_model=32.0'),
    'd_model-not-x32': ({'d_model': 48}, 'd_model=48: must be a multiple of 32'),
    'heads': ({'decoder_attention_heads': 3}, 'decoder_attention_heads=3: must divide'),
    'refine-string': ({'with_box_refine': 'false'},
                      "with_box_refine='false': must be true or false"),
    'two_stage-int': ({'two_stage': 1}, 'two_stage=1'),
    'dropout-string': ({'dropout': 'none'}, "dropout='none'"),
    'missing-key': ({'decoder_layers': DELETE}, "key 'decoder_layers' is missing"),
    'model_type': ({'model_type': 'detr'}, "model_type='detr'"),
    'id2label-keys': ({'id2label': {'cat': 'cat', 'dog': 'dog', 'cow': 'cow'}},
                      "id2label['cat']='cat': keys must be distinct non-negative integers"),
    'id2label-range': ({'id2label': {'0': 'a', '1': 'b', '7': 'c'}},
                       'class id 7 is not below the class count 3'),
    'id2label-names': ({'id2label': {'0': 'a', '1': 'b', '2': 2}}, 'class names must be'),
    'num_labels': ({'num_labels': 5}, 'num_labels=5: id2label has 3 entries'),
    'backbone-list': ({'backbone_config': []}, 'backbone_config=[]: must be an object'),
    'depths-strings': ({'backbone_config.depths': ['2', '2', '2', '2']},
                       'backbone_config.depths='),
    'activation': ({'activation_function': 'gelu'}, "activation_function='gelu'"),
    'resnet-depths': ({'backbone_config.depths': [1, 1, 1, 1]}, 'not a torchvision ResNet'),
    'timm-out_indices': (dict(TIMM, backbone_kwargs={'out_indices': [1, 2, 3]}),
                         'backbone_kwargs.out_indices=[1, 2, 3]: must be [2, 3, 4]'),
    'timm-output_stride': (dict(TIMM, backbone_kwargs={'output_stride': 16}),
                           'backbone_kwargs.output_stride=16: must be 32'),
    'timm-other-kwarg': (dict(TIMM, backbone_kwargs={'drop_rate': 0.5}),
                         'backbone_kwargs.drop_rate=0.5: mmdeform reads only'),
    'resnet-act': ({'backbone_config.hidden_act': 'gelu'},
                   "backbone_config.hidden_act='gelu': must be \"relu\""),
    'timm-dc5-resnet18': (dict(TIMM, dilation=True), "dilation=True: mmdeform's dilated C5"),
    'two_stage-no-proposals': ({'two_stage': True, 'two_stage_num_proposals': DELETE},
                               "key 'two_stage_num_proposals' is missing"),
}


@pytest.mark.parametrize('case', sorted(CONFIG_CASES))
def test_hostile_config(case, valid, tmp_path, earlier_dst, capsys):
    change, message = CONFIG_CASES[case]
    config = change if isinstance(change, str) else \
        patched(json.loads((valid / 'config.json').read_text()), change)
    src = copy_folder(valid, tmp_path / 'src', config=config)
    before = snapshot(earlier_dst)
    code = run_tool('convert_hf_ckpt.py', src, earlier_dst, '--overwrite')
    err = assert_refused(capsys, code, earlier_dst, before, f'{src}/config.json', message)
    assert 'num_feats' not in err and 'SinePositionalEncoding' not in err


class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker, )


def weight_cases(state, valid, tmp_path) -> dict:
    """case -> (weights, file name, message) from the valid state_dict."""
    def changed(key, value):
        return dict(state, **{key: value})

    nan = state[VALUE_PROJ].clone()
    nan[0, 0] = float('nan')
    qkv = 'model.decoder.layers.0.self_attn.k_proj.weight'
    valid_bytes = (valid / 'model.safetensors').read_bytes()
    missing = {k: v for k, v in state.items() if k != 'model.level_embed'}
    return {
        'shape': (changed(VALUE_PROJ, torch.zeros(33, 32)), None,
                  f"'{VALUE_PROJ}' (our 'encoder.layers.0.self_attn.value_proj.weight') is "
                  '[33, 32] float32, needs [32, 32] float32'),
        'int8': (changed(VALUE_PROJ, state[VALUE_PROJ].to(torch.int8)), None,
                 f"'{VALUE_PROJ}' is int8; only floating-point weights"),
        'nan': (changed(VALUE_PROJ, nan), None, f"'{VALUE_PROJ}' holds 1 NaN/inf value(s)"),
        'qkv': (changed(qkv, torch.zeros(32, 31)), None, f"'{qkv}' has shape [32, 31]"),
        'missing': (missing, None, "missing ['encoder.level_embed']"),
        'unknown': (changed('model.mystery.weight', torch.zeros(2)), None,
                    "no mmdeform counterpart: ['model.mystery.weight']"),
        'tie-differs': (changed('class_embed.1.bias', state['class_embed.0.bias'] + 1), None,
                        "tied keys 'class_embed.1.bias' and 'class_embed.0.bias'"),
        'empty-safetensors': (b'', None, 'model.safetensors is empty (0 bytes)'),
        'truncated-safetensors': (valid_bytes[:len(valid_bytes) // 2], None,
                                  'model.safetensors is not a complete safetensors file'),
        'empty-bin': (b'', 'pytorch_model.bin', 'pytorch_model.bin is empty (0 bytes)'),
        'garbage-bin': (b'not a torch file', 'pytorch_model.bin',
                        'pytorch_model.bin is not a checkpoint'),
        'pickle-bin': ({'x': Evil(tmp_path / 'pwned')}, 'pytorch_model.bin',
                       'refused to load checkpoint'),
        'list-bin': ([torch.zeros(1)], 'pytorch_model.bin', 'holds a list, not a state_dict'),
        'not-tensor-bin': (dict(state, extra=3), 'pytorch_model.bin',
                           "'extra' is not a tensor (int)"),
    }


WEIGHT_CASES = ['empty-bin', 'empty-safetensors', 'garbage-bin', 'int8', 'list-bin', 'missing',
                'nan', 'not-tensor-bin', 'pickle-bin', 'qkv', 'shape', 'tie-differs',
                'truncated-safetensors', 'unknown']


@pytest.mark.parametrize('case', WEIGHT_CASES)
def test_hostile_weights(case, valid, valid_state, tmp_path, earlier_dst, capsys):
    weights, name, message = weight_cases(valid_state, valid, tmp_path)[case]
    src = copy_folder(valid, tmp_path / 'src', weights=weights, name=name)
    before = snapshot(earlier_dst)
    code = run_tool('convert_hf_ckpt.py', src, earlier_dst, '--overwrite')
    weights_file = src / (name or 'model.safetensors')
    assert_refused(capsys, code, earlier_dst, before, str(weights_file), message)
    assert not (tmp_path / 'pwned').exists()  # the pickle's payload never ran


def test_no_weights_file(valid, tmp_path, capsys):
    src = copy_folder(valid, tmp_path / 'src')
    (src / 'model.safetensors').unlink()
    code = run_tool('convert_hf_ckpt.py', src, tmp_path / 'dst')
    assert_refused(capsys, code, tmp_path / 'dst', None,
                   f'{src} has neither model.safetensors nor pytorch_model.bin')


def test_dilation_of_transformers_resnet_is_ignored_as_transformers_does(valid, tmp_path):
    """transformers dilates only timm backbones: its own ResNet with
    ``dilation: true`` is not dilated, so neither is the converted model."""
    config = patched(json.loads((valid / 'config.json').read_text()), {'dilation': True})
    src = copy_folder(valid, tmp_path / 'src', config=config)
    assert run_tool('convert_hf_ckpt.py', src, tmp_path / 'dst') == 0
    from mmengine.config import Config
    assert Config.fromfile(tmp_path / 'dst' / 'config.py').model.backbone.dilate_last_stage is False


def test_export_refuses_a_dilated_backbone():
    from mmengine.config import Config

    from mmdeform.converters.hf_export import hf_config_kwargs
    cfg = Config.fromfile(BASE_CONFIG.parent /
                          'deformable-detr-single-scale-dc5_r50_16xb2-50e_coco.py')
    with pytest.raises(ValueError, match='dilated last stage'):
        hf_config_kwargs(cfg.model)


def test_debug_raises_with_traceback(valid, tmp_path):
    config = patched(json.loads((valid / 'config.json').read_text()), {'num_queries': 0})
    src = copy_folder(valid, tmp_path / 'src', config=config)
    with pytest.raises(HFCheckError, match='num_queries=0'):
        run_tool('convert_hf_ckpt.py', src, tmp_path / 'dst', debug=True)


def test_one_line_from_a_real_process(valid, tmp_path):
    config = patched(json.loads((valid / 'config.json').read_text()), {'two_stage': 'yes'})
    src = copy_folder(valid, tmp_path / 'src', config=config)
    run = subprocess.run([sys.executable, str(REPO / 'tools' / 'convert_hf_ckpt.py'), str(src),
                          str(tmp_path / 'dst')], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1 and run.stdout == ''
    assert run.stderr == (f"convert_hf_ckpt: error: {src}/config.json: two_stage='yes': "
                          'must be true or false (a JSON boolean)\n')
    assert not (tmp_path / 'dst').exists()


# ----------------------------------------------------------------------------- destination

def names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_convert_writes_the_folder_whole(valid, tmp_path, earlier_dst, capsys):
    from mmdeform.apis import init_detector
    dst = tmp_path / 'fresh'
    assert run_tool('convert_hf_ckpt.py', valid, dst) == 0
    assert names(dst) == ['config.py', 'model.pth']
    before = snapshot(dst)
    capsys.readouterr()
    code = run_tool('convert_hf_ckpt.py', valid, dst)  # no --overwrite
    assert_refused(capsys, code, dst, before, f'{dst} is not empty; pass --overwrite')
    # --overwrite replaces the whole folder: the stray file of the earlier run is gone
    assert run_tool('convert_hf_ckpt.py', valid, earlier_dst, '--overwrite') == 0
    assert names(earlier_dst) == ['config.py', 'model.pth'] and leftovers(tmp_path / 'out') == []
    model = init_detector(earlier_dst / 'config.py', earlier_dst / 'model.pth')
    assert model.bbox_head.num_classes == 3 and model.query_generator.num_queries == 10
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert run_tool('convert_hf_ckpt.py', valid, empty) == 0
    assert names(empty) == ['config.py', 'model.pth']


def test_convert_refuses_what_it_must_not_replace(valid, tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    code = run_tool('convert_hf_ckpt.py', valid, a_file, '--overwrite')
    assert_refused(capsys, code, tmp_path, snapshot(tmp_path), 'exists and is not a folder')
    src = copy_folder(valid, tmp_path / 'src')
    before = snapshot(tmp_path)
    code = run_tool('convert_hf_ckpt.py', src, src, '--overwrite')
    assert_refused(capsys, code, tmp_path, before, f'--overwrite would delete {src}')


def test_failed_write_leaves_dst_untouched(valid, earlier_dst, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError('No space left on device')

    before = snapshot(earlier_dst)
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(OSError, match='No space left'):
        convert_hf_folder(str(valid), str(earlier_dst), str(BASE_CONFIG), overwrite=True)
    assert snapshot(earlier_dst) == before and leftovers(earlier_dst.parent) == []


# ----------------------------------------------------------------------------- export

@pytest.fixture(scope='module')
def ours(valid, tmp_path_factory) -> dict:
    """Converted base and refine models: name -> (config.py, model.pth)."""
    root = tmp_path_factory.mktemp('ours')
    refine = hf_folder(root / 'hf_refine', refine=True)
    result = {}
    for name, src, stem in (('base', valid, 'deformable-detr'),
                            ('refine', refine, 'deformable-detr-refine')):
        base = BASE_CONFIG.parent / f'{stem}_r50_16xb2-50e_coco.py'
        convert_hf_folder(str(src), str(root / name), str(base))
        result[name] = (root / name / 'config.py', root / name / 'model.pth')
    return result


def test_export_replaces_an_earlier_export_whole(ours, tmp_path, capsys):
    out = tmp_path / 'hf'
    assert run_tool('export_hf.py', *ours['base'], out) == 0
    assert names(out) == ['config.json', 'model.safetensors', 'preprocessor_config.json']
    before = snapshot(out)
    capsys.readouterr()
    code = run_tool('export_hf.py', *ours['refine'], out)
    assert_refused(capsys, code, out, before, f'{out} is not empty; pass --overwrite')
    assert run_tool('export_hf.py', *ours['refine'], out, '--overwrite') == 0
    # one weights file, the new one: transformers 4.x writes the shared refine heads to
    # pytorch_model.bin (a stale model.safetensors beside it would be loaded instead), 5.x
    # to model.safetensors (replaced, not kept)
    weights = ('pytorch_model.bin' if int(transformers.__version__.split('.')[0]) < 5
               else 'model.safetensors')
    assert names(out) == sorted(['config.json', 'preprocessor_config.json', weights])
    assert snapshot(out) != before
    model, info = transformers.DeformableDetrForObjectDetection.from_pretrained(
        out, output_loading_info=True)
    assert model.config.with_box_refine and not info['missing_keys']  # a list in 4.x, a set in 5.x
    assert leftovers(tmp_path) == []


def test_export_mismatch_names_no_missing_option(ours, tmp_path, capsys):
    out = tmp_path / 'hf'
    code = run_tool('export_hf.py', ours['base'][0], ours['refine'][1], out)
    err = assert_refused(capsys, code, out, None, f'{ours["refine"][1]} does not fit the model',
                         'fits CONFIG exactly')
    assert '--partial-load' not in err


def test_export_refuses_nan_and_inputs_inside_out_dir(ours, tmp_path, capsys):
    checkpoint = torch.load(ours['base'][1], weights_only=True)
    checkpoint['state_dict']['encoder.level_embed'][0, 0] = float('inf')
    broken = tmp_path / 'broken.pth'
    torch.save(checkpoint, broken)
    out = tmp_path / 'hf'
    code = run_tool('export_hf.py', ours['base'][0], broken, out)
    assert_refused(capsys, code, out, None, "'model.level_embed' holds 1 NaN/inf value(s)")
    before = snapshot(tmp_path)
    code = run_tool('export_hf.py', ours['base'][0], broken, tmp_path, '--overwrite')
    assert_refused(capsys, code, tmp_path, before, f'--overwrite would delete {broken}')
