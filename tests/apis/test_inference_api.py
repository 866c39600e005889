"""init_detector / inference_detector on the tiny synthetic config (random weights)."""
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch

from mmdeform.apis import inference_detector, init_detector, same_size_batches
from mmdeform.engine import CheckpointRefusedError

CLASSES = ('circle', 'square', 'triangle', 'cross')


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def model(tiny_config):
    torch.manual_seed(0)
    return init_detector(tiny_config)


def random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def assert_same_detections(a, b, atol=1e-4):
    pa, pb = a.pred_instances, b.pred_instances
    torch.testing.assert_close(pa.scores, pb.scores, atol=atol, rtol=0)
    torch.testing.assert_close(pa.bboxes, pb.bboxes, atol=atol, rtol=0)
    assert torch.equal(pa.labels, pb.labels)


def test_batched_equals_one_by_one(model):
    # sizes that resize to different inputs, and two pairs that share one
    images = random_images([(64, 64), (40, 70), (64, 64), (33, 90), (40, 70)])
    batch_sizes = []
    hook = model.backbone.register_forward_pre_hook(
        lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        batched = inference_detector(model, images, batch_size=4)
        assert sorted(batch_sizes) == [1, 2, 2]  # same-size images share a forward pass
        batch_sizes.clear()
        single = [inference_detector(model, image) for image in images]
        assert batch_sizes == [1] * 5
    finally:
        hook.remove()
    assert len(batched) == len(images)
    for one, many, image in zip(single, batched, images):
        assert one.ori_shape == many.ori_shape == image.shape[:2]
        assert len(one.pred_instances.scores) == 10  # test_cfg.max_per_img of the tiny config
        assert_same_detections(one, many)


def test_path_and_array_give_the_same(model, tmp_path):
    image = random_images([(48, 80)], seed=1)[0]
    path = tmp_path / 'image.png'
    mmcv.imwrite(image, str(path))
    # one call each: the same pixels must reach the model (bitwise equal outputs); in one
    # batch the two rows could differ in the last bit through the batched kernels
    from_path = inference_detector(model, str(path))
    from_array = inference_detector(model, image)
    assert from_path.img_path == str(path) and from_path.ori_shape == (48, 80)
    assert from_path.img_shape == (58, 96)  # Resize(scale=(96, 64), keep_ratio) of the config
    assert_same_detections(from_path, from_array, atol=0)
    boxes = from_path.pred_instances.bboxes  # original pixels: centre inside the image
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert ((centres >= 0) & (centres <= torch.tensor([80.0, 48.0]))).all()


def test_bad_inputs(model):
    with pytest.raises(ValueError, match=r'\(H, W, 3\)'):
        inference_detector(model, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match='paths or numpy arrays'):
        inference_detector(model, [torch.zeros(3, 8, 8)])
    with pytest.raises(FileNotFoundError):
        inference_detector(model, '/nonexistent/image.png')
    with pytest.raises(ValueError, match='no images'):
        inference_detector(model, [])


def test_checkpoint_weights_and_classes(tiny_config, model, tmp_path):
    state_dict = {k: v + 0.5 if v.is_floating_point() else v
                  for k, v in model.state_dict().items()}
    names = ('a', 'b', 'c', 'd')
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': state_dict, 'meta': {'dataset_meta': {'classes': names}}}, ckpt)
    loaded = init_detector(tiny_config, str(ckpt))
    assert loaded.dataset_meta == {'classes': names}
    assert not loaded.training
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    # without a checkpoint the classes come from the config's test dataset
    assert model.dataset_meta == {'classes': CLASSES}


def test_checkpoint_errors(tiny_config, tmp_path):
    wrong = tmp_path / 'wrong.pth'
    torch.save({'state_dict': {'backbone.nothing': torch.zeros(1)}}, wrong)
    with pytest.raises(ValueError, match='does not fit the model'):
        init_detector(tiny_config, str(wrong))
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': {}, 'meta': {'obj': Path('x')}}, unsafe)
    with pytest.raises(CheckpointRefusedError):
        init_detector(tiny_config, str(unsafe))
    with pytest.raises(FileNotFoundError, match='config'):
        init_detector(str(tmp_path / 'missing.py'))


def test_cfg_options(tiny_config, tmp_path):
    model = init_detector(tiny_config, cfg_options={'model.test_cfg.max_per_img': 3})
    sample = inference_detector(model, random_images([(32, 32)])[0])
    assert len(sample.pred_instances.scores) == 3


def test_same_size_batches():
    sizes = [(2, 3), (4, 5), (2, 3), (2, 3), (4, 5)]
    assert same_size_batches(sizes, None) == [[0, 2, 3], [1, 4]]
    assert same_size_batches(sizes, 2) == [[0, 2], [3], [1, 4]]
