"""refimpl.modules.embedding_modules: pooled and sequence collections (semantics.md 7).

Expected values are the worked vectors of semantics.md 7.2, or rebuilt here with plain Python
loops over bags; gradients are checked against central differences in float64.
"""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.grad_check import central_difference_grad
from refimpl.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType
from refimpl.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingBagCollectionInterface,
    EmbeddingCollection,
    EmbeddingCollectionInterface,
    embedding_rows_to_dense,
    get_embedding_names_by_table,
    pooled_embedding,
    process_pooled_embeddings,
    reorder_inverse_indices,
)
from refimpl.sparse import KeyedJaggedTensor, KeyedTensor
from refimpl.validate import MissingKeyError

W_ARANGE = np.arange(10.0).reshape(5, 2)


def _ebc(pooling=PoolingType.SUM, is_weighted=False, W=W_ARANGE, **kwargs):
    config = EmbeddingBagConfig(W.shape[0], W.shape[1], name="t", feature_names=["f"], pooling=pooling)
    ebc = EmbeddingBagCollection([config], is_weighted=is_weighted, rng=np.random.default_rng(0), **kwargs)
    ebc.load_state_dict({"embedding_bags.t.weight": W})
    return ebc


def _kjt_f(ids, lengths, weights=None):
    return KeyedJaggedTensor(["f"], np.array(ids), weights=None if weights is None else np.array(weights),
                             lengths=np.array(lengths))


def _pool_by_loops(W, ids, lengths, weights=None, mean=False):
    """e_b = sum_j w_j W[i_j] (/ L_b for MEAN), with Python loops, zeros for empty bags."""
    out, start = np.zeros((len(lengths), W.shape[1])), 0
    for b, L in enumerate(lengths):
        for j in range(start, start + L):
            out[b] += (1.0 if weights is None else weights[j]) * W[ids[j]]
        if mean and L:
            out[b] /= L
        start += L
    return out


# --- worked vectors (semantics.md 7.2) ----------------------------------------------------------------
def test_mean_vector_with_an_empty_bag():
    out = _ebc(PoolingType.MEAN)(_kjt_f([0, 1, 4], [2, 0, 1]))
    np.testing.assert_array_equal(out.values(), [[1, 2], [0, 0], [8, 9]])


def test_weighted_sum_vector():
    out = _ebc(is_weighted=True)(_kjt_f([0, 1, 4], [2, 0, 1], [0.5, 2.0, 3.0]))
    np.testing.assert_array_equal(out.values(), [[4, 6.5], [0, 0], [24, 27]])


def test_duplicate_ids_sum_with_multiplicity():
    out = _ebc()(_kjt_f([1, 1, 1], [3]))
    np.testing.assert_array_equal(out.values(), [[6, 9]])


def test_weighted_mean_is_weighted_sum_over_length():
    out = _ebc(PoolingType.MEAN, is_weighted=True)(_kjt_f([0, 1, 4], [2, 0, 1], [0.5, 2.0, 3.0]))
    np.testing.assert_array_equal(out.values(), [[2, 3.25], [0, 0], [24, 27]])


def test_unweighted_collection_ignores_weights():
    out = _ebc()(_kjt_f([0, 1, 4], [2, 0, 1], [0.5, 2.0, 3.0]))
    np.testing.assert_array_equal(out.values(), [[2, 4], [0, 0], [8, 9]])


def test_pooled_embedding_formula_direct():
    e = pooled_embedding(W_ARANGE, np.array([2, 3]), np.array([0, 0, 2]), mode="MEAN")
    np.testing.assert_array_equal(e, [[0, 0], [5, 6]])


# --- layout, names and key order -----------------------------------------------------------------------
def _two_tables(shared=False, rng_seed=0, pooling=(PoolingType.SUM, PoolingType.SUM)):
    t1 = EmbeddingBagConfig(10, 3, name="t1", feature_names=["f1"], pooling=pooling[0])
    t2 = EmbeddingBagConfig(10, 4, name="t2", feature_names=["f1" if shared else "f2"], pooling=pooling[1])
    return EmbeddingBagCollection([t1, t2], rng=np.random.default_rng(rng_seed))


def _page_kjt(keys=("f1", "f2")):
    return KeyedJaggedTensor(list(keys), np.arange(8), offsets=np.array([0, 2, 2, 3, 4, 5, 8]))


def test_page_example_layout():
    ebc = _two_tables()
    out = ebc(_page_kjt())
    assert isinstance(out, KeyedTensor)
    assert out.keys() == ["f1", "f2"]
    assert out.values().shape == (3, 7)
    assert out.offset_per_key() == [0, 3, 7]
    W1, W2 = ebc.state_dict()["embedding_bags.t1.weight"], ebc.state_dict()["embedding_bags.t2.weight"]
    np.testing.assert_array_equal(out["f1"], _pool_by_loops(W1, [0, 1, 2], [2, 0, 1]))
    np.testing.assert_array_equal(out["f2"], _pool_by_loops(W2, [3, 4, 5, 6, 7], [1, 1, 3]))
    np.testing.assert_array_equal(out["f1"][1], 0.0)


def test_shared_feature_names_and_values():
    ebc = _two_tables(shared=True)
    kjt = KeyedJaggedTensor(["f1"], np.array([0, 1, 2]), lengths=np.array([2, 0, 1]))
    out = ebc(kjt)
    assert out.keys() == ["f1@t1", "f1@t2"]
    assert out.length_per_key() == [3, 4]
    W2 = ebc.state_dict()["embedding_bags.t2.weight"]
    np.testing.assert_array_equal(out["f1@t2"], _pool_by_loops(W2, [0, 1, 2], [2, 0, 1]))


def test_get_embedding_names_by_table():
    tables = [
        EmbeddingBagConfig(2, 1, name="a", feature_names=["x", "y"]),
        EmbeddingBagConfig(2, 1, name="b", feature_names=["y", "z"]),
        EmbeddingBagConfig(2, 1, name="c", feature_names=[]),
    ]
    assert get_embedding_names_by_table(tables) == [["x", "y@a"], ["y@b", "z"], []]


def test_key_order_and_extra_keys_do_not_matter():
    ebc = _two_tables()
    base = ebc(_page_kjt()).values()
    swapped = _page_kjt().permute([1, 0])
    np.testing.assert_array_equal(ebc(swapped).values(), base)
    extra = KeyedJaggedTensor(["x", "f2", "f1"], np.concatenate([[9, 9], np.arange(3, 8), np.arange(3)]),
                              lengths=np.array([1, 1, 0, 1, 1, 3, 2, 0, 1]))
    np.testing.assert_array_equal(ebc(extra).values(), base)


def test_feature_empty_for_the_whole_batch_gives_zeros():
    ebc = _two_tables()
    kjt = KeyedJaggedTensor(["f1", "f2"], np.array([3, 4]), lengths=np.array([0, 0, 1, 1]))
    out = ebc(kjt)
    np.testing.assert_array_equal(out["f1"], np.zeros((2, 3)))
    assert np.abs(out["f2"]).sum() > 0


def test_batch_size_zero_gives_an_empty_output():
    ebc = _two_tables()
    kjt = KeyedJaggedTensor(["f1", "f2"], np.empty(0, np.int64), lengths=np.empty(0, np.int64))
    out = ebc(kjt)
    assert out.values().shape == (0, 7) and out.keys() == ["f1", "f2"]
    grad_w, grads = ebc.backward(np.zeros((0, 7)))
    assert grad_w is None
    np.testing.assert_array_equal(grads["embedding_bags.t1.weight"], 0.0)


def test_mixed_pooling_per_table():
    ebc = _two_tables(pooling=(PoolingType.MEAN, PoolingType.SUM))
    out = ebc(_page_kjt())
    W1 = ebc.state_dict()["embedding_bags.t1.weight"]
    np.testing.assert_allclose(out["f1"], _pool_by_loops(W1, [0, 1, 2], [2, 0, 1], mean=True), rtol=1e-15)


@given(
    lengths=st.lists(st.sampled_from([0, 0, 1, 2, 5]), min_size=0, max_size=8),
    mean=st.booleans(),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_bags_match_the_loop_formula(lengths, mean, weighted, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((7, 3))
    ids = rng.integers(0, 7, sum(lengths))
    weights = rng.standard_normal(sum(lengths)) if weighted else None
    ebc = _ebc(PoolingType.MEAN if mean else PoolingType.SUM, is_weighted=weighted, W=W)
    out = ebc(_kjt_f(ids, lengths, weights))
    np.testing.assert_allclose(out.values(), _pool_by_loops(W, ids, lengths, weights, mean), rtol=1e-13, atol=1e-14)


# --- construction, state and initialisation ------------------------------------------------------------
def test_state_dict_keys_shapes_and_config_mutation():
    t1 = EmbeddingBagConfig(6, 3, name="t1")
    t2 = EmbeddingBagConfig(4, 2, name="t2", feature_names=["a", "b"])
    tables = [t1, t2]
    ebc = EmbeddingBagCollection(tables, rng=np.random.default_rng(0))
    assert t1.feature_names == ["t1"]  # TorchRec mutates empty feature_names the same way
    assert ebc.embedding_bag_configs() is tables
    state = ebc.state_dict()
    assert list(state) == ["embedding_bags.t1.weight", "embedding_bags.t2.weight"]
    assert state["embedding_bags.t1.weight"].shape == (6, 3) and state["embedding_bags.t1.weight"].dtype == np.float64
    assert not ebc.is_weighted() and ebc.device == "cpu"


def test_default_init_is_uniform_within_bounds_and_reset_redraws():
    config = EmbeddingBagConfig(400, 8, name="t", feature_names=["f"])
    ebc = EmbeddingBagCollection([config], rng=np.random.default_rng(5))
    W = ebc.state_dict()["embedding_bags.t.weight"].copy()
    bound = np.sqrt(1 / 400)
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.95 * bound
    assert abs(W.mean()) < 0.1 * bound  # centred: U(-a, a) has mean 0, 3200 draws
    ebc.reset_parameters(np.random.default_rng(6))
    W2 = ebc.state_dict()["embedding_bags.t.weight"]
    assert np.abs(W2).max() <= bound and not np.array_equal(W, W2)


def test_explicit_bounds_and_init_fn():
    a = EmbeddingBagConfig(50, 2, name="a", feature_names=["x"], weight_init_min=2.0, weight_init_max=3.0)
    b = EmbeddingBagConfig(3, 2, name="b", feature_names=["y"], init_fn=lambda w: w.fill(0.25))
    c = EmbeddingBagConfig(3, 2, name="c", feature_names=["z"], init_fn=lambda w: np.full_like(w, 7.0))
    state = EmbeddingBagCollection([a, b, c], rng=np.random.default_rng(0)).state_dict()
    Wa = state["embedding_bags.a.weight"]
    assert Wa.min() >= 2.0 and Wa.max() <= 3.0
    np.testing.assert_array_equal(state["embedding_bags.b.weight"], 0.25)
    np.testing.assert_array_equal(state["embedding_bags.c.weight"], 7.0)


def test_seeded_construction_is_reproducible():
    first = _two_tables(rng_seed=3).state_dict()
    second = _two_tables(rng_seed=3).state_dict()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize(
    "data_type, dtype",
    [(DataType.FP32, np.float64), (DataType.FP16, np.float16), (DataType.BF16, ml_dtypes.bfloat16),
     (DataType.INT8, np.float16)],
)
def test_table_storage_dtypes(data_type, dtype):
    config = EmbeddingBagConfig(4, 2, name="t", feature_names=["f"], data_type=data_type)
    ebc = EmbeddingBagCollection([config], rng=np.random.default_rng(0))
    W = ebc.state_dict()["embedding_bags.t.weight"]
    assert W.dtype == np.dtype(dtype)
    out = ebc(_kjt_f([1, 3], [2])).values()
    # 16-bit rows accumulate exactly in the module's float64.
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[0], W[1].astype(np.float64) + W[3].astype(np.float64))


def test_float32_module_accumulates_in_float32():
    ebc = _ebc(W=W_ARANGE, dtype=np.float32)
    assert ebc.state_dict()["embedding_bags.t.weight"].dtype == np.float32
    assert ebc(_kjt_f([0, 1], [2])).values().dtype == np.float32


def test_bfloat16_table_loads_a_torch_free_state_and_rounds():
    config = EmbeddingBagConfig(2, 2, name="t", feature_names=["f"], data_type=DataType.BF16)
    ebc = EmbeddingBagCollection([config], rng=np.random.default_rng(0))
    ebc.load_state_dict({"embedding_bags.t.weight": np.array([[1.0, 1 + 2**-10], [3.0, 4.0]])})
    W = ebc.state_dict()["embedding_bags.t.weight"]
    assert W.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(W.astype(np.float64), [[1.0, 1.0], [3.0, 4.0]])


# --- errors --------------------------------------------------------------------------------------------
def test_missing_feature_names_feature_and_table():
    ebc = _two_tables()
    kjt = KeyedJaggedTensor(["f1"], np.array([0]), lengths=np.array([1]))
    with pytest.raises(MissingKeyError, match=r"features expected key 'f2' \(a feature of table 't2'\)"):
        ebc(kjt)
    with pytest.raises(KeyError):  # a KeyError too, as TorchRec raises
        ebc(kjt)


def test_out_of_range_ids_name_feature_table_id_and_range():
    ebc = _ebc()
    with pytest.raises(IndexError, match=r"feature 'f' \(table 't'\): ids expected values in \[0, 5\), got id 5"):
        ebc(_kjt_f([0, 5], [1, 1]))
    with pytest.raises(IndexError, match=r"got id -1"):
        ebc(_kjt_f([-1], [1]))


def test_weighted_collection_needs_weights():
    with pytest.raises(ValueError, match="features expected weights .*is_weighted=True.*got a KJT without weights"):
        _ebc(is_weighted=True)(_kjt_f([0], [1]))


def test_float_ids_are_rejected():
    with pytest.raises(TypeError, match=r"feature 'f' \(table 't'\): ids expected an integer dtype, got float64"):
        _ebc()(_kjt_f([0.0], [1]))


def test_configuration_errors():
    t = EmbeddingBagConfig(4, 2, name="t", feature_names=["f"])
    with pytest.raises(ValueError, match=r"Duplicate table name 't' \(tables\[0\] and tables\[1\]\)"):
        EmbeddingBagCollection([t, EmbeddingBagConfig(4, 2, name="t")])
    untouched = EmbeddingBagConfig(4, 2, name="a")
    with pytest.raises(ValueError, match="table 'n': pooling expected SUM or MEAN, got NONE"):
        EmbeddingBagCollection([untouched, EmbeddingBagConfig(4, 2, name="n", pooling=PoolingType.NONE)])
    assert untouched.feature_names == []  # a rejected collection leaves its configs as they were
    with pytest.raises(ValueError, match="table 'z': embedding_dim expected a positive int, got 0"):
        EmbeddingBagCollection([EmbeddingBagConfig(4, 0, name="z")])
    with pytest.raises(ValueError, match=r"table 'd': feature_names expected unique names, got 'f' 2 times"):
        EmbeddingBagCollection([EmbeddingBagConfig(4, 2, name="d", feature_names=["f", "f"])])
    with pytest.raises(ValueError, match=r"tables\[0\].name expected a non-empty str without '.'"):
        EmbeddingBagCollection([EmbeddingBagConfig(4, 2, name="a.b")])
    with pytest.raises(TypeError, match="tables expected a list of embedding configs, got EmbeddingBagConfig"):
        EmbeddingBagCollection(t)
    with pytest.raises(ValueError, match="tables expected at least one table to look up, got none"):
        EmbeddingBagCollection([])(_kjt_f([0], [1]))


def test_input_without_kjt_accessors_is_rejected():
    with pytest.raises(TypeError, match=r"features expected a KeyedJaggedTensor \(keys, .*\), got dict without lengths\(\)"):
        _ebc()({"f": [0]})


def test_interfaces_are_abstract():
    with pytest.raises(TypeError, match="abstract"):
        EmbeddingBagCollectionInterface()
    with pytest.raises(TypeError, match="abstract"):
        EmbeddingCollectionInterface()
    assert isinstance(_ebc(), EmbeddingBagCollectionInterface)


# --- backward -------------------------------------------------------------------------------------------
def _check_ebc_gradients(ebc, kjt, rng):
    out = ebc(kjt).values()
    g = rng.standard_normal(out.shape)
    grad_w, grads = ebc.backward(g)

    def loss(_):
        return float(np.sum(ebc(kjt).values() * g))

    for key, W in ebc.state_dict().items():
        np.testing.assert_allclose(grads[key], central_difference_grad(loss, W), rtol=1e-6, atol=1e-8)
    if kjt.weights_or_none() is not None and ebc.is_weighted():
        np.testing.assert_allclose(grad_w, central_difference_grad(loss, kjt.weights()), rtol=1e-6, atol=1e-8)
    else:
        assert grad_w is None
    ebc(kjt)  # the backward below must see the unperturbed forward again
    return ebc.backward(g)


@pytest.mark.parametrize("pooling", [PoolingType.SUM, PoolingType.MEAN])
@pytest.mark.parametrize("is_weighted", [False, True])
def test_backward_matches_central_differences(pooling, is_weighted):
    rng = np.random.default_rng(11)
    t1 = EmbeddingBagConfig(5, 3, name="t1", feature_names=["f1", "f2"], pooling=pooling)
    t2 = EmbeddingBagConfig(4, 2, name="t2", feature_names=["f2"], pooling=PoolingType.SUM)
    ebc = EmbeddingBagCollection([t1, t2], is_weighted=is_weighted, rng=rng)
    # f2 is shared by t1 and t2; duplicate ids, an empty bag, key order unlike the configs'.
    kjt = KeyedJaggedTensor(
        ["f2", "f1"], np.array([3, 3, 1, 0, 4, 4, 2]), weights=rng.standard_normal(7),
        lengths=np.array([2, 0, 1, 0, 1, 3]),
    )
    _check_ebc_gradients(ebc, kjt, rng)


def test_sparse_backward_sums_to_the_dense_gradient():
    rng = np.random.default_rng(2)
    t = EmbeddingBagConfig(10, 3, name="t", feature_names=["a", "b"])
    ebc = EmbeddingBagCollection([t], is_weighted=True, rng=rng)
    kjt = KeyedJaggedTensor(["b", "a"], np.array([1, 1, 7, 0, 1]), weights=rng.standard_normal(5),
                            lengths=np.array([2, 0, 1, 0, 2, 0]))
    g = rng.standard_normal(ebc(kjt).values().shape)
    grad_w, dense = ebc.backward(g)
    grad_w_sparse, sparse = ebc.sparse_backward(g)
    ids, rows = sparse["embedding_bags.t.weight"]
    # One row per looked-up id, slot after slot (a's ids, then b's), repeats kept.
    np.testing.assert_array_equal(ids, [0, 1, 1, 1, 7])
    np.testing.assert_allclose(embedding_rows_to_dense(ids, rows, 10), dense["embedding_bags.t.weight"], rtol=1e-15)
    np.testing.assert_array_equal(grad_w_sparse, grad_w)


def test_backward_errors():
    ebc = _ebc()
    with pytest.raises(RuntimeError, match="call forward first"):
        ebc.backward(np.zeros((1, 2)))
    ebc(_kjt_f([0], [1]))
    with pytest.raises(ValueError, match=r"grad_output expected shape \(1, 2\), got \(1, 3\)"):
        ebc.backward(np.zeros((1, 3)))
    with pytest.raises(TypeError, match="grad_output expected an array or a KeyedTensor, got a dict"):
        ebc.backward({"f": np.zeros((1, 2))})
    grad_w, grads = ebc.backward(KeyedTensor(["f"], [2], np.ones((1, 2))))
    np.testing.assert_array_equal(grads["embedding_bags.t.weight"][0], [1, 1])


# --- EmbeddingCollection --------------------------------------------------------------------------------
def _ec(need_indices=False, shared=False, seed=0):
    t1 = EmbeddingConfig(6, 3, name="t1", feature_names=["f1"])
    t2 = EmbeddingConfig(8, 3, name="t2", feature_names=["f1" if shared else "f2"])
    return EmbeddingCollection([t1, t2], need_indices=need_indices, rng=np.random.default_rng(seed))


def test_ec_rows_lengths_and_indices():
    ec = _ec(need_indices=True)
    out = ec(_page_kjt())
    assert list(out) == ["f1", "f2"]
    W1, W2 = ec.state_dict()["embeddings.t1.weight"], ec.state_dict()["embeddings.t2.weight"]
    np.testing.assert_array_equal(out["f1"].values(), W1[[0, 1, 2]])
    np.testing.assert_array_equal(out["f1"].lengths(), [2, 0, 1])
    np.testing.assert_array_equal(out["f1"].weights(), [0, 1, 2])
    np.testing.assert_array_equal(out["f2"].values(), W2[[3, 4, 5, 6, 7]])
    assert ec.embedding_dim() == 3 and ec.need_indices()


def test_ec_values_are_the_rows_in_value_order():
    ec = _ec()
    kjt = KeyedJaggedTensor(["f2", "f1"], np.array([3, 3, 0, 5, 1]), lengths=np.array([2, 0, 1, 0, 0, 2]))
    out = ec(kjt)
    W1, W2 = ec.state_dict()["embeddings.t1.weight"], ec.state_dict()["embeddings.t2.weight"]
    np.testing.assert_array_equal(out["f2"].values(), W2[[3, 3, 0]])
    np.testing.assert_array_equal(out["f1"].values(), W1[[5, 1]])
    np.testing.assert_array_equal(out["f1"].lengths(), [0, 0, 2])
    assert out["f1"].weights_or_none() is None


def test_ec_shared_feature_names_and_state():
    ec = _ec(shared=True)
    out = ec(KeyedJaggedTensor(["f1"], np.array([0, 3]), lengths=np.array([1, 0, 1])))
    assert list(out) == ["f1@t1", "f1@t2"]
    assert ec.embedding_names_by_table() == [["f1@t1"], ["f1@t2"]]
    assert list(ec.state_dict()) == ["embeddings.t1.weight", "embeddings.t2.weight"]


def test_ec_empty_feature_and_batch_size_zero():
    ec = _ec()
    out = ec(KeyedJaggedTensor(["f1", "f2"], np.array([1]), lengths=np.array([0, 0, 1, 0])))
    assert out["f1"].values().shape == (0, 3)
    empty = ec(KeyedJaggedTensor(["f1", "f2"], np.empty(0, np.int64), lengths=np.empty(0, np.int64)))
    assert empty["f2"].values().shape == (0, 3) and empty["f2"].lengths().shape == (0,)


def test_ec_errors_and_accessors():
    with pytest.raises(ValueError, match="required to have same embedding dimension; table 'b' expected embedding_dim 2"):
        EmbeddingCollection([EmbeddingConfig(3, 2, name="a"), EmbeddingConfig(3, 4, name="b")])
    ec = _ec()
    with pytest.raises(MissingKeyError, match=r"features expected key 'f2' \(a feature of table 't2'\)"):
        ec(KeyedJaggedTensor(["f1"], np.array([0]), lengths=np.array([1])))
    with pytest.raises(IndexError, match=r"feature 'f2' \(table 't2'\): ids expected values in \[0, 8\), got id 8"):
        ec(KeyedJaggedTensor(["f1", "f2"], np.array([0, 8]), lengths=np.array([1, 1])))
    empty = EmbeddingCollection([])
    assert empty.embedding_dim() == -1 and empty(_page_kjt()) == {}
    assert isinstance(ec, EmbeddingCollectionInterface)


def test_ec_interleaved_init_order():
    """Each table is drawn N(0, 1) and then initialised before the next table's draw."""
    a = EmbeddingConfig(3, 2, name="a", feature_names=["x"], weight_init_min=0.0, weight_init_max=1.0)
    b = EmbeddingConfig(3, 2, name="b", feature_names=["y"], weight_init_min=0.0, weight_init_max=1.0)
    state = EmbeddingCollection([a, b], rng=np.random.default_rng(4)).state_dict()
    rng = np.random.default_rng(4)
    rng.standard_normal((3, 2))
    expected_a = rng.uniform(0.0, 1.0, (3, 2))
    np.testing.assert_array_equal(state["embeddings.a.weight"], expected_a)


def test_ebc_init_order_all_normals_first():
    a = EmbeddingBagConfig(3, 2, name="a", feature_names=["x"], weight_init_min=0.0, weight_init_max=1.0)
    b = EmbeddingBagConfig(3, 2, name="b", feature_names=["y"], weight_init_min=0.0, weight_init_max=1.0)
    state = EmbeddingBagCollection([a, b], rng=np.random.default_rng(4)).state_dict()
    rng = np.random.default_rng(4)
    rng.standard_normal((3, 2))
    rng.standard_normal((3, 2))
    np.testing.assert_array_equal(state["embedding_bags.a.weight"], rng.uniform(0.0, 1.0, (3, 2)))


def test_ec_backward_matches_central_differences():
    rng = np.random.default_rng(7)
    ec = _ec(shared=True)
    kjt = KeyedJaggedTensor(["f1"], np.array([2, 2, 0, 3]), lengths=np.array([2, 0, 2]))
    out = ec(kjt)
    g = {name: rng.standard_normal(jt.values().shape) for name, jt in out.items()}
    _, grads = ec.backward(g)

    def loss(_):
        return float(sum(np.sum(jt.values() * g[name]) for name, jt in ec(kjt).items()))

    for key, W in ec.state_dict().items():
        np.testing.assert_allclose(grads[key], central_difference_grad(loss, W), rtol=1e-6, atol=1e-8)
    ec(kjt)
    _, partial = ec.backward({"f1@t2": g["f1@t2"]})
    np.testing.assert_array_equal(partial["embeddings.t1.weight"], 0.0)
    _, sparse = ec.sparse_backward(g)
    ids, rows = sparse["embeddings.t2.weight"]
    np.testing.assert_allclose(embedding_rows_to_dense(ids, rows, 8), grads["embeddings.t2.weight"], rtol=1e-15)


def test_ec_backward_errors():
    ec = _ec()
    ec(_page_kjt())
    with pytest.raises(KeyError, match=r"grad_output: key expected one of \['f1', 'f2'\], got 'x'"):
        ec.backward({"x": np.zeros((1, 3))})
    with pytest.raises(ValueError, match=r"grad_output\['f1'\] expected shape \(3, 3\), got \(2, 3\)"):
        ec.backward({"f1": np.zeros((2, 3))})
    with pytest.raises(TypeError, match="grad_output expected a dict embedding name -> array"):
        ec.backward(np.zeros((3, 3)))


# --- inverse indices helpers (semantics.md 7.4) -------------------------------------------------------
def test_reorder_inverse_indices_vector():
    idx = np.array([[0, 1, 1], [2, 2, 0]])
    out = reorder_inverse_indices((["a", "b"], idx), ["b", "a@t", "b@x"])
    np.testing.assert_array_equal(out, idx[[1, 0, 1]])
    assert reorder_inverse_indices(None, ["a"]).size == 0
    with pytest.raises(KeyError, match=r"feature_names \('c@t'\): key expected one of \['a', 'b'\], got 'c'"):
        reorder_inverse_indices((["a", "b"], idx), ["c@t"])


def test_process_pooled_embeddings_vbe_vector():
    """semantics.md 7.2's VBE vector: a (2 rows) and b (1 row) expanded to 3 samples."""
    pooled_a = np.array([[2.0, 3.0], [4.0, 5.0]])
    pooled_b = np.array([[103.0]])
    inverse = np.array([[0, 1, 1], [0, 0, 0]])
    out = process_pooled_embeddings([pooled_a, pooled_b], inverse)
    np.testing.assert_array_equal(out, [[2, 3, 103], [4, 5, 103], [4, 5, 103]])
    np.testing.assert_array_equal(process_pooled_embeddings([pooled_a, pooled_a], np.empty(0)), np.hstack([pooled_a] * 2))
    with pytest.raises(IndexError, match=r"inverse_indices\[1\] expected row numbers in \[0, 1\)"):
        process_pooled_embeddings([pooled_a, pooled_b], np.array([[0, 1, 1], [0, 1, 0]]))


# --- against TorchRec ---------------------------------------------------------------------------------
def _torchrec():
    return pytest.importorskip("torchrec", reason="TorchRec is an optional extra; the tests above stand without it")


@pytest.mark.parametrize("weighted", [False, True])
def test_ebc_agrees_with_torchrec(weighted):
    torchrec = _torchrec()
    import torch

    def configs(lib):
        pool = lib.PoolingType
        return [
            lib.EmbeddingBagConfig(8, 3, name="t1", feature_names=["f1", "f2"], pooling=pool.SUM),
            lib.EmbeddingBagConfig(6, 4, name="t2", feature_names=["f2"],
                                   pooling=pool.SUM if weighted else pool.MEAN),
        ]

    import refimpl.modules.embedding_configs as ours

    torch.manual_seed(0)
    theirs = torchrec.EmbeddingBagCollection(configs(torchrec), is_weighted=weighted)
    mine = EmbeddingBagCollection(configs(ours), is_weighted=weighted, rng=np.random.default_rng(0))
    mine.load_state_dict(theirs.state_dict())
    kjt = torchrec.KeyedJaggedTensor(
        keys=["f2", "f1", "x"],
        values=torch.tensor([1, 5, 5, 0, 7, 2, 3, 9]),
        lengths=torch.tensor([2, 0, 1, 3, 0, 1, 1, 0, 0]),
        weights=torch.rand(8) if weighted else None,
    )
    out_t, out_m = theirs(kjt), mine(kjt)  # refimpl reads TorchRec's KJT through its accessors
    assert out_m.keys() == out_t.keys() and out_m.length_per_key() == out_t.length_per_key()
    np.testing.assert_allclose(out_m.values(), out_t.values().detach().numpy(), rtol=1e-6, atol=1e-6)


def test_ec_agrees_with_torchrec():
    torchrec = _torchrec()
    import torch

    import refimpl.modules.embedding_configs as ours

    def configs(lib):
        return [lib.EmbeddingConfig(8, 3, name="a", feature_names=["f"]),
                lib.EmbeddingConfig(5, 3, name="b", feature_names=["f", "g"])]

    torch.manual_seed(1)
    theirs = torchrec.EmbeddingCollection(configs(torchrec), need_indices=True)
    mine = EmbeddingCollection(configs(ours), need_indices=True, rng=np.random.default_rng(0))
    mine.load_state_dict(theirs.state_dict())
    kjt = torchrec.KeyedJaggedTensor(keys=["g", "f"], values=torch.tensor([4, 0, 1, 1, 3]),
                                     lengths=torch.tensor([1, 0, 2, 0, 2, 0]))
    out_t, out_m = theirs(kjt), mine(kjt)
    assert list(out_m) == list(out_t) == ["f@a", "f@b", "g"]
    for name in out_t:
        np.testing.assert_allclose(out_m[name].values(), out_t[name].values().detach().numpy(), rtol=1e-7)
        np.testing.assert_array_equal(out_m[name].lengths(), out_t[name].lengths().numpy())
        np.testing.assert_array_equal(out_m[name].weights(), out_t[name].weights().numpy())


def test_ebc_backward_agrees_with_torch_autograd():
    torchrec = _torchrec()
    import torch

    import refimpl.modules.embedding_configs as ours

    def configs(lib):
        return [lib.EmbeddingBagConfig(6, 2, name="t", feature_names=["f"], pooling=lib.PoolingType.MEAN)]

    torch.manual_seed(2)
    theirs = torchrec.EmbeddingBagCollection(configs(torchrec))
    mine = EmbeddingBagCollection(configs(ours), rng=np.random.default_rng(0))
    mine.load_state_dict(theirs.state_dict())
    kjt = torchrec.KeyedJaggedTensor(keys=["f"], values=torch.tensor([1, 1, 4, 0]), lengths=torch.tensor([3, 0, 1]))
    g = np.random.default_rng(3).standard_normal((3, 2))
    theirs(kjt).values().backward(torch.from_numpy(g).float())
    mine(kjt)
    _, grads = mine.backward(g)
    np.testing.assert_allclose(
        grads["embedding_bags.t.weight"], theirs.embedding_bags["t"].weight.grad.numpy(), rtol=1e-6, atol=1e-7
    )
