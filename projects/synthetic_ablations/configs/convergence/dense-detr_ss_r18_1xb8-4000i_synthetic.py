# Baseline of the convergence run: DETR-style dense multi-head attention (encoder self-attention
# over all tokens, decoder cross-attention to all of them) on the single-scale input, with the
# layers, widths, queries, losses, pretrained backbone and schedule of the single-scale
# deformable model beside it, and DETR's own learning rate: 1e-4 (the paper trains DETR at 1e-4,
# Deformable DETR at 2e-4). At 1e-3 the dense model did not learn (0.0-0.3 AP for 3000
# iterations from scratch; 0.1-0.2 AP at 300 with the pretrained backbone, against 0.3-0.4 at
# 1e-4); projects/synthetic_ablations/README.md, "Convergence".
_base_ = './deformable-detr_ss-k4_r18_1xb8-4000i_synthetic.py'

model = dict(encoder=dict(type='DenseEncoder'), decoder=dict(type='DenseDecoder'))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
