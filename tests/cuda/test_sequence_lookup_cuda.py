"""CUDA kernel of accel.kernels.sequence_lookup on a GPU or Numba's simulator, against float64 NumPy loops.

The launch layer takes Numba device arrays, so the same tests run on both backends; the torch-level tests
need CUDA tensors and therefore a real device. Shapes stay tiny: the simulator runs every thread in Python.
"""

import dataclasses

import numpy as np
import pytest
import torch
from numba import cuda

from accel.kernels import _jagged
from accel.kernels import sequence_lookup as sl

pytestmark = pytest.mark.cuda

needs_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch CUDA tensors need a real GPU")

B = 2
OFFSETS = np.array([0, 2, 2, 3, 5], np.int64)  # keys 0 and 1; key 0's second bag empty
IDS = np.array([0, 3, 1, 2, 2], np.int64)
SLOT_KEY = np.array([1, 0, 1], np.int64)
SLOT_TABLE = np.array([0, 1, 2], np.int64)


def tables(seed):
    rng = np.random.default_rng(seed)
    return [torch.tensor(rng.standard_normal((4, 3)), dtype=dtype)
            for dtype in (torch.float32, torch.float16, torch.bfloat16)]


def reference(ts):
    """Rows W_t[i_j] for each slot's ids, slot after slot (float64 of the tables' exact values)."""
    rows = []
    for k, t in zip(SLOT_KEY, SLOT_TABLE):
        rows += [ts[t].double().numpy()[IDS[j]] for j in range(OFFSETS[k * B], OFFSETS[(k + 1) * B])]
    return np.array(rows)


def test_launch_layer_forward(ran_on):
    ts = tables(0)
    host = _jagged.table_args(ts, torch.float32, torch.device("cpu"))
    args = dataclasses.replace(host, wide=tuple(map(cuda.to_device, host.wide)),
                               half=tuple(map(cuda.to_device, host.half)),
                               table_format=cuda.to_device(host.table_format),
                               table_index=cuda.to_device(host.table_index))
    first = OFFSETS[SLOT_KEY * B]
    out_start = np.concatenate([[0], np.cumsum(OFFSETS[(SLOT_KEY + 1) * B] - first)]).astype(np.int64)
    out = cuda.device_array((int(out_start[-1]), 3), np.float32)
    sl.launch_cuda_forward(args, cuda.to_device(IDS), cuda.to_device(SLOT_TABLE), cuda.to_device(first),
                           cuda.to_device(out_start), out)
    ran_on(sl._cuda_kernels())
    # 16-bit values are exact in float32.
    np.testing.assert_array_equal(out.copy_to_host(), reference(ts))


@needs_device
def test_torch_cuda_forward_and_backward(ran_on):
    ts = [t.float().cuda().requires_grad_(True) for t in tables(1)]
    args = (torch.tensor(IDS).cuda(), torch.tensor(OFFSETS).cuda(), torch.tensor(SLOT_KEY).cuda(),
            torch.tensor(SLOT_TABLE).cuda(), B)
    out = sl.sequence_lookup(ts, *args)
    np.testing.assert_array_equal(out.detach().cpu().numpy(), reference([t.detach().cpu() for t in ts]))
    out.sum().backward()
    assert ts[0].grad.device.type == "cuda"
    # Table 0 serves key 1 only, whose ids are 1, 2, 2.
    np.testing.assert_array_equal(ts[0].grad.cpu().numpy(), np.outer([0, 1, 2, 0], np.ones(3)))
    ran_on(sl._cuda_kernels())
