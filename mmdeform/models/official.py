"""Convert state_dicts of the official Deformable DETR to mmdeform names.

The official model (fundamentalvision/Deformable-DETR) registers some modules
under several names, so its state_dict holds aliases of one tensor:

* without box refinement, ``class_embed.1..N-1`` / ``bbox_embed.1..N-1`` are
  ``class_embed.0`` / ``bbox_embed.0`` (one head shared by the N decoder layers);
* with box refinement, ``transformer.decoder.bbox_embed.i`` is ``bbox_embed.i``;
* in two-stage, also ``transformer.decoder.class_embed.i`` is ``class_embed.i``.

The converter reads the canonical tensor (the right-hand name above) and
checks that every alias holds the same values. An alias that differs means
the checkpoint was not saved by the official model (loading it there would
silently keep whichever key came last), so it is an error, not a guess.
Every other key must map to an mmdeform name; unknown keys are an error.
"""
import argparse
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

_ENCODER_LAYER_RENAMES = {
    'norm1': 'self_attn_norm', 'linear1': 'ffn.linear1', 'linear2': 'ffn.linear2',
    'norm2': 'ffn_norm'}
_DECODER_LAYER_RENAMES = {
    'norm2': 'self_attn_norm', 'norm1': 'cross_attn_norm', 'linear1': 'ffn.linear1',
    'linear2': 'ffn.linear2', 'norm3': 'ffn_norm'}
QUERY_GENERATOR_NAMES = ('reference_points', 'enc_output', 'enc_output_norm', 'pos_trans',
                          'pos_trans_norm')


def _rename_layer(rest: str, renames: Dict[str, str]) -> str:
    """'norm1.weight' -> 'self_attn_norm.weight'; attention names are kept."""
    module, _, tail = rest.partition('.')
    return f'{renames.get(module, module)}.{tail}'


def _layout(keys: List[str]) -> Tuple[int, bool, bool]:
    """(decoder layers, box refinement, two-stage) read from the key names."""
    decoder_layers = {int(m.group(1)) for k in keys
                      if (m := re.match(r'transformer\.decoder\.layers\.(\d+)\.', k))}
    if not decoder_layers:
        raise KeyError('convert_official_state_dict: no transformer.decoder.layers.* keys; '
                       'this is not an official Deformable DETR state_dict')
    refine = any(k.startswith('transformer.decoder.bbox_embed.') for k in keys)
    two_stage = any(k.startswith('transformer.enc_output.') for k in keys)
    return max(decoder_layers) + 1, refine, two_stage


def head_rule(num_layers: int, refine: bool, two_stage: bool) -> Callable:
    """Renaming of ``class_embed.i.*`` / ``bbox_embed.i.*`` (heads).

    Returns a function ``(kind, index, tail) -> (new name or None, canonical
    official name or None)``: an alias gives its canonical name instead.
    """
    def rule(kind: str, index: int, tail: str) -> Tuple[Optional[str], Optional[str]]:
        official = f'{kind}.{index}.{tail}'
        if two_stage and index == num_layers:
            target = 'cls_branch' if kind == 'class_embed' else 'reg_branch'
            return f'query_generator.{target}.{tail}', None
        if index >= num_layers:
            return None, None
        branches = 'cls_branches' if kind == 'class_embed' else 'reg_branches'
        if not refine and index > 0:
            return None, official.replace(f'{kind}.{index}.', f'{kind}.0.', 1)
        return f'bbox_head.{branches}.{index}.{tail}', None
    return rule


def official_name_map(keys: List[str]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Rename table for the keys of an official state_dict.

    Args:
        keys (list[str]): official state_dict keys.

    Returns:
        tuple[dict, dict]: ``{official: mmdeform}`` for canonical keys and
        ``{alias: canonical official}`` for tied duplicates.

    Raises:
        KeyError: naming every key that has no mmdeform counterpart.
    """
    num_layers, refine, two_stage = _layout(keys)
    rename_head = head_rule(num_layers, refine, two_stage)
    renames, aliases, unknown = {}, {}, []
    for key in keys:
        new, canonical = None, None
        if key.startswith('backbone.0.body.'):
            new = 'backbone.' + key[len('backbone.0.body.'):]
        elif m := re.match(r'input_proj\.(\d+)\.([01])\.(.+)$', key):
            part = 'conv' if m.group(2) == '0' else 'gn'  # Sequential(conv, GN) -> ConvModule
            new = f'neck.projections.{m.group(1)}.{part}.{m.group(3)}'
        elif key == 'transformer.level_embed':
            new = 'encoder.level_embed'
        elif key == 'query_embed.weight':
            new = 'query_generator.query_embed.weight'
        elif m := re.match(r'transformer\.encoder\.layers\.(\d+)\.(.+)$', key):
            new = f'encoder.layers.{m.group(1)}.' + _rename_layer(m.group(2),
                                                                  _ENCODER_LAYER_RENAMES)
        elif m := re.match(r'transformer\.decoder\.layers\.(\d+)\.(.+)$', key):
            new = f'decoder.layers.{m.group(1)}.' + _rename_layer(m.group(2),
                                                                  _DECODER_LAYER_RENAMES)
        elif m := re.match(r'transformer\.decoder\.(class_embed|bbox_embed)\.(\d+\..+)$', key):
            canonical = f'{m.group(1)}.{m.group(2)}'
        elif m := re.match(r'transformer\.(\w+)\.(weight|bias)$', key):
            if m.group(1) in QUERY_GENERATOR_NAMES:
                new = f'query_generator.{m.group(1)}.{m.group(2)}'
        elif m := re.match(r'(class_embed|bbox_embed)\.(\d+)\.(.+)$', key):
            new, canonical = rename_head(m.group(1), int(m.group(2)), m.group(3))
        if canonical is not None:
            aliases[key] = canonical
        elif new is not None:
            renames[key] = new
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f'convert_official_state_dict: {len(unknown)} keys have no mmdeform '
                       f'counterpart: {unknown}')
    return renames, aliases


def convert_official_state_dict(
        state_dict: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Official Deformable DETR state_dict -> mmdeform ``DeformableDETR`` state_dict.

    The variant (shared heads, box refinement, two-stage) is read from the
    keys: ``transformer.decoder.bbox_embed.*`` means box refinement (one head
    per layer), ``transformer.enc_output.*`` means two-stage (head N is the
    proposal head of the query generator).

    Args:
        state_dict (Mapping[str, Tensor]): the official ``model.state_dict()``
            (e.g. ``checkpoint['model']``), keys as in the official code.

    Returns:
        OrderedDict[str, Tensor]: mmdeform names, canonical tensors only, in
        the official order.

    Raises:
        KeyError: keys without an mmdeform name, or an alias whose canonical
            key is missing.
        ValueError: an alias whose values differ from its canonical tensor.
    """
    renames, aliases = official_name_map(list(state_dict))
    for alias, canonical in aliases.items():
        if canonical not in state_dict:
            raise KeyError(f'convert_official_state_dict: {alias!r} is an alias of '
                           f'{canonical!r}, which is missing')
        if not torch.equal(state_dict[alias], state_dict[canonical]):
            raise ValueError(
                f'convert_official_state_dict: tied keys {alias!r} and {canonical!r} hold '
                'different values; the official model shares this tensor, so the '
                'checkpoint is inconsistent')
    return OrderedDict((renames[key], value) for key, value in state_dict.items()
                       if key in renames)


def convert_official_checkpoint(src: str, dst: str) -> 'OrderedDict[str, torch.Tensor]':
    """Read an official checkpoint file and save it for mmengine.

    The file is read with ``torch.load(weights_only=True)``; the official
    training loop stores its ``argparse.Namespace`` under ``'args'``, so that
    one class is allow-listed. The weights are ``checkpoint['model']`` when
    present, else the file is taken to be a bare state_dict.

    Args:
        src (str): official checkpoint (``.pth``).
        dst (str): output path; holds ``{'state_dict': converted}``, which
            ``mmengine.runner.load_checkpoint`` and ``load_from`` accept.

    Returns:
        OrderedDict[str, Tensor]: the converted state_dict.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(src, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'convert_official_checkpoint: {src} holds a {type(checkpoint).__name__}, '
                        'expected a dict (a checkpoint or a state_dict)')
    state_dict = checkpoint.get('model', checkpoint)
    converted = convert_official_state_dict(state_dict)
    from mmdeform.fileio import torch_save_atomic
    torch_save_atomic({'state_dict': converted}, dst)
    return converted
