# Ablation: multi-scale inputs without multi-scale attention, K=4. Every encoder token samples
# only its own level (SameLevelDeformAttn); every decoder query samples each level on its own
# (softmax within the level) and averages the levels (PerLevelDeformAttn).
_base_ = './deformable-detr_ms-attn-k4_r50_16xb2-50e_coco.py'

model = dict(
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(type='SameLevelDeformAttn'))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(type='PerLevelDeformAttn'))))
