"""Table-batched pooled lookup, EmbeddingBagCollection's forward, over every (feature, table) slot in one call:

    out[b, c_s + d] = sum_{j in bag b of key k_s} w_j W_{t_s}[i_j, d]          SUM   (w_j = 1 unweighted)
    out[b, c_s + d] = (1 / L_b) sum_{j in bag b of key k_s} w_j W_{t_s}[i_j, d]  MEAN  (empty bag: 0)

Backward: dW_t[r] = sum over the lookups j of row r of (w_j / L_b if MEAN else w_j) g[b, c_s : c_s + D] (dense,
zero for untouched rows) and dw_j = sum over the slots s reading j of (1 / L_b if MEAN else 1)
<g[b, c_s : c_s + D], W_{t_s}[i_j]>; both come from sparse_optim's row-grouped pass. The fused variant applies
an optimizer rule to the touched rows inside the backward instead (sparse_optim.row_step).

Bag b of KJT key k is indices[offsets[k B + b] : offsets[k B + b + 1]]. Tables are float32, float16 or bfloat16
(accumulated in float32) or all float64; the output is float32 (float64 for float64 tables).

Layers, in this order: kernels (CPU @njit; CUDA numba.cuda.jit), launchers (validate, allocate, pick the device)
and the torch bindings (`recspec::pooled_lookup`, its backward, and the fused pair).

CPU forward: the lookup is bound by DRAM latency (each 256-byte row of dlrm-small is a miss), so what matters is
how many rows are in flight. Each thread walks its share of the (slot, bag) items slot by slot and prefetches,
into L2, the row PREFETCH_AHEAD ids ahead in the key's id stream (across bag boundaries); ids are added two at a
time into the output row by a vectorised loop over D. Measured with benchmarks/embedding_micro.py on the 2-core
machine: one thread 26.5 ns a row against 37 for TorchRec's EBC (a plain gather: 47); two threads on
dlrm-small 8.2 ms against TorchRec's 10.1 ms (torch's embedding_bag: 11.5 ms), on "wide" 74 ms against 172 ms.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional, Sequence

import numpy as np
import torch
from numba import prange
from torch import Tensor

from accel.kernels import _device, _jagged, sparse_optim
from accel.kernels._jagged import BF16, WIDE

SUM, MEAN = 0, 1

# Bound by _cuda_kernels() on the first CUDA launch (the simulator swaps `cuda` for its fake module).
cuda = None
_row_value = None

# find_out_of_range on CUDA: a flat grid-stride loop over the ids, 256 threads a block, at most 4096 blocks.
_FLAT_THREADS = 256
_FLAT_MAX_BLOCKS = 4096


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
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _row_value
    cuda = _device.cuda_module()
    _row_value = cuda.jit(device=True, cache=True)(_jagged.row_value)
    return SimpleNamespace(
        forward=cuda.jit(cache=True)(_pooled_forward_cuda),
        find_out_of_range=cuda.jit(cache=True)(_find_out_of_range_cuda),
    )


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


def launch_cuda_find_out_of_range(indices, key_starts, key_rows, first_bad, stream=0) -> None:
    """CUDA range check on Numba device arrays; first_bad (1,) int64 must hold len(indices) beforehand."""
    kernels = _cuda_kernels()
    blocks = min(max(1, math.ceil(indices.shape[0] / _FLAT_THREADS)), _FLAT_MAX_BLOCKS)
    kernels.find_out_of_range[blocks, _FLAT_THREADS, stream](indices, key_starts, key_rows, first_bad)


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


def _lookups(call: _Call, indices, offsets, batch_size, psw, mode, total_dim) -> sparse_optim.Lookups:
    host_offsets = offsets.detach().cpu().numpy()
    first, count = _jagged.key_ranges(host_offsets, call.slot_key, batch_size)
    S = call.slot_key.shape[0]
    return sparse_optim.Lookups(
        indices=indices, offsets=offsets, batch_size=batch_size, slot_key=call.slot_key, slot_table=call.slot_table,
        goff0=call.slot_column, bag_stride=np.full(S, total_dim, np.int64), value_stride=np.zeros(S, np.int64),
        first=first, count=count, per_sample_weights=psw, mean=mode == MEAN,
    )


def _grad_rows(grad: Tensor, call: _Call, batch_size: int, total_dim: int) -> Tensor:
    if tuple(grad.shape) != (batch_size, total_dim):
        raise ValueError(f"grad must have shape (batch_size, total_dim) = ({batch_size}, {total_dim}), "
                         f"got {tuple(grad.shape)}")
    return grad.detach().to(call.acc_dtype).contiguous()


def pooled_backward(grad, weights, indices, offsets, slot_key, slot_table, slot_column, batch_size,
                    per_sample_weights, mode, weight_grads: bool, psw_grad: bool) -> List[Tensor]:
    """[dW_t for every table if weight_grads] + [dw if psw_grad] (module docstring); dW_t dense, zero where no
    id looked, in the table's dtype; dw in per_sample_weights' dtype."""
    total_dim = grad.shape[1] if grad.dim() == 2 else -1
    call = _prepare(weights, indices, offsets, slot_key, slot_table, slot_column, max(total_dim, 0), batch_size,
                    per_sample_weights, mode)
    g = _grad_rows(grad, call, batch_size, total_dim)
    if psw_grad and per_sample_weights is None:
        raise ValueError("psw_grad needs per_sample_weights, got None")
    tables = _contiguous(weights)
    grads = [torch.zeros_like(w) for w in tables] if weight_grads else []
    dw = None
    if (weight_grads or psw_grad) and batch_size > 0 and call.slot_key.shape[0] > 0:
        lookups = _lookups(call, indices, offsets, batch_size, _psw(per_sample_weights, call.acc_dtype), mode,
                           total_dim)
        # Without weight gradients the rows are only read, for the psw dot products.
        targets = grads if weight_grads else tables
        rule = sparse_optim.WRITE if weight_grads else sparse_optim.READ
        dw = sparse_optim.row_step(g.view(-1), lookups, tables, targets, [], rule, 0.0, 0.0, psw_grad)
    out = list(grads)
    if psw_grad:
        dw = dw if dw is not None else torch.zeros(indices.shape[0], dtype=call.acc_dtype, device=call.device)
        out.append(dw.to(per_sample_weights.dtype))
    return out


def pooled_fused_step(grad, weights, indices, offsets, slot_key, slot_table, slot_column, batch_size,
                      per_sample_weights, mode, optimizer, lr, eps, state, psw_grad: bool) -> Tensor:
    """The optimizer rule applied in place to every row the lookups touched (sparse_optim); returns dw (in
    per_sample_weights' dtype) when psw_grad, else an empty tensor."""
    total_dim = grad.shape[1] if grad.dim() == 2 else -1
    call = _prepare(weights, indices, offsets, slot_key, slot_table, slot_column, max(total_dim, 0), batch_size,
                    per_sample_weights, mode)
    g = _grad_rows(grad, call, batch_size, total_dim)
    tables = check_fused_tables(weights, optimizer, lr, eps)
    state = sparse_optim.check_state(optimizer, state, tables, call.acc_dtype)
    dw = None
    if batch_size > 0 and call.slot_key.shape[0] > 0:
        lookups = _lookups(call, indices, offsets, batch_size, _psw(per_sample_weights, call.acc_dtype), mode,
                           total_dim)
        dw = sparse_optim.row_step(g.view(-1), lookups, tables, tables, state, sparse_optim.RULES[optimizer],
                                   float(lr), float(eps), psw_grad and per_sample_weights is not None)
    if not (psw_grad and per_sample_weights is not None):
        return g.new_empty(0)
    dw = dw if dw is not None else torch.zeros(indices.shape[0], dtype=call.acc_dtype, device=call.device)
    return dw.to(per_sample_weights.dtype)


def check_fused_tables(weights: Sequence[Tensor], optimizer: str, lr: float, eps: float) -> List[Tensor]:
    """The tables a fused step updates in place: contiguous (their storage is written); lr and eps finite."""
    if optimizer not in sparse_optim.RULES:
        raise ValueError(f"optimizer must be one of {list(sparse_optim.RULES)}, got {optimizer!r}")
    for name, value in (("lr", lr), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    for t, w in enumerate(weights):
        if not w.is_contiguous():
            raise ValueError(f"weights[{t}] must be contiguous for a fused update (updated in place), "
                             f"got strides {w.stride()}")
    return [w.detach() for w in weights]


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


# ---------------------------------------------------------------------------------------------------------
# Torch bindings
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("recspec::pooled_lookup", mutates_args=())
def _pooled_lookup_op(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor, slot_table: Tensor,
                      slot_column: Tensor, total_dim: int, batch_size: int, per_sample_weights: Optional[Tensor],
                      mode: int) -> Tensor:
    return pooled_forward(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                          per_sample_weights, mode)


@_pooled_lookup_op.register_fake
def _(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size, per_sample_weights, mode):
    acc_dtype, _ = _check_meta(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                               per_sample_weights, mode)
    return indices.new_empty((batch_size, total_dim), dtype=acc_dtype)


@torch.library.custom_op("recspec::pooled_lookup_backward", mutates_args=())
def _pooled_lookup_backward_op(grad: Tensor, weights: List[Tensor], indices: Tensor, offsets: Tensor,
                               slot_key: Tensor, slot_table: Tensor, slot_column: Tensor, batch_size: int,
                               per_sample_weights: Optional[Tensor], mode: int, weight_grads: bool,
                               psw_grad: bool) -> List[Tensor]:
    return pooled_backward(grad, weights, indices, offsets, slot_key, slot_table, slot_column, batch_size,
                           per_sample_weights, mode, weight_grads, psw_grad)


@_pooled_lookup_backward_op.register_fake
def _(grad, weights, indices, offsets, slot_key, slot_table, slot_column, batch_size, per_sample_weights, mode,
      weight_grads, psw_grad):
    out = [torch.empty_like(w) for w in weights] if weight_grads else []
    if psw_grad:
        out.append(torch.empty_like(per_sample_weights))
    return out


def _setup_context(ctx, inputs, output) -> None:
    weights, indices, offsets, slot_key, slot_table, slot_column, _, batch_size, psw, mode = inputs
    ctx.save_for_backward(*weights, indices, offsets, slot_key, slot_table, slot_column, psw)
    ctx.num_tables, ctx.batch_size, ctx.mode = len(weights), batch_size, mode
    ctx.table_needs = [w.requires_grad for w in weights]
    ctx.psw_grad = psw is not None and psw.requires_grad


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    n = ctx.num_tables
    weights, (indices, offsets, slot_key, slot_table, slot_column, psw) = list(saved[:n]), saved[n:]
    weight_grads = any(ctx.table_needs)
    outs = _pooled_lookup_backward_op(grad, weights, indices, offsets, slot_key, slot_table, slot_column,
                                      ctx.batch_size, psw, ctx.mode, weight_grads, ctx.psw_grad)
    grads = [g if need else None for g, need in zip(outs, ctx.table_needs)] if weight_grads else [None] * n
    return grads, None, None, None, None, None, None, None, (outs[-1] if ctx.psw_grad else None), None


_pooled_lookup_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("recspec::pooled_lookup_fused", mutates_args=())
def _pooled_lookup_fused_op(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor,
                            slot_table: Tensor, slot_column: Tensor, total_dim: int, batch_size: int,
                            per_sample_weights: Optional[Tensor], mode: int, optimizer: str, lr: float, eps: float,
                            state: List[Tensor], trigger: Tensor) -> Tensor:
    return pooled_forward(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                          per_sample_weights, mode)


@_pooled_lookup_fused_op.register_fake
def _(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size, per_sample_weights, mode,
      optimizer, lr, eps, state, trigger):
    acc_dtype, _ = _check_meta(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                               per_sample_weights, mode)
    return indices.new_empty((batch_size, total_dim), dtype=acc_dtype)


@torch.library.custom_op("recspec::pooled_lookup_fused_step", mutates_args=("weights", "state"))
def _pooled_lookup_fused_step_op(grad: Tensor, weights: List[Tensor], indices: Tensor, offsets: Tensor,
                                 slot_key: Tensor, slot_table: Tensor, slot_column: Tensor, batch_size: int,
                                 per_sample_weights: Optional[Tensor], pooling: int, optimizer: str, lr: float,
                                 eps: float, state: List[Tensor], psw_grad: bool) -> Tensor:
    # `pooling` is `mode` elsewhere: torch's functionalization of mutating ops has an argument named mode.
    return pooled_fused_step(grad, weights, indices, offsets, slot_key, slot_table, slot_column, batch_size,
                             per_sample_weights, pooling, optimizer, lr, eps, state, psw_grad)


@_pooled_lookup_fused_step_op.register_fake
def _(grad, weights, indices, offsets, slot_key, slot_table, slot_column, batch_size, per_sample_weights, pooling,
      optimizer, lr, eps, state, psw_grad):
    if psw_grad and per_sample_weights is not None:
        return torch.empty_like(per_sample_weights)
    return grad.new_empty(0)


def _fused_setup_context(ctx, inputs, output) -> None:
    (weights, indices, offsets, slot_key, slot_table, slot_column, _, batch_size, psw, mode, optimizer, lr, eps,
     state, _) = inputs
    # Kept on ctx rather than saved: the step writes the tables and the state, and a second lookup of the same
    # tables in one graph must see (and update) the new rows, not fail autograd's version check.
    ctx.tables, ctx.state = list(weights), list(state)
    ctx.args = (indices, offsets, slot_key, slot_table, slot_column, batch_size, psw, mode, optimizer, lr, eps)
    ctx.psw_grad = psw is not None and psw.requires_grad


def _fused_backward(ctx, grad):
    indices, offsets, slot_key, slot_table, slot_column, batch_size, psw, mode, optimizer, lr, eps = ctx.args
    dw = _pooled_lookup_fused_step_op(grad, ctx.tables, indices, offsets, slot_key, slot_table, slot_column,
                                      batch_size, psw, mode, optimizer, lr, eps, ctx.state, ctx.psw_grad)
    return ([None] * len(ctx.tables), None, None, None, None, None, None, None, (dw if ctx.psw_grad else None),
            None, None, None, None, [None] * len(ctx.state), None)


_pooled_lookup_fused_op.register_autograd(_fused_backward, setup_context=_fused_setup_context)


def pooled_lookup(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor, slot_table: Tensor,
                  slot_column: Tensor, total_dim: int, batch_size: int, per_sample_weights: Optional[Tensor],
                  mode: int) -> Tensor:
    """out [batch_size, total_dim] (module docstring), float32 (float64 for float64 tables).

    weights[t]: table t [rows_t, D_t]; indices int64 [N]; offsets int64 [F B + 1] (KJT layout); slot_key,
    slot_table, slot_column int64 [S]: slot s pools key slot_key[s] from table slot_table[s] into columns
    [slot_column[s], slot_column[s] + D) (the slots tile [0, total_dim)); per_sample_weights [N] or None; mode
    SUM (0) or MEAN (1). Ids must lie in their tables' ranges: check with find_out_of_range first. Differentiable
    w.r.t. every table (dense gradients, as torch's embedding_bag) and per_sample_weights.
    """
    # Checked here too so that bad arguments get this module's errors, not the dispatcher's schema errors.
    _check_meta(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                per_sample_weights, mode)
    return _pooled_lookup_op(list(weights), indices, offsets, slot_key, slot_table, slot_column, total_dim,
                             batch_size, per_sample_weights, mode)


def pooled_lookup_fused(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor,
                        slot_table: Tensor, slot_column: Tensor, total_dim: int, batch_size: int,
                        per_sample_weights: Optional[Tensor], mode: int, optimizer: str, lr: float, eps: float,
                        state: List[Tensor]) -> Tensor:
    """pooled_lookup's output; its backward applies `optimizer` ("sgd", "adagrad", "rowwise_adagrad") to the
    touched rows of the tables (and state) in place instead of returning table gradients (sparse_optim).

    state[t]: Adagrad's G [rows_t, D_t] or row-wise Adagrad's [rows_t], in the accumulation dtype; [] for sgd.
    The backward runs whenever grad mode is on, whether or not the tables require grad; per_sample_weights
    still get their gradient.
    """
    _check_meta(weights, indices, offsets, slot_key, slot_table, slot_column, total_dim, batch_size,
                per_sample_weights, mode)
    check_fused_tables(weights, optimizer, lr, eps)
    acc_dtype = _jagged.check_tables("weights", weights)[0]
    sparse_optim.check_state(optimizer, state, weights, acc_dtype)
    # A zero-size input that requires grad, so that autograd calls the backward (which does the update).
    trigger = torch.empty(0, device=indices.device, requires_grad=torch.is_grad_enabled())
    return _pooled_lookup_fused_op(list(weights), indices, offsets, slot_key, slot_table, slot_column, total_dim,
                                   batch_size, per_sample_weights, mode, optimizer, float(lr), float(eps),
                                   list(state), trigger)
