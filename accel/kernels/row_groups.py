"""Grouping the lookups of an embedding call by table row, the first stage of the row-sparse backward
(accel.kernels.sparse_optim): every lookup's gradient row and coefficient, sorted stably by (table, row), with
the distinct rows and where their lookups start.

CPU: a counting sort per table (tables in parallel); CUDA: torch's stable sort on the ids' device. Both keep the
lookups of a row in (slot, id) order, so the row sums that follow are reproducible bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from numba import prange
from torch import Tensor

from accel.kernels import _device


@dataclass(frozen=True)
class Lookups:
    """The lookups of one call: value j of slot s (key k, bag b) reads row indices[j] of table slot_table[s], and
    its gradient row starts at goff0[s] + b bag_stride[s] + (j - first[s]) value_stride[s] of the flat output
    gradient, weighted by coef = w_j (per_sample_weights, else 1) times scale = 1/length when `mean`. The slot
    arrays are int64 on the host."""

    indices: Tensor
    offsets: Tensor
    batch_size: int
    slot_key: np.ndarray
    slot_table: np.ndarray
    goff0: np.ndarray
    bag_stride: np.ndarray
    value_stride: np.ndarray
    first: np.ndarray
    count: np.ndarray
    per_sample_weights: Optional[Tensor]
    mean: bool


@dataclass(frozen=True)
class RowGroups:
    """Lookups sorted by (table, row), stable: sorted lookup i has goff[i], coef[i], scale[i] and occ[i] (its
    position p = occ_start[s] + j - first[s] in slot order); distinct row u is (uniq_table[u], uniq_row[u]) with
    the sorted lookups [uniq_ptr[u], uniq_ptr[u + 1])."""

    goff: Tensor
    coef: Tensor
    scale: Tensor
    occ: Tensor
    uniq_table: Tensor
    uniq_row: Tensor
    uniq_ptr: Tensor
    occ_start: np.ndarray


@_device.cpu_jit(parallel=True)
def _group_by_row_cpu(indices, offsets, slot_key, slot_table, goff0, bag_stride, value_stride, occ_start,
                      table_rows, table_start, psw, weighted, mean, B, s_goff, s_coef, s_scale, s_occ):
    # Tables in parallel; per table a histogram over its rows (O(lookups + rows)): counts, exclusive prefix
    # sums (listing the distinct rows in ascending order), then a stable scatter in (slot, value) order. The
    # prefix pass is branch-free (a row is written at u every time, u advancing past rows that occur): whether
    # a row occurs is random, and a branch on it measured 2x slower; table t's segment of the scratch arrays,
    # from table_start[t] + t, has one entry more than its lookups for the writes past its last distinct row. The
    # distinct rows then go in parallel to their compact place. s_scale and s_occ are filled only when they
    # have P entries (the per-sample weights' gradient needs them). Returns (uniq_table, uniq_row, uniq_ptr).
    T = table_rows.shape[0]
    S = slot_key.shape[0]
    P = table_start[T]
    psw_fields = s_occ.shape[0] == P
    n_uniq = np.zeros(T, np.int64)
    seg_row = np.empty(P + T, np.int64)
    seg_ptr = np.empty(P + T, np.int64)
    one = s_coef.dtype.type(1)
    for t in prange(T):
        base = table_start[t]
        if table_start[t + 1] == base:
            continue
        count = np.zeros(table_rows[t], np.int32)
        for s in range(S):
            if slot_table[s] == t:
                k = slot_key[s]
                for j in range(offsets[k * B], offsets[(k + 1) * B]):
                    count[indices[j]] += 1
        pos = base
        u = base + t
        for r in range(table_rows[t]):
            c = count[r]
            seg_row[u] = r
            seg_ptr[u] = pos
            u += c > 0
            count[r] = pos - base
            pos += c
        n_uniq[t] = u - (base + t)
        for s in range(S):
            if slot_table[s] != t:
                continue
            k = slot_key[s]
            first = offsets[k * B]
            for b in range(B):
                start, end = offsets[k * B + b], offsets[k * B + b + 1]
                scale = one / (end - start) if mean and end > start else one
                goff = goff0[s] + b * bag_stride[s]
                for j in range(start, end):
                    i = base + count[indices[j]]
                    count[indices[j]] += 1
                    s_goff[i] = goff + (j - first) * value_stride[s]
                    s_coef[i] = psw[j] * scale if weighted else scale
                    if psw_fields:
                        s_scale[i] = scale
                        s_occ[i] = occ_start[s] + (j - first)
    uniq_base = np.zeros(T + 1, np.int64)
    for t in range(T):
        uniq_base[t + 1] = uniq_base[t] + n_uniq[t]
    U = uniq_base[T]
    uniq_table = np.empty(U, np.int64)
    uniq_row = np.empty(U, np.int64)
    uniq_ptr = np.empty(U + 1, np.int64)
    uniq_ptr[U] = P
    for t in prange(T):
        src, dst = table_start[t] + t, uniq_base[t]
        for u in range(n_uniq[t]):
            uniq_table[dst + u] = t
            uniq_row[dst + u] = seg_row[src + u]
            uniq_ptr[dst + u] = seg_ptr[src + u]
    return uniq_table, uniq_row, uniq_ptr


def _occ_layout(lookups: Lookups, table_rows: np.ndarray):
    occ_start = np.concatenate([[0], np.cumsum(lookups.count)]).astype(np.int64)
    per_table = np.bincount(lookups.slot_table, weights=lookups.count, minlength=table_rows.shape[0])
    table_start = np.concatenate([[0], np.cumsum(per_table)]).astype(np.int64)
    return occ_start, table_start


def group_rows(lookups: Lookups, table_rows: np.ndarray, acc_dtype: torch.dtype,
               psw_fields: bool = True) -> RowGroups:
    """RowGroups of the lookups: the CPU counting sort, or `group_rows_torch` on CUDA. Without psw_fields, scale
    and occ (only the per-sample weights' gradient reads them) are left empty on the CPU."""
    if _device.is_cuda(lookups.indices):
        return group_rows_torch(lookups, table_rows, acc_dtype)
    occ_start, table_start = _occ_layout(lookups, table_rows)
    P = int(occ_start[-1])
    kept = P if psw_fields else 0
    goff, coef = torch.empty(P, dtype=torch.int64), torch.empty(P, dtype=acc_dtype)
    scale, occ = torch.empty(kept, dtype=acc_dtype), torch.empty(kept, dtype=torch.int64)
    psw = lookups.per_sample_weights
    uniq_table, uniq_row, uniq_ptr = _group_by_row_cpu(
        lookups.indices.numpy(), lookups.offsets.numpy(), lookups.slot_key, lookups.slot_table, lookups.goff0,
        lookups.bag_stride, lookups.value_stride, occ_start, table_rows, table_start,
        (psw if psw is not None else coef[:0]).numpy(), psw is not None, lookups.mean, lookups.batch_size,
        goff.numpy(), coef.numpy(), scale.numpy(), occ.numpy(),
    )
    return RowGroups(goff, coef, scale, occ, *map(torch.from_numpy, (uniq_table, uniq_row, uniq_ptr)), occ_start)


def group_rows_torch(lookups: Lookups, table_rows: np.ndarray, acc_dtype: torch.dtype) -> RowGroups:
    """RowGroups from torch ops on the ids' device (a stable sort by (table, row)); the CUDA path."""
    device = lookups.indices.device
    occ_start, _ = _occ_layout(lookups, table_rows)
    P = int(occ_start[-1])
    as_t = functools.partial(torch.as_tensor, dtype=torch.int64, device=device)
    slot = torch.repeat_interleave(as_t(np.arange(len(lookups.count))), as_t(lookups.count), output_size=P)
    within = torch.arange(P, device=device) - as_t(occ_start[:-1])[slot]
    j = as_t(lookups.first)[slot] + within
    bag = torch.searchsorted(lookups.offsets, j, right=True) - 1  # global bag k B + b holding value j
    length = lookups.offsets[bag + 1] - lookups.offsets[bag]
    b = bag - as_t(lookups.slot_key)[slot] * lookups.batch_size
    scale = (1.0 / length.to(acc_dtype)) if lookups.mean else torch.ones(P, dtype=acc_dtype, device=device)
    coef = scale * lookups.per_sample_weights[j] if lookups.per_sample_weights is not None else scale
    goff = as_t(lookups.goff0)[slot] + b * as_t(lookups.bag_stride)[slot] + within * as_t(lookups.value_stride)[slot]
    row_base = np.concatenate([[0], np.cumsum(table_rows)]).astype(np.int64)
    key = as_t(row_base)[as_t(lookups.slot_table)[slot]] + lookups.indices[j]
    sorted_key, perm = torch.sort(key, stable=True)
    uniq_key, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    uniq_table = torch.searchsorted(as_t(row_base[1:]), uniq_key, right=True)
    uniq_ptr = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(counts, 0)])
    return RowGroups(goff[perm], coef[perm], scale[perm], perm, uniq_table, uniq_key - as_t(row_base)[uniq_table],
                     uniq_ptr, occ_start)
