"""prepare_synthetic_data: generate the synthetic dataset once, reuse it, never overwrite
foreign annotations."""
import json

import pytest

from mmdeform.datasets.synthetic import prepare_synthetic_data

TINY_DATA = dict(num_train=8, num_val=4, image_size=64)


def test_prepare_data_reuses_matching_data(tmp_path):
    args = dict(TINY_DATA, num_val=2, seed=3)
    assert prepare_synthetic_data(str(tmp_path), args, progress=False) is True
    stamp = (tmp_path / 'val.json').stat().st_mtime_ns
    assert prepare_synthetic_data(str(tmp_path), args, progress=False) is False
    assert (tmp_path / 'val.json').stat().st_mtime_ns == stamp
    # different arguments regenerate
    assert prepare_synthetic_data(str(tmp_path), dict(args, num_val=3), progress=False) is True
    assert len(json.loads((tmp_path / 'val.json').read_text())['images']) == 3


def test_prepare_data_keeps_foreign_annotations(tmp_path):
    foreign = json.dumps(dict(info=dict(description='my data'), images=[], categories=[]))
    (tmp_path / 'val.json').write_text(foreign)
    with pytest.raises(FileExistsError, match='val.json'):
        prepare_synthetic_data(str(tmp_path), dict(TINY_DATA, num_val=2), progress=False)
    assert (tmp_path / 'val.json').read_text() == foreign
