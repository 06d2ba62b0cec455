"""The id range check of the embedding lookups: the first id outside [0, rows) of a table reading its key, found
in one pass over the ids before any lookup kernel runs (the kernels do no bounds checks).

Layers, in this order: kernels (CPU @njit, one key per iteration; CUDA numba.cuda.jit, a flat grid-stride loop)
and the launcher `find_out_of_range`, which validates its arguments and picks the device.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
from numba import prange
from torch import Tensor

from accel.kernels import _device, _jagged

# Bound by _cuda_kernels() on the first CUDA launch (the simulator swaps `cuda` for its fake module).
cuda = None

# find_out_of_range on CUDA: a flat grid-stride loop over the ids, 256 threads a block, at most 4096 blocks.
_FLAT_THREADS = 256
_FLAT_MAX_BLOCKS = 4096


@_device.cpu_jit(parallel=True)
def _find_out_of_range_cpu(indices, offsets, key_rows, B, first_bad):
    # One key per iteration: an unsigned comparison flags negative ids too, and the flag loop vectorises; only
    # a key with a bad id is scanned again for the first one.
    for k in prange(key_rows.shape[0]):
        first_bad[k] = -1
        rows = key_rows[k]
        if rows < 0:
            continue
        lo, hi = offsets[k * B], offsets[(k + 1) * B]
        bad = False
        for j in range(lo, hi):
            bad |= np.uint64(indices[j]) >= np.uint64(rows)
        if bad:
            for j in range(lo, hi):
                if np.uint64(indices[j]) >= np.uint64(rows):
                    first_bad[k] = j
                    break


def _find_out_of_range_cuda(indices, key_starts, key_rows, first_bad):
    # Flat grid-stride loop over the ids; each finds its key by bisection of the key starts and lowers
    # first_bad[0] atomically (the minimum does not depend on the order).
    F = key_rows.shape[0]
    for j in range(cuda.grid(1), indices.shape[0], cuda.gridsize(1)):
        lo, hi = 0, F
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if key_starts[mid] <= j:
                lo = mid
            else:
                hi = mid
        rows = key_rows[lo]
        if rows >= 0 and (indices[j] < 0 or indices[j] >= rows):
            cuda.atomic.min(first_bad, 0, j)


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernel (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda
    cuda = _device.cuda_module()
    return SimpleNamespace(find_out_of_range=cuda.jit(cache=True)(_find_out_of_range_cuda))


def launch_cuda_find_out_of_range(indices, key_starts, key_rows, first_bad, stream=0) -> None:
    """CUDA range check on Numba device arrays; first_bad (1,) int64 must hold len(indices) beforehand."""
    kernels = _cuda_kernels()
    blocks = min(max(1, math.ceil(indices.shape[0] / _FLAT_THREADS)), _FLAT_MAX_BLOCKS)
    kernels.find_out_of_range[blocks, _FLAT_THREADS, stream](indices, key_starts, key_rows, first_bad)


def find_out_of_range(indices: Tensor, offsets: Tensor, slot_key: Tensor, slot_rows: Tensor,
                      batch_size: int) -> int:
    """Position in `indices` of the first id outside [0, slot_rows[s]) of a slot s reading its key, or -1.

    Shapes: indices [N], offsets [F B + 1] (KJT layout), slot_key, slot_rows [S], all int64. One pass over the
    ids (each key checked against the fewest rows of the slots reading it).
    """
    _jagged.check_index("indices", indices, None)
    _jagged.check_index("offsets", offsets, indices.device)
    batch_size = _jagged.check_count("batch_size", batch_size)
    num_keys = _jagged.check_offsets(offsets, batch_size, indices.shape[0])
    S = slot_key.shape[0] if isinstance(slot_key, Tensor) else 0
    key_bound = num_keys if batch_size else np.iinfo(np.int64).max
    keys = _jagged.host_slots("slot_key", slot_key, None, key_bound, "the KJT's key count")
    rows = _jagged.host_slots("slot_rows", slot_rows, S, np.iinfo(np.int64).max, "a row count")
    if batch_size == 0 or indices.shape[0] == 0:
        return -1
    key_rows = np.full(num_keys, -1, np.int64)
    for k, r in zip(keys, rows):
        key_rows[k] = r if key_rows[k] < 0 else min(key_rows[k], r)
    if _device.is_cuda(indices):
        first_bad = torch.full((1,), indices.shape[0], dtype=torch.int64, device=indices.device)
        key_starts = offsets[::batch_size][:num_keys].contiguous()
        with _device.cuda_launch(indices.device) as stream:
            launch_cuda_find_out_of_range(_device.as_numba_array(indices), _device.as_numba_array(key_starts),
                                          _jagged.index_array(key_rows, indices.device),
                                          _device.as_numba_array(first_bad), stream=stream)
        first = int(first_bad.item())
        return -1 if first == indices.shape[0] else first
    per_key = np.empty(num_keys, np.int64)
    _find_out_of_range_cpu(indices.numpy(), offsets.numpy(), key_rows, batch_size, per_key)
    bad = per_key[per_key >= 0]
    return int(bad[0]) if bad.size else -1
