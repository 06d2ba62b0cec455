"""CPU kernels of accel.kernels.swish_layernorm against float64 NumPy formulas: forward, backward, binding, errors."""

import numpy as np
import pytest
import torch

from accel.kernels.swish_layernorm import swish_layernorm

EPS = {torch.float32: np.finfo(np.float32).eps, torch.float64: np.finfo(np.float64).eps}


def forward_reference(x, gamma, beta, eps=1e-5):
    """y = x sigmoid((x - mu) / sqrt(var + eps) gamma + beta) over rows of D = gamma.size (float64)."""
    rows = np.asarray(x, dtype=np.float64).reshape(-1, np.size(gamma))
    gamma = np.asarray(gamma, dtype=np.float64).reshape(-1)
    beta = np.asarray(beta, dtype=np.float64).reshape(-1)
    mu = rows.mean(axis=1, keepdims=True)
    var = rows.var(axis=1, keepdims=True)  # biased, as LayerNorm
    z = (rows - mu) / np.sqrt(var + eps) * gamma + beta
    return (rows / (1.0 + np.exp(-z))).reshape(np.shape(x))


def backward_reference(x, gamma, beta, g, eps=1e-5):
    """(dx, dgamma, dbeta) from each row's full Jacobian J = diag(s) + diag(x s (1-s) gamma) dxhat/dx (float64)."""
    d = np.size(gamma)
    norm_shape = np.shape(gamma)
    rows = np.asarray(x, dtype=np.float64).reshape(-1, d)
    grads = np.asarray(g, dtype=np.float64).reshape(-1, d)
    gamma = np.asarray(gamma, dtype=np.float64).reshape(-1)
    beta = np.asarray(beta, dtype=np.float64).reshape(-1)
    dx = np.empty_like(rows)
    dgamma = np.zeros(d)
    dbeta = np.zeros(d)
    for r, (row, grad) in enumerate(zip(rows, grads)):
        rstd = 1.0 / np.sqrt(row.var() + eps)
        xhat = (row - row.mean()) * rstd
        s = 1.0 / (1.0 + np.exp(-(xhat * gamma + beta)))
        dxhat_dx = rstd * (np.eye(d) - 1.0 / d - np.outer(xhat, xhat) / d)
        jacobian = np.diag(s) + np.diag(row * s * (1 - s) * gamma) @ dxhat_dx
        dx[r] = jacobian.T @ grad
        dgamma += grad * row * s * (1 - s) * xhat
        dbeta += grad * row * s * (1 - s)
    return dx.reshape(np.shape(x)), dgamma.reshape(norm_shape), dbeta.reshape(norm_shape)


def make(shape, norm_shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2.0 + 0.5, rng.standard_normal(norm_shape), rng.standard_normal(norm_shape),
            rng.standard_normal(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,norm_shape", [((1, 32), (32,)), ((4, 31), (31,)), ((3, 33), (33,)),
                                              ((2, 3, 4), (3, 4)), ((5, 1), (1,)), ((3, 600), (600,))])
def test_forward_matches_formula(dtype, shape, norm_shape):
    x, gamma, beta, _ = make(shape, norm_shape, sum(shape))
    y = swish_layernorm(*(torch.tensor(a, dtype=dtype) for a in (x, gamma, beta)))
    assert y.shape == shape and y.dtype == dtype
    # Normalisation divides by sqrt(var): relative error a few ulps per element, times |x|.
    np.testing.assert_allclose(y.numpy(), forward_reference(x, gamma, beta), rtol=64 * EPS[dtype],
                               atol=64 * EPS[dtype] * np.abs(x).max())


def test_hand_traceable_values():
    # Row [1, -1]: mu = 0, var = 1, xhat = [1, -1] / sqrt(1 + eps); gamma = 1, beta = 0.
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    y = swish_layernorm(x, torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), eps=0.0)
    sig = 1.0 / (1.0 + np.exp(-1.0))
    np.testing.assert_allclose(y.numpy(), [[sig, -(1.0 - sig)]], rtol=1e-15)


def test_eps_is_used():
    x, gamma, beta, _ = make((3, 6), (6,), 11)
    y = swish_layernorm(*(torch.tensor(a) for a in (x, gamma, beta)), eps=0.5)
    np.testing.assert_allclose(y.numpy(), forward_reference(x, gamma, beta, eps=0.5), rtol=1e-13, atol=1e-13)


def test_large_offset_rows_stay_accurate():
    # Two-pass variance: a row of 1e4 + small noise keeps its relative accuracy in float32.
    rng = np.random.default_rng(12)
    x = 1.0e4 + rng.standard_normal((4, 33))
    y = swish_layernorm(torch.tensor(x, dtype=torch.float32), torch.ones(33), torch.zeros(33))
    np.testing.assert_allclose(y.numpy(), forward_reference(x.astype(np.float32), np.ones(33), np.zeros(33)),
                               rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_batch(dtype):
    x = torch.zeros((0, 3, 8), dtype=dtype, requires_grad=True)
    gamma = torch.ones(8, dtype=dtype, requires_grad=True)
    beta = torch.zeros(8, dtype=dtype, requires_grad=True)
    y = swish_layernorm(x, gamma, beta)
    assert y.shape == (0, 3, 8)
    y.sum().backward()
    assert x.grad.shape == (0, 3, 8)
    np.testing.assert_array_equal(gamma.grad.numpy(), np.zeros(8))
    np.testing.assert_array_equal(beta.grad.numpy(), np.zeros(8))


def test_saved_statistics():
    x, gamma, beta, _ = make((4, 9), (9,), 13)
    _, mean, rstd = torch.ops.recspec.swish_layernorm(torch.tensor(x), torch.tensor(gamma), torch.tensor(beta), 1e-5)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(rstd.numpy(), 1.0 / np.sqrt(x.var(axis=1) + 1e-5), rtol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,norm_shape", [((1, 32), (32,)), ((7, 31), (31,)), ((3, 33), (33,)),
                                              ((2, 3, 4), (3, 4)), ((2, 2, 300), (2, 300))])
def test_backward_matches_jacobian(dtype, shape, norm_shape):
    x_np, gamma_np, beta_np, g_np = make(shape, norm_shape, 100 + sum(shape))
    x, gamma, beta = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x_np, gamma_np, beta_np))
    swish_layernorm(x, gamma, beta).backward(torch.tensor(g_np, dtype=dtype))
    dx, dgamma, dbeta = backward_reference(x_np, gamma_np, beta_np, g_np)
    # dgamma/dbeta sum over rows: the tolerance grows with the row count.
    tol = 256 * EPS[dtype] * shape[0]
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=tol, atol=tol * np.abs(dx).max())
    np.testing.assert_allclose(gamma.grad.numpy(), dgamma, rtol=tol, atol=tol * np.abs(dgamma).max())
    np.testing.assert_allclose(beta.grad.numpy(), dbeta, rtol=tol, atol=tol * np.abs(dbeta).max())


def test_saturated_sigmoid():
    # z = +-200: s is exactly 1 on one side and below float32's smallest normal (1.2e-38) on the other.
    x = torch.tensor([[1.0, -1.0]])
    y = swish_layernorm(x, torch.full((2,), 200.0), torch.zeros(2), eps=0.0)
    assert y[0, 0] == 1.0
    assert abs(y[0, 1]) < np.finfo(np.float32).tiny
    y64 = swish_layernorm(x.double(), torch.full((2,), 200.0, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                          eps=0.0)
    np.testing.assert_allclose(y64.numpy(), [[1.0, -1.0 / (1.0 + np.exp(200.0))]], rtol=1e-15)


def test_zero_variance_with_zero_eps_gives_nan_as_torch():
    x = torch.ones(2, 4)
    y = swish_layernorm(x, torch.ones(4), torch.zeros(4), eps=0.0)
    assert torch.isnan(y).all()
    assert torch.isnan(x * torch.sigmoid(torch.nn.functional.layer_norm(x, (4,), eps=0.0))).all()


@pytest.mark.parametrize("broadcast", ["row", "scalar"])
def test_backward_with_a_gradient_broadcast_along_the_rows(broadcast):
    x_np, gamma_np, beta_np, g_np = make((3, 4, 300), (300,), 71)
    g_row = g_np[0, 0] if broadcast == "row" else np.full(300, 0.75)
    x, gamma, beta = (torch.tensor(a, requires_grad=True) for a in (x_np, gamma_np, beta_np))
    grad = torch.tensor(g_row).expand(3, 4, 300)  # strides (0, 0, 1): one row, repeated
    swish_layernorm(x, gamma, beta).backward(grad)
    want = backward_reference(x_np, gamma_np, beta_np, np.broadcast_to(g_row, (3, 4, 300)))
    for got, expected in zip((x.grad, gamma.grad, beta.grad), want):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11, atol=1e-11 * np.abs(expected).max())


def test_results_are_bitwise_identical_run_to_run():
    x_np, gamma_np, beta_np, g_np = make((64, 700), (700,), 51)
    runs = []
    for _ in range(2):
        x, gamma, beta = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x_np, gamma_np, beta_np))
        y = swish_layernorm(x, gamma, beta)
        y.backward(torch.tensor(g_np, dtype=torch.float32))
        runs.append([t.detach().numpy().copy() for t in (y, x.grad, gamma.grad, beta.grad)])
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_with_float32_parameters(dtype):
    x_np, gamma_np, beta_np, _ = make((3, 8), (8,), 21)
    x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    gamma = torch.tensor(gamma_np, dtype=torch.float32, requires_grad=True)
    beta = torch.tensor(beta_np, dtype=torch.float32, requires_grad=True)
    y = swish_layernorm(x, gamma, beta)
    assert y.dtype == dtype
    expected = forward_reference(x.detach().float().numpy(), gamma_np, beta_np)
    np.testing.assert_allclose(y.detach().float().numpy(), expected, rtol=1e-2, atol=2e-2)
    y.sum().backward()
    assert (x.grad.dtype, gamma.grad.dtype, beta.grad.dtype) == (dtype, torch.float32, torch.float32)
    dx, dgamma, _ = backward_reference(x.detach().float().numpy(), gamma_np, beta_np, np.ones((3, 8)))
    np.testing.assert_allclose(x.grad.float().numpy(), dx, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(gamma.grad.numpy(), dgamma, rtol=1e-2, atol=1e-2)


def test_gradcheck_float64():
    x_np, gamma_np, beta_np, _ = make((3, 2, 3), (2, 3), 31)
    args = tuple(torch.tensor(a, requires_grad=True) for a in (x_np, gamma_np, beta_np))
    assert torch.autograd.gradcheck(swish_layernorm, args)


def test_opcheck_forward_and_backward():
    x, gamma, beta, g = (torch.tensor(a, dtype=torch.float32) for a in make((4, 5), (5,), 41))
    torch.library.opcheck(torch.ops.recspec.swish_layernorm.default, (x, gamma, beta, 1e-5))
    _, mean, rstd = torch.ops.recspec.swish_layernorm(x, gamma, beta, 1e-5)
    torch.library.opcheck(torch.ops.recspec.swish_layernorm_backward.default, (g, x, gamma, beta, mean, rstd))


def test_rejects_shape_mismatches():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"x must end in normalized_shape \(3, 5\), got shape \(2, 3, 4\)"):
        swish_layernorm(x, torch.ones(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"x must end in normalized_shape \(2, 3, 4, 1\), got shape \(2, 3, 4\)"):
        swish_layernorm(x, torch.ones(2, 3, 4, 1), torch.zeros(2, 3, 4, 1))
    with pytest.raises(ValueError, match=r"bias must have weight's shape \(4,\), got \(3,\)"):
        swish_layernorm(x, torch.ones(4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"weight must have at least one dimension .* got shape \(\)"):
        swish_layernorm(x, torch.ones(()), torch.zeros(()))


def test_rejects_bad_dtypes():
    with pytest.raises(TypeError, match="x must have a floating dtype .* got torch.int64"):
        swish_layernorm(torch.zeros((2, 4), dtype=torch.int64), torch.ones(4), torch.zeros(4))
    # As torch's LayerNorm: float64 input with float32 parameters is refused.
    with pytest.raises(TypeError, match="weight must have x's dtype torch.float64, got torch.float32"):
        swish_layernorm(torch.zeros((2, 4), dtype=torch.float64), torch.ones(4), torch.zeros(4))
    with pytest.raises(TypeError, match="bias must have weight's dtype torch.float32, got torch.float64"):
        swish_layernorm(torch.zeros((2, 4)), torch.ones(4), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="eps must be a float, got str"):
        swish_layernorm(torch.zeros((2, 4)), torch.ones(4), torch.zeros(4), eps="1e-5")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1.0"):
        swish_layernorm(torch.zeros((2, 4)), torch.ones(4), torch.zeros(4), eps=-1.0)


def test_rejects_device_mismatch():
    with pytest.raises(ValueError, match="weight must be on x's device cpu, got meta"):
        swish_layernorm(torch.zeros((2, 4)), torch.ones(4, device="meta"), torch.zeros(4))
