"""Counting pretraining of the synthetic backbones (projects.synthetic_ablations.pretraining)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdeform.datasets.synthetic import make_synthetic_coco
from mmdeform.registry import MODELS
from projects.synthetic_ablations import ABLATION_DIR, pretraining

(ROW, ) = ABLATION_DIR.glob('deformable-detr_ss-k4_*.py')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_synthetic_coco(str(root), num_train=12, num_val=6, image_size=64, seed=3,
                        progress=False)
    return str(root)


def test_counts_match_the_annotations(data_root):
    images, counts = pretraining.load_count_targets(data_root, 'val', num_classes=4)
    coco = json.loads((Path(data_root) / 'val.json').read_text())
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    assert counts.sum() == len(coco['annotations']) and counts.shape == (6, 4)
    first = [a['category_id'] for a in coco['annotations']
             if a['image_id'] == coco['images'][0]['id']]
    ids = [c['id'] for c in coco['categories']]
    assert counts[0].tolist() == [float(first.count(i)) for i in ids]


def test_the_pretrained_backbone_is_the_rows_made_trainable():
    cfg = Config.fromfile(str(ROW))
    trainable = pretraining.trainable_backbone_cfg(cfg.model.backbone)
    resnet = cfg.model.backbone.backbone  # unwrapped from FeatureCachedBackbone
    assert trainable == dict(resnet, init_cfg=None, frozen_stages=-1,
                             norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False)
    plain = dict(type='ResNet', depth=18, init_cfg=dict(type='Pretrained', checkpoint='a'))
    assert pretraining.trainable_backbone_cfg(plain)['depth'] == 18
    assert pretraining.checkpoint_option(str(ROW), 'x.pth') == {
        'model.backbone.backbone.init_cfg.checkpoint': 'x.pth'}


def test_pretrained_checkpoint_loads_strictly_into_the_row_backbone(data_root, tmp_path):
    cfg = Config.fromfile(str(ROW))
    out = tmp_path / 'ckpt' / 'backbone.pth'
    result = pretraining.pretrain_backbone(cfg, data_root, str(out), iters=4, batch_size=4,
                                           lr=1e-3, num_threads=1)
    assert set(result) == {'val_mse_init', 'val_exact_init', 'val_mse', 'val_exact', 'curve',
                           'seconds'}
    assert [point['step'] for point in result['curve']] == [4]
    assert result['val_mse'] != result['val_mse_init']  # the weights did move
    assert [p.name for p in out.parent.iterdir()] == ['backbone.pth']  # no temporary left
    saved = torch.load(out, weights_only=True)
    assert saved['meta']['iters'] == 4 and 'fc.weight' in saved['state_dict']
    # into the row's frozen backbone (FrozenBN, inside the feature cache)
    resnet = dict(cfg.model.backbone.backbone, init_cfg=dict(type='Pretrained',
                                                             checkpoint=str(out)))
    wrapper = MODELS.build(dict(cfg.model.backbone, backbone=resnet))
    wrapper.init_weights()
    for key, value in wrapper.backbone.state_dict().items():
        torch.testing.assert_close(value, saved['state_dict'][key], rtol=0, atol=0)
    assert not any(p.requires_grad for p in wrapper.parameters())
    # same seed, same result: the counting run is deterministic
    again = pretraining.pretrain_backbone(cfg, data_root, None, iters=4, batch_size=4,
                                          lr=1e-3, num_threads=1)
    assert again['val_mse'] == pytest.approx(result['val_mse'], rel=1e-6)


def test_hostile_inputs(data_root, tmp_path):
    cfg = Config.fromfile(str(ROW))
    with pytest.raises(FileNotFoundError, match='no annotation file .*train.json'):
        pretraining.pretrain_backbone(cfg, str(tmp_path), None, iters=1)
    with pytest.raises(ValueError, match='iters and batch_size must be >= 1'):
        pretraining.pretrain_backbone(cfg, data_root, None, iters=0)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'train.json').write_text((Path(data_root) / 'train.json').read_text())
    with pytest.raises(FileNotFoundError, match='image .* of .*train.json is missing'):
        pretraining.load_count_targets(str(broken), 'train', 4)
    with pytest.raises(ValueError, match='has 4 categories, the model 3 classes'):
        pretraining.load_count_targets(data_root, 'train', 3)


def test_settings_must_match_the_backbone_init_cfg():
    cfg = Config(dict(model=dict(backbone=dict(type='ResNet', init_cfg=dict(
        type='Pretrained', checkpoint='a.pth')))))
    assert pretraining.pretraining_settings(cfg) is None
    settings = dict(checkpoint='a.pth', iters=10, batch_size=4, lr=1e-3, weight_decay=0.0,
                    seed=0)
    cfg.backbone_pretraining = settings
    assert pretraining.pretraining_settings(cfg) == settings
    cfg.backbone_pretraining = dict(settings, checkpoint='b.pth')
    with pytest.raises(KeyError, match="the backbone init_cfg must be .*'b.pth'"):
        pretraining.pretraining_settings(cfg)
    cfg.backbone_pretraining = dict(settings, epochs=3)
    with pytest.raises(KeyError, match=r"unknown keys \['epochs'\]"):
        pretraining.pretraining_settings(cfg)


def test_weights_digest_names_the_weights_not_the_file(tmp_path):
    weights = {'conv.weight': torch.arange(6.).reshape(2, 3), 'bn.num_batches': torch.tensor(3),
               'flag': torch.tensor([True, False])}
    first, second = tmp_path / 'first.pth', tmp_path / 'second.pth'
    # the same weights saved twice with another meta (pretraining seconds) are one backbone
    torch.save(dict(state_dict=weights, meta=dict(seconds=1.0)), first)
    torch.save(dict(state_dict=dict(reversed(list(weights.items()))), meta=dict(seconds=2.0)),
               second)
    assert first.read_bytes() != second.read_bytes()
    digest = pretraining.weights_digest(str(first))
    assert len(digest) == 16 and digest == pretraining.weights_digest(str(second))
    # one value, a dtype, a shape or a name changed is another backbone
    for name, tensor in [('conv.weight', torch.arange(6.).reshape(2, 3) + 1e-6),
                         ('conv.weight', torch.arange(6., dtype=torch.float64).reshape(2, 3)),
                         ('conv.weight', torch.arange(6.).reshape(3, 2))]:
        torch.save(dict(state_dict=dict(weights, **{name: tensor})), second)
        assert pretraining.weights_digest(str(second)) != digest
    renamed = {('conv.w' if k == 'conv.weight' else k): v for k, v in weights.items()}
    torch.save(dict(state_dict=renamed), second)
    assert pretraining.weights_digest(str(second)) != digest
    torch.save(dict(state_dict=dict(weights, extra=[1, 2])), second)
    with pytest.raises(ValueError, match=r"second.pth: state_dict\['extra'\] is a list"):
        pretraining.weights_digest(str(second))
    torch.save(torch.zeros(3), second)
    with pytest.raises(ValueError, match='second.pth: holds a Tensor, not a state dict'):
        pretraining.weights_digest(str(second))
