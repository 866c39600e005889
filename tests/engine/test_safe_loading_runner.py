"""SafeLoadingRunner and checked weight loading: resume needs the same model,
load_from is strict unless partial loading is asked for."""
import pytest
import torch
from toy_runner import ToyModel, build_toy_runner

from mmdeform.engine import AtomicCheckpointHook, CheckpointMismatchError, load_model_weights


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A work dir holding iter_2.pth of ToyModel(payload_size=16)."""
    work_dir = tmp_path_factory.mktemp('trained')
    runner = build_toy_runner(str(work_dir), 2, 'trained')
    assert any(isinstance(h, AtomicCheckpointHook) for h in runner.hooks)  # 'CheckpointHook'
    runner.train()
    return work_dir


def test_resume_with_another_model_names_the_first_mismatching_parameter(trained, tmp_path):
    runner = build_toy_runner(str(trained), 4, 'other_model', out_features=3, resume=True)
    with pytest.raises(CheckpointMismatchError,
                       match=r'iter_2\.pth does not fit the model: first mismatching parameter: '
                       r'linear\.weight has shape \(1, 2\) in the checkpoint, \(3, 2\) in the '
                       r'model.*--resume needs the model that wrote the checkpoint'):
        runner.train()


def test_resume_with_the_same_model_continues(trained):
    runner = build_toy_runner(str(trained), 3, 'same_model', resume=True, max_keep_ckpts=-1)
    runner.train()
    assert runner.iter == 3


def test_load_from_is_strict_unless_partial(trained, tmp_path):
    ckpt = str(trained / 'iter_2.pth')
    runner = build_toy_runner(str(tmp_path / 'a'), 1, 'strict', payload_size=8, load_from=ckpt)
    with pytest.raises(CheckpointMismatchError, match=r'first mismatching parameter: payload '
                       r'has shape \(16,\).*\(8,\).*--partial-load'):
        runner.train()
    runner = build_toy_runner(str(tmp_path / 'b'), 1, 'partial', payload_size=8, load_from=ckpt)
    runner.strict_load = False
    runner.train()  # payload skipped with a warning, linear loaded
    assert runner.iter == 1


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = tmp_path / 'other.pth'
    state = ToyModel().state_dict()
    state['extra.weight'] = state.pop('payload')
    torch.save(dict(state_dict=state), path)
    model = ToyModel()
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys \(in the model, not in "
                       r"the checkpoint\): \['payload'\]; 1 unexpected keys .*\['extra.weight'\]"):
        load_model_weights(model, str(path))
    before = model.payload.detach().clone()
    load_model_weights(model, str(path), strict=False)
    assert torch.equal(model.linear.weight, state['linear.weight'])
    assert torch.equal(model.payload, before)
