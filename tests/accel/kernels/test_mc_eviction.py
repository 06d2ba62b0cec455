"""accel.kernels.mc_eviction (CPU): one eviction round against the straightforward algorithm of semantics.md
11.3 steps 5-14 (full stable sorts, written here with NumPy and torch's argsort, TorchRec's comparator), the
cut alone on scores with ties, NaN, infinities and signed zeros, and the union of pending evictions."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from accel.kernels import mc_eviction as ev_k

MAX = np.iinfo(np.int64).max
ROOT = Path(__file__).resolve().parents[3]
KINDS = {"LFU": ev_k.LFU, "LRU": ev_k.LRU, "DLFU": ev_k.DISTANCE_LFU}


def reference_scores(kind, decay, cur, counts, last, n_c, n_la):
    """LFU [counts | n_c]; LRU -(cur - [last | n_la] + 1)^e; DLFU [counts | n_c] / (cur - [last | n_la] + 1)^e."""
    if kind == "LFU":
        return torch.from_numpy(np.concatenate([counts, n_c]))
    d = torch.pow(cur - torch.from_numpy(np.concatenate([last, n_la])) + 1, decay)
    return -d if kind == "LRU" else torch.from_numpy(np.concatenate([counts, n_c])) / d


def reference_cut(s, Z):
    """r = stable_argsort(s, descending); ev = [i in r[Z:] if i < Z]; sel = [i - Z in r[:Z] if i >= Z]."""
    r = torch.argsort(s, descending=True, stable=True).numpy()
    keep, drop = r[:Z], r[Z:]
    return drop[drop < Z], keep[keep >= Z] - Z


def reference_round(kind, decay, cur, raw, mapping, counts, last, u, c, la):
    raw, mapping, counts, last = raw.copy(), mapping.copy(), counts.copy(), last.copy()
    Z = raw.shape[0]
    o = np.argsort(-c, kind="stable")
    fu, fc, fla = u[o], c[o], la[o]
    pos = np.searchsorted(raw[:-1], fu)
    matched = raw[pos] == fu
    counts[pos[matched]] += fc[matched]
    last[pos[matched]] = fla[matched]
    n_ids, n_c, n_la = fu[~matched], fc[~matched], fla[~matched]
    counts[Z - 1] = MAX
    last[Z - 1] = cur
    ev, sel = reference_cut(reference_scores(kind, decay, cur, counts, last, n_c, n_la), Z)
    raw[ev], counts[ev], last[ev] = n_ids[sel], n_c[sel], n_la[sel]
    evicted = mapping[ev]
    perm = np.argsort(raw, kind="stable")
    return evicted, raw[perm], mapping[perm], counts[perm], last[perm]


def random_case(seed, Z, filled, n_unique):
    rng = np.random.default_rng(seed)
    raw = np.full(Z, MAX, np.int64)
    raw[:filled] = np.sort(rng.choice(np.arange(-30, 60), filled, replace=False))
    mapping = rng.permutation(Z).astype(np.int64) + 3
    cur = 9
    counts = np.where(raw < MAX, rng.integers(1, 4, Z), 0).astype(np.int64)
    last = np.where(raw < MAX, rng.integers(1, cur, Z), 0).astype(np.int64)
    u = np.sort(rng.choice(np.arange(-30, 60), n_unique, replace=False)).astype(np.int64)
    c = rng.integers(1, 4, n_unique).astype(np.int64)
    la = rng.integers(cur - 2, cur + 1, n_unique).astype(np.int64)
    return cur, raw, mapping, counts, last, u, c, la


CASES = [(kind, decay, seed, Z, filled, n)
         for kind, decay in [("LFU", 1.0), ("LRU", 1.0), ("LRU", 0.5), ("DLFU", 1.0), ("DLFU", 2.0), ("DLFU", 1)]
         for seed, (Z, filled, n) in enumerate([(2, 0, 3), (5, 4, 6), (16, 5, 30), (40, 39, 25), (40, 39, 0),
                                                (64, 20, 80)])]


@pytest.mark.parametrize("case", CASES)
def test_round_matches_the_straightforward_algorithm(case):
    kind, decay, seed, Z, filled, n = case
    cur, raw, mapping, counts, last, u, c, la = random_case(seed, Z, filled, n)
    want = reference_round(kind, decay, cur, raw, mapping, counts, last, u, c, la)
    t = [torch.from_numpy(a.copy()) for a in (raw, mapping, counts, last)]
    table = ev_k.Table(t[0], t[1], t[2] if kind != "LRU" else None, t[3] if kind != "LFU" else None)
    evicted = ev_k.evict_round(KINDS[kind], decay, cur, table, torch.from_numpy(u), torch.from_numpy(c),
                               None if kind == "LFU" else torch.from_numpy(la))
    np.testing.assert_array_equal(evicted.numpy(), want[0])
    np.testing.assert_array_equal(t[0].numpy(), want[1])
    np.testing.assert_array_equal(t[1].numpy(), want[2])
    if table.counts is not None:
        np.testing.assert_array_equal(t[2].numpy(), want[3])
    if table.last is not None:
        np.testing.assert_array_equal(t[3].numpy(), want[4])


@pytest.mark.parametrize("raw", [
    [20, 10, 30, MAX, MAX],  # a hand-edited table, not sorted: full stable re-sort
    [10, 20, 30, 40, 45],  # the sentinel slot holds a real id equal to a candidate
])
def test_round_on_tables_the_merge_cannot_take(raw):
    raw = np.array(raw, np.int64)
    mapping = np.arange(5, dtype=np.int64)
    counts = np.array([1, 1, 1, 1, 0], np.int64)
    last = np.zeros(5, np.int64)
    u, c, la = np.array([45, 50], np.int64), np.array([3, 2], np.int64), np.array([4, 4], np.int64)
    want = reference_round("LFU", 1.0, 4, raw, mapping, counts, last, u, c, la)
    t = [torch.from_numpy(a.copy()) for a in (raw, mapping, counts)]
    evicted = ev_k.evict_round(ev_k.LFU, 1.0, 4, ev_k.Table(t[0], t[1], t[2], None), torch.from_numpy(u),
                               torch.from_numpy(c), None)
    np.testing.assert_array_equal(evicted.numpy(), want[0])
    for got, ref in zip(t, want[1:4]):
        np.testing.assert_array_equal(got.numpy(), ref)


F32_SCORES = [
    ([1.0, 0.0, -0.0, 2.0], [0.0, -0.0, 3.0]),
    ([np.nan, 1.0, np.inf, -np.inf], [np.inf, np.nan, -np.inf, 1.0]),
    ([5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0, 5.0]),
    ([-1.0, -2.0, -3.0, -1.0], [-1.0]),
]


@pytest.mark.parametrize("table,new", F32_SCORES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cut_orders_like_torch_sort(table, new, dtype):
    st, sn = np.array(table, dtype), np.array(new, dtype)
    want = reference_cut(torch.from_numpy(np.concatenate([st, sn])), st.shape[0])
    got = ev_k.cut(st, sn)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("st,sn", [
    ([MAX, -(2**63), 0, 3, 3], [3, -1, 2**62, -(2**63)]),  # negative and huge scores: the radix select
    ([MAX, 1, 1, 2, 0, 1], [1, 1, 3]),  # small counts: the one-pass cut
    ([MAX, 70000, 70000, 65536, 65535], [70000, 65535]),  # the cut among counts past the small ones
])
def test_cut_on_int64_scores(st, sn):
    st, sn = np.array(st, np.int64), np.array(sn, np.int64)
    want = reference_cut(torch.from_numpy(np.concatenate([st, sn])), st.shape[0])
    got = ev_k.cut(st, sn)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("pending,evicted", [([3, 1, 2], [2, 7]), ([1, 5], []), ([], [4, 4, 0]), ([2], [1])])
def test_union_is_torch_unique_of_the_concatenation(pending, evicted):
    p, e = torch.tensor(pending, dtype=torch.int64), torch.tensor(evicted, dtype=torch.int64)
    assert ev_k.union(p, e).tolist() == torch.unique(torch.cat([p, e])).tolist()


def test_round_needs_last_access_for_recency_policies():
    t = ev_k.Table(torch.full((3,), MAX), torch.arange(3), None, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="la expected the window's last-access iterations"):
        ev_k.evict_round(ev_k.LRU, 1.0, 1, t, torch.tensor([1]), torch.tensor([1]), None)


@pytest.mark.slow
def test_eviction_under_boundscheck():
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "not boundscheck"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.mark.parametrize("kind", ["LFU", "DLFU"])
def test_rounds_with_a_memo_match_the_reference(kind):
    # The memo (sortedness, LFU count histogram) carries over rounds; an edit through torch invalidates it.
    cur, raw, mapping, counts, last, _, _, _ = random_case(7, 48, 30, 0)
    ref = [raw, mapping, counts, last]
    t = [torch.from_numpy(a.copy()) for a in ref]
    table = ev_k.Table(t[0], t[1], t[2], t[3] if kind != "LFU" else None)
    memo = ev_k.TableMemo()
    rng = np.random.default_rng(8)
    for r in range(8):
        cur += 1
        u = np.unique(rng.integers(-30, 90, 20)).astype(np.int64)
        c = rng.integers(1, 5, u.shape[0]).astype(np.int64)
        la = np.full(u.shape[0], cur, np.int64)
        if r == 4:
            t[2][3] += 7  # through torch: the histogram must be rebuilt
            ref[2] = ref[2].copy()
            ref[2][3] += 7
        want = reference_round(kind, 1.0, cur, *ref, u, c, la)
        got = ev_k.evict_round(KINDS[kind], 1.0, cur, table, torch.from_numpy(u), torch.from_numpy(c),
                               None if kind == "LFU" else torch.from_numpy(la), memo)
        np.testing.assert_array_equal(got.numpy(), want[0])
        ref = list(want[1:])
        for g, w in zip(t, ref[:3]):
            np.testing.assert_array_equal(g.numpy(), w)
    if kind == "LFU":
        np.testing.assert_array_equal(memo.hist, ev_k.count_histogram(t[2].numpy()))
