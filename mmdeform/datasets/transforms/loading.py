"""Loading transforms: ``LoadImageFromFile`` (mmcv's loader with clear errors) and
``LoadAnnotations`` (mmcv's annotation loader plus ignore flags)."""
import logging
from typing import Optional

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import LoadAnnotations as MMCVLoadAnnotations
from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile
from mmengine.logging import print_log

from mmdeform.registry import TRANSFORMS

from .image_header import image_size_from_header

# Largest image LoadImageFromFile decodes by default: 100 M pixels (300 MB as uint8 BGR).
DEFAULT_MAX_PIXELS = 100_000_000


class ImageTooLargeError(ValueError):
    """An image file declares more pixels than the loader's ``max_pixels``."""


@TRANSFORMS.register_module()
class LoadImageFromFile(MMCVLoadImageFromFile):
    """Load ``results['img_path']`` as a (H, W, 3) uint8 BGR image.

    mmcv's ``LoadImageFromFile`` with the same arguments (``color_type``,
    ``imdecode_backend``, ``backend_args``, ``ignore_empty``, ``to_float32``),
    plus ``max_pixels``, and these guarantees: with the default ``color_type='color'`` (OpenCV's
    ``IMREAD_COLOR``) grayscale images come back with 3 channels, an alpha
    channel is dropped and 16-bit images are scaled to uint8 (value / 256).
    OpenCV also applies an EXIF orientation tag, so if the decoded size
    differs from the annotation's ``height``/``width`` a warning names the
    file (``color_type='color_ignore_orientation'`` keeps the stored pixel
    order). Before decoding, the size the file declares in its header
    (PNG, JPEG, BMP, GIF, WebP, TIFF; see
    :mod:`mmdeform.datasets.transforms.image_header`) is checked against
    ``max_pixels``, so a small file declaring a huge image is refused
    without allocating it.

    Args:
        max_pixels (int, optional): Largest width x height decoded (default
            100 M); None: no limit of ours (OpenCV's 2**30 remains).
        **kwargs: mmcv ``LoadImageFromFile`` arguments.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageTooLargeError: the header declares more than ``max_pixels``
            (a ``ValueError``; names the file and its size).
        ValueError: the file cannot be decoded as an image (corrupt, empty,
            not an image).

    Adds ``img``, ``img_shape`` and ``ori_shape`` ((h, w)).
    """

    def __init__(self, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_pixels is not None and max_pixels < 1:
            raise ValueError('LoadImageFromFile: max_pixels must be >= 1 or None, '
                             f'got {max_pixels}')
        self.max_pixels = max_pixels
        if self.file_client_args is not None:
            raise ValueError('LoadImageFromFile: file_client_args is deprecated in mmcv and not '
                             'supported here; pass backend_args instead')

    def transform(self, results: dict) -> Optional[dict]:
        path = results['img_path']
        try:
            img_bytes = fileio.get(path, backend_args=self.backend_args)
            img = self._decode(img_bytes, path)
        except (OSError, ValueError):
            if self.ignore_empty:
                return None
            raise
        if self.to_float32:
            img = img.astype(np.float32)
        expected = (results.get('height'), results.get('width'))
        if None not in expected and tuple(img.shape[:2]) != expected:
            print_log(f'{path}: decoded size (h, w)={img.shape[:2]} differs from the '
                      f'annotation {expected} (EXIF rotation?); boxes may not match',
                      logger='current', level=logging.WARNING)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def _decode(self, img_bytes: bytes, path: str) -> np.ndarray:
        if len(img_bytes) == 0:
            raise ValueError(f'cannot decode image {path}: the file is empty')
        size = image_size_from_header(img_bytes) if self.max_pixels is not None else None
        if size is not None and size[0] * size[1] > self.max_pixels:
            raise ImageTooLargeError(
                f'image {path} declares {size[0]} x {size[1]} = {size[0] * size[1]:,} pixels, '
                f'more than max_pixels={self.max_pixels:,} of LoadImageFromFile; not decoded '
                '(raise max_pixels in the pipeline config if the image is genuine)')
        try:
            img = mmcv.imfrombytes(img_bytes, flag=self.color_type,
                                   backend=self.imdecode_backend)
        except Exception as err:  # decoders raise assorted exception types
            raise ValueError(f'cannot decode image {path}: {err}') from None
        if img is None:
            raise ValueError(f'cannot decode image {path} ({len(img_bytes)} bytes): '
                             'corrupt or not an image file')
        return img


@TRANSFORMS.register_module()
class LoadAnnotations(MMCVLoadAnnotations):
    """mmcv's ``LoadAnnotations`` plus ``gt_ignore_flags``.

    Reads ``results['instances']`` (``bbox`` xyxy, ``bbox_label``,
    ``ignore_flag``) into ``gt_bboxes`` float32 (n, 4) absolute xyxy,
    ``gt_bboxes_labels`` int64 (n,) and ``gt_ignore_flags`` bool (n,)
    (an instance without ``ignore_flag`` is not ignored). Arguments are
    those of :class:`mmcv.transforms.LoadAnnotations`.
    """

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        if self.with_bbox:
            results['gt_ignore_flags'] = np.array(
                [bool(inst.get('ignore_flag', 0)) for inst in results['instances']],
                dtype=bool)
        return results
