"""CUDA kernels of accel.kernels.swish_layernorm on a GPU or Numba's simulator, against float64 NumPy formulas.

The launch layer takes Numba device arrays, so the same tests run on both backends; the torch-level tests
need CUDA tensors and therefore a real device. Shapes stay tiny: the simulator runs every thread in Python.
"""

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import swish_layernorm as sln

pytestmark = pytest.mark.cuda

TOL = {np.float32: 2e-5, np.float64: 1e-12}
needs_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch CUDA tensors need a real GPU")


def reference(x, gamma, beta, g, eps=1e-5):
    """(y, mean, rstd, dx, dgamma, dbeta) of y = x sigmoid(xhat gamma + beta), rows of x (float64).

    dx comes from each row's full Jacobian diag(s) + diag(x s (1 - s) gamma) dxhat/dx.
    """
    x, gamma, beta, g = (np.asarray(a, dtype=np.float64) for a in (x, gamma, beta, g))
    d = x.shape[1]
    mean = x.mean(axis=1)
    rstd = 1.0 / np.sqrt(x.var(axis=1) + eps)
    xhat = (x - mean[:, None]) * rstd[:, None]
    s = 1.0 / (1.0 + np.exp(-(xhat * gamma + beta)))
    dz = g * x * s * (1 - s)
    dx = np.stack([
        (np.diag(s[r]) + np.diag(x[r] * s[r] * (1 - s[r]) * gamma)
         @ (rstd[r] * (np.eye(d) - 1.0 / d - np.outer(xhat[r], xhat[r]) / d))).T @ g[r]
        for r in range(x.shape[0])
    ])
    return x * s, mean, rstd, dx, (dz * xhat).sum(axis=0), dz.sum(axis=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 33), (3, 4)])
def test_launch_layer_forward_and_backward(dtype, rows, cols, ran_on):
    rng = np.random.default_rng(rows * 100 + cols)
    x, g = (rng.standard_normal((rows, cols)).astype(dtype) for _ in range(2))
    gamma, beta = (rng.standard_normal(cols).astype(dtype) for _ in range(2))
    x_dev, gamma_dev, beta_dev = (cuda.to_device(a) for a in (x, gamma, beta))
    y = cuda.device_array((rows, cols), dtype)
    mean = cuda.device_array((rows,), dtype)
    rstd = cuda.device_array((rows,), dtype)
    sln._launch_cuda_forward(x_dev, gamma_dev, beta_dev, 1e-5, y, mean, rstd)
    blocks = sln.cuda_partial_blocks(rows)
    dx = cuda.device_array((rows, cols), dtype)
    dgamma_part = cuda.to_device(np.zeros((blocks, cols), dtype))
    dbeta_part = cuda.to_device(np.zeros((blocks, cols), dtype))
    sln._launch_cuda_backward(cuda.to_device(g), x_dev, gamma_dev, beta_dev, mean, rstd, dx, dgamma_part, dbeta_part)
    ran_on(sln._cuda_kernels())

    want = reference(x, gamma, beta, g)
    got = (y.copy_to_host(), mean.copy_to_host(), rstd.copy_to_host(), dx.copy_to_host(),
           dgamma_part.copy_to_host().sum(axis=0), dbeta_part.copy_to_host().sum(axis=0))
    for name, a, b in zip(("y", "mean", "rstd", "dx", "dgamma", "dbeta"), got, want):
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype] * (np.abs(b).max() + 1), err_msg=name)


def test_launch_layer_more_rows_than_blocks(ran_on):
    # The partial buffers' row count sets the grid: with 2 blocks for 5 rows, each block strides over
    # several rows and adds them into its partial row.
    rng = np.random.default_rng(9)
    x, g = (rng.standard_normal((5, 3)) for _ in range(2))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    _, mean, rstd, want_dx, want_dgamma, want_dbeta = reference(x, gamma, beta, g)
    blocks = 2
    parts = [cuda.to_device(np.zeros((blocks, 3))) for _ in range(2)]
    dx = cuda.device_array((5, 3))
    sln._launch_cuda_backward(*(cuda.to_device(a) for a in (g, x, gamma, beta, mean, rstd)), dx, *parts)
    ran_on(sln._cuda_kernels())
    np.testing.assert_allclose(dx.copy_to_host(), want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts[0].copy_to_host().sum(axis=0), want_dgamma, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts[1].copy_to_host().sum(axis=0), want_dbeta, rtol=1e-12, atol=1e-12)


@needs_device
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_cuda_tensors_end_to_end(dtype, ran_on):
    rng = np.random.default_rng(4)
    x_np, g_np = (rng.standard_normal((600, 33)) for _ in range(2))
    gamma_np, beta_np = rng.standard_normal(33), rng.standard_normal(33)
    x, gamma, beta = (torch.tensor(a, dtype=dtype, device="cuda", requires_grad=True)
                      for a in (x_np, gamma_np, beta_np))
    y = sln.swish_layernorm(x, gamma, beta)
    y.backward(torch.tensor(g_np, dtype=dtype, device="cuda"))
    ran_on(sln._cuda_kernels())
    want_y, _, _, want_dx, want_dgamma, want_dbeta = reference(x_np, gamma_np, beta_np, g_np)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for got, want in ((y, want_y), (x.grad, want_dx), (gamma.grad, want_dgamma), (beta.grad, want_dbeta)):
        np.testing.assert_allclose(got.detach().cpu().numpy(), want, rtol=tol, atol=tol * (np.abs(want).max() + 1))


@needs_device
def test_torch_cuda_empty_batch_and_gradcheck(ran_on):
    assert sln.swish_layernorm(torch.zeros((0, 4), device="cuda"), torch.ones(4, device="cuda"),
                               torch.zeros(4, device="cuda")).shape == (0, 4)
    args = tuple(torch.randn(s, dtype=torch.float64, device="cuda", requires_grad=True) for s in ((3, 5), 5, 5))
    assert torch.autograd.gradcheck(sln.swish_layernorm, args)
    ran_on(sln._cuda_kernels())
