"""The 50-epoch schedule's lr multipliers hit exactly the intended parameters.

``paramwise_cfg.custom_keys`` matches by substring of the full parameter name;
this checks what that catches in each real (ResNet-50) config.
"""
import re
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from mmdeform.registry import MODELS

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'deformable_detr'
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob('*.py'))
BASE_LR, SLOW_LR = 2e-4, 2e-5


def lr_of_trainable_params(name):
    cfg = Config.fromfile(CONFIG_DIR / name)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    group_of = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    # mmengine leaves frozen parameters out of the optimizer
    assert {id(p) for p in model.parameters() if p.requires_grad} == set(group_of)
    for group in wrapper.optimizer.param_groups:
        assert group['weight_decay'] == 1e-4
    return {n: group_of[id(p)]['lr'] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize('name', CONFIGS)
def test_slow_parameters_are_backbone_sampling_offsets_and_reference_points(name):
    lrs = lr_of_trainable_params(name)
    slow = sorted(n for n, lr in lrs.items() if lr == pytest.approx(SLOW_LR))

    backbone = [n for n in slow if n.startswith('backbone.')]
    offsets = [n for n in slow if not n.startswith('backbone.') and 'sampling_offsets' in n]
    references = [n for n in slow if 'reference_points' in n]
    assert sorted(backbone + offsets + references) == slow, 'something else is slowed down'
    assert backbone == sorted(n for n in lrs if n.startswith('backbone.'))
    expected_offsets = [f'{stage}.layers.{i}.{attn}.sampling_offsets.{kind}'
                        for stage, attn in (('decoder', 'cross_attn'), ('encoder', 'self_attn'))
                        for i in range(6) for kind in ('bias', 'weight')]
    assert offsets == sorted(expected_offsets)
    if 'twostage' in name:  # proposals replace the learned reference points
        assert references == []
    else:
        assert references == ['query_generator.reference_points.bias',
                              'query_generator.reference_points.weight']
    # everything else, the transformer's other projections included, learns at the base lr
    fast = [n for n, lr in lrs.items() if lr == pytest.approx(BASE_LR)]
    assert len(fast) + len(slow) == len(lrs), 'a parameter has neither lr'
    assert not [n for n in fast if re.search(r'sampling_offsets|reference_points|^backbone', n)]
    assert 'encoder.layers.0.self_attn.attention_weights.weight' in fast
    assert 'decoder.layers.5.cross_attn.value_proj.weight' in fast
