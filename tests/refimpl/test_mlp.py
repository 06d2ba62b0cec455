"""refimpl.modules.mlp: Perceptron and MLP."""

import math

import numpy as np
import pytest

from refimpl.grad_check import check_module_gradients
from refimpl.modules.activation import SwishLayerNorm, sigmoid
from refimpl.modules.mlp import MLP, Perceptron


def _affine(x, sd, prefix):
    return x @ sd[prefix + "weight"].T + sd[prefix + "bias"]


def _sig(z):
    return 1 / (1 + np.exp(-z))


# --- Perceptron -----------------------------------------------------------------------------------


def test_perceptron_keys_shapes_and_relu_formula():
    rng = np.random.default_rng(0)
    p = Perceptron(3, 2, rng=rng)
    sd = p.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {"_linear.weight": (2, 3), "_linear.bias": (2,)}
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(p(x), np.maximum(_affine(x, sd, "_linear."), 0), rtol=1e-14)


def test_perceptron_swish_layernorm_keys():
    p = Perceptron(3, 2, activation="swish_layernorm", rng=np.random.default_rng(0))
    assert {k: v.shape for k, v in p.state_dict().items()} == {
        "_linear.weight": (2, 3),
        "_linear.bias": (2,),
        "_activation_fn.norm.0.weight": (2,),
        "_activation_fn.norm.0.bias": (2,),
    }


def test_perceptron_hand_example_sigmoid():
    p = Perceptron(2, 1, activation="sigmoid", rng=np.random.default_rng(0))
    p.load_state_dict({"_linear.weight": [[1.0, 1.0]], "_linear.bias": [-1.0]})
    np.testing.assert_allclose(p(np.array([[0.5, 0.5]])), [[0.5]], rtol=1e-15)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "swish_layernorm", sigmoid])
@pytest.mark.parametrize("bias", [True, False])
def test_perceptron_gradients(activation, bias):
    rng = np.random.default_rng(1)
    p = Perceptron(3, 2, bias=bias, activation=activation, rng=rng)
    check_module_gradients(p, rng.standard_normal((2, 3)), rng=rng)


def test_perceptron_with_module_instance_gradients():
    rng = np.random.default_rng(2)
    act = SwishLayerNorm(2)
    act.load_state_dict({"norm.0.weight": [0.5, 2.0], "norm.0.bias": [0.1, -0.3]})
    p = Perceptron(3, 2, activation=act, rng=rng)
    assert p.state_dict()["_activation_fn.norm.0.weight"] is act.state_dict()["norm.0.weight"]
    check_module_gradients(p, rng.standard_normal((1, 2, 3)), rng=rng)


def test_perceptron_plain_callable_forward_only():
    rng = np.random.default_rng(3)
    p = Perceptron(3, 2, activation=np.tanh, rng=rng)
    x = rng.standard_normal((2, 3))
    np.testing.assert_allclose(p(x), np.tanh(_affine(x, p.state_dict(), "_linear.")), rtol=1e-14)
    with pytest.raises(TypeError, match="activation <ufunc 'tanh'> has no known derivative"):
        p.backward(np.ones((2, 2)))


def test_perceptron_lambda_is_kept_as_callable():
    p = Perceptron(2, 2, activation=lambda z: 2 * z, rng=np.random.default_rng(4))
    np.testing.assert_allclose(p(np.ones((1, 2))), 2 * _affine(np.ones((1, 2)), p.state_dict(), "_linear."))


def test_perceptron_float32():
    p = Perceptron(3, 2, activation="swish_layernorm", dtype=np.float32, rng=np.random.default_rng(5))
    assert p(np.ones((2, 3), dtype=np.float32)).dtype == np.float32
    assert p.state_dict()["_activation_fn.norm.0.weight"].dtype == np.float32


def test_perceptron_errors():
    accepted = r"\['relu', 'sigmoid', 'swish_layernorm'\]"
    with pytest.raises(ValueError, match=rf"activation: expected one of {accepted} .* got 'tanh'"):
        Perceptron(3, 2, activation="tanh", rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="activation: expected a string, .* got 3 \\(int\\)"):
        Perceptron(3, 2, activation=3, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="out_size: expected a non-negative int, got '2'"):
        Perceptron(3, "2", rng=np.random.default_rng(0))
    p = Perceptron(3, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"Perceptron: input expected shape \(\*, 3\), got \(2, 2\)"):
        p(np.zeros((2, 2)))


# --- MLP ------------------------------------------------------------------------------------------


def test_mlp_keys_and_draw_order():
    m = MLP(4, [3, 2], rng=np.random.default_rng(7))
    sd = m.state_dict()
    assert list(sd) == [f"_mlp.{i}._linear.{p}" for i in range(2) for p in ("weight", "bias")]
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(sd["_mlp.0._linear.weight"], rng.uniform(-0.5, 0.5, (3, 4)))
    np.testing.assert_array_equal(sd["_mlp.0._linear.bias"], rng.uniform(-0.5, 0.5, 3))
    bound = 1 / math.sqrt(3)
    np.testing.assert_array_equal(sd["_mlp.1._linear.weight"], rng.uniform(-bound, bound, (2, 3)))
    np.testing.assert_array_equal(sd["_mlp.1._linear.bias"], rng.uniform(-bound, bound, 2))


@pytest.mark.parametrize("activation_on_last", [True, False])
def test_mlp_forward_formula(activation_on_last):
    rng = np.random.default_rng(8)
    m = MLP(4, [3, 2], activation="sigmoid", activation_on_last=activation_on_last, rng=rng)
    sd = m.state_dict()
    x = rng.standard_normal((5, 4))
    h = _sig(_affine(x, sd, "_mlp.0._linear."))
    z = _affine(h, sd, "_mlp.1._linear.")
    np.testing.assert_allclose(m(x), _sig(z) if activation_on_last else z, rtol=1e-14)


def test_mlp_swish_layernorm_fresh_per_layer():
    m = MLP(4, [3, 2], activation="swish_layernorm", rng=np.random.default_rng(0))
    sd = m.state_dict()
    assert sd["_mlp.0._activation_fn.norm.0.weight"].shape == (3,)
    assert sd["_mlp.1._activation_fn.norm.0.weight"].shape == (2,)
    last = MLP(4, [3, 2], activation="swish_layernorm", activation_on_last=False, rng=np.random.default_rng(0))
    assert not any(k.startswith("_mlp.1._activation_fn") for k in last.state_dict())


def test_mlp_module_instance_shared_by_all_layers():
    act = SwishLayerNorm(3)
    m = MLP(3, [3, 3], activation=act, rng=np.random.default_rng(0))
    sd = m.state_dict()
    assert sd["_mlp.0._activation_fn.norm.0.bias"] is sd["_mlp.1._activation_fn.norm.0.bias"]


def test_mlp_factory_called_once_per_layer():
    made = []

    def factory():
        made.append(SwishLayerNorm(2))
        return made[-1]

    m = MLP(3, [2, 2, 2], activation=factory, rng=np.random.default_rng(0))
    assert len(made) == 3
    sd = m.state_dict()
    assert sd["_mlp.0._activation_fn.norm.0.weight"] is not sd["_mlp.2._activation_fn.norm.0.weight"]


def test_mlp_empty_layer_sizes_is_identity():
    m = MLP(3, [], rng=np.random.default_rng(0))
    x = np.arange(6.0).reshape(2, 3)
    assert m.state_dict() == {}
    np.testing.assert_array_equal(m(x), x)
    grad_x, grads = m.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(grad_x, np.ones((2, 3)))
    assert grads == {}


@pytest.mark.parametrize("activation_on_last", [True, False])
@pytest.mark.parametrize("activation", ["relu", "swish_layernorm"])
def test_mlp_gradients(activation, activation_on_last):
    rng = np.random.default_rng(9)
    m = MLP(3, [4, 2], activation=activation, activation_on_last=activation_on_last, rng=rng)
    check_module_gradients(m, rng.standard_normal((2, 3)), rng=rng)


def test_mlp_shared_module_gradient_is_total_over_layers():
    rng = np.random.default_rng(10)
    act = SwishLayerNorm(3)
    act.load_state_dict({"norm.0.weight": [0.5, 1.5, -1.0], "norm.0.bias": [0.2, 0.0, -0.1]})
    m = MLP(3, [3, 3], activation=act, rng=rng)
    _, grads = check_module_gradients(m, rng.standard_normal((2, 3)), rng=rng)
    key = "_activation_fn.norm.0.weight"
    np.testing.assert_array_equal(grads["_mlp.0." + key], grads["_mlp.1." + key])


def test_mlp_empty_batch_and_float32():
    m = MLP(3, [2], dtype=np.float32, rng=np.random.default_rng(0))
    y = m(np.zeros((0, 3), dtype=np.float32))
    assert y.shape == (0, 2) and y.dtype == np.float32


def test_mlp_errors():
    accepted = r"\['relu', 'sigmoid', 'swish_layernorm'\]"
    with pytest.raises(ValueError, match=rf"activation expected one of {accepted} .* got 'gelu'"):
        MLP(3, [], activation="gelu", rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="activation expected a string or a callable, got 1.5"):
        MLP(3, [2], activation=1.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"layer_sizes\[1\]: expected a non-negative int, got -2"):
        MLP(3, [2, -2], rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="layer_sizes expected a list of ints, got 4"):
        MLP(3, 4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"MLP: input expected shape \(\*, 3\), got \(2, 5\)"):
        MLP(3, [2], rng=np.random.default_rng(0))(np.zeros((2, 5)))
