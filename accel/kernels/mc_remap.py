"""Managed-collision remap, the lookup of a batch against an MCH table sorted by raw id:

    pos_j = searchsorted_left(raw[0 : Z - 1], v_j)                (pos_j in [0, Z - 1])
    out_j = map[pos_j]  if raw[pos_j] == v_j  else  miss          (miss = off + Z - 1)

Shapes: raw, map int64 (Z,) (raw ascending); values int64 (n,) -> out int64 (n,).
Source: semantics.md 11.3 "remap". raw[Z - 1] is the sentinel slot: it is never searched, but it is the slot
compared when v_j is larger than every other raw id (so an input equal to 2^63 - 1 would match an empty slot:
callers reject it first, see accel.modules.mc_modules).

Layers: the search helpers (shared with the eviction round's matching), the CPU kernels, the CUDA kernel (one
thread per id, a binary search each), the launcher picking the device of the tensors.

CPU: one binary search per id costs about 20 dependent loads over a 10^6-slot table, the last several of
them cache misses (130 ns an id on the 2-core machine). A batch of at least
_SORTED_REMAP_MIN ids is instead sorted (a stable LSD radix sort of the ids' offsets from the batch minimum,
carrying the positions) and walked in ascending order: each distinct id is found by a galloping search from
the previous one's slot, so consecutive searches stay in nearby cache lines, and repeated ids (a Zipf batch
of 65,536 ids holds about 24,000 distinct ones) are searched once. The slot found is the same either way.
Measured on the 2-core machine against a full 10^6-slot table with a Zipf(1.1) batch of 65,536 ids: 2.4 ms
(0.3 to 0.5 of them the sort), against 8.5 ms for the per-id search and 11 ms for NumPy's searchsorted. It runs on
one thread: split over the two (one run of sorted ids each) it took 1.5 ms on a quiet machine, but with other
programs busy every parallel region waited for a descheduled worker, 16 to 24 ms a call.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch

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

# Digit width of the radix sort: 2048 bucket counters (16 KiB) stay in L1 while a pass scatters.
_DIGIT_BITS = 11
_BUCKETS = 1 << _DIGIT_BITS
# Below this many ids a batch is searched id by id: sorting it would cost more than it saves.
_SORTED_REMAP_MIN = 2048


@_device.cpu_jit()
def radix_sort(keys, payload, with_payload):
    """Stable LSD radix sort of uint64 keys (carrying payload when with_payload), 11 bits a pass, as many
    passes as the largest key needs; returns the sorted (keys, payload). keys is overwritten."""
    n = keys.shape[0]
    top = np.uint64(0)
    for i in range(n):
        if keys[i] > top:
            top = keys[i]
    passes = 0
    while top > 0:
        passes += 1
        top >>= np.uint64(_DIGIT_BITS)
    src_k, dst_k = keys, np.empty_like(keys)
    src_p, dst_p = payload, np.empty_like(payload)
    mask = np.uint64(_BUCKETS - 1)
    count = np.empty(_BUCKETS, np.int64)
    for d in range(passes):
        shift = np.uint64(d * _DIGIT_BITS)
        count[:] = 0
        for i in range(n):
            count[(src_k[i] >> shift) & mask] += 1
        total = 0
        for b in range(_BUCKETS):
            c = count[b]
            count[b] = total
            total += c
        for i in range(n):
            b = (src_k[i] >> shift) & mask
            at = count[b]
            dst_k[at] = src_k[i]
            if with_payload:
                dst_p[at] = src_p[i]
            count[b] = at + 1
        src_k, dst_k = dst_k, src_k
        src_p, dst_p = dst_p, src_p
    return src_k, src_p


@_device.cpu_helper()
def gallop(raw, n, start, v):
    """searchsorted_left(raw[0:n], v) given that every raw[p] with p < start is below v: steps of 1, 2, 4, ...
    from start bracket the answer, a binary search inside the bracket finds it."""
    lo = start
    hi = start
    step = 1
    while hi < n and raw[hi] < v:
        lo = hi + 1
        hi = lo + step
        step <<= 1
    if hi > n:
        hi = n
    length = hi - lo
    base = lo
    while length > 0:
        half = length >> 1
        base = base + (length - half) if raw[base + half] < v else base
        length = half
    return base


@_device.cpu_jit()
def _remap_each_cpu(raw, mapping, values, miss, out):
    # Small batches: one binary search per id.
    n_search = raw.shape[0] - 1
    for j in range(values.shape[0]):
        v = values[j]
        pos = _lower_bound_cpu(raw, n_search, v)
        out[j] = mapping[pos] if raw[pos] == v else miss


@_device.cpu_jit()
def _id_range(values):
    # (min, max) of a non-empty id array in one pass.
    lo = values[0]
    hi = values[0]
    for v in values:
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


@_device.cpu_jit()
def _remap_sorted_cpu(raw, mapping, values, miss, out, lo, keys, where):
    # Sort the ids (radix on their offsets from lo, carrying positions; keys and where given in the
    # narrowest unsigned dtypes that hold them), then walk them ascending with galloping searches.
    n = values.shape[0]
    for j in range(n):
        # Two's-complement difference: exact for any pair of int64 ids.
        keys[j] = np.uint64(values[j]) - np.uint64(lo)
        where[j] = j
    keys, where = radix_sort(keys, where, True)
    n_search = raw.shape[0] - 1
    pos = 0
    result = miss
    for q in range(n):
        if q == 0 or keys[q] != keys[q - 1]:
            v = np.int64(np.uint64(keys[q]) + np.uint64(lo))
            pos = gallop(raw, n_search, pos, v)
            result = mapping[pos] if raw[pos] == v else miss
        out[where[q]] = result


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
    args = (raw.numpy(), mapping.numpy(), values.numpy(), np.int64(miss), out.numpy())
    if values.numel() >= _SORTED_REMAP_MIN:
        lo, hi = _id_range(args[2])
        n = values.numel()
        # 32-bit keys and positions when they fit: half the memory traffic of every radix pass.
        keys = np.empty(n, np.uint32 if int(hi) - int(lo) < 2**32 else np.uint64)
        where = np.empty(n, np.uint32 if n < 2**32 else np.uint64)
        _remap_sorted_cpu(*args, lo, keys, where)
    else:
        _remap_each_cpu(*args)
    return out
