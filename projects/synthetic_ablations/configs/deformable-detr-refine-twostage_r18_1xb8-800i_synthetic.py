# `make demo`: a small two-stage Deformable DETR with box refinement, trained from scratch on the
# synthetic shapes dataset (mmdeform.datasets.synthetic) with 2 CPU cores: bbox mAP ~0.69 in about
# 5 minutes. tools/demo.py generates the data described by `synthetic_data`, trains, evaluates
# and plots the curves; projects/synthetic_ablations/README.md says what was tried to get there.
_base_ = ['../../../configs/_base_/models/deformable-detr_r50.py',
          '../../../configs/_base_/default_runtime.py']

# ---- data: the generator's defaults: 128 px images with 1-5 shapes of 8-64 px (~60 % COCO
# "small"), 4 classes, random colours on gradient backgrounds, overlaps up to a quarter ---------
data_root = 'data/synthetic/'
classes = ('circle', 'square', 'triangle', 'cross')
synthetic_data = dict(num_train=2000, num_val=200, image_size=128, seed=0, ext='png',
                      min_object_size=8, max_object_fraction=0.5, max_objects=5)

# ---- model: the base Deformable DETR with two-stage queries and box refinement, shrunk:
# ResNet-18 stem..layer2 -> 3 levels (strides 8, 16, 32) of 128 channels, 1 encoder layer,
# 50 queries, 3 refining decoder layers, no dropout -------------------------------------------
layer_cfg = dict(num_heads=8, feedforward_dims=512, dropout=0.0)
model = dict(
    num_queries=50,
    # From scratch (no download), nothing frozen; layer3 and layer4 are not built.
    backbone=dict(depth=18, out_indices=(1, ), frozen_stages=-1, init_cfg=None),
    neck=dict(out_channels=128, num_extra_levels=2),  # stride-2 3x3 convs: strides 16 and 32
    encoder=dict(num_layers=1, layer_cfg=layer_cfg),
    query_generator=dict(type='TwoStageProposals'),
    decoder=dict(type='RefineDeformableDecoder', num_layers=3, layer_cfg=layer_cfg),
    bbox_head=dict(num_classes=4),  # the 4 classes above
    test_cfg=dict(max_per_img=50))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs'),
]
# num_workers=0: loading 8 PNGs of 128 px in the main process takes ~2 % of a step.
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        ann_file='train.json',
        data_prefix=dict(img_path='train/'),
        metainfo=dict(classes=classes),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        ann_file='val.json',
        data_prefix=dict(img_path='val/'),
        metainfo=dict(classes=classes),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file='data/synthetic/val.json', metric='bbox')
test_evaluator = val_evaluator

# ---- schedule: 800 iterations of 8 images (3.2 epochs), AdamW 1e-3, 20-iteration warm-up,
# cosine decay; COCO evaluation every 200 iterations (4 points on the mAP curve) ------------
train_cfg = dict(type='IterBasedTrainLoop', max_iters=800, val_interval=200)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=800, eta_min=1e-5),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=800, max_keep_ckpts=1))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
randomness = dict(seed=0)
