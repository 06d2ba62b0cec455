"""Row-wise sparse optimizer rules for embedding tables, as FBGEMM's table-batched embeddings apply them.

A training step of a table touched by the ids `i_1..i_n` (with repeats) and per-id gradient rows
`g_1..g_n` first sums the rows of equal ids, `g_r = sum_{j: i_j = r} g_j`, then updates each unique
row r once with the summed gradient (FBGEMM's EXACT_* optimizers; rows no id touched are left as
they are):

    sgd              w_r <- w_r - lr * g_r
    adagrad          G_r <- G_r + g_r^2                      (elementwise, G_r of shape (D,))
                     w_r <- w_r - lr * g_r / (sqrt(G_r) + eps)
    rowwise_adagrad  G_r <- G_r + (1/D) sum_d g_{r,d}^2       (one scalar per row)
                     w_r <- w_r - lr * g_r / (sqrt(G_r) + eps)

eps is added after the square root. FBGEMM's defaults are lr = 0.01 and eps = 1e-8. The rules
are pure functions returning new values and compute in the dtype of the given rows; the table
step computes in float32 for 16-bit tables (float64 for float64 tables) and rounds the new rows
back to the table's dtype.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from refimpl.base import as_numpy

Array = np.ndarray

RULES = ("sgd", "adagrad", "rowwise_adagrad")
DEFAULT_LR = 0.01
DEFAULT_EPS = 1.0e-8


def sgd_update(w_rows: Array, g_rows: Array, lr: float) -> Array:
    """w <- w - lr * g
    Shapes: w_rows, g_rows (n, D) -> (n, D).
    Source: FBGEMM EXACT_SGD."""
    return w_rows - lr * g_rows


def adagrad_update(
    w_rows: Array, G_rows: Array, g_rows: Array, lr: float, eps: float
) -> Tuple[Array, Array]:
    """G <- G + g^2;  w <- w - lr * g / (sqrt(G) + eps)   (elementwise, with the new G)
    Shapes: w_rows, G_rows, g_rows (n, D) -> (w (n, D), G (n, D)).
    Source: FBGEMM EXACT_ADAGRAD."""
    G_new = G_rows + g_rows * g_rows
    w_new = w_rows - lr * g_rows / (np.sqrt(G_new) + eps)
    return w_new, G_new


def rowwise_adagrad_update(
    w_rows: Array, G_row: Array, g_rows: Array, lr: float, eps: float
) -> Tuple[Array, Array]:
    """G_r <- G_r + mean_d(g_{r,d}^2);  w_r <- w_r - lr * g_r / (sqrt(G_r) + eps)   (one G per row)
    Shapes: w_rows, g_rows (n, D); G_row (n,) -> (w (n, D), G (n,)).
    Source: FBGEMM EXACT_ROWWISE_ADAGRAD."""
    D = g_rows.shape[1]
    # A zero-width row has no squares to average; FBGEMM never sees D = 0, so G stays.
    mean_square = (g_rows * g_rows).sum(axis=1) / D if D else np.zeros_like(G_row)
    G_new = G_row + mean_square
    w_new = w_rows - lr * g_rows / (np.sqrt(G_new) + eps)[:, None]
    return w_new, G_new


def sum_duplicate_rows(ids: Array, grad_rows: Array) -> Tuple[Array, Array]:
    """g_r = sum_{j: i_j = r} g_j for every distinct id r, in increasing order of r
    Shapes: ids (n,); grad_rows (n, D) -> (unique ids (u,), summed rows (u, D)).
    Source: FBGEMM's backward sorts the ids and reduces each run before the update."""
    unique, inverse = np.unique(ids, return_inverse=True)
    summed = np.zeros((unique.shape[0], grad_rows.shape[1]), dtype=grad_rows.dtype)
    np.add.at(summed, inverse.reshape(-1), grad_rows)
    return unique, summed


def init_state(rule: str, num_embeddings: int, embedding_dim: int, dtype: Any = np.float64) -> Optional[Array]:
    """The zero optimizer state of one table: None (sgd), G (rows, D) (adagrad), G (rows,) (rowwise_adagrad)."""
    _check_rule(rule)
    if rule == "sgd":
        return None
    shape = (num_embeddings, embedding_dim) if rule == "adagrad" else (num_embeddings,)
    return np.zeros(shape, dtype=dtype)


def apply_sparse_step(
    table: Array,
    state: Optional[Array],
    ids: Any,
    grad_rows: Any,
    rule: str,
    lr: float = DEFAULT_LR,
    eps: float = DEFAULT_EPS,
) -> Tuple[Array, Optional[Array]]:
    """(W, G) <- rule applied once to every row r in ids with g_r = sum_{j: i_j = r} g_j
    Shapes: table W (rows, D); state G as init_state (None for sgd); ids (n,); grad_rows (n, D)
    -> (new W, new G), copies; rows no id touched are unchanged.
    Source: FBGEMM SplitTableBatchedEmbeddingBagsCodegen with EXACT_SGD / EXACT_ADAGRAD /
    EXACT_ROWWISE_ADAGRAD (module docstring)."""
    _check_rule(rule)
    table = np.asarray(table)
    ids = as_numpy(ids).reshape(-1)
    grad_rows = as_numpy(grad_rows)
    _check_step_inputs(table, state, ids, grad_rows, rule, lr, eps)
    new_table = table.copy()
    new_state = None if state is None else np.array(state, copy=True)
    if ids.size == 0:
        return new_table, new_state
    compute = _state_dtype(table)
    rows, g = sum_duplicate_rows(ids.astype(np.int64), grad_rows.astype(compute))
    w = table[rows].astype(compute)
    # Assigning back rounds to the table's (and the state's) own dtype.
    if rule == "sgd":
        new_table[rows] = sgd_update(w, g, lr)
    elif rule == "adagrad":
        new_table[rows], new_state[rows] = adagrad_update(w, new_state[rows].astype(compute), g, lr, eps)
    else:
        new_table[rows], new_state[rows] = rowwise_adagrad_update(w, new_state[rows].astype(compute), g, lr, eps)
    return new_table, new_state


def sparse_step(
    module: Any,
    row_grads: Mapping[str, Tuple[Any, Any]],
    rule: str,
    states: Optional[Dict[str, Optional[Array]]] = None,
    lr: float = DEFAULT_LR,
    eps: float = DEFAULT_EPS,
) -> Dict[str, Optional[Array]]:
    """W_k, G_k <- apply_sparse_step(W_k, G_k, ids_k, g_k) for every state_dict key k in row_grads
    Shapes: row_grads {key: (ids (n,), grad_rows (n, D))} as an embedding collection's
    `sparse_backward` returns; states {key: G} (created by init_state when None or absent).
    Source: FBGEMM's fused training step, one table at a time.

    Writes the new tables into `module` and returns the new states."""
    _check_rule(rule)
    tables = module.state_dict()
    states = {} if states is None else dict(states)
    updated = {}
    for key, (ids, grad_rows) in row_grads.items():
        if key not in tables:
            raise KeyError(f"sparse_step: row_grads key expected one of {sorted(tables)}, got {key!r}")
        table = tables[key]
        if states.get(key) is None:
            states[key] = init_state(rule, table.shape[0], table.shape[1], _state_dtype(table))
        updated[key], states[key] = apply_sparse_step(table, states[key], ids, grad_rows, rule, lr, eps)
    module.load_state_dict(updated, strict=False)
    return states


def _state_dtype(table: Array) -> np.dtype:
    # 16-bit tables update (and keep their optimizer state) in float32, as FBGEMM does.
    return np.result_type(table.dtype, np.float32)


def _check_rule(rule: Any) -> None:
    if rule not in RULES:
        raise ValueError(f"rule expected one of {list(RULES)}, got {rule!r}")


def _check_step_inputs(table, state, ids, grad_rows, rule, lr, eps) -> None:
    name = "apply_sparse_step"
    if table.ndim != 2:
        raise ValueError(f"{name}: table expected a 2-D (rows, D) array, got shape {table.shape}")
    rows, D = table.shape
    if grad_rows.shape != (ids.shape[0], D):
        raise ValueError(
            f"{name}: grad_rows expected shape ({ids.shape[0]}, {D}) (one row per id), got {grad_rows.shape}"
        )
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"{name}: ids expected an integer dtype, got {ids.dtype}")
    outside = np.flatnonzero((ids < 0) | (ids >= rows)) if ids.size else ids[:0]
    if outside.size:
        j = int(outside[0])
        raise IndexError(f"{name}: ids expected values in [0, {rows}), got id {ids[j]} at position {j}")
    expected = {"sgd": None, "adagrad": (rows, D), "rowwise_adagrad": (rows,)}[rule]
    got = None if state is None else np.shape(state)
    if got != expected:
        raise ValueError(f"{name}: state for rule '{rule}' expected shape {expected}, got {got}")
    for arg, value in (("lr", lr), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(value):
            raise ValueError(f"{name}: {arg} expected a finite number, got {value!r}")
