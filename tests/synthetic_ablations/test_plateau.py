"""Training on to the plateau (projects.synthetic_ablations.plateau) in a real mmengine loop."""
from pathlib import Path

import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from projects.synthetic_ablations.plateau import PlateauExtensionHook


class _Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, inputs, mode='tensor'):
        out = self.linear(inputs if torch.is_tensor(inputs) else torch.stack(inputs))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else list(out)


class _Data(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(inputs=torch.tensor([float(index)]))


class _ScriptedAP(BaseMetric):
    """The AP of the k-th validation is ``aps[k]`` (the model is not looked at)."""

    def __init__(self, aps):
        super().__init__(prefix='coco')
        self.aps, self.calls = list(aps), 0

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        self.calls += 1
        return dict(bbox_mAP=self.aps[min(self.calls, len(self.aps)) - 1])


def _train(tmp_path, aps, max_iters=10, **hook_args):
    metric = _ScriptedAP(aps)
    hook = PlateauExtensionHook(**hook_args)
    loader = dict(dataset=_Data(), sampler=dict(type='InfiniteSampler', shuffle=False),
                  batch_size=2, collate_fn=dict(type='default_collate'))
    runner = Runner(model=_Toy(), work_dir=str(tmp_path), train_dataloader=loader,
                    val_dataloader=dict(loader, sampler=dict(type='DefaultSampler',
                                                             shuffle=False)),
                    val_evaluator=[metric], val_cfg=dict(),
                    train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=5),
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                    param_scheduler=dict(type='MultiStepLR', by_epoch=False, begin=0,
                                         end=max_iters, milestones=[5], gamma=0.1),
                    default_hooks=dict(checkpoint=None), custom_hooks=[hook],
                    default_scope='mmdeform')
    runner.train()
    return runner, hook


def test_a_settled_run_is_not_extended(tmp_path):
    runner, hook = _train(tmp_path / 'a', [0.300, 0.310])
    assert runner.iter == 10
    assert hook.summary() == dict(scheduled_iters=10, extra_iters=0, max_extra_fraction=0.3,
                                  held=True, gate='5: 30.0 -> 10: 31.0')


def test_a_rising_run_trains_on_until_the_gate_holds(tmp_path):
    # +5 AP at the end of the schedule, then +3, then +1: two extensions of one interval
    runner, hook = _train(tmp_path / 'b', [0.20, 0.25, 0.28, 0.29, 0.29], max_extra_fraction=1.0)
    assert runner.iter == 20 and hook.extra_iters == 10
    assert hook.summary()['held'] and hook.summary()['gate'] == '15: 28.0 -> 20: 29.0'
    assert [p['iter'] for p in hook.curve] == [5, 10, 15, 20]
    # trained on at the decayed rate: the step schedule's end lies behind it
    assert runner.optim_wrapper.get_lr()['lr'] == [pytest.approx(0.01)]


def test_the_extension_stops_at_its_budget(tmp_path):
    # never settles: at most 0.5 x 10 extra iterations, and the summary says it did not hold
    runner, hook = _train(tmp_path / 'c', [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], max_extra_fraction=0.5)
    assert runner.iter == 15 and hook.extra_iters == 5
    assert hook.summary()['held'] is False


def test_near_zero_ap_the_relative_bound_extends(tmp_path):
    # 2.0 -> 3.0 AP is within 1.5 points but 40 % of the level: one more interval; 3.0 -> 3.3
    # is 9.5 % of it: settled
    runner, hook = _train(tmp_path / 'd', [0.020, 0.030, 0.033], max_extra_fraction=1.0)
    assert runner.iter == 15 and hook.extra_iters == 5
    assert hook.summary()['held'] and hook.summary()['gate'] == '10: 3.0 -> 15: 3.3'
    # with the relative bound switched off the absolute one alone passes it at once
    runner, hook = _train(tmp_path / 'e', [0.020, 0.030], relative_tolerance=float('inf'))
    assert runner.iter == 10 and hook.extra_iters == 0


@pytest.mark.parametrize('kwargs', [dict(max_extra_fraction=-0.1), dict(tolerance=-1.0),
                                    dict(relative_tolerance=-0.1)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match='PlateauExtensionHook'):
        PlateauExtensionHook(**kwargs)


def test_report_says_which_runs_were_extended(tmp_path):
    from projects.synthetic_ablations import report
    curve = [dict(iter=10, AP=0.295, AP_S=0.1), dict(iter=20, AP=0.300, AP_S=0.1)]
    settled = dict(row='a', seed=0, iters=20, scheduled_iters=20, metrics=dict(
        AP=0.3, AP50=0.6, AP_S=0.1, AP_M=0.3, AP_L=-1.0), curve=curve, train_seconds=10.0,
        total_seconds=15.0, params=1, description=dict(levels='4'), decay_iter=None,
        extension=dict(scheduled_iters=20, extra_iters=0, max_extra_fraction=0.3,
                       held=True, gate=''))
    extended = dict(settled, seed=1, iters=30, curve=curve + [dict(iter=30, AP=0.301, AP_S=0.1)],
                    extension=dict(scheduled_iters=20, extra_iters=10,
                                   max_extra_fraction=0.3, held=True, gate=''))
    out, _ = report.write_report([settled, extended], dict(max_iters=20, batch_size=2,
                                                           seeds=[0, 1], synthetic_data={}),
                                 str(tmp_path / 'r.md'))
    text = Path(out).read_text()
    assert 'or 30 % more iterations were spent' in text and '1 of 2 runs were extended' in text
    assert '| a | 1 | 30.0 | 60.0 | 10.0 | 30.0 | n/a | 30 (+10) | 10: 29.5' in text
    assert '| a | 0 | 30.0 | 60.0 | 10.0 | 30.0 | n/a | 20 | 10: 29.5' in text


def test_a_result_from_before_the_hook_is_reused_only_if_it_settled(tmp_path):
    import json

    from projects.synthetic_ablations import runs
    config = str(runs.osp.join(runs.osp.dirname(runs.__file__), 'configs', 'ablations',
                               'deformable-detr_ss-k1_r18-half-frozen_1xb8-1500i_synthetic-256.py'))
    result_file = tmp_path / 'result.json'

    def write(aps, **extra):
        curve = [dict(iter=200 * (i + 1), AP=ap) for i, ap in enumerate(aps)]
        result_file.write_text(json.dumps(dict(config=runs.osp.abspath(config), seed=0,
                                               iters=2000, curve=curve, **extra)))
        return runs.reusable_result(str(result_file), config, 0, 2000)

    assert write([0.20, 0.21]) is not None  # settled: the hook would not have touched it
    assert write([0.18, 0.21]) is None  # +3 AP at the end: trained again, with the hook
    # written with the hook (trained on to 2200 and still failing): reused as it is
    assert write([0.18, 0.21], scheduled_iters=2000, extension=dict(held=False)) is not None
    assert runs.reusable_result(str(result_file), config, 0, 1000) is None  # another length
    # a run whose cfg_options replaced the hooks (a learning-rate sweep: no extension) is judged
    # by the hooks it ran with: unsettled, it is still the run asked for
    write([0.18, 0.21])
    assert runs.reusable_result(str(result_file), config, 0, 2000, custom_hooks=[]) is not None
    hook = [dict(type='PlateauExtensionHook')]
    assert runs.reusable_result(str(result_file), config, 0, 2000, custom_hooks=hook) is None
