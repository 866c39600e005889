# Baseline for the convergence comparison: DETR-style dense multi-head attention (encoder
# self-attention over all C5 tokens, decoder cross-attention to all of them) on the
# single-scale input, with the same layers, widths, queries, losses and 50-epoch schedule.
# Boxes are still predicted relative to the learned reference points.
_base_ = './deformable-detr_ss-k4_r50_16xb2-50e_coco.py'

model = dict(encoder=dict(type='DenseEncoder'), decoder=dict(type='DenseDecoder'))
