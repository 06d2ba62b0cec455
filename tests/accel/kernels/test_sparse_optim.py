"""accel.kernels.sparse_optim: the grouping of lookups by row (CPU counting sort against torch's stable sort and
a NumPy loop), the per-element rules against refimpl.optim, row_step's rules and per-sample weight gradient."""

import numpy as np
import pytest
import torch

from accel.kernels import sparse_optim as so
from refimpl import optim


def lookups(ids, lengths, slots, B, goff0, bag_stride, value_stride, psw=None, mean=False):
    """A Lookups record over host arrays; slots = [(key, table)]."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    key = np.array([k for k, _ in slots], np.int64)
    first = offsets[key * B]
    return so.Lookups(
        indices=torch.tensor(ids, dtype=torch.int64), offsets=torch.tensor(offsets), batch_size=B, slot_key=key,
        slot_table=np.array([t for _, t in slots], np.int64), goff0=np.asarray(goff0, np.int64),
        bag_stride=np.asarray(bag_stride, np.int64), value_stride=np.asarray(value_stride, np.int64), first=first,
        count=offsets[(key + 1) * B] - first, per_sample_weights=None if psw is None else torch.tensor(psw),
        mean=mean,
    )


def grouping_reference(lk: so.Lookups, table_rows):
    """[(table, row, [(goff, coef, scale, occ) in (slot, value) order])], rows ascending: NumPy loops."""
    o = lk.offsets.numpy()
    ids = lk.indices.numpy()
    B = lk.batch_size
    entries = {}
    p = 0
    for s, (k, t) in enumerate(zip(lk.slot_key, lk.slot_table)):
        for b in range(B):
            lo, hi = o[k * B + b], o[k * B + b + 1]
            scale = 1.0 / (hi - lo) if lk.mean and hi > lo else 1.0
            for j in range(lo, hi):
                w = 1.0 if lk.per_sample_weights is None else float(lk.per_sample_weights[j])
                goff = lk.goff0[s] + b * lk.bag_stride[s] + (j - lk.first[s]) * lk.value_stride[s]
                entries.setdefault((t, ids[j]), []).append((goff, w * scale, scale, p))
                p += 1
    return [(t, r, entries[(t, r)]) for t, r in sorted(entries)]


def flatten(groups: so.RowGroups):
    out = []
    ptr = groups.uniq_ptr.numpy()
    for u in range(groups.uniq_row.shape[0]):
        rows = [(int(groups.goff[i]), float(groups.coef[i]), float(groups.scale[i]), int(groups.occ[i]))
                for i in range(ptr[u], ptr[u + 1])]
        out.append((int(groups.uniq_table[u]), int(groups.uniq_row[u]), rows))
    return out


CASES = {
    # Pooled layout: two tables, a key read by both, weights, MEAN scales, empty bags, repeated ids.
    "pooled": {"ids": [1, 1, 0, 3, 2, 2, 2, 0], "lengths": [2, 0, 1, 3, 0, 2], "slots": [(0, 0), (1, 1), (1, 0)],
               "B": 3, "goff0": [0, 2, 5], "bag_stride": [7, 7, 7], "value_stride": [0, 0, 0],
               "psw": [0.5, 2.0, 1.0, -1.0, 3.0, 0.25, 1.5, 2.0], "mean": True},
    # Sequence layout: gradient rows one after another.
    "sequence": {"ids": [4, 0, 4, 1], "lengths": [1, 2, 0, 1], "slots": [(0, 1), (1, 0)], "B": 2, "goff0": [0, 9],
                 "bag_stride": [0, 0], "value_stride": [3, 3]},
    "one table, every id the same": {"ids": [2] * 5, "lengths": [5], "slots": [(0, 0)], "B": 1, "goff0": [0],
                                     "bag_stride": [4], "value_stride": [0]},
    "no lookups": {"ids": [], "lengths": [0, 0], "slots": [(0, 0)], "B": 2, "goff0": [0], "bag_stride": [1],
                   "value_stride": [0]},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_counting_sort_and_torch_sort_match_the_numpy_grouping(name):
    lk = lookups(**CASES[name])
    table_rows = np.array([4, 5], np.int64)
    want = grouping_reference(lk, table_rows)
    for grouped in (so.group_rows(lk, table_rows, torch.float32), so.group_rows_torch(lk, table_rows, torch.float32)):
        got = flatten(grouped)
        assert [(t, r) for t, r, _ in got] == [(t, r) for t, r, _ in want]
        for (_, _, g_rows), (_, _, w_rows) in zip(got, want):
            assert [(a, d) for a, _, _, d in g_rows] == [(a, d) for a, _, _, d in w_rows]
            np.testing.assert_allclose([c for _, c, _, _ in g_rows], [c for _, c, _, _ in w_rows], rtol=1e-7)
            np.testing.assert_allclose([s for _, _, s, _ in g_rows], [s for _, _, s, _ in w_rows], rtol=1e-7)
        np.testing.assert_array_equal(grouped.occ_start, np.concatenate([[0], np.cumsum(lk.count)]))


def test_adagrad_element_and_rowwise_multiplier_match_refimpl():
    rng = np.random.default_rng(0)
    w, G, g = rng.standard_normal(50), rng.uniform(0, 2, 50), rng.standard_normal(50)
    got = np.array([so.adagrad_element(*args, 0.1, 1e-8) for args in zip(w, G, g)])
    want_w, want_G = optim.adagrad_update(w[None], G[None], g[None], 0.1, 1e-8)
    np.testing.assert_allclose(got[:, 0], want_w[0], rtol=1e-15)
    np.testing.assert_allclose(got[:, 1], want_G[0], rtol=1e-15)
    assert so.rowwise_multiplier(4.0, 0.5, 1e-8) == 0.5 / (2.0 + 1e-8)


def sequence_inputs(seed, rows=(5, 6), D=4):
    rng = np.random.default_rng(seed)
    lk = lookups(ids=[4, 0, 4, 1, 3, 3], lengths=[2, 1, 2, 1], slots=[(0, 1), (1, 0), (0, 0)], B=2,
                 goff0=[0, 3 * D, 6 * D], bag_stride=[0, 0, 0], value_stride=[D, D, D])
    tables = [torch.tensor(rng.standard_normal((r, D)), dtype=torch.float32) for r in rows]
    g = torch.tensor(rng.standard_normal(9 * D), dtype=torch.float32)
    return lk, tables, g


def summed_rows(lk, g, table, D):
    """(ids, per-lookup gradient rows) of one table from the sequence layout above."""
    o = lk.offsets.numpy()
    ids, rows = [], []
    for s, (k, t) in enumerate(zip(lk.slot_key, lk.slot_table)):
        if t != table:
            continue
        for j in range(o[k * lk.batch_size], o[(k + 1) * lk.batch_size]):
            goff = lk.goff0[s] + (j - lk.first[s]) * lk.value_stride[s]
            ids.append(int(lk.indices[j]))
            rows.append(g[goff:goff + D].double().numpy())
    return np.array(ids), np.array(rows).reshape(-1, D)


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad"])
def test_row_step_rules_against_refimpl(rule):
    lk, tables, g = sequence_inputs(1)
    before = [t.numpy().copy() for t in tables]
    state = [torch.tensor(optim.init_state(rule, *t.shape, np.float32)) + 0.5 for t in tables] if rule != "sgd" else []
    so.row_step(g, lk, tables, tables, state, so.RULES[rule], 0.1, 1e-8, False)
    for t in range(2):
        ids, rows = summed_rows(lk, g, t, 4)
        G0 = state[t].numpy() * 0 + 0.5 if rule != "sgd" else None
        want_w, want_G = optim.apply_sparse_step(before[t], G0, ids, rows, rule, 0.1, 1e-8)
        np.testing.assert_allclose(tables[t].numpy(), want_w, rtol=1e-6, atol=1e-6)
        if rule != "sgd":
            np.testing.assert_allclose(state[t].numpy(), want_G, rtol=1e-6)


def test_write_rule_gives_dense_gradients_and_leaves_other_rows_zero():
    lk, tables, g = sequence_inputs(2)
    grads = [torch.zeros_like(t) for t in tables]
    assert so.row_step(g, lk, tables, grads, [], so.WRITE, 0.0, 0.0, False) is None
    for t in range(2):
        want = np.zeros(tables[t].shape)
        ids, rows = summed_rows(lk, g, t, 4)
        np.add.at(want, ids, rows)
        np.testing.assert_allclose(grads[t].numpy(), want, rtol=1e-6, atol=1e-7)


def test_read_rule_gives_the_per_sample_weight_gradient_only():
    lk = lookups(ids=[1, 1, 0, 3], lengths=[2, 0, 1, 1], slots=[(0, 0), (1, 1), (0, 1)], B=2, goff0=[0, 2, 4],
                 bag_stride=[6, 6, 6], value_stride=[0, 0, 0], psw=np.float32([0.5, 2.0, 1.0, -1.0]), mean=True)
    rng = np.random.default_rng(3)
    tables = [torch.tensor(rng.standard_normal((4, 2)), dtype=torch.float32) for _ in range(2)]
    before = [t.clone() for t in tables]
    g = torch.tensor(rng.standard_normal(12), dtype=torch.float32)
    dw = so.row_step(g, lk, tables, tables, [], so.READ, 0.0, 0.0, True)
    # Value j of key k in bag b: sum over the slots reading k of (1 / L_b) <g[b, cols], W_t[i_j]>.
    G = g.double().numpy().reshape(2, 6)
    W = [t.double().numpy() for t in tables]
    want = [G[0, 0:2] @ W[0][1] / 2 + G[0, 4:6] @ W[1][1] / 2,
            G[0, 0:2] @ W[0][1] / 2 + G[0, 4:6] @ W[1][1] / 2,
            G[0, 2:4] @ W[1][0],
            G[1, 2:4] @ W[1][3]]
    np.testing.assert_allclose(dw.numpy(), want, rtol=1e-6)
    for t, b in zip(tables, before):
        np.testing.assert_array_equal(t.numpy(), b.numpy())


def test_check_state_errors():
    tables = [torch.zeros(3, 2)]
    assert so.check_state("sgd", [], tables, torch.float32) == []
    with pytest.raises(ValueError, match="state must be empty for sgd, got 1 tensors"):
        so.check_state("sgd", [torch.zeros(3)], tables, torch.float32)
    with pytest.raises(TypeError, match=r"state\[0\] must be torch.float32 \(the tables' accumulation dtype\)"):
        so.check_state("adagrad", [torch.zeros(3, 2, dtype=torch.float64)], tables, torch.float32)
    with pytest.raises(ValueError, match=r"state\[0\] must be contiguous on the tables' device cpu"):
        so.check_state("adagrad", [torch.zeros(2, 3).t()], tables, torch.float32)
    with pytest.raises(TypeError, match="state must be a list of tensors, got Tensor"):
        so.check_state("adagrad", torch.zeros(3, 2), tables, torch.float32)


def test_counting_sort_of_many_tables_in_parallel():
    # Every table's lookups are distinct rows, its first row among them and its last rows not: each table's
    # prefix pass runs up to the end of its segment while the next table's segment is written by another thread.
    rng = np.random.default_rng(4)
    T, B = 12, 4
    lengths = np.tile([2, 0, 1, 2], T)
    ids = np.concatenate([np.r_[0, rng.permutation(np.arange(1, 6))[:4]] for _ in range(T)])
    lk = lookups(ids=ids, lengths=lengths, slots=[(k, k) for k in range(T)], B=B, goff0=np.arange(T) * 2,
                 bag_stride=np.full(T, 2 * T), value_stride=np.zeros(T))
    table_rows = np.full(T, 9, np.int64)
    want = grouping_reference(lk, table_rows)
    for _ in range(20):
        got = flatten(so.group_rows(lk, table_rows, torch.float32))
        assert [(t, r, [x[0] for x in rows]) for t, r, rows in got] == \
            [(t, r, [x[0] for x in rows]) for t, r, rows in want]
