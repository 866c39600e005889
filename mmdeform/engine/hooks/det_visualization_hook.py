"""``DetVisualizationHook``: write test images with their predicted boxes."""
import os.path as osp
from typing import Optional, Sequence

import mmcv
import numpy as np
from mmengine.fileio import get
from mmengine.hooks import Hook
from mmengine.visualization import Visualizer

from mmdeform.registry import HOOKS
from mmdeform.structures import DetDataSample


@HOOKS.register_module()
class DetVisualizationHook(Hook):
    """Draw each test image's detections and save it as an image file.

    Off by default (``draw=False``); ``tools/test.py --show-dir DIR`` turns it
    on. For every test image, the predicted boxes with score >=
    ``score_thr`` are drawn on the original image (``img_path``) with
    ``"<class name> <score>"`` labels, using the runner's
    :class:`~mmengine.visualization.Visualizer`, and written to
    ``<work_dir>/<timestamp>/<test_out_dir>/<image file name>`` (as
    MMDetection does; an absolute ``test_out_dir`` is used as is).

    Args:
        draw (bool): Whether to draw at all.
        score_thr (float): Smallest score of a drawn box.
        test_out_dir (str): Output folder (see above).
        box_color (tuple[int]): RGB colour of boxes and label text.
        backend_args (dict, optional): mmengine file backend arguments for
            reading the images.
    """

    priority = 'NORMAL'

    def __init__(self, draw: bool = False, score_thr: float = 0.3,
                 test_out_dir: str = 'show', box_color: tuple = (255, 64, 64),
                 backend_args: Optional[dict] = None) -> None:
        if not 0 <= score_thr <= 1:
            raise ValueError(f'DetVisualizationHook: score_thr must be in [0, 1], got {score_thr}')
        self.draw = draw
        self.score_thr = score_thr
        self.test_out_dir = test_out_dir
        self.box_color = tuple(box_color)
        self.backend_args = backend_args

    def after_test_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                        outputs: Optional[Sequence[DetDataSample]] = None) -> None:
        """Draw and save every image of the batch (when ``draw``)."""
        if not self.draw or not outputs:
            return
        out_dir = osp.join(runner.work_dir, runner.timestamp, self.test_out_dir)
        visualizer = Visualizer.get_current_instance()
        classes = (visualizer.dataset_meta or {}).get('classes')
        for data_sample in outputs:
            img_path = data_sample.metainfo['img_path']
            img_bgr = mmcv.imfrombytes(get(img_path, backend_args=self.backend_args))
            drawn_rgb = self.draw_predictions(visualizer, img_bgr[..., ::-1], data_sample,
                                              classes)
            mmcv.imwrite(drawn_rgb[..., ::-1], osp.join(out_dir, osp.basename(img_path)))

    def draw_predictions(self, visualizer: Visualizer, img_rgb: np.ndarray,
                         data_sample: DetDataSample,
                         classes: Optional[Sequence[str]]) -> np.ndarray:
        """Draw the boxes of ``data_sample.pred_instances`` above ``score_thr``.

        Args:
            visualizer (Visualizer): Drawing canvas.
            img_rgb (np.ndarray): (H, W, 3) uint8 original image, RGB.
            data_sample (DetDataSample): ``pred_instances`` with ``bboxes``
                (k, 4) absolute xyxy in original image pixels, ``scores``
                (k,) and ``labels`` (k,).
            classes (Sequence[str], optional): Class names by label.

        Returns:
            np.ndarray: (H, W, 3) uint8 RGB image with the drawings.
        """
        visualizer.set_image(np.ascontiguousarray(img_rgb))
        pred = data_sample.pred_instances
        keep = pred.scores >= self.score_thr
        height, width = img_rgb.shape[:2]
        boxes_xyxy = pred.bboxes[keep].detach().cpu().numpy().reshape(-1, 4)
        boxes_xyxy = boxes_xyxy.clip(0, [width - 1, height - 1, width - 1, height - 1])
        if len(boxes_xyxy):
            scores = pred.scores[keep].tolist()
            labels = pred.labels[keep].tolist()
            names = [classes[label] if classes else f'class {label}' for label in labels]
            visualizer.draw_bboxes(boxes_xyxy, edge_colors=self.box_color, line_widths=2)
            visualizer.draw_texts([f'{name} {score:.2f}' for name, score in zip(names, scores)],
                                  positions=boxes_xyxy[:, :2], colors=self.box_color,
                                  font_sizes=8)
        return visualizer.get_image()
