# The paper's schedule: AdamW, 50 epochs, learning rate x0.1 after epoch 40, total batch 32.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    # A key matches every parameter whose full name contains it: the backbone and the
    # linear layers that predict sampling offsets and reference points learn 10x slower.
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1),
        }))

max_epochs = 50
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[40],
         gamma=0.1)
]

# The learning rate above is for 16 GPUs x 2 images; --auto-scale-lr scales it linearly
# to the actual total batch size.
auto_scale_lr = dict(base_batch_size=32, enable=False)
