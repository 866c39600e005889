"""The static-shape pieces used by the exporters."""
import torch

from mmdeform.analysis import grid_sample_attention, ms_deform_attn_static
from mmdeform.ops import MSDeformAttn, ms_deform_attn_module, ms_deform_attn_reference


def test_static_twin_equals_the_reference():
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4), (1, 2)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 3, 4, dtype=torch.float64)
    # some points outside [0, 1] (zeros are read there)
    locations = torch.rand(2, 6, 3, 3, 2, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 6, 3, 3, 2, dtype=torch.float64)
    spatial_shapes = torch.tensor(shapes)
    starts = torch.tensor([0, 35, 47])
    expected = ms_deform_attn_reference(value, spatial_shapes, starts, locations, weights)
    torch.testing.assert_close(ms_deform_attn_static(value, shapes, locations, weights),
                               expected, rtol=0, atol=1e-14)


def test_grid_sample_attention_swaps_and_restores():
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=8, num_heads=2, num_levels=1, num_points=2)
    args = (torch.randn(1, 3, 8), torch.rand(1, 3, 1, 2), torch.randn(1, 12, 8),
            torch.tensor([[3, 4]]), torch.tensor([0]))
    original = ms_deform_attn_module.ms_deform_attn
    expected = attn(*args)
    shapes = []
    with grid_sample_attention(shapes):
        assert ms_deform_attn_module.ms_deform_attn is not original
        shapes.append((3, 4))  # filled after entering, as static_spatial_shapes does
        torch.testing.assert_close(attn(*args), expected, rtol=0, atol=1e-6)
    assert ms_deform_attn_module.ms_deform_attn is original
