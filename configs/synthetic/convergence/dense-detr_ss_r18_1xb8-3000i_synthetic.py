# Baseline of the convergence run: DETR-style dense multi-head attention (encoder self-attention
# over all tokens, decoder cross-attention to all of them) on the single-scale input, with the
# layers, widths, queries, losses and schedule of the single-scale deformable model beside it.
_base_ = './deformable-detr_ss-k4_r18_1xb8-3000i_synthetic.py'

model = dict(encoder=dict(type='DenseEncoder'), decoder=dict(type='DenseDecoder'))
