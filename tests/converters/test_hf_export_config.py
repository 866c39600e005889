"""hf_export describes a model from its config: the same numbers as the built modules."""
from pathlib import Path

import pytest
from mmengine.config import Config
from torch import nn

from mmdeform.converters.hf_export import _model_cfg, hf_config_kwargs, hf_normalization
from mmdeform.registry import MODELS
from mmdeform.testing.detector_inputs import shrink_model_cfg

CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / 'deformable_detr'
VARIANTS = ['deformable-detr', 'deformable-detr-refine', 'deformable-detr-refine-twostage',
            'deformable-detr-single-scale']


def tiny_model_cfg(variant: str):
    cfg = Config.fromfile(CONFIGS / f'{variant}_r50_16xb2-50e_coco.py')
    model = shrink_model_cfg(cfg.model, embed_dims=64)
    model.neck.num_groups = 32  # transformers' GroupNorm
    model.decoder.layer_cfg.num_points = 2  # the encoder keeps the layer's default (4)
    return model


def read_from_modules(model: nn.Module) -> dict:
    """What the built modules hold, for the keys the config gives."""
    encoder_layer, decoder_layer = model.encoder.layers[0], model.decoder.layers[0]
    return dict(
        d_model=model.neck.out_channels, num_feature_levels=model.neck.num_levels,
        encoder_layers=len(model.encoder.layers), decoder_layers=len(model.decoder.layers),
        encoder_attention_heads=encoder_layer.self_attn.num_heads,
        decoder_attention_heads=decoder_layer.cross_attn.num_heads,
        encoder_n_points=encoder_layer.self_attn.num_points,
        decoder_n_points=decoder_layer.cross_attn.num_points,
        encoder_ffn_dim=encoder_layer.ffn.linear1.out_features,
        decoder_ffn_dim=decoder_layer.ffn.linear1.out_features,
        num_queries=model.query_generator.num_queries,
        with_box_refine=model.decoder.refines_references,
        two_stage=type(model.query_generator).__name__ == 'TwoStageProposals',
        num_labels=model.bbox_head.num_classes)


@pytest.mark.parametrize('variant', VARIANTS)
def test_config_gives_what_the_model_holds(variant):
    model_cfg = tiny_model_cfg(variant)
    kwargs = hf_config_kwargs(model_cfg)
    expected = read_from_modules(MODELS.build(model_cfg))
    assert {key: kwargs[key] for key in expected} == expected
    assert kwargs['decoder_n_points'] == 2 and kwargs['encoder_n_points'] == 4


@pytest.mark.parametrize('change,message', [
    (lambda m: m.update(neck=dict(type='FPN')), 'model.neck is FPN'),
    (lambda m: m.neck.update(num_groups=16), 'GroupNorm with other than 32 groups'),
    (lambda m: m.decoder.layer_cfg.update(cross_attn_cfg=dict(type='PerLevelDeformAttn')),
     'deformable attention PerLevelDeformAttn'),
    (lambda m: m.positional_encoding.update(temperature=20), 'a sine encoding other than'),
    (lambda m: m.backbone.update(out_indices=(2, 3)), r'backbone.out_indices=\(2, 3\)'),
    (lambda m: m.backbone.update(depth=152), 'ResNet depth 152')])
def test_refusals_name_the_config_key(change, message):
    model_cfg = tiny_model_cfg('deformable-detr')
    change(model_cfg)
    with pytest.raises(ValueError, match=message):
        hf_config_kwargs(model_cfg)


def test_normalization_and_the_kept_config():
    model_cfg = tiny_model_cfg('deformable-detr')
    assert hf_normalization(model_cfg)['image_mean'] == pytest.approx([0.485, 0.456, 0.406])
    model_cfg.data_preprocessor = None
    with pytest.raises(ValueError, match='model.data_preprocessor None'):
        hf_normalization(model_cfg)
    with pytest.raises(ValueError, match='build it with mmdeform.apis.init_detector'):
        _model_cfg(nn.Linear(1, 1))
