"""One managed-collision eviction round after the coalesce (semantics.md 11.3 steps 5-14):

    o = stable_argsort(c, descending);  fu, fc, fla = u[o], c[o], la[o]
    pos_k = searchsorted_left(raw[0 : Z - 1], fu_k);  matched_k = raw[pos_k] == fu_k
    counts[pos_k] += fc_k,  last[pos_k] = fla_k                          (matched k; LFU/DLFU, LRU/DLFU)
    n_ids, n_c, n_la = the unmatched fu, fc, fla;  counts[Z - 1] = MAX,  last[Z - 1] = cur
    s = scores of [table slots 0..Z-1 | candidates 0..m-1]     (LFU int64 counts; LRU, DLFU float32)
    r = stable_argsort(s, descending);  keep = r[:Z],  drop = r[Z:]
    ev = [i in drop if i < Z],  sel = [i - Z in keep if i >= Z]          (rank order, |ev| = |sel|)
    raw[ev_k] = n_ids[sel_k] (and the metadata);  E = map[ev];  re-sort the table by raw id (stable)

Scores: LFU s = [counts | n_c]; LRU s = -(cur - [last | n_la] + 1)^e; DistanceLFU s = [counts | n_c] /
(cur - [last | n_la] + 1)^e, computed by the same torch operations on the same tensors as TorchRec, so that
float32 ties fall exactly as there.

TorchRec sorts all Z + m scores (and the unique ids twice). Only the m lowest-ranked entries matter, so here:
the frequency order is a stable counting sort by count; the cut is the m-th lowest score (a quickselect) plus
a scan in which the ties at the cut are dropped from the highest concatenation index down (rank order breaks
score ties by index); only the k evicted slots and k admitted candidates are sorted (by torch's stable sort,
TorchRec's comparator); the re-sort is a merge of the k new entries into the Z - k remaining ones, which are
still in order. All O(Z + m) apart from the sorts of the small sets, and the same ids, slots and buffers as
the full sorts, bit for bit. A table that is not sorted before the round (a hand-edited state) is re-sorted
by a full stable sort instead, as TorchRec does.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from accel.kernels import _device
from accel.kernels.mc_remap import _lower_bound_cpu

MAX_ID = np.iinfo(np.int64).max
LFU, LRU, DISTANCE_LFU = 0, 1, 2

# Counting sort of the frequency order while the largest count is at most this many times the number of ids
# (plus a floor): the bucket array then costs no more than the ids themselves.
_COUNTING_SORT_SLACK = 4
_COUNTING_SORT_FLOOR = 1 << 16


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@_device.cpu_jit()
def _frequency_order(c):
    # Stable descending order of c (c >= 1): a counting sort when the counts are small, else a merge sort.
    n = c.shape[0]
    top = 0
    for i in range(n):
        if c[i] > top:
            top = c[i]
    if top > _COUNTING_SORT_SLACK * n + _COUNTING_SORT_FLOOR or n == 0:
        return np.argsort(-c, kind="mergesort")
    start = np.zeros(top + 2, np.int64)
    for i in range(n):
        start[top - c[i] + 1] += 1
    for b in range(1, top + 2):
        start[b] += start[b - 1]
    o = np.empty(n, np.int64)
    for i in range(n):
        b = top - c[i]
        o[start[b]] = i
        start[b] += 1
    return o


@_device.cpu_jit()
def _prepare_cpu(u, c, la, raw, counts, last, cur, has_counts, has_last):
    # Steps 5-9: frequency order, matching against raw[0 : Z - 1], metadata of the matched ids, candidates in
    # frequency order, sentinel pinned. Returns (n_ids, n_c, n_la), all of length m.
    o = _frequency_order(c)
    n = o.shape[0]
    Z = raw.shape[0]
    n_ids = np.empty(n, np.int64)
    n_c = np.empty(n, np.int64)
    n_la = np.empty(n, np.int64)
    m = 0
    for k in range(n):
        j = o[k]
        v = u[j]
        pos = _lower_bound_cpu(raw, Z - 1, v)
        if raw[pos] == v:
            if has_counts:
                counts[pos] += c[j]
            if has_last:
                last[pos] = la[j]
        else:
            n_ids[m] = v
            n_c[m] = c[j]
            n_la[m] = la[j] if has_last else 0
            m += 1
    if has_counts:
        counts[Z - 1] = MAX_ID
    if has_last:
        last[Z - 1] = cur
    return n_ids[:m], n_c[:m], n_la[:m]


@_device.cpu_helper()
def _below(x, v, v_nan):
    # x ranks strictly below the cut score v by score (torch.sort's descending order: NaN is the highest).
    if v_nan:
        return x == x
    return x < v


@_device.cpu_helper()
def _at(x, v, v_nan):
    # x is scored exactly the cut score v.
    if v_nan:
        return x != x
    return x == v


@_device.cpu_jit()
def _cut_cpu(s_table, s_new, big):
    # The m lowest-ranked of the Z + m entries. The m-th lowest score v is found by a quickselect over a copy
    # (NaN stood in for by `big`, the dtype's largest value, then told apart by counting); every entry scored
    # below v is dropped, and of the entries scored v the ones with the highest concatenation index (the
    # lowest rank among equal scores). Returns the dropped slots and the kept candidates, ascending.
    Z = s_table.shape[0]
    m = s_new.shape[0]
    N = Z + m
    w = np.empty(N, s_table.dtype)
    nans = 0
    for i in range(Z):
        x = s_table[i]
        if x != x:
            nans += 1
            x = big
        w[i] = x
    for j in range(m):
        x = s_new[j]
        if x != x:
            nans += 1
            x = big
        w[Z + j] = x
    v = np.partition(w, m - 1)[m - 1]
    # The cut lies among the NaN scores when fewer than m entries are numbers.
    v_nan = nans > 0 and N - nans < m
    below = 0
    for i in range(Z):
        if _below(s_table[i], v, v_nan):
            below += 1
    for j in range(m):
        if _below(s_new[j], v, v_nan):
            below += 1
    need = m - below
    cut = N
    i = N - 1
    while need > 0:
        x = s_table[i] if i < Z else s_new[i - Z]
        if _at(x, v, v_nan):
            cut = i
            need -= 1
        i -= 1
    ev = np.empty(min(Z, m), np.int64)
    k = 0
    for i in range(Z):
        x = s_table[i]
        if _below(x, v, v_nan) or (i >= cut and _at(x, v, v_nan)):
            ev[k] = i
            k += 1
    sel = np.empty(m, np.int64)
    q = 0
    for j in range(m):
        x = s_new[j]
        if not (_below(x, v, v_nan) or (Z + j >= cut and _at(x, v, v_nan))):
            sel[q] = j
            q += 1
    return ev[:k], sel[:q]


@_device.cpu_jit()
def _mergeable(raw, gone, new_raw):
    # The merge re-sort needs a sorted table and new ids that equal no remaining id (nor the sentinel value).
    Z = raw.shape[0]
    for i in range(1, Z):
        if raw[i] < raw[i - 1]:
            return False
    for x in new_raw:
        if x == MAX_ID:
            return False
        p = _lower_bound_cpu(raw, Z, x)
        while p < Z and raw[p] == x:
            if not gone[p]:
                return False
            p += 1
    return True


@_device.cpu_jit()
def _assign_resort_cpu(raw, mapping, counts, last, has_counts, has_last, ev, sel, n_ids, n_c, n_la):
    # Steps 12-14. Returns E = map[ev] (ev order).
    Z = raw.shape[0]
    k = ev.shape[0]
    evicted = np.empty(k, np.int64)
    new_raw = np.empty(k, np.int64)
    new_c = np.empty(k, np.int64)
    new_l = np.empty(k, np.int64)
    gone = np.zeros(Z, np.bool_)
    for q in range(k):
        evicted[q] = mapping[ev[q]]
        new_raw[q] = n_ids[sel[q]]
        new_c[q] = n_c[sel[q]]
        new_l[q] = n_la[sel[q]]
        gone[ev[q]] = True
    if not _mergeable(raw, gone, new_raw):
        # Full stable re-sort, TorchRec's own way.
        for q in range(k):
            raw[ev[q]] = new_raw[q]
            if has_counts:
                counts[ev[q]] = new_c[q]
            if has_last:
                last[ev[q]] = new_l[q]
        order = np.argsort(raw, kind="mergesort")
        raw[:] = raw[order]
        mapping[:] = mapping[order]
        if has_counts:
            counts[:] = counts[order]
        if has_last:
            last[:] = last[order]
        return evicted
    order = np.argsort(new_raw)
    # Compact the remaining entries to the front (order kept), then merge the new ones in from the back.
    w = 0
    for i in range(Z):
        if not gone[i]:
            raw[w] = raw[i]
            mapping[w] = mapping[i]
            if has_counts:
                counts[w] = counts[i]
            if has_last:
                last[w] = last[i]
            w += 1
    a = w - 1
    b = k - 1
    for out in range(Z - 1, -1, -1):
        if b < 0:
            break
        nb = order[b]
        if a >= 0 and raw[a] > new_raw[nb]:
            raw[out] = raw[a]
            mapping[out] = mapping[a]
            if has_counts:
                counts[out] = counts[a]
            if has_last:
                last[out] = last[a]
            a -= 1
        else:
            raw[out] = new_raw[nb]
            mapping[out] = evicted[nb]
            if has_counts:
                counts[out] = new_c[nb]
            if has_last:
                last[out] = new_l[nb]
            b -= 1
    return evicted


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


class Table(NamedTuple):
    """An MCH table as CPU int64 tensors of length Z (updated in place); counts/last None when unused."""

    raw: torch.Tensor
    mapping: torch.Tensor
    counts: Optional[torch.Tensor]
    last: Optional[torch.Tensor]


def scores(kind: int, decay: float, cur: int, table: Table, n_c: torch.Tensor, n_la: torch.Tensor) -> torch.Tensor:
    """s over [table slots | candidates] (module docstring), TorchRec's torch operations on TorchRec's tensors."""
    if kind == LFU:
        return torch.cat([table.counts, n_c])
    distance = torch.pow(cur - torch.cat([table.last, n_la]) + 1, decay)
    if kind == LRU:
        return torch.neg(distance)
    return torch.div(torch.cat([table.counts, n_c]), distance)


def _rank_order(s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    # idx (ascending) in descending-score order, ties by index: torch's stable sort, TorchRec's comparator.
    if idx.numel() < 2:
        return idx
    return idx[torch.sort(s[idx], descending=True, stable=True).indices]


def _big(s: torch.Tensor):
    return np.inf if s.dtype.is_floating_point else np.iinfo(np.int64).max


def evict_round(kind: int, decay: float, cur: int, table: Table, u: torch.Tensor, c: torch.Tensor,
                la: Optional[torch.Tensor]) -> torch.Tensor:
    """Steps 5-14 on the coalesced (and filtered) window u, c, la; the table is updated in place.

    Returns E, the output ids of the slots that changed owner, in eviction order. CPU tensors only.
    """
    Z = table.raw.shape[0]
    has_counts, has_last = table.counts is not None, table.last is not None
    if has_last and la is None:
        raise ValueError("evict_round: la expected the window's last-access iterations for this policy, got None")
    dummy = torch.empty(0, dtype=torch.int64)
    counts = table.counts if has_counts else dummy
    last = table.last if has_last else dummy
    la_np = la.numpy() if la is not None else np.zeros(u.shape[0], np.int64)
    n_ids, n_c, n_la = _prepare_cpu(u.numpy(), c.numpy(), la_np, table.raw.numpy(), counts.numpy(),
                                    last.numpy(), cur, has_counts, has_last)
    m = n_ids.shape[0]
    if m == 0:
        return dummy
    n_c_t, n_la_t = torch.from_numpy(n_c), torch.from_numpy(n_la)
    s = scores(kind, decay, cur, table, n_c_t, n_la_t)
    s_np = s.numpy()
    ev, sel = _cut_cpu(s_np[:Z], s_np[Z:], s_np.dtype.type(_big(s)))
    if ev.shape[0] != sel.shape[0]:
        raise AssertionError("evict_round: evicted slots and admitted ids differ in number")
    ev_t = _rank_order(s, torch.from_numpy(ev))
    sel_t = _rank_order(s, torch.from_numpy(sel) + Z) - Z
    evicted = _assign_resort_cpu(table.raw.numpy(), table.mapping.numpy(), counts.numpy(), last.numpy(),
                                 has_counts, has_last, ev_t.numpy(), sel_t.numpy(), n_ids, n_c, n_la)
    return torch.from_numpy(evicted)
