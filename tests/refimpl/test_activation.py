"""refimpl.modules.activation: elementwise activations and SwishLayerNorm."""

import math

import numpy as np
import pytest

from refimpl.grad_check import check_module_gradients
from refimpl.modules.activation import (
    SwishLayerNorm,
    identity,
    relu,
    sigmoid,
    swish_layernorm,
    swish_layernorm_backward,
)


def _sig(t):
    return 1 / (1 + math.exp(-t))


def _reference(x, gamma, beta, k, eps=1e-5):
    """Y = X sigmoid((X - mu)/sqrt(var + eps) gamma + beta), mu/var over the flattened trailing k dims."""
    lead = x.shape[: x.ndim - k]
    rows = x.reshape(-1, int(np.prod(x.shape[x.ndim - k :])))
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        z = (row - mu) / math.sqrt(var + eps) * gamma.reshape(-1) + beta.reshape(-1)
        out[r] = row / (1 + np.exp(-z))
    return out.reshape(lead + x.shape[x.ndim - k :])


def test_elementwise_activations_and_derivatives():
    z = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(relu(z), [0.0, 0.0, 3.0])
    np.testing.assert_array_equal(relu.derivative(z), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(sigmoid(z), [_sig(-2.0), 0.5, _sig(3.0)], rtol=1e-15)
    np.testing.assert_allclose(sigmoid.derivative(z), [_sig(-2) * _sig(2), 0.25, _sig(3) * _sig(-3)], rtol=1e-14)
    np.testing.assert_array_equal(identity(z), z)
    np.testing.assert_array_equal(identity.derivative(z), np.ones(3))


def test_swish_layernorm_hand_example():
    h = 1 / math.sqrt(1 + 1e-5)  # x = [-1, 1]: mu 0, biased var 1
    x = np.array([[-1.0, 1.0]])
    np.testing.assert_allclose(
        swish_layernorm(x, np.ones(2), np.zeros(2)), [[-_sig(-h), _sig(h)]], rtol=1e-15
    )
    gamma, beta = np.array([2.0, 1.0]), np.array([0.5, -0.5])
    np.testing.assert_allclose(
        swish_layernorm(x, gamma, beta), [[-_sig(-2 * h + 0.5), _sig(h - 0.5)]], rtol=1e-15
    )


def test_swish_layernorm_three_values():
    s = math.sqrt(2 / 3 + 1e-5)  # x = [1, 2, 3]: mu 2, biased var 2/3
    y = swish_layernorm(np.array([1.0, 2.0, 3.0]), np.ones(3), np.zeros(3))
    np.testing.assert_allclose(y, [_sig(-1 / s), 2 * 0.5, 3 * _sig(1 / s)], rtol=1e-15)


def test_module_matches_reference_over_two_trailing_dims():
    rng = np.random.default_rng(0)
    m = SwishLayerNorm([2, 3])
    gamma, beta = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    m.load_state_dict({"norm.0.weight": gamma, "norm.0.bias": beta})
    x = rng.standard_normal((4, 5, 2, 3))
    np.testing.assert_allclose(m(x), _reference(x, gamma, beta, 2), rtol=1e-13, atol=1e-15)


def test_state_dict_keys_shapes_and_init():
    sd = SwishLayerNorm(4).state_dict()
    assert list(sd) == ["norm.0.weight", "norm.0.bias"]
    np.testing.assert_array_equal(sd["norm.0.weight"], np.ones(4))
    np.testing.assert_array_equal(sd["norm.0.bias"], np.zeros(4))
    assert SwishLayerNorm([2, 3]).state_dict()["norm.0.bias"].shape == (2, 3)


def test_float32_in_float32_out():
    m = SwishLayerNorm(3, dtype=np.float32)
    y = m(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _reference(np.array([[1.0, 2.0, 3.0]]), np.ones(3), np.zeros(3), 1), rtol=1e-6)


def test_large_inputs_do_not_overflow():
    y = swish_layernorm(np.array([[-1e6, 1e6]]), np.full(2, 1e3), np.zeros(2))
    np.testing.assert_allclose(y, [[0.0, 1e6]], atol=1e-300)


def test_empty_batch():
    m = SwishLayerNorm(3)
    assert m(np.zeros((0, 3))).shape == (0, 3)
    grad_x, grads = m.backward(np.zeros((0, 3)))
    assert grad_x.shape == (0, 3)
    np.testing.assert_array_equal(grads["norm.0.weight"], np.zeros(3))


@pytest.mark.parametrize("dims, shape", [(3, (2, 3)), ([2, 3], (2, 2, 3))])
def test_gradients_match_central_differences(dims, shape):
    rng = np.random.default_rng(1)
    m = SwishLayerNorm(dims)
    sd = m.state_dict()
    m.load_state_dict({k: rng.standard_normal(v.shape) for k, v in sd.items()})
    check_module_gradients(m, rng.standard_normal(shape), rng=rng)


def test_backward_function_gamma_beta_formula():
    # With x = [-1, 1], gamma = 1, beta = 0: dL/dbeta_d = g_d x_d s_d (1 - s_d), dL/dgamma_d adds x_hat_d.
    h = 1 / math.sqrt(1 + 1e-5)
    x = np.array([[-1.0, 1.0]])
    _, grad_gamma, grad_beta = swish_layernorm_backward(np.ones((1, 2)), x, np.ones(2), np.zeros(2))
    s = np.array([_sig(-h), _sig(h)])
    np.testing.assert_allclose(grad_beta, [-s[0] * (1 - s[0]), s[1] * (1 - s[1])], rtol=1e-14)
    np.testing.assert_allclose(grad_gamma, grad_beta * [-h, h], rtol=1e-14)


def test_trailing_shape_mismatch():
    with pytest.raises(ValueError, match=r"trailing shape \(2, 3\), got input of shape \(4, 3, 2\)"):
        SwishLayerNorm([2, 3])(np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match=r"input expected trailing shape \(5,\), got input of shape \(\)"):
        SwishLayerNorm(5)(np.float64(1.0))


@pytest.mark.parametrize(
    "dims, error, pattern",
    [
        (0, ValueError, "input_dims expected positive ints, got 0"),
        ([], ValueError, r"input_dims expected at least one dimension, got \[\]"),
        (2.5, TypeError, r"input_dims expected an int or a list of ints, got 2\.5"),
    ],
)
def test_bad_input_dims(dims, error, pattern):
    with pytest.raises(error, match=pattern):
        SwishLayerNorm(dims)
