"""Command line -> config: mmdeform.engine.launch, and the COCO base configs it reads."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmdeform.datasets import make_synthetic_coco
from mmdeform.engine import launch
from mmdeform.engine.cpu_distributed import init_distributed
from mmdeform.registry import DATASETS
from tools.launch_args import parse_test_args, parse_train_args

REPO = Path(__file__).resolve().parents[2]
REAL = str(REPO / 'configs' / 'deformable_detr' / 'deformable-detr_r50_16xb2-50e_coco.py')


@pytest.fixture
def train_cfg(tiny_config):
    """The training config of the tiny config with a command line's arguments."""
    return lambda *argv: launch.build_train_cfg(parse_train_args([tiny_config, *argv]))


def test_work_dir_default_explicit_and_from_config(train_cfg):
    assert train_cfg().work_dir == './work_dirs/deformable-detr_tiny_synthetic'
    assert train_cfg('--work-dir', '/tmp/x').work_dir == '/tmp/x'
    assert train_cfg('--cfg-options', 'work_dir=/tmp/y').work_dir == '/tmp/y'


def test_resume_forms(train_cfg, tmp_path):
    work = ('--work-dir', str(tmp_path))
    cfg = train_cfg(*work)
    assert cfg.resume is False and cfg.load_from is None
    # nothing to resume: the bare flag is an error, 'auto' trains from scratch
    with pytest.raises(FileNotFoundError, match=r'--resume: no checkpoint to resume from in '
                       rf'{tmp_path} .*--resume auto'):
        train_cfg(*work, '--resume')
    cfg = train_cfg(*work, '--resume', 'auto')
    assert cfg.resume is False and cfg.load_from is None
    # both take the checkpoint named by last_checkpoint
    ckpt = tmp_path / 'epoch_3.pth'
    ckpt.write_bytes(b'x')
    (tmp_path / 'last_checkpoint').write_text(str(ckpt))
    for argv in (('--resume',), ('--resume', 'auto')):
        cfg = train_cfg(*work, *argv)
        assert cfg.resume is True and cfg.load_from == str(ckpt)
    cfg = train_cfg(*work, '--resume', str(ckpt))
    assert cfg.resume is True and cfg.load_from == str(ckpt)
    with pytest.raises(FileNotFoundError, match='--resume: checkpoint a/epoch_9.pth does not'):
        train_cfg(*work, '--resume', 'a/epoch_9.pth')
    ckpt.unlink()
    with pytest.raises(FileNotFoundError, match=r'last_checkpoint names the checkpoint '
                       r'.*epoch_3\.pth.*does not exist'):
        train_cfg(*work, '--resume')


def test_amp_auto_scale_lr_and_cfg_options(train_cfg):
    cfg = train_cfg('--amp', '--auto-scale-lr', '--cfg-options', 'train_dataloader.batch_size=4',
                    'optim_wrapper.optimizer.lr=0.001')
    assert cfg.optim_wrapper.type == 'DeviceAmpOptimWrapper'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['backbone'].lr_mult == 0.1
    assert cfg.auto_scale_lr == dict(base_batch_size=32, enable=True)
    assert cfg.train_dataloader.batch_size == 4 and cfg.optim_wrapper.optimizer.lr == 0.001
    assert train_cfg().optim_wrapper.type == 'OptimWrapper'
    with pytest.raises(ValueError, match="--amp can only turn 'OptimWrapper'"):
        train_cfg('--amp', '--cfg-options', 'optim_wrapper.type=ApexOptimWrapper')
    with pytest.raises(ValueError, match='--auto-scale-lr: .* has no auto_scale_lr'):
        train_cfg('--auto-scale-lr', '--cfg-options', 'auto_scale_lr=None')


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU-only distributed settings')
def test_cpu_distributed_settings(train_cfg):
    cfg = train_cfg()
    assert cfg.env_cfg.dist_cfg.backend == 'nccl' and 'model_wrapper_cfg' not in cfg
    cfg = train_cfg('--launcher', 'pytorch')
    assert cfg.launcher == 'pytorch' and cfg.env_cfg.dist_cfg.backend == 'gloo'
    wrapper = cfg.model_wrapper_cfg
    assert wrapper.type == 'MMDistributedDataParallel' and wrapper.device_ids is None
    assert wrapper.find_unused_parameters is False
    assert wrapper.get('forward_sync_buffers', wrapper.get('broadcast_buffers')) is False
    cfg = train_cfg('--launcher', 'slurm', '--cfg-options', 'find_unused_parameters=True',
                    'env_cfg.dist_cfg.timeout=60')
    assert cfg.model_wrapper_cfg.find_unused_parameters is True
    assert cfg.env_cfg.dist_cfg == dict(backend='gloo', timeout=60)
    init_distributed(train_cfg())  # no launcher: nothing to start
    assert not torch.distributed.is_initialized()


def test_test_cfg_out_and_show_dir(tiny_config):
    args = parse_test_args([tiny_config, 'w/epoch_2.pth', '--out', 'r/preds.pkl',
                                   '--show-dir', 'vis'])
    cfg = launch.build_test_cfg(args)
    assert cfg.load_from == 'w/epoch_2.pth'
    assert [e['type'] for e in cfg.test_evaluator] == ['CocoMetric', 'DumpResults']
    assert cfg.test_evaluator[1].out_file_path == 'r/preds.pkl'
    assert cfg.default_hooks.visualization == dict(type='DetVisualizationHook', draw=True,
                                                   test_out_dir='vis')
    plain = launch.build_test_cfg(parse_test_args([tiny_config, 'c.pth']))
    assert plain.test_evaluator.type == 'CocoMetric'
    assert plain.default_hooks.visualization.draw is False
    with pytest.raises(ValueError, match='--out must be a .pkl or .pickle file, got r.json'):
        launch.build_test_cfg(parse_test_args([tiny_config, 'c.pth', '--out', 'r.json']))


def test_missing_config_is_named():
    with pytest.raises(FileNotFoundError, match='config file nothing.py does not exist'):
        launch.build_train_cfg(parse_train_args(['nothing.py']))


def test_paper_schedule_and_data_settings():
    cfg = Config.fromfile(REAL)
    assert cfg.default_scope == 'mmdeform'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=2e-4, weight_decay=1e-4)
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.1, norm_type=2)
    assert cfg.train_cfg == dict(type='EpochBasedTrainLoop', max_epochs=50, val_interval=1)
    (scheduler,) = cfg.param_scheduler
    assert scheduler.type == 'MultiStepLR' and scheduler.milestones == [40]
    assert scheduler.gamma == 0.1 and scheduler.by_epoch
    assert cfg.auto_scale_lr == dict(base_batch_size=32, enable=False)
    loader = cfg.train_dataloader
    assert loader.batch_size == 2 and loader.sampler == dict(type='DefaultSampler', shuffle=True)
    assert loader.collate_fn.type == 'pseudo_collate'
    assert loader.dataset.ann_file == 'annotations/instances_train2017.json'
    assert cfg.test_dataloader.dataset.ann_file == 'annotations/instances_val2017.json'
    assert cfg.test_evaluator.ann_file == 'data/coco/annotations/instances_val2017.json'
    assert cfg.val_dataloader.sampler.shuffle is False


def test_paper_pipelines_run_on_images(tmp_path):
    """The real train and test pipelines, on synthetic images (no COCO needed)."""
    make_synthetic_coco(str(tmp_path), num_train=2, num_val=1, image_size=96, progress=False)
    cfg = Config.fromfile(REAL)
    with DefaultScope.overwrite_default_scope('mmdeform'):
        for loader, split in ((cfg.train_dataloader, 'train'), (cfg.test_dataloader, 'val')):
            dataset_cfg = dict(loader.dataset, data_root=str(tmp_path), ann_file=f'{split}.json',
                               data_prefix=dict(img_path=f'{split}/'),
                               metainfo=dict(classes=('circle', 'square', 'triangle', 'cross')))
            item = DATASETS.build(dataset_cfg)[0]
            height, width = item['inputs'].shape[1:]
            if split == 'train':  # shorter side one of 480..800 (crop branch included)
                assert min(height, width) in range(480, 801, 32)
            else:
                assert (height, width) == (800, 800)
            assert item['data_samples'].gt_instances.bboxes.shape[1] == 4
