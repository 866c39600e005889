# Ablation: single-scale input, K=4: C3 alone (stride 8, 16 x 16 tokens), one level. The paper
# uses C5 (stride 32, ~25 x 38 tokens on COCO); at 128 px C5 is 4 x 4 and C4 8 x 8, and neither
# learned within the budget (projects/synthetic_ablations/README.md, "Ablations"), so the single
# level here is the finest one: the multi-scale rows add coarser levels to it.
_base_ = './deformable-detr_ms-attn-k4_r18_1xb8-500i_synthetic.py'

model = dict(backbone=dict(out_indices=(1, )), neck=dict(num_extra_levels=0))
