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
(cur - [last | n_la] + 1)^e, computed by the same torch operations on the same tensors as TorchRec (for the
float exponent 1.0, where torch's pow is a copy, by the same float32 conversions and correctly rounded
division without the concatenation), so that float32 ties fall exactly as there. Each score is then read as
a uint64 key that orders and ties exactly as torch.sort does (NaN highest, -0.0 equal to 0.0).

TorchRec sorts all Z + m scores (and the unique ids twice). Only the m lowest-ranked entries matter, so here:
the frequency order is a stable counting sort by count; the matching gallops through the table in the unique
ids' ascending order; the cut is the m-th lowest key (one counting pass when it is a small LFU count, else an
MSD radix select over 16-bit digits) plus a scan in which the ties at the cut are dropped from the highest
concatenation index down (rank order breaks score ties by index); only the k evicted slots and the k admitted
candidates are sorted; the re-sort is a merge of the k new entries into the Z - k remaining ones, which are
still in order. All O(Z + m) apart from the sorts of the small sets, and the same ids, slots and buffers as
the full sorts, bit for bit. A table that is not sorted before the round (a hand-edited state) is re-sorted
by a full stable sort instead, as TorchRec does. A module's TableMemo spares two passes a round: that the table
is sorted, and (LFU) the histogram of its counts, from which the cut is found without reading the table; both
are trusted only while torch's version counter of the tensor is unchanged. Measured on the quiet 2-core
machine (Z = 10^6, Zipf(1.1) batches of 65,536 ids, full table, a round every step): a whole LFU training
step, round and remap, 7.6 ms; TorchRec's 54 ms.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numba
import numpy as np
import torch
from numba import njit

from accel.kernels import _device
from accel.kernels.mc_remap import gallop, radix_sort

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
def _frequency_scatter(ids, c, la):
    # (ids, c, la) in stable descending order of c (c >= 1). A counting sort when the counts are small: each
    # entry is written at its count's next place, so the writes go to a few sequential streams (one per
    # distinct count) instead of gathering at random. Else a merge sort and a gather.
    n = c.shape[0]
    top = 0
    for i in range(n):
        if c[i] > top:
            top = c[i]
    if top > _COUNTING_SORT_SLACK * n + _COUNTING_SORT_FLOOR or n == 0:
        o = np.argsort(-c, kind="mergesort")
        return ids[o], c[o], la[o]
    start = np.zeros(top + 2, np.int64)
    for i in range(n):
        start[top - c[i] + 1] += 1
    for b in range(1, top + 2):
        start[b] += start[b - 1]
    out_ids = np.empty(n, np.int64)
    out_c = np.empty(n, np.int64)
    out_la = np.empty(n, np.int64)
    for i in range(n):
        b = top - c[i]
        at = start[b]
        out_ids[at] = ids[i]
        out_c[at] = c[i]
        out_la[at] = la[i]
        start[b] = at + 1
    return out_ids, out_c, out_la


@_device.cpu_jit()
def _prepare_cpu(u, c, la, raw, counts, last, cur, has_counts, has_last, hist, use_hist):
    # Steps 5-9: matching against raw[0 : Z - 1], metadata of the matched ids, the candidates in frequency
    # order, the sentinel pinned. Returns (n_ids, n_c, n_la), all of length m. Everything runs in u's order
    # (ascending, as the coalesce leaves it: each search gallops on from the last); the metadata updates do
    # not depend on the order, and a stable sort by count of the unmatched ids in u's order is exactly the
    # unmatched part of the frequency order.
    n = u.shape[0]
    Z = raw.shape[0]
    cand_ids = np.empty(n, np.int64)
    cand_c = np.empty(n, np.int64)
    cand_la = np.empty(n, np.int64)
    m = 0
    pos = 0
    for j in range(n):
        v = u[j]
        start = pos if j > 0 and v >= u[j - 1] else 0
        pos = gallop(raw, Z - 1, start, v)
        if raw[pos] == v:
            if has_counts:
                if use_hist:
                    hist[_bucket(counts[pos])] -= 1
                    hist[_bucket(counts[pos] + c[j])] += 1
                counts[pos] += c[j]
            if has_last:
                last[pos] = la[j]
        else:
            cand_ids[m] = v
            cand_c[m] = c[j]
            cand_la[m] = la[j] if has_last else 0
            m += 1
    if has_counts:
        if use_hist:
            hist[_bucket(counts[Z - 1])] -= 1
            hist[_bucket(MAX_ID)] += 1
        counts[Z - 1] = MAX_ID
    if has_last:
        last[Z - 1] = cur
    return _frequency_scatter(cand_ids[:m], cand_c[:m], cand_la[:m])


# Scores as uint64 keys that sort like torch.sort sorts the scores (NaN above +inf, -0.0 equal to 0.0): int64
# with the sign bit flipped; floats by their bits, negatives reversed. Equal keys are exactly torch's ties.
_SIGN64 = np.uint64(1 << 63)
_SIGN32 = np.uint64(1 << 31)
_LOW32 = np.uint64(0xFFFFFFFF)
_NAN32_KEY = np.uint64(1 << 32)
_NAN64_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
# Radix select levels (digit shifts and widths, most significant first): 16-bit digits for 64-bit keys
# (65,536 counters, 512 KiB); float32 keys span 33 bits (NaN's key is 2^32): 17 bits, then 16.
_LEVELS = {
    0: (np.array([48, 32, 16, 0], np.int64), np.array([16, 16, 16, 16], np.int64)),
    1: (np.array([16, 0], np.int64), np.array([17, 16], np.int64)),
    2: (np.array([48, 32, 16, 0], np.int64), np.array([16, 16, 16, 16], np.int64)),
}
# LFU counts below this are counted one bucket each in the one-pass cut.
_SMALL_COUNTS = 1 << 16


# Key kinds: the bits of int64, float32 or float64 scores.
# _KEYS: the "scores" are keys already (float scores are turned into a key array once, so the passes of the
# cut compare integers).
_INT_KEY, _F32_KEY, _F64_KEY, _KEYS = 0, 1, 2, 3


@_device.cpu_helper()
def _key(x, bits, kind):
    # x a score, bits its bit pattern (the same memory viewed as unsigned).
    b = np.uint64(bits)
    if kind == _KEYS:
        return b
    if kind == _INT_KEY:
        return b ^ _SIGN64
    if x != x:
        return _NAN32_KEY if kind == _F32_KEY else _NAN64_KEY
    if x == 0:
        return _SIGN32 if kind == _F32_KEY else _SIGN64
    if kind == _F32_KEY:
        return (~b & _LOW32) if b & _SIGN32 else (b | _SIGN32)
    return ~b if b & _SIGN64 else (b | _SIGN64)


# No fastmath here: "arcp" would turn count / distance into count * (1 / distance), which is not torch's
# correctly rounded division, and the float32 ties must fall exactly as TorchRec's. The disk cache is off under
# NUMBA_BOUNDSCHECK=1 for the reason _device.cpu_jit gives.
@njit(cache=not numba.config.BOUNDSCHECK, error_model="numpy")
def _unit_decay_scores(distance_lfu, cur, counts, last, out):
    # e = 1: (cur - last + 1)^1 is the float32 distance itself (torch's pow copies for exponent 1).
    for i in range(last.shape[0]):
        d = np.float32(cur - last[i] + 1)
        out[i] = np.float32(counts[i]) / d if distance_lfu else -d


@_device.cpu_jit()
def _small_int_cut(st, bt, sn, bn, rank):
    # LFU's usual case in one pass: counts in [0, 65535) are counted one bucket each (larger ones, the
    # sentinel's included, in one overflow bucket, negative ones apart). Returns (v, #keys below v), or
    # (0, -1) when the rank-th smallest key is not a small count.
    hist = np.zeros(_SMALL_COUNTS + 1, np.int64)
    negative = 0
    for i in range(st.shape[0]):
        x = st[i]
        if x < 0:
            negative += 1
        else:
            hist[min(x, _SMALL_COUNTS)] += 1
    for j in range(sn.shape[0]):
        x = sn[j]
        if x < 0:
            negative += 1
        else:
            hist[min(x, _SMALL_COUNTS)] += 1
    if rank < negative:
        return np.uint64(0), -1
    below = negative
    for b in range(_SMALL_COUNTS):
        if rank < below + hist[b]:
            return _key(np.int64(b), np.uint64(b), _INT_KEY), below
        below += hist[b]
    return np.uint64(0), -1


@_device.cpu_helper()
def _bucket(x):
    # Histogram bucket of an LFU count: the count itself below _SMALL_COUNTS, then one overflow bucket (the
    # sentinel's MAX among them), and one bucket for negative counts.
    if x < 0:
        return _SMALL_COUNTS + 1
    return min(x, _SMALL_COUNTS)


@_device.cpu_jit()
def count_histogram(counts):
    """hist[b] = #{slots whose count falls in bucket b}: counts 0..65535 one bucket each, then larger counts,
    then negative ones (shape (65538,))."""
    hist = np.zeros(_SMALL_COUNTS + 2, np.int64)
    for x in counts:
        hist[_bucket(x)] += 1
    return hist


@_device.cpu_jit()
def _hist_cut(hist, sn, rank):
    # The one-pass LFU cut from the table's histogram (kept up to date by the rounds) and the candidates':
    # (v, #keys below v, #table keys below v), or (0, -1, -1) when the rank-th smallest key is not a small count.
    cand = np.zeros(_SMALL_COUNTS + 2, np.int64)
    for x in sn:
        cand[_bucket(x)] += 1
    below = hist[_SMALL_COUNTS + 1] + cand[_SMALL_COUNTS + 1]
    below_table = hist[_SMALL_COUNTS + 1]
    if rank < below:
        return np.uint64(0), -1, -1
    for b in range(_SMALL_COUNTS):
        total = hist[b] + cand[b]
        if rank < below + total:
            return _key(np.int64(b), np.uint64(b), _INT_KEY), below, below_table
        below += total
        below_table += hist[b]
    return np.uint64(0), -1, -1


@_device.cpu_jit()
def _key_array(s, bits, kind):
    # Every score's key, once.
    out = np.empty(s.shape[0], np.uint64)
    for i in range(s.shape[0]):
        out[i] = _key(s[i], bits[i], kind)
    return out


@_device.cpu_jit()
def _kth_key(st, bt, sn, bn, kind, rank, shifts, widths):
    # The rank-th smallest key (0-based) and the number of keys below it: MSD radix select, each level
    # counting the next digit (bits [shift, shift + width)) of the keys that share the digits chosen so far.
    hist = np.empty(1 << widths.max(), np.int64)
    prefix = np.uint64(0)
    below = 0
    for level in range(shifts.shape[0]):
        shift = np.uint64(shifts[level])
        width = np.uint64(widths[level])
        top = shift + width
        mask = (np.uint64(1) << width) - np.uint64(1)
        hist[:] = 0
        for i in range(st.shape[0]):
            x = _key(st[i], bt[i], kind)
            if top >= np.uint64(64) or (x >> top) == prefix:
                hist[(x >> shift) & mask] += 1
        for j in range(sn.shape[0]):
            x = _key(sn[j], bn[j], kind)
            if top >= np.uint64(64) or (x >> top) == prefix:
                hist[(x >> shift) & mask] += 1
        b = 0
        while rank >= hist[b]:
            rank -= hist[b]
            below += hist[b]
            b += 1
        prefix = (prefix << width) | np.uint64(b)
    return prefix, below


@_device.cpu_jit()
def _descending(keys):
    # Stable order of keys descending: a radix sort of (max - key), carrying positions (O(k) for the up to
    # min(Z, m) evicted slots and admitted candidates of a round).
    n = keys.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    top = keys.max()
    flipped = np.empty(n, np.uint64)
    order = np.empty(n, np.int64)
    for i in range(n):
        flipped[i] = top - keys[i]
        order[i] = i
    return radix_sort(flipped, order, True)[1]


@_device.cpu_jit()
def _tie_cuts(st, bt, sn, bn, kind, v, need):
    # From the end of the concatenation, the `need` entries keyed v that are dropped: candidates j >= cut_new,
    # then table slots i >= cut_table (their positions, descending, in ties).
    Z = st.shape[0]
    m = sn.shape[0]
    cut_new = m
    cut_table = Z
    j = m - 1
    while need > 0 and j >= 0:
        if _key(sn[j], bn[j], kind) == v:
            cut_new = j
            need -= 1
        j -= 1
    ties = np.empty(max(need, 0), np.int64)
    if need > 0:
        cut_new = 0
        found = 0
        i = Z - 1
        while found < need:
            if _key(st[i], bt[i], kind) == v:
                cut_table = i
                ties[found] = i
                found += 1
            i -= 1
    return cut_new, cut_table, ties


@_device.cpu_jit()
def _dropped_slots(st, bt, kind, v, cut_table, capacity):
    # Table slots keyed below v, or keyed v at or after cut_table, ascending, with their keys.
    ev = np.empty(capacity, np.int64)
    ev_key = np.empty(capacity, np.uint64)
    k = 0
    for i in range(st.shape[0]):
        x = _key(st[i], bt[i], kind)
        if x < v or (x == v and i >= cut_table):
            ev[k] = i
            ev_key[k] = x
            k += 1
    return ev[:k], ev_key[:k]


@_device.cpu_jit()
def _kept_candidates(sn, bn, kind, v, cut_new):
    # Candidates keyed above v, or keyed v before cut_new, ascending, with their keys.
    m = sn.shape[0]
    sel = np.empty(m, np.int64)
    sel_key = np.empty(m, np.uint64)
    q = 0
    for j in range(m):
        x = _key(sn[j], bn[j], kind)
        if not (x < v or (x == v and j >= cut_new)):
            sel[q] = j
            sel_key[q] = x
            q += 1
    return sel[:q], sel_key[:q]


@_device.cpu_jit()
def _cut_cpu(st, bt, sn, bn, kind, v, below, table_below):
    # The m lowest-ranked of the Z + m entries (rank: key descending, then concatenation index ascending):
    # every entry keyed below v, the m-th smallest key (`below` of them), and of those keyed v the ones with
    # the highest indices (candidates before table slots). Returns ev (dropped slots) and sel (kept
    # candidates), each in rank order. table_below = 0 says no table key is below v (known from the
    # histogram): the dropped slots are then exactly the ties found by the scan from the table's end, and
    # the full pass over the table is skipped. (The passes are separate functions: fused into one, LLVM
    # compiled them about ten times slower.)
    m = sn.shape[0]
    cut_new, cut_table, ties = _tie_cuts(st, bt, sn, bn, kind, v, m - below)
    if table_below == 0:
        ev = ties[::-1].copy()
        ev_key = np.full(ev.shape[0], v, np.uint64)
    else:
        ev, ev_key = _dropped_slots(st, bt, kind, v, cut_table, min(st.shape[0], m))
    sel, sel_key = _kept_candidates(sn, bn, kind, v, cut_new)
    # Rank order: a stable sort by key descending of the entries gathered in index order.
    return ev[_descending(ev_key)], sel[_descending(sel_key)]


@_device.cpu_jit()
def _union_cpu(a, e):
    # sorted unique(a | e): a merge when a is already sorted and unique (every union after the first).
    for i in range(1, a.shape[0]):
        if a[i] <= a[i - 1]:
            a = np.unique(a)
            break
    e = np.unique(e)
    out = np.empty(a.shape[0] + e.shape[0], np.int64)
    i = 0
    j = 0
    n = 0
    while i < a.shape[0] or j < e.shape[0]:
        if j >= e.shape[0] or (i < a.shape[0] and a[i] < e[j]):
            x = a[i]
            i += 1
        elif i >= a.shape[0] or e[j] < a[i]:
            x = e[j]
            j += 1
        else:
            x = a[i]
            i += 1
            j += 1
        out[n] = x
        n += 1
    return out[:n]


@_device.cpu_jit()
def _mergeable(raw, gone, new_raw, known_sorted):
    # The merge re-sort needs a sorted table and new ids equal to no remaining id. In a sorted table the
    # matching search found every id of raw[0 : Z - 1], so an unmatched id can only equal raw[Z - 1].
    Z = raw.shape[0]
    if not known_sorted:
        for i in range(1, Z):
            if raw[i] < raw[i - 1]:
                return False
    for x in new_raw:
        if x == MAX_ID or (x == raw[Z - 1] and not gone[Z - 1]):
            return False
    return True


@_device.cpu_helper()
def _shift_segment(a, start, end, shift):
    # a[start + shift : end + shift] = a[start : end], in the direction that reads each entry before it is
    # overwritten.
    if shift < 0:
        for t in range(start, end):
            a[t + shift] = a[t]
    else:
        for t in range(end - 1, start - 1, -1):
            a[t + shift] = a[t]


@_device.cpu_jit()
def _insert_points(raw, new_raw):
    # ins[q]: the original position before which new entry q goes (the table still holds the gone slots, in
    # order, so the search over all of it counts them where they are); new_raw ascending, so each search
    # gallops on from the last.
    ins = np.empty(new_raw.shape[0], np.int64)
    pos = 0
    for q in range(new_raw.shape[0]):
        pos = gallop(raw, raw.shape[0], pos, new_raw[q])
        ins[q] = pos
    return ins


@_device.cpu_jit()
def _segments(Z, gone, ins):
    # The runs of remaining entries between events, with their shift: +1 for each insertion at or before
    # them, -1 for each gone slot before them.
    k = gone.shape[0]
    seg_start = np.empty(2 * k + 1, np.int64)
    seg_end = np.empty(2 * k + 1, np.int64)
    seg_shift = np.empty(2 * k + 1, np.int64)
    ns = 0
    shift = 0
    gi = 0
    qi = 0
    i = 0
    while i < Z:
        while qi < k and ins[qi] <= i:
            shift += 1
            qi += 1
        if gi < k and gone[gi] == i:
            shift -= 1
            gi += 1
            i += 1
            continue
        end = Z
        if gi < k:
            end = min(end, gone[gi])
        if qi < k:
            end = min(end, ins[qi])
        seg_start[ns] = i
        seg_end[ns] = end
        seg_shift[ns] = shift
        ns += 1
        i = end
    return seg_start[:ns], seg_end[:ns], seg_shift[:ns]


@_device.cpu_jit()
def _move_segments(a, seg_start, seg_end, seg_shift):
    # Left-moving segments left to right, then right-moving ones right to left: the final positions
    # increase along the table, so each move only overwrites entries already moved or gone.
    ns = seg_start.shape[0]
    for g in range(ns):
        if seg_shift[g] < 0:
            _shift_segment(a, seg_start[g], seg_end[g], seg_shift[g])
    for g in range(ns - 1, -1, -1):
        if seg_shift[g] > 0:
            _shift_segment(a, seg_start[g], seg_end[g], seg_shift[g])


@_device.cpu_jit()
def _place_new(a, gone, ins, values):
    # New entry q lands after the remaining entries below it and the q new ones before it.
    gi = 0
    for q in range(ins.shape[0]):
        while gi < gone.shape[0] and gone[gi] < ins[q]:
            gi += 1
        a[ins[q] - gi + q] = values[q]


@_device.cpu_jit()
def _merge_in_place(raw, mapping, counts, last, has_counts, has_last, gone, new_raw, new_map, new_c, new_l):
    # The table without the slots `gone` (ascending), merged with the k new entries (new_raw ascending, no
    # id equal to a remaining one), in place. Remaining entry i lands at i + shift(i), shift(i) = #(new ids
    # inserted at or before i) - #(gone slots before i): constant between events, so the table moves as at
    # most 2k + 1 segments, and segments that do not shift are not touched. (Each step is its own function:
    # fused, LLVM compiled the loops several times slower.)
    ins = _insert_points(raw, new_raw)
    seg_start, seg_end, seg_shift = _segments(raw.shape[0], gone, ins)
    _move_segments(raw, seg_start, seg_end, seg_shift)
    _move_segments(mapping, seg_start, seg_end, seg_shift)
    _place_new(raw, gone, ins, new_raw)
    _place_new(mapping, gone, ins, new_map)
    if has_counts:
        _move_segments(counts, seg_start, seg_end, seg_shift)
        _place_new(counts, gone, ins, new_c)
    if has_last:
        _move_segments(last, seg_start, seg_end, seg_shift)
        _place_new(last, gone, ins, new_l)


@_device.cpu_jit()
def _ascending_slots(gone, k):
    # The k flagged slots in ascending order: one pass over the flags instead of a sort of up to Z slots.
    out = np.empty(k, np.int64)
    n = 0
    for i in range(gone.shape[0]):
        if gone[i]:
            out[n] = i
            n += 1
    return out


@_device.cpu_jit()
def _assign_resort_cpu(raw, mapping, counts, last, has_counts, has_last, ev, sel, n_ids, n_c, n_la, hist,
                       use_hist, known_sorted):
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
        if use_hist:
            hist[_bucket(counts[ev[q]])] -= 1
            hist[_bucket(new_c[q])] += 1
    if not _mergeable(raw, gone, new_raw, known_sorted):
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
    # New ids are distinct: any sort gives the same order; a radix sort of their offsets is O(k).
    lo = new_raw.min() if k > 0 else 0
    offsets = np.empty(k, np.uint64)
    order = np.empty(k, np.int64)
    for q in range(k):
        offsets[q] = np.uint64(new_raw[q]) - np.uint64(lo)
        order[q] = q
    order = radix_sort(offsets, order, True)[1]
    _merge_in_place(raw, mapping, counts, last, has_counts, has_last, _ascending_slots(gone, k), new_raw[order],
                    evicted[order], new_c[order], new_l[order])
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


def _bits(s: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    # Scores, their bits, and the key kind for _key.
    if s.dtype == np.float32:
        return s, s.view(np.uint32), _F32_KEY
    if s.dtype == np.float64:
        return s, s.view(np.uint64), _F64_KEY
    s = s.astype(np.int64, copy=False)
    return s, s.view(np.uint64), _INT_KEY


def _unit_decay(kind: int, cur: int, counts: Optional[np.ndarray], last: np.ndarray) -> np.ndarray:
    s = np.empty(last.shape[0], np.float32)
    _unit_decay_scores(kind == DISTANCE_LFU, cur, last if counts is None else counts, last, s)
    return s


def round_scores(kind: int, decay: float, cur: int, table: Table, n_c: np.ndarray, n_la: np.ndarray):
    """(table scores, candidate scores): `scores`, computed without the concatenation where that is exact
    (LFU, and the float exponent 1.0, for which torch's pow is a copy of the float32 distance)."""
    if kind == LFU:
        return table.counts.numpy(), n_c
    if type(decay) is float and decay == 1.0:
        counts = table.counts.numpy() if kind == DISTANCE_LFU else None
        return (_unit_decay(kind, cur, counts, table.last.numpy()),
                _unit_decay(kind, cur, n_c if kind == DISTANCE_LFU else None, n_la))
    s = scores(kind, decay, cur, table, torch.from_numpy(n_c), torch.from_numpy(n_la)).numpy()
    Z = table.raw.shape[0]
    return s[:Z], s[Z:]


def cut(s_table: np.ndarray, s_new: np.ndarray, hist: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(ev, sel) of step 11 for scores [s_table | s_new] of one dtype (len(s_new) >= 1), in rank order.

    hist: for int64 scores, count_histogram(s_table), when the caller keeps one up to date."""
    st, bt, kind = _bits(s_table)
    sn, bn, _ = _bits(s_new)
    m = sn.shape[0]
    below, table_below = -1, -1
    if kind == _INT_KEY and hist is not None:
        v, below, table_below = _hist_cut(hist, sn, m - 1)
    if kind == _INT_KEY and below < 0:
        v, below = _small_int_cut(st, bt, sn, bn, m - 1)
    levels = _LEVELS[kind]
    if kind != _INT_KEY:
        # Float keys take a few branches each: computed once, then every pass compares integers.
        st = bt = _key_array(st, bt, kind)
        sn = bn = _key_array(sn, bn, kind)
        kind = _KEYS
    if below < 0:
        v, below = _kth_key(st, bt, sn, bn, kind, m - 1, *levels)
    return _cut_cpu(st, bt, sn, bn, kind, np.uint64(v), below, table_below)


def _stamp(t: torch.Tensor) -> Tuple[int, int]:
    # torch bumps _version on every in-place write made through torch; the kernels' writes through NumPy
    # views leave it unchanged, so an unchanged stamp means nobody but the rounds touched the tensor.
    return t._version, t.data_ptr()


class TableMemo:
    """What a module remembers about its table between rounds: that raw is sorted (the rounds leave it so),
    and the histogram of the LFU counts (the rounds update it). Each is trusted only while the tensor's
    stamp (torch's version counter and data pointer) is the one recorded after the last round: a load, a
    re-sort or any edit through torch changes it, and the next round checks or rebuilds."""

    def __init__(self) -> None:
        self.sorted_stamp: Optional[Tuple[int, int]] = None
        self.hist: Optional[np.ndarray] = None
        self.hist_stamp: Optional[Tuple[int, int]] = None


def union(pending: torch.Tensor, evicted: torch.Tensor) -> torch.Tensor:
    """sorted unique(pending | evicted), as torch.unique(torch.cat(...)) gives it (CPU int64)."""
    return torch.from_numpy(_union_cpu(pending.numpy(), evicted.numpy()))


def evict_round(kind: int, decay: float, cur: int, table: Table, u: torch.Tensor, c: torch.Tensor,
                la: Optional[torch.Tensor], memo: Optional[TableMemo] = None) -> torch.Tensor:
    """Steps 5-14 on the coalesced (and filtered) window u, c, la; the table is updated in place.

    Returns E, the output ids of the slots that changed owner, in eviction order. CPU tensors only.
    memo: the module's TableMemo, which saves the sortedness pass and (LFU) the counting pass of a round.
    """
    has_counts, has_last = table.counts is not None, table.last is not None
    if has_last and la is None:
        raise ValueError("evict_round: la expected the window's last-access iterations for this policy, got None")
    dummy = torch.empty(0, dtype=torch.int64)
    counts = table.counts if has_counts else dummy
    last = table.last if has_last else dummy
    la_np = la.numpy() if la is not None else np.zeros(u.shape[0], np.int64)
    known_sorted = memo is not None and memo.sorted_stamp == _stamp(table.raw)
    hist = None
    if memo is not None and kind == LFU:
        if memo.hist is None or memo.hist_stamp != _stamp(table.counts):
            memo.hist = count_histogram(table.counts.numpy())
        hist = memo.hist
    hist_arg = hist if hist is not None else np.zeros(0, np.int64)
    n_ids, n_c, n_la = _prepare_cpu(u.numpy(), c.numpy(), la_np, table.raw.numpy(), counts.numpy(),
                                    last.numpy(), cur, has_counts, has_last, hist_arg, hist is not None)
    evicted = None
    if n_ids.shape[0] > 0:
        ev, sel = cut(*round_scores(kind, decay, cur, table, n_c, n_la), hist)
        if ev.shape[0] != sel.shape[0]:
            raise AssertionError("evict_round: evicted slots and admitted ids differ in number")
        evicted = torch.from_numpy(_assign_resort_cpu(
            table.raw.numpy(), table.mapping.numpy(), counts.numpy(), last.numpy(), has_counts, has_last, ev,
            sel, n_ids, n_c, n_la, hist_arg, hist is not None, known_sorted))
    if memo is not None:
        if evicted is not None:  # the assignment leaves the table sorted, merged or fully re-sorted
            memo.sorted_stamp = _stamp(table.raw)
        if hist is not None:
            memo.hist_stamp = _stamp(table.counts)
    return dummy if evicted is None else evicted
