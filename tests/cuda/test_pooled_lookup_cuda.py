"""CUDA kernels of accel.kernels.pooled_lookup on a GPU or Numba's simulator, against float64 NumPy loops.

The launch layer takes Numba device arrays, so the same tests run on both backends; the torch-level tests
need CUDA tensors and therefore a real device. Shapes stay tiny: the simulator runs every thread in Python.
"""

import dataclasses

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import _jagged
from accel.kernels import pooled_lookup as pl

pytestmark = pytest.mark.cuda

needs_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch CUDA tensors need a real GPU")

B = 3
LENGTHS = np.array([2, 0, 1, 3, 1, 0])  # keys 0 and 1, empty bags included
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
IDS = np.array([0, 3, 1, 2, 2, 3, 1], np.int64)
# (key, table, column): key 1 read by two tables, columns out of slot order.
SLOTS = np.array([[0, 0, 9], [1, 1, 0], [0, 1, 3], [1, 2, 6]], np.int64)
TOTAL = 11


def tables(seed):
    """float32 (4, 2), float16 (5, 3), bfloat16 (4, 3) tables as torch CPU tensors."""
    rng = np.random.default_rng(seed)
    return [torch.tensor(rng.standard_normal((4, 2)), dtype=torch.float32),
            torch.tensor(rng.standard_normal((5, 3)), dtype=torch.float16),
            torch.tensor(rng.standard_normal((4, 3)), dtype=torch.bfloat16)]


def device_args(ts, acc=torch.float32):
    """_jagged.TableArgs of the tables with every array copied to the device."""
    host = _jagged.table_args(ts, acc, torch.device("cpu"))
    return dataclasses.replace(host, wide=tuple(map(cuda.to_device, host.wide)),
                               half=tuple(map(cuda.to_device, host.half)),
                               table_format=cuda.to_device(host.table_format),
                               table_index=cuda.to_device(host.table_index))


def reference(ts, psw, mean):
    """out[b, c:c+D] = sum_j w_j W[i_j] (/ L for MEAN), float64 loops over the tables' exact values."""
    out = np.zeros((B, TOTAL))
    for k, t, c in SLOTS:
        W = ts[t].double().numpy()
        for b in range(B):
            lo, hi = OFFSETS[k * B + b], OFFSETS[k * B + b + 1]
            for j in range(lo, hi):
                out[b, c:c + W.shape[1]] += (1.0 if psw is None else psw[j]) * W[IDS[j]]
            if mean and hi > lo:
                out[b, c:c + W.shape[1]] /= hi - lo
    return out


@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_launch_layer_forward(mean, weighted, ran_on):
    ts = tables(0)
    psw = np.random.default_rng(1).uniform(0.5, 2, IDS.size).astype(np.float32) if weighted else None
    out = cuda.device_array((B, TOTAL), np.float32)
    pl.launch_cuda_forward(device_args(ts), cuda.to_device(IDS), cuda.to_device(OFFSETS),
                           *(cuda.to_device(np.ascontiguousarray(SLOTS[:, i])) for i in range(3)),
                           cuda.to_device(psw if weighted else np.zeros(0, np.float32)), weighted, mean, B, out,
                           len(SLOTS), 3)
    ran_on(pl._cuda_kernels())
    np.testing.assert_allclose(out.copy_to_host(), reference(ts, psw, mean), rtol=1e-5, atol=1e-5)


def test_launch_layer_forward_float64():
    ts = [t.double() for t in (torch.tensor(np.random.default_rng(2).standard_normal((5, 3))),) * 3]
    out = cuda.device_array((B, TOTAL - 2), np.float64)
    slots = np.array([[0, 0, 0], [1, 1, 3], [1, 2, 6]], np.int64)
    pl.launch_cuda_forward(device_args(ts, torch.float64), cuda.to_device(IDS), cuda.to_device(OFFSETS),
                           *(cuda.to_device(np.ascontiguousarray(slots[:, i])) for i in range(3)),
                           cuda.to_device(np.zeros(0)), False, False, B, out, 3, 3)
    want = np.zeros((B, 9))
    W = ts[0].numpy()
    for k, _, c in slots:
        for b in range(B):
            want[b, c:c + 3] = W[IDS[OFFSETS[k * B + b]:OFFSETS[k * B + b + 1]]].sum(axis=0)
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-14, atol=1e-14)


def test_launch_layer_find_out_of_range(ran_on):
    key_starts = cuda.to_device(OFFSETS[::B][:2].copy())

    def first_bad(ids, rows):
        result = cuda.to_device(np.array([ids.size], np.int64))
        pl.launch_cuda_find_out_of_range(cuda.to_device(ids), key_starts, cuda.to_device(np.array(rows, np.int64)),
                                         result)
        return int(result.copy_to_host()[0])

    assert first_bad(IDS, [4, 4]) == IDS.size  # nothing out of range
    assert first_bad(IDS, [4, 3]) == 5  # id 3 of key 1 against 3 rows
    assert first_bad(np.array([0, 3, -1, 2, 7, 3, 1]), [4, -1]) == 2  # key 1 unread: only key 0 checked
    ran_on(pl._cuda_kernels())


@needs_device
def test_torch_cuda_forward_backward_and_range_check(ran_on):
    ts = [t.float().cuda().requires_grad_(True) for t in tables(3)]
    slots = [torch.tensor(SLOTS[:, i]).cuda() for i in range(3)]
    ids, offsets = torch.tensor(IDS).cuda(), torch.tensor(OFFSETS).cuda()
    psw = torch.rand(IDS.size, device="cuda", requires_grad=True)
    out = pl.pooled_lookup(ts, ids, offsets, *slots, TOTAL, B, psw, pl.MEAN)
    np.testing.assert_allclose(out.detach().cpu().numpy(),
                               reference([t.detach().cpu() for t in ts], psw.detach().cpu().numpy(), True),
                               rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert all(t.grad.device.type == "cuda" for t in ts) and psw.grad.device.type == "cuda"
    assert pl.find_out_of_range(ids, offsets, slots[0], torch.tensor([4, 5, 4, 4]).cuda(), B) == -1
    ran_on(pl._cuda_kernels())


@needs_device
def test_torch_cuda_gradcheck_and_fused_step(ran_on):
    ts = [torch.randn(4, 3, dtype=torch.float64, device="cuda", requires_grad=True) for _ in range(3)]
    slots = [torch.tensor(SLOTS[:, i]).cuda() for i in range(3)]
    ids, offsets = torch.tensor(IDS).cuda(), torch.tensor(OFFSETS).cuda()
    cols = torch.tensor([9, 0, 3, 6]).cuda()
    assert torch.autograd.gradcheck(
        lambda a, b, c: pl.pooled_lookup([a, b, c], ids, offsets, slots[0], slots[1], cols, 12, B, None, pl.SUM),
        tuple(ts))
    live = [torch.randn(5, 3, device="cuda") for _ in range(3)]
    before = [t.clone() for t in live]
    out = pl.pooled_lookup_fused(live, ids, offsets, slots[0], slots[1], cols, 12, B, None, pl.SUM, "sgd", 0.1,
                                 1e-8, [])
    out.sum().backward()
    assert not torch.equal(live[0], before[0])
    ran_on(pl._cuda_kernels())
