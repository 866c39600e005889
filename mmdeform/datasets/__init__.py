"""Datasets, data transforms and the synthetic shapes dataset generator."""
from .coco import COCO_CLASSES, CocoDataset
from .synthetic import SYNTHETIC_CLASSES, make_synthetic_coco
from .transforms import LoadAnnotations, LoadImageFromFile, PackDetInputs, RandomCrop

__all__ = ['COCO_CLASSES', 'CocoDataset', 'LoadAnnotations', 'LoadImageFromFile',
           'PackDetInputs', 'RandomCrop', 'SYNTHETIC_CLASSES', 'make_synthetic_coco']
