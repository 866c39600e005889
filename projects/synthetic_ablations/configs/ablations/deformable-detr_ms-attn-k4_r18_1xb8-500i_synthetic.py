# Ablation base on synthetic shapes (tools/run_ablations.py): the paper's plain Deformable DETR of
# Table 2 (learned queries, no two-stage, no box refinement; multi-scale inputs, multi-scale
# deformable attention, K=4, no FPN) with a ResNet-18 whose batch norm trains from scratch. Every
# other file here changes one or two model keys of this one; all rows train 500 iterations of 8
# images on the same data. Calibration: projects/synthetic_ablations/README.md, "Ablations".
# The list form takes the demo's data, pipelines and optimizer and replaces its model variant.
_base_ = ['../deformable-detr-refine-twostage_r18_1xb8-800i_synthetic.py']

# ---- data: 128 px images with 1-8 shapes of 8-64 px sides (~60 % COCO-small, no large) -------
data_root = 'data/synthetic_ablations/'
synthetic_data = dict(num_train=2000, num_val=250, image_size=128, seed=0, ext='png',
                      min_object_size=8, max_object_fraction=0.5, max_objects=8)
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

# ---- model: ResNet-18 to C5 with trainable BN (strides 8, 16, 32) + one stride-2 level (64):
# 16x16 + 8x8 + 4x4 + 2x2 tokens of 128 channels; 1 encoder layer; 50 learned queries and
# reference points; 3 decoder layers with fixed references and shared heads ------------------
model = dict(
    backbone=dict(out_indices=(1, 2, 3), norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=False),
    neck=dict(num_extra_levels=1),
    query_generator=dict(type='LearnedQueries'),
    decoder=dict(type='DeformableDecoder'))

# ---- schedule: 500 iterations, 20-iteration warm-up then cosine; 5 evaluations ---------------
train_cfg = dict(max_iters=500, val_interval=100)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=500, eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=500))
