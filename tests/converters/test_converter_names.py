"""The one rename table of mmdeform.converters.names, read from both sources."""
import re

import pytest
import torch

from mmdeform.converters.names import HF, OFFICIAL, check_aliases, name_map

# (official key, transformers key, mmdeform key): one module under both names
SAME_MODULE = [
    ('backbone.0.body.layer2.0.conv1.weight',
     'model.backbone.conv_encoder.model.encoder.stages.1.layers.0.layer.0.convolution.weight',
     'backbone.layer2.0.conv1.weight'),
    ('input_proj.3.1.bias', 'model.input_proj.3.1.bias', 'neck.projections.3.gn.bias'),
    ('transformer.level_embed', 'model.level_embed', 'encoder.level_embed'),
    ('query_embed.weight', 'model.query_position_embeddings.weight',
     'query_generator.query_embed.weight'),
    ('transformer.encoder.layers.2.norm1.weight',
     'model.encoder.layers.2.self_attn_layer_norm.weight',
     'encoder.layers.2.self_attn_norm.weight'),
    ('transformer.encoder.layers.0.self_attn.sampling_offsets.bias',
     'model.encoder.layers.0.self_attn.sampling_offsets.bias',
     'encoder.layers.0.self_attn.sampling_offsets.bias'),
    ('transformer.encoder.layers.1.linear2.weight', 'model.encoder.layers.1.fc2.weight',
     'encoder.layers.1.ffn.linear2.weight'),
    ('transformer.decoder.layers.1.norm1.weight',
     'model.decoder.layers.1.encoder_attn_layer_norm.weight',
     'decoder.layers.1.cross_attn_norm.weight'),
    ('transformer.decoder.layers.1.norm2.bias',
     'model.decoder.layers.1.self_attn_layer_norm.bias', 'decoder.layers.1.self_attn_norm.bias'),
    ('transformer.decoder.layers.0.self_attn.in_proj_weight',
     'model.decoder.layers.0.self_attn.k_proj.weight',
     'decoder.layers.0.self_attn.in_proj_weight'),
    ('transformer.decoder.layers.0.cross_attn.value_proj.weight',
     'model.decoder.layers.0.encoder_attn.value_proj.weight',
     'decoder.layers.0.cross_attn.value_proj.weight'),
    ('transformer.enc_output_norm.weight', 'model.enc_output_norm.weight',
     'query_generator.enc_output_norm.weight'),
    ('class_embed.2.bias', 'class_embed.2.bias', 'bbox_head.cls_branches.2.bias'),
    ('bbox_embed.3.weight', 'bbox_embed.3.weight', 'query_generator.reg_branch.weight'),
]
LAYOUT = dict(num_layers=3, refine=True, two_stage=True)


@pytest.mark.parametrize('official,hf,ours', SAME_MODULE)
def test_both_sources_name_one_module_alike(official, hf, ours):
    assert name_map([official], OFFICIAL, **LAYOUT) == ({official: ours}, {})
    assert name_map([hf], HF, **LAYOUT) == ({hf: ours}, {})


@pytest.mark.parametrize('source,prefix', [(OFFICIAL, 'transformer.'), (HF, 'model.')])
def test_decoder_heads_are_aliases_in_both(source, prefix):
    key = f'{prefix}decoder.bbox_embed.1.layers.0.weight'
    assert name_map([key], source, **LAYOUT) == ({}, {key: 'bbox_embed.1.layers.0.weight'})
    shared = dict(LAYOUT, refine=False, two_stage=False)
    assert name_map(['class_embed.2.weight'], source, **shared) == (
        {}, {'class_embed.2.weight': 'class_embed.0.weight'})


@pytest.mark.parametrize('source,key', [
    (OFFICIAL, 'transformer.encoder.layers.0.norm9.weight'),
    (OFFICIAL, 'transformer.mystery.weight'),
    (HF, 'model.decoder.layers.0.norm1.weight'),  # an official name under the HF prefix
    (HF, 'model.backbone.model.encoder.stages.0.layers.0.mystery.weight')])
def test_unknown_keys_are_named(source, key):
    known = 'transformer.decoder.layers.0.norm1.weight' if source is OFFICIAL else \
        'model.decoder.layers.0.fc1.bias'
    with pytest.raises(KeyError, match=re.escape(f"{source.caller}: 1 keys have no mmdeform "
                                                 f"counterpart: ['{key}']")):
        name_map([known, key], source, **LAYOUT)


@pytest.mark.parametrize('source,owner', [(OFFICIAL, 'the official model'),
                                          (HF, 'transformers')])
def test_alias_check_names_both_keys(source, owner):
    aliases = {'class_embed.1.bias': 'class_embed.0.bias'}
    same = {'class_embed.0.bias': torch.ones(2), 'class_embed.1.bias': torch.ones(2)}
    check_aliases(same, aliases, source)
    differ = dict(same, **{'class_embed.1.bias': torch.zeros(2)})
    with pytest.raises(ValueError, match=f"tied keys 'class_embed.1.bias' and "
                       f"'class_embed.0.bias' hold different values; {owner} shares"):
        check_aliases(differ, aliases, source)
    with pytest.raises(KeyError, match=f"{source.caller}: 'class_embed.1.bias' is an alias"):
        check_aliases({'class_embed.1.bias': torch.ones(2)}, aliases, source)
