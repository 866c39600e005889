# Ablation: single-scale input (C5, stride 32, one level), K=4: the single-scale Deformable
# DETR of configs/deformable_detr.
_base_ = '../deformable_detr/deformable-detr-single-scale_r50_16xb2-50e_coco.py'
