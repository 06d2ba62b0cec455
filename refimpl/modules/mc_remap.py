"""The managed-collision table and its operations, as plain functions (semantics.md 11.3).

The table holds Z slots sorted by raw id ascending: `raw[s]` is the raw id owning slot s (MAX for an
empty slot), `mapping[s]` its output id, and each metadata array (counts, last access iteration)
is permuted together with `raw`. The slot at sorted position Z - 1 always holds MAX, the
sentinel: its output id off + Z - 1 is the shared "miss" id, so only Z - 1 ids can be managed.

Each function below is one step of an eviction round or of a lookup, named as in section 11.3;
`refimpl.modules.mc_modules.MCHManagedCollisionModule` strings them together.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

__all__ = [
    "MAX",
    "stable_argsort_descending",
    "remap_ids",
    "coalesce_history",
    "last_access_per_id",
    "frequency_order",
    "match_ids",
    "assign_new_ids",
    "pending_evictions",
    "resort_table",
    "open_slot_count",
    "concat_history",
]

Array = np.ndarray

MAX = np.iinfo(np.int64).max
"""2^63 - 1: the raw id of an empty slot (and of the sentinel slot)."""


def stable_argsort_descending(s: Array) -> Array:
    """r = argsort(s, descending), ties kept in index order (torch.argsort(descending=True, stable=True))

    Shapes: s (n,) -> r (n,) int64. Sorting the reversed array ascending and reversing the result
    keeps equal scores in ascending index order without negating s (negating MIN would overflow).
    """
    n = s.shape[0]
    return (n - 1 - np.argsort(s[::-1], kind="stable")[::-1]).astype(np.int64)


def remap_ids(values: Array, raw: Array, mapping: Array, miss_id: int) -> Array:
    """out_i = mapping[pos_i] if raw[pos_i] == v_i else off + Z - 1,  pos_i = searchsorted_left(raw[0 : Z - 1], v_i)

    Shapes: values (n,) int64; raw, mapping (Z,) -> out (n,) int64. Source: semantics.md 11.3 remap.
    The search runs over the first Z - 1 slots, so pos_i lies in [0, Z - 1] and raw[pos_i] exists.
    """
    pos = np.searchsorted(raw[: raw.shape[0] - 1], values, side="left")
    hit = raw[pos] == values
    return np.where(hit, mapping[pos], np.int64(miss_id)).astype(values.dtype, copy=False)


def coalesce_history(h: Array) -> Tuple[Array, Array, Array]:
    """u, inv, c = unique(h): sorted distinct ids, h_i = u[inv_i], c_j = #{i : h_i = u_j}

    Shapes: h (p,) int64 -> u (m,), inv (p,), c (m,) int64. Source: semantics.md 11.3 round step 1.
    """
    u, inv, c = np.unique(h, return_inverse=True, return_counts=True)
    return u.astype(np.int64), inv.astype(np.int64).reshape(-1), c.astype(np.int64)


def last_access_per_id(hl: Array, inv: Array, m: int) -> Array:
    """la_j = max{hl_i : inv_i = j}: the latest iteration in which u_j was seen

    Shapes: hl (p,), inv (p,) -> la (m,) int64. Source: semantics.md 11.3 round step 3.
    """
    la = np.full(m, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(la, inv, hl.astype(np.int64))
    return la


def frequency_order(c: Array) -> Array:
    """o = stable_argsort(c, descending): most frequent first, equal counts in ascending id order

    Shapes: c (m,) -> o (m,). Source: semantics.md 11.3 round step 5.
    """
    return stable_argsort_descending(c)


def match_ids(raw: Array, fu: Array) -> Tuple[Array, Array]:
    """pos_k = searchsorted_left(raw[0 : Z - 1], fu_k),  matched_k = (raw[pos_k] == fu_k)

    Shapes: raw (Z,); fu (m,) -> pos (m,) int64 in [0, Z - 1], matched (m,) bool.
    Source: semantics.md 11.3 round step 6.
    """
    pos = np.searchsorted(raw[: raw.shape[0] - 1], fu, side="left").astype(np.int64)
    return pos, raw[pos] == fu


def assign_new_ids(raw: Array, ev: Array, n_ids: Array, sel: Array) -> None:
    """raw[ev_k] = n_ids[sel_k] for every k, in place; the slot keeps its output id mapping[ev_k]

    Shapes: raw (Z,); ev, sel (k,); n_ids (m,). Source: semantics.md 11.3 round step 12.
    """
    assert ev.shape == sel.shape, "a policy selected as many candidates as it evicted slots"
    for k in range(ev.shape[0]):
        raw[ev[k]] = n_ids[sel[k]]


def pending_evictions(pending: "Array | None", E: Array) -> Array:
    """pending' = unique(pending U E) (sorted) when an earlier E is unconsumed, else E (in ev order)

    Shapes: pending (q,) or None; E (k,) -> (q',) int64. Source: semantics.md 11.3 round step 13.
    """
    if pending is None:
        return E.astype(np.int64, copy=True)
    return np.unique(np.concatenate([pending, E])).astype(np.int64)


def resort_table(raw: Array, mapping: Array, metadata: Dict[str, Array]) -> None:
    """(raw, mapping, metadata) <- the same arrays permuted by a = stable_argsort(raw), in place

    Shapes: every array (Z,). Source: semantics.md 11.3 round step 14 and the load-time re-sort.
    """
    a = np.argsort(raw, kind="stable")
    raw[:] = raw[a]
    mapping[:] = mapping[a]
    for values in metadata.values():
        values[:] = values[a]


def open_slot_count(raw: Array) -> Array:
    """open = (Z - 1) - #{s : raw[s] < MAX}

    Shapes: raw (Z,) sorted -> (1,) int64. Source: semantics.md 11.3 accessors.
    """
    used = np.searchsorted(raw, MAX, side="left")
    return np.array([raw.shape[0] - 1 - used], dtype=np.int64)


def concat_history(parts: List[Array]) -> Array:
    """h = the recorded id arrays of the current window, concatenated in recording order."""
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)
