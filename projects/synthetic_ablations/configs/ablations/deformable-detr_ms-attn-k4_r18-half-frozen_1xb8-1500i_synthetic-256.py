# Table 2 on synthetic shapes (tools/run_ablations.py), the base row: the paper's plain Deformable
# DETR (learned queries and reference points, no two-stage, no box refinement; multi-scale
# inputs, multi-scale deformable attention, K=4, no FPN) at small width. Every other row here
# changes one or two model keys of this one; all rows train the same iterations on the same data
# from the same frozen, pretrained backbone. Calibration: projects/synthetic_ablations/README.md.
# The list form takes the demo's pipelines, loaders and runtime and replaces the rest.
_base_ = ['../deformable-detr-refine-twostage_r18_1xb8-800i_synthetic.py']
# registers FeatureCachedBackbone and PlateauExtensionHook (the tools run from the checkout's root)
custom_imports = dict(imports=['projects.synthetic_ablations.feature_cache',
                               'projects.synthetic_ablations.plateau'],
                      allow_failed_imports=False)

# ---- data: 256 px images with 1-8 shapes whose COCO size class (by area) is drawn first with
# COCO's shares (small / medium / large 0.41 / 0.34 / 0.25), sides 8-224 px --------------------
data_root = 'data/synthetic_ablations_256/'
synthetic_data = dict(num_train=2000, num_val=300, image_size=256, seed=0, ext='png',
                      min_object_size=8, max_object_fraction=0.875, max_objects=8,
                      size_class_fractions=(0.41, 0.34, 0.25))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

# ---- backbone: a half-width ResNet-18 (base_channels=32), every stage built in every row,
# pretrained once by counting the shapes of each class (projects.synthetic_ablations.pretraining;
# the tools train it when the file is missing or was made with other settings), then frozen with
# frozen BN (the paper's rows share one ImageNet backbone); frozen, its features are cached per
# image (FeatureCachedBackbone). Multi-scale: C3-C5 (strides 8, 16, 32) + one stride-2 level
# (64): 32x32 + 16x16 + 8x8 + 4x4 tokens of 64 channels.
backbone_checkpoint = 'work_dirs/synthetic_ablations/backbone_r18-half_counting-256.pth'
backbone_pretraining = dict(checkpoint=backbone_checkpoint, iters=400, batch_size=32, lr=1e-3,
                            weight_decay=1e-4, seed=0)
layer_cfg = dict(num_heads=8, feedforward_dims=256, dropout=0.0)
model = dict(
    num_queries=100,
    backbone=dict(
        _delete_=True,
        type='FeatureCachedBackbone',
        backbone=dict(type='ResNet', depth=18, base_channels=32, out_indices=(1, 2, 3),
                      frozen_stages=4, norm_cfg=dict(type='FrozenBN'), norm_eval=True,
                      init_cfg=dict(type='Pretrained', checkpoint=backbone_checkpoint))),
    neck=dict(out_channels=64, num_extra_levels=1),
    encoder=dict(num_layers=2, layer_cfg=layer_cfg),
    query_generator=dict(type='LearnedQueries'),
    decoder=dict(type='DeformableDecoder', num_layers=3, layer_cfg=layer_cfg),
    test_cfg=dict(max_per_img=100))

# ---- optimizer: AdamW at 2e-3, the paper's 0.1 multipliers on the sampling offsets and the
# reference points (MMDetection's custom_keys; the frozen backbone gets no gradient), clipping at
# 0.1. Calibration (one seed, 1200 iterations): ms-attn-k4 38.2 AP at 2e-3, 34.8 at 1e-3 ---------
optim_wrapper = dict(
    optimizer=dict(lr=2e-3),
    paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1),
                                    'reference_points': dict(lr_mult=0.1)}))

# ---- schedule: 1500 iterations of 8 images, 50-iteration linear warm-up, x0.1 at 60 % (900);
# evaluations every 20 % up to the decay, then every 10 % (7 in all). With the decay at 80 % the
# multi-scale rows still rose 1.5-2 AP between the last two evaluations; at 2000 iterations with
# the decay at 60 % they settled but the table took ~108 min on the 2-core machine, over its
# 90-min budget; 1500 keeps the same shape (600 iterations at the decayed rate) within it (README)
train_cfg = dict(max_iters=1500, val_interval=300,
                 dynamic_intervals=[(900, 150)])
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=1500, milestones=[900],
         gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=1500))
# rows are judged at a plateau: a run whose last two evaluations differ by more than 1.5 AP trains
# on at the decayed rate, one evaluation interval (150) at a time, until they do or 450 extra
# iterations are spent (projects/synthetic_ablations/plateau.py); a settled run is untouched
custom_hooks = [dict(type='PlateauExtensionHook', max_extra_fraction=0.3)]
