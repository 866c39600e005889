"""``CocoMetric``: COCO box AP/AR of detections with pycocotools."""
import contextlib
import io
import json
import logging
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.utils import mkdir_or_exist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmdeform.fileio.coco_json import complete_annotations, load_coco_json
from mmdeform.registry import METRICS

# MMDetection's names for COCOeval.stats[i] of a bbox evaluation (maxDets 1, 10, 100).
STAT_NAMES = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR@1', 'AR@10',
              'AR@100', 'AR_s@100', 'AR_m@100', 'AR_l@100')


def _log(msg: str) -> None:
    print_log(msg, logger='current', level=logging.INFO)


@METRICS.register_module()
class CocoMetric(BaseMetric):
    """COCO box detection metric.

    The ground truth is the COCO json ``ann_file`` (the same file the
    dataset reads). Predicted labels are mapped back to json category ids
    by class name: label ``i`` is ``dataset_meta['classes'][i]`` (the
    Runner sets ``dataset_meta`` from the dataset's metainfo); without
    ``dataset_meta`` label ``i`` is the i-th json category in id order.
    Only the images that were processed are evaluated (a subset of the
    json is fine); an image id not in the json raises.

    The json is checked when the metric is built, before any inference, as
    the dataset checks it: no images, or an annotation without
    ``image_id`` / ``category_id`` / ``bbox``, raises ``ValueError``;
    missing ``id``, ``iscrowd`` and ``area`` (which pycocotools needs) are
    filled with a warning (:func:`mmdeform.fileio.coco_json.complete_annotations`).

    Returns (keys prefixed ``'coco/'`` by default): ``bbox_mAP``,
    ``bbox_mAP_50``, ``bbox_mAP_75``, ``bbox_mAP_s``, ``bbox_mAP_m``,
    ``bbox_mAP_l``, ``bbox_AR@1``, ``bbox_AR@10``, ``bbox_AR@100``,
    ``bbox_AR_s@100``, ``bbox_AR_m@100``, ``bbox_AR_l@100`` (COCOeval's -1
    where a size range has no ground truth), and with ``classwise`` also
    ``bbox_{class}_precision`` (AP per class). No predictions at all gives
    0 AP.

    Args:
        ann_file (str): COCO json with ``images``, ``categories`` and, unless
            ``format_only``, ``annotations``. Required.
        metric (str | list[str]): Only ``'bbox'`` is supported.
        format_only (bool): Only write ``<outfile_prefix>.bbox.json`` (e.g.
            for a test-server submission) and return an empty dict.
        outfile_prefix (str, optional): If set, the detections are written to
            ``<outfile_prefix>.bbox.json`` in COCO result format. Required
            with ``format_only``.
        classwise (bool): Also report and log AP per class.
        backend_args (dict, optional): mmengine file backend arguments for
            ``ann_file``.
        collect_device (str): ``'cpu'`` or ``'gpu'``, used to gather results
            from all ranks.
        prefix (str, optional): Prefix of the metric names (``'coco'``).
    """

    default_prefix: Optional[str] = 'coco'

    def __init__(self, ann_file: Optional[str] = None, metric='bbox', format_only: bool = False,
                 outfile_prefix: Optional[str] = None, classwise: bool = False,
                 backend_args: Optional[dict] = None, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        metrics = [metric] if isinstance(metric, str) else list(metric)
        if metrics != ['bbox']:
            raise ValueError(f"CocoMetric: only metric='bbox' is supported, got {metric!r}")
        if ann_file is None:
            raise ValueError('CocoMetric: ann_file (the COCO json of the evaluated images) is '
                             'required')
        if format_only and outfile_prefix is None:
            raise ValueError('CocoMetric: format_only=True needs outfile_prefix to write to')
        self.ann_file = ann_file
        self.format_only = format_only
        self.outfile_prefix = outfile_prefix
        self.classwise = classwise
        self._coco_gt = load_ground_truth(ann_file, backend_args)

    def process(self, data_batch, data_samples: Sequence) -> None:
        """Store each image's detections as numpy arrays.

        Args:
            data_batch: Unused.
            data_samples (Sequence[dict | DetDataSample]): Model outputs with
                ``img_id`` and ``pred_instances`` (``bboxes`` (k, 4) absolute
                xyxy in original image pixels, ``scores`` (k,), ``labels``
                (k,) contiguous class indices).
        """
        for sample in data_samples:
            if hasattr(sample, 'to_dict'):
                sample = sample.to_dict()
            pred = sample['pred_instances']
            self.results.append(dict(
                img_id=sample['img_id'],
                bboxes=_to_numpy(pred['bboxes']).reshape(-1, 4).astype(np.float64),
                scores=_to_numpy(pred['scores']).reshape(-1).astype(np.float64),
                labels=_to_numpy(pred['labels']).reshape(-1).astype(np.int64)))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Evaluate the detections of all ranks (called on rank 0)."""
        img_ids = sorted({r['img_id'] for r in results})
        unknown = sorted(set(img_ids) - set(self._coco_gt.getImgIds()))
        if unknown:
            raise ValueError(f'CocoMetric: image ids {unknown[:10]} are not in {self.ann_file}')
        detections = self._to_coco_results(results)
        if self.outfile_prefix is not None:
            out_file = f'{self.outfile_prefix}.bbox.json'
            mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
            with open(out_file, 'w') as f:
                json.dump(detections, f)
            _log(f'CocoMetric: wrote {len(detections)} detections to {out_file}')
        if self.format_only:
            return {}
        _log(f'CocoMetric: evaluating {len(detections)} detections on {len(img_ids)} images '
             f'(of {len(self._coco_gt.getImgIds())} in {self.ann_file})')
        coco_eval = self._evaluate(detections, img_ids)
        metrics = {f'bbox_{name}': float(value)
                   for name, value in zip(STAT_NAMES, coco_eval.stats)}
        if self.classwise:
            metrics.update(self._classwise_ap(coco_eval))
        return metrics

    def _label_to_cat_id(self) -> List[int]:
        """Json category id of each contiguous label."""
        cats = sorted(self._coco_gt.loadCats(self._coco_gt.getCatIds()), key=lambda c: c['id'])
        classes = (self.dataset_meta or {}).get('classes')
        if classes is None:
            return [c['id'] for c in cats]
        id_of_name = {c['name']: c['id'] for c in cats}
        # A class without a json category keeps -1: predicting it is an error.
        return [id_of_name.get(name, -1) for name in classes]

    def _to_coco_results(self, results: List[dict]) -> List[dict]:
        """Detections as COCO result dicts: image_id, category_id, bbox
        [x, y, w, h], score."""
        cat_ids = self._label_to_cat_id()
        detections = []
        for result in results:
            labels = result['labels']
            if not all(0 <= label < len(cat_ids) and cat_ids[label] >= 0
                       for label in set(labels.tolist())):
                raise ValueError(f'CocoMetric: image {result["img_id"]} has labels '
                                 f'{sorted(set(labels.tolist()))}, but the classes map to '
                                 f'category ids {cat_ids} of {self.ann_file}')
            boxes_xywh = result['bboxes'].copy()
            boxes_xywh[:, 2:] -= boxes_xywh[:, :2]  # (x1, y1, x2, y2) -> (x, y, w, h)
            for box, score, label in zip(boxes_xywh.tolist(), result['scores'].tolist(),
                                         labels.tolist()):
                detections.append(dict(image_id=result['img_id'], category_id=cat_ids[label],
                                       bbox=box, score=score))
        return detections

    def _evaluate(self, detections: List[dict], img_ids: List[int]) -> COCOeval:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            if detections:
                coco_dt = self._coco_gt.loadRes(detections)
            else:  # loadRes cannot take an empty list
                coco_dt = COCO()
                coco_dt.dataset = dict(images=self._coco_gt.dataset['images'],
                                       categories=self._coco_gt.dataset['categories'],
                                       annotations=[])
                coco_dt.createIndex()
            coco_eval = COCOeval(self._coco_gt, coco_dt, iouType='bbox')
            coco_eval.params.imgIds = img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        summary = [line for line in stdout.getvalue().splitlines() if line.startswith(' Average')]
        _log('CocoMetric bbox results:\n' + '\n'.join(summary))
        return coco_eval

    def _classwise_ap(self, coco_eval: COCOeval) -> Dict[str, float]:
        # precision: (iou thresholds, recall thresholds, categories, areas, max dets)
        precision = coco_eval.eval['precision']
        metrics, lines = {}, []
        for k, cat_id in enumerate(coco_eval.params.catIds):
            name = self._coco_gt.loadCats(cat_id)[0]['name']
            valid = precision[:, :, k, 0, -1]
            valid = valid[valid > -1]
            ap = float(valid.mean()) if valid.size else float('nan')
            metrics[f'bbox_{name}_precision'] = ap
            lines.append(f'{name:>20s}: {ap:.3f}')
        _log('CocoMetric AP per class:\n' + '\n'.join(lines))
        return metrics


def load_ground_truth(ann_file: str, backend_args: Optional[dict] = None) -> COCO:
    """The COCO ground truth of ``ann_file``, checked and completed (class doc).

    Raises:
        ValueError: malformed json, no images, or an annotation without a
            required field (naming the file).
    """
    content = load_coco_json(ann_file, backend_args)
    if not content['images']:
        raise ValueError(f'CocoMetric: {ann_file} lists no images (an empty "images" list): '
                         'nothing to evaluate')
    complete_annotations(content, ann_file)
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, 'detach'):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
