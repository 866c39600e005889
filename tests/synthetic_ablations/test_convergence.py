"""Iterations to equal AP (projects.synthetic_ablations.convergence) and
tools/run_convergence.py."""
import importlib.util
import json
from pathlib import Path

import cv2
import pytest
import torch

from projects.synthetic_ablations import convergence, pretraining, runs

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
    assert convergence.convergence_ratio(100.0, None, 2000).startswith('more than 20.0x (DETR')
    assert convergence.convergence_ratio(None, 50.0, 2000).startswith('not measurable')
    assert convergence.convergence_ratio(100.0, 1000.0, 2000, True).startswith('at least 10.0x')


def fake_run(row, aps, seed=0):
    curve = [dict(iter=100 * (i + 1), AP=ap / 100) for i, ap in enumerate(aps)]
    return dict(row=row, config=f'/x/{row}_r18_synthetic.py', seed=seed, iters=100 * len(aps),
                metrics=dict(AP=aps[-1] / 100), curve=curve, train_seconds=5.0,
                total_seconds=6.0, params=10, description=dict(levels='1'))


def test_equal_final_ap_comparison():
    # deformable plateaus at 30 (29.5, 30.5), DETR at 20 (19.8, 20.2): target 0.9 * 20 = 18
    deformable = fake_run('deformable-detr_ss-k4', [10.0, 26.0, 29.5, 30.5, 29.5, 30.5])
    detr = fake_run('detr_ss', [0.0, 2.0, 6.0, 12.0, 16.0, 19.8, 20.2])
    compared = convergence.compare_seed(deformable, detr, 700)
    assert compared['plateau'] == dict(deformable=30.0, detr=20.0)
    assert compared['target'] == pytest.approx(18.0)
    # deformable: between 100 (10) and 200 (26): 150; DETR: between 500 (16) and 600 (19.8)
    assert compared['iters']['deformable'] == pytest.approx(150.0)
    assert compared['iters']['detr'] == pytest.approx(500 + 100 * 2 / 3.8)
    assert compared['ratio'] == pytest.approx((500 + 100 * 2 / 3.8) / 150)
    assert compared['gate']['deformable'] == (True, '500: 29.5 -> 600: 30.5')
    assert compared['gate']['detr'][0] is True
    rising = fake_run('detr_ss', [0.0, 2.0, 6.0, 12.0])  # still climbing at the end
    compared = convergence.compare_seed(deformable, rising, 400)
    assert compared['gate']['detr'][0] is False
    assert compared['target'] == pytest.approx(0.9 * 9.0)
    # a final AP that still moves is no final AP: no ratio, the text says why
    assert compared['ratio'] is None and compared['iters']['detr'] is not None
    assert compared['ratio_text'].startswith('not at equal final AP (detr not at a plateau)')


def test_geometric_mean_of_ratios():
    assert convergence.geometric_mean_ratio([2.0, 8.0]).startswith('4.0x [')
    assert convergence.geometric_mean_ratio([3.0]) == '3.0x (1 seed)'
    assert convergence.geometric_mean_ratio([]) == 'not measurable'


def test_report(tmp_path):
    pairs = [(fake_run('deformable-detr_ss-k4', [10.0, 26.0, 29.5, 30.5], seed),
              fake_run('detr_ss', [0.0, 6.0, 16.0, 19.8, 20.2 + seed], seed))
             for seed in (0, 1)]
    out, compared = convergence.write_convergence_report(pairs, 500, str(tmp_path / 'c.md'),
                                                         milestones=(5.0, 25.0))
    text = Path(out).read_text()
    assert [c['seed'] for c in compared] == [0, 1]
    assert '| 0 | 30.0, plateau (300: 29.5 -> 400: 30.5) | 20.0, plateau' in text
    assert 'DETR / deformable iterations at equal final AP: ' in text and '(2 seeds)' in text
    assert '2 of 2 seeds measured' in text
    # milestones: 5 AP reached by both in every seed; 25 AP never by DETR
    assert '| 5 | 100 (2/2) | 183 (2/2) | 1.8x |' in text
    assert '| 25 | 194 (2/2) | not reached within 500 | - |' in text


def test_report_names_each_models_schedule(tmp_path):
    def scheduled(run, length):
        return dict(run, scheduled_iters=length)

    # the deformable model scheduled for 300 (one run trained on to 400), DETR for 500
    pairs = [(scheduled(fake_run('deformable-detr_ss-k4', [10.0, 26.0, 29.5], 0), 300),
              scheduled(fake_run('detr_ss', [0.0, 6.0, 16.0, 19.8, 20.2], 0), 500)),
             (scheduled(fake_run('deformable-detr_ss-k4', [10.0, 22.0, 27.0, 28.0], 1), 300),
              scheduled(fake_run('detr_ss', [0.0, 6.0, 16.0, 19.8, 20.2], 1), 500))]
    out, compared = convergence.write_convergence_report(pairs, 500, str(tmp_path / 'c.md'))
    text = Path(out).read_text()
    assert ('Deformable model: 300 iterations scheduled (trained: 300, 400); DETR: 500 '
            'iterations scheduled (trained: 500)') in text
    # the target is 90 % of the lower plateau (DETR's) whatever the deformable model's length
    assert [c['target'] for c in compared] == [pytest.approx(18.0)] * 2
    same = [(scheduled(a, 500), b) for a, b in pairs]
    text = Path(convergence.write_convergence_report(same, 500, str(tmp_path / 'd.md'))[0]
                ).read_text()
    assert 'Both models: 500 iterations scheduled, trained on to the plateau gate' in text


def test_report_leaves_an_unsettled_seed_out_of_the_ratio(tmp_path):
    settled = (fake_run('deformable-detr_ss-k4', [10.0, 26.0, 29.5, 30.5], 0),
               fake_run('detr_ss', [0.0, 6.0, 16.0, 19.8, 20.2], 0))
    rising = (fake_run('deformable-detr_ss-k4', [10.0, 26.0, 29.5, 30.5], 1),
              fake_run('detr_ss', [0.0, 6.0, 12.0, 16.0, 20.0], 1))  # +4 at the end
    out, compared = convergence.write_convergence_report([settled, rising], 500,
                                                         str(tmp_path / 'c.md'))
    text = Path(out).read_text()
    assert compared[0]['ratio'] is not None and compared[1]['ratio'] is None
    assert '18.0, NOT at plateau (400: 16.0 -> 500: 20.0)' in text  # mean of the last two
    assert '1 of 2 seeds measured' in text and '(1 seed)' in text


def test_tool_end_to_end(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location('run_convergence',
                                                  ROOT / 'tools' / 'run_convergence.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    work_dir = tmp_path / 'work'
    args = ['--max-iters', '3', '--val-interval', '1', '--num-train', '8', '--num-val', '4',
            '--threads', '1', '--jobs', '2', '--seeds', '0', '--pretrain-iters', '2',
            '--pretrained-dir', str(tmp_path / 'pretrained'), '--work-dir', str(work_dir),
            '--data-root', str(tmp_path / 'data'), '--no-progress']
    result = tool.main(args)
    assert [run['row'] for run in result['runs']] == list(convergence.DEFAULT_ROWS)
    for run in result['runs']:  # no early stop; trained on (up to 2x) until the gate holds
        assert 3 <= run['iters'] <= 6 and run['scheduled_iters'] == 3
        assert [p['iter'] for p in run['curve']] == list(range(1, run['iters'] + 1))
        assert run['extension']['extra_iters'] == run['iters'] - 3
        assert run['extension']['held'] or run['iters'] == 6
    assert (work_dir / 'convergence.md').read_text().startswith('# Convergence against DETR')
    saved = json.loads((work_dir / 'convergence.json').read_text())
    # both models started from one backbone pretrained once, 2 iterations
    backbone = str(tmp_path / 'pretrained' / 'backbone_r18-half_counting-256.pth')
    assert {s['checkpoint'] for s in saved['pretrained_backbones'].values()} == {backbone}
    assert set(saved['pretrained_backbones']) == set(convergence.DEFAULT_ROWS)
    assert torch.load(backbone, weights_only=True)['meta']['iters'] == 2
    digest = pretraining.weights_digest(backbone)
    recorded = {s['weights_sha256'] for s in saved['pretrained_backbones'].values()}
    assert len(digest) == 16 and recorded == {digest}
    assert f'(weights sha256 {digest})' in (work_dir / 'convergence.md').read_text()
    for run in result['runs']:
        log = next(Path(run['log_dir']).glob('*.log')).read_text()
        assert f'ResNet: loaded 100 tensors from {backbone}' in log
    image = cv2.imread(str(work_dir / 'convergence.png'))
    assert image is not None and min(image.shape[:2]) > 200
    # again: finished runs and the backbone are read back, nothing is trained
    monkeypatch.setattr(runs, 'run_in_process',  # the runs' one entry point
                        lambda *a: pytest.fail('a finished run was trained again'))
    monkeypatch.setattr(pretraining, 'pretrain_backbone',
                        lambda *a, **k: pytest.fail('the pretrained backbone was not reused'))
    again = tool.main(args)
    assert [r['metrics'] for r in again['runs']] == [r['metrics'] for r in result['runs']]
    assert 'convergence: 0 runs trained' in again['times']
    # ... but not with another length
    with pytest.raises(pytest.fail.Exception, match='trained again'):
        tool.main(args[2:] + ['--max-iters', '4'])
    monkeypatch.undo()
    # a learning-rate sweep of DETR: two rates with seed 0 at a fixed length, the better one
    # compared; the deformable model (its config's rate) is read back
    # (no --val-interval: the sweep evaluates every 5 % of its length, whatever the configs say)
    at = args.index('--val-interval')
    no_interval = args[:at] + args[at + 2:]
    swept = tool.main(no_interval + ['--detr-lrs', '1e-4', '3e-4', '--sweep-iters', '40'])
    sweep = swept['sweep']['detr_ss']
    assert [r['lr'] for r in sweep] == [1e-4, 3e-4] and list(swept['sweep']) == ['detr_ss']
    assert all(r['iters'] == 40 and r['extension'] is None for r in sweep)  # no extension
    assert all([p['iter'] for p in r['curve']] == list(range(2, 41, 2)) for r in sweep)
    chosen = swept['lrs']['detr_ss']
    assert chosen == convergence.choose_lr(sweep) and swept['lrs']['deformable-detr_ss-k4'] is None
    assert swept['runs'][1]['lr'] == chosen and not swept['runs'][1]['reused']
    assert swept['runs'][0]['reused']
    table = (work_dir / 'lr_sweep.md').read_text()
    assert '| detr_ss | 0.0001 |' in table and '| detr_ss | 0.0003 |' in table
    assert f'DETR at lr {chosen:g} (chosen by the learning-rate sweep' in \
        (work_dir / 'convergence.md').read_text()


def test_choose_lr_and_bad_rates(tmp_path):
    runs_ = [dict(fake_run('detr_ss', [1.0, 4.0, 5.0]), lr=1e-4),
             dict(fake_run('detr_ss', [2.0, 6.0, 6.5]), lr=3e-4),
             dict(fake_run('detr_ss', [2.0, 6.5, 6.0]), lr=1e-3)]  # a tie at 6.25: the lower
    assert convergence.choose_lr(runs_) == 3e-4
    with pytest.raises(ValueError, match='no run'):
        convergence.choose_lr([])
    configs = dict(a='a.py', b='b.py')
    for lrs in (dict(c=[1e-3]), dict(a=[0.0]), dict(a=[2.0]), dict(a=[])):
        with pytest.raises(ValueError, match='learning rates must be given'):
            convergence.run_convergence(configs, lrs=lrs)


def test_a_run_at_another_rate_is_not_read_back(tmp_path):
    result = dict(config=str(tmp_path / 'c.py'), seed=0, iters=10, scheduled_iters=10, lr=1e-3,
                  curve=[], extension=dict(held=True))
    (tmp_path / 'result.json').write_text(json.dumps(result))
    found = runs.reusable_result(str(tmp_path / 'result.json'), str(tmp_path / 'c.py'), 0, 10)
    assert found is not None  # no rate asked for: the config's, whatever it was
    assert runs.reusable_result(str(tmp_path / 'result.json'), str(tmp_path / 'c.py'), 0, 10,
                                lr=1e-3) is not None
    assert runs.reusable_result(str(tmp_path / 'result.json'), str(tmp_path / 'c.py'), 0, 10,
                                lr=2e-3) is None


def test_pretrained_backbone_is_reused_only_with_the_same_settings(tmp_path):
    settings = dict(checkpoint=str(tmp_path / 'b.pth'), iters=3, batch_size=4, lr=1e-3,
                    weight_decay=1e-4, seed=0)
    assert not pretraining.pretrained_meta(settings['checkpoint'], settings, 'data/x')
    meta = dict(settings, data_root='data/x', val_mse=0.5)
    del meta['checkpoint']
    torch.save(dict(state_dict={}, meta=meta), settings['checkpoint'])
    assert pretraining.pretrained_meta(settings['checkpoint'], settings, 'data/x/')
    assert not pretraining.pretrained_meta(settings['checkpoint'], settings, 'data/y')
    assert not pretraining.pretrained_meta(settings['checkpoint'], dict(settings, lr=2e-3),
                                              'data/x')
    with open(settings['checkpoint'], 'r+b') as f:  # truncated by a kill: trained again
        f.truncate(20)
    assert not pretraining.pretrained_meta(settings['checkpoint'], settings, 'data/x')
