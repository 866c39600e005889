# Ablation: the base with an FPN neck (top-down pathway) in place of the per-level projection.
_base_ = './deformable-detr_ms-attn-k4_r18_1xb8-500i_synthetic.py'

model = dict(neck=dict(type='FPN'))
