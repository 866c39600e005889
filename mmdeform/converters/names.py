"""One rename table from foreign Deformable DETR names to mmdeform's, two sources.

The official model (fundamentalvision/Deformable-DETR) keeps its transformer
under ``transformer.``; HuggingFace transformers' ``DeformableDetrModel``
keeps the same modules under ``model.`` with other layer names. Below that
prefix the two are one layout, so one table maps both::

    mmdeform                official                     transformers
    backbone.*              backbone.0.body.*            model.backbone.(conv_encoder.)model.*
    neck.projections.i.*    input_proj.i.{0,1}.*         model.input_proj.i.{0,1}.*
    encoder.level_embed     transformer.level_embed      model.level_embed
    encoder.layers.i.*      transformer.encoder.layers   model.encoder.layers (other names)
    decoder.layers.i.*      transformer.decoder.layers   model.decoder.layers (q/k/v split)
    query_generator.*       query_embed, transformer.X   model.query_position_embeddings,
                            (X: two-stage proposals)     model.X
    bbox_head.*             class_embed.i / bbox_embed.i (both; see head_rule)

Both models also register heads under several names (aliases of one
tensor); :func:`name_map` returns them apart and :func:`check_aliases` makes
sure every alias holds its canonical tensor's values.
"""
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

# the two-stage proposal modules, directly under the source's prefix
QUERY_GENERATOR_NAMES = ('reference_points', 'enc_output', 'enc_output_norm', 'pos_trans',
                         'pos_trans_norm')


@dataclass(frozen=True)
class NameSource:
    """How one foreign model names the modules of the table.

    Attributes:
        caller (str): the converter named in errors.
        owner (str): who ties the aliases, named in errors.
        prefix (str): the transformer's prefix (``'transformer.'`` / ``'model.'``).
        input_proj (str): prefix of the input projections.
        query_embed (str): key of the learned query embedding.
        backbone_prefixes (tuple[str]): prefixes of the backbone's keys.
        backbone_name (callable): name below a backbone prefix -> our
            ResNet name, or None when unknown.
        encoder_layer (dict): module in an encoder layer -> ours.
        decoder_layer (dict): module in a decoder layer -> ours.
        split_qkv (bool): decoder self-attention has ``q/k/v_proj``, our
            ``in_proj_*`` stacks them.
    """
    caller: str
    owner: str
    prefix: str
    input_proj: str
    query_embed: str
    backbone_prefixes: Tuple[str, ...]
    backbone_name: Callable[[str], Optional[str]]
    encoder_layer: Dict[str, str]
    decoder_layer: Dict[str, str]
    split_qkv: bool = False


def hf_backbone_name(rest: str) -> Optional[str]:
    """transformers-ResNet or timm name below the backbone prefix -> our ResNet name."""
    if m := re.match(r'embedder\.embedder\.(convolution|normalization)\.(.+)$', rest):
        return ('conv1.' if m.group(1) == 'convolution' else 'bn1.') + m.group(2)
    if m := re.match(r'encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)$', rest):
        block = f'layer{int(m.group(1)) + 1}.{m.group(2)}.'
        if s := re.match(r'shortcut\.(convolution|normalization)\.(.+)$', m.group(3)):
            return block + ('downsample.0.' if s.group(1) == 'convolution' else
                            'downsample.1.') + s.group(2)
        if s := re.match(r'layer\.(\d+)\.(convolution|normalization)\.(.+)$', m.group(3)):
            kind = 'conv' if s.group(2) == 'convolution' else 'bn'
            return f'{block}{kind}{int(s.group(1)) + 1}.{s.group(3)}'
        return None
    if re.match(r'(conv1|bn1|layer[1-4]\.\d+\.(conv\d|bn\d|downsample\.[01]))\.', rest):
        return rest  # timm's ResNet keeps torchvision's names
    return None


OFFICIAL = NameSource(
    caller='convert_official_state_dict', owner='the official model', prefix='transformer.',
    input_proj='input_proj.', query_embed='query_embed.weight',
    backbone_prefixes=('backbone.0.body.', ), backbone_name=lambda rest: rest,
    encoder_layer={'self_attn': 'self_attn', 'norm1': 'self_attn_norm',
                   'linear1': 'ffn.linear1', 'linear2': 'ffn.linear2', 'norm2': 'ffn_norm'},
    decoder_layer={'self_attn': 'self_attn', 'cross_attn': 'cross_attn',
                   'norm2': 'self_attn_norm', 'norm1': 'cross_attn_norm',
                   'linear1': 'ffn.linear1', 'linear2': 'ffn.linear2', 'norm3': 'ffn_norm'})
# files saved by transformers 4.x and 5.x, and a live 5.x model's state_dict
HF = NameSource(
    caller='convert_hf_state_dict', owner='transformers', prefix='model.',
    input_proj='model.input_proj.', query_embed='model.query_position_embeddings.weight',
    backbone_prefixes=('model.backbone.conv_encoder.model.', 'model.backbone.model.'),
    backbone_name=hf_backbone_name,
    encoder_layer={'self_attn': 'self_attn', 'self_attn_layer_norm': 'self_attn_norm',
                   'fc1': 'ffn.linear1', 'fc2': 'ffn.linear2', 'mlp.fc1': 'ffn.linear1',
                   'mlp.fc2': 'ffn.linear2', 'final_layer_norm': 'ffn_norm'},
    decoder_layer={'self_attn.out_proj': 'self_attn.out_proj',
                   'self_attn.o_proj': 'self_attn.out_proj',
                   'self_attn_layer_norm': 'self_attn_norm', 'mlp.fc1': 'ffn.linear1',
                   'mlp.fc2': 'ffn.linear2', 'encoder_attn': 'cross_attn',
                   'encoder_attn_layer_norm': 'cross_attn_norm', 'fc1': 'ffn.linear1',
                   'fc2': 'ffn.linear2', 'final_layer_norm': 'ffn_norm'},
    split_qkv=True)


def head_rule(num_layers: int, refine: bool, two_stage: bool) -> Callable:
    """Renaming of ``class_embed.i.*`` / ``bbox_embed.i.*`` (heads; both sources).

    Returns a function ``(kind, index, tail) -> (new name or None, canonical
    foreign name or None)``: an alias gives its canonical name instead.
    """
    def rule(kind: str, index: int, tail: str) -> Tuple[Optional[str], Optional[str]]:
        foreign = f'{kind}.{index}.{tail}'
        if two_stage and index == num_layers:
            target = 'cls_branch' if kind == 'class_embed' else 'reg_branch'
            return f'query_generator.{target}.{tail}', None
        if index >= num_layers:
            return None, None
        branches = 'cls_branches' if kind == 'class_embed' else 'reg_branches'
        if not refine and index > 0:
            return None, foreign.replace(f'{kind}.{index}.', f'{kind}.0.', 1)
        return f'bbox_head.{branches}.{index}.{tail}', None
    return rule


def _layer_name(rest: str, renames: Dict[str, str]) -> Optional[str]:
    """'fc1.weight' -> 'ffn.linear1.weight' by the longest matching module prefix."""
    for old in sorted(renames, key=len, reverse=True):
        if rest.startswith(old + '.'):
            return renames[old] + rest[len(old):]
    return None


def _map_transformer(rest: str, source: NameSource) -> Tuple[Optional[str], Optional[str]]:
    """A name below ``source.prefix`` -> (ours, None), (None, canonical alias) or (None, None)."""
    if rest == 'level_embed':
        return 'encoder.level_embed', None
    if m := re.match(r'encoder\.layers\.(\d+)\.(.+)$', rest):
        name = _layer_name(m.group(2), source.encoder_layer)
        return name and f'encoder.layers.{m.group(1)}.{name}', None
    if source.split_qkv and \
            (m := re.match(r'decoder\.layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)$', rest)):
        return f'decoder.layers.{m.group(1)}.self_attn.in_proj_{m.group(2)}', None
    if m := re.match(r'decoder\.layers\.(\d+)\.(.+)$', rest):
        name = _layer_name(m.group(2), source.decoder_layer)
        return name and f'decoder.layers.{m.group(1)}.{name}', None
    if m := re.match(r'decoder\.(class_embed|bbox_embed)\.(\d+\..+)$', rest):
        return None, f'{m.group(1)}.{m.group(2)}'
    if (m := re.match(r'(\w+)\.(weight|bias)$', rest)) and m.group(1) in QUERY_GENERATOR_NAMES:
        return f'query_generator.{m.group(1)}.{m.group(2)}', None
    return None, None


def map_key(key: str, source: NameSource,
            rename_head: Callable) -> Tuple[Optional[str], Optional[str]]:
    """One foreign key -> (our name, None), (None, canonical alias) or (None, None).

    Args:
        key (str): a key of the foreign state_dict.
        source (NameSource): :data:`OFFICIAL` or :data:`HF`.
        rename_head (callable): :func:`head_rule` of the model's layout.
    """
    prefix = next((p for p in source.backbone_prefixes if key.startswith(p)), None)
    if prefix is not None:
        name = source.backbone_name(key[len(prefix):])
        return (None if name is None else 'backbone.' + name), None
    if m := re.match(re.escape(source.input_proj) + r'(\d+)\.([01])\.(.+)$', key):
        part = 'conv' if m.group(2) == '0' else 'gn'  # Sequential(conv, GN) -> ConvModule
        return f'neck.projections.{m.group(1)}.{part}.{m.group(3)}', None
    if key == source.query_embed:
        return 'query_generator.query_embed.weight', None
    if key.startswith(source.prefix):
        return _map_transformer(key[len(source.prefix):], source)
    if m := re.match(r'(class_embed|bbox_embed)\.(\d+)\.(.+)$', key):
        return rename_head(m.group(1), int(m.group(2)), m.group(3))
    return None, None


def name_map(keys: List[str], source: NameSource, num_layers: int, refine: bool,
             two_stage: bool) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Rename table of a foreign state_dict.

    Args:
        keys (list[str]): the foreign state_dict's keys.
        source (NameSource): :data:`OFFICIAL` or :data:`HF`.
        num_layers (int): decoder layers D.
        refine (bool): box refinement (one head per decoder layer).
        two_stage (bool): head D is the query generator's proposal head.

    Returns:
        tuple[dict, dict]: ``{foreign: mmdeform}`` for canonical keys and
        ``{alias: canonical foreign}`` for names of one tensor.

    Raises:
        KeyError: naming every key without an mmdeform counterpart.
    """
    rename_head = head_rule(num_layers, refine, two_stage)
    renames, aliases, unknown = {}, {}, []
    for key in keys:
        new, canonical = map_key(key, source, rename_head)
        if canonical is not None:
            aliases[key] = canonical
        elif new is not None:
            renames[key] = new
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f'{source.caller}: {len(unknown)} keys have no mmdeform counterpart: '
                       f'{unknown}')
    return renames, aliases


def check_aliases(state_dict: Mapping[str, torch.Tensor], aliases: Mapping[str, str],
                  source: NameSource) -> None:
    """Every alias must hold its canonical tensor's values.

    Args:
        state_dict (Mapping[str, Tensor]): the foreign state_dict.
        aliases (Mapping[str, str]): ``{alias: canonical}`` from :func:`name_map`.
        source (NameSource): :data:`OFFICIAL` or :data:`HF`, for the messages.

    Raises:
        KeyError: an alias whose canonical key is missing.
        ValueError: an alias whose values differ from its canonical tensor
            (the source shares that tensor, so the checkpoint is inconsistent).
    """
    for alias, canonical in aliases.items():
        if canonical not in state_dict:
            raise KeyError(f'{source.caller}: {alias!r} is an alias of {canonical!r}, '
                           'which is missing')
        if not torch.equal(state_dict[alias], state_dict[canonical]):
            raise ValueError(f'{source.caller}: tied keys {alias!r} and {canonical!r} hold '
                             f'different values; {source.owner} shares this tensor, so the '
                             'checkpoint is inconsistent')
