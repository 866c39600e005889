"""Reading and checking a COCO-format json: shared by ``CocoDataset`` and ``CocoMetric``."""
import json
import logging
from collections import Counter
from typing import Dict, Optional

import mmengine.fileio as fileio
from mmengine.logging import print_log


def _warn(msg: str) -> None:
    print_log(msg, logger='current', level=logging.WARNING)


def load_coco_json(ann_file: str, backend_args: Optional[dict] = None) -> dict:
    """Read a COCO json and check its top-level layout.

    Args:
        ann_file (str): Path (or backend URI) of the json file.
        backend_args (dict, optional): mmengine file backend arguments.

    Returns:
        dict: The json content with ``images``, ``categories`` and
        ``annotations`` (an empty list when the file has none, as in COCO's
        ``image_info`` test files).

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        ValueError: the file is not valid json or lacks ``images`` /
            ``categories`` lists.
    """
    text = fileio.get_text(ann_file, backend_args=backend_args)
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'{ann_file}: malformed COCO json ({err})') from None
    if not isinstance(content, dict):
        raise ValueError(f'{ann_file}: a COCO json must hold an object at the top level, '
                         f'got {type(content).__name__}')
    for key in ('images', 'categories'):
        if not isinstance(content.get(key), list):
            raise ValueError(f'{ann_file}: COCO json needs a list "{key}"; '
                             f'found keys {sorted(content)}')
    content.setdefault('annotations', [])
    return content


def complete_annotations(content: dict, ann_file: str) -> Dict[str, int]:
    """Check the required fields of every annotation and fill the optional
    ones, in place.

    ``image_id``, ``category_id`` and ``bbox`` are required. pycocotools
    needs ``id``, ``area`` and ``iscrowd`` too, and without them dies with a
    bare ``KeyError`` after the whole inference; they are filled here, with
    one warning per field naming the file: ``id`` by numbers above the
    largest id in the file, ``iscrowd`` = 0, and ``area`` = the box's width x
    height (COCO's own ``area`` is the segmentation's area, close to but
    smaller than the box's).

    Args:
        content (dict): A COCO json (``annotations`` list).
        ann_file (str): Named in messages.

    Returns:
        dict[str, int]: How many annotations got each filled field.

    Raises:
        ValueError: an annotation lacks a required field (names the file and
            the annotation's id or position).
    """
    anns = content['annotations']
    for index, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise ValueError(f'{ann_file}: annotation #{index} is a {type(ann).__name__}, '
                             'not an object')
        for key in ('image_id', 'category_id', 'bbox'):
            if key not in ann:
                raise ValueError(f'{ann_file}: annotation {ann.get("id", f"#{index}")} has no '
                                 f'"{key}"')
    filled = Counter()
    next_id = max((a['id'] for a in anns if isinstance(a.get('id'), int)), default=0) + 1
    for ann in anns:
        if 'id' not in ann:
            ann['id'], next_id = next_id, next_id + 1
            filled['id'] += 1
        if 'iscrowd' not in ann:
            ann['iscrowd'] = 0
            filled['iscrowd'] += 1
        if 'area' not in ann:
            bbox = ann['bbox']
            valid = isinstance(bbox, (list, tuple)) and len(bbox) == 4
            ann['area'] = float(bbox[2]) * float(bbox[3]) if valid else 0.0
            filled['area'] += 1
    meaning = dict(id='new unique ids', iscrowd='iscrowd=0', area='area = box width x height')
    for key, count in filled.items():
        _warn(f'{ann_file}: {count} annotation(s) without "{key}"; filled with {meaning[key]}')
    return dict(filled)
