"""Weights-only checkpoint loading: mmengine's metadata loads, anything else is refused,
and broken files are named as such."""
import os

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner import CheckpointLoader
from mmengine.runner.checkpoint import load_from_local

from mmdeform.fileio import CheckpointFormatError, CheckpointRefusedError, load_weights_only


class RunsCode:
    """Unpickling this object would create the file ``path`` (it could as well
    run any other command)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


class AsksGetattr:
    """Pickles as ``getattr(HistoryBuffer, name)``."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (getattr, (HistoryBuffer, self.name))


def mmengine_style_checkpoint(path):
    """What ``Runner.save_checkpoint`` writes, on a small scale: a message hub
    with HistoryBuffers of numpy scalars and numpy runtime info."""
    hub = MessageHub(f'checkpoint-test-{path.name}')
    for step in range(3):
        hub.update_scalar('train/loss', np.float32(1.5 - step))
        hub.update_scalar('train/grad_norm', np.float64(0.25 * step))
        hub.update_scalar('train/iter_count', np.int64(step))
    hub.update_info('eta', np.float64(12.5))
    hub.update_info('dataset_meta', dict(classes=('a', 'b')))
    linear = torch.nn.Linear(2, 3)
    torch.save(dict(meta=dict(epoch=1, iter=4, seed=0), state_dict=linear.state_dict(),
                    message_hub=hub.state_dict(),
                    optimizer=torch.optim.AdamW(linear.parameters()).state_dict()), path)
    return linear


def test_mmengine_metadata_loads_weights_only(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    linear = mmengine_style_checkpoint(path)
    # torch's defaults alone refuse it: the allow-list is what makes it load
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert {'mmengine.logging.history_buffer.HistoryBuffer', 'numpy.dtype',
            'builtins.getattr'} <= set(unsafe)
    checkpoint = load_weights_only(str(path))
    history = checkpoint['message_hub']['log_scalars']['train/loss']
    assert isinstance(history, HistoryBuffer)
    assert history.mean() == pytest.approx(0.5) and history.current() == pytest.approx(-0.5)
    assert checkpoint['message_hub']['runtime_info']['eta'] == 12.5
    assert torch.equal(checkpoint['state_dict']['weight'], linear.weight)
    restored = MessageHub('checkpoint-test-restored')
    restored.load_state_dict(checkpoint['message_hub'])
    assert restored.get_scalar('train/grad_norm').max() == pytest.approx(0.5)


def test_code_running_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'evil.pth'
    torch.save(dict(meta=dict(epoch=1), state_dict={}, payload=RunsCode(marker)), path)
    with pytest.raises(CheckpointRefusedError, match=r'refused to load checkpoint .*evil\.pth'
                       r'.*posix\.system.*arbitrary code'):
        load_weights_only(str(path))
    assert not marker.exists()


def test_refused_even_when_the_environment_asks_for_full_pickle(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'evil.pth'
    torch.save(dict(payload=RunsCode(marker)), path)
    with pytest.raises(CheckpointRefusedError):
        load_weights_only(str(path))
    assert not marker.exists()


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    allowed = tmp_path / 'allowed.pth'
    torch.save(dict(method=AsksGetattr('mean')), allowed)
    assert load_weights_only(str(allowed))['method'] is HistoryBuffer.mean
    for name in ('update', '__init__', '__class__'):
        path = tmp_path / f'{name}.pth'
        torch.save(dict(method=AsksGetattr(name)), path)
        with pytest.raises(CheckpointRefusedError, match=rf"getattr\(.*HistoryBuffer.*'{name}'"):
            load_weights_only(str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing.pth does not exist'):
        load_weights_only(str(tmp_path / 'nothing.pth'))


def test_import_changes_no_global_loader():
    """Importing mmdeform.engine leaves mmengine's loader of local paths and
    torch's allow-list as they were: the safe loader is used explicitly."""
    import mmdeform.engine  # noqa: F401
    assert CheckpointLoader._schemes[''] is load_from_local
    assert HistoryBuffer not in torch.serialization.get_safe_globals()


def test_empty_file_is_named(tmp_path):
    path = tmp_path / 'empty.pth'
    path.write_bytes(b'')
    with pytest.raises(CheckpointFormatError, match=r'checkpoint .*empty\.pth is empty'):
        load_weights_only(str(path))


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / 'noise.pth'
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointFormatError, match=r'noise\.pth is not a checkpoint') as info:
        load_weights_only(str(path))
    assert 'arbitrary code' not in str(info.value)


def test_truncated_checkpoint_is_incomplete(tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save(dict(state_dict=dict(w=torch.zeros(1000))), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointFormatError, match=r'cut\.pth is incomplete'):
        load_weights_only(str(path))
