"""refimpl.modules.utils: callable extraction, output-dimension probes and TorchRec's initialisers."""

import math

import numpy as np
import pytest

from refimpl.modules.activation import SwishLayerNorm, relu
from refimpl.modules.mlp import MLP, Perceptron
from refimpl.modules.utils import (
    check_module_output_dimension,
    extract_module_or_tensor_callable,
    get_module_output_dimension,
    init_mlp_weights_xavier_uniform,
    xavier_normal,
    xavier_uniform,
)
from refimpl.nn import Linear


def test_extract_module_or_tensor_callable_rule():
    made = extract_module_or_tensor_callable(lambda: SwishLayerNorm(2))
    assert isinstance(made, SwishLayerNorm)
    fn = lambda z: z  # noqa: E731
    assert extract_module_or_tensor_callable(fn) is fn
    instance = SwishLayerNorm(2)
    assert extract_module_or_tensor_callable(instance) is instance
    assert extract_module_or_tensor_callable(relu) is relu
    with pytest.raises(ValueError, match="module_or_callable: expected a callable .* got one returning int"):
        extract_module_or_tensor_callable(lambda: 3)


def test_extract_propagates_other_type_errors():
    def broken():
        raise TypeError("unsupported operand")

    with pytest.raises(TypeError, match="unsupported operand"):
        extract_module_or_tensor_callable(broken)


def test_output_dimension_helpers():
    rng = np.random.default_rng(0)
    assert get_module_output_dimension(MLP(5, [4, 3], rng=rng), 5) == 3
    assert get_module_output_dimension(lambda x: np.concatenate([x, x], axis=-1), 2) == 4
    linears = [Linear(4, 2, rng=rng), [Linear(4, 2, rng=rng)]]
    assert check_module_output_dimension(linears, 4, 2)
    assert not check_module_output_dimension(linears + [Linear(4, 3, rng=rng)], 4, 2)


def test_init_mlp_weights_xavier_uniform():
    m = Linear(3, 2, rng=np.random.default_rng(0))
    init_mlp_weights_xavier_uniform(m, np.random.default_rng(12))
    bound = math.sqrt(6 / (3 + 2))
    expected = np.random.default_rng(12).uniform(-bound, bound, (2, 3))
    np.testing.assert_array_equal(m.state_dict()["weight"], expected)
    np.testing.assert_array_equal(m.state_dict()["bias"], np.zeros(2))
    with pytest.raises(ValueError, match="m expected a Linear with a bias, got one with bias=False"):
        no_bias = Linear(3, 2, bias=False, rng=np.random.default_rng(0))
        init_mlp_weights_xavier_uniform(no_bias, np.random.default_rng(0))


def test_init_leaves_other_modules_unchanged():
    p = Perceptron(3, 2, rng=np.random.default_rng(0))
    before = {k: v.copy() for k, v in p.state_dict().items()}
    init_mlp_weights_xavier_uniform(p, np.random.default_rng(0))
    for k, v in p.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "shape, fan_in, fan_out",
    [((4, 3), 3, 4), ((5, 4, 2), 8, 10), ((2, 2, 3, 4), 24, 24)],
)
def test_xavier_fan_rules(shape, fan_in, fan_out):
    std = math.sqrt(2 / (fan_in + fan_out))
    expected = std * np.random.default_rng(3).standard_normal(shape)
    np.testing.assert_allclose(xavier_normal(shape, np.random.default_rng(3)), expected, rtol=1e-15)
    bound = math.sqrt(6 / (fan_in + fan_out))
    np.testing.assert_array_equal(
        xavier_uniform(shape, np.random.default_rng(3)), np.random.default_rng(3).uniform(-bound, bound, shape)
    )


def test_xavier_dtype_and_errors():
    assert xavier_normal((3, 2), np.random.default_rng(0), np.float32).dtype == np.float32
    with pytest.raises(ValueError, match=r"shape expected at least 2 dimensions, got \(3,\)"):
        xavier_normal((3,), np.random.default_rng(0))
