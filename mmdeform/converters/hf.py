"""Read HuggingFace transformers' ``DeformableDetrForObjectDetection`` checkpoints.

A transformers checkpoint folder holds ``config.json`` (a ``DeformableDetrConfig``
as a dict) and ``model.safetensors`` or ``pytorch_model.bin``. This module maps
both to mmdeform without importing transformers:

* :func:`hf_model_overrides` reads the config dict and returns the mmdeform
  ``model`` keys of the same architecture (variant, sizes, classes), refusing
  what mmdeform does not have;
* :func:`convert_hf_state_dict` renames the weights. transformers registers a
  head under several names and ties them (:func:`hf_head_ties`); a file holds
  each tie group at least once and transformers drops the tied copies when
  saving (5.x keeps ``class_embed.0`` only with box refinement, and the box
  heads only as ``model.decoder.bbox_embed.i``). :func:`fill_tied_heads`
  fills every absent member of a tie group from a present one, as
  transformers does when it loads the file; a key that is absent and tied to
  nothing stays missing and is named. Names that are one tensor in mmdeform
  (``model.decoder.bbox_embed.i`` and ``bbox_embed.i``; ``class_embed.i`` and
  ``class_embed.0`` without box refinement) must then hold equal values, else
  the checkpoint is refused. Decoder self-attention ``q_proj`` / ``k_proj`` /
  ``v_proj`` become ``nn.MultiheadAttention``'s ``in_proj_*``.

Names: files saved by transformers 4.x and 5.x (5.x writes the 4.x names), and
a live 5.x model's ``state_dict()`` (``model.backbone.model.``, ``mlp.fc1``,
``self_attn.o_proj``). Backbones: transformers' own ResNet (``embedder`` /
``encoder.stages``) and timm's (torchvision names).
"""
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from mmengine.config import Config

from mmdeform.fileio import check_output_folder, staged_folder

from .hf_checks import (
    check_fills_model,
    meta_state_dict,
    naming,
    read_hf_config,
    read_hf_weights,
)
from .hf_ties import fill_tied_heads
from .names import HF, check_aliases, name_map

# (layer_type, depths) of transformers' ResNetConfig -> our ResNet depth
_HF_RESNETS = {('basic', (2, 2, 2, 2)): 18, ('basic', (3, 4, 6, 3)): 34,
               ('bottleneck', (3, 4, 6, 3)): 50, ('bottleneck', (3, 4, 23, 3)): 101}
_TIMM_RESNETS = {'resnet18': 18, 'resnet34': 34, 'resnet50': 50, 'resnet101': 101}


def _refuse(what: str) -> None:
    raise ValueError(f'hf config: {what}; mmdeform has no such Deformable DETR')


def hf_backbone_depth(config: Mapping) -> int:
    """Our ResNet depth for the backbone a transformers config describes."""
    if config.get('use_timm_backbone', True):
        name = config.get('backbone')
        if name not in _TIMM_RESNETS:
            _refuse(f'timm backbone {name!r} (supported: {sorted(_TIMM_RESNETS)})')
        return _TIMM_RESNETS[name]
    backbone = config.get('backbone_config') or {}
    if backbone.get('model_type') != 'resnet':
        _refuse(f"backbone_config.model_type={backbone.get('model_type')!r} (only 'resnet')")
    depth = _HF_RESNETS.get((backbone.get('layer_type'), tuple(backbone.get('depths', ()))))
    widths = [64, 128, 256, 512] if backbone.get('layer_type') == 'basic' else [256, 512, 1024,
                                                                                 2048]
    if depth is None or list(backbone.get('hidden_sizes', [])) != widths or \
            backbone.get('embedding_size', 64) != 64 or backbone.get('downsample_in_bottleneck'):
        _refuse(f'ResNet backbone_config {backbone!r} is not a torchvision ResNet-18/34/50/101')
    levels = config.get('num_feature_levels', 4)
    expected = ['stage2', 'stage3', 'stage4'] if levels > 1 else ['stage4']
    if list(backbone.get('out_features') or []) != expected:
        _refuse(f"backbone_config.out_features={backbone.get('out_features')} with "
                f'num_feature_levels={levels} (expected {expected})')
    return depth


def hf_model_overrides(config: Mapping) -> Dict:
    """mmdeform ``model`` keys for a transformers ``DeformableDetrConfig`` dict.

    Args:
        config (Mapping): ``config.json`` of the checkpoint (``to_dict()``).

    Returns:
        dict: ``model`` config keys (complete for every size and variant
        component, so they can override any of our Deformable DETR configs).

    Raises:
        ValueError: naming the config key of an architecture we do not have.
    """
    for key, wanted in (('activation_function', 'relu'), ('position_embedding_type', 'sine'),
                        ('num_channels', 3)):
        if config.get(key, wanted) != wanted:
            _refuse(f'{key}={config[key]!r} (only {wanted!r})')
    levels = config.get('num_feature_levels', 4)
    if levels not in (1, 3, 4, 5, 6):
        _refuse(f'num_feature_levels={levels}')
    refine, two_stage = config.get('with_box_refine', False), config.get('two_stage', False)
    num_queries = config['two_stage_num_proposals'] if two_stage else config['num_queries']
    # transformers dilates only a timm backbone; its own ResNet ignores `dilation`
    dilation = bool(config.get('dilation', False)) and config.get('use_timm_backbone', True)

    def layer(prefix: str) -> dict:
        return dict(num_heads=config[f'{prefix}_attention_heads'],
                    num_points=config[f'{prefix}_n_points'],
                    feedforward_dims=config[f'{prefix}_ffn_dim'], dropout=config['dropout'])

    if two_stage and not refine:
        _refuse('two_stage=True with with_box_refine=False (transformers refuses it too)')
    query_generator = dict(type='TwoStageProposals') if two_stage else \
        dict(type='LearnedQueries')
    return dict(
        num_queries=num_queries,
        backbone=dict(depth=hf_backbone_depth(config), dilate_last_stage=dilation,
                      out_indices=(1, 2, 3) if levels > 1 else (3, ), init_cfg=None),
        neck=dict(out_channels=config['d_model'], num_extra_levels=max(levels - 3, 0)),
        encoder=dict(num_layers=config['encoder_layers'], layer_cfg=layer('encoder')),
        decoder=dict(type='RefineDeformableDecoder' if refine else 'DeformableDecoder',
                     num_layers=config['decoder_layers'], layer_cfg=layer('decoder')),
        query_generator=query_generator,
        bbox_head=dict(num_classes=hf_num_labels(config)))


def hf_num_labels(config: Mapping) -> int:
    """Number of classes: ``num_labels``, else the size of ``id2label``."""
    if config.get('num_labels') is not None:
        return int(config['num_labels'])
    return len(config.get('id2label') or {}) or 91


def hf_class_names(config: Mapping) -> Tuple[str, ...]:
    """Class names by class index from ``id2label`` (gaps named ``'N/A'``)."""
    id2label = {int(k): v for k, v in (config.get('id2label') or {}).items()}
    return tuple(id2label.get(i, 'N/A') for i in range(hf_num_labels(config)))


def hf_name_map(keys: List[str], config: Mapping) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Rename table of a transformers state_dict.

    Returns:
        tuple[dict, dict]: ``{hf: mmdeform}`` (decoder ``q/k/v_proj`` map to
        ``in_proj_*`` and are merged by :func:`convert_hf_state_dict`) and
        ``{alias: canonical hf}`` for names that are one tensor in mmdeform.

    Raises:
        KeyError: naming every key without an mmdeform counterpart.
    """
    return name_map(keys, HF, num_layers=config['decoder_layers'],
                    refine=config.get('with_box_refine', False),
                    two_stage=config.get('two_stage', False))


def hf_sources(keys: Sequence[str], config: Mapping) -> Dict[str, str]:
    """Our name -> the transformers key it is read from (``q_proj`` for a
    stacked ``in_proj_*``)."""
    renames, _ = hf_name_map(list(keys), config)
    sources = {}
    for hf_key, ours in renames.items():
        sources.setdefault(ours, hf_key)
    return sources


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor],
                          config: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """transformers ``DeformableDetrForObjectDetection`` state_dict -> mmdeform.

    Args:
        state_dict (Mapping[str, Tensor]): transformers' keys (``model.*``,
            ``class_embed.*``, ``bbox_embed.*``; 4.x or 5.x names, see above);
            tied copies may be absent (filled by :func:`fill_tied_heads`).
        config (Mapping): its ``config.json`` as a dict; the variant (box
            refinement, two-stage, decoder layers) and the ties are read from it.

    Returns:
        OrderedDict[str, Tensor]: mmdeform names, canonical tensors only.

    Raises:
        KeyError: unknown keys, an alias whose canonical key is missing
            (neither is in the file and they are not tied), or an incomplete
            q/k/v triple.
        ValueError: an alias whose values differ from its canonical tensor.
    """
    state_dict = fill_tied_heads(state_dict, config)
    renames, aliases = hf_name_map(list(state_dict), config)
    check_aliases(state_dict, aliases, HF)
    converted = OrderedDict()
    for key, value in state_dict.items():
        if key not in renames or renames[key] in converted:
            continue
        if '.self_attn.in_proj_' in renames[key]:
            parts = [re.sub(r'[qkv]_proj', f'{p}_proj', key) for p in 'qkv']
            missing = [p for p in parts if p not in state_dict]
            if missing:
                raise KeyError(f'convert_hf_state_dict: {missing} missing (needed with {key!r})')
            value = torch.cat([state_dict[p] for p in parts], 0)  # rows q, k, v
        converted[renames[key]] = value
    return converted


def hf_base_config_name(config: Mapping) -> str:
    """Stem of our closest variant config (``configs/deformable_detr/<stem>_r50_...``)."""
    if config.get('num_feature_levels', 4) == 1:
        return 'deformable-detr-single-scale-dc5' if config.get('dilation') else \
            'deformable-detr-single-scale'
    if config.get('two_stage'):
        return 'deformable-detr-refine-twostage'
    return 'deformable-detr-refine' if config.get('with_box_refine') else 'deformable-detr'


def load_hf_config(folder: str) -> Dict:
    """``config.json`` of a transformers Deformable DETR folder, as a dict,
    checked by :func:`mmdeform.converters.hf_checks.read_hf_config`."""
    return read_hf_config(Path(folder) / 'config.json')


def load_hf_checkpoint(folder: str) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """``(config dict, state_dict)`` of a transformers checkpoint folder.

    ``model.safetensors`` is read with the ``safetensors`` package,
    ``pytorch_model.bin`` weights-only; both are checked by
    :func:`mmdeform.converters.hf_checks.read_hf_weights`.
    """
    return load_hf_config(folder), read_hf_weights(Path(folder))[1]


def convert_hf_folder(src: str, dst_dir: str, base_config: str,
                      overwrite: bool = False) -> Dict:
    """Write ``dst_dir/config.py`` and ``dst_dir/model.pth`` for a transformers folder.

    Everything is checked before anything is written (:mod:`.hf_checks`);
    the two files are written into a temporary folder that then replaces
    ``dst_dir`` whole.

    Args:
        src (str): transformers checkpoint folder (``config.json`` + weights).
        dst_dir (str): output folder (created; absent or empty unless
            ``overwrite``).
        base_config (str): our config of the matching variant (see
            :func:`hf_base_config_name`); ``config.py`` inherits it and sets
            every model key :func:`hf_model_overrides` returns.
        overwrite (bool): replace a non-empty ``dst_dir`` (its files are
            deleted).

    Returns:
        dict: the converted state_dict.

    Raises:
        HFCheckError: a config key, a file or a tensor that does not describe
            exactly one of our models (named), e.g. missing / unexpected
            tensors or another shape than the config's.
        FileExistsError: ``dst_dir`` is not empty and not ``overwrite``.
    """
    check_output_folder(dst_dir, overwrite, inputs=(src, base_config))
    config_file = Path(src) / 'config.json'
    config = load_hf_config(src)
    weights_file, state_dict = read_hf_weights(Path(src))
    with naming(config_file):
        overrides = hf_model_overrides(config)
    with naming(weights_file):
        converted = convert_hf_state_dict(state_dict, config)
    cfg = Config.fromfile(base_config)
    cfg.merge_from_dict(dict(model=overrides))
    with naming(config_file):
        expected = meta_state_dict(cfg.model)
    check_fills_model(converted, expected, weights_file, config_file,
                      hf_sources(list(state_dict), config))
    meta = dict(dataset_meta=dict(classes=hf_class_names(config)), source=str(src))
    with staged_folder(dst_dir, overwrite, inputs=(src, base_config)) as tmp:
        (tmp / 'config.py').write_text(
            f'# Converted from the transformers checkpoint {Path(src).resolve()}\n'
            f'_base_ = {str(Path(base_config).resolve())!r}\n\n'
            'model = dict(\n'
            + ''.join(f'    {key}={value!r},\n' for key, value in overrides.items()) + ')\n')
        torch.save({'state_dict': converted, 'meta': meta}, tmp / 'model.pth')
    return converted
