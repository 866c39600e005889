# Single-scale Deformable DETR: one feature level (C5, stride 32).
_base_ = './deformable-detr_r50_16xb2-50e_coco.py'

model = dict(backbone=dict(out_indices=(3, )), neck=dict(num_extra_levels=0))
