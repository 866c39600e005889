"""The synthetic experiment behind ``make demo`` and the ablations
(projects.synthetic_ablations.experiment), end to end on a tiny budget."""
import json
import re
from pathlib import Path

import cv2
import pytest
import torch

from mmdeform.visualization import load_scalars
from projects.synthetic_ablations import DEMO_CONFIG as DEMO_CONFIG_PATH
from projects.synthetic_ablations import experiment

DEMO_CONFIG = str(DEMO_CONFIG_PATH)
TINY_DATA = dict(num_train=8, num_val=4, image_size=64)


@pytest.fixture
def tiny_config(tmp_path):
    """The demo config with batches of 4 (the model is the real one)."""
    path = tmp_path / 'tiny_demo.py'
    path.write_text(f'_base_ = {DEMO_CONFIG!r}\n'
                    'train_dataloader = dict(batch_size=4)\n'
                    'val_dataloader = dict(batch_size=4)\n')
    return str(path)


def test_run_demo_end_to_end(tmp_path, tiny_config, capsys):
    work_dir = str(tmp_path / 'work')
    result = experiment.run_demo(tiny_config, work_dir, str(tmp_path / 'data'), seed=0,
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
    result = experiment.run_demo(tiny_config, str(tmp_path / 'work'), str(tmp_path / 'data'),
                           max_iters=50, val_interval=50, max_train_minutes=1e-6,
                           synthetic_overrides=TINY_DATA, progress=False)
    assert result['iters'] == 1  # stopped after the first iteration
    assert 'coco/bbox_mAP' in result['metrics']
    checkpoint = torch.load(result['checkpoint'], map_location='cpu', weights_only=False)
    assert checkpoint['meta']['iter'] == 1
    _, val = load_scalars(f"{result['log_dir']}/vis_data/scalars.json")
    assert [r['step'] for r in val] == [1]
    assert 'training time limit' in capsys.readouterr().out


def test_build_synthetic_config_rescales_schedule(tmp_path):
    cfg = experiment.build_synthetic_config(DEMO_CONFIG, str(tmp_path / 'w'),
                                 str(tmp_path / 'd'), seed=7, max_iters=40)
    assert cfg.train_cfg.max_iters == 40 and cfg.train_cfg.val_interval <= 40
    assert cfg.randomness.seed == 7
    assert cfg.train_dataloader.dataset.data_root == str(tmp_path / 'd') + '/'
    assert cfg.val_evaluator.ann_file == str(tmp_path / 'd' / 'val.json')
    for scheduler in cfg.param_scheduler:
        assert 0 <= scheduler.begin < scheduler.end <= 40
    assert cfg.param_scheduler[-1].end == 40
    assert cfg.default_hooks.checkpoint.interval == 40


def test_rescaling_keeps_the_decay_and_evaluation_points_in_proportion(tmp_path):
    path = tmp_path / 'steps.py'
    path.write_text(f'_base_ = {DEMO_CONFIG!r}\n'
                    'train_cfg = dict(max_iters=1000, val_interval=200, '
                    'dynamic_intervals=[(800, 100)])\n'
                    "param_scheduler = [dict(type='MultiStepLR', by_epoch=False, begin=0, "
                    'end=1000, milestones=[800], gamma=0.1)]\n')
    cfg = experiment.build_synthetic_config(str(path), str(tmp_path / 'w'),
                                            str(tmp_path / 'd'), max_iters=500)
    assert (cfg.train_cfg.val_interval, cfg.train_cfg.dynamic_intervals) == (100, [(400, 50)])
    assert cfg.param_scheduler[0].milestones == [400] and cfg.param_scheduler[0].end == 500
    # one fixed interval replaces the evaluation points
    cfg = experiment.build_synthetic_config(str(path), str(tmp_path / 'w'),
                                            str(tmp_path / 'd'), val_interval=7)
    assert cfg.train_cfg.val_interval == 7 and 'dynamic_intervals' not in cfg.train_cfg


def test_build_synthetic_config_needs_iteration_loop(tmp_path):
    path = tmp_path / 'epochs.py'
    path.write_text(f'_base_ = {DEMO_CONFIG!r}\n'
                    "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=1)\n")
    with pytest.raises(ValueError, match='IterBasedTrainLoop'):
        experiment.build_synthetic_config(str(path), str(tmp_path), str(tmp_path))
