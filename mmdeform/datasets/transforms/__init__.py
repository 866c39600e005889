"""Data transforms of our own. Resizing, flipping and random choice come
from mmcv (``Resize``, ``RandomChoiceResize``, ``RandomFlip``,
``RandomChoice``), which the registry finds by name.

The paper's (official repo's) pipelines, as tested in
``tests/datasets/test_transforms.py``::

    multi_scale = [(s, 1333) for s in range(480, 801, 32)]
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='RandomChoice', transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
            [dict(type='RandomChoiceResize', scales=[(400, 4200), (500, 4200), (600, 4200)],
                  keep_ratio=True),
             dict(type='RandomCrop', crop_size=(384, 600), crop_type='absolute_range',
                  allow_negative_crop=True),
             dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)]]),
        dict(type='PackDetInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=(1333, 800), keep_ratio=True),
        dict(type='PackDetInputs'),
    ]

Transforms nested in mmcv's wrappers (``RandomChoice``) are built from the
default scope's registry: run under ``default_scope='mmdeform'`` (a
``CocoDataset`` sets it for its pipeline when no scope is active).
"""
from .formatting import PackDetInputs
from .loading import LoadAnnotations, LoadImageFromFile
from .random_crop import RandomCrop

__all__ = ['LoadAnnotations', 'LoadImageFromFile', 'PackDetInputs', 'RandomCrop']
