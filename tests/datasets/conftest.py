"""Tiny COCO files written into ``tmp_path``."""
import json

import cv2
import numpy as np
import pytest
from mmengine.logging import MMLogger


@pytest.fixture
def write_coco(tmp_path):
    """Returns ``write(images, annotations, categories, name='ann.json')``.

    ``images`` are (id, height, width) tuples; a black PNG ``<id>.png`` of
    that size is written under ``tmp_path / 'img'``. Returns the json path.
    """

    def write(images, annotations, categories, name='ann.json'):
        (tmp_path / 'img').mkdir(exist_ok=True)
        image_entries = []
        for img_id, height, width in images:
            file_name = f'{img_id}.png'
            cv2.imwrite(str(tmp_path / 'img' / file_name),
                        np.zeros((height, width, 3), np.uint8))
            image_entries.append(dict(id=img_id, file_name=file_name, height=height,
                                      width=width))
        path = tmp_path / name
        path.write_text(json.dumps(dict(images=image_entries, annotations=annotations,
                                        categories=categories)))
        return str(path)

    return write


@pytest.fixture
def log_messages(caplog):
    """Returns a function giving the messages logged so far through mmengine's
    current logger (which does not propagate to the root logger)."""
    logger = MMLogger.get_current_instance()
    logger.addHandler(caplog.handler)
    yield lambda: [record.getMessage() for record in caplog.records]
    logger.removeHandler(caplog.handler)

