"""Sampling capture (hooks on MSDeformAttn) and the mapping to image pixels."""

import numpy as np
import pytest
import torch

from mmdeform.apis import init_detector, run_with_sampling
from mmdeform.ops import MSDeformAttn, ms_deform_attn_reference
from mmdeform.structures import DetDataSample
from mmdeform.visualization import (
    capture_sampling,
    detection_sampling,
    encoder_pixel_sampling,
    to_image_pixels,
)
from mmdeform.visualization.sampling import attention_module_names

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def model(tiny_config):
    torch.manual_seed(0)
    model = init_detector(tiny_config)
    # non-zero attention weights and offsets, so that every head and point differs
    for name in attention_module_names(model, 'encoder') + attention_module_names(model, 'decoder'):
        attn = model.get_submodule(name)
        torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
        torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.2)
    return model


def test_capture_reproduces_the_module_output():
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, num_points=3).double()
    torch.nn.init.normal_(attn.attention_weights.weight)
    shapes = torch.tensor([[4, 5], [2, 3]])
    starts = torch.tensor([0, 20])
    query, value = torch.randn(2, 7, 16).double(), torch.randn(2, 26, 16).double()
    refs = torch.rand(2, 7, 2, 2).double()
    mask = torch.zeros(2, 26, dtype=torch.bool)
    mask[1, 3:5] = True
    plain = attn(query, refs, value, shapes, starts, mask)
    with capture_sampling(attn) as records:
        hooked = attn(query, refs, value, shapes, starts, value_padding_mask=mask)
    assert not attn._forward_hooks  # removed on exit
    assert torch.equal(plain, hooked)  # the normal path is untouched
    record = records['']
    assert record.locations.shape == (2, 7, 2, 2, 3, 2) and record.weights.shape == (2, 7, 2, 2, 3)
    projected = attn.value_proj(value).masked_fill(mask[..., None], 0).view(2, 26, 2, 8)
    recomputed = attn.output_proj(ms_deform_attn_reference(
        projected, shapes, starts, record.locations, record.weights))
    torch.testing.assert_close(recomputed, plain, rtol=0, atol=1e-12)


def test_unknown_module_name(model):
    with pytest.raises(KeyError, match='no MSDeformAttn named'), \
            capture_sampling(model, ['decoder.nothing']):
        pass


def test_padded_batch_maps_references_to_the_image(model):
    """A padded image: captured (valid-ratio scaled) references map back to the
    decoder's image-normalized references, and the valid ratios match the encoder's."""
    images = [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8),
              torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)]
    samples = [DetDataSample(metainfo=dict(img_shape=tuple(i.shape[1:]))) for i in images]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples))
    decoder_name = attention_module_names(model, 'decoder')[-1]
    encoder_outputs = []
    hook = model.encoder.register_forward_hook(lambda m, a, out: encoder_outputs.append(out))
    try:
        with capture_sampling(model, [decoder_name]) as records, torch.no_grad():
            _, query_output = model.forward_stages(data['inputs'], data['data_samples'])
    finally:
        hook.remove()
    record = records[decoder_name]
    torch.testing.assert_close(record.valid_ratios, encoder_outputs[0].valid_ratios)
    assert (record.valid_ratios[1] < 1).all()  # the second image is padded on every level
    for b, (height, width) in enumerate([(64, 96), (30, 50)]):
        for q in range(3):
            pixels = to_image_pixels(record.reference_points[b, q, :, None, :2],
                                     record.valid_ratios[b], (width, height))
            expected = (query_output.reference_points[b, q].double()
                        * torch.tensor([width, height])).numpy()
            np.testing.assert_allclose(pixels[:, 0], np.broadcast_to(expected, (2, 2)),
                                       atol=1e-4)


def test_detection_and_encoder_sampling(model):
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    run = run_with_sampling(model, image)
    pred = run.sample.pred_instances
    queries = detection_sampling(run, topk=3, classes=('a', 'b', 'c', 'd'))
    assert len(queries) == 3
    for k, query in enumerate(queries):
        assert query.points_xy.shape == (4, 2, 2, 2) and query.weights.shape == (4, 2, 2)
        np.testing.assert_allclose(query.weights.sum(axis=(1, 2)), 1.0, atol=1e-6)
        np.testing.assert_allclose(query.box_xyxy, pred.bboxes[k].double().numpy())
        assert query.label.startswith('abcd'[int(pred.labels[k])] + ' ')
    assert detection_sampling(run, topk=3, score_thr=1.1) == []

    # the encoder token whose cell holds the pixel: its reference is that cell's centre
    height, width = run.sample.ori_shape
    h_0, w_0 = run.encoder.spatial_shapes[0].tolist()
    for point in [(0.0, 0.0), (30.0, 20.0), (79.9, 49.9)]:
        query = encoder_pixel_sampling(run, point, level=0)
        cell = np.array([width / w_0, height / h_0])
        assert (np.abs(query.reference_xy - np.array(point)) <= cell / 2 + 1e-6).all()
        assert query.points_xy.shape == (4, 2, 2, 2)
    with pytest.raises(ValueError, match='outside'):
        encoder_pixel_sampling(run, (80.0, 10.0))
    with pytest.raises(IndexError, match='level 2'):
        encoder_pixel_sampling(run, (1.0, 1.0), level=2)
