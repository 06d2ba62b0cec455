"""accel's embedding modules against TorchRec 1.8 itself: same seed, same tables; state dicts both ways;
same outputs on the same (TorchRec) KJT; feature processors, towers and the jagged helpers alike.

Skipped when TorchRec is not installed (it is optional: scripts/install-torchrec.sh installs it).
"""

import numpy as np
import pytest
import torch

pytest.importorskip("torchrec", reason="TorchRec 1.8 is optional (scripts/install-torchrec.sh); these are interop checks")
from torchrec.modules import embedding_configs as trec_configs  # noqa: E402
from torchrec.modules import embedding_modules as trec_modules  # noqa: E402
from torchrec.modules import embedding_tower as trec_tower  # noqa: E402
from torchrec.modules import feature_processor as trec_fp  # noqa: E402
from torchrec.modules import utils as trec_utils  # noqa: E402
from torchrec.sparse.jagged_tensor import JaggedTensor as TrecJT  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor as TrecKJT  # noqa: E402

from accel.modules import embedding_configs as ours_configs  # noqa: E402
from accel.modules import embedding_modules as ours_modules  # noqa: E402
from accel.modules import embedding_tower as ours_tower  # noqa: E402
from accel.modules import feature_processor as ours_fp  # noqa: E402
from accel.modules import utils as ours_utils  # noqa: E402

# (name, rows, dim, features, pooling, data type)
BAG_TABLES = [
    ("t1", 7, 3, ["f1", "f2"], "SUM", "FP32"),
    ("t2", 5, 4, ["f1"], "SUM", "FP32"),
    ("t3", 9, 2, ["f3"], "MEAN", "FP32"),
    ("t4", 6, 2, ["f2"], "SUM", "FP16"),
]
SEQ_TABLES = [("a", 6, 3, ["x", "y"], None, "FP32"), ("b", 4, 3, ["x"], None, "FP32"), ("c", 5, 3, ["z"], None, "FP16")]


def configs(lib, spec, bag=True):
    cls = lib.EmbeddingBagConfig if bag else lib.EmbeddingConfig
    out = []
    for name, rows, dim, features, pooling, data_type in spec:
        kwargs = dict(name=name, feature_names=list(features), data_type=lib.DataType[data_type])
        if bag:
            kwargs["pooling"] = lib.PoolingType[pooling]
        out.append(cls(rows, dim, **kwargs))
    return out


def build(cls, lib, spec, seed, bag=True, **kwargs):
    torch.manual_seed(seed)
    return cls(configs(lib, spec, bag), **kwargs)


def trec_kjt(keys, rng, rows=5, batch=4, weighted=False):
    """A TorchRec KJT with empty bags, ids < rows, in the given key order."""
    lengths = rng.integers(0, 4, size=len(keys) * batch)
    lengths[::3] = 0
    n = int(lengths.sum())
    return TrecKJT(
        keys=list(keys),
        values=torch.tensor(rng.integers(0, rows, size=n), dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int64),
        weights=torch.tensor(rng.uniform(0.5, 2.0, size=n), dtype=torch.float32) if weighted else None,
    )


def assert_same_state(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in b:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


# --- EmbeddingBagCollection ------------------------------------------------------------------------------
def test_ebc_same_seed_same_parameters():
    ours = build(ours_modules.EmbeddingBagCollection, ours_configs, BAG_TABLES, seed=3)
    theirs = build(trec_modules.EmbeddingBagCollection, trec_configs, BAG_TABLES, seed=3)
    assert_same_state(ours, theirs)


@pytest.mark.parametrize("weighted", [False, True])
def test_ebc_loads_torchrec_state_and_agrees_on_torchrec_kjts(weighted):
    # TorchRec has no weighted MEAN, and wants float16 weights for a float16 table.
    spec = [t for t in BAG_TABLES if not (weighted and (t[4] == "MEAN" or t[5] == "FP16"))]
    theirs = build(trec_modules.EmbeddingBagCollection, trec_configs, spec, seed=1, is_weighted=weighted)
    ours = build(ours_modules.EmbeddingBagCollection, ours_configs, spec, seed=2, is_weighted=weighted)
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(0)
    keys = sorted({f for t in spec for f in t[3]})
    for order in (keys, keys[::-1]):
        kjt = trec_kjt(order + ["extra"], rng, weighted=weighted)
        expected, got = theirs(kjt), ours(kjt)
        assert got.keys() == expected.keys() and got.length_per_key() == expected.length_per_key()
        assert got.offset_per_key() == list(expected.offset_per_key())
        # float32 against float32 (the float16 table accumulates in float16 in TorchRec, float32 here).
        torch.testing.assert_close(got.values(), expected.values(), rtol=2e-3, atol=2e-3)
    fp32 = [t for t in spec if t[5] == "FP32" and t[4] == "SUM"]
    theirs32 = build(trec_modules.EmbeddingBagCollection, trec_configs, fp32, seed=1, is_weighted=weighted)
    ours32 = build(ours_modules.EmbeddingBagCollection, ours_configs, fp32, seed=1, is_weighted=weighted)
    kjt = trec_kjt(sorted({f for t in fp32 for f in t[3]}), rng, weighted=weighted)
    torch.testing.assert_close(ours32(kjt).values(), theirs32(kjt).values(), rtol=1e-6, atol=1e-6)


def test_ebc_state_dict_loads_into_torchrec():
    ours = build(ours_modules.EmbeddingBagCollection, ours_configs, BAG_TABLES, seed=5, optimizer="adagrad")
    theirs = build(trec_modules.EmbeddingBagCollection, trec_configs, BAG_TABLES, seed=6)
    theirs.load_state_dict(ours.state_dict())  # strict: the optimizer state is not in it
    assert_same_state(ours, theirs)


def test_ebc_seed_example_matches_torchrec():
    spec = [("t1", 10, 3, ["f1"], "SUM", "FP32"), ("t2", 10, 4, ["f2"], "SUM", "FP32")]
    kjt = TrecKJT(keys=["f1", "f2"], values=torch.arange(8), offsets=torch.tensor([0, 2, 2, 3, 4, 5, 8]))
    theirs = build(trec_modules.EmbeddingBagCollection, trec_configs, spec, seed=0)
    ours = build(ours_modules.EmbeddingBagCollection, ours_configs, spec, seed=0)
    torch.testing.assert_close(ours(kjt).values(), theirs(kjt).values(), rtol=1e-6, atol=1e-7)


def test_bf16_tables_are_really_bfloat16_where_torchrec_stores_float16():
    spec = [("t", 4, 2, ["f"], "SUM", "BF16")]
    theirs = build(trec_modules.EmbeddingBagCollection, trec_configs, spec, seed=0)
    ours = build(ours_modules.EmbeddingBagCollection, ours_configs, spec, seed=0)
    assert theirs.embedding_bags["t"].weight.dtype == torch.float16
    assert ours.embedding_bags["t"].weight.dtype == torch.bfloat16


def test_embedding_names_match_torchrec():
    for spec in (BAG_TABLES, [("a", 3, 2, ["x", "y"], "SUM", "FP32"), ("b", 3, 2, ["y", "x", "z"], "SUM", "FP32")]):
        assert ours_modules.get_embedding_names_by_table(configs(ours_configs, spec)) == (
            trec_modules.get_embedding_names_by_table(configs(trec_configs, spec))
        )


# --- EmbeddingCollection ---------------------------------------------------------------------------------
def test_ec_same_seed_same_parameters():
    ours = build(ours_modules.EmbeddingCollection, ours_configs, SEQ_TABLES, seed=4, bag=False)
    theirs = build(trec_modules.EmbeddingCollection, trec_configs, SEQ_TABLES, seed=4, bag=False)
    assert_same_state(ours, theirs)


@pytest.mark.parametrize("need_indices", [False, True])
def test_ec_loads_torchrec_state_and_agrees(need_indices):
    theirs = build(trec_modules.EmbeddingCollection, trec_configs, SEQ_TABLES, seed=1, bag=False, need_indices=need_indices)
    ours = build(ours_modules.EmbeddingCollection, ours_configs, SEQ_TABLES, seed=2, bag=False, need_indices=need_indices)
    ours.load_state_dict(theirs.state_dict())
    kjt = trec_kjt(["z", "y", "x"], np.random.default_rng(1), rows=4)
    expected, got = theirs(kjt), ours(kjt)
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name].values(), expected[name].values(), rtol=0, atol=0)
        assert torch.equal(got[name].lengths(), expected[name].lengths())
        if need_indices:
            assert torch.equal(got[name].weights(), expected[name].weights())
    back = build(trec_modules.EmbeddingCollection, trec_configs, SEQ_TABLES, seed=9, bag=False)
    back.load_state_dict(ours.state_dict())
    assert_same_state(ours, back)


# --- feature processors ----------------------------------------------------------------------------------
def test_position_weighted_module_matches_torchrec():
    lengths = {"f1": 3, "f2": 4}
    theirs, ours = trec_fp.PositionWeightedModule(lengths), ours_fp.PositionWeightedModule(lengths)
    with torch.no_grad():
        theirs.position_weights["f1"].copy_(torch.tensor([1.0, 2.0, 3.0]))
        theirs.position_weights["f2"].copy_(torch.tensor([0.5, -1.0, 4.0, 2.0]))
    ours.load_state_dict(theirs.state_dict())
    def features():
        return {
            "f1": TrecJT(values=torch.arange(5), lengths=torch.tensor([3, 0, 2])),
            "f2": TrecJT(values=torch.arange(6), lengths=torch.tensor([4, 1, 1])),
        }
    expected, got = theirs(features()), ours(features())
    for key in lengths:
        assert torch.equal(got[key].weights(), expected[key].weights())
    kjt = TrecKJT(keys=["f0", "f1"], values=torch.arange(7), lengths=torch.tensor([1, 2, 0, 2, 1, 1]))
    theirs_p, ours_p = trec_fp.PositionWeightedProcessor({"f1": 3}), ours_fp.PositionWeightedProcessor({"f1": 3})
    with torch.no_grad():
        theirs_p.position_weights["f1"].copy_(torch.tensor([7.0, 8.0, 9.0]))
    ours_p.load_state_dict(theirs_p.state_dict())
    e, g = theirs_p(kjt), ours_p(kjt)
    assert g.keys() == e.keys() and torch.equal(g.weights(), e.weights()) and torch.equal(g.values(), e.values())
    offsets = torch.tensor([0, 2, 2, 5])
    assert torch.equal(ours_fp.offsets_to_range_traceble(offsets, torch.arange(5)),
                       trec_fp.offsets_to_range_traceble(offsets, torch.arange(5)))


# --- towers and helpers ----------------------------------------------------------------------------------
def test_tower_collection_routes_torchrec_modules_and_keeps_their_keys():
    spec = [("t", 5, 2, ["f"], "SUM", "FP32")]
    torch.manual_seed(0)
    trec_ebc = trec_modules.EmbeddingBagCollection(configs(trec_configs, spec), is_weighted=True)
    assert ours_tower.tower_input_params(trec_ebc) == trec_tower.tower_input_params(trec_ebc) == (False, True)
    ours = ours_tower.EmbeddingTowerCollection([ours_tower.EmbeddingTower(trec_ebc, Values())])
    theirs = trec_tower.EmbeddingTowerCollection([trec_tower.EmbeddingTower(trec_ebc, Values())])
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["towers.0.embedding.embedding_bags.t.weight"]
    kjt = trec_kjt(["f"], np.random.default_rng(2), weighted=True)
    assert torch.equal(ours(weighted_features=kjt), theirs(weighted_features=kjt))


class Values(torch.nn.Module):
    """KeyedTensor -> its values."""

    def forward(self, kt):
        return kt.values()


def test_construct_jagged_tensors_matches_torchrec():
    kjt = TrecKJT(keys=["a", "b", "c"], values=torch.arange(9), lengths=torch.tensor([2, 0, 1, 1, 2, 0, 3, 0, 0]))
    rows = torch.randn(9, 2, generator=torch.Generator().manual_seed(0))
    names = ["a", "b", "c"]
    expected = trec_utils.construct_jagged_tensors(rows, kjt, names, need_indices=True)
    got = ours_utils.construct_jagged_tensors(rows, kjt, names, need_indices=True)
    reverse = torch.tensor([8, 7, 6, 5, 4, 3, 2, 1, 0])
    expected_rev = trec_utils.construct_jagged_tensors(rows, kjt, names, reverse_indices=reverse)
    got_rev = ours_utils.construct_jagged_tensors(rows, kjt, names, reverse_indices=reverse)
    lengths = kjt.lengths().view(3, 3)
    expected_inf = trec_utils.construct_jagged_tensors_inference(rows, lengths, kjt.values(), names, need_indices=True)
    got_inf = ours_utils.construct_jagged_tensors_inference(rows, lengths, kjt.values(), names, need_indices=True)
    for e_dict, g_dict in ((expected, got), (expected_rev, got_rev), (expected_inf, got_inf)):
        assert list(g_dict) == list(e_dict)
        for name in e_dict:
            assert torch.equal(g_dict[name].values(), e_dict[name].values())
            assert torch.equal(g_dict[name].lengths(), e_dict[name].lengths())
            e_w = e_dict[name].weights_or_none()
            assert (g_dict[name].weights_or_none() is None) == (e_w is None)
            if e_w is not None:
                assert torch.equal(g_dict[name].weights(), e_w)
