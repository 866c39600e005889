"""Tied heads of transformers' ``DeformableDetrForObjectDetection``.

transformers registers the class and box heads under several names and ties
some of them (one tensor under several names). Which ones depends on the
config and, in one case, on the transformers version:

* no box refinement: ``class_embed.i`` and ``bbox_embed.i`` are layer 0's
  heads (4.x and 5.x);
* ``with_box_refine``: ``bbox_embed.i`` is ``model.decoder.bbox_embed.i``
  (both); 5.x also ties ``class_embed.i`` to ``class_embed.0``, one class
  head for every decoder layer, where 4.x has one per layer;
* ``with_box_refine`` + ``two_stage``: ``class_embed.i`` / ``bbox_embed.i``
  are ``model.decoder.class_embed.i`` / ``model.decoder.bbox_embed.i``
  (both; the class heads are not tied across layers).

:func:`hf_head_ties` writes that rule down from the config alone (no
transformers needed): it is transformers 5.x's declared
``_tied_weights_keys`` of the model, expanded the way 5.x expands it (later
entries replace earlier ones for the same target), and nothing when
``tie_word_embeddings`` is false (5.x then ties nothing). With the default
(true) every module 4.x shares is in it. ``tests/test_hf_ties.py`` checks
the rule against the installed transformers.

On load transformers fills an absent tied name from a present one (either
direction) and leaves two present names untied when their values differ
(5.x, with a warning). :func:`fill_tied_heads` does the same for the
converter, so both file layouts convert: 4.x files hold every name, 5.x
files drop the tied copies. A file saved by 4.x with box refinement keeps
its per-layer class heads, and 5.x loads them untied as well.

The exporter has the opposite problem: transformers' model may tie heads
that differ in ours (5.x, box refinement). :func:`tied_groups` finds the
ties of the installed transformers' model and :func:`untie_conflicts` names
the groups whose values differ.
"""
import re
from collections import defaultdict
from typing import Dict, List, Mapping, Sequence

import torch

_HEAD_MODULE = re.compile(r'^((?:model\.decoder\.)?(?:class|bbox)_embed\.\d+)\.')


def hf_head_ties(config: Mapping) -> Dict[str, str]:
    """Tied head modules of transformers' model for ``config``: ``{target: source}``.

    Args:
        config (Mapping): a ``DeformableDetrConfig`` dict (``config.json``);
            reads ``decoder_layers``, ``with_box_refine``, ``two_stage`` and
            ``tie_word_embeddings`` (default true).

    Returns:
        dict[str, str]: module names, e.g. ``{'class_embed.1': 'class_embed.0'}``;
        every target's tensors are its source's (a source is never a target).
    """
    if not config.get('tie_word_embeddings', True):
        return {}
    refine, two_stage = config.get('with_box_refine', False), config.get('two_stage', False)
    num_heads = config['decoder_layers'] + (1 if two_stage else 0)
    ties = {}
    for index in range(1, num_heads):  # r'class_embed.(?![0])\d+': 'class_embed.0', same for bbox
        ties[f'class_embed.{index}'] = 'class_embed.0'
        ties[f'bbox_embed.{index}'] = 'bbox_embed.0'
    for index in range(num_heads):
        if refine:  # 'bbox_embed': 'model.decoder.bbox_embed'
            ties[f'bbox_embed.{index}'] = f'model.decoder.bbox_embed.{index}'
        if two_stage:  # 'class_embed': 'model.decoder.class_embed'
            ties[f'class_embed.{index}'] = f'model.decoder.class_embed.{index}'
    return ties


def _tie_groups(config: Mapping) -> Dict[str, List[str]]:
    """``{source: [source, target, ...]}`` of :func:`hf_head_ties`."""
    groups = defaultdict(list)
    for target, source in hf_head_ties(config).items():
        groups[source] = groups[source] or [source]
        groups[source].append(target)
    return groups


def fill_tied_heads(state_dict: Mapping[str, torch.Tensor],
                    config: Mapping) -> Dict[str, torch.Tensor]:
    """``state_dict`` with every absent member of a tie group filled in.

    Each absent name takes the tensor of the group's source if present, else
    of the first present target (transformers' load does the same). Present
    names are kept as they are, also when they differ from their source.

    Args:
        state_dict (Mapping[str, Tensor]): a transformers state_dict, possibly
            without tied copies.
        config (Mapping): its ``config.json`` as a dict.

    Returns:
        dict[str, Tensor]: a new dict; filled names share the present tensor.
    """
    filled = dict(state_dict)
    for members in _tie_groups(config).values():
        tails = {key[len(member) + 1:] for member in members for key in state_dict
                 if key.startswith(member + '.')}
        for tail in sorted(tails):
            present = next(m for m in members if f'{m}.{tail}' in state_dict)
            for member in members:
                filled.setdefault(f'{member}.{tail}', state_dict[f'{present}.{tail}'])
    return filled


def tied_groups(model: torch.nn.Module) -> List[List[str]]:
    """Names of ``model``'s state_dict that are one tensor (its ties, as built).

    Returns:
        list[list[str]]: groups of two or more names, each sorted.
    """
    by_tensor = defaultdict(list)
    for name, tensor in model.state_dict().items():
        by_tensor[(tensor.data_ptr(), tuple(tensor.shape), tensor.stride())].append(name)
    return sorted(sorted(names) for names in by_tensor.values() if len(names) > 1)


def _module(name: str) -> str:
    match = _HEAD_MODULE.match(name)
    return match.group(1) if match else name


def group_source(group: Sequence[str], config: Mapping) -> str:
    """The name in ``group`` that :func:`hf_head_ties` calls the source (else the first)."""
    sources = set(hf_head_ties(config).values())
    return next((name for name in group if _module(name) in sources), group[0])


def untie_conflicts(values: Mapping[str, torch.Tensor], groups: Sequence[Sequence[str]],
                    config: Mapping) -> Dict[str, List[str]]:
    """Tie groups whose values differ, by head module.

    Args:
        values (Mapping[str, Tensor]): the tensors to write, by transformers name.
        groups (Sequence[Sequence[str]]): :func:`tied_groups` of transformers' model.
        config (Mapping): its config as a dict.

    Returns:
        dict[str, list[str]]: ``{source module: [target module, ...]}`` for
        the targets that differ from their source (empty: the ties are harmless).
    """
    conflicts = defaultdict(set)
    for group in groups:
        source = group_source(group, config)
        for name in group:
            if not torch.equal(values[name], values[source]):
                conflicts[_module(source)].add(_module(name))
    return {source: sorted(targets) for source, targets in sorted(conflicts.items())}
