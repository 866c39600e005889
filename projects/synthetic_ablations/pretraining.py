"""A stand-in for ImageNet pretraining on the synthetic shapes: count the shapes of each class.

The paper trains DETR and Deformable DETR from an ImageNet-pretrained
ResNet-50. Without downloads, the synthetic experiments can still give both
detectors the same pretrained start: :func:`pretrain_backbone` trains a
ResNet (the detector config's own ``model.backbone``) on an image-level task
of the training split, "how many shapes of each class are in this image",
with global average pooling of the last output map and one linear layer
(``fc``), mean squared error on the counts. Like image classification, the
task says nothing about where objects are, so it favours neither detector;
like ImageNet features, the result is a backbone that already sees shapes.

The backbone trained is the detector's (unwrapped from
``FeatureCachedBackbone`` when the config caches its features) with every
layer trainable and batch norm that learns (:func:`trainable_backbone_cfg`):
the detector may then freeze it (``frozen_stages=4``, frozen BN, as the
synthetic Table 2 rows do), the way a detector freezes an ImageNet backbone.

The checkpoint is a plain ResNet state dict with the ``fc.*`` head, the
layout of an ImageNet classifier: ``ResNet(init_cfg=dict(type='Pretrained',
checkpoint=...))`` loads it strictly and ignores ``fc.*``. It is written
with :func:`mmdeform.fileio.torch_save_atomic`, so a killed run leaves no
partial file.

Why a plain PyTorch loop and not mmengine's ``Runner``: the task holds the
whole split in memory as one array and draws each batch with replacement
(and its flips) from one seeded numpy generator, then steps AdamW with a
cosine schedule, about 20 lines. Through the Runner it would need a
registered dataset, sampler and model (a ``BaseModel`` with a loss dict) for
this one image-level task, and a different draw of batches would change the
recorded checkpoint and with it the convergence figures of the README.
"""
import hashlib
import json
import os.path as osp
import time
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from mmcv import imread
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.utils import mkdir_or_exist
from torch import nn

from mmdeform.fileio import load_weights_only, torch_save_atomic
from mmdeform.registry import MODELS
from projects.synthetic_ablations.feature_cache import tensor_bytes

PRETRAINING_KEYS = ('checkpoint', 'iters', 'batch_size', 'lr', 'weight_decay', 'seed')
WRAPPER = 'FeatureCachedBackbone'
# validation counting accuracy is logged (and recorded) every this many steps
EVAL_INTERVAL = 100


def detector_backbone_cfg(backbone_cfg: dict) -> dict:
    """The backbone inside ``FeatureCachedBackbone`` (the config itself otherwise)."""
    backbone_cfg = dict(backbone_cfg)
    return dict(backbone_cfg['backbone']) if backbone_cfg.get('type') == WRAPPER else backbone_cfg


def trainable_backbone_cfg(backbone_cfg: dict) -> dict:
    """The backbone to pretrain: the detector's, from scratch, everything trainable.

    Unwraps ``FeatureCachedBackbone``; sets ``init_cfg=None``,
    ``frozen_stages=-1``, ``norm_cfg=dict(type='BN', requires_grad=True)`` and
    ``norm_eval=False`` (from scratch, a ResNet learns only with batch norm
    that trains; frozen BN would be the identity). Sizes (depth, widths,
    stages) stay the detector's, so the checkpoint loads into it strictly.
    """
    return dict(detector_backbone_cfg(backbone_cfg), init_cfg=None, frozen_stages=-1,
                norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False)


def load_count_targets(data_root: str, split: str, num_classes: int):
    """Images (N, H, W, 3) uint8 BGR and per-class object counts (N, num_classes).

    Args:
        data_root (str): Folder with ``<split>.json`` (COCO) and ``<split>/``.
        split (str): ``'train'`` or ``'val'``.
        num_classes (int): Classes; category ids must be 0..num_classes-1 or
            1..num_classes (the order of ``categories`` in the file).

    Raises:
        FileNotFoundError: the annotation file or an image is missing (named).
        ValueError: images of different sizes, or more categories than
            ``num_classes``.
    """
    ann_file = osp.join(data_root, f'{split}.json')
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'pretrain_backbone: no annotation file {ann_file}')
    with open(ann_file) as f:
        coco = json.load(f)
    category_index = {c['id']: i for i, c in enumerate(coco['categories'])}
    if len(category_index) > num_classes:
        raise ValueError(f'pretrain_backbone: {ann_file} has {len(category_index)} categories, '
                         f'the model {num_classes} classes')
    image_index = {image['id']: i for i, image in enumerate(coco['images'])}
    counts = np.zeros((len(image_index), num_classes), np.float32)
    for ann in coco['annotations']:
        counts[image_index[ann['image_id']], category_index[ann['category_id']]] += 1
    images = []
    for image in coco['images']:
        path = osp.join(data_root, split, image['file_name'])
        if not osp.isfile(path):
            raise FileNotFoundError(f'pretrain_backbone: image {path} of {ann_file} is missing')
        images.append(imread(path))
        if images[-1].shape != images[0].shape:
            raise ValueError(f'pretrain_backbone: {path} is {images[-1].shape[:2]}, '
                             f'the first image {images[0].shape[:2]}; expected one size')
    return np.stack(images), counts


class CountingClassifier(nn.Module):
    """Backbone, global average pooling of its last map, linear layer ``fc``."""

    def __init__(self, backbone: nn.Module, in_channels: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(images)[-1].mean((2, 3)))


def _normalize(images: np.ndarray, preprocessor: nn.Module) -> torch.Tensor:
    """uint8 BGR (N, H, W, 3) -> float (N, 3, H, W) by the detector's own data preprocessor."""
    return preprocessor(dict(inputs=torch.from_numpy(images).permute(0, 3, 1, 2)))['inputs']


def pretraining_settings(cfg: Config) -> Optional[dict]:
    """``cfg.backbone_pretraining`` checked, or None when the config has none.

    Keys: ``checkpoint`` (the file ``model.backbone.init_cfg`` loads; must be
    the same path), ``iters``, ``batch_size``, ``lr``, ``weight_decay``,
    ``seed``.

    Raises:
        KeyError: an unknown or missing key, or a backbone ``init_cfg`` that
            does not load ``checkpoint`` (named).
    """
    settings = cfg.get('backbone_pretraining')
    if settings is None:
        return None
    settings = dict(settings)
    unknown = sorted(set(settings) - set(PRETRAINING_KEYS))
    missing = sorted(set(PRETRAINING_KEYS) - set(settings))
    if unknown or missing:
        raise KeyError(f'backbone_pretraining: unknown keys {unknown}, missing keys {missing}; '
                       f'expected {list(PRETRAINING_KEYS)}')
    init_cfg = detector_backbone_cfg(cfg.model.backbone).get('init_cfg') or {}
    if init_cfg.get('type') != 'Pretrained' or init_cfg.get('checkpoint') != settings['checkpoint']:
        raise KeyError(f'backbone_pretraining: the backbone init_cfg must be '
                       f"dict(type='Pretrained', checkpoint={settings['checkpoint']!r}), "
                       f'got {init_cfg}')
    return settings


def pretrain_backbone(cfg: Config, data_root: str, checkpoint: Optional[str] = None,
                      iters: int = 1000, batch_size: int = 32, lr: float = 1e-3,
                      weight_decay: float = 1e-4, seed: int = 0,
                      num_threads: Optional[int] = None) -> Dict[str, float]:
    """Train ``cfg.model.backbone`` from scratch to count shapes; save it (module docstring).

    Args:
        cfg (Config): Detector config: ``model.backbone`` (made trainable by
            :func:`trainable_backbone_cfg`), ``model.bbox_head.
            num_classes`` and ``model.data_preprocessor`` (which
            normalizes the images as for the detector) are used.
        data_root (str): Synthetic dataset folder (``train.json``,
            ``val.json``, ``train/``, ``val/``).
        checkpoint (str, optional): Output file; None trains without saving.
        iters (int): Optimizer steps (AdamW, cosine to 1 % of ``lr``).
        batch_size (int): Images per step, drawn with a horizontal flip.
        lr (float): Peak learning rate.
        weight_decay (float): AdamW weight decay.
        seed (int): Seed of the initial weights and the batches.
        num_threads (int, optional): ``torch.set_num_threads``.

    Returns:
        dict: ``val_mse`` and ``val_exact`` (share of validation images whose
        rounded counts are all right) before and after training (``*_init``),
        ``curve`` (both every ``EVAL_INTERVAL`` steps: ``step``, ``val_mse``,
        ``val_exact``) and ``seconds`` (evaluations included).
    """
    if iters < 1 or batch_size < 1:
        raise ValueError(f'pretrain_backbone: iters and batch_size must be >= 1, got '
                         f'{iters}, {batch_size}')
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    start = time.perf_counter()
    num_classes = cfg.model.bbox_head.num_classes
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    train_images, train_counts = load_count_targets(data_root, 'train', num_classes)
    val_images, val_counts = load_count_targets(data_root, 'val', num_classes)
    torch.manual_seed(seed)
    backbone = MODELS.build(trainable_backbone_cfg(cfg.model.backbone))
    backbone.init_weights()
    model = CountingClassifier(backbone, backbone.out_channels[-1], num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters, eta_min=lr / 100)
    val_x = _normalize(val_images, preprocessor)
    val_y = torch.from_numpy(val_counts)
    result = _evaluate(model, val_x, val_y, '_init')
    result['curve'] = []
    generator = np.random.default_rng(seed)
    model.train()
    for step in range(iters):
        index = generator.integers(0, len(train_images), batch_size)
        x = _normalize(train_images[index], preprocessor)
        flip = torch.from_numpy(generator.random(batch_size) < 0.5)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        loss = F.mse_loss(model(x), torch.from_numpy(train_counts[index]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % EVAL_INTERVAL == 0 or step + 1 == iters:
            point = _evaluate(model, val_x, val_y)
            result['curve'].append(dict(step=step + 1, **point))
            print_log(f'pretrain_backbone: step {step + 1}/{iters} loss {loss.item():.4f}, '
                      f'validation count MSE {point["val_mse"]:.3f}, all counts right '
                      f'{100 * point["val_exact"]:.1f} %', logger='current')
    result.update({k: v for k, v in result['curve'][-1].items() if k != 'step'})
    result['seconds'] = time.perf_counter() - start
    print_log(f'pretrain_backbone: validation count MSE {result["val_mse_init"]:.3f} -> '
              f'{result["val_mse"]:.3f}, all counts right {100 * result["val_exact_init"]:.1f} '
              f'-> {100 * result["val_exact"]:.1f} % in {result["seconds"]:.0f} s',
              logger='current')
    if checkpoint is not None:
        _save(checkpoint, model, dict(iters=iters, batch_size=batch_size, lr=lr,
                                      weight_decay=weight_decay, seed=seed,
                                      data_root=data_root, **result))
    return result


def _evaluate(model: CountingClassifier, val_x: torch.Tensor, val_y: torch.Tensor,
              suffix: str = '') -> Dict[str, float]:
    """``val_mse<suffix>`` and ``val_exact<suffix>`` (share of images with every count right)."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x) for x in val_x.split(64)])
    model.train()
    return {f'val_mse{suffix}': float(F.mse_loss(pred, val_y)),
            f'val_exact{suffix}': float((pred.round() == val_y).all(1).float().mean())}


def _save(checkpoint: str, model: CountingClassifier, meta: dict) -> None:
    """The backbone's state dict with the ``fc.*`` head, and ``meta``, written atomically."""
    state_dict = dict(model.backbone.state_dict())
    state_dict.update({f'fc.{k}': v for k, v in model.fc.state_dict().items()})
    mkdir_or_exist(osp.dirname(osp.abspath(checkpoint)))
    torch_save_atomic(dict(state_dict=state_dict,
                           meta=dict(task='per-class shape counts', **meta)), checkpoint)


def checkpoint_option(config: str, checkpoint: str) -> dict:
    """The ``cfg_options`` entry that points ``config``'s backbone at ``checkpoint``
    (inside ``FeatureCachedBackbone`` when the config caches its features)."""
    backbone = Config.fromfile(config).model.backbone
    prefix = 'model.backbone.backbone' if backbone.get('type') == WRAPPER else 'model.backbone'
    return {f'{prefix}.init_cfg.checkpoint': checkpoint}


def pretrained_meta(path: str, settings: dict, data_root: str) -> Optional[dict]:
    """The ``meta`` of ``path`` if it holds a backbone pretrained with ``settings`` on
    ``data_root`` (read once, weights-only), else None."""
    if not osp.isfile(path):
        return None
    try:
        meta = load_weights_only(path, map_location='cpu').get('meta', {})
    except Exception as error:  # a truncated or foreign file: train it again
        print_log(f'pretraining: cannot read {path} ({type(error).__name__}: {error}); '
                  'pretraining again', logger='current')
        return None
    wanted = {k: v for k, v in settings.items() if k != 'checkpoint'}
    matches = (all(meta.get(k) == v for k, v in wanted.items())
               and osp.abspath(meta.get('data_root', '')) == osp.abspath(data_root))
    return meta if matches else None


def weights_digest(path: str) -> str:
    """The first 16 hex digits of a SHA-256 over the checkpoint's weights: each tensor's name,
    dtype, shape and bytes, in name order. Which backbone a run used: pretraining on another
    CPU gives other weights (and other results), while the file's own bytes also hold the
    pretraining's ``meta`` (its seconds among them), so the same weights saved twice differ
    as files but not here."""
    checkpoint = load_weights_only(path, map_location='cpu')
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f'{path}: holds a {type(checkpoint).__name__}, not a state dict')
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f'{path}: state_dict[{name!r}] is a {type(tensor).__name__}, '
                             'not a tensor')
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()[:16]


def describe_backbones(pretrained: Dict[str, dict]) -> str:
    """``backbone_x.pth (weights sha256 0123...)`` for each pretrained file of
    :func:`prepare_pretrained_backbones`' result, one sentence ('' without any)."""
    files = {s['checkpoint']: s.get('weights_sha256', 'unknown') for s in pretrained.values()}
    if not files:
        return ''
    named = ', '.join(f'`{osp.basename(path)}` (weights sha256 {digest})'
                      for path, digest in files.items())
    return (f'Pretrained backbone: {named}; a backbone pretrained on another CPU has other '
            'weights, and the APs differ with them.')


def prepare_pretrained_backbones(configs: Dict[str, str], data_root: str,
                                 checkpoint_dir: Optional[str] = None,
                                 pretrain_iters: Optional[int] = None,
                                 num_threads: Optional[int] = None) -> Dict[str, dict]:
    """Train the backbone checkpoints the configs start from, unless already there.

    A config with ``backbone_pretraining`` (:func:`pretraining_settings`)
    starts from a backbone pretrained by shape counting on ``data_root``. The
    file is the config's ``checkpoint`` (or its file name under
    ``checkpoint_dir``), shared by every tool and row that names it, and
    reused while its recorded settings and data folder match; otherwise it
    is trained again. Configs naming the same file must give the same
    settings.

    Args:
        configs (dict[str, str]): row name -> config.
        data_root (str): Dataset folder.
        checkpoint_dir (str, optional): Where the checkpoints are kept
            (default: the paths the configs name).
        pretrain_iters (int, optional): Overrides the settings' ``iters``.
        num_threads (int, optional): Torch threads of the pretraining.

    Returns:
        dict: row name -> settings with ``checkpoint`` set to the file used,
        and ``seconds`` (0.0 when the file was reused), ``curve`` of its
        pretraining and ``weights_sha256`` (:func:`weights_digest`; rows
        without pretraining are absent).

    Raises:
        ValueError: two configs name one file with different settings.
    """
    by_row, by_file = {}, {}
    for name, config in configs.items():
        cfg = Config.fromfile(config)
        settings = pretraining_settings(cfg)
        if settings is None:
            continue
        if pretrain_iters is not None:
            settings['iters'] = pretrain_iters
        if checkpoint_dir is not None:
            settings['checkpoint'] = osp.join(checkpoint_dir,
                                              osp.basename(settings['checkpoint']))
        known = by_file.setdefault(settings['checkpoint'], (settings, cfg))[0]
        if known != settings:
            raise ValueError(f'pretraining: {config} pretrains {settings["checkpoint"]} with '
                             f'{settings}, another config with {known}')
        by_row[name] = settings
    done = {}
    for path, (settings, cfg) in by_file.items():
        meta = pretrained_meta(path, settings, data_root)
        if meta is not None:
            print(f'pretraining: reusing the pretrained backbone {path}', flush=True)
            done[path] = dict(seconds=0.0, curve=meta.get('curve', []),
                              weights_sha256=weights_digest(path))
            continue
        print(f'pretraining: the backbone into {path} ({settings["iters"]} iterations of '
              'shape counting)', flush=True)
        result = pretrain_backbone(cfg, data_root, num_threads=num_threads, **settings)
        print(f'pretraining: {path} in {result["seconds"]:.0f} s', flush=True)
        done[path] = dict(seconds=result['seconds'], curve=result['curve'],
                          weights_sha256=weights_digest(path))
    return {name: dict(settings, **done[settings['checkpoint']])
            for name, settings in by_row.items()}
