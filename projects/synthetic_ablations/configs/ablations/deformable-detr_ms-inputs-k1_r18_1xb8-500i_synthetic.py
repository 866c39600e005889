# Ablation: multi-scale inputs without multi-scale attention, K=1.
_base_ = './deformable-detr_ms-inputs-k4_r18_1xb8-500i_synthetic.py'

model = dict(
    encoder=dict(layer_cfg=dict(num_points=1)),
    decoder=dict(layer_cfg=dict(num_points=1)))
