"""What the exporters rely on: the GridSample twin of the op, the op's ONNX branch, and
level sizes carried as Python ints (so the model traces as it is, without patches)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mmdeform.apis import init_detector
from mmdeform.models.encoders import DeformableEncoder
from mmdeform.models.query_generators import TwoStageProposals
from mmdeform.models.stage_outputs import EncoderOutput
from mmdeform.ops import MSDeformAttn, ms_deform_attn_reference
from mmdeform.ops.ms_deform_attn import ms_deform_attn_grid_sample

LEVELS = [(5, 7), (3, 4), (1, 2)]


def test_grid_sample_twin_equals_the_reference():
    torch.manual_seed(0)
    value = torch.randn(2, sum(h * w for h, w in LEVELS), 3, 4, dtype=torch.float64)
    # some points outside [0, 1] (zeros are read there)
    locations = torch.rand(2, 6, 3, 3, 2, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 6, 3, 3, 2, dtype=torch.float64)
    expected = ms_deform_attn_reference(value, torch.tensor(LEVELS), torch.tensor([0, 35, 47]),
                                        locations, weights)
    torch.testing.assert_close(ms_deform_attn_grid_sample(value, LEVELS, locations, weights),
                               expected, rtol=0, atol=1e-14)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_onnx_export_decomposes_the_op(tmp_path):
    """While torch.onnx.export traces, the op is the GridSample reference: standard
    operators only, and onnxruntime computes what the eager layer computes."""
    onnx = pytest.importorskip('onnx', reason='onnx is an optional dependency')
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=8, num_heads=2, num_levels=1, num_points=2).eval()
    args = (torch.randn(1, 3, 8), torch.rand(1, 3, 1, 2), torch.randn(1, 12, 8),
            torch.tensor([[3, 4]]), torch.tensor([0]))
    out_file = str(tmp_path / 'attn.onnx')
    names = ['query', 'reference_points', 'value', 'shapes', 'starts']
    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        torch.onnx.export(attn, args, out_file, dynamo=False, opset_version=17,
                          input_names=names)
    graph = onnx.load(out_file).graph
    assert 'GridSample' in {node.op_type for node in graph.node}
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}
    onnxruntime = pytest.importorskip('onnxruntime', reason='optional dependency')
    session = onnxruntime.InferenceSession(out_file, providers=['CPUExecutionProvider'])
    arrays = dict(zip(names, (a.numpy() for a in args)))
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    with torch.no_grad():
        expected = attn(*args)
    torch.testing.assert_close(torch.from_numpy(session.run(None, feeds)[0]), expected,
                               rtol=0, atol=1e-5)


def make_encoder() -> DeformableEncoder:
    layer = dict(num_heads=2, num_points=2, feedforward_dims=32, dropout=0.0)
    return DeformableEncoder(num_layers=1, embed_dims=16, num_levels=2, layer_cfg=layer).eval()


def encoder_inputs(batch_size: int = 2):
    shapes = [(6, 7), (3, 4)]
    feats = [torch.randn(batch_size, 16, h, w) for h, w in shapes]
    masks = [torch.zeros(batch_size, h, w, dtype=torch.bool) for h, w in shapes]
    return feats, masks, [torch.randn_like(f) for f in feats]


def test_encoder_output_carries_level_sizes_as_ints():
    torch.manual_seed(0)
    with torch.no_grad():
        out = make_encoder()(*encoder_inputs())
    assert out.spatial_shapes_list == [(6, 7), (3, 4)]
    assert all(type(size) is int for shape in out.spatial_shapes_list for size in shape)
    assert out.spatial_shapes.tolist() == [[6, 7], [3, 4]]


def test_encoder_runs_on_fake_tensors():
    """No level size is read back from tensor data (fake tensors have none)."""
    encoder = make_encoder()
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        out = encoder(*encoder_inputs())
        assert out.memory.shape == (2, 6 * 7 + 3 * 4, 16)
    assert out.spatial_shapes_list == [(6, 7), (3, 4)]


def test_encoder_output_level_sizes_checked_or_filled():
    memory = torch.zeros(1, 14, 4)
    common = dict(memory=memory, padding_mask=torch.zeros(1, 14, dtype=torch.bool),
                  spatial_shapes=torch.tensor([[3, 4], [1, 2]]),
                  level_start_index=torch.tensor([0, 12]), valid_ratios=torch.ones(1, 2, 2))
    assert EncoderOutput(**common).spatial_shapes_list == [(3, 4), (1, 2)]
    with pytest.raises(ValueError, match='spatial_shapes_list has 1 levels'):
        EncoderOutput(**common, spatial_shapes_list=[(3, 4)])


def test_detector_compiles_as_one_graph(tiny_config):
    """torch.compile(fullgraph=True) of the detector as it is: no graph break (a level
    size read back from a tensor would be one)."""
    torch.manual_seed(0)
    model = init_detector(str(tiny_config)).eval()
    inputs = torch.randn(1, 3, 64, 96)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.no_grad():
        for got, want in zip(compiled(inputs, None, mode='tensor'),
                             model(inputs, None, mode='tensor')):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_two_stage_proposals_compile_as_one_graph():
    torch.manual_seed(0)
    generator = TwoStageProposals(num_queries=5, embed_dims=16, num_classes=3).eval()
    with torch.no_grad():
        encoder_output = make_encoder()(*encoder_inputs())
        compiled = torch.compile(generator, backend='eager', fullgraph=True)
        got, want = compiled(encoder_output), generator(encoder_output)
    torch.testing.assert_close(got.query, want.query, rtol=0, atol=0)
    torch.testing.assert_close(got.reference_points, want.reference_points, rtol=0, atol=0)
