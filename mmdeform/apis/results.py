"""Running a detector over image files and saving what it found (``tools/infer.py``)."""
import json
import logging
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import mmcv
import numpy as np
from mmengine.logging import print_log
from mmengine.visualization import Visualizer

from mmdeform.engine.hooks import DetVisualizationHook
from mmdeform.structures import DetDataSample

from .inference import inference_detector

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def list_images(path: str) -> List[str]:
    """``path`` itself if it is a file, else the images directly in the
    folder ``path`` (by extension, sorted).

    Raises:
        FileNotFoundError: ``path`` does not exist or the folder has no image.
    """
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'{path} is neither an image file nor a folder')
    files = sorted(osp.join(path, name) for name in os.listdir(path)
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f'no image ({", ".join(IMAGE_EXTENSIONS)}) in {path}')
    return files


def detections_to_dict(sample: DetDataSample, classes: Optional[Sequence[str]],
                       score_thr: float = 0.0) -> dict:
    """The detections of one image with score >= ``score_thr`` as json data.

    Returns:
        dict: ``boxes_xyxy`` (list of [x1, y1, x2, y2] in original image
        pixels), ``scores``, ``labels`` and ``class_names``, sorted by score.
    """
    pred = sample.pred_instances
    keep = (pred.scores >= score_thr).cpu()
    labels = pred.labels.cpu()[keep].tolist()
    return dict(boxes_xyxy=pred.bboxes.detach().cpu()[keep].tolist(),
                scores=pred.scores.detach().cpu()[keep].tolist(),
                labels=labels,
                class_names=[classes[label] if classes else f'class {label}'
                             for label in labels])


def _detect_each(model, chunk: Sequence[str], batch_size: int
                 ) -> Tuple[List[Tuple[str, DetDataSample]], List[Tuple[str, str]]]:
    """Detections of the files of ``chunk`` that can be read, and (file, error)
    for the others: a batch that fails is retried one image at a time."""
    try:
        return list(zip(chunk, inference_detector(model, list(chunk),
                                                  batch_size=batch_size))), []
    except (OSError, ValueError) as err:
        if len(chunk) == 1:
            return [], [(chunk[0], f'{type(err).__name__}: {err}')]
    done, failed = [], []
    for path in chunk:
        ok, bad = _detect_each(model, [path], 1)
        done += ok
        failed += bad
    return done, failed


def infer_and_save(model, files: Sequence[str], out_dir: str, score_thr: float = 0.3,
                   batch_size: int = 1) -> Tuple[str, List[dict]]:
    """Detect objects in ``files``, draw them and write a json of the results.

    Writes ``<out_dir>/<image name>.png`` per image (boxes, class names and
    scores >= ``score_thr``, drawn by :class:`DetVisualizationHook`'s code)
    and ``<out_dir>/results.json``: ``dict(classes, score_thr, results=[
    dict(file, height, width, boxes_xyxy, scores, labels, class_names)],
    failed=[dict(file, error)])``. A file that cannot be read or decoded
    (missing, corrupt, too large) is reported in a warning and in
    ``failed``, and the other files are still processed.

    Returns:
        tuple[str, list[dict]]: The json file and the failed files
        (``file``, ``error``).
    """
    classes = (model.dataset_meta or {}).get('classes')
    drawer = DetVisualizationHook(draw=True, score_thr=score_thr)
    visualizer = Visualizer.get_instance('mmdeform_infer')
    os.makedirs(out_dir, exist_ok=True)
    results, failed = [], []
    for start in range(0, len(files), batch_size):
        done, bad = _detect_each(model, list(files[start:start + batch_size]), batch_size)
        for path, error in bad:
            print_log(f'infer: skipped {path}: {error}', logger='current',
                      level=logging.WARNING)
            failed.append(dict(file=path, error=error))
        for path, sample in done:
            img_bgr = mmcv.imread(path)
            drawn_rgb = drawer.draw_predictions(visualizer, img_bgr[..., ::-1], sample, classes)
            name = osp.splitext(osp.basename(path))[0]
            mmcv.imwrite(np.ascontiguousarray(drawn_rgb[..., ::-1]),
                         osp.join(out_dir, f'{name}.png'))
            height, width = sample.ori_shape[:2]
            results.append(dict(file=path, height=int(height), width=int(width),
                                **detections_to_dict(sample, classes, score_thr)))
    json_file = osp.join(out_dir, 'results.json')
    with open(json_file, 'w') as f:
        json.dump(dict(classes=list(classes) if classes else None, score_thr=score_thr,
                       results=results, failed=failed), f, indent=1)
    return json_file, failed
