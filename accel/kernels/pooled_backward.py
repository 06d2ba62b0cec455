"""Backward and fused optimizer step of the table-batched pooled lookup (accel.kernels.pooled_forward):

    dW_t[r] = sum over the lookups j of row r of (w_j / L_b if MEAN else w_j) g[b, c_s : c_s + D]
    dw_j = sum over the slots s reading j of (1 / L_b if MEAN else 1) <g[b, c_s : c_s + D], W_{t_s}[i_j]>

dW_t is dense (zero for untouched rows); both come from sparse_optim's row-grouped pass. The fused variant applies
an optimizer rule to the touched rows instead (sparse_optim.row_step), writing the tables in place.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor

from accel.kernels import _jagged, sparse_optim
from accel.kernels.pooled_forward import MEAN, _Call, _contiguous, _prepare, _psw


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
