"""What the tools do with bad input: a checkpoint of another model (test.py),
nothing to resume (train.py), unreadable images among good ones (infer.py)."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import NUM_VAL, REPO, TOOL_TIMEOUT_S, run_tool, tool_env

from mmdeform.apis import init_detector


def run_failing(script, args, cwd):
    """Run ``tools/<script>``; returns (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / script), *args], cwd=cwd,
                          env=tool_env(), capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT_S)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope='module')
def tiny_state(tiny_config):
    torch.manual_seed(0)
    return init_detector(tiny_config).state_dict()


def test_test_tool_refuses_another_models_checkpoint(tiny_config, synthetic_workspace,
                                                     tiny_state, tmp_path):
    state = dict(tiny_state)
    name = next(k for k in state if k.endswith('.weight') and state[k].ndim == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    state['extra.bias'] = state.pop(next(k for k in state if k.endswith('.bias')))
    ckpt = tmp_path / 'other.pth'
    torch.save({'state_dict': state}, ckpt)
    code, out, err = run_failing('test.py', [tiny_config, str(ckpt), '--work-dir',
                                             str(tmp_path / 'work')], synthetic_workspace)
    assert code != 0
    assert f'checkpoint {ckpt} does not fit the model: first mismatching parameter: {name}' in err
    assert "1 unexpected keys (in the checkpoint, not in the model): ['extra.bias']" in err
    assert '--partial-load' in err and 'coco/bbox_mAP' not in out + err
    # the explicit opt-out evaluates what matches
    out = run_tool('test.py', [tiny_config, str(ckpt), '--work-dir', str(tmp_path / 'work'),
                               '--partial-load'], cwd=synthetic_workspace)
    assert f'partial load of {ckpt}' in out and 'coco/bbox_mAP' in out


def test_bare_resume_without_checkpoint_fails(tiny_config, synthetic_workspace, tmp_path):
    code, out, err = run_failing('train.py', [tiny_config, '--work-dir', str(tmp_path),
                                              '--resume'], synthetic_workspace)
    assert code != 0 and f'--resume: no checkpoint to resume from in {tmp_path}' in err
    assert 'Epoch(train)' not in out + err


def test_infer_reports_bad_files_and_saves_the_good(tiny_config, synthetic_workspace,
                                                    tiny_state, tmp_path):
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'state_dict': tiny_state}, ckpt)
    images = tmp_path / 'images'
    images.mkdir()
    val_dir = synthetic_workspace / 'data' / 'synthetic' / 'val'
    good = sorted(val_dir.iterdir())
    for path in good:
        (images / path.name).write_bytes(path.read_bytes())
    (images / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 50)
    (images / 'empty.jpg').write_bytes(b'')
    code, out, err = run_failing('infer.py', [str(images), tiny_config, str(ckpt), '--out-dir',
                                              str(tmp_path / 'out'), '--batch-size', '2'],
                                 synthetic_workspace)
    assert code == 1, err[-3000:]
    assert f'infer: {NUM_VAL} image(s)' in out
    assert 'infer: 2 of 7 image(s) failed' in err
    assert 'corrupt.png' in err and 'empty.jpg: ValueError' in err
    results = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert sorted(r['file'].rsplit('/', 1)[-1] for r in results['results']) == sorted(
        p.name for p in good)
    assert sorted(f['file'].rsplit('/', 1)[-1] for f in results['failed']) == [
        'corrupt.png', 'empty.jpg']
