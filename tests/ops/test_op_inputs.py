"""The one maker of op inputs (mmdeform.ops.op_inputs.make_op_inputs)."""
import pytest
import torch

from mmdeform.ops.op_inputs import make_op_inputs


@pytest.mark.parametrize('weight_init', ['normalized', 'softmax'])
def test_weights_sum_to_one_per_head(weight_init):
    weights = make_op_inputs([(3, 4), (2, 2)], weight_init=weight_init)[4]
    assert weights.shape == (2, 7, 3, 2, 2)
    torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(2, 7, 3, dtype=torch.float64))


def test_value_init_and_same_draw_in_every_dtype():
    normal = make_op_inputs([(4, 4)], value_init='normal', seed=1)[0]
    assert (normal < 0).any() and not (make_op_inputs([(4, 4)], seed=1)[0] < 0).any()
    half = make_op_inputs([(4, 4)], value_init='normal', seed=1, dtype=torch.float32)[0]
    torch.testing.assert_close(half.double(), normal, rtol=1e-6, atol=1e-6)


def test_unknown_init_is_named():
    with pytest.raises(ValueError, match="weight_init one of .* got 'uniform', 'gauss'"):
        make_op_inputs([(2, 2)], weight_init='gauss')
