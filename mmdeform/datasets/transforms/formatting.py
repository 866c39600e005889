"""``PackDetInputs``: numpy results -> model inputs and a ``DetDataSample``."""
from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import InstanceData

from mmdeform.registry import TRANSFORMS
from mmdeform.structures import DetDataSample

# Values for meta keys that a pipeline without the matching transform never sets.
_META_DEFAULTS = dict(scale_factor=(1.0, 1.0), flip=False, flip_direction=None)


@TRANSFORMS.register_module()
class PackDetInputs(BaseTransform):
    """Pack the image, boxes and meta information for the model.

    Returns ``dict(inputs, data_samples)``:

    - ``inputs``: (3, H, W) contiguous tensor of the image in its channel
      order (BGR from ``LoadImageFromFile``) and dtype (uint8 unless the image was
      converted earlier); the data preprocessor normalizes and pads it.
    - ``data_samples``: a :class:`DetDataSample` whose ``gt_instances`` hold
      ``bboxes`` float32 (n, 4) absolute xyxy in ``img_shape`` pixels and
      ``labels`` int64 (n,); instances with ``gt_ignore_flags`` True are
      removed (DETR does not use them). Without ``gt_bboxes`` (inference)
      ``gt_instances`` is empty with (0, 4) boxes.

    Meta information: each of ``meta_keys`` present in the results is copied
    into the sample's metainfo; ``scale_factor`` ((w_scale, h_scale), the
    last resize's), ``flip`` and ``flip_direction`` default to no resize and
    no flip when no transform set them; other absent keys are left out.

    Args:
        meta_keys (Sequence[str]): Keys copied into the metainfo.
    """

    def __init__(self, meta_keys: Sequence[str] = ('img_id', 'img_path', 'ori_shape',
                                                   'img_shape', 'scale_factor', 'flip',
                                                   'flip_direction')) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f'PackDetInputs: expected an (H, W, 3) image, got shape '
                             f'{img.shape} for {results.get("img_path")}; load images '
                             "with color_type='color'")
        # (H, W, 3) -> (3, H, W)
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        data_sample = DetDataSample()
        data_sample.gt_instances = self._pack_instances(results)
        metainfo = {key: results[key] for key in self.meta_keys if key in results}
        for key, default in _META_DEFAULTS.items():
            if key in self.meta_keys:
                metainfo.setdefault(key, default)
        data_sample.set_metainfo(metainfo)
        return dict(inputs=inputs, data_samples=data_sample)

    @staticmethod
    def _pack_instances(results: dict) -> InstanceData:
        boxes_xyxy = results.get('gt_bboxes')
        if boxes_xyxy is None:
            boxes_xyxy = np.zeros((0, 4), dtype=np.float32)
        labels = results.get('gt_bboxes_labels')
        if labels is None:
            labels = np.zeros((len(boxes_xyxy),), dtype=np.int64)
        ignore = results.get('gt_ignore_flags')
        keep = ~ignore if ignore is not None else np.ones(len(boxes_xyxy), dtype=bool)
        if not (len(boxes_xyxy) == len(labels) == len(keep)):
            raise ValueError(f'PackDetInputs: gt_bboxes {boxes_xyxy.shape}, gt_bboxes_labels '
                             f'{labels.shape} and gt_ignore_flags {keep.shape} disagree '
                             'in length')
        instances = InstanceData()
        instances.bboxes = torch.from_numpy(
            np.asarray(boxes_xyxy[keep], dtype=np.float32).reshape(-1, 4))
        instances.labels = torch.from_numpy(np.asarray(labels[keep], dtype=np.int64))
        return instances

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'
