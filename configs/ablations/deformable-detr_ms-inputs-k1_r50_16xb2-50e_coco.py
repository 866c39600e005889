# Ablation: multi-scale inputs without multi-scale attention, K=1.
_base_ = './deformable-detr_ms-inputs-k4_r50_16xb2-50e_coco.py'

model = dict(
    encoder=dict(layer_cfg=dict(num_points=1)),
    decoder=dict(layer_cfg=dict(num_points=1)))
