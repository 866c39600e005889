# Convergence run (tools/run_ablations.py --convergence): the single-scale deformable row of the
# ablations trained 2000 iterations with an evaluation every 200, to count the iterations it
# needs to reach a fixed AP; dense-detr_ss_* is the DETR baseline on the same input.
_base_ = '../ablations/deformable-detr_ss-k4_r18_1xb8-300i_synthetic.py'

train_cfg = dict(max_iters=2000, val_interval=200)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=2000, eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=2000))
