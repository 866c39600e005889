# Ablation: single-scale input, K=4: C4 alone (stride 16, 8 x 8 tokens), one level. The paper
# uses C5 (stride 32); at 128 px that is 4 x 4 = 16 tokens, fewer than the 50 two-stage queries.
_base_ = './deformable-detr_ms-attn-k4_r18_1xb8-360i_synthetic.py'

model = dict(backbone=dict(out_indices=(2, )), neck=dict(num_extra_levels=0))
