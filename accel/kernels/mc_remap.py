"""Managed-collision remap, the lookup of a batch against an MCH table sorted by raw id:

    pos_j = searchsorted_left(raw[0 : Z - 1], v_j)                (pos_j in [0, Z - 1])
    out_j = map[pos_j]  if raw[pos_j] == v_j  else  miss          (miss = off + Z - 1)

Shapes: raw, map int64 (Z,) (raw ascending); values int64 (n,) -> out int64 (n,).
Source: semantics.md 11.3 "remap". raw[Z - 1] is the sentinel slot: it is never searched, but it is the slot
compared when v_j is larger than every other raw id (so an input equal to 2^63 - 1 would match an empty slot:
callers reject it first, see accel.modules.mc_modules).

Layers: the per-id binary search (one @njit helper, shared with the eviction round's matching), the CPU kernel
(prange over ids) and the CUDA kernel (one thread per id), the launcher picking the device of the tensors.
The searches are independent, so the work splits evenly; at Z = 10^6 each search costs about 20 dependent
loads, the top levels of which stay in cache across ids.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
from numba import prange

from accel.kernels import _device

# Bound by _cuda_kernels() on the first CUDA launch (the simulator swaps `cuda` for its fake module).
cuda = None
_lower_bound_device = None

# One thread per id, 256 threads a block: enough warps per block to hide the dependent loads of the search.
_THREADS = 256


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


def lower_bound(raw, n, v):
    """searchsorted_left(raw[0:n], v): the first position p with raw[p] >= v (n when none).

    Branch-free halving: the answer stays in [base, base + length]; each step keeps the half that holds it
    (a conditional move, no mispredicted branch per level)."""
    base = 0
    length = n
    while length > 0:
        half = length >> 1
        base = base + (length - half) if raw[base + half] < v else base
        length = half
    return base


_lower_bound_cpu = _device.cpu_helper()(lower_bound)


@_device.cpu_jit(parallel=True)
def _remap_cpu(raw, mapping, values, miss, out):
    # Ids split evenly over the threads; each id is one binary search over raw[0 : Z - 1].
    n_search = raw.shape[0] - 1
    for j in prange(values.shape[0]):
        v = values[j]
        pos = _lower_bound_cpu(raw, n_search, v)
        out[j] = mapping[pos] if raw[pos] == v else miss


@_device.cpu_jit()
def _first_outside_cpu(values, lo, hi):
    # Sequential scan for the first id outside [lo, hi): the flag loop vectorises, the position is found once.
    bad = False
    for j in range(values.shape[0]):
        bad |= (values[j] < lo) | (values[j] >= hi)
    if not bad:
        return -1
    for j in range(values.shape[0]):
        if values[j] < lo or values[j] >= hi:
            return j
    return -1


def _remap_cuda(raw, mapping, values, miss, out):
    # One thread per id.
    j = cuda.grid(1)
    if j >= values.shape[0]:
        return
    v = values[j]
    pos = _lower_bound_device(raw, raw.shape[0] - 1, v)
    out[j] = mapping[pos] if raw[pos] == v else miss


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _lower_bound_device
    cuda = _device.cuda_module()
    _lower_bound_device = cuda.jit(device=True, cache=True)(lower_bound)
    return SimpleNamespace(remap=cuda.jit(cache=True)(_remap_cuda))


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def launch_cuda_remap(raw, mapping, values, miss: int, out, stream=0) -> None:
    """Numba device arrays in, `out` written: one thread per id."""
    n = values.shape[0]
    if n == 0:
        return
    blocks = (n + _THREADS - 1) // _THREADS
    _cuda_kernels().remap[blocks, _THREADS, stream](raw, mapping, values, np.int64(miss), out)


def first_outside(values: torch.Tensor, lo: int, hi: int) -> int:
    """The position of the first id of `values` (int64, 1-D) outside [lo, hi), or -1: the check run before
    ids reach a table (the reserved empty-slot id, a hash function's range)."""
    if values.numel() == 0:
        return -1
    if _device.is_cuda(values):
        bad = torch.nonzero((values < lo) | (values >= hi))
        return int(bad[0, 0]) if bad.numel() else -1
    return int(_first_outside_cpu(values.contiguous().numpy(), np.int64(lo), np.int64(hi)))


def remap_ids(raw: torch.Tensor, mapping: torch.Tensor, values: torch.Tensor, miss: int) -> torch.Tensor:
    """out_j = map[pos_j] if raw[pos_j] == v_j else miss (module docstring), on the device of `values`.

    raw and mapping: the table (int64, one device with values); values int64 1-D. The caller has checked the
    dtypes; shapes and devices are checked here, before any kernel runs.
    """
    for name, t in (("raw", raw), ("mapping", mapping), ("values", values)):
        if t.dtype != torch.int64:
            raise TypeError(f"remap_ids: {name} expected dtype torch.int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"remap_ids: {name} expected a 1-D tensor, got shape {tuple(t.shape)}")
        _device.check_same_device(name, t, "values", values)
    if raw.shape[0] < 1 or mapping.shape[0] != raw.shape[0]:
        raise ValueError(
            f"remap_ids: raw and mapping expected the same length Z >= 1, got {raw.shape[0]} and {mapping.shape[0]}"
        )
    _device.check_launchable("values", values)
    raw, mapping, values = raw.contiguous(), mapping.contiguous(), values.contiguous()
    out = torch.empty_like(values)
    if values.numel() == 0:
        return out
    if _device.is_cuda(values):
        with _device.cuda_launch(values.device) as stream:
            launch_cuda_remap(*(_device.as_numba_array(t) for t in (raw, mapping, values)), miss,
                              _device.as_numba_array(out), stream)
        return out
    _remap_cpu(raw.numpy(), mapping.numpy(), values.numpy(), np.int64(miss), out.numpy())
    return out
