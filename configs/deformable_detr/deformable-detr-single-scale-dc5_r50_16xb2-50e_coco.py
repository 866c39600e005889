# Single-scale Deformable DETR on a dilated C5 (stride 16, DC5).
_base_ = './deformable-detr-single-scale_r50_16xb2-50e_coco.py'

model = dict(backbone=dict(dilate_last_stage=True))
