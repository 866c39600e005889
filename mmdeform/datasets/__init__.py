"""Datasets, data transforms and the synthetic shapes dataset generator."""
from .coco import COCO_CLASSES, CocoDataset
from .synthetic import SYNTHETIC_CLASSES, make_synthetic_coco
from .transforms import LoadDetAnnotations, LoadImage, PackDetInputs, RandomCrop

__all__ = ['COCO_CLASSES', 'CocoDataset', 'LoadDetAnnotations', 'LoadImage',
           'PackDetInputs', 'RandomCrop', 'SYNTHETIC_CLASSES', 'make_synthetic_coco']
