# Ablation (paper Table 2): multi-scale inputs, multi-scale deformable attention, K=4 sampling
# points, no FPN: the Deformable DETR of configs/deformable_detr. Every other row of
# configs/ablations changes this one in a few keys.
_base_ = '../deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
