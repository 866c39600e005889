# Ablation: multi-scale attention with K=1 sampling point per head and level.
_base_ = './deformable-detr_ms-attn-k4_r18_1xb8-500i_synthetic.py'

model = dict(
    encoder=dict(layer_cfg=dict(num_points=1)),
    decoder=dict(layer_cfg=dict(num_points=1)))
