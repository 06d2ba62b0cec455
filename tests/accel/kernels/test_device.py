"""CPU numerics of accel.kernels._device: the vectorisable exp, the fixed-order row sums, the chunk count."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from numba import njit

from accel.kernels import _device

LENGTHS = [0, 1, 15, 16, 17, 31, 33, 255, 256, 257, 600, 1664]
ROOT = Path(__file__).resolve().parents[3]


def fixed_order_sum(a, lanes):
    """row_sum's documented order, step by step in NumPy scalars of a's dtype (no FMA, no reassociation)."""
    a = np.asarray(a)
    add = a.dtype.type
    w = lanes
    while w > a.size and w > 16:
        w //= 2
    total = add(0)
    if a.size < w:
        for v in a:
            total = add(total + v)
        return total
    acc = a[:w].copy()
    blocks = a.size // w
    for b in range(1, blocks):
        acc = acc + a[b * w:(b + 1) * w]
    tail = a[blocks * w:]
    acc[:tail.size] = acc[:tail.size] + tail
    h = w // 2
    while h >= 1:
        acc[:h] = acc[:h] + acc[h:2 * h]
        h //= 2
    return acc[0]


@njit
def _sigmoid_all(z, out):
    for i in range(z.shape[0]):
        out[i] = _device.sigmoid_vec(z[i])


def jit_sigmoid(z):
    out = np.empty_like(z)
    _sigmoid_all(z, out)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lanes", [16, 256])
@pytest.mark.parametrize("n", LENGTHS)
def test_row_sum_follows_the_documented_order_bit_for_bit(dtype, lanes, n):
    a = np.random.default_rng(n).standard_normal(n).astype(dtype) * 100
    got = _device.row_sum(a, np.empty(lanes, dtype))
    assert got == fixed_order_sum(a, lanes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", LENGTHS)
def test_row_sum_and_row_dot_against_exact_sums(dtype, n):
    rng = np.random.default_rng(1000 + n)
    a, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    acc = np.empty(_device.CPU_SUM_LANES, dtype)
    eps = np.finfo(dtype).eps
    # Any summation order is within (n - 1) eps sum |terms| of the exact sum; the products add one eps each.
    np.testing.assert_allclose(_device.row_sum(a, acc), math.fsum(a.astype(float)), rtol=0,
                               atol=n * eps * np.abs(a).sum() + 1e-300)
    terms = a.astype(float) * b.astype(float)
    np.testing.assert_allclose(_device.row_dot(a, b, acc), math.fsum(terms), rtol=0,
                               atol=(n + 1) * eps * np.abs(terms).sum() + 1e-300)


def test_row_sums_of_integers_are_exact():
    a = np.arange(1, 1001, dtype=np.float32)
    acc = np.empty(_device.CPU_SUM_LANES, np.float32)
    assert _device.row_sum(a, acc) == 500500.0
    assert _device.row_dot(a[:100], a[:100], acc) == 338350.0  # sum of k^2, k = 1..100


def test_row_sums_of_an_empty_row_are_zero():
    acc = np.empty(16, np.float64)
    assert _device.row_sum(np.zeros(0), acc) == 0.0
    assert _device.row_dot(np.zeros(0), np.zeros(0), acc) == 0.0


def test_sigmoid_float32_relative_error():
    z = np.concatenate([np.linspace(-87.0, 87.0, 400_001), np.random.default_rng(2).standard_normal(100_000) * 4])
    z = z.astype(np.float32)
    want = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    # A few float32 ulps (eps = 1.2e-7): the polynomial exp is within about one, the division adds half.
    np.testing.assert_allclose(jit_sigmoid(z), want, rtol=3e-7, atol=0)


def test_sigmoid_float32_saturation_and_special_values():
    z = np.array([0.0, -0.0, 88.0, 200.0, np.inf, -88.0, -200.0, -np.inf, np.nan], np.float32)
    got = jit_sigmoid(z)
    np.testing.assert_array_equal(got[:5], [0.5, 0.5, 1.0, 1.0, 1.0])
    # Below z = -88.376 the clamped exponent holds sigmoid at its value there, 4.2e-39: under FLT_MIN, and
    # within 4.2e-39 of the true value.
    np.testing.assert_allclose(got[5], 1.0 / (1.0 + np.exp(88.0)), rtol=1e-6)
    assert 0.0 <= got[6] <= 4.2e-39 and 0.0 <= got[7] <= 4.2e-39
    assert np.isnan(got[8])


def test_sigmoid_float64_is_the_libm_formula():
    z = np.random.default_rng(3).standard_normal(1000) * 50
    np.testing.assert_array_equal(jit_sigmoid(z), [1.0 / (1.0 + math.exp(-v)) for v in z])
    assert jit_sigmoid(np.array([-1000.0]))[0] == 0.0


def test_sigmoid_outside_jitted_code():
    assert _device.sigmoid_vec(0.5) == 1.0 / (1.0 + math.exp(-0.5))
    assert _device.sigmoid_vec(-1000.0) == 0.0 and _device.sigmoid_vec(1000.0) == 1.0


def test_grad_rows_of_a_dense_gradient():
    grad = torch.arange(24.0).view(2, 3, 4)
    rows = _device.grad_rows(grad, 1, torch.float32)
    assert rows.shape == (6, 4) and rows.dtype == torch.float32
    np.testing.assert_array_equal(rows.numpy(), np.arange(24.0).reshape(6, 4))
    np.testing.assert_array_equal(_device.grad_rows(grad, 2, torch.float64).numpy(), np.arange(24.0).reshape(2, 12))


def test_grad_rows_of_a_broadcast_gradient_is_one_row():
    row = torch.tensor([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(_device.grad_rows(row.expand(5, 3), 1, torch.float32).numpy(), [[1.0, 2.0, 3.0]])
    scalar = torch.tensor(0.5).expand(2, 3, 4)  # what out.sum().backward() passes on
    np.testing.assert_array_equal(_device.grad_rows(scalar, 2, torch.float32).numpy(), np.full((1, 12), 0.5))
    # Broadcast inside a row only: the rows differ, so all of them are materialised.
    inner = torch.tensor([[1.0], [2.0]]).expand(2, 3)
    np.testing.assert_array_equal(_device.grad_rows(inner, 1, torch.float32).numpy(), [[1.0] * 3, [2.0] * 3])


def test_grad_rows_of_empty_gradients():
    assert _device.grad_rows(torch.zeros(0, 4), 1, torch.float32).shape == (0, 4)
    assert _device.grad_rows(torch.zeros(3, 0).expand(3, 0), 1, torch.float32).shape == (3, 0)


def test_cpu_kernel_chunks():
    threads = numba.get_num_threads()
    assert _device.cpu_kernel_chunks(0) == 0
    assert _device.cpu_kernel_chunks(1) == 1
    assert _device.cpu_kernel_chunks(10_000) == threads


_CACHE_PROBE = """
import numpy as np
from accel.kernels import fm
fm._fm_forward_cpu(np.ones((2, 3), np.float32), np.empty((2, 1), np.float32), np.empty(2, np.float32), 1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("boundscheck, cached", [("0", True), ("1", False)])
def test_bounds_checked_builds_stay_out_of_the_disk_cache(tmp_path, boundscheck, cached):
    # Numba's cache key ignores NUMBA_BOUNDSCHECK: a cached checked build would slow every later run down.
    env = dict(os.environ, NUMBA_BOUNDSCHECK=boundscheck, NUMBA_CACHE_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, check=True, cwd=ROOT, timeout=600)
    assert bool(list(tmp_path.rglob("fm._fm_forward_cpu-*.nbi"))) == cached


# --- simulated_cuda: CPU tensors on the CUDA launch path, under Numba's simulator ------------------------


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM, reason="checks the error raised without the simulator")
def test_simulated_cuda_needs_the_simulator():
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM=1"):
        with _device.simulated_cuda():
            pass
    assert not _device.simulating()


def test_outside_a_simulated_block_cpu_tensors_launch_on_the_cpu():
    t = torch.zeros(3)
    assert not _device.is_cuda(t) and not _device.is_cuda_device(torch.device("cpu"))
    assert _device.is_cuda_device(torch.device("cuda"))
    assert isinstance(_device.as_numba_array(t), np.ndarray)


_SIMULATOR_PROBE = """
import threading
import numpy as np
import torch
from accel.kernels import _device, fm

x = torch.tensor(np.random.default_rng(0).standard_normal((3, 5)), dtype=torch.float32, requires_grad=True)
cpu = fm.fm_interaction(x)
cpu.sum().backward()
cpu_grad = x.grad.clone()
x.grad = None
with _device.simulated_cuda() as launches:
    t = torch.zeros(4)
    view = _device.as_numba_array(t)
    view[1] = 2.5  # a write through the simulator array lands in the tensor
    assert t[1].item() == 2.5, t
    assert _device.is_cuda(t) and _device.simulating()
    other = []
    worker = threading.Thread(target=lambda: other.append(_device.is_cuda(t)))
    worker.start(); worker.join()
    assert other == [False], "another thread's CPU tensors must keep the CPU path"
    sim = fm.fm_interaction(x)
    sim.sum().backward()
    assert launches.count == 2, launches.count
    with _device.simulated_cuda() as inner:
        fm.fm_interaction(x.detach())
    assert inner.count == 1 and launches.count == 3, (inner.count, launches.count)
assert not _device.simulating() and not _device.is_cuda(torch.zeros(1))
kernels = fm._cuda_kernels()
assert all(type(k).__module__.startswith("numba.cuda.simulator") for k in vars(kernels).values())
np.testing.assert_allclose(sim.detach().numpy(), cpu.detach().numpy(), rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(x.grad.numpy(), cpu_grad.numpy(), rtol=1e-5, atol=1e-6)
print("simulated launches ok")
"""


@pytest.mark.slow
def test_simulated_cuda_runs_the_cuda_kernels_on_cpu_tensors():
    # The simulator must be on before numba is imported: a fresh interpreter.
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", _SIMULATOR_PROBE], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "simulated launches ok" in proc.stdout
