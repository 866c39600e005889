"""Look at what the model is fed: dataset samples after the pipeline, with their boxes."""
import os.path as osp
from typing import List, Optional, Sequence

import mmcv
import numpy as np
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.visualization import Visualizer

from mmdeform.registry import DATASETS

PHASES = ('train', 'val', 'test')


def draw_gt_boxes(visualizer: Visualizer, img_rgb: np.ndarray, boxes_xyxy: np.ndarray,
                  labels: Sequence[int], classes: Optional[Sequence[str]],
                  color: tuple = (64, 255, 64)) -> np.ndarray:
    """Draw ground-truth boxes with their class names.

    Args:
        visualizer (Visualizer): Drawing canvas.
        img_rgb (np.ndarray): (H, W, 3) uint8 RGB image.
        boxes_xyxy (np.ndarray): (n, 4) absolute xyxy pixels of ``img_rgb``.
        labels (Sequence[int]): (n,) class indices.
        classes (Sequence[str], optional): Class names by label.
        color (tuple): RGB colour of boxes and text.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB image with the drawings.
    """
    visualizer.set_image(np.ascontiguousarray(img_rgb))
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    if len(boxes_xyxy):
        names = [classes[label] if classes else f'class {label}' for label in labels]
        visualizer.draw_bboxes(boxes_xyxy, edge_colors=color, line_widths=2)
        visualizer.draw_texts(names, positions=boxes_xyxy[:, :2], colors=color, font_sizes=8)
    return visualizer.get_image()


def build_phase_dataset(cfg: Config, phase: str):
    """The dataset of ``<phase>_dataloader`` with its pipeline."""
    if phase not in PHASES:
        raise ValueError(f'phase must be one of {PHASES}, got {phase!r}')
    key = f'{phase}_dataloader'
    if key not in cfg or 'dataset' not in cfg[key]:
        raise KeyError(f'the config has no {key}.dataset')
    init_default_scope(cfg.get('default_scope', 'mmdeform'))
    return DATASETS.build(cfg[key].dataset)


def browse_dataset(cfg: Config, output_dir: str, num: int = 10,
                   phase: str = 'train') -> List[str]:
    """Write the first ``num`` samples of a dataset, after its pipeline, with
    their ground-truth boxes.

    Each image is the packed ``inputs`` (3, H, W) uint8 in its channel order
    (BGR from ``LoadImageFromFile``), i.e. resized, flipped, cropped as the model sees
    it (before normalization and batch padding); boxes are the packed
    ``gt_instances``. Files are ``<output_dir>/<index>_<image name>.png``.

    Args:
        cfg (Config): A config with ``<phase>_dataloader.dataset``.
        output_dir (str): Folder for the images (created).
        num (int): How many samples (at most the dataset's length).
        phase (str): ``'train'``, ``'val'`` or ``'test'``.

    Returns:
        list[str]: The written files.
    """
    if num < 1:
        raise ValueError(f'browse_dataset: num must be >= 1, got {num}')
    dataset = build_phase_dataset(cfg, phase)
    classes = dataset.metainfo.get('classes')
    visualizer = Visualizer.get_instance('mmdeform_browse_dataset')
    written = []
    for index in range(min(num, len(dataset))):
        item = dataset[index]
        inputs, sample = item['inputs'], item['data_samples']
        if inputs.dtype.is_floating_point:
            raise ValueError('browse_dataset: the pipeline packs float images; drawing needs '
                             'the uint8 image (remove the float conversion to browse)')
        img_bgr = inputs.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
        gt = sample.gt_instances
        drawn_rgb = draw_gt_boxes(visualizer, img_bgr[..., ::-1], gt.bboxes.numpy(),
                                  gt.labels.tolist(), classes)
        name = osp.splitext(osp.basename(sample.metainfo.get('img_path', 'image')))[0]
        out_file = osp.join(output_dir, f'{index:04d}_{name}.png')
        mmcv.imwrite(drawn_rgb[..., ::-1], out_file)
        written.append(out_file)
    return written
