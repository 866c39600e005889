# Single-scale Deformable DETR: one feature level (C5, stride 32).
_base_ = './deformable-detr_r50_16xb2-50e_coco.py'

model = dict(
    backbone=dict(out_indices=(3, )),
    neck=dict(in_channels=[2048], num_extra_levels=0),
    encoder=dict(num_levels=1),
    decoder=dict(num_levels=1))
