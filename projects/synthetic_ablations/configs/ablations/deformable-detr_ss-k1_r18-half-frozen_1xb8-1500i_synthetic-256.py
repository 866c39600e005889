# Table 2: single-scale input, K=1: one bilinear sample per head around the reference, close to a
# deformable convolution (the paper's weakest row).
_base_ = './deformable-detr_ss-k4_r18-half-frozen_1xb8-1500i_synthetic-256.py'

model = dict(
    encoder=dict(layer_cfg=dict(num_points=1)),
    decoder=dict(layer_cfg=dict(num_points=1)))
