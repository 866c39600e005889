# Table 2: multi-scale inputs without multi-scale attention (in the encoder), K=1.
_base_ = './deformable-detr_ms-inputs-k4_r18-half-frozen_1xb8-1500i_synthetic-256.py'

model = dict(
    encoder=dict(layer_cfg=dict(num_points=1)),
    decoder=dict(layer_cfg=dict(num_points=1)))
