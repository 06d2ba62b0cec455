"""The apply kernels of the row-sparse backward (accel.kernels.sparse_optim): for each distinct table row, sum
its lookups' gradient rows once in a fixed order (g_r), give the per-sample weights' dot products with the row
read before its update, then apply one rule to the row (accel.kernels.row_rules), and the reduction of those dot
products per value.

Layers: kernels (CPU @njit, one chunk of rows per thread; CUDA numba.cuda.jit, one block per row with threads
over D) and their CUDA launchers; `sparse_optim.row_step` picks the device and calls them.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
from numba import prange

from accel.kernels import _device, _jagged
from accel.kernels._device import MAX_THREADS_PER_ROW
from accel.kernels._jagged import BF16, WIDE
from accel.kernels.row_rules import (
    ADAGRAD,
    READ,
    ROWWISE_ADAGRAD,
    SGD,
    WRITE,
    adagrad_element,
    adagrad_row,
    rowwise_multiplier,
    step_row,
)

# Bound by _cuda_kernels() on the first CUDA launch, so CPU users never import numba.cuda; the kernels read them
# as module globals (the simulator swaps `cuda` for its per-thread fake module).
cuda = None
_block_sum = None
_row_value = None
_store_at = None
_row_grad = None


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
