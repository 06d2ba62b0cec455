"""Table-batched sequence lookup, EmbeddingCollection's forward: one output row per id of every (feature, table)
slot, slot after slot and each slot's rows in id order:

    out[o_s + (j - f_s)] = W_{t_s}[i_j]      for the ids j in [f_s, f_s + n_s) of key k_s

with f_s = offsets[k_s B], n_s = offsets[(k_s + 1) B] - f_s and o_s = n_0 + ... + n_{s-1}. All tables share D;
out [sum_s n_s, D] is float32 (float64 for float64 tables), 16-bit rows converted exactly.

Backward: dW_t[r] = sum over the lookups of row r of g[o_s + j - f_s] (dense, zero for untouched rows), from
sparse_optim's row-grouped pass; the fused variant applies an optimizer rule to the touched rows instead.

Layers: kernels (CPU @njit: chunks of output rows, the row PREFETCH_AHEAD ids ahead prefetched; CUDA: one block
per output row, threads over D), launchers, torch bindings (`recspec::sequence_lookup`, its backward, the fused
pair).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List

import numpy as np
import torch
from numba import prange
from torch import Tensor

from accel.kernels import _device, _jagged, pooled_lookup, sparse_optim
from accel.kernels._jagged import BF16, WIDE

# Bound by _cuda_kernels() on the first CUDA launch (the simulator swaps `cuda` for its fake module).
cuda = None
_row_value = None


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@_device.cpu_helper()
def _gather_rows(tab, bf16, indices, shift, lo, hi, out):
    # Output rows [lo, hi) of one slot: row p is table row indices[p + shift].
    for p in range(lo, hi):
        if p + _jagged.PREFETCH_AHEAD < hi:
            _jagged.prefetch_row(tab, indices[p + shift + _jagged.PREFETCH_AHEAD])
        _jagged.load_row(tab[indices[p + shift]], out[p], bf16)


@_device.cpu_jit(parallel=True)
def _sequence_forward_cpu(wide, half, table_format, table_index, indices, slot_table, slot_first, out_start, out,
                          chunks):
    # Chunk c owns output rows [c P / chunks, (c + 1) P / chunks), every row being one table row copied.
    P = out.shape[0]
    for c in prange(chunks):
        p0, p1 = P * c // chunks, P * (c + 1) // chunks
        for s in range(slot_table.shape[0]):
            lo, hi = max(p0, out_start[s]), min(p1, out_start[s + 1])
            if lo >= hi:
                continue
            t = slot_table[s]
            shift = slot_first[s] - out_start[s]
            if table_format[t] == WIDE:
                _gather_rows(wide[table_index[t]], False, indices, shift, lo, hi, out)
            else:
                _gather_rows(half[table_index[t]], table_format[t] == BF16, indices, shift, lo, hi, out)


def _sequence_forward_cuda(wide, half, table_format, table_index, indices, slot_table, slot_first, out_start, out):
    # One block per output row p (its slot found by bisection of out_start), threads strided over D.
    p = cuda.blockIdx.x
    S = slot_table.shape[0]
    if p >= out.shape[0]:
        return
    lo, hi = 0, S
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if out_start[mid] <= p:
            lo = mid
        else:
            hi = mid
    t = slot_table[lo]
    fmt = table_format[t]
    i = table_index[t]
    row = indices[slot_first[lo] + p - out_start[lo]]
    for d in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
        out[p, d] = _row_value(wide, half, fmt, i, row, d)


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _row_value
    cuda = _device.cuda_module()
    _row_value = cuda.jit(device=True, cache=True)(_jagged.row_value)
    return SimpleNamespace(forward=cuda.jit(cache=True)(_sequence_forward_cuda))


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def launch_cuda_forward(tables, indices, slot_table, slot_first, out_start, out, stream=0) -> None:
    """CUDA forward on Numba device arrays; out (P, D) with P, D > 0; out_start has S + 1 entries."""
    kernels = _cuda_kernels()
    # Grid: one block per output row; block: the next power of two covering D (32 to 256).
    kernels.forward[out.shape[0], _device.threads_per_row(out.shape[1]), stream](
        tables.wide, tables.half, tables.table_format, tables.table_index, indices, slot_table, slot_first,
        out_start, out,
    )


@dataclass(frozen=True)
class _Call:
    """A validated call: host slot arrays, each slot's first id and id count, output row starts."""

    slot_key: np.ndarray
    slot_table: np.ndarray
    first: np.ndarray
    count: np.ndarray
    out_start: np.ndarray
    dim: int
    acc_dtype: torch.dtype
    device: torch.device


def _check_meta(weights, indices, offsets, slot_key, slot_table, batch_size):
    # Checks that read no tensor data (shared with the fake kernels).
    acc_dtype, device = _jagged.check_tables("weights", weights)
    dims = [w.shape[1] for w in weights]
    if any(d != dims[0] for d in dims):
        raise ValueError(f"weights must all have the same embedding dim for a sequence lookup, got dims {dims}")
    _jagged.check_index("indices", indices, device)
    _jagged.check_index("offsets", offsets, device)
    for name, t in (("slot_key", slot_key), ("slot_table", slot_table)):
        _jagged.check_index(name, t, None)
    if slot_table.shape[0] != slot_key.shape[0]:
        raise ValueError(f"slot_table must have one entry per slot ({slot_key.shape[0]}), got {slot_table.shape[0]}")
    _jagged.check_count("batch_size", batch_size)
    return acc_dtype, device, (dims[0] if dims else 0)


def _prepare(weights, indices, offsets, slot_key, slot_table, batch_size) -> _Call:
    acc_dtype, device, dim = _check_meta(weights, indices, offsets, slot_key, slot_table, batch_size)
    num_keys = _jagged.check_offsets(offsets, batch_size, indices.shape[0])
    S = slot_key.shape[0]
    key_bound = num_keys if batch_size else np.iinfo(np.int64).max
    key = _jagged.host_slots("slot_key", slot_key, S, key_bound, "the KJT's key count")
    table = _jagged.host_slots("slot_table", slot_table, S, len(weights), "the number of tables")
    if batch_size:
        host_offsets = offsets[::batch_size].cpu().numpy()  # the key boundaries only
        first, count = _jagged.key_ranges(host_offsets, key, 1)
    else:
        first, count = np.zeros(S, np.int64), np.zeros(S, np.int64)
    out_start = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    return _Call(key, table, first, count, out_start, dim, acc_dtype, device)


def sequence_forward(weights, indices, offsets, slot_key, slot_table, batch_size) -> Tensor:
    """The forward (module docstring) on CPU or CUDA by the tables' device; no autograd."""
    call = _prepare(weights, indices, offsets, slot_key, slot_table, batch_size)
    P = int(call.out_start[-1])
    out = torch.empty((P, call.dim), dtype=call.acc_dtype, device=call.device)
    if P == 0 or call.dim == 0:
        return out
    tables = [w.detach().contiguous() for w in weights]
    args = _jagged.table_args(tables, call.acc_dtype, call.device)
    if _device.is_cuda(out):
        with _device.cuda_launch(call.device) as stream:
            slots = [_jagged.index_array(a, call.device) for a in (call.slot_table, call.first, call.out_start)]
            launch_cuda_forward(args, _device.as_numba_array(indices), *slots, _device.as_numba_array(out),
                                stream=stream)
    else:
        _sequence_forward_cpu(args.wide, args.half, args.table_format, args.table_index, indices.numpy(),
                              call.slot_table, call.first, call.out_start, out.numpy(),
                              _device.cpu_kernel_chunks(P))
    return out


def _lookups(call: _Call, indices, offsets, batch_size) -> sparse_optim.Lookups:
    S = call.slot_key.shape[0]
    return sparse_optim.Lookups(
        indices=indices, offsets=offsets, batch_size=batch_size, slot_key=call.slot_key, slot_table=call.slot_table,
        goff0=call.out_start[:-1] * call.dim, bag_stride=np.zeros(S, np.int64),
        value_stride=np.full(S, call.dim, np.int64), first=call.first, count=call.count, per_sample_weights=None,
        mean=False,
    )


def _grad_rows(grad: Tensor, call: _Call) -> Tensor:
    rows = int(call.out_start[-1])
    if tuple(grad.shape) != (rows, call.dim):
        raise ValueError(f"grad must have shape (ids looked up, D) = ({rows}, {call.dim}), got {tuple(grad.shape)}")
    return grad.detach().to(call.acc_dtype).contiguous()


def sequence_backward(grad, weights, indices, offsets, slot_key, slot_table, batch_size) -> List[Tensor]:
    """[dW_t for every table]: dense, zero where no id looked, in the table's dtype."""
    call = _prepare(weights, indices, offsets, slot_key, slot_table, batch_size)
    g = _grad_rows(grad, call)
    tables = [w.detach().contiguous() for w in weights]
    grads = [torch.zeros_like(w) for w in tables]
    if g.numel() > 0:
        sparse_optim.row_step(g.view(-1), _lookups(call, indices, offsets, batch_size), tables, grads, [],
                              sparse_optim.WRITE, 0.0, 0.0, False)
    return grads


def sequence_fused_step(grad, weights, indices, offsets, slot_key, slot_table, batch_size, optimizer, lr, eps,
                        state) -> None:
    """The optimizer rule applied in place to every row the lookups touched (sparse_optim)."""
    call = _prepare(weights, indices, offsets, slot_key, slot_table, batch_size)
    g = _grad_rows(grad, call)
    tables = pooled_lookup.check_fused_tables(weights, optimizer, lr, eps)
    state = sparse_optim.check_state(optimizer, state, tables, call.acc_dtype)
    if g.numel() > 0:
        sparse_optim.row_step(g.view(-1), _lookups(call, indices, offsets, batch_size), tables, tables, state,
                              sparse_optim.RULES[optimizer], float(lr), float(eps), False)


# ---------------------------------------------------------------------------------------------------------
# Torch bindings
# ---------------------------------------------------------------------------------------------------------


def _fake_rows(weights, indices, offsets, slot_key, slot_table, batch_size):
    acc_dtype, _, dim = _check_meta(weights, indices, offsets, slot_key, slot_table, batch_size)
    # The row count depends on the offsets' values.
    rows = torch.library.get_ctx().new_dynamic_size()
    return indices.new_empty((rows, dim), dtype=acc_dtype)


@torch.library.custom_op("recspec::sequence_lookup", mutates_args=())
def _sequence_lookup_op(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor,
                        slot_table: Tensor, batch_size: int) -> Tensor:
    return sequence_forward(weights, indices, offsets, slot_key, slot_table, batch_size)


_sequence_lookup_op.register_fake(_fake_rows)


@torch.library.custom_op("recspec::sequence_lookup_backward", mutates_args=())
def _sequence_lookup_backward_op(grad: Tensor, weights: List[Tensor], indices: Tensor, offsets: Tensor,
                                 slot_key: Tensor, slot_table: Tensor, batch_size: int) -> List[Tensor]:
    return sequence_backward(grad, weights, indices, offsets, slot_key, slot_table, batch_size)


@_sequence_lookup_backward_op.register_fake
def _(grad, weights, indices, offsets, slot_key, slot_table, batch_size):
    return [torch.empty_like(w) for w in weights]


def _setup_context(ctx, inputs, output) -> None:
    weights, indices, offsets, slot_key, slot_table, batch_size = inputs
    ctx.save_for_backward(*weights, indices, offsets, slot_key, slot_table)
    ctx.num_tables, ctx.batch_size = len(weights), batch_size
    ctx.table_needs = [w.requires_grad for w in weights]


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    n = ctx.num_tables
    weights, (indices, offsets, slot_key, slot_table) = list(saved[:n]), saved[n:]
    grads = _sequence_lookup_backward_op(grad, weights, indices, offsets, slot_key, slot_table, ctx.batch_size)
    return [g if need else None for g, need in zip(grads, ctx.table_needs)], None, None, None, None, None


_sequence_lookup_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("recspec::sequence_lookup_fused", mutates_args=())
def _sequence_lookup_fused_op(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor,
                              slot_table: Tensor, batch_size: int, optimizer: str, lr: float, eps: float,
                              state: List[Tensor], trigger: Tensor) -> Tensor:
    return sequence_forward(weights, indices, offsets, slot_key, slot_table, batch_size)


@_sequence_lookup_fused_op.register_fake
def _(weights, indices, offsets, slot_key, slot_table, batch_size, optimizer, lr, eps, state, trigger):
    return _fake_rows(weights, indices, offsets, slot_key, slot_table, batch_size)


@torch.library.custom_op("recspec::sequence_lookup_fused_step", mutates_args=("weights", "state"))
def _sequence_lookup_fused_step_op(grad: Tensor, weights: List[Tensor], indices: Tensor, offsets: Tensor,
                                   slot_key: Tensor, slot_table: Tensor, batch_size: int, optimizer: str, lr: float,
                                   eps: float, state: List[Tensor]) -> None:
    sequence_fused_step(grad, weights, indices, offsets, slot_key, slot_table, batch_size, optimizer, lr, eps, state)


@_sequence_lookup_fused_step_op.register_fake
def _(grad, weights, indices, offsets, slot_key, slot_table, batch_size, optimizer, lr, eps, state):
    return None


def _fused_setup_context(ctx, inputs, output) -> None:
    weights, indices, offsets, slot_key, slot_table, batch_size, optimizer, lr, eps, state, _ = inputs
    # Kept on ctx rather than saved: the step writes the tables and the state (see pooled_lookup).
    ctx.tables, ctx.state = list(weights), list(state)
    ctx.args = (indices, offsets, slot_key, slot_table, batch_size, optimizer, lr, eps)


def _fused_backward(ctx, grad):
    indices, offsets, slot_key, slot_table, batch_size, optimizer, lr, eps = ctx.args
    _sequence_lookup_fused_step_op(grad, ctx.tables, indices, offsets, slot_key, slot_table, batch_size, optimizer,
                                   lr, eps, ctx.state)
    return [None] * len(ctx.tables), None, None, None, None, None, None, None, None, [None] * len(ctx.state), None


_sequence_lookup_fused_op.register_autograd(_fused_backward, setup_context=_fused_setup_context)


def sequence_lookup(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor, slot_table: Tensor,
                    batch_size: int) -> Tensor:
    """out [sum over slots of n_s, D] (module docstring), float32 (float64 for float64 tables).

    weights[t]: table t [rows_t, D], one D for all; indices int64 [N]; offsets int64 [F B + 1] (KJT layout);
    slot_key, slot_table int64 [S]. Ids must lie in their tables' ranges (pooled_lookup.find_out_of_range).
    Differentiable w.r.t. every table (dense gradients, as torch's embedding).
    """
    # Checked here too so that bad arguments get this module's errors, not the dispatcher's schema errors.
    _check_meta(weights, indices, offsets, slot_key, slot_table, batch_size)
    return _sequence_lookup_op(list(weights), indices, offsets, slot_key, slot_table, batch_size)


def sequence_lookup_fused(weights: List[Tensor], indices: Tensor, offsets: Tensor, slot_key: Tensor,
                          slot_table: Tensor, batch_size: int, optimizer: str, lr: float, eps: float,
                          state: List[Tensor]) -> Tensor:
    """sequence_lookup's output; its backward applies `optimizer` ("sgd", "adagrad", "rowwise_adagrad") to the
    touched rows of the tables (and state) in place instead of returning table gradients (sparse_optim).

    state[t]: Adagrad's G [rows_t, D] or row-wise Adagrad's [rows_t] in the accumulation dtype; [] for sgd. The
    backward runs whenever grad mode is on, whether or not the tables require grad.
    """
    acc_dtype = _check_meta(weights, indices, offsets, slot_key, slot_table, batch_size)[0]
    pooled_lookup.check_fused_tables(weights, optimizer, lr, eps)
    sparse_optim.check_state(optimizer, state, weights, acc_dtype)
    # A zero-size input that requires grad, so that autograd calls the backward (which does the update).
    trigger = torch.empty(0, device=indices.device, requires_grad=torch.is_grad_enabled())
    return _sequence_lookup_fused_op(list(weights), indices, offsets, slot_key, slot_table, batch_size, optimizer,
                                     float(lr), float(eps), list(state), trigger)
