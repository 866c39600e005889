"""The ablation runner (projects.synthetic_ablations.ablations) and its report."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from projects.synthetic_ablations import ABLATION_DIR, ablations, report
from projects.synthetic_ablations import CONVERGENCE_DIR as CONVERGENCE

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
ROW_DIR = str(ABLATION_DIR)
TINY_DATA = dict(num_train=8, num_val=4)
TWO_ROWS = ['ss-k1', 'ms-attn-k4']
CONVERGENCE_DIR = str(CONVERGENCE)


def fake_run(row: str, seed: int, ap: float, ap_s: float = 0.1, curve=None) -> dict:
    metrics = dict(AP=ap, AP50=min(1.0, 2 * ap), AP_S=ap_s, AP_M=ap, AP_L=-1.0)
    curve = curve or [dict(iter=10, AP=ap / 2, AP_S=ap_s / 2), dict(iter=20, AP=ap, AP_S=ap_s)]
    return dict(row=row, seed=seed, iters=20, metrics=metrics, curve=curve,
                train_seconds=10.0 + 2 * seed, total_seconds=15.0, params=1_000_000,
                description=dict(levels='4', attention='multi-scale', K='4', neck='FPN'))


def test_run_ablations_end_to_end(tmp_path, capsys, monkeypatch):
    rows = ablations.find_rows(ROW_DIR, patterns=TWO_ROWS)
    assert list(rows) == ['deformable-detr_ss-k1', 'deformable-detr_ms-attn-k4']
    work_dir = tmp_path / 'work'
    result = ablations.run_ablations(rows, seeds=[0], work_dir=str(work_dir),
                                     data_root=str(tmp_path / 'data'), max_iters=2,
                                     synthetic_overrides=TINY_DATA, num_threads=1,
                                     progress=False, jobs=2)  # side by side, order kept
    out = capsys.readouterr().out
    assert [r['row'] for r in result['runs']] == list(rows)
    for run in result['runs']:
        assert run['iters'] == 2 and run['seed'] == 0
        assert [p['iter'] for p in run['curve']] == [1, 2]  # max_iters // 4 -> every iteration
        assert set(run['metrics']) == set(report.TABLE_METRICS)
        assert 0 < run['train_seconds'] < run['total_seconds']
        assert run['params'] > 1_000_000
        assert (work_dir / run['row'] / 'seed0' / 'result.json').is_file()
    assert result['runs'][1]['description']['attention'] == 'multi-scale'
    text = (work_dir / 'results.md').read_text()
    table_lines = result['table'].splitlines()[2:]
    assert [line.split(' | ')[0] for line in table_lines] == [f'| {row}' for row in rows]
    assert result['table'] in text and result['table'] in out
    assert "## The paper's orderings" in text
    # the only claim with both rows present is judged, the others say what is missing
    assert '| deformable-detr_ms-attn-k4 vs deformable-detr_ss-k1 | AP |' in text
    assert 'not run (deformable-detr_ms-inputs-k1 missing)' in text
    saved = json.loads((work_dir / 'results.json').read_text())
    assert saved['budget']['max_iters'] == 2 and saved['budget']['synthetic_data']['num_val'] == 4
    image = cv2.imread(str(work_dir / 'curves.png'))
    assert image is not None and min(image.shape[:2]) > 200
    # resume: the finished runs are read back, nothing is trained
    monkeypatch.setattr(ablations, 'run_in_process',
                        lambda *args: pytest.fail('resume retrained a finished run'))
    again = ablations.run_ablations(rows, seeds=[0], work_dir=str(work_dir),
                                    data_root=str(tmp_path / 'data'), max_iters=2,
                                    synthetic_overrides=TINY_DATA, resume=True, progress=False)
    assert [r['metrics'] for r in again['runs']] == [r['metrics'] for r in result['runs']]


def test_jobs_must_be_positive(tmp_path):
    rows = ablations.find_rows(ROW_DIR, patterns=['ss-k1'])
    with pytest.raises(ValueError, match='jobs must be >= 1, got 0'):
        ablations.run_ablations(rows, work_dir=str(tmp_path / 'w'),
                                data_root=str(tmp_path / 'd'), max_iters=2,
                                synthetic_overrides=TINY_DATA, progress=False, jobs=0)


def test_row_names_and_selection():
    assert ablations.row_name('a/deformable-detr_ss-k1_r18_1xb8-360i_synthetic.py') == \
        'deformable-detr_ss-k1'
    with pytest.raises(ValueError, match='not named'):
        ablations.row_name('base.py')
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
    rows.update(ablations.find_rows(CONVERGENCE_DIR, patterns=['dense-detr_ss']))
    described = {name: ablations.describe_config(path) for name, path in rows.items()}
    assert described['deformable-detr_ms-inputs-k1'] == dict(
        levels='4', attention='within-level', K='1', neck='MultiScaleProjection')
    assert described['deformable-detr_ss-k4'] == dict(
        levels='1', attention='single-level', K='4', neck='MultiScaleProjection')
    assert described['dense-detr_ss']['attention'] == 'dense'
    assert described['dense-detr_ss']['K'] == '-'
    assert described['deformable-detr_ms-attn-k4-fpn']['neck'] == 'FPN'


def test_rows_must_share_the_budget(tmp_path):
    base = ablations.find_rows(ROW_DIR, patterns=['ss-k1'])['deformable-detr_ss-k1']
    other = tmp_path / 'deformable-detr_other_r18_synthetic.py'
    other.write_text(f'_base_ = {base!r}\ntrain_cfg = dict(max_iters=7)\n')
    rows = {'a': base, 'b': str(other)}
    with pytest.raises(ValueError, match='max_iters is 500 in .* and 7 in'):
        ablations.check_same_budget(rows)
    assert ablations.check_same_budget(rows, max_iters=5)['max_iters'] == 5
    other.write_text(f'_base_ = {base!r}\nsynthetic_data = dict(num_val=3)\n')
    with pytest.raises(ValueError, match='synthetic_data'):
        ablations.check_same_budget(rows, max_iters=5)
    coco_rows = ablations.find_rows(str(CONFIGS / 'ablations'), ['ss-k1'])
    with pytest.raises(KeyError, match='has no "synthetic_data"'):
        ablations.check_same_budget(coco_rows)


def test_summary_and_table():
    runs = [fake_run('a', 0, 0.30), fake_run('a', 1, 0.34), fake_run('b', 0, 0.20)]
    summary = report.summarize(runs)
    assert summary['a']['seeds'] == [0, 1]
    np.testing.assert_allclose(summary['a']['values']['AP'], [30.0, 34.0])
    assert np.isnan(summary['a']['values']['AP_L']).all()  # COCO's -1: no large object
    lines = report.format_table(summary).splitlines()
    # two seeds (30, 34): t(0.975, 1) * s.d. / sqrt(2) = 12.706 * 2.83 / 1.41 = 25.4
    assert lines[2].startswith('| a | 4 | multi-scale | 4 | FPN | 32.0 ± 25.4 | 64.0 ± 50.8 |')
    assert '| n/a | 11 | 1.00 M | 2 |' in lines[2]
    assert lines[3].startswith('| b | 4 | multi-scale | 4 | FPN | 20.0 | 40.0 |')


def test_plot_with_seed_bands(tmp_path):
    runs = [fake_run('a', 0, 0.3), fake_run('a', 1, 0.4), fake_run(report.DENSE_ROW, 0, 0.1)]
    counts = report.plot_ablation_curves(runs, str(tmp_path / 'c.png'))
    assert counts == {'a': 2, report.DENSE_ROW: 2}
    assert cv2.imread(str(tmp_path / 'c.png')) is not None
