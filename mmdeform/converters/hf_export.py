"""Write an mmdeform ``DeformableDETR`` as a HuggingFace transformers checkpoint folder.

The inverse of :mod:`mmdeform.converters.hf`: :func:`hf_config_kwargs` describes
our model, read from its config (what the config leaves out takes the
component's default, as when the model is built), as ``DeformableDetrConfig``
keyword arguments (transformers' own ResNet as backbone, so no timm is
needed), refusing components transformers cannot express;
:func:`to_hf_state_dict` fills every key of transformers' model through the
converter's own name table (:func:`hf_name_map`), so the two directions
cannot drift apart; :func:`export_hf` writes the folder that
``DeformableDetrForObjectDetection.from_pretrained`` loads, with a matching
``preprocessor_config.json``. Only :func:`export_hf` imports transformers.

Tied heads (:mod:`mmdeform.converters.hf_ties`): transformers' model may hold one
tensor where ours holds several. transformers 5.x ties the class heads of
every decoder layer with box refinement (without two-stage), where ours (and
4.x) has one per layer. Writing such a model would give a folder that loads
as a different model, so :func:`export_hf` refuses it, naming the tie and the
transformers version, unless ``allow_tie=True``, which writes the source's
head (layer 0's) for every tied name and returns what differs.
"""
import inspect
import math
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from mmdeform.fileio import check_output_folder, staged_folder
from mmdeform.models.data_preprocessors import DetDataPreprocessor
from mmdeform.models.layers import DeformableDecoderLayer, DeformableEncoderLayer
from mmdeform.registry import MODELS

from .hf import hf_name_map
from .hf_checks import check_tensor_values
from .hf_ties import group_source, tied_groups, untie_conflicts

# our ResNet depth -> transformers' ResNetConfig
_RESNET_CONFIGS = {
    18: dict(layer_type='basic', depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
    34: dict(layer_type='basic', depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 256, 512]),
    50: dict(layer_type='bottleneck', depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048]),
    101: dict(layer_type='bottleneck', depths=[3, 4, 23, 3],
              hidden_sizes=[256, 512, 1024, 2048]),
}
_SUPPORTED_TYPES = {
    'backbone': ('ResNet', ), 'neck': ('MultiScaleProjection', ),
    'positional_encoding': ('SinePositionalEncoding', ), 'encoder': ('DeformableEncoder', ),
    'decoder': ('DeformableDecoder', 'RefineDeformableDecoder'),
    'query_generator': ('LearnedQueries', 'TwoStageProposals')}


def _refuse(what: str) -> None:
    raise ValueError(f'export_hf: {what}; transformers\' DeformableDetr cannot express it')


def _type_name(cfg: Mapping) -> str:
    """The ``type`` of a component config (a registered name or a class)."""
    kind = cfg['type']
    return kind if isinstance(kind, str) else kind.__name__


def _arguments(cfg: Optional[Mapping], cls: type) -> Dict:
    """``cfg`` over the defaults of ``cls``'s constructor: what the built module receives."""
    params = inspect.signature(cls).parameters.values()
    arguments = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    arguments.update((key, value) for key, value in (cfg or {}).items() if key != 'type')
    return arguments


def _registered(name: str, cfg: Mapping) -> type:
    """The registered class of ``model.<name>``."""
    cls = MODELS.get(_type_name(cfg))
    if cls is None:
        raise ValueError(f'export_hf: model.{name}.type={_type_name(cfg)!r} is not registered')
    return cls


def model_arguments(model_cfg: Mapping) -> Dict[str, Dict]:
    """Every component's constructor arguments, read from the model config.

    The component types must be the ones transformers has (checked first);
    keys the config leaves out take the constructor's default, as when the
    model is built. Sizes the detector passes on (``embed_dims``,
    ``num_levels``, ...) are not filled in: the caller derives them.

    Args:
        model_cfg (Mapping): the ``model`` config of a ``DeformableDETR``.

    Returns:
        dict: ``'model'`` and one dict per component (``'backbone'``,
        ``'neck'``, ...), each with its ``'type'``; ``'encoder'`` and
        ``'decoder'`` also hold ``'layer'``, the arguments of one layer.

    Raises:
        ValueError: a component type transformers has no equivalent of.
    """
    for name, types in _SUPPORTED_TYPES.items():
        kind = _type_name(model_cfg[name])
        if kind not in types:
            _refuse(f'model.{name} is {kind} (supported: {", ".join(types)})')
    parts = {'model': _arguments(model_cfg, _registered('model', model_cfg))}
    for name in (*_SUPPORTED_TYPES, 'bbox_head'):
        parts[name] = dict(_arguments(model_cfg[name], _registered(name, model_cfg[name])),
                           type=_type_name(model_cfg[name]))
    for name, layer in (('encoder', DeformableEncoderLayer), ('decoder', DeformableDecoderLayer)):
        parts[name]['layer'] = _arguments(parts[name]['layer_cfg'], layer)
    parts['decoder']['refines_references'] = \
        _registered('decoder', model_cfg['decoder']).refines_references
    return parts


def _check_components(parts: Mapping[str, Dict]) -> None:
    """Refuse what the component types allow but transformers cannot express."""
    attentions = (parts['encoder']['layer']['self_attn_cfg'],
                  parts['decoder']['layer']['cross_attn_cfg'])
    for attention in attentions:
        kind = _type_name(attention or dict(type='MSDeformAttn'))
        if kind != 'MSDeformAttn':
            _refuse(f'deformable attention {kind} (only MSDeformAttn)')
    pe = parts['positional_encoding']
    if (pe['temperature'], pe['normalize'], pe['offset'], pe['eps']) != \
            (10000, True, -0.5, 1e-6) or not math.isclose(pe['scale'], 2 * math.pi):
        _refuse('a sine encoding other than temperature=10000, normalize=True, offset=-0.5, '
                'eps=1e-6, scale=2*pi')
    generator = parts['query_generator']
    if generator.get('share_head_branches', False) or (
            generator['type'] == 'TwoStageProposals' and
            not parts['decoder']['refines_references']):
        _refuse('two-stage proposals without box refinement')
    if parts['neck']['num_groups'] != 32:
        _refuse('a GroupNorm with other than 32 groups in the neck')


def hf_config_kwargs(model_cfg: Mapping, class_names: Optional[Sequence[str]] = None) -> Dict:
    """``DeformableDetrConfig`` keyword arguments describing a model config.

    Args:
        model_cfg (Mapping): the ``model`` config of our ``DeformableDETR``
            (``cfg.model``; :func:`mmdeform.apis.init_detector` keeps the
            config as ``model.cfg``).
        class_names (Sequence[str], optional): ``id2label``; default
            ``class0`` .. ``classK-1``.

    Raises:
        ValueError: naming a component transformers has no equivalent of.
    """
    parts = model_arguments(model_cfg)
    _check_components(parts)
    backbone, neck = parts['backbone'], parts['neck']
    levels = len(backbone['out_indices']) + neck['num_extra_levels']
    if backbone['depth'] not in _RESNET_CONFIGS:
        _refuse(f"ResNet depth {backbone['depth']}")
    expected = (1, 2, 3) if levels > 1 else (3, )
    if tuple(backbone['out_indices']) != expected or levels == 2:
        _refuse(f"backbone.out_indices={backbone['out_indices']} with {levels} levels "
                '(transformers uses C3-C5 plus extra levels, or C5 alone)')
    if backbone['dilate_last_stage']:
        _refuse('a dilated last stage (DC5): transformers dilates only timm backbones, and its '
                'own ResNet, which the export uses, ignores `dilation`')
    encoder, decoder = parts['encoder'], parts['decoder']
    num_classes = parts['bbox_head']['num_classes']
    names = list(class_names) if class_names is not None else \
        [f'class{i}' for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f'export_hf: {len(names)} class names for {num_classes} classes')
    num_queries = parts['model']['num_queries']
    return dict(
        use_timm_backbone=False, backbone=None, use_pretrained_backbone=False,
        backbone_config=dict(model_type='resnet', embedding_size=64,
                             out_features=['stage2', 'stage3', 'stage4'] if levels > 1
                             else ['stage4'], **_RESNET_CONFIGS[backbone['depth']]),
        dilation=False,
        d_model=neck['out_channels'], num_feature_levels=levels,
        encoder_layers=encoder['num_layers'], decoder_layers=decoder['num_layers'],
        encoder_attention_heads=encoder['layer']['num_heads'],
        decoder_attention_heads=decoder['layer']['num_heads'],
        encoder_n_points=encoder['layer']['num_points'],
        decoder_n_points=decoder['layer']['num_points'],
        encoder_ffn_dim=encoder['layer']['feedforward_dims'],
        decoder_ffn_dim=decoder['layer']['feedforward_dims'],
        num_queries=num_queries, two_stage_num_proposals=num_queries,
        with_box_refine=decoder['refines_references'],
        two_stage=parts['query_generator']['type'] == 'TwoStageProposals',
        num_labels=num_classes, id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)})


def hf_normalization(model_cfg: Mapping) -> Dict[str, List[float]]:
    """``DeformableDetrImageProcessor`` mean / std (0-1 scale, RGB) of a model config."""
    cfg = model_cfg.get('data_preprocessor')
    if not cfg or _type_name(cfg) != 'DetDataPreprocessor':
        _refuse(f"model.data_preprocessor {cfg and _type_name(cfg)} (only DetDataPreprocessor, "
                'whose mean / std transformers\' image processor takes)')
    arguments = _arguments(cfg, DetDataPreprocessor)
    return dict(image_mean=[value / 255 for value in arguments['mean']],
                image_std=[value / 255 for value in arguments['std']])


def to_hf_state_dict(state_dict: Mapping[str, torch.Tensor], hf_keys: Sequence[str],
                     hf_config: Mapping) -> Dict[str, torch.Tensor]:
    """Our state_dict under transformers' names (every key of ``hf_keys``).

    Args:
        state_dict (Mapping[str, Tensor]): our model's state_dict.
        hf_keys (Sequence[str]): the keys of transformers' model to fill.
        hf_config (Mapping): its config as a dict.

    Raises:
        KeyError: a transformers key whose source is missing here.
    """
    renames, aliases = hf_name_map(list(hf_keys), hf_config)
    converted = {}
    for key in hf_keys:
        source = renames.get(key) or renames[aliases[key]]
        if source not in state_dict:
            raise KeyError(f'export_hf: {source!r} (for transformers\' {key!r}) is missing')
        value = state_dict[source]
        if '.self_attn.in_proj_' in source:  # rows q, k, v
            value = value.chunk(3, 0)['qkv'.index(key.split('.self_attn.')[1][0])]
        converted[key] = value.detach().clone()
    return converted


def apply_ties(values: Dict[str, torch.Tensor], hf_model: nn.Module, config: Mapping,
               version: str, allow_tie: bool = False) -> List[str]:
    """Check ``values`` against the ties of transformers' model; with ``allow_tie`` apply them.

    Args:
        values (dict[str, Tensor]): transformers names -> the tensors to write
            (changed in place with ``allow_tie``: every tied name gets its
            source's tensor).
        hf_model (nn.Module): transformers' model as built (its ties).
        config (Mapping): its config as a dict.
        version (str): the transformers version, for the messages.
        allow_tie (bool): write the source's head instead of refusing.

    Returns:
        list[str]: one line per tie that changes the model (only with
        ``allow_tie``; empty when the ties are harmless).

    Raises:
        ValueError: a tie joins heads that differ in ours and ``allow_tie`` is false.
    """
    groups = tied_groups(hf_model)
    conflicts = untie_conflicts(values, groups, config)
    lines = [f'transformers {version} ties {", ".join(targets)} to {source} (with_box_refine='
             f"{config.get('with_box_refine')}, two_stage={config.get('two_stage')}), but "
             'they differ in this model' for source, targets in conflicts.items()]
    if lines and not allow_tie:
        raise ValueError('export_hf: ' + '; '.join(lines) + '. transformers would load the '
                         'folder as a different model; allow_tie=True (tools/export_hf.py '
                         "--allow-tie) writes the source's head for every tied name instead")
    for group in groups:
        value = values[group_source(group, config)]
        for name in group:
            values[name] = value
    return [f"{line}; wrote {source}'s head for all: the exported model differs from this one"
            for line, source in zip(lines, conflicts)]


def _save_kwargs(hf_model: nn.Module, config) -> Dict:
    """transformers 4.x refuses safetensors for the shared refine heads; 5.x has no choice."""
    if 'safe_serialization' in inspect.signature(hf_model.save_pretrained).parameters:
        return dict(safe_serialization=not config.with_box_refine)
    return {}


def _model_cfg(model: nn.Module) -> Mapping:
    """The ``model`` config ``model`` was built from (``model.cfg.model``)."""
    cfg = getattr(model, 'cfg', None)
    if cfg is None or 'model' not in cfg:
        raise ValueError('export_hf: the model has no cfg with a model config; build it with '
                         'mmdeform.apis.init_detector, which keeps the config as model.cfg')
    return cfg['model']


def export_hf(model: nn.Module, out_dir: str, class_names: Optional[Sequence[str]] = None,
              overwrite: bool = False, allow_tie: bool = False) -> List[str]:
    """Write ``out_dir`` for ``DeformableDetrForObjectDetection.from_pretrained``.

    The weights go to ``model.safetensors``, except with box refinement under
    transformers 4.x, which refuses safetensors for its shared heads:
    ``pytorch_model.bin``. ``preprocessor_config.json`` carries our
    normalization (mean / std of the data preprocessor, RGB). Everything is
    checked before anything is written; the files go into a temporary folder
    that then replaces ``out_dir`` whole, so no file of an earlier export
    remains beside them.

    Args:
        model (nn.Module): our ``DeformableDETR`` as
            :func:`mmdeform.apis.init_detector` builds it: its weights are
            written, its config (``model.cfg.model``) describes it.
        out_dir (str): output folder (absent or empty unless ``overwrite``).
        class_names (Sequence[str], optional): see :func:`hf_config_kwargs`.
        overwrite (bool): replace a non-empty ``out_dir`` (its files are
            deleted).
        allow_tie (bool): where the installed transformers ties heads that
            differ in ``model``, write the source's head instead of refusing
            (see :func:`apply_ties`).

    Returns:
        list[str]: what differs in the exported model (empty: nothing).

    Raises:
        ValueError: a model transformers cannot express, weights holding
            NaN / inf, or a tie (without ``allow_tie``).
        FileExistsError: ``out_dir`` is not empty and not ``overwrite``.
    """
    import transformers
    check_output_folder(out_dir, overwrite)
    model_cfg = _model_cfg(model)
    kwargs = hf_config_kwargs(model_cfg, class_names)
    normalization = hf_normalization(model_cfg)
    kwargs['backbone_config'] = transformers.ResNetConfig(
        **{k: v for k, v in kwargs['backbone_config'].items() if k != 'model_type'})
    config = transformers.DeformableDetrConfig(**kwargs)
    hf_model = transformers.DeformableDetrForObjectDetection(config)
    hf_state = hf_model.state_dict()
    converted = to_hf_state_dict(model.state_dict(), list(hf_state), config.to_dict())
    check_tensor_values(converted, 'export_hf: the weights of the model')
    differs = apply_ties(converted, hf_model, config.to_dict(), transformers.__version__,
                         allow_tie)
    hf_model.load_state_dict(converted, strict=True)
    with staged_folder(out_dir, overwrite) as tmp:
        hf_model.save_pretrained(tmp, **_save_kwargs(hf_model, config))
        transformers.DeformableDetrImageProcessor(**normalization).save_pretrained(tmp)
    return differs
