"""refimpl.nn.Linear: y = x W^T + b, torch's initialisation, analytic backward."""

import numpy as np
import pytest

from refimpl.grad_check import check_module_gradients
from refimpl.nn import Linear, linear, linear_backward


def _reference(x, W, b):
    """y[..., o] = sum_i x[..., i] W[o, i] + b[o], written with einsum."""
    return np.einsum("...i,oi->...o", x, W) + (0 if b is None else b)


def test_state_dict_keys_and_shapes():
    m = Linear(3, 2, rng=np.random.default_rng(0))
    assert {k: v.shape for k, v in m.state_dict().items()} == {"weight": (2, 3), "bias": (2,)}
    assert list(Linear(3, 2, bias=False, rng=np.random.default_rng(0)).state_dict()) == ["weight"]


def test_initialisation_draws_weight_then_bias_uniform():
    m = Linear(4, 3, rng=np.random.default_rng(11))
    rng = np.random.default_rng(11)
    np.testing.assert_array_equal(m.state_dict()["weight"], rng.uniform(-0.5, 0.5, (3, 4)))
    np.testing.assert_array_equal(m.state_dict()["bias"], rng.uniform(-0.5, 0.5, 3))


def test_initialisation_within_bound():
    m = Linear(9, 50, rng=np.random.default_rng(5))
    for value in m.state_dict().values():
        assert np.abs(value).max() <= 1 / 3


def test_forward_matches_formula_on_leading_shape():
    rng = np.random.default_rng(1)
    m = Linear(3, 2, rng=rng)
    x = rng.standard_normal((2, 4, 3))
    sd = m.state_dict()
    np.testing.assert_allclose(m(x), _reference(x, sd["weight"], sd["bias"]), rtol=1e-14)


def test_forward_hand_example():
    m = Linear(2, 1, rng=np.random.default_rng(0))
    m.load_state_dict({"weight": [[1.0, -2.0]], "bias": [0.5]})
    np.testing.assert_array_equal(m(np.array([[3.0, 1.0]])), [[1.5]])
    np.testing.assert_array_equal(linear(np.array([[3.0, 1.0]]), np.array([[1.0, -2.0]]), None), [[1.0]])


def test_float32_in_float32_out():
    m = Linear(3, 2, dtype=np.float32, rng=np.random.default_rng(2))
    y = m(np.ones((2, 3), dtype=np.float32))
    assert y.dtype == np.float32
    assert m.state_dict()["weight"].dtype == np.float32


def test_load_state_dict_casts_to_module_dtype():
    m = Linear(2, 2, dtype=np.float32, rng=np.random.default_rng(0))
    m.load_state_dict({"weight": np.eye(2), "bias": [1, 2]})
    assert m.state_dict()["bias"].dtype == np.float32
    np.testing.assert_array_equal(m(np.array([[1.0, 1.0]], dtype=np.float32)), [[2.0, 3.0]])


def test_empty_batch():
    m = Linear(3, 2, rng=np.random.default_rng(3))
    y = m(np.zeros((0, 3)))
    assert y.shape == (0, 2)
    grad_x, grads = m.backward(np.zeros((0, 2)))
    assert grad_x.shape == (0, 3)
    np.testing.assert_array_equal(grads["weight"], np.zeros((2, 3)))


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_central_differences(bias):
    rng = np.random.default_rng(4)
    m = Linear(3, 2, bias=bias, rng=rng)
    check_module_gradients(m, rng.standard_normal((2, 2, 3)), rng=rng)


def test_backward_function_formulas():
    x = np.array([[1.0, 2.0]])
    W = np.array([[3.0, 4.0]])
    grad_x, grad_W, grad_b = linear_backward(np.array([[2.0]]), x, W, True)
    np.testing.assert_array_equal(grad_x, [[6.0, 8.0]])
    np.testing.assert_array_equal(grad_W, [[2.0, 4.0]])
    np.testing.assert_array_equal(grad_b, [2.0])


def test_wrong_input_width():
    m = Linear(3, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"input expected shape \(\*, 3\), got \(2, 4\)"):
        m(np.zeros((2, 4)))


def test_wrong_grad_output_shape():
    m = Linear(3, 2, rng=np.random.default_rng(0))
    m(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"grad_output expected shape \(2, 2\), got \(2, 3\)"):
        m.backward(np.zeros((2, 3)))


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"in_features": -1, "out_features": 2}, ValueError, "in_features: expected a non-negative int, got -1"),
        ({"in_features": 2, "out_features": 2.5}, TypeError, r"out_features: expected .* int, got 2\.5"),
        ({"in_features": 2, "out_features": 2, "bias": "yes"}, TypeError, "bias: expected a bool, got 'yes'"),
    ],
)
def test_bad_configuration(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Linear(**kwargs, rng=np.random.default_rng(0))
