"""DetDataPreprocessor: normalization, channel order, padding and shapes."""
import pytest
import torch

import mmdeform.models  # noqa: F401  (registers the preprocessor)
from mmdeform.models.data_preprocessors import DetDataPreprocessor
from mmdeform.registry import MODELS
from mmdeform.structures import DetDataSample

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _images(generator, shapes):
    return [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8)
            for h, w in shapes]


def _expected(image_bgr, channel_order=(2, 1, 0)):
    """Normalize one uint8 BGR image channel by channel, RGB output."""
    out = torch.empty(image_bgr.shape, dtype=torch.float32)
    for c, src in enumerate(channel_order):
        mean, std = torch.tensor(MEAN[c]), torch.tensor(STD[c])
        out[c] = (image_bgr[src].float() - mean) / std
    return out


def test_normalizes_converts_to_rgb_and_pads_with_zero():
    generator = torch.Generator().manual_seed(0)
    images = _images(generator, [(5, 7), (6, 4)])
    samples = [DetDataSample(metainfo=dict(img_shape=(5, 7))), DetDataSample()]
    preprocessor = MODELS.build(dict(type='DetDataPreprocessor'))
    out = preprocessor(dict(inputs=images, data_samples=samples), training=True)
    inputs = out['inputs']
    assert inputs.shape == (2, 3, 6, 7) and inputs.dtype == torch.float32
    torch.testing.assert_close(inputs[0, :, :5, :7], _expected(images[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(inputs[1, :, :6, :4], _expected(images[1]), rtol=0, atol=1e-6)
    assert (inputs[0, :, 5:, :] == 0).all()
    assert (inputs[1, :, :, 4:] == 0).all()
    for sample in out['data_samples']:
        assert sample.batch_input_shape == (6, 7)
    assert [s.pad_shape for s in out['data_samples']] == [(5, 7), (6, 4)]
    # img_shape is kept when set and filled from the input otherwise.
    assert [s.img_shape for s in out['data_samples']] == [(5, 7), (6, 4)]


def test_known_pixel_values():
    # One pixel, BGR = (10, 20, 30) -> RGB = (30, 20, 10).
    image = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    out = DetDataPreprocessor()(dict(inputs=[image]))['inputs']
    expected = [(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375]
    assert out.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    kept = DetDataPreprocessor(bgr_to_rgb=False, mean=(0, 0, 0), std=(1, 2, 4))(
        dict(inputs=[image]))['inputs']
    assert kept.flatten().tolist() == [10.0, 10.0, 7.5]


def test_pad_size_divisor_and_pad_value():
    generator = torch.Generator().manual_seed(1)
    images = _images(generator, [(5, 7), (9, 4)])
    samples = [DetDataSample(), DetDataSample()]
    preprocessor = DetDataPreprocessor(pad_size_divisor=4, pad_value=-1.5)
    out = preprocessor(dict(inputs=images, data_samples=samples))
    assert out['inputs'].shape == (2, 3, 12, 8)
    assert [s.batch_input_shape for s in out['data_samples']] == [(12, 8), (12, 8)]
    assert [s.pad_shape for s in out['data_samples']] == [(8, 8), (12, 4)]
    assert (out['inputs'][0, :, 5:, :] == -1.5).all()
    assert (out['inputs'][0, :, :, 7:] == -1.5).all()
    assert (out['inputs'][1, :, :, 4:] == -1.5).all()
    torch.testing.assert_close(out['inputs'][1, :, :9, :4], _expected(images[1]))


def test_stacked_tensor_input():
    generator = torch.Generator().manual_seed(2)
    batch = torch.stack(_images(generator, [(5, 6), (5, 6)]))
    out = DetDataPreprocessor(pad_size_divisor=4)(dict(inputs=batch, data_samples=None))
    assert out['inputs'].shape == (2, 3, 8, 8)
    assert out['data_samples'] is None
    torch.testing.assert_close(out['inputs'][1, :, :5, :6], _expected(batch[1]))
    assert (out['inputs'][:, :, 5:, :] == 0).all() and (out['inputs'][:, :, :, 6:] == 0).all()


def test_floating_input_keeps_dtype():
    image = torch.rand(3, 4, 5, dtype=torch.float64) * 255
    out = DetDataPreprocessor()(dict(inputs=[image]))['inputs']
    assert out.dtype == torch.float64
    expected = (image.flip(0) - torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)) \
        / torch.tensor(STD, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-12)


def test_bad_inputs_raise_naming_the_sample():
    good = torch.zeros(3, 4, 4, dtype=torch.uint8)
    preprocessor = DetDataPreprocessor()
    with pytest.raises(ValueError, match=r'inputs\[1\].*\(1, 4, 4\)'):
        preprocessor(dict(inputs=[good, torch.zeros(1, 4, 4, dtype=torch.uint8)]))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\).*\(2, 4, 4, 4\)'):
        preprocessor(dict(inputs=torch.zeros(2, 4, 4, 4, dtype=torch.uint8)))
    with pytest.raises(ValueError, match='2 images but 1 data_samples'):
        preprocessor(dict(inputs=[good, good], data_samples=[DetDataSample()]))
    with pytest.raises(ValueError, match='non-empty'):
        preprocessor(dict(inputs=[]))
    with pytest.raises(ValueError, match='mean and std'):
        DetDataPreprocessor(mean=(1.0,), std=(1.0,))
    with pytest.raises(ValueError, match='pad_size_divisor'):
        DetDataPreprocessor(pad_size_divisor=0)


def test_statistics_survive_model_casts():
    preprocessor = DetDataPreprocessor().half()
    image = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    out = preprocessor(dict(inputs=[image]))['inputs']
    assert out.dtype == torch.float32
    assert out[0, 0].item() == pytest.approx((30 - 123.675) / 58.395, rel=1e-6)
