"""refimpl.modules.crossnet: formulas versus per-sample loops, state, init, gradients, errors.

Golden values are explicit matrix-vector products per sample written here in float64.
"""

import math

import numpy as np
import pytest

from refimpl.grad_check import central_difference_grad, check_module_gradients
from refimpl.modules.activation import relu, sigmoid
from refimpl.modules.crossnet import (
    CrossNet,
    LowRankCrossNet,
    LowRankMixtureCrossNet,
    VectorCrossNet,
    cross_layer,
    cross_layer_backward,
    low_rank_cross_layer,
    low_rank_cross_layer_backward,
    low_rank_mixture_cross_layer,
    low_rank_mixture_cross_layer_backward,
    low_rank_mixture_expert,
    low_rank_mixture_expert_backward,
    mixture_gates,
    vector_cross_layer,
    vector_cross_layer_backward,
    vector_cross_layer_documented,
    vector_cross_layer_documented_backward,
)
from refimpl.modules.utils import xavier_normal


def _relu(z):
    return np.maximum(z, 0.0)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def randomized(module, seed, scale=0.5):
    """The module with every parameter (biases included) redrawn, so no term vanishes."""
    rng = np.random.default_rng(seed)
    state = {k: scale * rng.standard_normal(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(state)
    return module


# --- per-sample references -------------------------------------------------------------------
def loop_cross(x_0, x_l, W, b):
    out = np.empty_like(x_l)
    for s in range(x_l.shape[0]):
        out[s] = x_0[s] * (W @ x_l[s] + b.ravel()) + x_l[s]
    return out


def loop_low_rank(x_0, x_l, W, V, b):
    rows_0, rows_l = x_0.reshape(-1, x_0.shape[-1]), x_l.reshape(-1, x_l.shape[-1])
    out = np.empty_like(rows_l)
    for s in range(rows_l.shape[0]):
        out[s] = rows_0[s] * (W @ (V @ rows_l[s]) + b) + rows_l[s]
    return out.reshape(x_l.shape)


def loop_vector(x_0, x_l, w, b, documented=False):
    out = np.empty_like(x_l)
    for s in range(x_l.shape[0]):
        dot = float(np.dot(w[:, 0], x_l[s]))
        if documented:
            out[s] = x_0[s] * (dot + b.ravel()) + x_l[s]
        else:
            out[s] = x_0[s] * dot + b.ravel() + x_l[s]
    return out


def loop_expert(x_0_s, x_l_s, U_k, C_k, V_k, b, g):
    return x_0_s * (U_k @ g(C_k @ g(V_k @ x_l_s)) + b.ravel())


def loop_mixture(x_0, x_l, U, C, V, b, w, g):
    K = U.shape[0]
    out = np.empty_like(x_l)
    for s in range(x_l.shape[0]):
        experts = [loop_expert(x_0[s], x_l[s], U[k], C[k], V[k], b, g) for k in range(K)]
        if K == 1:
            out[s] = experts[0] + x_l[s]
            continue
        z = np.array([float(np.dot(w[k], x_l[s])) for k in range(K)])
        p = np.exp(z) / np.exp(z).sum()
        out[s] = sum(p[k] * experts[k] for k in range(K)) + x_l[s]
    return out


def mixture_args(seed, B=4, N=5, K=3, r=2):
    rng = np.random.default_rng(seed)
    x_0, x_l = rng.standard_normal((2, B, N))
    U = 0.5 * rng.standard_normal((K, N, r))
    C = 0.5 * rng.standard_normal((K, r, r))
    V = 0.5 * rng.standard_normal((K, r, N))
    b = rng.standard_normal((N, 1))
    w = rng.standard_normal((K, N))
    return x_0, x_l, U, C, V, b, w


# --- layer formulas --------------------------------------------------------------------------
@pytest.mark.parametrize("bias_shape", [(5, 1), (5,)])
def test_cross_layer_matches_per_sample_loop(bias_shape):
    rng = np.random.default_rng(0)
    x_0, x_l = rng.standard_normal((2, 4, 5))
    W, b = rng.standard_normal((5, 5)), rng.standard_normal(bias_shape)
    np.testing.assert_allclose(cross_layer(x_0, x_l, W, b), loop_cross(x_0, x_l, W, b), rtol=1e-13)


@pytest.mark.parametrize("lead", [(4,), (2, 3), (0,)])
def test_low_rank_cross_layer_matches_per_sample_loop(lead):
    rng = np.random.default_rng(1)
    x_0, x_l = rng.standard_normal((2, *lead, 6))
    W, V, b = rng.standard_normal((6, 2)), rng.standard_normal((2, 6)), rng.standard_normal(6)
    got = low_rank_cross_layer(x_0, x_l, W, V, b)
    assert got.shape == (*lead, 6)
    np.testing.assert_allclose(got, loop_low_rank(x_0, x_l, W, V, b), rtol=1e-13)


@pytest.mark.parametrize("documented", [False, True])
def test_vector_cross_layers_match_per_sample_loop(documented):
    rng = np.random.default_rng(2)
    x_0, x_l = rng.standard_normal((2, 4, 5))
    w, b = rng.standard_normal((5, 1)), rng.standard_normal((5, 1))
    fn = vector_cross_layer_documented if documented else vector_cross_layer
    want = loop_vector(x_0, x_l, w, b, documented=documented)
    np.testing.assert_allclose(fn(x_0, x_l, w, b), want, rtol=1e-13)


def test_vector_crossnet_d3_torchrec_form_differs_from_documented_form():
    # Discrepancy D3: W = 0, b = 1, x = [[2, 3]].
    x = np.array([[2.0, 3.0]])
    w, b = np.zeros((2, 1)), np.ones((2, 1))
    net = VectorCrossNet(2, 1)
    net.load_state_dict({"kernels.0": w, "bias.0": b})
    np.testing.assert_array_equal(net(x), [[3.0, 4.0]])
    np.testing.assert_array_equal(vector_cross_layer(x, x, w, b), [[3.0, 4.0]])
    np.testing.assert_array_equal(vector_cross_layer_documented(x, x, w, b), [[4.0, 6.0]])


@pytest.mark.parametrize("g, g_ref", [(relu, _relu), (sigmoid, _sigmoid)], ids=["relu", "sigmoid"])
def test_mixture_expert_matches_per_sample_loop(g, g_ref):
    x_0, x_l, U, C, V, b, _ = mixture_args(3)
    got = low_rank_mixture_expert(x_0, x_l, U, C, V, b, g)
    assert got.shape == (4, 3, 5)
    for s in range(4):
        for k in range(3):
            want = loop_expert(x_0[s], x_l[s], U[k], C[k], V[k], b, g_ref)
            np.testing.assert_allclose(got[s, k], want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("g, g_ref", [(relu, _relu), (sigmoid, _sigmoid)], ids=["relu", "sigmoid"])
def test_mixture_cross_layer_matches_per_sample_loop(K, g, g_ref):
    x_0, x_l, U, C, V, b, w = mixture_args(4, K=K)
    w = w if K > 1 else None
    got = low_rank_mixture_cross_layer(x_0, x_l, U, C, V, b, w, g)
    want = loop_mixture(x_0, x_l, U, C, V, b, w, g_ref)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_mixture_gates_are_a_softmax_summing_to_one():
    rng = np.random.default_rng(5)
    x_l, w = rng.standard_normal((6, 4)), rng.standard_normal((3, 4))
    p = mixture_gates(x_l, w)
    z = x_l @ w.T
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-14)
    np.testing.assert_allclose(p.sum(axis=1), np.ones(6), rtol=1e-15)
    # Logits around 1e3 overflow a naive exp; the gates must stay a finite distribution.
    p_big = mixture_gates(1e3 * x_l, w)
    assert np.all(np.isfinite(p_big))
    np.testing.assert_allclose(p_big.sum(axis=1), np.ones(6), rtol=1e-15)


def test_mixture_with_identical_experts_ignores_the_gates():
    # Softmax weights sum to one, so K copies of one expert give that expert's output.
    x_0, x_l, U, C, V, b, w = mixture_args(6, K=1)
    single = low_rank_mixture_cross_layer(x_0, x_l, U, C, V, b, None, relu)
    U3, C3, V3, w3 = (np.repeat(a, 3, axis=0) for a in (U, C, V, w))
    mixed = low_rank_mixture_cross_layer(x_0, x_l, U3, C3, V3, b, w3, relu)
    np.testing.assert_allclose(mixed, single, rtol=1e-13)


def test_mixture_cross_layer_needs_gate_weights_for_several_experts():
    x_0, x_l, U, C, V, b, _ = mixture_args(7, K=3)
    with pytest.raises(ValueError, match=r"w \(gate weights\) expected shape \(3, N\).*got None"):
        low_rank_mixture_cross_layer(x_0, x_l, U, C, V, b, None, relu)


# --- written backward of each layer formula --------------------------------------------------
def _check_layer_backward(forward, backward, arrays, extra=(), seed=0):
    """backward(grad, *arrays, *extra) against central differences of sum(forward(...) * grad)."""
    grad = np.random.default_rng(seed).standard_normal(forward(*arrays, *extra).shape)
    analytic = backward(grad, *arrays, *extra)
    assert len(analytic) >= len(arrays)
    for i, x in enumerate(arrays):
        numeric = central_difference_grad(lambda _: np.sum(forward(*arrays, *extra) * grad), x)
        np.testing.assert_allclose(analytic[i], numeric, rtol=1e-6, atol=1e-8, err_msg=f"arg {i}")


def test_cross_layer_backward_matches_central_differences():
    rng = np.random.default_rng(10)
    x_0, x_l = rng.standard_normal((2, 3, 4))
    arrays = [x_0, x_l, rng.standard_normal((4, 4)), rng.standard_normal((4, 1))]
    _check_layer_backward(cross_layer, cross_layer_backward, arrays)


def test_low_rank_cross_layer_backward_sums_over_leading_shape():
    rng = np.random.default_rng(11)
    arrays = [*rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((4, 2)),
              rng.standard_normal((2, 4)), rng.standard_normal(4)]
    _check_layer_backward(low_rank_cross_layer, low_rank_cross_layer_backward, arrays)


@pytest.mark.parametrize(
    "forward, backward",
    [(vector_cross_layer, vector_cross_layer_backward),
     (vector_cross_layer_documented, vector_cross_layer_documented_backward)],
    ids=["torchrec", "documented"],
)
def test_vector_cross_layer_backwards_match_central_differences(forward, backward):
    rng = np.random.default_rng(12)
    x_0, x_l = rng.standard_normal((2, 3, 4))
    arrays = [x_0, x_l, rng.standard_normal((4, 1)), rng.standard_normal((4, 1))]
    _check_layer_backward(forward, backward, arrays)


@pytest.mark.parametrize("g", [relu, sigmoid], ids=["relu", "sigmoid"])
def test_mixture_expert_backward_matches_central_differences(g):
    arrays = list(mixture_args(13, B=3, N=4, K=2, r=2)[:6])
    _check_layer_backward(low_rank_mixture_expert, low_rank_mixture_expert_backward, arrays, (g,))


@pytest.mark.parametrize("K", [1, 3])
def test_mixture_cross_layer_backward_matches_central_differences(K):
    x_0, x_l, U, C, V, b, w = mixture_args(14, B=3, N=4, K=K, r=2)
    # With one expert there are no gates: w is None and its gradient too.
    if K > 1:
        arrays, extra = [x_0, x_l, U, C, V, b, w], (sigmoid,)
    else:
        arrays, extra = [x_0, x_l, U, C, V, b], (None, sigmoid)
    grad_w = low_rank_mixture_cross_layer_backward(np.ones((3, 4)), *arrays, *extra)[6]
    assert (grad_w is None) == (K == 1)
    _check_layer_backward(low_rank_mixture_cross_layer, low_rank_mixture_cross_layer_backward,
                          arrays, extra)


# --- modules ---------------------------------------------------------------------------------
def build(name, N=4, L=2, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    if name == "cross":
        return CrossNet(N, L, dtype=dtype, rng=rng)
    if name == "low_rank":
        return LowRankCrossNet(N, L, low_rank=2, dtype=dtype, rng=rng)
    if name == "vector":
        return VectorCrossNet(N, L, dtype=dtype, rng=rng)
    if name == "mixture1":
        return LowRankMixtureCrossNet(N, L, num_experts=1, low_rank=2, dtype=dtype, rng=rng)
    if name == "mixture3":
        return LowRankMixtureCrossNet(N, L, num_experts=3, low_rank=2, dtype=dtype, rng=rng)
    raise AssertionError(name)


ALL = ["cross", "low_rank", "vector", "mixture1", "mixture3"]


def module_reference(name, net, x):
    """The module's output from the per-sample loops and its own state."""
    sd, x_l = net.state_dict(), x
    for l in range(net.num_layers):
        if name == "cross":
            x_l = loop_cross(x, x_l, sd[f"kernels.{l}"], sd[f"bias.{l}"])
        elif name == "low_rank":
            x_l = loop_low_rank(x, x_l, sd[f"W_kernels.{l}"], sd[f"V_kernels.{l}"], sd[f"bias.{l}"])
        elif name == "vector":
            x_l = loop_vector(x, x_l, sd[f"kernels.{l}"], sd[f"bias.{l}"])
        else:
            K = net.num_experts
            w = np.concatenate([sd[f"gates.{k}.weight"] for k in range(K)]) if K > 1 else None
            x_l = loop_mixture(x, x_l, sd[f"U_kernels.{l}"], sd[f"C_kernels.{l}"],
                               sd[f"V_kernels.{l}"], sd[f"bias.{l}"], w, _relu)
    return x_l


@pytest.mark.parametrize("name", ALL)
def test_module_forward_matches_per_sample_loops(name):
    net = randomized(build(name, N=4, L=3), seed=20)
    x = np.random.default_rng(21).standard_normal((5, 4))
    np.testing.assert_allclose(net(x), module_reference(name, net, x), rtol=1e-12, atol=1e-14)


def test_low_rank_crossnet_accepts_any_leading_shape():
    net = randomized(build("low_rank", N=4, L=2), seed=22)
    x = np.random.default_rng(23).standard_normal((2, 3, 4))
    got = net(x)
    assert got.shape == (2, 3, 4)
    want = module_reference("low_rank", net, x.reshape(6, 4)).reshape(2, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_mixture_with_one_expert_equals_the_single_expert_formula():
    net = randomized(build("mixture1", N=4, L=2), seed=24)
    x = np.random.default_rng(25).standard_normal((3, 4))
    sd, want = net.state_dict(), x.copy()
    for l in range(2):
        U, C, V = sd[f"U_kernels.{l}"][0], sd[f"C_kernels.{l}"][0], sd[f"V_kernels.{l}"][0]
        want = np.stack([
            x[s] * (U @ _relu(C @ _relu(V @ want[s])) + sd[f"bias.{l}"][:, 0]) + want[s]
            for s in range(3)
        ])
    np.testing.assert_allclose(net(x), want, rtol=1e-12, atol=1e-14)
    assert not any(k.startswith("gates.") for k in sd)


@pytest.mark.parametrize("name", ["cross", "low_rank", "mixture1", "mixture3"])
def test_zero_kernels_leave_x0_times_bias_plus_x(name):
    net = randomized(build(name, N=4, L=2), seed=26)
    rng = np.random.default_rng(27)
    state = dict(net.state_dict())
    for key in state:
        if key.startswith(("kernels.", "W_kernels.", "U_kernels.")):
            state[key] = np.zeros_like(state[key])
    net.load_state_dict(state)
    x = rng.standard_normal((3, 4))
    # x_{l+1} = x_0 * b_l + x_l from x_0, so after two layers x_0 * (1 + b_0 + b_1).
    b_sum = state["bias.0"].ravel() + state["bias.1"].ravel()
    np.testing.assert_allclose(net(x), x * (1 + b_sum), rtol=1e-14)


def _expected_state(name, N, L):
    K, r = (3 if name == "mixture3" else 1), 2
    if name == "cross":
        return ([(f"kernels.{l}", (N, N)) for l in range(L)]
                + [(f"bias.{l}", (N, 1)) for l in range(L)])
    if name == "low_rank":
        return ([(f"W_kernels.{l}", (N, r)) for l in range(L)]
                + [(f"V_kernels.{l}", (r, N)) for l in range(L)]
                + [(f"bias.{l}", (N,)) for l in range(L)])
    if name == "vector":
        return ([(f"kernels.{l}", (N, 1)) for l in range(L)]
                + [(f"bias.{l}", (N, 1)) for l in range(L)])
    gates = [(f"gates.{k}.weight", (1, N)) for k in range(K)] if K > 1 else []
    return ([(f"U_kernels.{l}", (K, N, r)) for l in range(L)]
            + [(f"V_kernels.{l}", (K, r, N)) for l in range(L)]
            + [(f"bias.{l}", (N, 1)) for l in range(L)]
            + gates
            + [(f"C_kernels.{l}", (K, r, r)) for l in range(L)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ALL)
def test_state_dict_keys_order_shapes_and_dtypes(name, dtype):
    net = build(name, N=5, L=2, dtype=dtype)
    sd = net.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == _expected_state(name, 5, 2)
    assert {v.dtype for v in sd.values()} == {np.dtype(dtype)}
    for key, value in sd.items():
        if key.startswith("bias."):
            np.testing.assert_array_equal(value, 0.0)


def _expected_draws(name, N, L, seed):
    """Parameters drawn in TorchRec's creation order from a fresh generator; no bias draws."""
    rng, out = np.random.default_rng(seed), {}
    for key, shape in _expected_state(name, N, L):
        if key.startswith("bias."):
            out[key] = np.zeros(shape)
        elif key.startswith("gates."):
            out[key] = rng.uniform(-1 / math.sqrt(N), 1 / math.sqrt(N), size=shape)
        else:
            out[key] = xavier_normal(shape, rng, np.float64)
    return out


@pytest.mark.parametrize("name", ALL)
def test_initial_parameters_follow_torchrec_creation_order(name):
    net = build(name, N=5, L=2, seed=31)
    want = _expected_draws(name, 5, 2, seed=31)
    assert list(net.state_dict()) == list(want)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)


def test_xavier_init_statistics_use_torchrec_fan_rules():
    rng = np.random.default_rng(32)
    N, K, r = 200, 4, 30
    cases = [
        (CrossNet(300, 1, rng=rng).state_dict()["kernels.0"], math.sqrt(2 / (300 + 300))),
        (LowRankCrossNet(400, 1, low_rank=50, rng=rng).state_dict()["W_kernels.0"],
         math.sqrt(2 / (50 + 400))),
        (VectorCrossNet(5000, 1, rng=rng).state_dict()["kernels.0"], math.sqrt(2 / (1 + 5000))),
    ]
    mix = LowRankMixtureCrossNet(N, 1, num_experts=K, low_rank=r, rng=rng).state_dict()
    cases += [
        (mix["U_kernels.0"], math.sqrt(2 / (N * r + K * r))),  # [K,N,r]: fan_in N r, fan_out K r
        (mix["V_kernels.0"], math.sqrt(2 / (r * N + K * N))),  # [K,r,N]: fan_in r N, fan_out K N
        (mix["C_kernels.0"], math.sqrt(2 / (r * r + K * r))),  # [K,r,r]: fan_in r r, fan_out K r
    ]
    for value, std in cases:
        assert abs(value.std() / std - 1) < 0.1, (value.shape, value.std(), std)
        assert abs(value.mean()) < 0.1 * std
    gates = np.concatenate([mix[f"gates.{k}.weight"] for k in range(K)])
    assert np.all(np.abs(gates) <= 1 / math.sqrt(N))
    assert abs(gates.std() / math.sqrt(1 / (3 * N)) - 1) < 0.1  # U(-a, a) has variance a^2 / 3


@pytest.mark.parametrize("name", ALL)
def test_backward_matches_central_differences(name):
    net = randomized(build(name, N=3, L=2), seed=40)
    x = np.random.default_rng(41).standard_normal((4, 3))
    grad_input, grads = check_module_gradients(net, x, rng=np.random.default_rng(42))
    assert grad_input.shape == x.shape
    assert list(grads) == list(net.state_dict())


@pytest.mark.parametrize("K", [1, 3])
def test_mixture_backward_with_sigmoid_matches_central_differences(K):
    net = LowRankMixtureCrossNet(3, 2, num_experts=K, low_rank=2, activation="sigmoid",
                                 rng=np.random.default_rng(43))
    randomized(net, seed=44)
    x = np.random.default_rng(45).standard_normal((4, 3))
    _, grads = check_module_gradients(net, x, rng=np.random.default_rng(46))
    assert list(grads) == list(net.state_dict())


def test_low_rank_backward_with_leading_shape_matches_central_differences():
    net = randomized(build("low_rank", N=3, L=2), seed=47)
    x = np.random.default_rng(48).standard_normal((2, 2, 3))
    grad_input, _ = check_module_gradients(net, x, rng=np.random.default_rng(49))
    assert grad_input.shape == (2, 2, 3)


@pytest.mark.parametrize("name", ALL)
def test_float32_in_float32_out(name):
    net64 = randomized(build(name, N=4, L=2), seed=50)
    net32 = build(name, N=4, L=2, dtype=np.float32)
    net32.load_state_dict(net64.state_dict())
    assert {v.dtype for v in net32.state_dict().values()} == {np.dtype(np.float32)}
    x = np.random.default_rng(51).standard_normal((3, 4))
    y32 = net32(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, net64(x), rtol=1e-5, atol=1e-6)
    grad_input, grads = net32.backward(np.ones((3, 4), np.float32))
    assert grad_input.dtype == np.float32
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
    # A float64 input is computed in the module's dtype.
    assert net32(x).dtype == np.float32


@pytest.mark.parametrize("name", ALL)
def test_zero_layers_return_the_input_unchanged(name):
    net = build(name, N=4, L=0)
    x = np.random.default_rng(52).standard_normal((3, 4))
    np.testing.assert_array_equal(net(x), x)
    g = np.random.default_rng(53).standard_normal((3, 4))
    grad_input, grads = net.backward(g)
    np.testing.assert_array_equal(grad_input, g)
    # Only the mixture's gates exist without layers; nothing reads them, so their gradient is 0.
    assert list(grads) == list(net.state_dict()) == [k for k in grads if k.startswith("gates.")]
    for value in grads.values():
        np.testing.assert_array_equal(value, 0.0)


@pytest.mark.parametrize("name", ALL)
def test_empty_batch(name):
    net = randomized(build(name, N=4, L=2), seed=54)
    y = net(np.zeros((0, 4)))
    assert y.shape == (0, 4)
    grad_input, grads = net.backward(np.zeros((0, 4)))
    assert grad_input.shape == (0, 4)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(grads[key], np.zeros(value.shape), err_msg=key)


def test_plain_callable_activation_runs_forward_but_not_backward():
    net = LowRankMixtureCrossNet(4, 1, num_experts=2, low_rank=2, activation=np.tanh)
    randomized(net, seed=55)
    x = np.random.default_rng(56).standard_normal((3, 4))
    sd = net.state_dict()
    w = np.concatenate([sd["gates.0.weight"], sd["gates.1.weight"]])
    want = loop_mixture(x, x, sd["U_kernels.0"], sd["C_kernels.0"], sd["V_kernels.0"],
                        sd["bias.0"], w, np.tanh)
    np.testing.assert_allclose(net(x), want, rtol=1e-12)
    with pytest.raises(TypeError, match="activation 'tanh' has no derivative"):
        net.backward(np.ones((3, 4)))


# --- bad input -------------------------------------------------------------------------------
def re_shape(shape):
    """A regex matching Python's repr of a shape tuple."""
    return "\\(" + ", ".join(map(str, shape)) + (",\\)" if len(shape) == 1 else "\\)")


@pytest.mark.parametrize("name", ["cross", "vector", "mixture1", "mixture3"])
@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 4), (4,)])
def test_two_d_modules_reject_other_shapes(name, shape):
    net = build(name, N=4, L=1)
    pattern = r"input expected shape \[B, 4\] \(2-D\), got " + re_shape(shape)
    with pytest.raises(ValueError, match=pattern):
        net(np.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 5), ()])
def test_low_rank_crossnet_rejects_a_wrong_last_dimension(shape):
    net = build("low_rank", N=4, L=1)
    with pytest.raises(ValueError, match=r"input expected shape \(\*, 4\), got " + re_shape(shape)):
        net(np.zeros(shape))


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: LowRankCrossNet(4, 1, low_rank=0), r"low_rank: expected an int >= 1, got 0"),
        (lambda: LowRankMixtureCrossNet(4, 1, low_rank=0),
         r"low_rank: expected an int >= 1, got 0"),
        (lambda: LowRankMixtureCrossNet(4, 1, num_experts=0),
         r"num_experts: expected an int >= 1, got 0"),
        (lambda: CrossNet(4, -1), r"num_layers: expected an int >= 0, got -1"),
        (lambda: VectorCrossNet(0, 1), r"in_features: expected an int >= 1, got 0"),
        (lambda: LowRankMixtureCrossNet(4, 1, activation="tanh"),
         r"activation expected one of \['relu', 'sigmoid'\] or a callable, got 'tanh'"),
    ],
)
def test_invalid_configuration_raises_value_error(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: CrossNet(4.0, 1), r"in_features: expected an int >= 1, got 4.0 \(float\)"),
        (lambda: LowRankCrossNet(4, True), r"num_layers: expected an int >= 0, got True \(bool\)"),
        (lambda: LowRankMixtureCrossNet(4, 1, activation=3),
         r"activation expected a string or a callable, got int"),
    ],
)
def test_wrong_argument_types_raise_type_error(make, pattern):
    with pytest.raises(TypeError, match=pattern):
        make()


@pytest.mark.parametrize("name", ALL)
def test_backward_checks_its_grad_output_and_call_order(name):
    net = build(name, N=4, L=1)
    with pytest.raises(RuntimeError, match="backward: call forward first"):
        net.backward(np.ones((2, 4)))
    net(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"grad_output expected shape \(2, 4\), got \(3, 4\)"):
        net.backward(np.ones((3, 4)))


def test_load_state_dict_rejects_a_wrong_bias_shape():
    # LowRankCrossNet's bias is (N,), not (N, 1) (discrepancy D5).
    net = build("low_rank", N=4, L=1)
    state = dict(net.state_dict(), **{"bias.0": np.zeros((4, 1))})
    with pytest.raises(ValueError, match=r"'bias.0' expected shape \(4,\), got \(4, 1\)"):
        net.load_state_dict(state)
