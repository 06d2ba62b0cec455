"""CUDA kernels of accel.kernels.vector_cross on a GPU or Numba's simulator, against float64 NumPy formulas.

The launch layer takes Numba device arrays, so the same tests run on both backends; the torch-level tests
need CUDA tensors and therefore a real device. Shapes stay tiny: the simulator runs every thread in Python.
"""

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import vector_cross as vc

pytestmark = pytest.mark.cuda

TOL = {np.float32: 2e-5, np.float64: 1e-12}
needs_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch CUDA tensors need a real GPU")


def reference(x0, xl, w, b, g):
    """(out, s, dx0, dxl, dw, db) of out = x0 (xl . w) + b + xl, bias outside the product (float64)."""
    x0, xl, w, b, g = (np.asarray(a, dtype=np.float64) for a in (x0, xl, w, b, g))
    s = xl @ w
    ds = (g * x0).sum(axis=1)
    return x0 * s[:, None] + b + xl, s, g * s[:, None], g + np.outer(ds, w), xl.T @ ds, g.sum(axis=0)


def launch(x0, xl, w, b, g, blocks):
    rows, cols = x0.shape
    dtype = x0.dtype
    x0_dev, xl_dev, w_dev = (cuda.to_device(a) for a in (x0, xl, w))
    out = cuda.device_array((rows, cols), dtype)
    dot = cuda.device_array((rows,), dtype)
    vc._launch_cuda_forward(x0_dev, xl_dev, w_dev, cuda.to_device(b), out, dot)
    dx0 = cuda.device_array((rows, cols), dtype)
    dxl = cuda.device_array((rows, cols), dtype)
    dw_part, db_part = (cuda.to_device(np.zeros((blocks, cols), dtype)) for _ in range(2))
    vc._launch_cuda_backward(cuda.to_device(g), x0_dev, xl_dev, w_dev, dot, dx0, dxl, dw_part, db_part)
    return (out.copy_to_host(), dot.copy_to_host(), dx0.copy_to_host(), dxl.copy_to_host(),
            dw_part.copy_to_host().sum(axis=0), db_part.copy_to_host().sum(axis=0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 33), (3, 4)])
def test_launch_layer_forward_and_backward(dtype, rows, cols, ran_on):
    rng = np.random.default_rng(rows * 100 + cols)
    x0, xl, g = (rng.standard_normal((rows, cols)).astype(dtype) for _ in range(3))
    w, b = (rng.standard_normal(cols).astype(dtype) for _ in range(2))
    got = launch(x0, xl, w, b, g, vc.cuda_partial_blocks(rows))
    ran_on(vc._cuda_kernels())
    for name, a, want in zip(("out", "s", "dx0", "dxl", "dw", "db"), got, reference(x0, xl, w, b, g)):
        np.testing.assert_allclose(a, want, rtol=TOL[dtype], atol=TOL[dtype] * (np.abs(want).max() + 1),
                                   err_msg=name)


def test_launch_layer_more_rows_than_blocks(ran_on):
    # The partial buffers' row count sets the grid: with 2 blocks for 5 rows, each block strides over
    # several rows and adds them into its partial row.
    rng = np.random.default_rng(5)
    x0, xl, g = (rng.standard_normal((5, 3)) for _ in range(3))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    got = launch(x0, xl, w, b, g, blocks=2)
    ran_on(vc._cuda_kernels())
    for name, a, want in zip(("out", "s", "dx0", "dxl", "dw", "db"), got, reference(x0, xl, w, b, g)):
        np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-12, err_msg=name)


@needs_device
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_cuda_tensors_end_to_end(dtype, ran_on):
    rng = np.random.default_rng(6)
    x0_np, xl_np, g_np = (rng.standard_normal((700, 33)) for _ in range(3))
    w_np, b_np = rng.standard_normal(33), rng.standard_normal(33)
    args = [torch.tensor(a, dtype=dtype, device="cuda", requires_grad=True) for a in (x0_np, xl_np, w_np, b_np)]
    out = vc.vector_cross_layer(*args)
    out.backward(torch.tensor(g_np, dtype=dtype, device="cuda"))
    ran_on(vc._cuda_kernels())
    want = reference(x0_np, xl_np, w_np, b_np, g_np)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for got, expected in zip([out] + [a.grad for a in args], (want[0],) + want[2:]):
        np.testing.assert_allclose(got.detach().cpu().numpy(), expected, rtol=tol,
                                   atol=tol * (np.abs(expected).max() + 1))


@needs_device
def test_torch_cuda_empty_batch_and_gradcheck(ran_on):
    empty = torch.zeros((0, 4), device="cuda")
    assert vc.vector_cross_layer(empty, empty, torch.ones(4, device="cuda"), torch.ones(4, device="cuda")).shape \
        == (0, 4)
    args = tuple(torch.randn(s, dtype=torch.float64, device="cuda", requires_grad=True)
                 for s in ((3, 4), (3, 4), 4, 4))
    assert torch.autograd.gradcheck(vc.vector_cross_layer, args)
    ran_on(vc._cuda_kernels())
