"""Training curves from mmengine's scalar log."""
import json

import cv2
import pytest

from mmdeform.visualization import load_scalars, plot_curves


def write_scalars(path, records):
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_plot_curves(tmp_path):
    records = [dict(loss=3.0 - 0.1 * i, loss_cls=1.0, lr=1e-3, step=i + 1) for i in range(10)]
    records.insert(5, {'coco/bbox_mAP': 0.2, 'coco/bbox_mAP_50': 0.4, 'step': 5})
    records.append({'coco/bbox_mAP': 0.5, 'coco/bbox_mAP_50': 0.7, 'step': 10})
    write_scalars(tmp_path / 'scalars.json', records)
    train, val = load_scalars(str(tmp_path / 'scalars.json'))
    assert len(train) == 10 and [r['step'] for r in val] == [5, 10]
    counts = plot_curves(str(tmp_path / 'scalars.json'), str(tmp_path / 'out' / 'c.png'))
    assert counts == {'loss': 10, 'loss_cls': 10, 'coco/bbox_mAP': 2, 'coco/bbox_mAP_50': 2}
    image = cv2.imread(str(tmp_path / 'out' / 'c.png'))
    assert image is not None and image.shape[2] == 3


def test_plot_curves_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no scalar log'):
        load_scalars(str(tmp_path / 'missing.json'))
    (tmp_path / 'bad.json').write_text('{"loss": 1.0, "step": 1}\nnot json\n')
    with pytest.raises(ValueError, match='bad.json:2'):
        load_scalars(str(tmp_path / 'bad.json'))
    write_scalars(tmp_path / 'other.json', [dict(lr=0.1, step=1)])
    with pytest.raises(ValueError, match='none of the keys'):
        plot_curves(str(tmp_path / 'other.json'), str(tmp_path / 'x.png'))
