"""``CocoDataset``: images and boxes from a COCO-format json file."""
import logging
import math
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Tuple

import mmengine.fileio as fileio
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from mmengine.registry import DefaultScope

from mmdeform.fileio.coco_json import complete_annotations, load_coco_json
from mmdeform.registry import DATASETS

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
    'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
    'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball',
    'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
    'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
    'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush')

# How many annotation ids a summary warning quotes as examples.
_NUM_EXAMPLES = 5


def _warn(msg: str) -> None:
    print_log(msg, logger='current', level=logging.WARNING)


def map_categories(categories: List[dict], classes: Tuple[str, ...],
                   ann_file: str) -> Dict[int, Optional[int]]:
    """Map json category ids to contiguous labels by category name.

    Args:
        categories (list[dict]): The json's ``categories`` (``id``, ``name``).
        classes (tuple[str]): Class names; label ``i`` is ``classes[i]``.
        ann_file (str): Used in messages only.

    Returns:
        dict[int, int | None]: category id -> label, ``None`` for a category
        whose name is not among ``classes`` (its annotations are skipped).
    """
    label_of_name = {name: label for label, name in enumerate(classes)}
    cat_to_label: Dict[int, Optional[int]] = {}
    seen_labels: Dict[int, int] = {}
    for cat in categories:
        if 'id' not in cat or 'name' not in cat:
            raise ValueError(f'{ann_file}: category {cat} needs "id" and "name"')
        label = label_of_name.get(cat['name'])
        if label is not None and label in seen_labels:
            raise ValueError(f'{ann_file}: categories {seen_labels[label]} and {cat["id"]} '
                             f'share the name "{cat["name"]}"')
        if label is not None:
            seen_labels[label] = cat['id']
        cat_to_label[cat['id']] = label
    unused = [cat['name'] for cat in categories if cat_to_label[cat['id']] is None]
    if unused:
        _warn(f'{ann_file}: categories {unused} are not among the dataset classes; '
              'their annotations are skipped')
    missing = [name for name in classes if name not in {c['name'] for c in categories}]
    if missing:
        _warn(f'{ann_file}: classes {missing} have no category in this file')
    return cat_to_label


@DATASETS.register_module()
class CocoDataset(BaseDataset):
    """COCO-format detection dataset.

    Class names come from ``metainfo['classes']`` (default: the 80 COCO
    classes); json categories are matched to them by name and labelled
    ``0..K-1`` in the order of ``classes``. A custom dataset only changes
    ``metainfo=dict(classes=(...))`` (and the model's number of classes).

    Each data info is ``dict(img_path, img_id, height, width,
    instances=[dict(bbox=[x1, y1, x2, y2], bbox_label, ignore_flag)])`` with
    absolute pixel xyxy boxes; ``iscrowd`` annotations get ``ignore_flag=1``.

    Annotation problems are handled as follows (one summary warning per kind
    and file, quoting example annotation and image ids): a box with a
    non-finite value (NaN, inf) is skipped; a box with width or height
    <= 0 is skipped; a box partly outside the image is clipped to it; a box
    entirely outside is skipped; an annotation of a category that is not
    among ``classes`` is skipped. An annotation whose ``category_id`` is not
    in the json's categories, or whose ``image_id`` is not among its images,
    or without ``image_id`` / ``category_id`` / ``bbox``, raises
    ``ValueError``; missing ``id``, ``iscrowd`` and ``area`` are filled
    (:func:`complete_annotations`). A file without images, or whose images
    are all filtered out, raises ``ValueError``.

    Args:
        filter_cfg (dict, optional): ``filter_empty_gt`` (bool, default
            False: images without boxes are kept, DETR trains on them) and
            ``min_size`` (int, default 0: drop images whose shorter side is
            smaller). Not applied in ``test_mode``.
        backend_args (dict, optional): mmengine file backend arguments for
            reading ``ann_file``.
        **kwargs: :class:`mmengine.dataset.BaseDataset` arguments
            (``ann_file``, ``metainfo``, ``data_root``, ``data_prefix``,
            ``pipeline``, ``test_mode``, ...).
    """

    METAINFO = dict(classes=COCO_CLASSES)

    def __init__(self, *args, filter_cfg: Optional[dict] = None,
                 backend_args: Optional[dict] = None, **kwargs) -> None:
        self.backend_args = backend_args
        self._issues = defaultdict(list)
        if filter_cfg is None:
            filter_cfg = dict(filter_empty_gt=False, min_size=0)
        # Without a default scope (outside a Runner), plain transform names in
        # ``pipeline`` resolve in mmdeform's registry (then mmcv's).
        scope = None if DefaultScope.get_current_instance() is not None else 'mmdeform'
        with DefaultScope.overwrite_default_scope(scope):
            super().__init__(*args, filter_cfg=filter_cfg, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Read ``self.ann_file`` and return one data info per image."""
        content = load_coco_json(self.ann_file, self.backend_args)
        if not content['images']:
            raise ValueError(f'{self.ann_file}: the COCO json lists no images (an empty '
                             '"images" list): nothing to train or evaluate on')
        complete_annotations(content, self.ann_file)
        cat_to_label = map_categories(
            content['categories'], tuple(self._metainfo['classes']), self.ann_file)
        images = {img['id']: img for img in content['images']}
        if len(images) != len(content['images']):
            counts = Counter(img['id'] for img in content['images'])
            raise ValueError(f'{self.ann_file}: duplicate image ids '
                             f'{[i for i, n in counts.items() if n > 1][:_NUM_EXAMPLES]}')
        # Resolve the image folder's file backend once, not per image.
        self._img_backend = fileio.get_file_backend(self.data_prefix['img_path'],
                                                    backend_args=self.backend_args)
        anns_of_image = defaultdict(list)
        for ann in content['annotations']:
            self._check_ids(ann, cat_to_label, images)
            anns_of_image[ann['image_id']].append(ann)
        data_list = [
            self.parse_data_info(dict(raw_img_info=img, raw_ann_info=anns_of_image[img_id],
                                      cat_to_label=cat_to_label))
            for img_id, img in images.items()]
        self._report_issues()
        return data_list

    def _check_ids(self, ann: dict, cat_to_label: dict, images: dict) -> None:
        ann_id = ann.get('id')
        if ann['category_id'] not in cat_to_label:
            raise ValueError(
                f'{self.ann_file}: annotation {ann_id} has category_id {ann["category_id"]}, '
                f'which is not among the file\'s categories {sorted(cat_to_label)}')
        if ann['image_id'] not in images:
            raise ValueError(f'{self.ann_file}: annotation {ann_id} refers to image_id '
                             f'{ann["image_id"]}, which is not among the file\'s images')

    def parse_data_info(self, raw_data_info: dict) -> dict:
        """Turn one json image and its annotations into a data info.

        Args:
            raw_data_info (dict): ``raw_img_info`` (the json image),
                ``raw_ann_info`` (its annotations) and ``cat_to_label``.

        Returns:
            dict: ``img_path``, ``img_id``, ``height``, ``width``, ``instances``.
        """
        img = raw_data_info['raw_img_info']
        for key in ('file_name', 'height', 'width'):
            if key not in img:
                raise ValueError(f'{self.ann_file}: image {img.get("id")} has no "{key}"')
        height, width = img['height'], img['width']
        instances = []
        for ann in raw_data_info['raw_ann_info']:
            label = raw_data_info['cat_to_label'][ann['category_id']]
            if label is None:
                continue
            bbox = self._parse_bbox(ann, width, height)
            if bbox is not None:
                instances.append(dict(bbox=bbox, bbox_label=label,
                                      ignore_flag=int(bool(ann.get('iscrowd', 0)))))
        img_path = self._img_backend.join_path(self.data_prefix['img_path'], img['file_name'])
        return dict(img_path=img_path,
                    img_id=img['id'], height=height, width=width, instances=instances)

    def _parse_bbox(self, ann: dict, width: int, height: int) -> Optional[List[float]]:
        """``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` clipped to the image, or
        ``None`` (recorded in ``self._issues``) when nothing valid is left."""
        bbox = ann['bbox']
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f'{self.ann_file}: annotation {ann.get("id")} has bbox {bbox}; '
                             'expected [x, y, w, h]')
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise ValueError(f'{self.ann_file}: annotation {ann.get("id")} of image '
                             f'{ann["image_id"]} has bbox {bbox}; expected 4 numbers') from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            self._issues['skipped: non-finite value (NaN or inf)'].append(ann)
            return None
        if w <= 0 or h <= 0:
            self._issues['skipped: width or height <= 0'].append(ann)
            return None
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            self._issues['skipped: entirely outside the image'].append(ann)
            return None
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            self._issues['clipped: partly outside the image'].append(ann)
        return [x1, y1, x2, y2]

    def _report_issues(self) -> None:
        for kind, anns in self._issues.items():
            examples = anns[:_NUM_EXAMPLES]
            _warn(f'{self.ann_file}: {len(anns)} box(es) {kind} '
                  f'(annotation ids e.g. {[a.get("id") for a in examples]}) '
                  f'of image ids {[a.get("image_id") for a in examples]}')
        self._issues.clear()

    def filter_data(self) -> List[dict]:
        """Drop images without (non-ignored) boxes if ``filter_empty_gt`` and
        images whose shorter side is below ``min_size``; none in test mode."""
        if self.test_mode or not self.filter_cfg:
            return self.data_list
        filter_empty_gt = self.filter_cfg.get('filter_empty_gt', False)
        min_size = self.filter_cfg.get('min_size', 0)
        reasons = Counter()
        kept = []
        for info in self.data_list:
            if min(info['width'], info['height']) < min_size:
                reasons['smaller than min_size'] += 1
            elif filter_empty_gt and not any(i['ignore_flag'] == 0 for i in info['instances']):
                reasons['without boxes'] += 1
            else:
                kept.append(info)
        for reason, count in reasons.items():
            print_log(f'{self.ann_file}: filtered out {count} image(s) {reason}',
                      logger='current', level=logging.INFO)
        if not kept:
            raise ValueError(f'{self.ann_file}: all {len(self.data_list)} images were filtered '
                             f'out ({dict(reasons)}; filter_cfg={self.filter_cfg})')
        return kept
