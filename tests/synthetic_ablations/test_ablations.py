"""The ablation runner (projects.synthetic_ablations.ablations, .runs) and its report."""
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from projects.synthetic_ablations import ABLATION_DIR, ablations, plots, pretraining, report, runs
from projects.synthetic_ablations import CONVERGENCE_DIR as CONVERGENCE

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
ROW_DIR = str(ABLATION_DIR)
TINY_DATA = dict(num_train=8, num_val=4)
TWO_ROWS = ['ss-k1', 'ms-attn-k4']
CONVERGENCE_DIR = str(CONVERGENCE)


def fake_run(row: str, seed: int, ap: float, ap_s: float = 0.1, curve=None) -> dict:
    metrics = dict(AP=ap, AP50=min(1.0, 2 * ap), AP_S=ap_s, AP_M=ap, AP_L=-1.0)
    curve = curve or [dict(iter=10, AP=ap - 0.005, AP_S=ap_s / 2), dict(iter=20, AP=ap, AP_S=ap_s)]
    return dict(row=row, seed=seed, iters=20, metrics=metrics, curve=curve,
                train_seconds=10.0 + 2 * seed, total_seconds=15.0, params=1_000_000,
                description=dict(levels='4', attention='multi-scale', K='4', neck='FPN'),
                decay_iter=None)


def test_run_ablations_end_to_end(tmp_path, capsys, monkeypatch):
    rows = ablations.find_rows(ROW_DIR, patterns=TWO_ROWS)
    assert list(rows) == ['deformable-detr_ss-k1', 'deformable-detr_ms-attn-k4']
    work_dir = tmp_path / 'work'
    pretrained = tmp_path / 'pretrained'
    result = ablations.run_ablations(rows, seeds=[0], work_dir=str(work_dir),
                                     data_root=str(tmp_path / 'data'), max_iters=2,
                                     synthetic_overrides=TINY_DATA, num_threads=1,
                                     progress=False, jobs=2,  # side by side, order kept
                                     pretrained_dir=str(pretrained), pretrain_iters=2)
    out = capsys.readouterr().out
    assert [r['row'] for r in result['runs']] == list(rows)
    for run in result['runs']:
        assert run['iters'] == 2 and run['seed'] == 0
        # the evaluation points (20 %, ..., 80 %, 90 %, 100 %) scaled to 2 iterations
        assert [p['iter'] for p in run['curve']] == [1, 2]
        assert set(run['metrics']) == set(report.TABLE_METRICS)
        assert 0 < run['train_seconds'] < run['total_seconds']
        assert run['params'] > 1_000_000 and run['decay_iter'] == 1  # 60 % of 2, rounded
        # the frozen backbone's features were cached: 4 training and 4 validation images
        assert run['cache']['misses'] >= 8 and run['cache']['entries'] >= 8
        assert (work_dir / run['row'] / 'seed0' / 'result.json').is_file()
        log = next(Path(run['log_dir']).glob('*.log')).read_text()
        assert f'ResNet: loaded 100 tensors from {pretrained}' in log
    assert result['runs'][1]['description']['attention'] == 'multi-scale'
    text = (work_dir / 'results.md').read_text()
    table_lines = result['table'].splitlines()[2:]
    assert [line.split(' | ')[0] for line in table_lines] == [f'| {row}' for row in rows]
    assert result['table'] in text and result['table'] in out
    assert "## The paper's orderings" in text
    # the only claim with both rows present is judged, the others say what is missing
    assert '| deformable-detr_ms-attn-k4 vs deformable-detr_ss-k1 | AP |' in text
    assert 'not run (deformable-detr_ms-inputs-k1 missing)' in text
    assert 'ablations: 2 runs trained, 0 read back; wall time' in out
    assert 'Times: ablations: 2 runs trained' in text
    # the report names the backbone by its weights (another CPU's pretraining differs)
    digest = pretraining.weights_digest(str(pretrained / 'backbone_r18-half_counting-256.pth'))
    assert f'`backbone_r18-half_counting-256.pth` (weights sha256 {digest})' in text
    saved = json.loads((work_dir / 'results.json').read_text())
    assert saved['budget']['max_iters'] == 2 and saved['budget']['synthetic_data']['num_val'] == 4
    image = cv2.imread(str(work_dir / 'curves.png'))
    assert image is not None and min(image.shape[:2]) > 200
    # run again: the finished runs and the backbone are read back, nothing is trained
    monkeypatch.setattr(runs, 'run_in_process',
                        lambda *args: pytest.fail('a finished run was trained again'))
    monkeypatch.setattr(pretraining, 'pretrain_backbone',
                        lambda *a, **k: pytest.fail('the pretrained backbone was not reused'))
    again = ablations.run_ablations(rows, seeds=[0], work_dir=str(work_dir),
                                    data_root=str(tmp_path / 'data'), max_iters=2,
                                    synthetic_overrides=TINY_DATA, progress=False,
                                    pretrained_dir=str(pretrained), pretrain_iters=2)
    assert [r['metrics'] for r in again['runs']] == [r['metrics'] for r in result['runs']]
    assert all(r['reused'] for r in again['runs'])
    assert 'ablations: 0 runs trained, 2 read back (they took ' in again['times']
    minutes = sum(run['total_seconds'] for run in result['runs']) / 60
    assert f'read back (they took {minutes:.1f} process-min when trained)' in again['times']


def test_jobs_must_be_positive(tmp_path):
    rows = ablations.find_rows(ROW_DIR, patterns=['ss-k1'])
    with pytest.raises(ValueError, match='jobs must be >= 1, got 0'):
        ablations.run_ablations(rows, work_dir=str(tmp_path / 'w'),
                                data_root=str(tmp_path / 'd'), max_iters=2,
                                synthetic_overrides=TINY_DATA, progress=False, jobs=0)


def test_row_names_and_selection():
    assert runs.row_name('a/deformable-detr_ss-k1_r18_1xb8-360i_synthetic.py') == \
        'deformable-detr_ss-k1'
    with pytest.raises(ValueError, match='not named'):
        runs.row_name('base.py')
    rows = ablations.find_rows(ROW_DIR)
    assert list(rows) == list(ablations.ROW_ORDER)  # the table follows the paper's order
    assert set(report.claims_rows()) <= set(rows)
    # a variant alone selects only its exact row (not ms-attn-k4-fpn)
    assert list(ablations.find_rows(ROW_DIR, patterns=['ms-attn-k4'])) == \
        ['deformable-detr_ms-attn-k4']
    with pytest.raises(ValueError, match=r"\['k8'\] match no row"):
        ablations.find_rows(ROW_DIR, patterns=['ss-k1', 'k8'])


def test_describe_row():
    rows = ablations.find_rows(
        ROW_DIR, patterns=['ms-inputs-k1', 'ss-k4', 'ms-attn-k4-fpn'])
    rows.update(ablations.find_rows(CONVERGENCE_DIR, patterns=['detr_ss']))
    described = {name: ablations.describe_config(path) for name, path in rows.items()}
    assert described['deformable-detr_ms-inputs-k1'] == dict(
        levels='4', attention='within-level', K='1', decoder='DeformableDecoder',
        neck='MultiScaleProjection')
    assert described['deformable-detr_ss-k4'] == dict(
        levels='1', attention='single-level', K='4', decoder='DeformableDecoder',
        neck='MultiScaleProjection')
    assert described['detr_ss'] == dict(levels='1', attention='dense', K='-',
                                        decoder='DetrDecoder', neck='MultiScaleProjection')
    assert described['deformable-detr_ms-attn-k4-fpn']['neck'] == 'FPN'


def test_rows_must_share_the_budget(tmp_path):
    base = ablations.find_rows(ROW_DIR, patterns=['ss-k1'])['deformable-detr_ss-k1']
    other = tmp_path / 'deformable-detr_other_r18_synthetic.py'
    other.write_text(f'_base_ = {base!r}\ntrain_cfg = dict(max_iters=7)\n')
    rows = {'a': base, 'b': str(other)}
    with pytest.raises(ValueError, match=r'max_iters is \d+ in .* and 7 in'):
        runs.check_same_budget(rows)
    assert runs.check_same_budget(rows, max_iters=5)['max_iters'] == 5
    # lengths allowed to differ: each row's own, by name (data and batch still checked)
    base_iters = runs._budget(base)['max_iters']
    assert runs.check_same_budget(rows, same_length=False)['max_iters'] == dict(a=base_iters,
                                                                                 b=7)
    other.write_text(f'_base_ = {base!r}\nsynthetic_data = dict(num_val=3)\n')
    with pytest.raises(ValueError, match='synthetic_data'):
        runs.check_same_budget(rows, max_iters=5)
    with pytest.raises(ValueError, match='synthetic_data'):
        runs.check_same_budget(rows, same_length=False)
    coco_rows = ablations.find_rows(str(CONFIGS / 'ablations'), ['ss-k1'])
    with pytest.raises(KeyError, match='has no "synthetic_data"'):
        runs.check_same_budget(coco_rows)


def test_a_run_of_an_edited_config_is_trained_again(tmp_path, capsys):
    base = tmp_path / 'base.py'
    base.write_text('model = dict(depth=2)\nlr = 1e-3\n')
    config = tmp_path / 'deformable-detr_x_r18_synthetic.py'
    config.write_text("_base_ = './base.py'\nmodel = dict(width=8)\n")
    result_file = tmp_path / 'result.json'

    def write(**extra):
        record = dict(config=str(config), seed=0, iters=10, scheduled_iters=10, curve=[],
                      extension=dict(held=True), **extra)
        result_file.write_text(json.dumps(record))

    def found():
        return runs.reusable_result(str(result_file), str(config), 0, 10)

    write(config_digest=runs.config_digest(str(config)))
    assert found() is not None
    config.write_text("# a comment\n_base_ = './base.py'\nmodel = dict(width=8)  # same\n")
    assert found() is not None  # comments and layout are not the content
    base.write_text('model = dict(depth=3)\nlr = 1e-3\n')  # an inherited value changed
    assert found() is None
    assert 'changed since this run' in capsys.readouterr().out
    base.write_text('model = dict(depth=2)\nlr = 1e-3\n')
    assert found() is not None
    config.write_text("_base_ = './base.py'\nmodel = dict(width=16)\n")
    assert found() is None
    # a result from before the digest: read back, but not silently
    write()
    assert found() is not None
    assert 'without checking that' in capsys.readouterr().out


def test_side_by_side_starts_the_costliest_first_and_keeps_the_order():
    started = []
    lock = threading.Lock()

    def work(name, cost):
        with lock:
            started.append(name)
        if name == 'boom':
            raise RuntimeError('run boom failed')
        return name.upper()

    items = [('a', 1), ('b', 4), ('c', 2), ('d', 4)]
    # one job: the start order is the schedule itself
    assert runs.map_side_by_side(work, items, 1, cost=lambda n, c: c) == ['A', 'B', 'C', 'D']
    assert started == ['b', 'd', 'c', 'a']  # decreasing cost, ties in the given order
    started.clear()
    assert runs.map_side_by_side(work, items, 1) == ['A', 'B', 'C', 'D']
    assert started == ['a', 'b', 'c', 'd']
    started.clear()
    assert runs.map_side_by_side(work, items, 2, cost=lambda n, c: c) == ['A', 'B', 'C', 'D']
    assert sorted(started) == ['a', 'b', 'c', 'd']
    with pytest.raises(RuntimeError, match='run boom failed'):  # a failure is not swallowed
        runs.map_side_by_side(work, items + [('boom', 3)], 2, cost=lambda n, c: c)


def test_summary_and_table():
    records = [fake_run('a', 0, 0.30), fake_run('a', 1, 0.34), fake_run('b', 0, 0.20)]
    summary = report.summarize(records)
    assert summary['a']['seeds'] == [0, 1]
    np.testing.assert_allclose(summary['a']['values']['AP'], [30.0, 34.0])
    assert np.isnan(summary['a']['values']['AP_L']).all()  # COCO's -1: no large object
    lines = report.format_table(summary).splitlines()
    # two seeds (30, 34): t(0.975, 1) * s.d. / sqrt(2) = 12.706 * 2.83 / 1.41 = 25.4; AP50's
    # interval (64 +- 50.8) is cut at 100
    assert lines[2].startswith('| a | 4 | multi-scale | 4 | FPN | 32.0 [6.6, 57.4] | '
                               '64.0 [13.2, 100.0] |')
    # both curves end flat (no decay: the last two evaluations): the plateau gate holds
    assert '| n/a | yes (2/2) | 11 | 1.00 M | 2 |' in lines[2]
    assert lines[3].startswith('| b | 4 | multi-scale | 4 | FPN | 20.0 | 40.0 |')


def test_plot_with_seed_bands(tmp_path):
    records = [fake_run('a', 0, 0.3), fake_run('a', 1, 0.4), fake_run('detr_ss', 0, 0.1)]
    counts = plots.plot_ablation_curves(records, str(tmp_path / 'c.png'))
    assert counts == {'a': 2, 'detr_ss': 2}
    assert cv2.imread(str(tmp_path / 'c.png')) is not None
