"""Managed-collision history: recording a batch into the window, and the coalesce of a window at an eviction
round:

    record:    h[p : p + n] = v;  hl[p : p + n] = cur                       (hl only for LRU / DistanceLFU)
    coalesce:  u = unique(h) ascending,  c_j = #{i : h_i = u_j},  la_j = max{hl_i : h_i = u_j}

Shapes: h, hl int64 (>= p,) (the window is h[:p]); v int64 (n,) -> u, c, la int64 (U,).
Source: semantics.md 11.3 "profile" steps 3-4 and "coalesce" steps 1 and 3 (TorchRec: torch.unique with
counts and inverse, then a scatter-max of the window's iterations).

The coalesce sorts the window with an LSD radix sort (mc_remap.radix_sort) on the ids' offsets from the window
minimum (as many 11-bit digits as that range needs: 3 for ids spread over 10^9, 2 for a window of small ids),
stable, carrying hl's offsets from the window's earliest iteration; keys and payload are 32-bit whenever the
offsets fit, which halves the traffic of every pass. A stable sort of a chronological window leaves each id's
latest iteration last in its group, but the maximum is taken anyway, so an out-of-order window (a loaded
state) coalesces the same way. One pass reads and writes the window once per digit, sequentially into 2048
buckets: 6.5 million ids (eviction interval 100 at 65,536 ids a batch, ids over 10^9) coalesce in about
150 ms on the 2-core machine.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from accel.kernels import _device
from accel.kernels.mc_remap import radix_sort

# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@_device.cpu_jit()
def _record_cpu(h, hl, p, v, cur, with_last):
    # Sequential copy: the window is appended to in batch order.
    for i in range(v.shape[0]):
        h[p + i] = v[i]
    if with_last:
        for i in range(v.shape[0]):
            hl[p + i] = cur


@_device.cpu_jit()
def _range_cpu(a):
    # (min, max) of a non-empty array in one pass.
    lo = a[0]
    hi = a[0]
    for x in a:
        lo = min(lo, x)
        hi = max(hi, x)
    return lo, hi


@_device.cpu_jit()
def _coalesce_cpu(h, hl, with_last, lo, hl_lo, keys, payload):
    # Sort the window by id offset from lo (radix; keys and payload given in the narrowest unsigned dtype
    # that holds the offsets), then one pass over the groups: first id, size, latest iteration.
    n = h.shape[0]
    for i in range(n):
        # Two's-complement difference: exact for any pair of int64 ids.
        keys[i] = np.uint64(h[i]) - np.uint64(lo)
    if with_last:
        for i in range(n):
            payload[i] = hl[i] - hl_lo
    keys, payload = radix_sort(keys, payload, with_last)
    u = np.empty(n, np.int64)
    c = np.empty(n, np.int64)
    la = np.zeros(n if with_last else 0, np.int64)
    groups = 0
    i = 0
    while i < n:
        k = keys[i]
        j = i
        latest = payload[i] if with_last else 0
        while j < n and keys[j] == k:
            if with_last and payload[j] > latest:
                latest = payload[j]
            j += 1
        u[groups] = np.int64(np.uint64(k) + np.uint64(lo))
        c[groups] = j - i
        if with_last:
            la[groups] = np.int64(latest) + hl_lo
        groups += 1
        i = j
    return u[:groups], c[:groups], la[:groups]


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def grown(buffer: torch.Tensor, used: int, needed: int) -> torch.Tensor:
    """buffer itself when it holds `needed` entries, else a copy of its first `used` entries in a buffer of
    max(needed, 2 * len) entries (doubling keeps the copies amortised O(1) an id)."""
    if needed <= buffer.shape[0]:
        return buffer
    bigger = torch.zeros(max(needed, 2 * buffer.shape[0]), dtype=buffer.dtype, device=buffer.device)
    bigger[:used] = buffer[:used]
    return bigger


def record(h: torch.Tensor, hl: Optional[torch.Tensor], p: int, values: torch.Tensor, cur: int) -> int:
    """h[p : p + n] = values, hl[p : p + n] = cur (when hl is given); returns p + n.

    h, hl: int64 windows with room for p + n entries (the caller grows them with `grown`)."""
    n = values.shape[0]
    if p < 0 or p + n > h.shape[0] or (hl is not None and p + n > hl.shape[0]):
        raise ValueError(f"record: window expected room for {p + n} entries, got {h.shape[0]}")
    if n == 0:
        return p
    if _device.is_cuda(h):
        h[p : p + n] = values
        if hl is not None:
            hl[p : p + n] = cur
        return p + n
    dummy = hl if hl is not None else h[:0]
    _record_cpu(h.numpy(), dummy.numpy(), p, values.contiguous().numpy(), cur, hl is not None)
    return p + n


def coalesce(h: torch.Tensor, hl: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(u, c, la) of the window h (module docstring); la is None when hl is None. CPU tensors in and out."""
    if h.dtype != torch.int64 or (hl is not None and (hl.dtype != torch.int64 or hl.shape != h.shape)):
        raise TypeError("coalesce: h and hl expected int64 tensors of one shape")
    if h.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone(), None if hl is None else empty.clone()
    with_last = hl is not None
    h_np = h.contiguous().numpy()
    hl_np = hl.contiguous().numpy() if with_last else h_np[:0]
    lo, hi = _range_cpu(h_np)
    hl_lo, hl_hi = _range_cpu(hl_np) if with_last else (0, 0)
    # 32-bit keys and payload when the offsets fit: half the memory traffic of every radix pass.
    keys = np.empty(h_np.shape[0], np.uint32 if int(hi) - int(lo) < 2**32 else np.uint64)
    narrow = with_last and int(hl_hi) - int(hl_lo) < 2**32
    payload = np.empty(h_np.shape[0] if with_last else 0, np.uint32 if narrow or not with_last else np.uint64)
    u, c, la = _coalesce_cpu(h_np, hl_np, with_last, lo, hl_lo, keys, payload)
    return torch.from_numpy(u), torch.from_numpy(c), torch.from_numpy(la) if with_last else None
