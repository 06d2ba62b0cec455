"""accel.modules.embedding_modules: TorchRec's EmbeddingBagCollection / EmbeddingCollection (semantics.md 7).

Golden values come from semantics.md's vectors or from float64 NumPy formulas written here over the
module's own tables (read back from its state_dict); gradients and fused optimizer steps are checked
against the dense gradient formula and the update rules written out in NumPy.
"""

import math

import numpy as np
import pytest
import torch

from accel.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType
from accel.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingBagCollectionInterface,
    EmbeddingCollection,
    EmbeddingCollectionInterface,
    get_embedding_names_by_table,
    process_pooled_embeddings,
    reorder_inverse_indices,
)
from accel.sparse import JaggedTensor, KeyedJaggedTensor, KeyedTensor

SUM, MEAN = PoolingType.SUM, PoolingType.MEAN


# --- helpers ---------------------------------------------------------------------------------------------
def kjt_from_bags(bags, weights=None, lengths_dtype=torch.int64, ids_dtype=torch.int64):
    """{key: [[ids of sample 0], [ids of sample 1], ...]} -> KJT (key-major, same batch for every key)."""
    keys = list(bags)
    ids = [i for key in keys for bag in bags[key] for i in bag]
    lengths = [len(bag) for key in keys for bag in bags[key]]
    flat_weights = None
    if weights is not None:
        flat_weights = torch.tensor([w for key in keys for bag in weights[key] for w in bag], dtype=torch.float32)
    return KeyedJaggedTensor(
        keys,
        torch.tensor(ids, dtype=ids_dtype),
        weights=flat_weights,
        lengths=torch.tensor(lengths, dtype=lengths_dtype),
        stride=len(next(iter(bags.values()))) if bags else 0,
    )


def table(module, name):
    """A table's weight as float64 NumPy (from the state_dict, as a user would read it)."""
    prefix = "embedding_bags" if isinstance(module, EmbeddingBagCollection) else "embeddings"
    return module.state_dict()[f"{prefix}.{name}.weight"].double().numpy()


def pooled(W, bags, weights=None, mean=False):
    """out_b = sum_j w_j W[i_j] (divided by L_b for MEAN; 0 for an empty bag), in float64."""
    out = np.zeros((len(bags), W.shape[1]))
    for b, bag in enumerate(bags):
        w = np.ones(len(bag)) if weights is None else np.asarray(weights[b], dtype=np.float64)
        for j, i in enumerate(bag):
            out[b] += w[j] * W[i]
        if mean and bag:
            out[b] /= len(bag)
    return out


def set_tables(module, values):
    with torch.no_grad():
        for name, value in values.items():
            container = module.embedding_bags if isinstance(module, EmbeddingBagCollection) else module.embeddings
            container[name].weight.copy_(torch.as_tensor(value))


def ebc(tables, **kwargs):
    torch.manual_seed(0)
    return EmbeddingBagCollection(tables, **kwargs)


def cfg(name, rows, dim, features, pooling=SUM, **kwargs):
    return EmbeddingBagConfig(rows, dim, name=name, feature_names=list(features), pooling=pooling, **kwargs)


# --- names and helpers -----------------------------------------------------------------------------------
def test_embedding_names_mark_shared_features_with_their_table():
    tables = [cfg("t1", 4, 2, ["f1", "f2"]), cfg("t2", 4, 2, ["f1"]), cfg("t3", 4, 2, [])]
    assert get_embedding_names_by_table(tables) == [["f1@t1", "f2"], ["f1@t2"], []]


def test_reorder_inverse_indices_picks_rows_by_feature_before_the_at():
    idx = torch.tensor([[0, 1, 1], [2, 2, 0]])
    assert reorder_inverse_indices(None, ["a"]).numel() == 0
    out = reorder_inverse_indices((["a", "b"], idx), ["b", "a@t", "b@x"])
    assert out.tolist() == [[2, 2, 0], [0, 1, 1], [2, 2, 0]]
    with pytest.raises(KeyError, match="got 'c'"):
        reorder_inverse_indices((["a", "b"], idx), ["c"])


def test_process_pooled_embeddings_gathers_rows_then_concatenates():
    p0, p1 = torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0, 11.0]])
    out = process_pooled_embeddings([p0, p1], torch.tensor([[1, 0, 1], [0, 0, 0]]))
    assert out.tolist() == [[2.0, 10.0, 11.0], [1.0, 10.0, 11.0], [2.0, 10.0, 11.0]]
    plain = process_pooled_embeddings([p0, torch.tensor([[3.0], [4.0]])], torch.empty(0))
    assert plain.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    with pytest.raises(IndexError, match=r"inverse_indices\[1\] expected row numbers in \[0, 1\)"):
        process_pooled_embeddings([p0, p1], torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match=r"inverse_indices expected shape \(2, B\)"):
        process_pooled_embeddings([p0, p1], torch.tensor([[0, 1]]))


def test_interfaces_are_abstract():
    for interface in (EmbeddingBagCollectionInterface, EmbeddingCollectionInterface):
        with pytest.raises(TypeError, match="abstract"):
            interface()


# --- EmbeddingBagCollection: construction ----------------------------------------------------------------
def test_ebc_state_dict_keys_shapes_and_dtypes():
    m = ebc([cfg("t1", 5, 3, ["f1"]), cfg("t2", 7, 4, ["f2"], data_type=DataType.FP16),
             cfg("t3", 2, 2, ["f3"], data_type=DataType.BF16)])
    state = m.state_dict()
    assert list(state) == ["embedding_bags.t1.weight", "embedding_bags.t2.weight", "embedding_bags.t3.weight"]
    assert [tuple(v.shape) for v in state.values()] == [(5, 3), (7, 4), (2, 2)]
    # BF16 really is bfloat16 (TorchRec stores it as float16: D31).
    assert [v.dtype for v in state.values()] == [torch.float32, torch.float16, torch.bfloat16]


def test_ebc_rng_order_is_all_normals_then_every_init():
    tables = [cfg("t1", 5, 3, ["f1"]), cfg("t2", 4, 2, ["f2"], weight_init_min=-2.0, weight_init_max=3.0)]
    torch.manual_seed(11)
    m = EmbeddingBagCollection(tables)
    torch.manual_seed(11)
    w1, w2 = torch.empty(5, 3).normal_(), torch.empty(4, 2).normal_()
    w1.uniform_(-math.sqrt(1 / 5), math.sqrt(1 / 5))
    w2.uniform_(-2.0, 3.0)
    assert torch.equal(m.embedding_bags["t1"].weight, w1)
    assert torch.equal(m.embedding_bags["t2"].weight, w2)


def test_ebc_applies_a_given_init_fn_and_reset_parameters_reapplies_it():
    calls = []

    def init_fn(weight):
        calls.append(tuple(weight.shape))
        torch.nn.init.constant_(weight, 0.5)

    m = ebc([cfg("t1", 3, 2, ["f1"], init_fn=init_fn)])
    assert calls == [(3, 2)] and torch.equal(m.embedding_bags["t1"].weight, torch.full((3, 2), 0.5))
    with torch.no_grad():
        m.embedding_bags["t1"].weight.zero_()
    m.reset_parameters()
    assert calls == [(3, 2), (3, 2)] and float(m.embedding_bags["t1"].weight.detach().sum()) == 3.0


def test_ebc_accessors_and_config_mutation():
    tables = [cfg("t1", 3, 2, []), cfg("t2", 3, 4, ["g"])]
    m = ebc(tables, is_weighted=True)
    assert tables[0].feature_names == ["t1"]  # filled in, as TorchRec does
    assert m.embedding_bag_configs() is tables and m.is_weighted() is True
    assert m.device == torch.device("cpu")
    assert m.optimizer_state() == {}


@pytest.mark.parametrize(
    "tables, kwargs, error, match",
    [
        ([cfg("t", 3, 2, ["f"]), cfg("t", 4, 2, ["g"])], {}, ValueError, "Duplicate table name 't'"),
        ([cfg("t", 3, 2, ["f"], pooling=PoolingType.NONE)], {}, ValueError, "table 't': pooling expected SUM or MEAN, got NONE"),
        ([cfg("t", 3, 2, ["f", "f"])], {}, ValueError, "table 't': feature_names expected unique names, got 'f' 2 times"),
        ([cfg("t", 3, 0, ["f"])], {}, ValueError, "table 't': embedding_dim expected a positive int, got 0"),
        ([cfg("a.b", 3, 2, ["f"])], {}, ValueError, r"tables\[0\].name expected a non-empty str without '.'"),
        ("t", {}, TypeError, "tables expected a list of embedding configs, got str"),
        ([cfg("t", 3, 2, ["f"])], {"optimizer": "adam"}, ValueError, "optimizer expected None or one of"),
        ([cfg("t", 3, 2, ["f"])], {"optimizer": "sgd", "lr": -1.0}, ValueError, "lr expected 0 <= lr, got -1.0"),
        ([cfg("t", 3, 2, ["f"])], {"optimizer": "adagrad", "eps": 0.0}, ValueError, "eps expected 0 < eps, got 0.0"),
        ([cfg("t", 3, 2, ["f"])], {"optimizer": "sgd", "lr": "0.1"}, TypeError, "lr expected a finite float"),
    ],
)
def test_ebc_rejects_bad_configuration(tables, kwargs, error, match):
    with pytest.raises(error, match=match):
        EmbeddingBagCollection(tables, **kwargs)


# --- EmbeddingBagCollection: forward ---------------------------------------------------------------------
def test_ebc_seed_example_layout_and_values():
    # semantics.md 7.2: t1 (D=3), t2 (D=4); f1 = [[0, 1], [], [2]], f2 = [[3], [4], [5, 6, 7]].
    m = ebc([cfg("t1", 10, 3, ["f1"]), cfg("t2", 10, 4, ["f2"])])
    kjt = KeyedJaggedTensor(["f1", "f2"], torch.arange(8), offsets=torch.tensor([0, 2, 2, 3, 4, 5, 8]))
    kt = m(kjt)
    assert isinstance(kt, KeyedTensor)
    assert kt.keys() == ["f1", "f2"] and kt.offset_per_key() == [0, 3, 7] and kt.length_per_key() == [3, 4]
    assert tuple(kt.values().shape) == (3, 7) and kt.values().dtype == torch.float32
    expected = np.hstack([pooled(table(m, "t1"), [[0, 1], [], [2]]), pooled(table(m, "t2"), [[3], [4], [5, 6, 7]])])
    np.testing.assert_allclose(kt.values().detach().numpy(), expected, rtol=1e-6, atol=1e-7)
    assert kt.values()[1, :3].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "pooling, ids, lengths, weights, expected",
    [
        (MEAN, [0, 1, 4], [2, 0, 1], None, [[1, 2], [0, 0], [8, 9]]),
        (SUM, [0, 1, 4], [2, 0, 1], [0.5, 2, 3], [[4, 6.5], [0, 0], [24, 27]]),
        (SUM, [1, 1, 1], [3], None, [[6, 9]]),
        # recspec's weighted MEAN: sum_j w_j W[i_j] / L (TorchRec raises).
        (MEAN, [0, 1, 4], [2, 0, 1], [0.5, 2, 3], [[2, 3.25], [0, 0], [24, 27]]),
    ],
)
def test_ebc_semantics_vectors(pooling, ids, lengths, weights, expected):
    m = ebc([cfg("t", 5, 2, ["f"], pooling=pooling)], is_weighted=weights is not None)
    set_tables(m, {"t": torch.arange(10.0).view(5, 2)})
    kjt = KeyedJaggedTensor(
        ["f"], torch.tensor(ids), lengths=torch.tensor(lengths),
        weights=None if weights is None else torch.tensor(weights),
    )
    assert m(kjt).values().tolist() == expected


def test_ebc_shared_feature_gets_one_output_per_table():
    m = ebc([cfg("t1", 6, 2, ["f1"]), cfg("t2", 6, 3, ["f1", "f2"], pooling=MEAN)])
    bags = {"f1": [[0, 5], [], [3, 3, 1]], "f2": [[2], [4, 0], []]}
    kt = m(kjt_from_bags(bags))
    assert kt.keys() == ["f1@t1", "f1@t2", "f2"] and kt.length_per_key() == [2, 3, 3]
    expected = np.hstack([
        pooled(table(m, "t1"), bags["f1"]),
        pooled(table(m, "t2"), bags["f1"], mean=True),
        pooled(table(m, "t2"), bags["f2"], mean=True),
    ])
    np.testing.assert_allclose(kt.values().detach().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_ebc_mixed_pooling_keeps_table_order_in_the_output():
    m = ebc([cfg("a", 5, 2, ["x"], pooling=MEAN), cfg("b", 5, 3, ["y"]), cfg("c", 5, 1, ["z"], pooling=MEAN)])
    bags = {"x": [[1, 2], [0]], "y": [[4], [1, 1]], "z": [[], [3, 2, 1]]}
    values = m(kjt_from_bags(bags)).values().detach().numpy()
    expected = np.hstack([
        pooled(table(m, "a"), bags["x"], mean=True),
        pooled(table(m, "b"), bags["y"]),
        pooled(table(m, "c"), bags["z"], mean=True),
    ])
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)


def test_ebc_key_order_does_not_matter_and_is_never_cached_across_orders():
    m = ebc([cfg("t1", 6, 2, ["f1"]), cfg("t2", 6, 2, ["f2", "f3"])])
    bags = {"f1": [[0], [1, 2]], "f2": [[3, 4], []], "f3": [[5], [5, 0]]}
    ordered = m(kjt_from_bags(bags)).values()
    for order in (["f3", "f1", "f2"], ["f2", "f3", "f1"], ["f1", "f2", "f3"], ["f3", "f1", "f2"]):
        shuffled = m(kjt_from_bags({key: bags[key] for key in order})).values()
        assert torch.equal(shuffled, ordered), order


def test_ebc_ignores_extra_keys_and_unused_weights():
    m = ebc([cfg("t", 4, 2, ["f"])])
    plain = m(kjt_from_bags({"f": [[1, 2], [3]]})).values()
    extra = m(kjt_from_bags({"g": [[0], []], "f": [[1, 2], [3]]}, weights={"g": [[9.0], []], "f": [[5.0, 6.0], [7.0]]}))
    assert torch.equal(extra.values(), plain)


def test_ebc_empty_bags_and_a_feature_empty_for_the_whole_batch():
    m = ebc([cfg("t1", 4, 2, ["f1"], pooling=MEAN), cfg("t2", 4, 3, ["f2"])])
    values = m(kjt_from_bags({"f1": [[], [], []], "f2": [[], [1], []]})).values()
    expected = np.zeros((3, 5))
    expected[1, 2:] = table(m, "t2")[1]
    np.testing.assert_allclose(values.detach().numpy(), expected, rtol=1e-6)


def test_ebc_batch_size_zero_gives_an_empty_output_of_the_right_width():
    m = ebc([cfg("t1", 4, 2, ["f1"]), cfg("t2", 4, 3, ["f2"])])
    kjt = KeyedJaggedTensor(["f1", "f2"], torch.empty(0, dtype=torch.int64), lengths=torch.empty(0, dtype=torch.int64))
    kt = m(kjt)
    assert tuple(kt.values().shape) == (0, 5) and kt.keys() == ["f1", "f2"] and kt.values().dtype == torch.float32


def test_ebc_accepts_int32_ids_and_lengths():
    m = ebc([cfg("t", 5, 2, ["f"])])
    bags = {"f": [[4, 0], [], [2]]}
    wide = m(kjt_from_bags(bags)).values()
    narrow = m(kjt_from_bags(bags, lengths_dtype=torch.int32, ids_dtype=torch.int32)).values()
    assert torch.equal(wide, narrow)


@pytest.mark.parametrize("data_type, dtype, tol", [(DataType.FP16, torch.float16, 2e-3), (DataType.BF16, torch.bfloat16, 2e-2)])
def test_ebc_half_precision_tables_give_float32_outputs(data_type, dtype, tol):
    m = ebc([cfg("t", 6, 4, ["f"], data_type=data_type)])
    assert m.embedding_bags["t"].weight.dtype == dtype
    bags = {"f": [[0, 1, 2, 5], [], [3]]}
    values = m(kjt_from_bags(bags)).values()
    assert values.dtype == torch.float32
    np.testing.assert_allclose(values.detach().numpy(), pooled(table(m, "t"), bags["f"]), rtol=tol, atol=tol)


# --- EmbeddingBagCollection: bad input -------------------------------------------------------------------
def test_ebc_missing_feature_names_feature_and_table():
    m = ebc([cfg("t1", 4, 2, ["f1"]), cfg("t2", 4, 2, ["f2"])])
    with pytest.raises(KeyError, match=r"expected key 'f2' \(a feature of table 't2'\) among the input's keys \['f1'\]"):
        m(kjt_from_bags({"f1": [[0]]}))
    with pytest.raises(ValueError, match="a feature of table 't2'"):
        m(kjt_from_bags({"f1": [[0]]}))


@pytest.mark.parametrize("bad, position", [(7, 1), (-1, 1), (4, 1)])
def test_ebc_out_of_range_ids_name_feature_table_id_and_range(bad, position):
    m = ebc([cfg("t1", 6, 2, ["f1"]), cfg("t2", 4, 2, ["f2"])])
    with pytest.raises(IndexError, match=rf"feature 'f2' \(table 't2'\): ids expected values in \[0, 4\), got id {bad} at position {position}"):
        m(kjt_from_bags({"f1": [[5], [0]], "f2": [[1], [bad]]}))


def test_ebc_shared_feature_range_is_checked_against_each_table():
    m = ebc([cfg("big", 10, 2, ["f"]), cfg("small", 3, 2, ["f"])])
    with pytest.raises(IndexError, match=r"feature 'f' \(table 'small'\): ids expected values in \[0, 3\), got id 8"):
        m(kjt_from_bags({"f": [[8]]}))


def test_ebc_weighted_collection_needs_weights():
    m = ebc([cfg("t", 4, 2, ["f"])], is_weighted=True)
    with pytest.raises(ValueError, match="features expected weights"):
        m(kjt_from_bags({"f": [[0]]}))


def test_ebc_rejects_float_ids():
    m = ebc([cfg("t", 4, 2, ["f"])])
    kjt = KeyedJaggedTensor(["f"], torch.tensor([0.0, 1.0]), lengths=torch.tensor([2]))
    with pytest.raises(TypeError, match="values\\(\\) expected 1-D integer ids, got torch.float32"):
        m(kjt)


def test_ebc_without_tables_is_an_error_at_forward():
    m = EmbeddingBagCollection([])
    with pytest.raises(ValueError, match="tables expected at least one table"):
        m(kjt_from_bags({"f": [[0]]}))


# --- EmbeddingBagCollection: gradients -------------------------------------------------------------------
def dense_grad(W, bags, G, weights=None, mean=False):
    """dL/dW[i] = sum over occurrences (b, j) with i_j = i of w_j G[b] (/ L_b for MEAN)."""
    dW = np.zeros_like(W, dtype=np.float64)
    for b, bag in enumerate(bags):
        w = np.ones(len(bag)) if weights is None else np.asarray(weights[b], dtype=np.float64)
        for j, i in enumerate(bag):
            dW[i] += w[j] * G[b] / (len(bag) if mean else 1)
    return dW


@pytest.mark.parametrize("pooling", [SUM, MEAN])
def test_ebc_table_gradients_match_the_dense_formula(pooling):
    mean = pooling == MEAN
    m = ebc([cfg("t1", 5, 2, ["f1"], pooling=pooling), cfg("t2", 6, 3, ["f1", "f2"], pooling=pooling)], is_weighted=True)
    bags = {"f1": [[0, 4, 4], [], [2]], "f2": [[3], [1, 3], []]}
    weights = {"f1": [[0.5, 1.5, -2.0], [], [3.0]], "f2": [[2.0], [0.25, 1.0], []]}
    kjt = kjt_from_bags(bags, weights)
    G = np.random.default_rng(0).standard_normal((3, 8))
    (m(kjt).values() * torch.tensor(G, dtype=torch.float32)).sum().backward()
    g1 = dense_grad(table(m, "t1"), bags["f1"], G[:, 0:2], weights["f1"], mean)
    g2 = dense_grad(table(m, "t2"), bags["f1"], G[:, 2:5], weights["f1"], mean) + dense_grad(
        table(m, "t2"), bags["f2"], G[:, 5:8], weights["f2"], mean
    )
    np.testing.assert_allclose(m.embedding_bags["t1"].weight.grad.numpy(), g1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.embedding_bags["t2"].weight.grad.numpy(), g2, rtol=1e-5, atol=1e-6)


def test_ebc_per_sample_weight_gradient():
    m = ebc([cfg("t", 5, 3, ["f"])], is_weighted=True)
    # bags [[0, 4], [], [2, 2, 1]]
    w = torch.tensor([0.5, 1.5, 2.0, -1.0, 3.0], requires_grad=True)
    kjt = KeyedJaggedTensor(["f"], torch.tensor([0, 4, 2, 2, 1]), lengths=torch.tensor([2, 0, 3]), weights=w)
    G = np.random.default_rng(1).standard_normal((3, 3))
    (m(kjt).values() * torch.tensor(G, dtype=torch.float32)).sum().backward()
    W = table(m, "t")
    # dL/dw_j = <W[i_j], G[b(j)]>
    expected = [W[0] @ G[0], W[4] @ G[0], W[2] @ G[2], W[2] @ G[2], W[1] @ G[2]]
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", [SUM, MEAN])
def test_ebc_gradcheck_on_float64_tables(pooling):
    m = ebc([cfg("t1", 4, 2, ["f1"], pooling=pooling), cfg("t2", 3, 3, ["f1", "f2"], pooling=pooling)],
            is_weighted=True).double()
    ids, lengths = torch.tensor([0, 2, 2, 1, 1, 2, 0]), torch.tensor([2, 0, 2, 1, 2, 0])

    def f(W1, W2, w):
        kjt = KeyedJaggedTensor(["f1", "f2"], ids, lengths=lengths, weights=w)
        params = {"embedding_bags.t1.weight": W1, "embedding_bags.t2.weight": W2}
        return torch.func.functional_call(m, params, (kjt,)).values()

    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(4, 2, generator=gen, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True),
              torch.rand(7, generator=gen, dtype=torch.float64, requires_grad=True)]
    assert f(*inputs).dtype == torch.float64
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)


# --- EmbeddingBagCollection: fused optimizers -------------------------------------------------------------
def manual_step(W, G_state, dW, rule, lr, eps):
    """FBGEMM's rules on the dense (row-summed) gradient; rows with no gradient keep their values."""
    if rule == "sgd":
        return W - lr * dW, None
    if rule == "adagrad":
        G_new = G_state + dW * dW
        return W - lr * dW / (np.sqrt(G_new) + eps), G_new
    G_new = G_state + (dW * dW).mean(axis=1)
    return W - lr * dW / (np.sqrt(G_new) + eps)[:, None], G_new


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("pooling", [SUM, MEAN])
def test_ebc_fused_steps_match_manual_updates(rule, pooling):
    def tables():
        return [cfg("t1", 6, 2, ["f1"], pooling=pooling), cfg("t2", 7, 3, ["f1", "f2"], pooling=pooling)]

    lr, eps = 0.1, 1e-3
    fused = ebc(tables(), optimizer=rule, lr=lr, eps=eps)
    reference = ebc(tables())
    W = {name: table(reference, name) for name in ("t1", "t2")}
    state = {"t1": None, "t2": None}
    if rule == "adagrad":
        state = {"t1": np.zeros((6, 2)), "t2": np.zeros((7, 3))}
    elif rule == "rowwise_adagrad":
        state = {"t1": np.zeros(6), "t2": np.zeros(7)}
    rng = np.random.default_rng(2)
    steps = [{"f1": [[0, 5, 5], [], [2]], "f2": [[4], [1, 4], []]}, {"f1": [[5], [1]], "f2": [[], [0, 0]]}]
    for bags in steps:
        kjt = kjt_from_bags(bags)
        G = rng.standard_normal((kjt.stride(), 8))
        set_tables(reference, {k: torch.tensor(v, dtype=torch.float32) for k, v in W.items()})
        reference.zero_grad()
        (reference(kjt).values() * torch.tensor(G, dtype=torch.float32)).sum().backward()
        (fused(kjt).values() * torch.tensor(G, dtype=torch.float32)).sum().backward()
        for name in ("t1", "t2"):
            dW = reference.embedding_bags[name].weight.grad.double().numpy()
            W[name], state[name] = manual_step(W[name], state[name], dW, rule, lr, eps)
    for name in ("t1", "t2"):
        assert fused.embedding_bags[name].weight.grad is None  # no table-sized gradient
        np.testing.assert_allclose(table(fused, name), W[name], rtol=1e-5, atol=1e-6)
        if rule != "sgd":
            np.testing.assert_allclose(fused.optimizer_state()[name].numpy(), state[name], rtol=1e-5, atol=1e-7)


def test_ebc_fused_state_is_non_persistent_and_exposed():
    m = ebc([cfg("t1", 6, 2, ["f1"]), cfg("t2", 5, 3, ["f2"])], optimizer="rowwise_adagrad")
    assert list(m.state_dict()) == ["embedding_bags.t1.weight", "embedding_bags.t2.weight"]
    state = m.optimizer_state()
    assert {k: tuple(v.shape) for k, v in state.items()} == {"t1": (6,), "t2": (5,)}
    assert all(v.dtype == torch.float32 and not v.any() for v in state.values())
    assert "embedding_bags.t1.momentum1" in dict(m.named_buffers())
    assert {k: tuple(v.shape) for k, v in ebc([cfg("t", 4, 3, ["f"])], optimizer="adagrad").optimizer_state().items()} == {"t": (4, 3)}
    assert ebc([cfg("t", 4, 3, ["f"])], optimizer="sgd").optimizer_state() == {}


def test_ebc_fused_mode_still_differentiates_per_sample_weights():
    plain = ebc([cfg("t", 5, 3, ["f"])], is_weighted=True)
    fused = ebc([cfg("t", 5, 3, ["f"])], is_weighted=True, optimizer="sgd", lr=0.0)
    grads = []
    for m in (plain, fused):
        w = torch.tensor([0.5, 1.5, 2.0], requires_grad=True)
        kjt = KeyedJaggedTensor(["f"], torch.tensor([0, 4, 2]), lengths=torch.tensor([2, 1]), weights=w)
        (m(kjt).values() * torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, 1.0]])).sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[1], grads[0])
    assert torch.equal(fused.embedding_bags["t"].weight, plain.embedding_bags["t"].weight)  # lr 0: unchanged


# --- EmbeddingCollection ---------------------------------------------------------------------------------
def ec(tables, **kwargs):
    torch.manual_seed(0)
    return EmbeddingCollection(tables, **kwargs)


def ecfg(name, rows, dim, features, **kwargs):
    return EmbeddingConfig(rows, dim, name=name, feature_names=list(features), **kwargs)


def test_ec_rng_order_is_interleaved():
    torch.manual_seed(5)
    m = EmbeddingCollection([ecfg("a", 4, 3, ["x"]), ecfg("b", 6, 3, ["y"], weight_init_min=0.0, weight_init_max=1.0)])
    torch.manual_seed(5)
    wa = torch.empty(4, 3).normal_()
    wa.uniform_(-math.sqrt(1 / 4), math.sqrt(1 / 4))
    wb = torch.empty(6, 3).normal_()
    wb.uniform_(0.0, 1.0)
    assert torch.equal(m.embeddings["a"].weight, wa) and torch.equal(m.embeddings["b"].weight, wb)
    assert list(m.state_dict()) == ["embeddings.a.weight", "embeddings.b.weight"]


def test_ec_lookup_lengths_indices_and_shared_names():
    m = ec([ecfg("a", 6, 2, ["x", "y"]), ecfg("b", 5, 2, ["x"])], need_indices=True)
    bags = {"y": [[4], [], [0, 0]], "x": [[1, 2], [3], []]}
    out = m(kjt_from_bags(bags))
    assert list(out) == ["x@a", "y", "x@b"]
    for name, tname, key in (("x@a", "a", "x"), ("y", "a", "y"), ("x@b", "b", "x")):
        jt = out[name]
        assert isinstance(jt, JaggedTensor)
        ids = [i for bag in bags[key] for i in bag]
        np.testing.assert_allclose(jt.values().detach().numpy(), table(m, tname)[ids].reshape(-1, 2), rtol=1e-7)
        assert jt.values().dtype == torch.float32
        assert jt.lengths().tolist() == [len(bag) for bag in bags[key]]
        assert jt.weights().tolist() == ids


def test_ec_without_need_indices_has_no_weights_and_empty_features_have_zero_rows():
    m = ec([ecfg("a", 6, 3, ["x", "y"])])
    out = m(kjt_from_bags({"x": [[], []], "y": [[5], []]}))
    assert out["x"].weights_or_none() is None
    assert tuple(out["x"].values().shape) == (0, 3) and out["x"].lengths().tolist() == [0, 0]


def test_ec_batch_size_zero_gives_empty_jagged_tensors():
    m = ec([ecfg("a", 6, 3, ["x"])], need_indices=True)
    kjt = KeyedJaggedTensor(["x"], torch.empty(0, dtype=torch.int64), lengths=torch.empty(0, dtype=torch.int64))
    jt = m(kjt)["x"]
    assert tuple(jt.values().shape) == (0, 3) and jt.lengths().numel() == 0 and jt.weights().numel() == 0


def test_ec_key_order_independent():
    m = ec([ecfg("a", 6, 2, ["x"]), ecfg("b", 6, 2, ["y"])])
    bags = {"x": [[1, 2], [3]], "y": [[0], [5, 5]]}
    first = m(kjt_from_bags(bags))
    second = m(kjt_from_bags({"y": bags["y"], "x": bags["x"]}))
    for name in ("x", "y"):
        assert torch.equal(first[name].values(), second[name].values())


def test_ec_accessors():
    tables = [ecfg("a", 6, 2, []), ecfg("b", 3, 2, ["x"])]
    m = ec(tables, need_indices=True, use_gather_select=True)
    assert tables[0].feature_names == ["a"]
    assert m.embedding_dim() == 2 and m.need_indices() and m.use_gather_select()
    assert m.embedding_configs() is tables and m.embedding_names_by_table() == [["a"], ["x"]]
    assert m.use_gather_select_per_sharding() is None and m.device == torch.device("cpu")
    assert EmbeddingCollection([]).embedding_dim() == -1 and EmbeddingCollection([])(kjt_from_bags({"x": [[0]]})) == {}


def test_ec_errors():
    with pytest.raises(ValueError, match="table 'b' expected embedding_dim 2 \\(that of 'a'\\), got 3"):
        EmbeddingCollection([ecfg("a", 6, 2, ["x"]), ecfg("b", 6, 3, ["y"])])
    m = ec([ecfg("a", 6, 2, ["x"]), ecfg("b", 3, 2, ["y"])])
    with pytest.raises(KeyError, match="expected key 'y' \\(a feature of table 'b'\\)"):
        m(kjt_from_bags({"x": [[0]]}))
    with pytest.raises(IndexError, match=r"feature 'y' \(table 'b'\): ids expected values in \[0, 3\), got id 3 at position 0"):
        m(kjt_from_bags({"x": [[0]], "y": [[3]]}))


def test_ec_gradient_is_the_scatter_of_the_output_gradient():
    m = ec([ecfg("a", 5, 2, ["x", "y"])])
    bags = {"x": [[0, 4], [4]], "y": [[], [2]]}
    out = m(kjt_from_bags(bags))
    rng = np.random.default_rng(3)
    Gx, Gy = rng.standard_normal((3, 2)), rng.standard_normal((1, 2))
    ((out["x"].values() * torch.tensor(Gx, dtype=torch.float32)).sum()
     + (out["y"].values() * torch.tensor(Gy, dtype=torch.float32)).sum()).backward()
    expected = np.zeros((5, 2))
    for i, g in zip([0, 4, 4, 2], [Gx[0], Gx[1], Gx[2], Gy[0]]):
        expected[i] += g
    np.testing.assert_allclose(m.embeddings["a"].weight.grad.numpy(), expected, rtol=1e-6)


def test_ec_gradcheck_on_float64_tables():
    m = ec([ecfg("a", 4, 2, ["x"]), ecfg("b", 3, 2, ["y", "x"])]).double()
    kjt = kjt_from_bags({"x": [[0, 2], [], [2]], "y": [[2], [1, 2], []]})

    def f(Wa, Wb):
        out = torch.func.functional_call(m, {"embeddings.a.weight": Wa, "embeddings.b.weight": Wb}, (kjt,))
        return tuple(jt.values() for jt in out.values())

    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(4, 2, generator=gen, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)]
    assert all(v.dtype == torch.float64 for v in f(*inputs))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad"])
def test_ec_fused_steps_match_manual_updates(rule):
    lr, eps = 0.2, 1e-2
    fused = ec([ecfg("a", 5, 2, ["x", "y"])], optimizer=rule, lr=lr, eps=eps)
    reference = ec([ecfg("a", 5, 2, ["x", "y"])])
    W = table(reference, "a")
    state = None if rule == "sgd" else np.zeros((5, 2) if rule == "adagrad" else (5,))
    rng = np.random.default_rng(4)
    for bags in ({"x": [[0, 4], [4]], "y": [[], [2]]}, {"x": [[1], []], "y": [[1, 1], [3]]}):
        kjt = kjt_from_bags(bags)
        set_tables(reference, {"a": torch.tensor(W, dtype=torch.float32)})
        reference.zero_grad()
        grads = {}
        for m in (reference, fused):
            out = m(kjt)
            loss = 0
            for name in ("x", "y"):
                grads.setdefault(name, torch.tensor(rng.standard_normal(tuple(out[name].values().shape)), dtype=torch.float32))
                loss = loss + (out[name].values() * grads[name]).sum()
            loss.backward()
        W, state = manual_step(W, state, reference.embeddings["a"].weight.grad.double().numpy(), rule, lr, eps)
    assert fused.embeddings["a"].weight.grad is None
    np.testing.assert_allclose(table(fused, "a"), W, rtol=1e-5, atol=1e-6)
    if rule != "sgd":
        np.testing.assert_allclose(fused.optimizer_state()["a"].numpy(), state, rtol=1e-5, atol=1e-7)


# --- the meta device (TorchRec builds collections there before materialising them) --------------------
META = torch.device("meta")


def meta_kjt(bags, weights=None):
    kjt = kjt_from_bags(bags, weights)
    return kjt.to(META)


@pytest.mark.parametrize("optimizer", [None, "sgd", "rowwise_adagrad"])
def test_ebc_on_meta_has_torchrecs_state_and_output_shapes(optimizer):
    kwargs = {"optimizer": optimizer} if optimizer else {}
    m = EmbeddingBagCollection([cfg("t1", 5, 3, ["f1"]), cfg("t2", 7, 4, ["f2"], pooling=MEAN)], device=META,
                               **kwargs)
    state = m.state_dict()
    assert [(v.device.type, tuple(v.shape), v.dtype) for v in state.values()] == [
        ("meta", (5, 3), torch.float32), ("meta", (7, 4), torch.float32)]
    m.reset_parameters()  # nothing to initialise on meta
    out = m(meta_kjt({"f1": [[0, 4], [], [1]], "f2": [[6], [2, 3], []]}))
    assert out.keys() == ["f1", "f2"] and out.length_per_key() == [3, 4]
    values = out.values()
    assert values.device.type == "meta" and tuple(values.shape) == (3, 7) and values.dtype == torch.float32
    values.sum().backward()
    grads = [p.grad for p in m.parameters()]
    if optimizer is None:
        assert [(g.device.type, tuple(g.shape)) for g in grads] == [("meta", (5, 3)), ("meta", (7, 4))]
    else:
        assert grads == [None, None]


def test_ebc_on_meta_takes_features_from_the_cpu_and_weights():
    m = EmbeddingBagCollection([cfg("t", 5, 3, ["f"])], is_weighted=True, device=META)
    bags = {"f": [[0, 1], []]}
    cpu_out = m(kjt_from_bags(bags, {"f": [[0.5, 2.0], []]})).values()
    meta_out = m(meta_kjt(bags, {"f": [[0.5, 2.0], []]})).values()
    assert cpu_out.device.type == meta_out.device.type == "meta"
    assert tuple(cpu_out.shape) == tuple(meta_out.shape) == (2, 3)


def test_ebc_on_meta_keeps_the_layout_checks():
    m = EmbeddingBagCollection([cfg("t1", 4, 2, ["f1"]), cfg("t2", 4, 2, ["f2"])], device=META)
    with pytest.raises(KeyError, match=r"expected key 'f2' \(a feature of table 't2'\)"):
        m(meta_kjt({"f1": [[0]]}))
    kjt = KeyedJaggedTensor(["f1", "f2"], torch.tensor([0.0, 1.0], device=META), lengths=torch.tensor([1, 1], device=META))
    with pytest.raises(TypeError, match="expected 1-D integer ids, got torch.float32"):
        m(kjt)
    weighted = EmbeddingBagCollection([cfg("t", 4, 2, ["f"])], is_weighted=True, device=META)
    with pytest.raises(ValueError, match="features expected weights"):
        weighted(meta_kjt({"f": [[0]]}))
    # Ids have no values on meta: a range check has nothing to read (TorchRec's meta lookup does not check either).
    assert tuple(m(meta_kjt({"f1": [[9]], "f2": [[-1]]})).values().shape) == (1, 4)


def test_ebc_built_on_meta_materialises_and_loads_a_state_dict():
    tables = [cfg("t1", 5, 3, ["f1"]), cfg("t2", 7, 4, ["f2"])]
    m = EmbeddingBagCollection(tables, device=META).to_empty(device="cpu")
    source = ebc(tables)
    m.load_state_dict(source.state_dict())
    kjt = kjt_from_bags({"f1": [[0, 4], []], "f2": [[6], [2, 3]]})
    expected = np.concatenate([pooled(table(source, "t1"), [[0, 4], []]), pooled(table(source, "t2"), [[6], [2, 3]])],
                              axis=1)
    np.testing.assert_allclose(m(kjt).values().detach().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_ec_on_meta_with_one_key():
    tables = [ecfg("a", 6, 2, ["x"]), ecfg("b", 4, 2, ["x"])]
    m = EmbeddingCollection(tables, device=META, need_indices=True)
    assert [(v.device.type, tuple(v.shape)) for v in m.state_dict().values()] == [("meta", (6, 2)), ("meta", (4, 2))]
    out = m(meta_kjt({"x": [[0, 3], [], [1]]}))
    assert list(out) == ["x@a", "x@b"]
    for jt in out.values():
        assert jt.values().device.type == "meta" and tuple(jt.values().shape) == (3, 2)
        assert tuple(jt.lengths().shape) == (3,) and tuple(jt.weights().shape) == (3,)
    sum(jt.values().sum() for jt in out.values()).backward()
    assert [tuple(p.grad.shape) for p in m.parameters()] == [(6, 2), (4, 2)]


def test_ec_on_meta_with_several_keys_says_why_it_cannot_split():
    m = EmbeddingCollection([ecfg("a", 6, 2, ["x"]), ecfg("b", 4, 2, ["y"])], device=META)
    with pytest.raises(ValueError, match=r"meta device expected one key .*got 2 keys \['x', 'y'\]"):
        m(meta_kjt({"x": [[0]], "y": [[1]]}))


def test_meta_output_shapes_agree_with_torchrec():
    torchrec = pytest.importorskip("torchrec", reason="TorchRec is the oracle for the meta-device shapes")
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor as TorchRecKJT

    configs = [dict(name="t1", embedding_dim=3, num_embeddings=5, feature_names=["f1"]),
               dict(name="t2", embedding_dim=4, num_embeddings=7, feature_names=["f1", "f2"])]
    ours = EmbeddingBagCollection([EmbeddingBagConfig(**c) for c in configs], device=META)
    theirs = torchrec.EmbeddingBagCollection([torchrec.EmbeddingBagConfig(**c) for c in configs], device=META)
    assert {k: (tuple(v.shape), v.dtype) for k, v in ours.state_dict().items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in theirs.state_dict().items()}
    values, lengths = torch.tensor([1, 2, 3, 4], device=META), torch.tensor([2, 0, 1, 1], device=META)
    got = ours(KeyedJaggedTensor(["f1", "f2"], values, lengths=lengths))
    want = theirs(TorchRecKJT(keys=["f1", "f2"], values=values, lengths=lengths))
    assert got.keys() == want.keys() and got.length_per_key() == want.length_per_key()
    assert (tuple(got.values().shape), got.values().device) == (tuple(want.values().shape), want.values().device)
