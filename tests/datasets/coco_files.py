"""Helpers for tiny COCO files (a uniquely named module: ``conftest`` may
exist in several test folders)."""


def ann(ann_id, img_id, cat_id, bbox, iscrowd=0):
    """One COCO annotation; ``bbox`` is [x, y, w, h]."""
    return dict(id=ann_id, image_id=img_id, category_id=cat_id, bbox=bbox, iscrowd=iscrowd)
