"""``RandomCrop``: random crop of the image and its boxes."""
from typing import Optional, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms.utils import cache_randomness

from mmdeform.registry import TRANSFORMS

_CROP_TYPES = ('absolute', 'absolute_range', 'relative', 'relative_range')


@TRANSFORMS.register_module()
class RandomCrop(BaseTransform):
    """Crop a random window of the image; shift, clip and filter the boxes.

    The crop size (h, w) depends on ``crop_type`` (image size h_img, w_img):

    - ``'absolute_range'`` (default; the paper's crop with ``(384, 600)``):
      h ~ U{min(h_img, lo) .. min(h_img, hi)}, w likewise, independently.
    - ``'absolute'``: (min(h_img, crop_size[0]), min(w_img, crop_size[1])).
    - ``'relative'``: (h_img * crop_size[0], w_img * crop_size[1]).
    - ``'relative_range'``: h_img * U[crop_size[0], 1], w_img * U[crop_size[1], 1].

    The window's top-left corner is uniform over the valid positions. Boxes
    are shifted by it and clipped to the window; boxes left without area
    (x2 <= x1 or y2 <= y1) are dropped together with their labels and ignore
    flags.

    Args:
        crop_size (tuple): (lo, hi) for ``'absolute_range'``, (h, w) for
            the others; ints for the absolute types, floats in (0, 1] for
            the relative ones.
        crop_type (str): One of ``'absolute'``, ``'absolute_range'``,
            ``'relative'``, ``'relative_range'``.
        allow_negative_crop (bool): Keep a crop that drops every box. If
            False, such a crop returns ``None`` and the dataset samples
            another image.

    Reads ``img`` (H, W, C), ``gt_bboxes`` (n, 4) float32 absolute xyxy
    (optional), ``gt_bboxes_labels`` (n,) and ``gt_ignore_flags`` (n,)
    (optional); updates them and ``img_shape``.
    """

    def __init__(self, crop_size: Tuple[Union[int, float], Union[int, float]] = (384, 600),
                 crop_type: str = 'absolute_range', allow_negative_crop: bool = True) -> None:
        if crop_type not in _CROP_TYPES:
            raise ValueError(f'RandomCrop: crop_type must be one of {_CROP_TYPES}, '
                             f'got {crop_type!r}')
        if len(crop_size) != 2:
            raise ValueError(f'RandomCrop: crop_size needs 2 values, got {crop_size}')
        if crop_type.startswith('absolute'):
            if not all(isinstance(v, int) and v > 0 for v in crop_size):
                raise ValueError(f'RandomCrop: {crop_type} crop_size needs positive ints, '
                                 f'got {crop_size}')
            if crop_type == 'absolute_range' and crop_size[0] > crop_size[1]:
                raise ValueError(f'RandomCrop: absolute_range crop_size must be (lo, hi) '
                                 f'with lo <= hi, got {crop_size}')
        elif not all(0 < v <= 1 for v in crop_size):
            raise ValueError(f'RandomCrop: {crop_type} crop_size needs values in (0, 1], '
                             f'got {crop_size}')
        self.crop_size = tuple(crop_size)
        self.crop_type = crop_type
        self.allow_negative_crop = allow_negative_crop

    @cache_randomness
    def _sample_window(self, img_h: int, img_w: int) -> Tuple[int, int, int, int]:
        """Returns (top, left, crop_h, crop_w) of a random window."""
        lo, hi = self.crop_size
        if self.crop_type == 'absolute_range':
            crop_h = np.random.randint(min(img_h, lo), min(img_h, hi) + 1)
            crop_w = np.random.randint(min(img_w, lo), min(img_w, hi) + 1)
        elif self.crop_type == 'absolute':
            crop_h, crop_w = min(img_h, lo), min(img_w, hi)
        elif self.crop_type == 'relative':
            crop_h, crop_w = int(img_h * lo + 0.5), int(img_w * hi + 0.5)
        else:
            crop_h = int(img_h * np.random.uniform(lo, 1) + 0.5)
            crop_w = int(img_w * np.random.uniform(hi, 1) + 0.5)
        crop_h, crop_w = max(crop_h, 1), max(crop_w, 1)
        top = np.random.randint(0, img_h - crop_h + 1)
        left = np.random.randint(0, img_w - crop_w + 1)
        return top, left, crop_h, crop_w

    def transform(self, results: dict) -> Optional[dict]:
        img = results['img']
        top, left, crop_h, crop_w = self._sample_window(*img.shape[:2])
        results['img'] = img[top:top + crop_h, left:left + crop_w]
        results['img_shape'] = results['img'].shape[:2]
        if results.get('gt_bboxes') is None:
            return results
        boxes_xyxy = results['gt_bboxes'] - np.array([left, top, left, top], dtype=np.float32)
        boxes_xyxy[:, 0::2] = boxes_xyxy[:, 0::2].clip(0, crop_w)
        boxes_xyxy[:, 1::2] = boxes_xyxy[:, 1::2].clip(0, crop_h)
        keep = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
        if len(keep) > 0 and not keep.any() and not self.allow_negative_crop:
            return None
        results['gt_bboxes'] = boxes_xyxy[keep]
        for key in ('gt_bboxes_labels', 'gt_ignore_flags'):
            if results.get(key) is not None:
                results[key] = results[key][keep]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(crop_size={self.crop_size}, '
                f'crop_type={self.crop_type!r}, allow_negative_crop={self.allow_negative_crop})')
