"""Inference API: build a detector from a config and run it on images.

    model = init_detector('configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                          'checkpoint.pth', device='cpu')
    sample = inference_detector(model, 'demo.jpg')            # one DetDataSample
    samples = inference_detector(model, [img_bgr, 'b.jpg'])    # a list, in input order

Images go through the config's test pipeline (its annotation loader
dropped, its image loader also accepting numpy arrays) and the model's data
preprocessor, then ``model.test_step``.

Batching never pads. Padding changes this architecture's output: the
ResNet's convolutions read the padded pixels near the image border (instead
of their own zero padding), the GroupNorm statistics of the multi-scale
projection include the padded cells, and the nearest-neighbour resized level
masks can disagree with the un-padded feature size. This is the official
model's behaviour (the parity tests keep it), so the model is not changed;
instead ``inference_detector`` batches only images whose pipeline output has
the same size, and runs images of different sizes in separate forward
passes. A batch therefore gives the same detections as one image at a time.
"""
import copy
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmcv.transforms import BaseTransform, Compose
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.logging import print_log
from mmengine.registry import init_default_scope

from mmdeform.engine import CfgOptionsAction, apply_cfg_options
from mmdeform.fileio import load_model_weights
from mmdeform.registry import DATASETS, MODELS, TRANSFORMS
from mmdeform.structures import DetDataSample

ImageType = Union[str, Path, np.ndarray]
# Pipeline steps that read annotations: inference has none.
_ANNOTATION_LOADERS = ('LoadAnnotations', )
_IMAGE_LOADERS = ('LoadImageFromFile', )


class LoadImageOrArray(BaseTransform):
    """Take ``results['img']`` when it is given (a numpy image), else load
    ``results['img_path']`` with ``loader`` (the config's image loader).

    Args:
        loader (callable): The config's image loading transform.

    Adds ``img`` (H, W, 3) uint8 BGR, ``img_shape`` and ``ori_shape`` (h, w).

    Raises:
        ValueError: an array that is not (H, W, 3).
    """

    def __init__(self, loader) -> None:
        self.loader = loader

    def transform(self, results: dict) -> dict:
        if results.get('img') is None:
            return self.loader(results)
        img = results['img']
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            shape = img.shape if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f'inference: an image array must be (H, W, 3) BGR, got {shape}')
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results


def _load_config(config: Union[str, Path, Config], cfg_options: Optional[dict]) -> Config:
    if isinstance(config, (str, Path)):
        if not Path(config).is_file():
            raise FileNotFoundError(f'init_detector: config file {config} does not exist')
        cfg = Config.fromfile(str(config))
    elif isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        raise TypeError(f'init_detector: config must be a path or a Config, got '
                        f'{type(config).__name__}')
    apply_cfg_options(cfg, cfg_options)
    if 'model' not in cfg:
        raise KeyError(f'init_detector: the config has no "model" ({config})')
    return cfg


def dataset_meta_from_config(cfg: Config) -> Optional[dict]:
    """``dict(classes=...)`` of the config's test dataset: its ``metainfo``,
    else the dataset class's ``METAINFO``; None if neither names classes."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None and isinstance(dataset.get('type'), str):
        dataset_cls = DATASETS.get(dataset['type'])
        classes = getattr(dataset_cls, 'METAINFO', {}).get('classes')
    return None if classes is None else dict(classes=tuple(classes))


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: str,
                            strict: bool = True, hint: Optional[str] = None) -> dict:
    """Load ``checkpoint`` (``torch.load(weights_only=True)``) into ``model``;
    returns the checkpoint's ``meta`` (empty if none).

    Args:
        model (nn.Module): Receives the weights.
        checkpoint (str): Local checkpoint file.
        strict (bool): Refuse any missing, unexpected or differently shaped
            tensor (False: load the matching ones and warn).
        hint (str, optional): Appended to a mismatch error (default: how to
            load partially, ``--partial-load``).

    Raises:
        CheckpointFormatError: an empty, damaged or non-checkpoint file.
        CheckpointRefusedError: the file needs globals outside the allow-list.
        CheckpointMismatchError: ``strict`` and the weights do not match the
            model (names the first mismatching parameter and the keys).
    """
    if hint is None:
        hint = ('. Pass --partial-load (strict=False) to load only the matching tensors'
                if strict else '')
    ckpt = load_model_weights(model, checkpoint, strict=strict, map_location='cpu', hint=hint)
    meta = ckpt.get('meta')
    return meta if isinstance(meta, dict) else {}


def init_detector(config: Union[str, Path, Config], checkpoint: Optional[str] = None,
                  device: Union[str, torch.device] = 'cpu',
                  cfg_options: Optional[dict] = None,
                  strict: bool = True, mismatch_hint: Optional[str] = None) -> torch.nn.Module:
    """Build the detector of ``config`` and load its weights.

    Args:
        config (str | Path | Config): Config file or object (copied).
        checkpoint (str, optional): Weights, loaded with the project's safe
            loader (``weights_only=True``). Without it the weights are the
            random initialization (a warning says so).
        device (str | torch.device): Where the model runs.
        cfg_options (dict, optional): Config overrides, as ``--cfg-options``
            (checked as there, see :func:`mmdeform.engine.apply_cfg_options`).
        strict (bool): The checkpoint must match the model exactly (False:
            ``--partial-load``, load the matching tensors and warn).
        mismatch_hint (str, optional): Appended to a mismatch error instead
            of the ``--partial-load`` hint (for tools without that option).

    Returns:
        nn.Module: The detector in eval mode, with ``cfg`` (the config) and
        ``dataset_meta`` (``classes`` from the checkpoint's meta, else from
        the config's test dataset; None if neither has them).
    """
    cfg = _load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdeform'))
    model = MODELS.build(cfg.model)
    meta = {}
    if checkpoint is not None:
        meta = load_checkpoint_weights(model, str(checkpoint), strict=strict,
                                       hint=mismatch_hint)
    else:
        print_log('init_detector: no checkpoint given; the model has random weights',
                  logger='current', level=logging.WARNING)
    dataset_meta = meta.get('dataset_meta') or dataset_meta_from_config(cfg)
    model.cfg = cfg
    model.dataset_meta = dataset_meta
    return model.to(device).eval()


def build_inference_pipeline(cfg: Config) -> Compose:
    """The config's test pipeline for inference.

    Annotation loaders are dropped and the image loader is wrapped in
    :class:`LoadImageOrArray`, so that a step receives either
    ``dict(img_path=...)`` or ``dict(img=array)``.

    Raises:
        KeyError: the config has no ``test_dataloader.dataset.pipeline``.
        ValueError: the pipeline does not start with an image loader.
    """
    try:
        steps = list(cfg.test_dataloader.dataset.pipeline)
    except AttributeError:
        raise KeyError('inference: the config has no test_dataloader.dataset.pipeline') from None
    steps = [step for step in steps if step.get('type') not in _ANNOTATION_LOADERS]
    if not steps or steps[0].get('type') not in _IMAGE_LOADERS:
        raise ValueError(f'inference: the test pipeline must start with one of '
                         f'{_IMAGE_LOADERS}, got {[s.get("type") for s in steps]}')
    init_default_scope(cfg.get('default_scope', 'mmdeform'))
    transforms = [TRANSFORMS.build(step) for step in steps]
    return Compose([LoadImageOrArray(transforms[0])] + transforms[1:])


def _results_of(image: ImageType, index: int) -> Dict:
    if isinstance(image, np.ndarray):
        return dict(img=image, img_id=index)
    if isinstance(image, (str, Path)):
        return dict(img_path=str(image), img_id=index)
    raise TypeError(f'inference: images must be paths or numpy arrays, got '
                    f'{type(image).__name__} at index {index}')


def same_size_batches(sizes: Sequence[tuple], batch_size: Optional[int]) -> List[List[int]]:
    """Indices grouped by equal size (first-seen order), in chunks of
    ``batch_size`` (None: a whole group at once)."""
    groups: Dict[tuple, List[int]] = OrderedDict()
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    step = batch_size or len(sizes)
    return [indices[i:i + step] for indices in groups.values()
            for i in range(0, len(indices), step)]


def prepare_inputs(model: torch.nn.Module, images: Sequence[ImageType]) -> List[dict]:
    """Run the inference pipeline on each image.

    Returns:
        list[dict]: per image ``inputs`` (3, h, w) uint8 and
        ``data_samples`` (a :class:`DetDataSample` with its meta).
    """
    if not hasattr(model, 'cfg'):
        raise AttributeError('inference: the model has no cfg; build it with init_detector')
    pipeline = build_inference_pipeline(model.cfg)
    return [pipeline(_results_of(image, i)) for i, image in enumerate(images)]


def inference_detector(model: torch.nn.Module,
                       images: Union[ImageType, Sequence[ImageType]],
                       batch_size: Optional[int] = None
                       ) -> Union[DetDataSample, List[DetDataSample]]:
    """Detect objects in one image or a list of images.

    Args:
        model (nn.Module): A detector from :func:`init_detector`.
        images: A path, an (H, W, 3) uint8 BGR array, or a list of them.
        batch_size (int, optional): Largest batch of one forward pass;
            images of different sizes never share one (module docstring).

    Returns:
        DetDataSample | list[DetDataSample]: per image ``pred_instances``
        with ``bboxes`` (k, 4) absolute xyxy in original image pixels,
        ``scores`` (k,) and ``labels`` (k,), sorted by score; a list (input
        order) when ``images`` is a list.
    """
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        raise ValueError('inference_detector: no images given')
    if batch_size is not None and batch_size < 1:
        raise ValueError(f'inference_detector: batch_size must be >= 1, got {batch_size}')
    packed = prepare_inputs(model, items)
    results: List[Optional[DetDataSample]] = [None] * len(items)
    sizes = [tuple(p['inputs'].shape[-2:]) for p in packed]
    for indices in same_size_batches(sizes, batch_size):
        with torch.no_grad():
            outputs = model.test_step(pseudo_collate([packed[i] for i in indices]))
        for index, output in zip(indices, outputs):
            results[index] = output
    return results[0] if single else results


def add_model_arguments(parser, checkpoint: str = 'required') -> None:
    """Add ``config``, ``checkpoint`` (positional if ``'required'``, else
    ``--checkpoint``), ``--device``, ``--cfg-options`` and ``--partial-load``
    to an argparse parser (the arguments of :func:`init_detector`)."""
    parser.add_argument('config', help='config file')
    if checkpoint == 'required':
        parser.add_argument('checkpoint', help='checkpoint file (loaded weights-only)')
    else:
        parser.add_argument('--checkpoint', help='checkpoint file (default: random weights)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda, cuda:1')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default={},
                        help='override existing config entries, e.g. '
                        'model.test_cfg.max_per_img=50')
    parser.add_argument('--partial-load', action='store_true',
                        help='load only the checkpoint tensors whose names and shapes match '
                        'the model (default: any difference is an error)')


def init_detector_from_args(args) -> torch.nn.Module:
    """:func:`init_detector` with the arguments of :func:`add_model_arguments`."""
    return init_detector(args.config, args.checkpoint, device=args.device,
                         cfg_options=args.cfg_options,
                         strict=not getattr(args, 'partial_load', False))
