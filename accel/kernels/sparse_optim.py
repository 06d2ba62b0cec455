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
242 ms. Layers: the rules (accel.kernels.row_rules), the grouping (accel.kernels.row_groups: a counting sort
per table on the CPU, torch's stable sort on CUDA), the apply kernels (accel.kernels.row_apply: CPU @njit, one
chunk of rows per thread; CUDA, one block per row with threads over D), and here the launcher `row_step` that the
lookup bindings call; the names of those modules are re-exported here.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from accel.kernels import _device, _jagged, row_apply
from accel.kernels.row_apply import _apply_rows_cpu, _psw_reduce_cpu, launch_cuda_apply, launch_cuda_psw_reduce
from accel.kernels.row_groups import Lookups, RowGroups, group_rows, group_rows_torch
from accel.kernels.row_rules import (
    ADAGRAD,
    READ,
    ROWWISE_ADAGRAD,
    RULES,
    SGD,
    WRITE,
    adagrad_element,
    adagrad_row,
    rowwise_multiplier,
    step_row,
)

__all__ = [
    "ADAGRAD",
    "READ",
    "ROWWISE_ADAGRAD",
    "RULES",
    "SGD",
    "WRITE",
    "Lookups",
    "RowGroups",
    "adagrad_element",
    "adagrad_row",
    "check_state",
    "group_rows",
    "group_rows_torch",
    "launch_cuda_apply",
    "launch_cuda_psw_reduce",
    "row_step",
    "rowwise_multiplier",
    "step_row",
]


def _cuda_kernels():
    """The apply stage's CUDA kernels (accel.kernels.row_apply), compiled on first use."""
    return row_apply._cuda_kernels()


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
