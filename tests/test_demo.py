"""The demo (mmdeform.demo) end to end on a tiny budget, and its pieces."""
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest
import torch

from mmdeform import demo
from mmdeform.visualization import load_scalars, plot_curves

TINY_DATA = dict(num_train=8, num_val=4, image_size=64)


@pytest.fixture
def tiny_config(tmp_path):
    """The demo config with batches of 4 (the model is the real one)."""
    path = tmp_path / 'tiny_demo.py'
    path.write_text(f'_base_ = {demo.DEFAULT_CONFIG!r}\n'
                    'train_dataloader = dict(batch_size=4)\n'
                    'val_dataloader = dict(batch_size=4)\n')
    return str(path)


def test_run_demo_end_to_end(tmp_path, tiny_config, capsys):
    work_dir = str(tmp_path / 'work')
    result = demo.run_demo(tiny_config, work_dir, str(tmp_path / 'data'), seed=0,
                           max_iters=3, val_interval=2, synthetic_overrides=TINY_DATA,
                           num_threads=torch.get_num_threads(), progress=False)
    out = capsys.readouterr().out
    pattern = r'demo: bbox mAP=(-?\d\.\d{3}) in (\d+) s; outputs in (.+)'
    lines = [line for line in out.splitlines() if line.startswith('demo:')]
    assert len(lines) == 1 and lines[0] == result['line']
    match = re.fullmatch(pattern, lines[0])
    assert match is not None, lines[0]
    assert float(match.group(1)) == pytest.approx(result['metrics']['coco/bbox_mAP'], abs=5e-4)
    assert match.group(3) == work_dir
    assert result['iters'] == 3
    # data, checkpoint, logs, curves
    data = json.loads((tmp_path / 'data' / 'val.json').read_text())
    assert len(data['images']) == 4
    checkpoint = torch.load(result['checkpoint'], map_location='cpu', weights_only=False)
    assert checkpoint['meta']['iter'] == 3
    assert any(k.startswith('bbox_head.') for k in checkpoint['state_dict'])
    log_dir = Path(result['log_dir'])
    log_text = (log_dir / f'{log_dir.name}.log').read_text()
    assert 'Iter(train) [' in log_text and 'coco/bbox_mAP' in log_text
    train, val = load_scalars(f"{result['log_dir']}/vis_data/scalars.json")
    assert [r['step'] for r in val] == [2, 3]  # at val_interval and after the last iteration
    assert len(train) >= 1
    image = cv2.imread(result['curves'])
    assert image is not None and image.ndim == 3 and min(image.shape[:2]) > 100


def test_run_demo_time_limit_stops_then_evaluates(tmp_path, tiny_config, capsys):
    result = demo.run_demo(tiny_config, str(tmp_path / 'work'), str(tmp_path / 'data'),
                           max_iters=50, val_interval=50, max_train_minutes=1e-6,
                           synthetic_overrides=TINY_DATA, progress=False)
    assert result['iters'] == 1  # stopped after the first iteration
    assert 'coco/bbox_mAP' in result['metrics']
    checkpoint = torch.load(result['checkpoint'], map_location='cpu', weights_only=False)
    assert checkpoint['meta']['iter'] == 1
    _, val = load_scalars(f"{result['log_dir']}/vis_data/scalars.json")
    assert [r['step'] for r in val] == [1]
    assert 'training time limit' in capsys.readouterr().out


def test_prepare_data_reuses_matching_data(tmp_path):
    args = dict(TINY_DATA, num_val=2, seed=3)
    assert demo.prepare_data(str(tmp_path), args, progress=False) is True
    stamp = (tmp_path / 'val.json').stat().st_mtime_ns
    assert demo.prepare_data(str(tmp_path), args, progress=False) is False
    assert (tmp_path / 'val.json').stat().st_mtime_ns == stamp
    # different arguments regenerate
    assert demo.prepare_data(str(tmp_path), dict(args, num_val=3), progress=False) is True
    assert len(json.loads((tmp_path / 'val.json').read_text())['images']) == 3


def test_prepare_data_keeps_foreign_annotations(tmp_path):
    foreign = json.dumps(dict(info=dict(description='my data'), images=[], categories=[]))
    (tmp_path / 'val.json').write_text(foreign)
    with pytest.raises(FileExistsError, match='val.json'):
        demo.prepare_data(str(tmp_path), dict(TINY_DATA, num_val=2), progress=False)
    assert (tmp_path / 'val.json').read_text() == foreign


def test_build_demo_config_rescales_schedule(tmp_path):
    cfg = demo.build_demo_config(demo.DEFAULT_CONFIG, str(tmp_path / 'w'),
                                 str(tmp_path / 'd'), seed=7, max_iters=40)
    assert cfg.train_cfg.max_iters == 40 and cfg.train_cfg.val_interval <= 40
    assert cfg.randomness.seed == 7
    assert cfg.train_dataloader.dataset.data_root == str(tmp_path / 'd') + '/'
    assert cfg.val_evaluator.ann_file == str(tmp_path / 'd' / 'val.json')
    for scheduler in cfg.param_scheduler:
        assert 0 <= scheduler.begin < scheduler.end <= 40
    assert cfg.param_scheduler[-1].end == 40
    assert cfg.default_hooks.checkpoint.interval == 40


def test_build_demo_config_needs_iteration_loop(tmp_path):
    path = tmp_path / 'epochs.py'
    path.write_text(f'_base_ = {demo.DEFAULT_CONFIG!r}\n'
                    "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=1)\n")
    with pytest.raises(ValueError, match='IterBasedTrainLoop'):
        demo.build_demo_config(str(path), str(tmp_path), str(tmp_path))


def test_train_time_limit_hook_stops_loop():
    hook = demo.TrainTimeLimitHook(seconds=0.01)
    runner = SimpleNamespace(iter=4, train_loop=SimpleNamespace(stop_training=False))
    hook.before_train(runner)
    hook.after_train_iter(runner, 0)
    assert runner.train_loop.stop_training is False
    time.sleep(0.02)
    hook.after_train_iter(runner, 0)
    assert runner.train_loop.stop_training is True and hook.stopped_at == 5
    with pytest.raises(ValueError, match='seconds'):
        demo.TrainTimeLimitHook(0)


def write_scalars(path, records):
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_plot_curves(tmp_path):
    records = [dict(loss=3.0 - 0.1 * i, loss_cls=1.0, lr=1e-3, step=i + 1) for i in range(10)]
    records.insert(5, {'coco/bbox_mAP': 0.2, 'coco/bbox_mAP_50': 0.4, 'step': 5})
    records.append({'coco/bbox_mAP': 0.5, 'coco/bbox_mAP_50': 0.7, 'step': 10})
    write_scalars(tmp_path / 'scalars.json', records)
    train, val = load_scalars(str(tmp_path / 'scalars.json'))
    assert len(train) == 10 and [r['step'] for r in val] == [5, 10]
    counts = plot_curves(str(tmp_path / 'scalars.json'), str(tmp_path / 'out' / 'c.png'))
    assert counts == {'loss': 10, 'loss_cls': 10, 'coco/bbox_mAP': 2, 'coco/bbox_mAP_50': 2}
    image = cv2.imread(str(tmp_path / 'out' / 'c.png'))
    assert image is not None and image.shape[2] == 3


def test_plot_curves_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no scalar log'):
        load_scalars(str(tmp_path / 'missing.json'))
    (tmp_path / 'bad.json').write_text('{"loss": 1.0, "step": 1}\nnot json\n')
    with pytest.raises(ValueError, match='bad.json:2'):
        load_scalars(str(tmp_path / 'bad.json'))
    write_scalars(tmp_path / 'other.json', [dict(lr=0.1, step=1)])
    with pytest.raises(ValueError, match='none of the keys'):
        plot_curves(str(tmp_path / 'other.json'), str(tmp_path / 'x.png'))
