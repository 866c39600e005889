# Ablation: the full model with an FPN neck (top-down pathway, 3x3 output convs) in place of
# the per-level projection.
_base_ = './deformable-detr_ms-attn-k4_r50_16xb2-50e_coco.py'

model = dict(neck=dict(type='FPN'))
