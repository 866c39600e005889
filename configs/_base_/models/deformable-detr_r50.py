# Deformable DETR (Zhu et al., 2020): ResNet-50, 4 feature levels, 300 learned queries, 80
# classes. The model only; configs/deformable_detr/ adds data, schedule and runtime.
# Every size is written once: the detector gives the neck the backbone's channels, and the
# encoder, decoder, positional encoding, query generator and head the neck's channels and level
# count, the head's classes and the decoder's layer count (see DeformableDETR).
model = dict(
    type='DeformableDETR',
    num_queries=300,
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
        out_channels=256,  # embed_dims of everything after the neck
        num_extra_levels=1,  # stride-2 3x3 conv on C5 -> stride 64: 4 levels
        num_groups=32),
    positional_encoding=dict(
        type='SinePositionalEncoding',
        temperature=10000,
        normalize=True,
        offset=-0.5),
    # num_points=4 sampling points per head and level is the layers' default
    encoder=dict(
        type='DeformableEncoder',
        num_layers=6,
        layer_cfg=dict(num_heads=8, feedforward_dims=1024, dropout=0.1)),
    query_generator=dict(type='LearnedQueries'),
    decoder=dict(
        type='DeformableDecoder',
        num_layers=6,
        layer_cfg=dict(num_heads=8, feedforward_dims=1024, dropout=0.1)),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=80,
        loss_cls=dict(type='FocalLoss', alpha=0.25, gamma=2.0, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
            ])),
    test_cfg=dict(max_per_img=100))
