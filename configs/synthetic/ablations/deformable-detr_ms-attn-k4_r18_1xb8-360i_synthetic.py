# Ablation base on synthetic shapes (tools/run_ablations.py): multi-scale inputs, multi-scale
# deformable attention, K=4, no FPN. Every other file here changes a few keys of this one; all
# rows train 360 iterations of 8 images from scratch on the same data. Why the model is the
# demo's rather than the paper's exact Table 2 model: configs/synthetic/README.md, "Ablations".
_base_ = '../deformable-detr-refine-twostage_r18_1xb8-800i_synthetic.py'

# ---- data: 128 px images with 1-8 shapes of 8-64 px sides (~60 % COCO-small, no large) -------
data_root = 'data/synthetic_ablations/'
synthetic_data = dict(num_train=2000, num_val=250, image_size=128, seed=0, ext='png',
                      min_object_size=8, max_object_fraction=0.5, max_objects=8)
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

# ---- model: ResNet-18 to C4 (strides 8, 16) + 2 stride-2 levels (32, 64) = 4 levels of 128
# channels; 1 encoder layer, 50 two-stage queries, 3 decoder layers with fixed references ----
model = dict(backbone=dict(out_indices=(1, 2)), decoder=dict(type='DeformableDecoder'))

# ---- schedule: 360 iterations, 20-iteration warm-up then cosine; 4 evaluations ---------------
train_cfg = dict(max_iters=360, val_interval=90)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=360, eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=360))
