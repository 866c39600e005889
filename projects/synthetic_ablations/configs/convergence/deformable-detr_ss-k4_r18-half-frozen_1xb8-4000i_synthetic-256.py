# Convergence run (tools/run_convergence.py): the single-scale Deformable DETR row of Table 2
# (C5, 8x8 tokens, K=4, the frozen pretrained backbone every row shares) at a constant learning
# rate after the warm-up; detr_ss_* is DETR on the same input. The learning rate does not depend
# on the run's length, so the curve up to any iteration is that of a run stopped there.
_base_ = '../ablations/deformable-detr_ss-k4_r18-half-frozen_1xb8-1500i_synthetic-256.py'

# a constant rate: 1e-3, the rate the single-scale row was calibrated at (the table's 2e-3 comes
# with a x0.1 decay and was chosen for the multi-scale rows)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
# evaluated every 100 iterations up to 800, then every 400: the comparison at equal final AP
# counts each model's iterations to 90 % of DETR's plateau (a few AP), which this model passes
# within its first 400 iterations; one evaluation at 400 would leave only a bound.
# 4000 iterations scheduled, half of DETR's: the target is 90 % of the *lower* plateau, DETR's, so
# this model's plateau only has to be reached (the gate below) and to lie above DETR's; at a
# constant rate the curve up to 4000 is that of the 8000-iteration runs (31.8-34.0 AP at 8000, 3
# seeds; 26.4-29.1 here), and the comparison fits its 60-minute budget (52 min, README)
train_cfg = dict(max_iters=4000, val_interval=100, dynamic_intervals=[(800, 400)], _delete_=True,
                 type='IterBasedTrainLoop')
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50)]
default_hooks = dict(checkpoint=dict(interval=4000))
# equal final AP needs both models at a plateau: a run whose last two evaluations are not within
# the gate (1.5 AP and 10 % of their mean) trains on, 400 iterations at a time at the same constant
# rate, up to twice the schedule (8000). The rate does not change, so the curve up to any
# iteration is still that of a run stopped there.
custom_hooks = [dict(type='PlateauExtensionHook', max_extra_fraction=1.0)]
