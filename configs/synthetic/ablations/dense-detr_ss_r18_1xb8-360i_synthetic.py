# Baseline for the convergence comparison: DETR-style dense multi-head attention (encoder
# self-attention over all tokens, decoder cross-attention to all of them) on the single-scale
# input, with the layers, widths, queries, losses and schedule of the deformable rows.
_base_ = './deformable-detr_ss-k4_r18_1xb8-360i_synthetic.py'

model = dict(
    encoder=dict(_delete_=True, type='DenseEncoder', num_layers=1, num_levels=1,
                 layer_cfg=dict(embed_dims=128, num_heads=8, feedforward_dims=512, dropout=0.0)),
    decoder=dict(_delete_=True, type='DenseDecoder', num_layers=3, num_levels=1,
                 layer_cfg=dict(embed_dims=128, num_heads=8, feedforward_dims=512, dropout=0.0)))
