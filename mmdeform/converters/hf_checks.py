"""Checks on a transformers Deformable DETR folder before anything is converted.

:mod:`mmdeform.converters.hf` trusts the dict it reads; this module makes sure
that it may. Every error is an :class:`HFCheckError` naming the file and the
config key or tensor:

* :func:`read_hf_config` parses ``config.json`` (empty, not JSON, not an
  object are refused) and :func:`check_hf_config` checks the type of every
  key the converter reads: booleans are JSON booleans (``"false"`` is a
  string, not False), sizes are integers in ``[1, bound]`` (bounds far above
  any published model, so that a typo cannot ask for a terabyte), the sizes
  fit together (``d_model`` a multiple of 32 and of the head counts), and
  ``id2label`` has integer keys below the class count;
* :func:`read_hf_weights` reads ``model.safetensors`` / ``pytorch_model.bin``
  (weights-only) and refuses anything but finite floating-point tensors;
* :func:`check_fills_model` compares the converted state_dict, under our
  names, with the model the config describes (built on the meta device, so
  nothing is allocated): the same keys, shapes and dtype kinds.
"""
import json
import pickle
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch

from mmdeform.fileio import load_weights_only
from mmdeform.registry import MODELS

# keys the converter reads -> largest value accepted (smallest is 1)
SIZE_BOUNDS = {
    'd_model': 4096, 'encoder_layers': 64, 'decoder_layers': 64,
    'encoder_attention_heads': 64, 'decoder_attention_heads': 64,
    'encoder_n_points': 64, 'decoder_n_points': 64,
    'encoder_ffn_dim': 65536, 'decoder_ffn_dim': 65536,
    'num_queries': 10000, 'two_stage_num_proposals': 10000,
    'num_feature_levels': 6, 'num_channels': 16, 'num_labels': 100000}
REQUIRED_KEYS = ('d_model', 'encoder_layers', 'decoder_layers', 'encoder_attention_heads',
                 'decoder_attention_heads', 'encoder_n_points', 'decoder_n_points',
                 'encoder_ffn_dim', 'decoder_ffn_dim', 'dropout')
BOOL_KEYS = ('with_box_refine', 'two_stage', 'dilation', 'use_timm_backbone')
STRING_KEYS = ('activation_function', 'position_embedding_type')
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_GROUPNORM_GROUPS = 32  # the neck's GroupNorm (transformers' and ours)
# what the HF tools report in one line (CheckpointRefusedError is an UnpicklingError)
TOOL_ERRORS = (ValueError, KeyError, OSError, ImportError, pickle.UnpicklingError)


class HFCheckError(ValueError):
    """A transformers folder, config key or tensor that mmdeform refuses."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def _bad(filename, key: str, value, reason: str) -> HFCheckError:
    return HFCheckError(f'{filename}: {key}={_show(value)}: {reason}')


def read_hf_config(config_file: Path) -> Dict:
    """Parse ``config_file`` and :func:`check_hf_config` it.

    Raises:
        HFCheckError: the file is missing, empty, not UTF-8 JSON, not an
            object, of another ``model_type``, or fails :func:`check_hf_config`.
    """
    if not config_file.is_file():
        raise HFCheckError(f'{config_file} is missing (a transformers checkpoint folder holds '
                           'config.json)')
    text = config_file.read_bytes()
    if not text.strip():
        raise HFCheckError(f'{config_file} is empty ({len(text)} bytes)')
    try:
        config = json.loads(text.decode('utf-8'))
    except UnicodeDecodeError as err:
        raise HFCheckError(f'{config_file} is not UTF-8 text ({err.reason} at byte '
                           f'{err.start})') from None
    except json.JSONDecodeError as err:
        raise HFCheckError(f'{config_file} is not valid JSON (line {err.lineno}, column '
                           f'{err.colno}: {err.msg})') from None
    if not isinstance(config, dict):
        raise HFCheckError(f'{config_file} holds a JSON {type(config).__name__}, not an object '
                           'of config keys')
    if config.get('model_type') != 'deformable_detr':
        raise _bad(config_file, 'model_type', config.get('model_type'),
                   "expected 'deformable_detr'")
    check_hf_config(config, config_file)
    return config


def _check_int(config: Mapping, key: str, filename, bound: int) -> None:
    if key not in config:
        raise HFCheckError(f'{filename}: key {key!r} is missing')
    value = config[key]
    if type(value) is not int or not 1 <= value <= bound:
        raise _bad(filename, key, value, f'must be an integer from 1 to {bound}')


def check_hf_config(config: Mapping, filename) -> None:
    """Check the type and range of every key the converter reads.

    Args:
        config (Mapping): the parsed ``config.json``.
        filename: named in the errors.

    Raises:
        HFCheckError: naming the file, the key and its value.
    """
    for key in REQUIRED_KEYS:
        if key not in config:
            raise HFCheckError(f'{filename}: key {key!r} is missing')
    for key, bound in SIZE_BOUNDS.items():
        if key in REQUIRED_KEYS or config.get(key) is not None:
            _check_int(config, key, filename, bound)
    if config.get('two_stage') is True:
        _check_int(config, 'two_stage_num_proposals', filename, SIZE_BOUNDS['num_queries'])
    elif 'num_queries' not in config:
        raise HFCheckError(f"{filename}: key 'num_queries' is missing")
    for key in BOOL_KEYS:
        if key in config and type(config[key]) is not bool:
            raise _bad(filename, key, config[key], 'must be true or false (a JSON boolean)')
    for key in STRING_KEYS:
        if key in config and not isinstance(config[key], str):
            raise _bad(filename, key, config[key], 'must be a string')
    dropout = config['dropout']
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        raise _bad(filename, 'dropout', dropout, 'must be a number in [0, 1)')
    d_model = config['d_model']
    if d_model % _GROUPNORM_GROUPS:
        raise _bad(filename, 'd_model', d_model,
                   f'must be a multiple of {_GROUPNORM_GROUPS} (the GroupNorm groups of the '
                   'input projections)')
    for key in ('encoder_attention_heads', 'decoder_attention_heads'):
        if d_model % config[key]:
            raise _bad(filename, key, config[key], f'must divide d_model={d_model}')
    _check_backbone_keys(config, filename)
    check_id2label(config, filename)


def _check_list(config: Mapping, key: str, filename, kind: type, prefix: str = '') -> None:
    value = config.get(key)
    if value is not None and not (isinstance(value, list) and
                                  all(type(v) is kind for v in value)):
        raise _bad(filename, prefix + key, value, f'must be a list of {kind.__name__}')


def _check_timm_keys(config: Mapping, filename) -> None:
    """``backbone`` and ``backbone_kwargs`` of a timm backbone."""
    if not isinstance(config.get('backbone'), str):
        raise _bad(filename, 'backbone', config.get('backbone'),
                   'must name a timm model (use_timm_backbone is true)')
    if config.get('dilation') and config['backbone'] in ('resnet18', 'resnet34'):
        raise _bad(filename, 'dilation', True, "mmdeform's dilated C5 (DC5) needs "
                   f"resnet50 or resnet101, not backbone={config['backbone']!r}")
    kwargs = config.get('backbone_kwargs') or {}
    if not isinstance(kwargs, dict):
        raise _bad(filename, 'backbone_kwargs', kwargs, 'must be an object')
    levels = config.get('num_feature_levels', 4)
    # what transformers gives timm by default: our backbone is exactly that
    expected = dict(out_indices=[2, 3, 4] if levels > 1 else [4], in_chans=3,
                    output_stride=16 if config.get('dilation') else 32)
    for key, value in kwargs.items():
        if key not in expected:
            raise _bad(filename, f'backbone_kwargs.{key}', value,
                       'mmdeform reads only out_indices, in_chans and output_stride')
        if value != expected[key]:
            raise _bad(filename, f'backbone_kwargs.{key}', value,
                       f'must be {expected[key]} with num_feature_levels={levels} and '
                       f"dilation={config.get('dilation', False)}")


def _check_backbone_keys(config: Mapping, filename) -> None:
    """Types of ``backbone`` / ``backbone_kwargs`` (timm) or ``backbone_config``."""
    if config.get('use_timm_backbone', True):
        _check_timm_keys(config, filename)
        return
    backbone = config.get('backbone_config')
    if not isinstance(backbone, dict):
        raise _bad(filename, 'backbone_config', backbone,
                   'must be an object (use_timm_backbone is false)')
    for key in ('model_type', 'layer_type'):
        if not isinstance(backbone.get(key), str):
            raise _bad(filename, f'backbone_config.{key}', backbone.get(key), 'must be a string')
    for key, kind in (('depths', int), ('hidden_sizes', int), ('out_features', str)):
        _check_list(backbone, key, filename, kind, prefix='backbone_config.')
    if type(backbone.get('embedding_size', 64)) is not int:
        raise _bad(filename, 'backbone_config.embedding_size', backbone['embedding_size'],
                   'must be an integer')
    # keys of transformers' ResNetConfig that would build another network than torchvision's
    for key, wanted in (('hidden_act', 'relu'), ('num_channels', 3),
                        ('downsample_in_first_stage', False), ('downsample_in_bottleneck', False)):
        if key in backbone and (backbone[key] != wanted or type(backbone[key]) is not
                                type(wanted)):
            raise _bad(filename, f'backbone_config.{key}', backbone[key],
                       f'must be {json.dumps(wanted)} (torchvision ResNet)')


def check_id2label(config: Mapping, filename) -> None:
    """``id2label``: an object of integer keys (JSON writes them as strings)
    ``0 .. num_classes-1`` to string names; ``num_labels``, when given, agrees."""
    id2label = config.get('id2label')
    if id2label is None:
        return
    if not isinstance(id2label, dict):
        raise _bad(filename, 'id2label', id2label, 'must be an object {"0": "name", ...}')
    ids = set()
    for key, name in id2label.items():
        if not re.fullmatch(r'\d+', str(key)) or int(key) in ids:
            raise _bad(filename, f'id2label[{key!r}]', name,
                       'keys must be distinct non-negative integers ("0", "1", ...)')
        if not isinstance(name, str):
            raise _bad(filename, f'id2label[{key!r}]', name, 'class names must be strings')
        ids.add(int(key))
    num_labels = config.get('num_labels')
    if num_labels is not None and id2label and len(id2label) != num_labels:
        raise _bad(filename, 'num_labels', num_labels,
                   f'id2label has {len(id2label)} entries (transformers refuses this too)')
    count = num_labels or len(id2label)
    if ids and max(ids) >= count:
        raise _bad(filename, f'id2label[{str(max(ids))!r}]', id2label[_key_of(id2label, max(ids))],
                   f'class id {max(ids)} is not below the class count {count}')


def _key_of(id2label: Mapping, class_id: int):
    return next(k for k in id2label if int(k) == class_id)


def hf_weights_file(folder: Path) -> Path:
    """``model.safetensors``, else ``pytorch_model.bin`` of ``folder``.

    Raises:
        HFCheckError: neither exists.
    """
    for name in ('model.safetensors', 'pytorch_model.bin'):
        if (folder / name).is_file():
            return folder / name
    raise HFCheckError(f'{folder} has neither model.safetensors nor pytorch_model.bin '
                       '(sharded checkpoints are not read)')


def _load_safetensors(filename: Path) -> Dict:
    size = filename.stat().st_size
    if size == 0:
        raise HFCheckError(f'{filename} is empty (0 bytes)')
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(filename))
    except SafetensorError as err:
        raise HFCheckError(f'{filename} is not a complete safetensors file ({size} bytes; '
                           f'cut short or damaged: {err})') from None


def read_hf_weights(folder: Path) -> Tuple[Path, Dict[str, torch.Tensor]]:
    """``(file, state_dict)`` of a transformers folder, every tensor checked.

    ``model.safetensors`` is read with ``safetensors``, ``pytorch_model.bin``
    weights-only (:func:`mmdeform.fileio.load_weights_only`: a
    file that needs other globals is refused, never unpickled fully).

    Raises:
        HFCheckError: no weights file, an empty or cut short file, a value
            that is not a tensor, a tensor that is not floating-point or holds
            NaN / inf (:func:`check_tensor_values`).
        CheckpointFormatError, CheckpointRefusedError: an unreadable or
            refused ``.bin`` (both name the file).
    """
    filename = hf_weights_file(folder)
    if filename.suffix == '.safetensors':
        state_dict = _load_safetensors(filename)
    else:
        state_dict = load_weights_only(str(filename), map_location='cpu')
    if not isinstance(state_dict, dict):
        raise HFCheckError(f'{filename} holds a {type(state_dict).__name__}, not a state_dict')
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise HFCheckError(f'{filename}: {key!r} is not a tensor ({type(value).__name__})')
    check_tensor_values(state_dict, filename)
    check_qkv_shapes(state_dict, filename)
    return filename, state_dict


def check_tensor_values(state_dict: Mapping[str, torch.Tensor], filename) -> None:
    """Every tensor is float16/bfloat16/float32/float64 and finite.

    Raises:
        HFCheckError: naming the file, the tensor and its dtype or the number
            of NaN / inf values.
    """
    for key, value in state_dict.items():
        if value.dtype not in FLOAT_DTYPES:
            raise HFCheckError(
                f'{filename}: {key!r} is {str(value.dtype).replace("torch.", "")}; only '
                'floating-point weights (float16, bfloat16, float32, float64) are accepted '
                '(quantized checkpoints are not)')
        bad = value.numel() - int(torch.isfinite(value).sum())
        if bad:
            raise HFCheckError(f'{filename}: {key!r} holds {bad} NaN/inf value(s) of '
                               f'{value.numel()}; the checkpoint is broken')


def check_qkv_shapes(state_dict: Mapping[str, torch.Tensor], filename) -> None:
    """Decoder ``self_attn.q/k/v_proj`` of one layer have one shape (they are
    stacked into ``in_proj_*``)."""
    for key, value in state_dict.items():
        if m := re.fullmatch(r'(.+\.self_attn\.)q_proj\.(weight|bias)', key):
            for other in (f'{m.group(1)}{p}_proj.{m.group(2)}' for p in 'kv'):
                if other in state_dict and state_dict[other].shape != value.shape:
                    raise HFCheckError(
                        f'{filename}: {other!r} has shape {list(state_dict[other].shape)}, '
                        f'{key!r} {list(value.shape)}; they must be equal')


def meta_state_dict(model_cfg: Mapping) -> Dict[str, torch.Tensor]:
    """State_dict (meta tensors: shapes and dtypes, no memory) of ``model_cfg``."""
    with torch.device('meta'):
        return MODELS.build(model_cfg).state_dict()


def check_fills_model(converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                      weights_file, config_file, sources: Optional[Mapping[str, str]] = None
                      ) -> None:
    """The converted weights fill the model ``config_file`` describes exactly.

    Args:
        converted (Mapping[str, Tensor]): our names (after the conversion and
            any filling of tied keys).
        expected (Mapping[str, Tensor]): the model's state_dict
            (:func:`meta_state_dict`).
        weights_file, config_file: named in the errors.
        sources (Mapping[str, str], optional): our name -> transformers' key,
            to name the tensor as the file has it.

    Raises:
        HFCheckError: missing / unexpected keys (our names), or tensors of
            another shape or dtype kind than the model's.
    """
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise HFCheckError(f'{weights_file} does not fill the model {config_file} describes: '
                           f'missing {missing}, unexpected {unexpected}')
    wrong = []
    for key, want in expected.items():
        got = converted[key]
        if got.shape != want.shape or got.is_floating_point() != want.is_floating_point():
            name = f'{(sources or {}).get(key, key)!r}' + \
                (f' (our {key!r})' if (sources or {}).get(key, key) != key else '')
            wrong.append(f'{name} is {list(got.shape)} {str(got.dtype)[6:]}, needs '
                         f'{list(want.shape)} {str(want.dtype)[6:]}')
    if wrong:
        more = f' (and {len(wrong) - 3} more)' if len(wrong) > 3 else ''
        raise HFCheckError(f'{weights_file} does not match the model {config_file} describes: '
                           + '; '.join(wrong[:3]) + more)


@contextmanager
def naming(filename) -> Iterator[None]:
    """Prefix ``filename`` to a ValueError / KeyError of the block that does
    not name it (e.g. :func:`mmdeform.converters.hf.hf_model_overrides`)."""
    try:
        yield
    except (ValueError, KeyError) as err:
        if isinstance(err, HFCheckError):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise HFCheckError(f'{filename}: {message}') from err


@contextmanager
def exit_on_error(prog: str, debug: bool = False) -> Iterator[None]:
    """Turn :data:`TOOL_ERRORS` into one ``PROG: error: ...`` line on stderr
    and exit status 1 (``debug``: let them raise, with the traceback)."""
    try:
        yield
    except TOOL_ERRORS as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f'{prog}: error: {" ".join(str(message).split())}', file=sys.stderr)
        raise SystemExit(1) from None
