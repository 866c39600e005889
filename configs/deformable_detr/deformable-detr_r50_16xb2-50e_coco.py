# Deformable DETR (Zhu et al., 2020), ResNet-50, 4 feature levels, 300 learned queries.
# Model only; dataset, schedule and runtime come from configs/_base_.
_base_ = [
    '../_base_/datasets/coco_detection.py', '../_base_/schedules/schedule_50e.py',
    '../_base_/default_runtime.py'
]
default_scope = 'mmdeform'

model = dict(
    type='DeformableDETR',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1,
        pad_value=0),
    backbone=dict(
        type='ResNet',
        depth=50,
        out_indices=(1, 2, 3),  # C3, C4, C5 (strides 8, 16, 32)
        frozen_stages=1,
        dilate_last_stage=False,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://download.pytorch.org/models/resnet50-0676ba61.pth')),
    neck=dict(
        type='MultiScaleProjection',
        in_channels=[512, 1024, 2048],
        out_channels=256,
        num_extra_levels=1,  # stride-2 3x3 conv on C5 -> stride 64
        num_groups=32),
    positional_encoding=dict(
        type='SinePositionalEncoding',
        num_feats=128,
        temperature=10000,
        normalize=True,
        offset=-0.5),
    encoder=dict(
        type='DeformableEncoder',
        num_layers=6,
        num_levels=4,
        layer_cfg=dict(embed_dims=256, num_heads=8, num_points=4, feedforward_dims=1024,
                       dropout=0.1)),
    query_generator=dict(type='LearnedQueries', num_queries=300, embed_dims=256),
    decoder=dict(
        type='DeformableDecoder',
        num_layers=6,
        num_levels=4,
        layer_cfg=dict(embed_dims=256, num_heads=8, num_points=4, feedforward_dims=1024,
                       dropout=0.1)),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=80,
        embed_dims=256,
        num_layers=6,
        share_branches=True,
        init_wh_bias=-2.0,
        loss_cls=dict(type='FocalLoss', alpha=0.25, gamma=2.0, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0),
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='GIoUCost', weight=2.0),
            ]),
        num_predictions=100))
