"""refimpl.optim: FBGEMM's row-wise sparse optimizer rules, duplicate-id summing and a step sequence."""

import numpy as np
import pytest

from refimpl.optim import (
    adagrad_update,
    apply_sparse_step,
    init_state,
    rowwise_adagrad_update,
    sgd_update,
    sparse_step,
    sum_duplicate_rows,
)


def test_sgd_update_vector():
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    g = np.array([[0.5, -1.0], [2.0, 0.0]])
    np.testing.assert_array_equal(sgd_update(w, g, 0.1), [[0.95, 2.1], [2.8, 4.0]])


def test_adagrad_update_vector():
    w = np.array([[1.0, 1.0]])
    G = np.array([[5.0, 0.0]])
    g = np.array([[2.0, -3.0]])
    w_new, G_new = adagrad_update(w, G, g, lr=0.5, eps=0.1)
    np.testing.assert_array_equal(G_new, [[9.0, 9.0]])
    np.testing.assert_allclose(w_new, [[1 - 0.5 * 2 / 3.1, 1 + 0.5 * 3 / 3.1]], rtol=1e-15)


def test_rowwise_adagrad_update_vector():
    w = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    G = np.array([1.0, 0.0])
    g = np.array([[1.0, 2.0, 3.0, -4.0], [0.0, 0.0, 0.0, 0.0]])
    w_new, G_new = rowwise_adagrad_update(w, G, g, lr=0.1, eps=0.01)
    # mean of squares of row 0: (1 + 4 + 9 + 16) / 4 = 7.5
    np.testing.assert_allclose(G_new, [8.5, 0.0], rtol=1e-15)
    np.testing.assert_allclose(w_new[0], 1 - 0.1 * g[0] / (np.sqrt(8.5) + 0.01), rtol=1e-15)
    np.testing.assert_array_equal(w_new[1], 0.0)


def test_sum_duplicate_rows_sorts_and_sums():
    ids = np.array([3, 1, 3, 3])
    rows = np.array([[1.0], [2.0], [4.0], [8.0]])
    unique, summed = sum_duplicate_rows(ids, rows)
    np.testing.assert_array_equal(unique, [1, 3])
    np.testing.assert_array_equal(summed, [[2.0], [13.0]])


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad"])
def test_duplicates_are_summed_before_one_update(rule):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((4, 3))
    state = init_state(rule, 4, 3)
    g = rng.standard_normal((2, 3))
    twice, _ = apply_sparse_step(table, state, np.array([2, 2]), g, rule, lr=0.3, eps=1e-3)
    once, _ = apply_sparse_step(table, state, np.array([2]), g.sum(axis=0, keepdims=True), rule, lr=0.3, eps=1e-3)
    np.testing.assert_allclose(twice, once, rtol=1e-14)
    if rule != "sgd":
        # Two separate updates would differ from one summed update for the Adagrad rules.
        step1, s1 = apply_sparse_step(table, state, np.array([2]), g[:1], rule, lr=0.3, eps=1e-3)
        step2, _ = apply_sparse_step(step1, s1, np.array([2]), g[1:], rule, lr=0.3, eps=1e-3)
        assert not np.allclose(step2, once)


def test_untouched_rows_and_inputs_stay():
    table = np.arange(8.0).reshape(4, 2)
    state = init_state("adagrad", 4, 2)
    new_table, new_state = apply_sparse_step(table, state, np.array([1]), np.ones((1, 2)), "adagrad", lr=1.0, eps=0.0)
    np.testing.assert_array_equal(new_table[[0, 2, 3]], table[[0, 2, 3]])
    np.testing.assert_array_equal(new_table[1], table[1] - 1.0)
    np.testing.assert_array_equal(table, np.arange(8.0).reshape(4, 2))  # a pure function
    np.testing.assert_array_equal(state, 0.0)
    np.testing.assert_array_equal(new_state, [[0, 0], [1, 1], [0, 0], [0, 0]])


def test_empty_step_is_identity():
    table = np.ones((3, 2))
    new_table, new_state = apply_sparse_step(table, None, np.empty(0, np.int64), np.empty((0, 2)), "sgd")
    np.testing.assert_array_equal(new_table, table)
    assert new_state is None


def test_init_state_shapes():
    assert init_state("sgd", 5, 3) is None
    assert init_state("adagrad", 5, 3).shape == (5, 3)
    assert init_state("rowwise_adagrad", 5, 3).shape == (5,)


def test_sixteen_bit_tables_update_in_float32():
    table = np.full((2, 2), 1.0, dtype=np.float16)
    new_table, state = apply_sparse_step(
        table, init_state("rowwise_adagrad", 2, 2, np.float32), np.array([0]), np.full((1, 2), 1e-3), "rowwise_adagrad",
        lr=0.5, eps=1e-8,
    )
    assert new_table.dtype == np.float16 and state.dtype == np.float32
    np.testing.assert_allclose(state[0], 1e-6, rtol=1e-6)
    np.testing.assert_array_equal(new_table[0], np.float16(1.0 - 0.5))


def test_errors_name_the_argument():
    table = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"rule expected one of \['sgd', 'adagrad', 'rowwise_adagrad'\], got 'adam'"):
        apply_sparse_step(table, None, np.array([0]), np.zeros((1, 2)), "adam")
    with pytest.raises(IndexError, match=r"ids expected values in \[0, 3\), got id 3 at position 1"):
        apply_sparse_step(table, None, np.array([0, 3]), np.zeros((2, 2)), "sgd")
    with pytest.raises(ValueError, match=r"grad_rows expected shape \(1, 2\) \(one row per id\), got \(1, 3\)"):
        apply_sparse_step(table, None, np.array([0]), np.zeros((1, 3)), "sgd")
    with pytest.raises(ValueError, match=r"state for rule 'rowwise_adagrad' expected shape \(3,\), got \(3, 2\)"):
        apply_sparse_step(table, np.zeros((3, 2)), np.array([0]), np.zeros((1, 2)), "rowwise_adagrad")
    with pytest.raises(TypeError, match="ids expected an integer dtype, got float64"):
        apply_sparse_step(table, None, np.array([0.0]), np.zeros((1, 2)), "sgd")
    with pytest.raises(ValueError, match="lr expected a finite number, got nan"):
        apply_sparse_step(table, None, np.array([0]), np.zeros((1, 2)), "sgd", lr=float("nan"))


class _Tables:
    """A minimal state holder with the Module state interface sparse_step uses."""

    def __init__(self, tables):
        self.tables = dict(tables)

    def state_dict(self):
        return dict(self.tables)

    def load_state_dict(self, state, strict=True):
        self.tables.update({k: np.asarray(v) for k, v in state.items()})


def test_sparse_step_updates_the_module_and_keeps_state():
    module = _Tables({"embedding_bags.t.weight": np.zeros((3, 2)), "embedding_bags.u.weight": np.ones((2, 2))})
    grads = {"embedding_bags.t.weight": (np.array([0, 0]), np.array([[1.0, 2.0], [3.0, 4.0]]))}
    states = sparse_step(module, grads, "adagrad", lr=1.0, eps=0.0)
    np.testing.assert_array_equal(states["embedding_bags.t.weight"][0], [16.0, 36.0])
    np.testing.assert_allclose(module.tables["embedding_bags.t.weight"][0], [-1.0, -1.0], rtol=1e-15)
    np.testing.assert_array_equal(module.tables["embedding_bags.u.weight"], 1.0)
    with pytest.raises(KeyError, match="row_grads key expected one of"):
        sparse_step(module, {"embedding_bags.x.weight": grads["embedding_bags.t.weight"]}, "sgd")


OPTIM_NAMES = {"sgd": "EXACT_SGD", "adagrad": "EXACT_ADAGRAD", "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD"}


@pytest.mark.parametrize("rule", sorted(OPTIM_NAMES))
def test_against_fbgemm_table_batched_op(rule):
    """A few training steps of FBGEMM's CPU op, SUM pooling, duplicate ids and an empty bag,
    against apply_sparse_step on the per-id gradient rows."""
    torch = pytest.importorskip("torch")
    tbe = pytest.importorskip(
        "fbgemm_gpu.split_table_batched_embeddings_ops_training", reason="fbgemm_gpu is an optional extra"
    )
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    rows, D, lr, eps = 6, 4, 0.05, 1e-3
    torch.manual_seed(0)
    op = tbe.SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, D, tbe.EmbeddingLocation.HOST, tbe.ComputeDevice.CPU)],
        optimizer=getattr(EmbOptimType, OPTIM_NAMES[rule]),
        learning_rate=lr,
        eps=eps,
    )
    table = op.split_embedding_weights()[0].detach().numpy().astype(np.float64)
    state = init_state(rule, rows, D)
    rng = np.random.default_rng(1)
    for step in range(3):
        ids = np.array([1, 1, 4, 0, 1, 5][: 4 + step])
        offsets = np.array([0, 3, 3, len(ids)])  # bag 1 is empty
        grad_out = rng.standard_normal((3, D))
        out = op(torch.from_numpy(ids), torch.from_numpy(offsets))
        out.backward(torch.from_numpy(grad_out).float())
        bag_of = np.repeat(np.arange(3), np.diff(offsets))
        table, state = apply_sparse_step(table, state, ids, grad_out[bag_of], rule, lr=lr, eps=eps)
        fbgemm_table = op.split_embedding_weights()[0].detach().numpy()
        # FBGEMM updates in float32: a few float32 ulps of the row values.
        np.testing.assert_allclose(fbgemm_table, table, rtol=1e-5, atol=1e-6)
    if rule != "sgd":
        fbgemm_state = op.split_optimizer_states()[0][0].numpy()
        np.testing.assert_allclose(fbgemm_state.reshape(state.shape), state, rtol=1e-5, atol=1e-7)
