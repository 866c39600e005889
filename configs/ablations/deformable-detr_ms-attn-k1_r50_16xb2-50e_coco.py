# Ablation: multi-scale attention with K=1 sampling point per head and level (encoder and
# decoder).
_base_ = './deformable-detr_ms-attn-k4_r50_16xb2-50e_coco.py'

model = dict(
    encoder=dict(layer_cfg=dict(num_points=1)),
    decoder=dict(layer_cfg=dict(num_points=1)))
