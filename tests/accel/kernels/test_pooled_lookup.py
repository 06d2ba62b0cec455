"""CPU kernels of accel.kernels.pooled_lookup against float64 NumPy loops: forward, backward, fused steps,
find_out_of_range, bindings and errors."""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from accel.kernels import pooled_lookup as pl
from refimpl import optim

EPS32 = float(np.finfo(np.float32).eps)


@dataclass
class Case:
    """Tables, a KJT (key-major lengths) and slots (key, table, column): the kernel's inputs as NumPy."""

    tables: List[np.ndarray]
    lengths: np.ndarray  # [F * B]
    ids: np.ndarray
    slots: List[Tuple[int, int, int]]
    B: int
    psw: Optional[np.ndarray] = None

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @property
    def total_dim(self) -> int:
        return sum(self.tables[t].shape[1] for _, t, _ in self.slots)

    def args(self, dtype=torch.float32, mode=pl.SUM, tables=None):
        tables = [torch.tensor(w, dtype=dtype) for w in self.tables] if tables is None else tables
        slot = np.array(self.slots, dtype=np.int64).reshape(-1, 3)
        psw = None if self.psw is None else torch.tensor(self.psw, dtype=torch.float32)
        return (tables, torch.tensor(self.ids, dtype=torch.int64), torch.tensor(self.offsets),
                torch.tensor(slot[:, 0]), torch.tensor(slot[:, 1]), torch.tensor(slot[:, 2]), self.total_dim,
                self.B, psw, mode)


def reference(case: Case, mean: bool, tables=None, absolute=False):
    """out[b, c_s:c_s+D] = sum_j w_j W[i_j] (divided by the bag length for MEAN), in float64 loops; with
    `absolute`, the same sum of |w_j W[i_j]| (the scale of the float32 rounding error)."""
    tables = case.tables if tables is None else tables
    out = np.zeros((case.B, case.total_dim))
    o = case.offsets
    for k, t, c in case.slots:
        W = np.asarray(tables[t], dtype=np.float64)
        W = np.abs(W) if absolute else W
        D = W.shape[1]
        for b in range(case.B):
            lo, hi = o[k * case.B + b], o[k * case.B + b + 1]
            for j in range(lo, hi):
                w = 1.0 if case.psw is None else float(case.psw[j])
                out[b, c:c + D] += (abs(w) if absolute else w) * W[case.ids[j]]
            if mean and hi > lo:
                out[b, c:c + D] /= hi - lo
    return out


def grad_reference(case: Case, g: np.ndarray, mean: bool, tables=None):
    """dW_t[r] = sum over lookups of r of w_j s_b g[b, c:c+D]; dw_j = sum over slots of s_b <g[b, c:c+D], W[i_j]>
    with s_b = 1/L_b for MEAN, else 1 (float64 loops)."""
    tables = case.tables if tables is None else tables
    dW = [np.zeros(np.shape(W)) for W in tables]
    dw = np.zeros(len(case.ids))
    o = case.offsets
    for k, t, c in case.slots:
        W = np.asarray(tables[t], dtype=np.float64)
        D = W.shape[1]
        for b in range(case.B):
            lo, hi = o[k * case.B + b], o[k * case.B + b + 1]
            s = 1.0 / (hi - lo) if mean and hi > lo else 1.0
            for j in range(lo, hi):
                w = 1.0 if case.psw is None else float(case.psw[j])
                dW[t][case.ids[j]] += w * s * g[b, c:c + D]
                dw[j] += s * g[b, c:c + D] @ W[case.ids[j]]
    return dW, dw


def check_forward(case: Case, mode: int, dtype=torch.float32):
    out = pl.pooled_lookup(*case.args(dtype=dtype, mode=mode))
    tables = [torch.tensor(w, dtype=dtype).double().numpy() for w in case.tables]
    want = reference(case, mode == pl.MEAN, tables)
    assert out.shape == (case.B, case.total_dim)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # float32 accumulation: each of at most L additions rounds by eps relative to the running sum.
    longest = int(case.lengths.max(initial=0))
    atol = (longest + 2) * EPS32 * reference(case, mode == pl.MEAN, tables, absolute=True) + 1e-30
    assert np.all(np.abs(out.double().numpy() - want) <= atol)
    return out


def rng_case(seed, B=4, dims=(3, 5), rows=(7, 11), max_len=6, weighted=False, slots=None, lengths=None):
    rng = np.random.default_rng(seed)
    tables = [rng.standard_normal((r, d)).astype(np.float32) for r, d in zip(rows, dims)]
    if slots is None:
        slots, col = [], 0
        for t, d in enumerate(dims):
            slots.append((t, t, col))
            col += d
    F = max(k for k, _, _ in slots) + 1
    if lengths is None:
        lengths = rng.integers(0, max_len + 1, F * B)
        lengths[::3] = 0  # empty bags in every case
    key_rows = [min(rows[t] for k2, t, _ in slots if k2 == k) for k in range(F)]
    ids = np.concatenate([rng.integers(0, key_rows[k], int(lengths[k * B:(k + 1) * B].sum())) for k in range(F)])
    psw = rng.uniform(0.5, 2.0, ids.size).astype(np.float32) if weighted else None
    return Case(tables, np.asarray(lengths, dtype=np.int64), ids.astype(np.int64), slots, B, psw)


# ---------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------


def test_hand_traced_values():
    # W = arange(10).view(5, 2); lengths [2, 0, 1], ids [0, 1, 4]: SUM [[2, 4], [0, 0], [8, 9]],
    # MEAN [[1, 2], [0, 0], [8, 9]], weighted SUM (0.5, 2, 3) [[4, 6.5], [0, 0], [24, 27]] (semantics 7.2).
    case = Case([np.arange(10.0).reshape(5, 2)], np.array([2, 0, 1]), np.array([0, 1, 4]), [(0, 0, 0)], 3)
    np.testing.assert_array_equal(pl.pooled_lookup(*case.args()).numpy(), [[2, 4], [0, 0], [8, 9]])
    np.testing.assert_array_equal(pl.pooled_lookup(*case.args(mode=pl.MEAN)).numpy(), [[1, 2], [0, 0], [8, 9]])
    case.psw = np.array([0.5, 2.0, 3.0], np.float32)
    np.testing.assert_array_equal(pl.pooled_lookup(*case.args()).numpy(), [[4, 6.5], [0, 0], [24, 27]])


@pytest.mark.parametrize("mode", [pl.SUM, pl.MEAN])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_cases_two_tables(mode, weighted, seed):
    check_forward(rng_case(seed, weighted=weighted), mode)


@pytest.mark.parametrize("length", [1, 31, 32, 33])
def test_bag_lengths_at_tile_boundaries(length):
    case = rng_case(2, B=3, lengths=np.array([length, 0, length, 1, length, 0]), weighted=True)
    check_forward(case, pl.SUM)
    check_forward(case, pl.MEAN)


def test_all_empty_feature_and_all_empty_batch():
    case = rng_case(3, lengths=np.array([0, 0, 0, 0, 2, 1, 0, 3]))
    out = check_forward(case, pl.MEAN)
    np.testing.assert_array_equal(out[:, :3].numpy(), 0)
    empty = rng_case(3, lengths=np.zeros(8, np.int64))
    np.testing.assert_array_equal(pl.pooled_lookup(*empty.args()).numpy(), np.zeros((4, 8)))


def test_batch_size_zero_gives_an_empty_output():
    case = Case([np.ones((3, 2), np.float32)], np.zeros(0, np.int64), np.zeros(0, np.int64), [(0, 0, 0)], 0)
    out = pl.pooled_lookup(*case.args())
    assert out.shape == (0, 2) and out.dtype == torch.float32


def test_duplicate_ids_and_the_max_id():
    W = np.random.default_rng(4).standard_normal((6, 4)).astype(np.float32)
    case = Case([W], np.array([3, 2]), np.array([5, 5, 5, 0, 5]), [(0, 0, 0)], 2)
    out = check_forward(case, pl.SUM)
    np.testing.assert_allclose(out[0].numpy(), 3 * W[5].astype(np.float64), rtol=1e-6)


def test_shared_feature_slot_order_and_columns_in_any_order():
    # Key 1 pooled from both tables, key 0 from table 1 only; columns not in slot order.
    case = rng_case(5, dims=(3, 4), rows=(9, 6), slots=[(1, 0, 4), (1, 1, 0), (0, 1, 7)], weighted=True)
    check_forward(case, pl.SUM)
    check_forward(case, pl.MEAN)


def test_many_tables_with_different_dims():
    dims = (1, 2, 3, 8, 16, 17)
    case = rng_case(6, B=5, dims=dims, rows=(4, 5, 6, 7, 8, 9), max_len=9)
    check_forward(case, pl.SUM)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tables_accumulate_in_float32(dtype):
    case = rng_case(7, weighted=True, max_len=33)
    out = check_forward(case, pl.SUM, dtype=dtype)
    assert out.dtype == torch.float32


def test_mixed_dtypes_in_one_call():
    case = rng_case(8, dims=(3, 5, 2), rows=(7, 11, 4))
    tables = [torch.tensor(case.tables[0]), torch.tensor(case.tables[1], dtype=torch.float16),
              torch.tensor(case.tables[2], dtype=torch.bfloat16)]
    out = pl.pooled_lookup(*case.args(tables=tables))
    want = reference(case, False, [t.double().numpy() for t in tables])
    np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-5, atol=1e-5)


def test_float64_tables_compute_in_float64():
    case = rng_case(9, weighted=True)
    case.psw = case.psw.astype(np.float64)
    out = pl.pooled_lookup(*case.args(dtype=torch.float64))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), reference(case, False), rtol=1e-13, atol=1e-13)


def test_results_are_bitwise_identical_run_to_run():
    case = rng_case(10, B=64, max_len=20, weighted=True)
    first, second = (pl.pooled_lookup(*case.args()).numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_non_contiguous_table():
    case = rng_case(11)
    tables = [torch.tensor(np.ascontiguousarray(w.T)).t() for w in case.tables]  # transposed views
    assert not tables[0].is_contiguous()
    out = pl.pooled_lookup(*case.args(tables=tables))
    np.testing.assert_allclose(out.numpy(), reference(case, False), rtol=1e-5, atol=1e-5)


@st.composite
def jagged_cases(draw):
    B = draw(st.integers(1, 5))
    n_tables = draw(st.integers(1, 3))
    dims = [draw(st.integers(1, 6)) for _ in range(n_tables)]
    rows = [draw(st.integers(1, 8)) for _ in range(n_tables)]
    F = draw(st.integers(1, 3))
    pairs = draw(st.lists(st.tuples(st.integers(0, F - 1), st.integers(0, n_tables - 1)), min_size=1, max_size=4))
    lengths = np.array(draw(st.lists(st.integers(0, 4), min_size=F * B, max_size=F * B)), dtype=np.int64)
    slots, col = [], 0
    for k, t in pairs:
        slots.append((k, t, col))
        col += dims[t]
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    key_rows = [min([rows[t] for k2, t in pairs if k2 == k], default=max(rows)) for k in range(F)]
    ids = np.concatenate([rng.integers(0, key_rows[k], int(lengths[k * B:(k + 1) * B].sum())) for k in range(F)])
    tables = [rng.standard_normal((r, d)).astype(np.float32) for r, d in zip(rows, dims)]
    psw = rng.uniform(-2, 2, ids.size).astype(np.float32) if draw(st.booleans()) else None
    return Case(tables, lengths, ids.astype(np.int64), slots, B, psw), draw(st.sampled_from([pl.SUM, pl.MEAN]))


@settings(max_examples=20, deadline=None)
@given(jagged_cases())
def test_random_jagged_inputs(drawn):
    case, mode = drawn
    check_forward(case, mode)


# ---------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [pl.SUM, pl.MEAN])
def test_gradcheck_float64(mode):
    case = rng_case(12, B=3, dims=(2, 3), rows=(4, 5), max_len=3, weighted=True,
                    slots=[(0, 0, 0), (1, 1, 2), (0, 1, 5)])
    tables = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in case.tables]
    psw = torch.tensor(case.psw, dtype=torch.float64, requires_grad=True)
    args = case.args(dtype=torch.float64, mode=mode)

    def f(a, b, w):
        return pl.pooled_lookup([a, b], *args[1:8], w, mode)

    assert torch.autograd.gradcheck(f, (*tables, psw))


@pytest.mark.parametrize("mode", [pl.SUM, pl.MEAN])
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_against_numpy_loops(mode, weighted):
    case = rng_case(13, B=5, weighted=weighted, slots=[(0, 0, 0), (1, 1, 3), (1, 0, 8)])
    args = case.args(mode=mode)
    tables = [t.requires_grad_(True) for t in args[0]]
    psw = args[8].requires_grad_(True) if weighted else None
    g = np.random.default_rng(14).standard_normal((case.B, case.total_dim)).astype(np.float32)
    out = pl.pooled_lookup(tables, *args[1:8], psw, mode)
    out.backward(torch.tensor(g))
    dW, dw = grad_reference(case, g.astype(np.float64), mode == pl.MEAN)
    for got, want in zip(tables, dW):
        assert got.grad.dtype == torch.float32 and got.grad.shape == got.shape
        np.testing.assert_allclose(got.grad.numpy(), want, rtol=1e-5, atol=1e-5)
    if weighted:
        np.testing.assert_allclose(psw.grad.numpy(), dw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backward_of_half_tables_is_rounded_once_to_the_table_dtype(dtype):
    case = rng_case(15, B=6, max_len=8, weighted=True)
    tables = [torch.tensor(w, dtype=dtype, requires_grad=True) for w in case.tables]
    args = case.args(tables=tables)
    psw = args[8].requires_grad_(True)
    g = np.random.default_rng(16).standard_normal((case.B, case.total_dim)).astype(np.float32)
    pl.pooled_lookup(tables, *args[1:8], psw, pl.SUM).backward(torch.tensor(g))
    dW, dw = grad_reference(case, g.astype(np.float64), False, [t.detach().double().numpy() for t in tables])
    for got, want in zip(tables, dW):
        assert got.grad.dtype == dtype
        # The float32 sum of a row's few terms, rounded once: the half's own rounding dominates.
        np.testing.assert_allclose(got.grad.double().numpy(), torch.tensor(want).to(dtype).double().numpy(),
                                   rtol=2 ** -7, atol=1e-6)
    np.testing.assert_allclose(psw.grad.numpy(), dw, rtol=1e-5, atol=1e-5)


def test_backward_of_a_broadcast_gradient_and_untouched_rows():
    case = rng_case(17)
    tables = [t.requires_grad_(True) for t in case.args()[0]]
    pl.pooled_lookup(tables, *case.args()[1:]).sum().backward()
    dW, _ = grad_reference(case, np.ones((case.B, case.total_dim)), False)
    for got, want in zip(tables, dW):
        np.testing.assert_array_equal(got.grad.numpy(), want.astype(np.float32))


def test_backward_with_batch_size_zero():
    case = Case([np.ones((3, 2), np.float32)], np.zeros(0, np.int64), np.zeros(0, np.int64), [(0, 0, 0)], 0)
    tables = [t.requires_grad_(True) for t in case.args()[0]]
    pl.pooled_lookup(tables, *case.args()[1:]).sum().backward()
    np.testing.assert_array_equal(tables[0].grad.numpy(), np.zeros((3, 2)))


def test_backward_is_bitwise_reproducible():
    case = rng_case(18, B=32, max_len=12, rows=(3, 4), weighted=True)  # few rows: many duplicates per row
    runs = []
    for _ in range(2):
        tables = [t.requires_grad_(True) for t in case.args()[0]]
        psw = case.args()[8].requires_grad_(True)
        pl.pooled_lookup(tables, *case.args()[1:8], psw, pl.MEAN).backward(torch.ones(case.B, case.total_dim))
        runs.append([t.grad.numpy().copy() for t in tables] + [psw.grad.numpy().copy()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_opcheck_forward_and_backward_ops():
    case = rng_case(19, weighted=True)
    args = case.args()
    torch.library.opcheck(torch.ops.recspec.pooled_lookup.default, args)
    g = torch.ones(case.B, case.total_dim)
    torch.library.opcheck(torch.ops.recspec.pooled_lookup_backward.default,
                          (g, args[0], *args[1:6], case.B, args[8], pl.MEAN, True, True))


# ---------------------------------------------------------------------------------------------------------
# Fused optimizer steps
# ---------------------------------------------------------------------------------------------------------


def lookup_grad_rows(case: Case, g: np.ndarray, mean: bool, table: int):
    """(ids, gradient row per lookup) of one table: what refimpl.optim.apply_sparse_step takes."""
    ids, rows = [], []
    o = case.offsets
    for k, t, c in case.slots:
        if t != table:
            continue
        D = case.tables[t].shape[1]
        for b in range(case.B):
            lo, hi = o[k * case.B + b], o[k * case.B + b + 1]
            for j in range(lo, hi):
                w = 1.0 if case.psw is None else float(case.psw[j])
                ids.append(case.ids[j])
                rows.append(w * g[b, c:c + D] / ((hi - lo) if mean else 1))
    D = case.tables[table].shape[1]
    return np.array(ids, np.int64), np.array(rows, np.float64).reshape(-1, D)


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("mode", [pl.SUM, pl.MEAN])
def test_fused_steps_follow_refimpl_optim(rule, mode):
    case = rng_case(20, B=6, rows=(4, 6), weighted=True, slots=[(0, 0, 0), (1, 1, 3), (1, 0, 8)])
    tables = [torch.tensor(w) for w in case.tables]
    state = [torch.tensor(optim.init_state(rule, *w.shape, np.float32)) for w in case.tables] if rule != "sgd" else []
    want_tables = [w.copy() for w in case.tables]
    want_state = [s.numpy().copy() for s in state] or [None] * len(tables)
    args = case.args(tables=tables, mode=mode)
    psw = args[8].requires_grad_(True)
    rng = np.random.default_rng(21)
    for _ in range(3):  # a sequence of steps: the state carries over
        g = rng.standard_normal((case.B, case.total_dim)).astype(np.float32)
        out = pl.pooled_lookup_fused(tables, *args[1:8], psw, mode, rule, 0.05, 1e-8, state)
        psw.grad = None
        out.backward(torch.tensor(g))
        _, dw = grad_reference(case, g.astype(np.float64), mode == pl.MEAN, want_tables)
        np.testing.assert_allclose(psw.grad.numpy(), dw, rtol=1e-5, atol=1e-5)
        for t in range(len(tables)):
            ids, rows = lookup_grad_rows(case, g.astype(np.float64), mode == pl.MEAN, t)
            want_tables[t], want_state[t] = optim.apply_sparse_step(want_tables[t], want_state[t], ids, rows, rule,
                                                                    0.05, 1e-8)
            np.testing.assert_allclose(tables[t].numpy(), want_tables[t], rtol=2e-6, atol=2e-6)
            if rule != "sgd":
                np.testing.assert_allclose(state[t].numpy(), want_state[t], rtol=2e-6, atol=1e-7)
    assert all(t.grad is None for t in tables)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_step_on_half_tables_rounds_the_updated_rows(dtype):
    case = rng_case(22, B=4, rows=(5, 6))
    tables = [torch.tensor(w, dtype=dtype) for w in case.tables]
    before = [t.double().numpy() for t in tables]
    g = np.random.default_rng(23).standard_normal((case.B, case.total_dim)).astype(np.float32)
    out = pl.pooled_lookup_fused(*case.args(tables=tables)[:10], "sgd", 0.1, 1e-8, [])
    out.backward(torch.tensor(g))
    for t in range(2):
        ids, rows = lookup_grad_rows(case, g.astype(np.float64), False, t)
        want, _ = optim.apply_sparse_step(before[t].astype(np.float32), None, ids, rows, "sgd", 0.1, 1e-8)
        np.testing.assert_array_equal(tables[t].double().numpy(), torch.tensor(want).to(dtype).double().numpy())


def test_fused_forward_without_grad_mode_does_not_step():
    case = rng_case(24)
    tables = [torch.tensor(w) for w in case.tables]
    with torch.no_grad():
        out = pl.pooled_lookup_fused(*case.args(tables=tables)[:10], "sgd", 1.0, 1e-8, [])
    assert not out.requires_grad
    np.testing.assert_array_equal(tables[0].numpy(), case.tables[0])


def test_opcheck_fused_ops():
    case = rng_case(25, weighted=True)
    args = case.args()
    state = [torch.zeros(w.shape[0]) for w in case.tables]
    trigger = torch.empty(0, requires_grad=True)
    torch.library.opcheck(torch.ops.recspec.pooled_lookup_fused.default,
                          (*args, "rowwise_adagrad", 0.1, 1e-8, state, trigger))
    g = torch.ones(case.B, case.total_dim)
    torch.library.opcheck(torch.ops.recspec.pooled_lookup_fused_step.default,
                          (g, [t.clone() for t in args[0]], *args[1:6], case.B, args[8], pl.SUM, "rowwise_adagrad",
                           0.1, 1e-8, [s.clone() for s in state], True))


def test_fused_errors():
    case = rng_case(26)
    args = case.args()[:10]
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', .*\], got 'adam'"):
        pl.pooled_lookup_fused(*args, "adam", 0.1, 1e-8, [])
    with pytest.raises(ValueError, match=r"state\[0\] must have shape \(7,\) for rowwise_adagrad, got \(7, 3\)"):
        pl.pooled_lookup_fused(*args, "rowwise_adagrad", 0.1, 1e-8, [torch.zeros(7, 3), torch.zeros(11)])
    with pytest.raises(ValueError, match="state must hold one tensor per table \\(2\\) for adagrad, got 0"):
        pl.pooled_lookup_fused(*args, "adagrad", 0.1, 1e-8, [])
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        pl.pooled_lookup_fused(*args, "sgd", float("nan"), 1e-8, [])
    tables = [torch.tensor(np.ascontiguousarray(w.T)).t() for w in case.tables]
    with pytest.raises(ValueError, match=r"weights\[0\] must be contiguous for a fused update"):
        pl.pooled_lookup_fused(*case.args(tables=tables)[:10], "sgd", 0.1, 1e-8, [])


# ---------------------------------------------------------------------------------------------------------
# find_out_of_range
# ---------------------------------------------------------------------------------------------------------


def test_find_out_of_range_positions():
    offsets = torch.tensor([0, 2, 2, 3, 5])  # keys 0 and 1, B = 2
    ids = torch.tensor([0, 4, 1, 2, 3])
    key, rows = torch.tensor([0, 1]), torch.tensor([5, 4])
    assert pl.find_out_of_range(ids, offsets, key, rows, 2) == -1
    assert pl.find_out_of_range(ids, offsets, key, torch.tensor([4, 4]), 2) == 1  # id 4 == rows
    assert pl.find_out_of_range(torch.tensor([0, 1, 1, -1, 3]), offsets, key, rows, 2) == 3  # negative id
    # A key read by two tables is checked against the smaller; a key no slot reads is not checked.
    assert pl.find_out_of_range(ids, offsets, torch.tensor([0, 0]), torch.tensor([9, 2]), 2) == 1
    assert pl.find_out_of_range(torch.tensor([0, 1, 7, 8, 9]), offsets, torch.tensor([0]), torch.tensor([2]), 2) == -1
    assert pl.find_out_of_range(ids[:0], offsets[:1], key, rows, 0) == -1


def test_find_out_of_range_reports_the_first_of_several():
    rng = np.random.default_rng(27)
    ids = rng.integers(0, 10, 200)
    ids[[57, 120, 199]] = [10, -3, 11]
    offsets = torch.tensor(np.r_[0, np.cumsum(np.full(40, 5))])
    assert pl.find_out_of_range(torch.tensor(ids), offsets, torch.arange(4), torch.full((4,), 10), 10) == 57


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def test_argument_errors():
    case = rng_case(28, weighted=True)
    tables, ids, offsets, key, table, column, total, B, psw, mode = case.args()
    with pytest.raises(TypeError, match="weights must be a list of 2-D tables, got Tensor"):
        pl.pooled_lookup(tables[0], ids, offsets, key, table, column, total, B, psw, mode)
    with pytest.raises(TypeError, match=r"weights\[1\] must be float32, float16, bfloat16 or float64, got torch.int64"):
        pl.pooled_lookup([tables[0], tables[1].long()], ids, offsets, key, table, column, total, B, psw, mode)
    with pytest.raises(ValueError, match=r"weights\[0\] must be a 2-D table \(rows, D\), got shape \(7,\)"):
        pl.pooled_lookup([tables[0][:, 0], tables[1]], ids, offsets, key, table, column, total, B, psw, mode)
    with pytest.raises(TypeError, match="float64 tables cannot be mixed with other dtypes"):
        pl.pooled_lookup([tables[0].double(), tables[1]], ids, offsets, key, table, column, total, B, psw, mode)
    with pytest.raises(TypeError, match="indices must be int64, got torch.int32"):
        pl.pooled_lookup(tables, ids.int(), offsets, key, table, column, total, B, psw, mode)
    with pytest.raises(ValueError, match="mode must be 0 \\(SUM\\) or 1 \\(MEAN\\), got 2"):
        pl.pooled_lookup(tables, ids, offsets, key, table, column, total, B, psw, 2)
    with pytest.raises(ValueError, match=r"per_sample_weights must have the shape of indices"):
        pl.pooled_lookup(tables, ids, offsets, key, table, column, total, B, psw[1:], mode)
    with pytest.raises(ValueError, match=r"slot_column must have one entry per slot \(2\), got 1"):
        pl.pooled_lookup(tables, ids, offsets, key, table, column[:1], total, B, psw, mode)


def test_content_errors():
    case = rng_case(29)
    tables, ids, offsets, key, table, column, total, B, psw, mode = case.args()
    with pytest.raises(ValueError, match=r"offsets must have F \* batch_size \+ 1 entries \(batch_size = 3\)"):
        pl.pooled_lookup(tables, ids, offsets, key, table, column, total, 3, psw, mode)
    bad = offsets.clone()
    bad[2] = bad[3] + 1
    with pytest.raises(ValueError, match="offsets must start at 0, never decrease and end at the number of ids"):
        pl.pooled_lookup(tables, ids, bad, key, table, column, total, B, psw, mode)
    with pytest.raises(ValueError, match="end at the number of ids"):
        pl.pooled_lookup(tables, ids[1:], offsets, key, table, column, total, B, psw, mode)
    with pytest.raises(ValueError, match=r"slot_key\[1\] must be in \[0, 2\) \(the KJT's key count\), got 2"):
        pl.pooled_lookup(tables, ids, offsets, torch.tensor([0, 2]), table, column, total, B, psw, mode)
    with pytest.raises(ValueError, match=r"slot_table\[0\] must be in \[0, 2\) \(the number of tables\), got 5"):
        pl.pooled_lookup(tables, ids, offsets, key, torch.tensor([5, 1]), column, total, B, psw, mode)
    with pytest.raises(ValueError, match=r"slot_column\[1\] must continue the slots' columns at 3"):
        pl.pooled_lookup(tables, ids, offsets, key, table, torch.tensor([0, 2]), total, B, psw, mode)
    with pytest.raises(ValueError, match="total_dim must equal the slots' summed dims 8, got 9"):
        pl.pooled_lookup(tables, ids, offsets, key, table, column, 9, B, psw, mode)


# ---------------------------------------------------------------------------------------------------------
# TorchRec (optional)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling, weighted", [("SUM", False), ("SUM", True), ("MEAN", False)])
def test_matches_torchrec_embedding_bag_collection(pooling, weighted):
    pytest.importorskip("torchrec", reason="TorchRec is an optional comparison; CI runs without it")
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    configs = [EmbeddingBagConfig(num_embeddings=7, embedding_dim=3, name="t0", feature_names=["f0", "f1"],
                                  pooling=PoolingType[pooling]),
               EmbeddingBagConfig(num_embeddings=11, embedding_dim=5, name="t1", feature_names=["f1"],
                                  pooling=PoolingType[pooling])]
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=configs, is_weighted=weighted)
    # KJT keys in the other order than the tables name them; f1 is pooled by both tables.
    case = rng_case(30, B=4, dims=(3, 5), rows=(7, 11), weighted=weighted, slots=[(1, 0, 0), (0, 0, 3), (0, 1, 6)])
    kjt = KeyedJaggedTensor(keys=["f1", "f0"], values=torch.tensor(case.ids), lengths=torch.tensor(case.lengths),
                            weights=None if case.psw is None else torch.tensor(case.psw))
    want = ebc(kjt)
    assert want.keys() == ["f0", "f1@t0", "f1@t1"]
    tables = [ebc.embedding_bags["t0"].weight.detach(), ebc.embedding_bags["t1"].weight.detach()]
    mode = pl.MEAN if pooling == "MEAN" else pl.SUM
    got = pl.pooled_lookup(*case.args(tables=tables, mode=mode))
    np.testing.assert_allclose(got.numpy(), want.values().detach().numpy(), rtol=1e-6, atol=1e-6)
