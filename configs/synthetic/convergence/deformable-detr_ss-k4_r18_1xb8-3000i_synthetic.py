# Convergence run (tools/run_convergence.py): the single-scale deformable row of the ablations
# with a constant learning rate after the warm-up, evaluated every 100 iterations for at most
# 3000, to count the iterations it needs to reach a fixed AP; dense-detr_ss_* is the DETR
# baseline on the same input. The learning rate does not depend on the run's length, so a run
# stopped at the target has followed the same path as a longer one.
_base_ = '../ablations/deformable-detr_ss-k4_r18_1xb8-300i_synthetic.py'

train_cfg = dict(max_iters=3000, val_interval=100)
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20)]
default_hooks = dict(checkpoint=dict(interval=3000))
