# Convergence run (tools/run_convergence.py): the single-scale deformable row of the ablations
# with a constant learning rate after the warm-up, evaluated every 50 iterations for at most
# 4000, to count the iterations it needs to reach a fixed AP; dense-detr_ss_* is the DETR
# baseline on the same input. The learning rate does not depend on the run's length, so a run
# stopped at the target has followed the same path as a longer one.
_base_ = '../ablations/deformable-detr_ss-k4_r18_1xb8-500i_synthetic.py'

# ---- both models start from the same pretrained backbone, as in the paper (there: ImageNet).
# Here: the row's ResNet-18 (to C3, trainable BN) trained from scratch to count the shapes of
# each class in the training images (projects.synthetic_ablations.pretraining), an image-level task
# that favours neither detector. tools/run_convergence.py trains it into its work dir when the
# file is missing or was made with other settings.
backbone_checkpoint = 'work_dirs/convergence/backbone_r18-c3_counting.pth'
backbone_pretraining = dict(checkpoint=backbone_checkpoint, iters=300, batch_size=32, lr=1e-3,
                            weight_decay=1e-4, seed=0)
model = dict(backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained',
                                         checkpoint=backbone_checkpoint)))

train_cfg = dict(max_iters=4000, val_interval=50)
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20)]
default_hooks = dict(checkpoint=dict(interval=4000))
