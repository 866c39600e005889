# Ablation: single-scale input, K=1: each head reads one bilinear sample around the reference,
# like a deformable convolution (the paper's weakest row, 39.7 AP).
_base_ = './deformable-detr_ss-k4_r50_16xb2-50e_coco.py'

model = dict(
    encoder=dict(layer_cfg=dict(num_points=1)),
    decoder=dict(layer_cfg=dict(num_points=1)))
