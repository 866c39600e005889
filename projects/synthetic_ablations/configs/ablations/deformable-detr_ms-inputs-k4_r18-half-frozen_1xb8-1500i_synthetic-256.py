# Table 2: multi-scale inputs without multi-scale attention, K=4. Only the encoder changes: a
# token samples its own level alone (SameLevelDeformAttn). The decoder keeps the full model's
# multi-scale deformable attention: a decoder that averages the levels with fixed weights 1/L
# (PerLevelDeformAttn) would take 3/4 of its signal from the coarser levels, a handicap the
# paper does not describe (projects/synthetic_ablations/README.md, "Within-level rows").
_base_ = './deformable-detr_ms-attn-k4_r18-half-frozen_1xb8-1500i_synthetic-256.py'

model = dict(encoder=dict(layer_cfg=dict(self_attn_cfg=dict(type='SameLevelDeformAttn'))))
