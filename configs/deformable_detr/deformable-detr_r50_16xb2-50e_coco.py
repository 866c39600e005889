# Deformable DETR (Zhu et al., 2020), ResNet-50, 4 feature levels, 300 learned queries, on
# COCO with the paper's 50-epoch schedule. The model is configs/_base_/models.
_base_ = [
    '../_base_/models/deformable-detr_r50.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_50e.py', '../_base_/default_runtime.py'
]
