"""--cfg-options: only existing keys (or new ones under a known parent), clear
messages for malformed pairs, and hook types checked by name."""
import argparse
import re

import pytest
from mmengine.config import Config

from mmdeform.engine import CfgOptionsAction, apply_cfg_options, check_hook_types, launch
from tools.launch_args import parse_test_args, parse_train_args

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
