# Ablation: multi-scale inputs without multi-scale attention, K=4: encoder tokens sample only
# their own level (SameLevelDeformAttn); decoder queries sample each level on its own and
# average the levels (PerLevelDeformAttn).
_base_ = './deformable-detr_ms-attn-k4_r18_1xb8-500i_synthetic.py'

model = dict(
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(type='SameLevelDeformAttn'))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(type='PerLevelDeformAttn'))))
