"""accel.modules.crossnet: TorchRec's state and RNG order, the published seed-0 vectors, float64 formulas, gradients."""

import numpy as np
import pytest
import torch
from torch import nn

from accel.modules.crossnet import (
    CrossLayer,
    CrossNet,
    LowRankCrossLayer,
    LowRankCrossNet,
    LowRankMixtureCrossNet,
    VectorCrossNet,
)


# --- float64 NumPy formulas (semantics.md 3.1-3.4) -------------------------------------------
def np_state(module):
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}


def crossnet_np(x, p, L):
    x_0 = x_l = x
    for l in range(L):
        x_l = x_0 * (x_l @ p[f"kernels.{l}"].T + p[f"bias.{l}"][:, 0]) + x_l
    return x_l


def low_rank_np(x, p, L):
    x_0 = x_l = x
    for l in range(L):
        x_l = x_0 * ((x_l @ p[f"V_kernels.{l}"].T) @ p[f"W_kernels.{l}"].T + p[f"bias.{l}"]) + x_l
    return x_l


def vector_np(x, p, L):
    x_0 = x_l = x
    for l in range(L):
        x_l = x_0 * (x_l @ p[f"kernels.{l}"]) + p[f"bias.{l}"][:, 0] + x_l
    return x_l


def mixture_np(x, p, L, K, g=lambda z: np.maximum(z, 0)):
    x_0 = x_l = x
    for l in range(L):
        experts = []
        for i in range(K):
            U, V, C = p[f"U_kernels.{l}"][i], p[f"V_kernels.{l}"][i], p[f"C_kernels.{l}"][i]
            experts.append(x_0 * (g(g(x_l @ V.T) @ C.T) @ U.T + p[f"bias.{l}"][:, 0]))
        if K == 1:
            x_l = experts[0] + x_l
        else:
            z = np.stack([x_l @ p[f"gates.{i}.weight"][0] for i in range(K)], axis=1)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
            x_l = sum(prob[:, i : i + 1] * experts[i] for i in range(K)) + x_l
    return x_l


def randomize(module, seed):
    """Random parameters everywhere (biases included) so that every term of the formula matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module


# --- state_dict: keys, order, shapes, dtypes ------------------------------------------------
def shapes(module):
    return [(k, tuple(v.shape), v.dtype) for k, v in module.state_dict().items()]


F32 = torch.float32


def test_crossnet_state_dict():
    assert shapes(CrossNet(4, 2)) == [
        ("kernels.0", (4, 4), F32),
        ("kernels.1", (4, 4), F32),
        ("bias.0", (4, 1), F32),
        ("bias.1", (4, 1), F32),
    ]


def test_low_rank_crossnet_state_dict():
    assert shapes(LowRankCrossNet(4, 2, low_rank=3)) == [
        ("W_kernels.0", (4, 3), F32),
        ("W_kernels.1", (4, 3), F32),
        ("V_kernels.0", (3, 4), F32),
        ("V_kernels.1", (3, 4), F32),
        ("bias.0", (4,), F32),
        ("bias.1", (4,), F32),
    ]


def test_vector_crossnet_state_dict():
    assert shapes(VectorCrossNet(4, 2)) == [
        ("kernels.0", (4, 1), F32),
        ("kernels.1", (4, 1), F32),
        ("bias.0", (4, 1), F32),
        ("bias.1", (4, 1), F32),
    ]


def test_mixture_state_dict_with_gates():
    assert shapes(LowRankMixtureCrossNet(4, 2, num_experts=3, low_rank=2)) == [
        ("U_kernels.0", (3, 4, 2), F32),
        ("U_kernels.1", (3, 4, 2), F32),
        ("V_kernels.0", (3, 2, 4), F32),
        ("V_kernels.1", (3, 2, 4), F32),
        ("bias.0", (4, 1), F32),
        ("bias.1", (4, 1), F32),
        ("gates.0.weight", (1, 4), F32),
        ("gates.1.weight", (1, 4), F32),
        ("gates.2.weight", (1, 4), F32),
        ("C_kernels.0", (3, 2, 2), F32),
        ("C_kernels.1", (3, 2, 2), F32),
    ]


def test_mixture_single_expert_has_no_gates():
    m = LowRankMixtureCrossNet(4, 1)
    assert m.gates is None
    assert list(m.state_dict()) == ["U_kernels.0", "V_kernels.0", "bias.0", "C_kernels.0"]


def test_mixture_module_activation_registered_between_gates_and_c():
    m = LowRankMixtureCrossNet(4, 1, num_experts=2, activation=nn.PReLU())
    assert list(m.state_dict()) == [
        "U_kernels.0",
        "V_kernels.0",
        "bias.0",
        "gates.0.weight",
        "gates.1.weight",
        "_activation.weight",
        "C_kernels.0",
    ]


# Keys TorchRec 1.8 writes (semantics.md 3.1-3.4): a TorchRec state_dict loads unchanged.
TORCHREC_KEYS = {
    "CrossNet(3, 2)": (lambda: CrossNet(3, 2), ["kernels.0", "kernels.1", "bias.0", "bias.1"]),
    "LowRankCrossNet(3, 1, 2)": (lambda: LowRankCrossNet(3, 1, 2), ["W_kernels.0", "V_kernels.0", "bias.0"]),
    "VectorCrossNet(3, 1)": (lambda: VectorCrossNet(3, 1), ["kernels.0", "bias.0"]),
    "LowRankMixtureCrossNet(3, 1, 2, 2)": (
        lambda: LowRankMixtureCrossNet(3, 1, 2, 2),
        ["U_kernels.0", "V_kernels.0", "bias.0", "gates.0.weight", "gates.1.weight", "C_kernels.0"],
    ),
}


@pytest.mark.parametrize("name", sorted(TORCHREC_KEYS))
def test_keys_match_torchrec_and_load_strictly(name):
    build, keys = TORCHREC_KEYS[name]
    source, target = build(), build()
    assert list(source.state_dict()) == keys
    randomize(source, 1)
    target.load_state_dict({k: v.clone() for k, v in source.state_dict().items()}, strict=True)
    for k in keys:
        assert torch.equal(target.state_dict()[k], source.state_dict()[k]), k


# --- RNG order: hand transcriptions of TorchRec's constructors (semantics.md 0, 3) -----------
def xavier(*shape):
    t = torch.empty(*shape)
    nn.init.xavier_normal_(t)
    return t


def assert_bit_identical(module, expected):
    state = module.state_dict()
    assert list(state) == list(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


def test_crossnet_rng_order():
    N, L = 3, 2
    torch.manual_seed(7)
    expected = {f"kernels.{l}": xavier(N, N) for l in range(L)}
    expected.update({f"bias.{l}": torch.zeros(N, 1) for l in range(L)})
    torch.manual_seed(7)
    assert_bit_identical(CrossNet(N, L), expected)


def test_low_rank_crossnet_rng_order():
    N, L, r = 4, 2, 3
    torch.manual_seed(7)
    expected = {f"W_kernels.{l}": xavier(N, r) for l in range(L)}
    expected.update({f"V_kernels.{l}": xavier(r, N) for l in range(L)})
    expected.update({f"bias.{l}": torch.zeros(N) for l in range(L)})
    torch.manual_seed(7)
    assert_bit_identical(LowRankCrossNet(N, L, r), expected)


def test_vector_crossnet_rng_order():
    N, L = 5, 3
    torch.manual_seed(7)
    expected = {f"kernels.{l}": xavier(N, 1) for l in range(L)}
    expected.update({f"bias.{l}": torch.zeros(N, 1) for l in range(L)})
    torch.manual_seed(7)
    assert_bit_identical(VectorCrossNet(N, L), expected)


@pytest.mark.parametrize("K", [1, 3])
def test_mixture_rng_order(K):
    N, L, r = 4, 2, 2
    torch.manual_seed(7)
    expected = {f"U_kernels.{l}": xavier(K, N, r) for l in range(L)}
    expected.update({f"V_kernels.{l}": xavier(K, r, N) for l in range(L)})
    expected.update({f"bias.{l}": torch.zeros(N, 1) for l in range(L)})
    if K > 1:
        expected.update({f"gates.{i}.weight": nn.Linear(N, 1, bias=False).weight.detach() for i in range(K)})
    expected.update({f"C_kernels.{l}": xavier(K, r, r) for l in range(L)})
    torch.manual_seed(7)
    assert_bit_identical(LowRankMixtureCrossNet(N, L, num_experts=K, low_rank=r), expected)


@pytest.mark.parametrize("cls", [CrossNet, VectorCrossNet])
def test_dtype_argument_holds_torchrec_values_widened(cls):
    torch.manual_seed(3)
    widened = cls(3, 2).double()
    torch.manual_seed(3)
    built = cls(3, 2, dtype=torch.float64)
    for k, v in widened.state_dict().items():
        assert built.state_dict()[k].dtype == torch.float64
        assert torch.equal(built.state_dict()[k], v), k


# --- TorchRec's published seed-0 vectors (semantics.md 15): input drawn before the module -----
SEED0_CASES = {
    "CrossNet": (lambda: CrossNet(2, 20), [[2.4481, 2.2710], [-63.1721, -109.2410], [1.4030, 1.0054]]),
    "LowRankCrossNet": (
        lambda: LowRankCrossNet(2, 20, low_rank=10),
        [[-11.5, -3.4863], [-0.2742, -0.3330], [249.6694, 117.3466]],
    ),
    "VectorCrossNet": (
        lambda: VectorCrossNet(2, 20),
        [[1.8289e-4, -3.4827e-5], [-220.84, 57.615], [-133.28, -171.87]],
    ),
    "LowRankMixtureCrossNet-K4": (
        lambda: LowRankMixtureCrossNet(2, 20, num_experts=4, low_rank=10),
        [[1.7045, -0.2848], [-2.5357, 0.5811], [-0.9467, -1.3091]],
    ),
    "LowRankMixtureCrossNet-K1": (
        lambda: LowRankMixtureCrossNet(2, 20, num_experts=1, low_rank=10),
        [[3.9203, -0.2686], [-9.5767, 0.8621], [-2.5836, -1.8124]],
    ),
}


@pytest.mark.parametrize("name", sorted(SEED0_CASES))
def test_torchrec_seed0_vectors(name):
    build, expected = SEED0_CASES[name]
    torch.manual_seed(0)
    x = torch.randn(3, 2)
    out = build()(x)
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-4, atol=1e-4)


# --- forward against float64 formulas -----------------------------------------------------------
FORMULA_CASES = {
    "CrossNet": (lambda: CrossNet(5, 3), lambda x, p: crossnet_np(x, p, 3)),
    "LowRankCrossNet": (lambda: LowRankCrossNet(5, 3, 2), lambda x, p: low_rank_np(x, p, 3)),
    "VectorCrossNet": (lambda: VectorCrossNet(5, 3), lambda x, p: vector_np(x, p, 3)),
    "Mixture-K1": (lambda: LowRankMixtureCrossNet(5, 2, 1, 3), lambda x, p: mixture_np(x, p, 2, 1)),
    "Mixture-K3": (lambda: LowRankMixtureCrossNet(5, 2, 3, 2), lambda x, p: mixture_np(x, p, 2, 3)),
    "Mixture-K2-sigmoid": (
        lambda: LowRankMixtureCrossNet(5, 2, 2, 2, activation=torch.sigmoid),
        lambda x, p: mixture_np(x, p, 2, 2, g=lambda z: 1 / (1 + np.exp(-z))),
    ),
}


@pytest.mark.parametrize("name", sorted(FORMULA_CASES))
@pytest.mark.parametrize("batch", [0, 1, 4])
def test_forward_float64_matches_formula(name, batch):
    build, formula = FORMULA_CASES[name]
    module = randomize(build().double(), seed=11)
    x = np.random.default_rng(5).standard_normal((batch, 5))
    out = module(torch.from_numpy(x))
    assert out.shape == (batch, 5) and out.dtype == torch.float64
    np.testing.assert_allclose(out.detach().numpy(), formula(x, np_state(module)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FORMULA_CASES))
def test_forward_float32_close_to_float64_formula(name):
    build, formula = FORMULA_CASES[name]
    module = randomize(build(), seed=12)
    x = np.random.default_rng(6).standard_normal((4, 5)).astype(np.float32)
    out = module(torch.from_numpy(x))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), formula(x.astype(np.float64), np_state(module)), rtol=1e-4, atol=1e-4)


def test_low_rank_crossnet_accepts_leading_dimensions():
    module = randomize(LowRankCrossNet(3, 2, 2).double(), seed=2)
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    out = module(torch.from_numpy(x)).detach().numpy()
    assert out.shape == (2, 4, 3)
    np.testing.assert_allclose(out, low_rank_np(x.reshape(8, 3), np_state(module), 2).reshape(2, 4, 3), rtol=1e-12)


def test_vector_crossnet_bias_is_outside_the_x0_product():
    # D3: W = 0, b = 1, x = [[2, 3]] gives x + b = [[3, 4]] (the page's formula would give [[4, 6]]).
    m = VectorCrossNet(2, 1)
    with torch.no_grad():
        m.kernels[0].zero_()
        m.bias[0].fill_(1.0)
    out = m(torch.tensor([[2.0, 3.0]]))
    assert out.tolist() == [[3.0, 4.0]]


@pytest.mark.parametrize("cls", [CrossNet, LowRankCrossNet, VectorCrossNet, LowRankMixtureCrossNet])
def test_zero_layers_is_identity(cls):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    m = cls(4, 0)
    assert list(m.state_dict()) == []
    assert torch.equal(m(x), x)


def test_mixture_output_keeps_batch_dimension_for_one_sample():
    m = LowRankMixtureCrossNet(3, 2, num_experts=2)
    assert m(torch.ones(1, 3)).shape == (1, 3)


# --- gradients (float64, central differences) ----------------------------------------------------
GRAD_CASES = {
    "CrossNet": lambda: CrossNet(3, 2),
    "LowRankCrossNet": lambda: LowRankCrossNet(3, 2, 2),
    "VectorCrossNet": lambda: VectorCrossNet(3, 2),
    "Mixture-K1": lambda: LowRankMixtureCrossNet(3, 2, 1, 2, activation=torch.tanh),
    "Mixture-K3": lambda: LowRankMixtureCrossNet(3, 2, 3, 2, activation=torch.tanh),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradcheck_float64(name):
    module = randomize(GRAD_CASES[name]().double(), seed=4)
    params = list(module.parameters())
    names = [k for k, _ in module.named_parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def f(x, *values):
        return torch.func.functional_call(module, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))


def test_mixture_relu_gradient_matches_finite_differences_away_from_kinks():
    module = randomize(LowRankMixtureCrossNet(3, 1, 2, 2).double(), seed=9)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [CrossNet, VectorCrossNet, LowRankMixtureCrossNet])
def test_three_dimensional_input_rejected(cls):
    with pytest.raises(ValueError, match=r"input must be 2-D .*in_features=4.*\(2, 5, 4\)"):
        cls(4, 1)(torch.zeros(2, 5, 4))


@pytest.mark.parametrize("cls", [CrossNet, LowRankCrossNet, VectorCrossNet, LowRankMixtureCrossNet])
def test_wrong_feature_count_rejected(cls):
    with pytest.raises(ValueError, match=r"in_features=4, got shape \(2, 3\)"):
        cls(4, 1)(torch.zeros(2, 3))


@pytest.mark.parametrize("cls", [CrossNet, LowRankCrossNet, VectorCrossNet, LowRankMixtureCrossNet])
def test_dtype_mismatch_is_a_type_error(cls):
    with pytest.raises(TypeError, match=r"input has dtype torch.float64, expected torch.float32"):
        cls(4, 1)(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"input has dtype torch.float32, expected torch.float64"):
        cls(4, 1).double()(torch.zeros(2, 4))


def test_non_tensor_input_rejected():
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        CrossNet(2, 1)([[1.0, 2.0]])


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LowRankCrossNet(4, 1, low_rank=0), "low_rank must be >= 1, got 0"),
        (lambda: LowRankMixtureCrossNet(4, 1, num_experts=0), "num_experts must be >= 1, got 0"),
        (lambda: LowRankMixtureCrossNet(4, 1, low_rank=0), "low_rank must be >= 1, got 0"),
        (lambda: CrossNet(0, 1), "in_features must be >= 1, got 0"),
        (lambda: VectorCrossNet(3, -1), "num_layers must be >= 0, got -1"),
    ],
)
def test_invalid_configuration(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_non_int_size_and_non_callable_activation():
    with pytest.raises(TypeError, match="in_features must be an int >= 1, got float 4.0"):
        CrossNet(4.0, 1)
    with pytest.raises(TypeError, match="activation must be an nn.Module or a callable"):
        LowRankMixtureCrossNet(4, 1, activation="relu")


# --- against TorchRec itself, when installed --------------------------------------------------------
def test_bit_identical_to_torchrec_when_installed():
    crossnet = pytest.importorskip("torchrec.modules.crossnet", reason="TorchRec is optional; interop check")
    pairs = [
        (crossnet.CrossNet, CrossNet, (4, 3)),
        (crossnet.LowRankCrossNet, LowRankCrossNet, (4, 3, 2)),
        (crossnet.VectorCrossNet, VectorCrossNet, (4, 3)),
        (crossnet.LowRankMixtureCrossNet, LowRankMixtureCrossNet, (4, 3, 3, 2)),
    ]
    for theirs_cls, ours_cls, args in pairs:
        torch.manual_seed(0)
        theirs = theirs_cls(*args)
        torch.manual_seed(0)
        ours = ours_cls(*args)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for k, v in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v), (ours_cls.__name__, k)
        x = torch.randn(5, 4)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# --- the hand-written layer backwards (CrossLayer, LowRankCrossLayer) --------------------------------
def layer_inputs(seed, *shapes):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, dtype=torch.float64, generator=gen, requires_grad=True) for s in shapes]


def test_cross_layer_gradcheck_with_x0_as_xl():
    # The first layer receives the input on both paths; its gradient is the sum of the two.
    x, W, b = layer_inputs(5, (4, 3), (3, 3), (3, 1))
    assert torch.autograd.gradcheck(lambda x, W, b: CrossLayer.apply(x, x, W, b), (x, W, b))


def test_cross_layer_gradcheck_distinct_inputs_and_second_order():
    x_0, x_l, W, b = layer_inputs(6, (4, 3), (4, 3), (3, 3), (3, 1))
    assert torch.autograd.gradcheck(CrossLayer.apply, (x_0, x_l, W, b))
    assert torch.autograd.gradgradcheck(CrossLayer.apply, (x_0, x_l, W, b))


def test_low_rank_cross_layer_gradcheck_with_x0_as_xl():
    x, W, V, b = layer_inputs(7, (4, 3), (3, 2), (2, 3), (3,))
    assert torch.autograd.gradcheck(lambda x, W, V, b: LowRankCrossLayer.apply(x, x, W, V, b), (x, W, V, b))


def test_low_rank_cross_layer_gradcheck_distinct_inputs_and_second_order():
    x_0, x_l, W, V, b = layer_inputs(8, (4, 3), (4, 3), (3, 2), (2, 3), (3,))
    assert torch.autograd.gradcheck(LowRankCrossLayer.apply, (x_0, x_l, W, V, b))
    assert torch.autograd.gradgradcheck(LowRankCrossLayer.apply, (x_0, x_l, W, V, b))


def test_cross_layer_gradients_match_float64_formulas():
    x_0, x_l, W, b = layer_inputs(9, (5, 3), (5, 3), (3, 3), (3, 1))
    g = np.random.default_rng(9).standard_normal((5, 3))
    CrossLayer.apply(x_0, x_l, W, b).backward(torch.from_numpy(g))
    x0, xl, Wn, bn = (v.detach().numpy() for v in (x_0, x_l, W, b))
    t = xl @ Wn.T + bn[:, 0]
    grad_t = g * x0
    np.testing.assert_allclose(x_0.grad.numpy(), g * t, rtol=1e-12)
    np.testing.assert_allclose(x_l.grad.numpy(), g + grad_t @ Wn, rtol=1e-12)
    np.testing.assert_allclose(W.grad.numpy(), grad_t.T @ xl, rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), grad_t.sum(0)[:, None], rtol=1e-12)


@pytest.mark.parametrize("cls", [CrossNet, LowRankCrossNet])
def test_only_requested_gradients_are_formed(cls):
    module = randomize(cls(3, 2).double(), seed=10)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    frozen = [p for name, p in module.named_parameters() if not name.startswith("bias")]
    for p in frozen:
        p.requires_grad_(False)
    module(x).sum().backward()
    assert x.grad is None and all(p.grad is None for p in frozen)
    # db_l = sum over rows and features of g * x_0 with g = dL/dx_{l+1}; for the last layer g = 1.
    last = module.bias[1].grad
    np.testing.assert_allclose(last.numpy().reshape(-1), x.numpy().sum(0), rtol=1e-12)


def test_crossnet_empty_batch_backward():
    module = CrossNet(3, 2)
    x = torch.zeros(0, 3, requires_grad=True)
    module(x).sum().backward()
    assert x.grad.shape == (0, 3)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in module.parameters())
