"""accel.modules.mlp: TorchRec's Perceptron/MLP state, RNG order and activation resolution; formulas; bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from accel.modules.activation import SwishLayerNorm
from accel.modules.mlp import MLP, Perceptron


def relu_np(z):
    return np.maximum(z, 0)


def sigmoid_np(z):
    return 1 / (1 + np.exp(-z))


def linear_np(x, state, prefix):
    y = x @ state[f"{prefix}weight"].T
    bias = state.get(f"{prefix}bias")
    return y if bias is None else y + bias


def np_state(module):
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module


# --- Perceptron --------------------------------------------------------------------------------
def test_perceptron_state_dict_and_rng_order():
    torch.manual_seed(5)
    expected = nn.Linear(3, 2)
    torch.manual_seed(5)
    p = Perceptron(3, 2)
    assert [(k, tuple(v.shape), v.dtype) for k, v in p.state_dict().items()] == [
        ("_linear.weight", (2, 3), torch.float32),
        ("_linear.bias", (2,), torch.float32),
    ]
    assert torch.equal(p._linear.weight, expected.weight) and torch.equal(p._linear.bias, expected.bias)


def test_perceptron_without_bias_and_with_dtype():
    p = Perceptron(3, 2, bias=False, dtype=torch.float64)
    assert list(p.state_dict()) == ["_linear.weight"]
    assert p._linear.weight.dtype == torch.float64


def test_perceptron_registers_module_activation():
    p = Perceptron(3, 2, activation=nn.PReLU())
    assert list(p.state_dict()) == ["_linear.weight", "_linear.bias", "_activation_fn.weight"]


@pytest.mark.parametrize(
    "activation, g",
    [(torch.relu, relu_np), (torch.sigmoid, sigmoid_np), (torch.tanh, np.tanh), (nn.SiLU(), lambda z: z * sigmoid_np(z))],
)
@pytest.mark.parametrize("shape", [(4, 3), (0, 3), (2, 5, 3)])
def test_perceptron_float64_formula(activation, g, shape):
    p = randomize(Perceptron(3, 2, activation=activation, dtype=torch.float64), 1)
    x = np.random.default_rng(0).standard_normal(shape)
    out = p(torch.from_numpy(x)).detach().numpy()
    assert out.shape == shape[:-1] + (2,)
    np.testing.assert_allclose(out, g(linear_np(x, np_state(p), "_linear.")), rtol=1e-12, atol=1e-12)


def test_perceptron_bad_input():
    with pytest.raises(ValueError, match=r"in_features=3, got shape \(2, 4\)"):
        Perceptron(3, 2)(torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"input has dtype torch.float64, expected torch.float32"):
        Perceptron(3, 2)(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="out_size must be >= 0, got -1"):
        Perceptron(3, -1)
    with pytest.raises(TypeError, match="activation must be an nn.Module or a callable"):
        Perceptron(3, 2, activation=3)


# --- MLP: structure, keys and RNG order -------------------------------------------------------------
def test_mlp_state_dict_and_rng_order():
    torch.manual_seed(9)
    linears = [nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 1)]
    torch.manual_seed(9)
    m = MLP(4, [3, 2, 1])
    keys = [f"_mlp.{i}._linear.{n}" for i in range(3) for n in ("weight", "bias")]
    assert list(m.state_dict()) == keys
    for i, lin in enumerate(linears):
        assert torch.equal(m._mlp[i]._linear.weight, lin.weight), i
        assert torch.equal(m._mlp[i]._linear.bias, lin.bias), i


def test_mlp_float64_rng_order_follows_dtype():
    torch.manual_seed(9)
    lin = nn.Linear(4, 3, dtype=torch.float64)
    torch.manual_seed(9)
    m = MLP(4, [3], dtype=torch.float64)
    assert torch.equal(m._mlp[0]._linear.weight, lin.weight)


def test_factory_activation_is_built_before_each_linear():
    calls = []

    def factory():
        calls.append(torch.rand(1))  # a draw, to observe the interleaving with the Linears
        return nn.ReLU()

    torch.manual_seed(2)
    draws = []
    for in_i, out_i in [(4, 3), (3, 2)]:
        draws.append(torch.rand(1))
        draws.append(nn.Linear(in_i, out_i).weight.detach())
    torch.manual_seed(2)
    m = MLP(4, [3, 2], activation=factory)
    assert len(calls) == 2 and torch.equal(calls[0], draws[0]) and torch.equal(calls[1], draws[2])
    assert torch.equal(m._mlp[0]._linear.weight, draws[1]) and torch.equal(m._mlp[1]._linear.weight, draws[3])
    assert m._mlp[0]._activation_fn is not m._mlp[1]._activation_fn


def test_module_instance_is_shared_by_every_layer():
    act = nn.PReLU()
    m = MLP(4, [3, 2], activation=act)
    assert m._mlp[0]._activation_fn is act and m._mlp[1]._activation_fn is act
    assert list(m.state_dict()) == [
        "_mlp.0._linear.weight",
        "_mlp.0._linear.bias",
        "_mlp.0._activation_fn.weight",
        "_mlp.1._linear.weight",
        "_mlp.1._linear.bias",
        "_mlp.1._activation_fn.weight",
    ]
    assert sum(1 for _ in m.parameters()) == 5


def test_string_activations_resolve_to_torch_functions():
    assert MLP(4, [3], activation="relu")._mlp[0]._activation_fn is torch.relu
    assert MLP(4, [3], activation="sigmoid")._mlp[0]._activation_fn is torch.sigmoid
    assert MLP(4, [3])._mlp[0]._activation_fn is torch.relu


def test_swish_layernorm_layers_ignore_dtype():
    m = MLP(4, [3, 2], activation="swish_layernorm", dtype=torch.float64)
    assert isinstance(m._mlp[0]._activation_fn, SwishLayerNorm)
    assert m._mlp[0]._activation_fn is not m._mlp[1]._activation_fn
    assert m._mlp[0]._linear.weight.dtype == torch.float32
    assert list(m.state_dict())[:4] == [
        "_mlp.0._linear.weight",
        "_mlp.0._linear.bias",
        "_mlp.0._activation_fn.norm.0.weight",
        "_mlp.0._activation_fn.norm.0.bias",
    ]
    assert m._mlp[1]._activation_fn.norm[0].weight.shape == (2,)


def test_activation_on_last_false_puts_identity_last():
    m = MLP(4, [3, 2], activation="swish_layernorm", activation_on_last=False)
    assert isinstance(m._mlp[1]._activation_fn, nn.Identity)
    assert isinstance(m._mlp[0]._activation_fn, SwishLayerNorm)
    m = MLP(4, [3, 2], activation=torch.sigmoid, activation_on_last=False)
    assert m._mlp[0]._activation_fn is torch.sigmoid and isinstance(m._mlp[1]._activation_fn, nn.Identity)


def test_empty_layer_sizes_is_identity():
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    m = MLP(4, [])
    assert list(m.state_dict()) == []
    assert torch.equal(m(x), x)


# --- MLP: formulas and gradients -----------------------------------------------------------------------
@pytest.mark.parametrize("batch", [0, 3])
def test_mlp_float64_formula(batch):
    m = randomize(MLP(4, [3, 2], activation="sigmoid", dtype=torch.float64, activation_on_last=False), 3)
    x = np.random.default_rng(1).standard_normal((batch, 4))
    s = np_state(m)
    expected = linear_np(sigmoid_np(linear_np(x, s, "_mlp.0._linear.")), s, "_mlp.1._linear.")
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_mlp_gradcheck_float64():
    m = randomize(MLP(3, [4, 2], activation=torch.tanh, dtype=torch.float64), 4)
    names = [k for k, _ in m.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *values))


# --- MLP: bad configuration ---------------------------------------------------------------------------
def test_unknown_string_activation_raises_at_construction():
    with pytest.raises(ValueError, match=r"activation must be one of 'relu', 'sigmoid', 'swish_layernorm'.*'tanh'"):
        MLP(4, [3], activation="tanh")


def test_invalid_sizes():
    with pytest.raises(ValueError, match=r"layer_sizes\[1\] must be >= 0, got -1"):
        MLP(4, [3, -1])
    with pytest.raises(ValueError, match="in_size must be >= 0, got -2"):
        MLP(-2, [3])


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_zero_sizes_behave_like_nn_linear():
    # TorchRec builds nn.Linear layers, which accept zero features: no output columns, or act(bias).
    torch.manual_seed(0)
    assert Perceptron(3, 0)(torch.ones(2, 3)).shape == (2, 0)
    m = MLP(0, [3], activation="sigmoid")
    y = m(torch.zeros(2, 0))
    assert torch.equal(y, torch.sigmoid(m.state_dict()["_mlp.0._linear.bias"]).expand(2, 3))


def test_mlp_input_dtype_mismatch():
    with pytest.raises(TypeError, match=r"input has dtype torch.float64, expected torch.float32"):
        MLP(4, [3])(torch.zeros(2, 4, dtype=torch.float64))
