"""Table-batched pooled lookup's forward, over every (feature, table) slot in one call:

    out[b, c_s + d] = sum_{j in bag b of key k_s} w_j W_{t_s}[i_j, d]          SUM   (w_j = 1 unweighted)
    out[b, c_s + d] = (1 / L_b) sum_{j in bag b of key k_s} w_j W_{t_s}[i_j, d]  MEAN  (empty bag: 0)

Bag b of KJT key k is indices[offsets[k B + b] : offsets[k B + b + 1]]. Tables are float32, float16 or bfloat16
(accumulated in float32) or all float64; the output is float32 (float64 for float64 tables).

Layers, in this order: kernels (CPU @njit; CUDA numba.cuda.jit) and the launcher (validate, allocate, pick the
device); the torch bindings are in accel.kernels.pooled_lookup.

CPU forward: the lookup is bound by DRAM latency (each 256-byte row of dlrm-small is a miss), so what matters is
how many rows are in flight. Each thread walks its share of the (slot, bag) items slot by slot and prefetches,
into L2, the row PREFETCH_AHEAD ids ahead in the key's id stream (across bag boundaries); ids are added two at a
time into the output row by a vectorised loop over D. Measured with benchmarks/embedding_micro.py on the 2-core
machine: one thread 26.5 ns a row against 37 for TorchRec's EBC (a plain gather: 47); two threads on
dlrm-small 8.2 ms against TorchRec's 10.1 ms (torch's embedding_bag: 11.5 ms), on "wide" 74 ms against 172 ms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional, Sequence

import numpy as np
import torch
from numba import prange
from torch import Tensor

from accel.kernels import _device, _jagged
from accel.kernels._jagged import BF16, WIDE

SUM, MEAN = 0, 1

# Bound by _cuda_kernels() on the first CUDA launch (the simulator swaps `cuda` for its fake module).
cuda = None
_row_value = None


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@_device.cpu_helper()
def _pool_bags(tab, bf16, indices, offsets, k, B, b0, b1, col, psw, weighted, mean, out):
    # Bags [b0, b1) of key k from one table into columns [col, col + D); prefetch runs ahead inside the key. Ids
    # go two at a time (o += w0 r0 + w1 r1): half the passes over the output row.
    D = tab.shape[1]
    one = out.dtype.type(1)
    ahead = _jagged.PREFETCH_AHEAD
    limit = offsets[(k + 1) * B] - ahead
    for b in range(b0, b1):
        start, end = offsets[k * B + b], offsets[k * B + b + 1]
        o = out[b, col:col + D]
        for d in range(D):
            o[d] = 0
        j = start
        while j + 1 < end:
            if j + 1 < limit:
                _jagged.prefetch_row(tab, indices[j + ahead])
                _jagged.prefetch_row(tab, indices[j + 1 + ahead])
            _jagged.add_two_rows(o, tab[indices[j]], tab[indices[j + 1]], psw[j] if weighted else one,
                                 psw[j + 1] if weighted else one, bf16)
            j += 2
        if j < end:
            if j < limit:
                _jagged.prefetch_row(tab, indices[j + ahead])
            _jagged.add_row(o, tab[indices[j]], psw[j] if weighted else one, bf16)
        if mean and end > start:
            scale = one / (end - start)
            for d in range(D):
                o[d] *= scale


@_device.cpu_jit(parallel=True)
def _pooled_forward_cpu(wide, half, table_format, table_index, indices, offsets, slot_key, slot_table,
                        slot_column, slot_dim, psw, weighted, mean, B, out, chunks):
    # One chunk of (slot, bag) items per thread, balanced by elements read (_jagged.work_bounds); each chunk
    # goes slot by slot so that its ids are read in order and the prefetch stream stays inside one key.
    bounds = _jagged.work_bounds(offsets, slot_key, slot_dim, B, chunks)
    for c in prange(chunks):
        for s in range(slot_key.shape[0]):
            b0, b1 = bounds[c, s], bounds[c + 1, s]
            if b0 >= b1:
                continue
            t = slot_table[s]
            if table_format[t] == WIDE:
                _pool_bags(wide[table_index[t]], False, indices, offsets, slot_key[s], B, b0, b1, slot_column[s],
                           psw, weighted, mean, out)
            else:
                _pool_bags(half[table_index[t]], table_format[t] == BF16, indices, offsets, slot_key[s], B, b0,
                           b1, slot_column[s], psw, weighted, mean, out)



def _pooled_forward_cuda(wide, half, table_format, table_index, indices, offsets, slot_key, slot_table,
                         slot_column, psw, weighted, mean, B, out):
    # One block per (slot, bag) item, blockIdx.x = s B + b; threads strided over the D columns, each adding its
    # columns over the bag's ids (a warp reads a row's consecutive elements: coalesced).
    item = cuda.blockIdx.x
    if item >= slot_key.shape[0] * B:
        return
    s = item // B
    b = item - s * B
    t = slot_table[s]
    k = slot_key[s]
    fmt = table_format[t]
    i = table_index[t]
    D = wide[i].shape[1] if fmt == WIDE else half[i].shape[1]
    start, end = offsets[k * B + b], offsets[k * B + b + 1]
    one = out.dtype.type(1)
    scale = one / (end - start) if mean and end > start else one
    col = slot_column[s]
    for d in range(cuda.threadIdx.x, D, cuda.blockDim.x):
        total = out.dtype.type(0)
        for j in range(start, end):
            total += (psw[j] if weighted else one) * _row_value(wide, half, fmt, i, indices[j], d)
        out[b, col + d] = total * scale


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernel (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _row_value
    cuda = _device.cuda_module()
    _row_value = cuda.jit(device=True, cache=True)(_jagged.row_value)
    return SimpleNamespace(forward=cuda.jit(cache=True)(_pooled_forward_cuda))


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def launch_cuda_forward(tables, indices, offsets, slot_key, slot_table, slot_column, psw, weighted, mean, B, out,
                        num_slots, max_dim, stream=0) -> None:
    """CUDA forward on Numba device arrays (tables: a _jagged.TableArgs of device arrays); requires S B > 0."""
    kernels = _cuda_kernels()
    # Grid: one block per (slot, bag); block: the next power of two covering the widest row (32 to 256).
    kernels.forward[num_slots * B, _device.threads_per_row(max_dim), stream](
        tables.wide, tables.half, tables.table_format, tables.table_index, indices, offsets, slot_key, slot_table,
        slot_column, psw, weighted, mean, B, out,
    )



@dataclass(frozen=True)
class _Call:
    """A validated call: host slot arrays, the tables' dims and rows, accumulation dtype and device."""

    slot_key: np.ndarray
    slot_table: np.ndarray
    slot_column: np.ndarray
    dims: np.ndarray
    rows: np.ndarray
    acc_dtype: torch.dtype
    device: torch.device


def _check_meta(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                per_sample_weights, mode):
    # Checks that read no tensor data (shared with the fake kernel).
    acc_dtype, device = _jagged.check_tables("weights", weights)
    _jagged.check_index("indices", indices, device)
    _jagged.check_index("offsets", offsets, device)
    for name, t in (("slot_key", slot_key), ("slot_table", slot_table), ("slot_column", slot_column)):
        _jagged.check_index(name, t, None)
        if t.shape[0] != slot_key.shape[0]:
            raise ValueError(f"{name} must have one entry per slot ({slot_key.shape[0]}), got {t.shape[0]}")
    _jagged.check_count("total_dim", total_dim)
    _jagged.check_count("batch_size", batch_size)
    if mode not in (SUM, MEAN):
        raise ValueError(f"mode must be {SUM} (SUM) or {MEAN} (MEAN), got {mode}")
    if per_sample_weights is not None:
        _device.check_tensor("per_sample_weights", per_sample_weights)
        if tuple(per_sample_weights.shape) != tuple(indices.shape):
            raise ValueError(f"per_sample_weights must have the shape of indices {tuple(indices.shape)}, "
                             f"got {tuple(per_sample_weights.shape)}")
        if per_sample_weights.device != indices.device:
            raise ValueError(f"per_sample_weights must be on indices' device {indices.device}, "
                             f"got {per_sample_weights.device}")
    return acc_dtype, device


def _prepare(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
             per_sample_weights, mode) -> _Call:
    acc_dtype, device = _check_meta(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim,
                                    batch_size, per_sample_weights, mode)
    num_keys = _jagged.check_offsets(offsets, batch_size, indices.shape[0])
    S = slot_key.shape[0]
    # With batch_size 0 the offsets do not tell the key count; no id is read then.
    key_bound = num_keys if batch_size else np.iinfo(np.int64).max
    key = _jagged.host_slots("slot_key", slot_key, S, key_bound, "the KJT's key count")
    table = _jagged.host_slots("slot_table", slot_table, S, len(weights), "the number of tables")
    column = _jagged.host_slots("slot_column", slot_column, S, total_dim + 1, "total_dim + 1")
    dims = np.array([w.shape[1] for w in weights], np.int64)
    rows = np.array([w.shape[0] for w in weights], np.int64)
    _check_tiling(column, dims[table], total_dim)
    return _Call(key, table, column, dims, rows, acc_dtype, device)


def _check_tiling(column: np.ndarray, width: np.ndarray, total_dim: int) -> None:
    # The slots' column ranges must tile [0, total_dim) exactly: every output column written once.
    order = np.lexsort((width, column))
    ends = np.cumsum(width[order])
    starts = np.concatenate([[0], ends[:-1]])
    bad = np.flatnonzero(column[order] != starts)
    if bad.size:
        s = order[bad[0]]
        raise ValueError(f"slot_column[{s}] must continue the slots' columns at {starts[bad[0]]} (slots tile "
                         f"[0, total_dim) in some order), got {column[s]}")
    end = int(ends[-1]) if ends.size else 0
    if end != total_dim:
        raise ValueError(f"total_dim must equal the slots' summed dims {end}, got {total_dim}")


def _contiguous(tables: Sequence[Tensor]) -> List[Tensor]:
    return [w.detach().contiguous() for w in tables]


def _psw(per_sample_weights: Optional[Tensor], acc_dtype: torch.dtype) -> Optional[Tensor]:
    return None if per_sample_weights is None else per_sample_weights.detach().to(acc_dtype).contiguous()


def pooled_forward(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                   per_sample_weights, mode) -> Tensor:
    """The forward (module docstring) on CPU or CUDA by the tables' device; no autograd."""
    call = _prepare(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                    per_sample_weights, mode)
    out = torch.empty((batch_size, total_dim), dtype=call.acc_dtype, device=call.device)
    S = call.slot_key.shape[0]
    if batch_size == 0 or S == 0 or total_dim == 0:
        return out.zero_()
    tables = _contiguous(weights)
    args = _jagged.table_args(tables, call.acc_dtype, call.device)
    psw = _psw(per_sample_weights, call.acc_dtype)
    psw_or_empty = psw if psw is not None else out.new_empty(0)
    if _device.is_cuda(out):
        with _device.cuda_launch(call.device) as stream:
            slots = [_jagged.index_array(a, call.device) for a in (call.slot_key, call.slot_table, call.slot_column)]
            launch_cuda_forward(args, _device.as_numba_array(indices), _device.as_numba_array(offsets), *slots,
                                _device.as_numba_array(psw_or_empty), psw is not None, mode == MEAN, batch_size,
                                _device.as_numba_array(out), S, int(call.dims.max(initial=1)), stream=stream)
    else:
        _pooled_forward_cpu(args.wide, args.half, args.table_format, args.table_index, indices.numpy(),
                            offsets.numpy(), call.slot_key, call.slot_table, call.slot_column,
                            call.dims[call.slot_table], psw_or_empty.numpy(), psw is not None, mode == MEAN,
                            batch_size, out.numpy(), _device.cpu_kernel_chunks(S * batch_size))
    return out
