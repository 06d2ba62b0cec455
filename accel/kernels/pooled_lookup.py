"""Table-batched pooled lookup, EmbeddingBagCollection's forward, over every (feature, table) slot in one call:

    out[b, c_s + d] = sum_{j in bag b of key k_s} w_j W_{t_s}[i_j, d]          SUM   (w_j = 1 unweighted)
    out[b, c_s + d] = (1 / L_b) sum_{j in bag b of key k_s} w_j W_{t_s}[i_j, d]  MEAN  (empty bag: 0)

Backward: dW_t[r] = sum over the lookups j of row r of (w_j / L_b if MEAN else w_j) g[b, c_s : c_s + D] (dense,
zero for untouched rows) and dw_j = sum over the slots s reading j of (1 / L_b if MEAN else 1)
<g[b, c_s : c_s + D], W_{t_s}[i_j]>; both come from sparse_optim's row-grouped pass. The fused variant applies
an optimizer rule to the touched rows inside the backward instead (sparse_optim.row_step).

This module holds the torch bindings (`recspec::pooled_lookup`, its backward, and the fused pair) and the entry
points `pooled_lookup` / `pooled_lookup_fused`. The kernels and launchers live in accel.kernels.pooled_forward
(the forward), accel.kernels.pooled_backward (gradients and the fused step) and accel.kernels.id_range (the id
range check), and are re-exported here under their names.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import List, Optional

import torch
from torch import Tensor

from accel.kernels import _jagged, id_range, sparse_optim
from accel.kernels import pooled_forward as _forward
from accel.kernels.id_range import find_out_of_range, launch_cuda_find_out_of_range
from accel.kernels.pooled_backward import check_fused_tables, pooled_backward, pooled_fused_step
from accel.kernels.pooled_forward import MEAN, SUM, _check_meta, launch_cuda_forward, pooled_forward

__all__ = [
    "MEAN",
    "SUM",
    "check_fused_tables",
    "find_out_of_range",
    "launch_cuda_find_out_of_range",
    "launch_cuda_forward",
    "pooled_backward",
    "pooled_forward",
    "pooled_fused_step",
    "pooled_lookup",
    "pooled_lookup_fused",
]


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Every CUDA kernel of the pooled lookup (the forward and the id range check), compiled on first use."""
    return SimpleNamespace(**vars(_forward._cuda_kernels()), **vars(id_range._cuda_kernels()))


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
