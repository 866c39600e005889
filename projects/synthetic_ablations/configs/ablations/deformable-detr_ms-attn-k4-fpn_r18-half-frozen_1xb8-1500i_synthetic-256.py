# Table 2: the base with an FPN neck (top-down pathway) in place of the per-level projection.
_base_ = './deformable-detr_ms-attn-k4_r18-half-frozen_1xb8-1500i_synthetic-256.py'

model = dict(neck=dict(type='FPN'))
