"""Iterations to a target AP (projects.synthetic_ablations.convergence) and
tools/run_convergence.py."""
import importlib.util
import json
from pathlib import Path

import cv2
import pytest
import torch

from projects.synthetic_ablations import ablations, convergence

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('aps,expected', [
    ([2.0, 10.0, 20.0], 200.0),  # reached exactly at an evaluation
    ([2.0, 6.0, 14.0], 250.0),  # between evaluations 200 (6) and 300 (14): halfway
    ([12.0, 15.0, 20.0], 100.0),  # at the first evaluation: nothing assumed before it
    ([2.0, 4.0, 9.9], None),  # never
    ([2.0, 12.0, 8.0], 180.0),  # reached, then dropped: the first crossing counts
])
def test_iterations_to_target(aps, expected):
    assert convergence.iterations_to_target([100, 200, 300], aps, 10.0) == expected


def test_iterations_to_target_rejects_bad_curves():
    with pytest.raises(ValueError, match='3 iterations but 2 APs'):
        convergence.iterations_to_target([1, 2, 3], [0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match='must increase'):
        convergence.iterations_to_target([2, 1], [0.0, 1.0], 1.0)


def test_ratio_text():
    assert convergence.convergence_ratio(100.0, 1000.0, 2000) == '10.0x'
    assert convergence.convergence_ratio(100.0, None, 2000).startswith('more than 20.0x')
    assert convergence.convergence_ratio(None, 50.0, 2000).startswith('not measurable')
    assert convergence.convergence_ratio(100.0, 1000.0, 2000, True).startswith('at least 10.0x')


def fake_run(row, aps):
    curve = [dict(iter=100 * (i + 1), AP=ap / 100) for i, ap in enumerate(aps)]
    return dict(row=row, config=f'/x/{row}_r18_synthetic.py', seed=0, iters=100 * len(aps),
                metrics=dict(AP=aps[-1] / 100), curve=curve, train_seconds=5.0,
                total_seconds=6.0, params=10, description=dict(levels='1'))


def test_report(tmp_path):
    runs = [fake_run('deformable-detr_ss-k4', [4.0, 12.0, 20.0]),
            fake_run('dense-detr_ss', [0.0, 1.0, 3.0, 6.0, 8.0, 11.0])]
    out, reached = convergence.write_convergence_report(runs, 10.0, 600,
                                                        str(tmp_path / 'c.md'))
    assert reached == {'deformable-detr_ss-k4': 175.0, 'dense-detr_ss': pytest.approx(566.67,
                                                                                      abs=0.01)}
    text = Path(out).read_text()
    line = '| deformable-detr_ss-k4 | `deformable-detr_ss-k4_r18_synthetic.py` | 175 | 300 | 20.0 |'
    assert line in text
    assert 'Ratio (dense / deformable iterations): 3.2x' in text
    # lower milestones: deformable at its first evaluation (4 >= 2 at 100), dense between
    # 200 (1 AP) and 300 (3 AP); 5 AP: deformable 112.5, dense 366.67
    assert '| 2 | <= 100 | 250 | at least 2.5x (deformable already there at its first ' \
        'evaluation) |' in text
    assert '| 5 | 112 | 367 | 3.3x |' in text
    assert '| 10 | ' not in text  # the target itself is not repeated as a milestone
    runs[1] = fake_run('dense-detr_ss', [0.0, 1.0, 3.0])
    _, reached = convergence.write_convergence_report(runs, 10.0, 300, str(tmp_path / 'c.md'))
    assert reached['dense-detr_ss'] is None
    text = (tmp_path / 'c.md').read_text()
    assert '| not reached within 300 |' in text and 'more than 1.7x' in text


def test_tool_end_to_end(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location('run_convergence',
                                                  ROOT / 'tools' / 'run_convergence.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    work_dir = tmp_path / 'work'
    args = ['--max-iters', '3', '--val-interval', '1', '--num-train', '8', '--num-val', '4',
            '--threads', '1', '--jobs', '2', '--target-ap', '0.0', '--pretrain-iters', '2',
            '--work-dir', str(work_dir), '--data-root', str(tmp_path / 'data'), '--no-progress']
    result = tool.main(args)
    assert [run['row'] for run in result['runs']] == list(convergence.DEFAULT_ROWS)
    for run in result['runs']:  # a run stops at its first evaluation at the target
        assert run['iters'] == 1 and [p['iter'] for p in run['curve']] == [1]
    # target 0 AP is reached at the first evaluation by both
    assert result['reached'] == dict.fromkeys(convergence.DEFAULT_ROWS, 1.0)
    text = (work_dir / 'convergence.md').read_text()
    assert 'Ratio (dense / deformable iterations): at least 1.0x' in text
    saved = json.loads((work_dir / 'convergence.json').read_text())
    assert saved['target_ap'] == 0.0
    # both models started from one backbone pretrained under the work dir, 2 iterations
    backbone = str(work_dir / 'backbone_r18-c3_counting.pth')
    assert {s['checkpoint'] for s in saved['pretrained_backbones'].values()} == {backbone}
    assert set(saved['pretrained_backbones']) == set(convergence.DEFAULT_ROWS)
    assert torch.load(backbone, weights_only=True)['meta']['iters'] == 2
    for run in result['runs']:
        log = next(Path(run['log_dir']).glob('*.log')).read_text()
        assert f'ResNet: loaded 50 tensors from {backbone}' in log
    image = cv2.imread(str(work_dir / 'convergence.png'))
    assert image is not None and min(image.shape[:2]) > 200
    # --resume: runs stopped at the target count as finished, nothing is trained again
    monkeypatch.setattr(ablations, 'run_in_process',  # the runs' one entry point
                        lambda *a: pytest.fail('resume retrained a stopped run'))
    monkeypatch.setattr(convergence, 'pretrain_backbone',
                        lambda *a, **k: pytest.fail('the pretrained backbone was not reused'))
    again = tool.main(args + ['--resume'])
    assert [r['metrics'] for r in again['runs']] == [r['metrics'] for r in result['runs']]
    # ... but not for a higher target, which the stopped runs did not reach
    with pytest.raises(pytest.fail.Exception, match='retrained'):
        tool.main(args + ['--resume', '--target-ap', '90'])


def test_pretrained_backbone_is_reused_only_with_the_same_settings(tmp_path):
    settings = dict(checkpoint=str(tmp_path / 'b.pth'), iters=3, batch_size=4, lr=1e-3,
                    weight_decay=1e-4, seed=0)
    assert not convergence._pretrained_matches(settings['checkpoint'], settings, 'data/x')
    meta = dict(settings, data_root='data/x', val_mse=0.5)
    del meta['checkpoint']
    torch.save(dict(state_dict={}, meta=meta), settings['checkpoint'])
    assert convergence._pretrained_matches(settings['checkpoint'], settings, 'data/x/')
    assert not convergence._pretrained_matches(settings['checkpoint'], settings, 'data/y')
    assert not convergence._pretrained_matches(settings['checkpoint'], dict(settings, lr=2e-3),
                                               'data/x')
    with open(settings['checkpoint'], 'r+b') as f:  # truncated by a kill: trained again
        f.truncate(20)
    assert not convergence._pretrained_matches(settings['checkpoint'], settings, 'data/x')
