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
from typing import Dict, List, Mapping, Tuple

import torch

from mmdeform.fileio import torch_save_atomic

from .names import OFFICIAL, check_aliases, name_map


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
    return name_map(keys, OFFICIAL, *_layout(keys))


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
    check_aliases(state_dict, aliases, OFFICIAL)
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
    torch_save_atomic({'state_dict': converted}, dst)
    return converted
