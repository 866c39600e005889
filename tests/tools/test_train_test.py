"""tools/train.py (with --amp) then tools/test.py, end to end, as subprocesses on the
tiny config."""
import json
import pickle
import re
from pathlib import Path

from conftest import NUM_VAL, run_tool
from mmengine.config import Config

from mmdeform.engine import load_weights_only

COCO_KEYS = {'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'coco/bbox_AR@100'}


def only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


def test_train_then_test(tiny_config, synthetic_workspace, tmp_path):
    work_dir = tmp_path / 'work'
    out = run_tool('train.py', [tiny_config, '--work-dir', str(work_dir), '--amp',
                    '--cfg-options', 'train_cfg.max_epochs=1'],
                   cwd=synthetic_workspace)
    # 8 images, batch 2: one epoch of 4 iterations, then a validation on all 5 images
    assert 'Epoch(train) [1][4/4]' in out and 'Epoch(train) [2]' not in out
    assert f'evaluating {10 * NUM_VAL} detections on {NUM_VAL} images' in out
    assert re.search(r'Epoch\(val\) \[1\]\[3/3\]\s+coco/bbox_mAP: ', out)
    ckpt_path = work_dir / 'epoch_1.pth'
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(ckpt_path)
    dumped_cfg = Config.fromfile(work_dir / 'deformable-detr_tiny_synthetic.py')
    assert dumped_cfg.optim_wrapper.type == 'DeviceAmpOptimWrapper'  # --amp: bf16 on CPU
    log = only(work_dir.glob('*/*.log')).read_text()
    assert 'Epoch(train) [1][4/4]' in log and 'loss_cls' in log and 'grad_norm' in log
    checkpoint = load_weights_only(str(ckpt_path))
    assert checkpoint['meta']['epoch'] == 1 and checkpoint['meta']['iter'] == 4
    assert checkpoint['meta']['dataset_meta']['classes'] == (
        'circle', 'square', 'triangle', 'cross')
    assert any(k.startswith('encoder.layers.0.self_attn') for k in checkpoint['state_dict'])

    preds = tmp_path / 'preds.pkl'
    out = run_tool('test.py', [tiny_config, str(ckpt_path), '--work-dir', str(work_dir),
                    '--out', str(preds), '--show-dir', 'shown',
                    '--cfg-options', 'default_hooks.visualization.score_thr=0'],
                   cwd=synthetic_workspace)
    assert f'Loaded checkpoint {ckpt_path} (weights only, strict)' in out
    assert re.search(r'Epoch\(test\) \[3/3\]\s+coco/bbox_mAP: ', out)
    test_run = max(p for p in work_dir.iterdir() if p.is_dir())  # latest timestamp
    metrics = json.loads((test_run / f'{test_run.name}.json').read_text())
    assert set(metrics) >= COCO_KEYS and 0 <= metrics['coco/bbox_mAP'] <= 1
    with open(preds, 'rb') as f:
        dumped = pickle.load(f)
    assert sorted(d['img_id'] for d in dumped) == list(range(1, NUM_VAL + 1))
    assert all(d['pred_instances']['bboxes'].shape == (10, 4) for d in dumped)
    shown = sorted(p.name for p in (test_run / 'shown').iterdir())
    assert shown == [Path(d['img_path']).name for d in sorted(dumped, key=lambda d: d['img_id'])]
    assert all(p.suffix == '.png' and p.stat().st_size > 0 for p in (test_run / 'shown').iterdir())
