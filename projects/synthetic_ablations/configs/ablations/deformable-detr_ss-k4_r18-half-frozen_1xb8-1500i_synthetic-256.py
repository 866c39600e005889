# Table 2: single-scale input, K=4: C5 alone (stride 32, 8x8 tokens at 256 px), as in the paper
# (C5 of the full backbone; every stage is still built and pretrained).
_base_ = './deformable-detr_ms-attn-k4_r18-half-frozen_1xb8-1500i_synthetic-256.py'

model = dict(backbone=dict(backbone=dict(out_indices=(3, ))), neck=dict(num_extra_levels=0))
