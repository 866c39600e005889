# A tiny Deformable DETR on the synthetic shapes dataset, for the tool tests.
# It inherits the real config (model, COCO dataset, 50-epoch schedule, runtime) and shrinks
# it: ResNet-18 C4+C5 (2 levels) without pretrained weights, 32 channels, 1 encoder and 1
# decoder layer, 10 queries, 64x64 images read from ./data/synthetic/ (run from a folder
# where make_synthetic_coco wrote them).
_base_ = '../../configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'

classes = ('circle', 'square', 'triangle', 'cross')  # mmdeform.datasets.SYNTHETIC_CLASSES
layer_cfg = dict(num_heads=4, num_points=2, feedforward_dims=64, dropout=0.0)
model = dict(
    num_queries=10,
    backbone=dict(depth=18, out_indices=(2, 3), frozen_stages=-1, init_cfg=None),
    neck=dict(out_channels=32, num_extra_levels=0, num_groups=8),
    encoder=dict(num_layers=1, layer_cfg=layer_cfg),
    decoder=dict(num_layers=1, layer_cfg=layer_cfg),
    bbox_head=dict(num_classes=4),
    test_cfg=dict(max_per_img=10))

data_root = 'data/synthetic/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(56, 96), (64, 96)], keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(96, 64), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='train.json', data_prefix=dict(img_path='train/'),
                 metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='val.json', data_prefix=dict(img_path='val/'),
                 metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

max_epochs = 2
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[1], gamma=0.1)
]
default_hooks = dict(logger=dict(interval=1))
log_processor = dict(window_size=1)
randomness = dict(seed=0)
