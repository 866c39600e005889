"""--cfg-options: existing keys, new ones that the parent's registered type takes
(or, under a dict without a type, that are no typo of a sibling), clear messages
for malformed pairs, and hook types checked by name."""
import argparse
import re
from pathlib import Path

import pytest
from mmengine.config import Config

from mmdeform.engine import CfgOptionsAction, apply_cfg_options, check_hook_types, launch
from mmdeform.engine.registered_args import constructor_arguments, passes_kwargs_to_base
from tools.launch_args import parse_test_args, parse_train_args

REPO = Path(__file__).resolve().parents[2]

CFG = dict(
    optim_wrapper=dict(optimizer=dict(type='AdamW', lr=2e-4)),
    model=dict(type='M', bbox_head=dict(num_classes=80), backbone=dict(depth=50)),
    param_scheduler=[dict(type='MultiStepLR', end=50)],
    default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)))


def apply(*pairs):
    cfg = Config(CFG)
    return apply_cfg_options(cfg, parse('--cfg-options', *pairs).cfg_options)


def parse(*argv):
    parser = argparse.ArgumentParser(prog='tool')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default={})
    return parser.parse_args(argv)


def test_existing_keys_and_new_keys_under_known_parents():
    cfg = apply('optim_wrapper.optimizer.lr=1e-9', 'param_scheduler.0.end=3',
                'model.backbone.frozen_stages=1', 'randomness.seed=3')
    assert cfg.optim_wrapper.optimizer.lr == 1e-9 and cfg.param_scheduler[0].end == 3
    assert cfg.model.backbone.frozen_stages == 1  # new key in an existing dict
    assert cfg.randomness.seed == 3  # a Runner argument the config leaves unset


@pytest.mark.parametrize('pair, message', [
    ('optim_wraper.optimizer.lr=1e-9', r"no 'optim_wraper'; did you mean 'optim_wrapper'\?"),
    ('model.bbox_head.num_clases=5',
     r"no 'model.bbox_head.num_clases'; did you mean 'model.bbox_head.num_classes'\?"),
    ('model.neck.out_channels=5', r"no 'model.neck'; keys at model: \['backbone', 'bbox_head'"),
    ('param_scheduler.3.end=1', r"'param_scheduler' is a list of 1 items; '3' is not an index"),
    ('model.backbone.depth.x=1', r"'model.backbone.depth' is a int, not a dict"),
])
def test_unknown_keys_name_the_closest(pair, message):
    with pytest.raises(KeyError, match=message):
        apply(pair)


@pytest.mark.parametrize('pair, message', [
    ('key', r"--cfg-options 'key': expected KEY=VALUE .*'key' has no \"=\""),
    ('=5', r"--cfg-options '=5': the key before \"=\" is empty"),
    ('a..b=1', r"the key before \"=\" is empty or has an empty part"),
])
def test_malformed_pairs_get_a_usage_message(pair, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse('--cfg-options', pair)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_misspelled_hook_type_names_the_hook():
    cfg = Config(CFG)
    check_hook_types(cfg)
    cfg.default_hooks.checkpoint.type = 'CheckpoinHook'
    with pytest.raises(KeyError, match=r"default_hooks.checkpoint: hook type 'CheckpoinHook' "
                       r"is not registered; did you mean 'CheckpointHook'\?"):
        check_hook_types(cfg)
    cfg = Config(dict(custom_hooks=[dict(type='EMAHook'), dict(type='DetVisualisationHook')]))
    with pytest.raises(KeyError, match=r"custom_hooks.1: hook type 'DetVisualisationHook'.*"
                       r"'DetVisualizationHook'"):
        check_hook_types(cfg)


def test_tools_check_options_and_hooks(tmp_path):
    """tools/train.py and tools/test.py go through the same checks."""
    config = tmp_path / 'cfg.py'
    config.write_text('default_scope = "mmdeform"\n'
                      'optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.1))\n'
                      'default_hooks = dict(logger=dict(type="LoggerHook"))\n')
    with pytest.raises(KeyError, match="did you mean 'optim_wrapper'"):
        launch.build_train_cfg(parse_train_args(
            [str(config), '--cfg-options', 'optim_wraper.optimizer.lr=1e-9']))
    with pytest.raises(KeyError, match="default_hooks.logger: hook type 'LogerHook'"):
        launch.build_test_cfg(parse_test_args(
            [str(config), 'x.pth', '--cfg-options', 'default_hooks.logger.type=LogerHook']))


BASE = str(REPO / 'configs' / 'deformable_detr' / 'deformable-detr_r50_16xb2-50e_coco.py')


def train_cfg(*argv):
    return launch.build_train_cfg(parse_train_args([BASE, *argv]))


def test_mmdetection_idioms_take_constructor_arguments():
    """New keys under a ``type`` that the registered class takes, as the rest of
    the command line leaves the type (``--amp`` first)."""
    cfg = train_cfg('--amp', '--cfg-options', 'optim_wrapper.dtype=bfloat16',
                    'model.backbone.init_cfg.prefix=backbone.',
                    'model.backbone.norm_eval=False',  # ResNet's default, not in the config
                    'optim_wrapper.optimizer.betas=[0.9,0.99]',
                    'default_hooks.checkpoint.save_best=auto',
                    'default_hooks.logger.priority=BELOW_NORMAL',
                    'param_scheduler.0.convert_to_iter_based=True',
                    'train_cfg.val_begin=5')
    assert cfg.optim_wrapper.type == 'DeviceAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
    assert cfg.model.backbone.norm_eval is False and cfg.train_cfg.val_begin == 5
    # the type may come from --cfg-options too
    cfg = train_cfg('--cfg-options', 'optim_wrapper.type=DeviceAmpOptimWrapper',
                    'optim_wrapper.loss_scale=512')
    assert cfg.optim_wrapper.loss_scale == 512


@pytest.mark.parametrize('argv, message', [
    # OptimWrapper (no --amp) has no dtype
    (['--cfg-options', 'optim_wrapper.dtype=bfloat16'],
     r"no 'optim_wrapper.dtype' and optim_wrapper's type OptimWrapper takes no argument "
     r"'dtype'; .*OptimWrapper takes \['accumulative_counts', 'constructor'\]"),
    (['--amp', '--cfg-options', 'optim_wrapper.dtpye=bfloat16'],
     r"DeviceAmpOptimWrapper takes no argument 'dtpye'; did you mean 'optim_wrapper.dtype'\?"
     r".*'loss_scale'"),
    (['--cfg-options', 'model.backbone.init_cfg.prefx=backbone.'],
     r"PretrainedInit takes no argument 'prefx'; did you mean "
     r"'model.backbone.init_cfg.prefix'\? PretrainedInit takes \['map_location', "
     r"'prefix'\]"),
    (['--cfg-options', 'model.backbone.norm_evl=True'],
     r"did you mean 'model.backbone.norm_eval'\?.*'norm_cfg', 'norm_eval'"),
    (['--cfg-options', 'model.bbox_head.loss_cls.use_sigmoid=True'],
     r"FocalLoss takes no argument 'use_sigmoid'"),
])
def test_typos_under_a_type_name_the_closest_and_the_arguments(argv, message):
    with pytest.raises(KeyError, match=message):
        train_cfg(*argv)


class _Base:
    def __init__(self, depth, init_cfg=None):
        pass


class _PassesKwargsOn(_Base):
    def __init__(self, width=1, **kwargs):
        super().__init__(**kwargs)


class _KeepsKwargs(_Base):
    def __init__(self, width=1, **kwargs):
        super().__init__(depth=1)
        self.extra = kwargs


def test_kwargs_are_followed_only_where_passed_on():
    assert constructor_arguments(_PassesKwargsOn) == {'width', 'depth', 'init_cfg'}
    assert constructor_arguments(_KeepsKwargs) == {'width'}  # **kwargs alone accepts nothing
    assert constructor_arguments(lambda a, *, b=1, **kw: None) == {'a', 'b'}
    assert passes_kwargs_to_base(_PassesKwargsOn.__init__, 'kwargs')
    assert not passes_kwargs_to_base(_KeepsKwargs.__init__, 'kwargs')
