"""DetVisualizationHook draws boxes above the score threshold and writes one file per image."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData
from mmengine.visualization import Visualizer

from mmdeform.engine import DetVisualizationHook
from mmdeform.structures import DetDataSample


def predicted_sample(img_path):
    sample = DetDataSample(metainfo=dict(img_path=str(img_path)))
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[10., 10., 40., 30.], [50., 45., 70., 60.], [60., 5., 200., 20.]]),
        scores=torch.tensor([0.9, 0.1, 0.5]),
        labels=torch.tensor([1, 0, 2]))
    return sample


@pytest.fixture
def visualizer():
    vis = Visualizer.get_instance(f'det-vis-test-{id(object())}')
    vis.dataset_meta = dict(classes=('circle', 'square', 'triangle'))
    return vis


def changed(before, after, x1, y1, x2, y2):
    return bool((before[y1:y2, x1:x2] != after[y1:y2, x1:x2]).any())


def test_only_boxes_above_the_threshold_are_drawn(visualizer):
    img = np.full((80, 96, 3), 128, np.uint8)
    hook = DetVisualizationHook(draw=True, score_thr=0.3)
    drawn = hook.draw_predictions(visualizer, img, predicted_sample('a.png'),
                                  visualizer.dataset_meta['classes'])
    assert drawn.shape == img.shape and drawn.dtype == np.uint8
    assert changed(img, drawn, 8, 8, 13, 32)  # left edge of the 0.9 box
    assert not changed(img, drawn, 48, 43, 72, 62)  # the 0.1 box: below the threshold
    assert changed(img, drawn, 93, 3, 96, 22)  # the 0.5 box, clipped to the image
    assert not changed(img, drawn, 20, 60, 45, 80)  # nothing elsewhere


def test_after_test_iter_writes_images(tmp_path, visualizer):
    img_path = tmp_path / 'img' / '000007.jpg'
    img_path.parent.mkdir()
    cv2.imwrite(str(img_path), np.zeros((80, 96, 3), np.uint8))
    runner = SimpleNamespace(work_dir=str(tmp_path / 'work'), timestamp='20260101_000000')
    DetVisualizationHook(draw=False).after_test_iter(runner, 0, None,
                                                     [predicted_sample(img_path)])
    assert not (tmp_path / 'work').exists()
    DetVisualizationHook(draw=True, test_out_dir='shown').after_test_iter(
        runner, 0, None, [predicted_sample(img_path)])
    out = tmp_path / 'work' / '20260101_000000' / 'shown' / '000007.jpg'
    written = cv2.imread(str(out))
    assert written.shape == (80, 96, 3) and written.max() > 0


def test_bad_threshold():
    with pytest.raises(ValueError, match=r'score_thr must be in \[0, 1\], got 1.5'):
        DetVisualizationHook(score_thr=1.5)
