"""Row-sparse backward of the embedding lookups: group the lookups by table row, sum each distinct row's
gradient once in a fixed order, then apply one rule to that row (CPU and CUDA):

    write            dW_t[r] = g_r                                    (dense gradients: the non-fused backward)
    sgd              W_t[r] <- W_t[r] - lr g_r
    adagrad          G_t[r] <- G_t[r] + g_r^2;  W_t[r] <- W_t[r] - lr g_r / (sqrt(G_t[r]) + eps)   (elementwise)
    rowwise_adagrad  G_t[r] <- G_t[r] + (1/D) sum_d g_r,d^2;  W_t[r] <- W_t[r] - lr g_r / (sqrt(G_t[r]) + eps)

with g_r = sum over the lookups i of row r of coef_i * (lookup i's gradient row): FBGEMM's EXACT_* rules as
refimpl.optim states them. Rows no lookup touched are not read or written, so a fused step never allocates or
zeroes anything the size of a table. 16-bit tables update in float32 and round back to nearest even; the state
G is float32 (float64 for float64 tables). The same pass over a row gives the per-sample weights' gradient:
dw for lookup i is scale_i <gradient row of i, W_t[r]> with the row read before its update.

Every row's sum runs over its lookups in (slot, id) order and each row is owned by one thread (CPU) or one
block (CUDA), so results are bitwise reproducible. Measured on dlrm-small with benchmarks/embedding_micro.py
(2 threads): a fused training step (forward, backward, update) takes 34 ms with SGD and 39 ms with row-wise
Adagrad, against FBGEMM's fused CPU op 82 and 59 ms and TorchRec's EBC with dense gradients and torch's SGD
242 ms. Layers: the grouping (a counting sort per table on the CPU,
torch's stable sort on CUDA), the apply kernels (CPU @njit, one chunk of rows per thread; CUDA, one block per
row with threads over D), and the launcher `row_step` that the lookup bindings call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional, Sequence

import numpy as np
import torch
from numba import njit, prange, types
from numba.core.extending import overload
from torch import Tensor

from accel.kernels import _device, _jagged
from accel.kernels._device import MAX_THREADS_PER_ROW
from accel.kernels._jagged import BF16, WIDE

# READ only reads the rows (for the per-sample weights' gradient); WRITE stores g_r into dense gradients.
READ, WRITE, SGD, ADAGRAD, ROWWISE_ADAGRAD = -1, 0, 1, 2, 3
RULES = {"sgd": SGD, "adagrad": ADAGRAD, "rowwise_adagrad": ROWWISE_ADAGRAD}

# Bound by _cuda_kernels() on the first CUDA launch, so CPU users never import numba.cuda; the kernels read them
# as module globals (the simulator swaps `cuda` for its per-thread fake module).
cuda = None
_block_sum = None
_row_value = None
_store_at = None
_row_grad = None


# ---------------------------------------------------------------------------------------------------------
# Per-element rules (CPU and CUDA)
# ---------------------------------------------------------------------------------------------------------


@njit(cache=True)
def adagrad_element(w, G, g, lr, eps):
    """(w - lr g / (sqrt(G + g^2) + eps), G + g^2)."""
    G = G + g * g
    return w - lr * g / (np.sqrt(G) + eps), G


@njit(cache=True)
def rowwise_multiplier(G_row, lr, eps):
    """lr / (sqrt(G_row) + eps), the step of every element of a row under row-wise Adagrad."""
    return lr / (np.sqrt(G_row) + eps)


# ---------------------------------------------------------------------------------------------------------
# Grouping by row
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Apply kernels
# ---------------------------------------------------------------------------------------------------------


def step_row(w, grad, lr, bf16):
    """w_d <- w_d - lr grad_d for every d, in place (w a table row: float, or 16-bit bits converted as in
    _jagged.add_row and rounded back to nearest even). In place rather than into another row: LLVM's run-time
    overlap check would find the two rows equal and take its scalar loop."""


def adagrad_row(w, G, grad, lr, eps, bf16):
    """(w_d, G_d) <- adagrad_element(w_d, G_d, grad_d, lr, eps) for every d, in place (rows as in step_row)."""


def _row_in_16_bits(w) -> bool:
    return isinstance(w, types.Array) and w.dtype == types.uint16


@overload(step_row, jit_options=_jagged.ROW_JIT, inline="always")
def _step_row_jit(w, grad, lr, bf16):
    if _row_in_16_bits(w):
        def impl(w, grad, lr, bf16):
            if bf16:
                for d in range(grad.shape[0]):
                    w[d] = _jagged.f32_to_bf16_bits(_jagged.bf16_bits_to_f32(w[d]) - lr * grad[d])
            else:
                for d in range(grad.shape[0]):
                    w[d] = _jagged.f32_to_f16_bits(_jagged.f16_bits_to_f32(w[d]) - lr * grad[d])
        return impl

    def impl(w, grad, lr, bf16):
        for d in range(grad.shape[0]):
            w[d] -= lr * grad[d]
    return impl


@overload(adagrad_row, jit_options=_jagged.ROW_JIT, inline="always")
def _adagrad_row_jit(w, G, grad, lr, eps, bf16):
    if _row_in_16_bits(w):
        def impl(w, G, grad, lr, eps, bf16):
            for d in range(grad.shape[0]):
                value = _jagged.bf16_bits_to_f32(w[d]) if bf16 else _jagged.f16_bits_to_f32(w[d])
                value, G[d] = adagrad_element(value, G[d], grad[d], lr, eps)
                w[d] = _jagged.f32_to_bf16_bits(value) if bf16 else _jagged.f32_to_f16_bits(value)
        return impl

    def impl(w, G, grad, lr, eps, bf16):
        for d in range(grad.shape[0]):
            w[d], G[d] = adagrad_element(w[d], G[d], grad[d], lr, eps)
    return impl


@_device.cpu_helper()
def _apply_row(tab, target, bf16, r, a, e, g, s_goff, s_coef, s_scale, s_occ, G2, G1, rule, lr, eps,
               want_psw, psw_occ, grad, row, lanes):
    # g_r into `grad` (lookups in sorted order), the psw dot products with the row before its update, the rule.
    # The gradient rows are not prefetched: the output gradient (B x total_dim) mostly sits in L3, and
    # prefetching them measured slower.
    # Each pass over the row is a vector loop with a run-time trip count, whose set-up costs about as much as a
    # 64-wide body: the first lookup initialises the sum, and the update reads, steps and stores the row in one
    # pass (step_row, adagrad_row).
    D = tab.shape[1]
    grad = grad[:D]
    go = g[s_goff[a]:s_goff[a] + D]
    coef = s_coef[a]
    for d in range(D):
        grad[d] = coef * go[d]
    for i in range(a + 1, e):
        go = g[s_goff[i]:s_goff[i] + D]
        coef = s_coef[i]
        for d in range(D):
            grad[d] += coef * go[d]
    if want_psw:
        row = row[:D]
        _jagged.load_row(tab[r], row, bf16)
        for i in range(a, e):
            psw_occ[s_occ[i]] = s_scale[i] * _device.row_dot(g[s_goff[i]:s_goff[i] + D], row, lanes)
    if rule == READ:
        return
    if rule == WRITE:
        _jagged.store_row(grad, target[r], bf16)
    elif rule == SGD:
        step_row(tab[r], grad, lr, bf16)
    elif rule == ADAGRAD:
        adagrad_row(tab[r], G2[r], grad, lr, eps, bf16)
    elif D > 0:
        G1[r] += _device.row_dot(grad, grad, lanes) / D
        step_row(tab[r], grad, rowwise_multiplier(G1[r], lr, eps), bf16)


@_device.cpu_helper()
def _apply_table_rows(tab, target, bf16, u0, u1, uniq_row, uniq_ptr, g, s_goff, s_coef, s_scale, s_occ, G2, G1,
                      rule, lr, eps, want_psw, psw_occ, grad, row, lanes):
    # Distinct rows [u0, u1) of one table; the row PREFETCH_AHEAD places on is prefetched when it will be read,
    # and so is its optimizer state.
    for u in range(u0, u1):
        if (want_psw or rule > WRITE) and u + _jagged.PREFETCH_AHEAD < u1:
            ahead = uniq_row[u + _jagged.PREFETCH_AHEAD]
            _jagged.prefetch_row(tab, ahead)
            if rule == ADAGRAD:
                _jagged.prefetch_row(G2, ahead)
            elif rule == ROWWISE_ADAGRAD:
                _jagged.prefetch_bytes(G1, ahead * G1.itemsize, G1.itemsize)
        _apply_row(tab, target, bf16, uniq_row[u], uniq_ptr[u], uniq_ptr[u + 1], g, s_goff, s_coef, s_scale, s_occ,
                   G2, G1, rule, lr, eps, want_psw, psw_occ, grad, row, lanes)


@_device.cpu_jit(parallel=True)
def _apply_rows_cpu(g, s_goff, s_coef, s_scale, s_occ, uniq_table, uniq_row, uniq_ptr,
                    wide, half, table_format, table_index, target_wide, target_half, state2, state1,
                    rule, lr, eps, want_psw, psw_occ, max_dim, chunks):
    # Chunk c owns the distinct rows whose lookups start in [c P / chunks, (c + 1) P / chunks): shares balanced by
    # lookups, and no row shared between threads. A chunk goes table by table (the rows are sorted by table), so
    # the tuples of tables and states are indexed once per table, not per row (each index of a tuple of arrays
    # costs reference counting); rows ascend within a table, so reads walk memory forwards.
    U = uniq_row.shape[0]
    P = uniq_ptr[U]
    lr_t = g.dtype.type(lr)
    eps_t = g.dtype.type(eps)
    for c in prange(chunks):
        u0 = np.searchsorted(uniq_ptr[:U], P * c // chunks)
        u1 = np.searchsorted(uniq_ptr[:U], P * (c + 1) // chunks) if c + 1 < chunks else U
        grad = np.empty(max_dim, g.dtype)
        row = np.empty(max_dim, g.dtype)
        lanes = np.empty(_device.CPU_SUM_LANES, g.dtype)
        u = u0
        while u < u1:
            t = uniq_table[u]
            v = u + np.searchsorted(uniq_table[u:u1], t, side="right")
            i = table_index[t]
            G2 = state2[t if t < len(state2) else 0]
            G1 = state1[t if t < len(state1) else 0]
            if table_format[t] == WIDE:
                _apply_table_rows(wide[i], target_wide[i], False, u, v, uniq_row, uniq_ptr, g, s_goff, s_coef,
                                  s_scale, s_occ, G2, G1, rule, lr_t, eps_t, want_psw, psw_occ, grad, row, lanes)
            else:
                _apply_table_rows(half[i], target_half[i], table_format[t] == BF16, u, v, uniq_row, uniq_ptr, g,
                                  s_goff, s_coef, s_scale, s_occ, G2, G1, rule, lr_t, eps_t, want_psw, psw_occ, grad,
                                  row, lanes)
            u = v


@_device.cpu_jit(parallel=True)
def _psw_reduce_cpu(psw_occ, group_ptr, group_slots, first, count, occ_start, out):
    # dw_j = sum over the slots reading j's key, in slot order; one key group per iteration (disjoint j's).
    for q in prange(group_ptr.shape[0] - 1):
        for n in range(group_ptr[q], group_ptr[q + 1]):
            s = group_slots[n]
            for v in range(count[s]):
                out[first[s] + v] += psw_occ[occ_start[s] + v]


def _store_at_device(target_wide, target_half, fmt, i, r, d, value):
    # Element (r, d) of target table i, rounded to 16 bits for 16-bit tables.
    if fmt == WIDE:
        target_wide[i][r, d] = value
    elif fmt == BF16:
        target_half[i][r, d] = _jagged.f32_to_bf16_bits(value)
    else:
        target_half[i][r, d] = _jagged.f32_to_f16_bits(value)


def _row_grad_device(g, s_goff, s_coef, a, e, d):
    # g_r,d: the row's lookups in sorted order.
    total = g.dtype.type(0)
    for i in range(a, e):
        total += s_coef[i] * g[s_goff[i] + d]
    return total


def _apply_rows_cuda(g, s_goff, s_coef, s_scale, s_occ, uniq_table, uniq_row, uniq_ptr, wide, half,
                     table_format, table_index, target_wide, target_half, state2, state1, rule, lr, eps,
                     want_psw, psw_occ):
    # One block per distinct row, threads strided over its D columns; each thread sums its columns' g_r,d over
    # the row's lookups (fixed order), and block sums give the psw dot products and the row-wise mean square.
    buf = cuda.shared.array(MAX_THREADS_PER_ROW, g.dtype)
    u = cuda.blockIdx.x
    if u >= uniq_row.shape[0]:
        return
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    t = uniq_table[u]
    r = uniq_row[u]
    fmt = table_format[t]
    i = table_index[t]
    D = wide[i].shape[1] if fmt == WIDE else half[i].shape[1]
    a, e = uniq_ptr[u], uniq_ptr[u + 1]
    if want_psw:
        for k in range(a, e):
            part = g.dtype.type(0)
            for d in range(tid, D, step):
                part += g[s_goff[k] + d] * _row_value(wide, half, fmt, i, r, d)
            total = _block_sum(buf, part)
            if tid == 0:
                psw_occ[s_occ[k]] = s_scale[k] * total
    if rule == READ:
        return
    m = g.dtype.type(0)
    if rule == ROWWISE_ADAGRAD:
        # Every thread reads the old G before the block sum, whose barriers order the reads before thread 0's
        # write below.
        G_old = state1[t][r]
        part = g.dtype.type(0)
        for d in range(tid, D, step):
            gd = _row_grad(g, s_goff, s_coef, a, e, d)
            part += gd * gd
        total = _block_sum(buf, part)
        if D > 0:
            G = G_old + total / D
            m = rowwise_multiplier(G, lr, eps)
            if tid == 0:
                state1[t][r] = G
    for d in range(tid, D, step):
        gd = _row_grad(g, s_goff, s_coef, a, e, d)
        if rule == WRITE:
            _store_at(target_wide, target_half, fmt, i, r, d, gd)
            continue
        w = _row_value(wide, half, fmt, i, r, d)
        if rule == SGD:
            w -= lr * gd
        elif rule == ADAGRAD:
            w, state2[t][r, d] = adagrad_element(w, state2[t][r, d], gd, lr, eps)
        else:
            w -= m * gd
        _store_at(target_wide, target_half, fmt, i, r, d, w)


def _psw_reduce_cuda(psw_occ, group_ptr, group_slots, first, count, occ_start, out):
    # One block per key group, threads strided over the key's values; slots added in order.
    q = cuda.blockIdx.x
    if q >= group_ptr.shape[0] - 1:
        return
    s0 = group_slots[group_ptr[q]]
    for v in range(cuda.threadIdx.x, count[s0], cuda.blockDim.x):
        total = out.dtype.type(0)
        for n in range(group_ptr[q], group_ptr[q + 1]):
            s = group_slots[n]
            total += psw_occ[occ_start[s] + v]
        out[first[s0] + v] = total


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _block_sum, _row_value, _store_at, _row_grad
    cuda = _device.cuda_module()
    _block_sum = _device.cuda_block_sum()
    _row_value = cuda.jit(device=True, cache=True)(_jagged.row_value)
    _store_at = cuda.jit(device=True, cache=True)(_store_at_device)
    _row_grad = cuda.jit(device=True, cache=True)(_row_grad_device)
    return SimpleNamespace(
        apply=cuda.jit(cache=True)(_apply_rows_cuda),
        psw_reduce=cuda.jit(cache=True)(_psw_reduce_cuda),
    )


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def _states(state: Sequence[Tensor], ndim: int, dtype: torch.dtype, device: torch.device) -> tuple:
    # The state tensors of one rule as a padded tuple indexed by table; a 1-element dummy otherwise.
    chosen = [s for s in state if s.dim() == ndim]
    dummy = torch.zeros((1,) * ndim, dtype=dtype, device=device)
    return _jagged.padded([_device.as_numba_array(s) for s in chosen], _device.as_numba_array(dummy))


def _key_groups(lookups: Lookups):
    # Slots grouped by key, in slot order within a key (CSR), for the psw reduction.
    order = np.argsort(lookups.slot_key, kind="stable")
    keys = lookups.slot_key[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, np.int64)
    return np.r_[starts, keys.size].astype(np.int64), order.astype(np.int64)


def launch_cuda_apply(g, groups, tables, targets, state2, state1, rule, lr, eps, want_psw, psw_occ, max_dim,
                      stream=0) -> None:
    """CUDA apply on Numba device arrays (groups: the RowGroups fields as device arrays, in order)."""
    kernels = _cuda_kernels()
    goff, coef, scale, occ, uniq_table, uniq_row, uniq_ptr = groups
    if uniq_row.shape[0] == 0:
        return
    # Grid: one block per distinct row; block: the next power of two covering the widest row.
    kernels.apply[uniq_row.shape[0], _device.threads_per_row(max_dim), stream](
        g, goff, coef, scale, occ, uniq_table, uniq_row, uniq_ptr, tables.wide, tables.half, tables.table_format,
        tables.table_index, targets.wide, targets.half, state2, state1, rule, lr, eps, want_psw, psw_occ,
    )


def launch_cuda_psw_reduce(psw_occ, group_ptr, group_slots, first, count, occ_start, out, max_count,
                           stream=0) -> None:
    """CUDA psw reduction on Numba device arrays; out must hold zeros where no slot reads a value."""
    if group_ptr.shape[0] <= 1 or max_count == 0:
        return
    kernels = _cuda_kernels()
    kernels.psw_reduce[group_ptr.shape[0] - 1, _device.threads_per_row(max_count), stream](
        psw_occ, group_ptr, group_slots, first, count, occ_start, out,
    )


def row_step(grad: Tensor, lookups: Lookups, tables: Sequence[Tensor], targets: Sequence[Tensor],
             state: Sequence[Tensor], rule: int, lr: float, eps: float, want_psw: bool) -> Optional[Tensor]:
    """Apply `rule` to every table row the lookups touched (module docstring); returns dw [num values] (acc
    dtype) when want_psw, else None. grad: the flat output gradient in the acc dtype; targets: zeroed dense
    gradients (same dtypes) for WRITE, the tables themselves otherwise (the optimizer rules update them in
    place)."""
    acc_dtype = grad.dtype
    device = grad.device
    args = _jagged.table_args(tables, acc_dtype, device)
    out_args = _jagged.table_args(targets, acc_dtype, device) if targets is not tables else args
    groups = group_rows(lookups, args.rows, acc_dtype, psw_fields=want_psw)
    P = int(groups.occ_start[-1])
    psw_occ = torch.zeros(P if want_psw else 0, dtype=acc_dtype, device=device)
    state2 = _states(state, 2, acc_dtype, device)
    state1 = _states(state, 1, acc_dtype, device)
    max_dim = int(args.dims.max(initial=1))
    fields = (groups.goff, groups.coef, groups.scale, groups.occ, groups.uniq_table, groups.uniq_row,
              groups.uniq_ptr)
    if _device.is_cuda(grad):
        with _device.cuda_launch(device) as stream:
            launch_cuda_apply(_device.as_numba_array(grad), tuple(map(_device.as_numba_array, fields)), args,
                              out_args, state2, state1, rule, lr, eps, want_psw, _device.as_numba_array(psw_occ),
                              max_dim, stream=stream)
    elif groups.uniq_row.shape[0] > 0:
        _apply_rows_cpu(grad.numpy(), *(f.numpy() for f in fields), args.wide, args.half, args.table_format,
                        args.table_index, out_args.wide, out_args.half, state2, state1, rule, lr, eps, want_psw,
                        psw_occ.numpy(), max_dim, _device.cpu_kernel_chunks(groups.uniq_row.shape[0]))
    if not want_psw:
        return None
    out = torch.zeros(lookups.indices.shape[0], dtype=acc_dtype, device=device)
    group_ptr, group_slots = _key_groups(lookups)
    host = (group_ptr, group_slots, lookups.first, lookups.count, groups.occ_start)
    if _device.is_cuda(grad):
        with _device.cuda_launch(device) as stream:
            dev = [_jagged.index_array(a, device) for a in host]
            launch_cuda_psw_reduce(_device.as_numba_array(psw_occ), *dev, _device.as_numba_array(out),
                                   int(lookups.count.max(initial=0)), stream=stream)
    elif group_ptr.shape[0] > 1:
        _psw_reduce_cpu(psw_occ.numpy(), *host, out.numpy())
    return out


def check_state(rule_name: str, state: object, tables: Sequence[Tensor], acc_dtype: torch.dtype) -> List[Tensor]:
    """The optimizer state list: [] for sgd; per table G (rows, D) for adagrad or (rows,) for rowwise_adagrad,
    contiguous, in the accumulation dtype, on the tables' device."""
    if rule_name not in RULES:
        raise ValueError(f"optimizer must be one of {list(RULES)}, got {rule_name!r}")
    if not isinstance(state, (list, tuple)):
        raise TypeError(f"state must be a list of tensors, got {type(state).__name__}")
    if rule_name == "sgd":
        if len(state):
            raise ValueError(f"state must be empty for sgd, got {len(state)} tensors")
        return []
    if len(state) != len(tables):
        raise ValueError(f"state must hold one tensor per table ({len(tables)}) for {rule_name}, got {len(state)}")
    for t, (G, w) in enumerate(zip(state, tables)):
        shape = tuple(w.shape) if rule_name == "adagrad" else (w.shape[0],)
        if not isinstance(G, Tensor):
            raise TypeError(f"state[{t}] must be a torch.Tensor, got {type(G).__name__}")
        if tuple(G.shape) != shape:
            raise ValueError(f"state[{t}] must have shape {shape} for {rule_name}, got {tuple(G.shape)}")
        if G.dtype != acc_dtype:
            raise TypeError(f"state[{t}] must be {acc_dtype} (the tables' accumulation dtype), got {G.dtype}")
        if G.device != w.device or not G.is_contiguous():
            raise ValueError(f"state[{t}] must be contiguous on the tables' device {w.device}")
    return list(state)
