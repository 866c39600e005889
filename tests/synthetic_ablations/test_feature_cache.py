"""FeatureCachedBackbone (projects.synthetic_ablations.feature_cache): exact hits, misses on
any change of the image, refusal of a backbone that could change."""
import pytest
import torch

from mmdeform.registry import MODELS
from projects.synthetic_ablations import feature_cache  # noqa: F401  (registers the wrapper)

FROZEN = dict(type='ResNet', depth=18, base_channels=8, out_indices=(1, 3), frozen_stages=4,
              norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True, init_cfg=None)


def build(**kwargs):
    torch.manual_seed(0)
    return MODELS.build(dict(type='FeatureCachedBackbone', backbone=dict(FROZEN, **kwargs)))


def test_hit_returns_identical_tensors_and_skips_the_backbone(monkeypatch):
    model = build().train()  # the detector trains: the backbone stays in eval mode
    images = torch.randn(3, 3, 32, 32)
    first = model(images)
    assert model.out_channels == [16, 64]
    assert [tuple(f.shape) for f in first] == [(3, 16, 4, 4), (3, 64, 1, 1)]
    direct = model.backbone(images)
    for cached, plain in zip(first, direct):
        torch.testing.assert_close(cached, plain)
    assert model.cache_info() == dict(hits=0, misses=3, entries=3, bytes=3 * (256 + 64) * 4)
    monkeypatch.setattr(model.backbone, 'forward',
                        lambda x: pytest.fail('a cached image was computed again'))
    again = model(images[[2, 0]])  # other batches, other order: still hits
    assert all(torch.equal(a, f[[2, 0]]) for a, f in zip(again, first))
    assert model.hits == 2 and model.misses == 3


def test_any_change_of_the_image_is_a_miss():
    model = build().eval()
    image = torch.randn(1, 3, 32, 32)
    model(image)
    changed = image.clone()
    changed[0, 1, 5, 7] = torch.nextafter(changed[0, 1, 5, 7], torch.tensor(10.0))  # one ulp
    for other in (image.flip(3), changed, image.double().float()[..., :31],
                  torch.cat([image, torch.zeros(1, 3, 32, 4)], 3)):  # flip, 1 ulp, crop, pad
        model(other)
    assert model.misses == 5 and model.hits == 0
    model(image.double().float())  # the same bytes again: a hit
    assert model.hits == 1


def test_trainable_backbone_is_refused():
    with pytest.raises(RuntimeError, match='must be frozen'):
        build(frozen_stages=1)  # layer2..4 trainable
    model = build()
    model.backbone.layer4[0].conv1.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"trainable: \['layer4.0.conv1.weight'\]"):
        model(torch.randn(1, 3, 32, 32))
    model = build()
    model.backbone.layer1.train()  # someone trains a part of it behind the wrapper's back
    with pytest.raises(RuntimeError, match='in training mode'):
        model(torch.randn(1, 3, 32, 32))


def test_memory_cap_and_weight_loading_clear():
    per_image = (256 + 64) * 4
    model = build()
    model.max_bytes = 2 * per_image
    model(torch.randn(3, 3, 32, 32))
    assert model.cache_info()['entries'] == 2 and model.cached_bytes == 2 * per_image
    model.load_state_dict(model.state_dict())  # new weights may come in: forget everything
    assert model.cache_info()['entries'] == 0
    model(torch.randn(1, 3, 32, 32))
    model.init_weights()
    assert model.cache_info()['entries'] == 0
    with pytest.raises(ValueError, match='max_bytes must be >= 0'):
        MODELS.build(dict(type='FeatureCachedBackbone', backbone=FROZEN, max_bytes=-1))
