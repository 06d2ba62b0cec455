"""CUDA kernels of accel.kernels.fm on a GPU or Numba's simulator, against float64 NumPy formulas.

The launch layer takes Numba device arrays, so the same tests run on both backends; the torch-level tests
need CUDA tensors and therefore a real device. Shapes stay tiny: the simulator runs every thread in Python.
"""

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import fm

pytestmark = pytest.mark.cuda

TOL = {np.float32: 1e-5, np.float64: 1e-12}
needs_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch CUDA tensors need a real GPU")


def reference(x):
    """sum_{j<k} x_j x_k per row from the pair products, and its gradient sum_{k != j} x_k (float64)."""
    x = np.asarray(x, dtype=np.float64)
    upper = np.triu(np.ones((x.shape[1], x.shape[1]), dtype=bool), k=1)
    out = ((x[:, :, None] * x[:, None, :]) * upper).sum(axis=(1, 2))[:, None]
    return out, x @ (np.ones((x.shape[1], x.shape[1])) - np.eye(x.shape[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 33), (3, 5)])
def test_launch_layer_forward_and_backward(dtype, rows, cols, ran_on):
    rng = np.random.default_rng(rows * 100 + cols)
    x = rng.standard_normal((rows, cols)).astype(dtype)
    g = rng.standard_normal((rows, 1)).astype(dtype)
    x_dev = cuda.to_device(x)
    out = cuda.device_array((rows, 1), dtype)
    row_sum = cuda.device_array((rows,), dtype)
    fm._launch_cuda_forward(x_dev, out, row_sum)
    dx = cuda.device_array((rows, cols), dtype)
    fm._launch_cuda_backward(cuda.to_device(g), x_dev, row_sum, dx)
    ran_on(fm._cuda_kernels())

    want_out, want_others = reference(x)
    scale = float((np.abs(x.astype(np.float64)).sum(axis=1) ** 2).max())
    np.testing.assert_allclose(out.copy_to_host(), want_out, rtol=0, atol=TOL[dtype] * scale)
    np.testing.assert_allclose(row_sum.copy_to_host(), x.astype(np.float64).sum(axis=1), rtol=0,
                               atol=TOL[dtype] * cols)
    np.testing.assert_allclose(dx.copy_to_host(), g * want_others, rtol=0, atol=TOL[dtype] * scale)


@needs_device
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_cuda_tensors_end_to_end(dtype, ran_on):
    rng = np.random.default_rng(3)
    x_np = rng.standard_normal((70, 33))
    x = torch.tensor(x_np, dtype=dtype, device="cuda", requires_grad=True)
    out = fm.fm_interaction(x)
    out.sum().backward()
    ran_on(fm._cuda_kernels())
    want_out, want_others = reference(x_np)
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    assert out.device.type == "cuda" and x.grad.device.type == "cuda"
    np.testing.assert_allclose(out.detach().cpu().numpy(), want_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(x.grad.cpu().numpy(), want_others, rtol=tol, atol=tol)


@needs_device
def test_torch_cuda_empty_batch_and_gradcheck(ran_on):
    assert fm.fm_interaction(torch.zeros((0, 4), device="cuda")).shape == (0, 1)
    x = torch.randn(3, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(fm.fm_interaction, (x,))
    ran_on(fm._cuda_kernels())
