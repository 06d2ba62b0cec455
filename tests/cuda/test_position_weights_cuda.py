"""CUDA kernels of accel.kernels.position_weights on a GPU or Numba's simulator, against NumPy loops.

The launch layer takes Numba device arrays, so the same tests run on both backends; the torch-level test
needs CUDA tensors and therefore a real device. Shapes stay tiny: the simulator runs every thread in Python.
"""

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import position_weights as pw

pytestmark = pytest.mark.cuda

needs_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch CUDA tensors need a real GPU")

OFFSETS = np.array([0, 3, 3, 4, 8, 8], np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_launch_layer_forward_and_backward(dtype, ran_on):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(5).astype(dtype)
    g = rng.standard_normal(8).astype(dtype)
    out = cuda.device_array(8, dtype)
    dp = cuda.to_device(np.zeros(5, dtype))
    offsets = cuda.to_device(OFFSETS)
    pw.launch_cuda_forward(offsets, cuda.to_device(p), out)
    pw.launch_cuda_backward(offsets, cuda.to_device(g), dp)
    ran_on(pw._cuda_kernels())
    positions = np.concatenate([np.arange(n) for n in np.diff(OFFSETS)])
    np.testing.assert_array_equal(out.copy_to_host(), p[positions])
    want = np.zeros(5)
    np.add.at(want, positions, g.astype(np.float64))
    np.testing.assert_allclose(dp.copy_to_host(), want, rtol=1e-6, atol=1e-6)


@needs_device
def test_torch_cuda_end_to_end(ran_on):
    p = torch.arange(1.0, 6.0, device="cuda", requires_grad=True)
    w = pw.position_weighted(torch.tensor(OFFSETS).cuda(), p, 8)
    np.testing.assert_array_equal(w.detach().cpu().numpy(), [1, 2, 3, 1, 1, 2, 3, 4])
    w.sum().backward()
    np.testing.assert_array_equal(p.grad.cpu().numpy(), [3, 2, 2, 1, 0])
    ran_on(pw._cuda_kernels())
