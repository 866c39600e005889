# Baseline for the convergence comparison: DETR-style dense multi-head attention (encoder
# self-attention over all tokens, decoder cross-attention to all of them) on the single-scale
# input, with the layers, widths, queries, losses and schedule of the deformable rows.
_base_ = './deformable-detr_ss-k4_r18_1xb8-360i_synthetic.py'

model = dict(encoder=dict(type='DenseEncoder'), decoder=dict(type='DenseDecoder'))
