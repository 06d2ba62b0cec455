"""refimpl.modules.mc_embedding_modules: embedding collections behind managed collision (semantics.md 12).

The remapped ids follow TorchRec's own test (test_zch_ebc_ec_train, semantics.md 14 TV15); the
embeddings are checked against plain lookups of the table written here, and the re-initialised rows
against draws from a copy of the generator.
"""

import numpy as np
import pytest

from refimpl.modules.embedding_configs import (
    EmbeddingBagConfig,
    EmbeddingConfig,
    PoolingType,
)
from refimpl.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingCollection,
)
from refimpl.modules.mc_embedding_modules import (
    BaseManagedCollisionEmbeddingCollection,
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
    configs_match,
    evict,
    evict_as_torchrec,
)
from refimpl.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHManagedCollisionModule,
)
from refimpl.sparse import KeyedJaggedTensor

Z = 20


def _configs(cls=EmbeddingBagConfig, **kwargs):
    return [cls(Z, 3, name="t1", feature_names=["f1", "f2"], **kwargs)]


def _mcc(configs, policy=None, I=2, offset=0):
    module = MCHManagedCollisionModule(zch_size=Z, device=None, eviction_policy=policy or DistanceLFU_EvictionPolicy(),
                                       eviction_interval=I, output_global_offset=offset)
    return ManagedCollisionCollection({"t1": module}, configs)


def _mc_ebc(reset=True, seed=5, **kwargs):
    configs = _configs()
    ebc = EmbeddingBagCollection(configs, rng=np.random.default_rng(0))
    return ManagedCollisionEmbeddingBagCollection(ebc, _mcc(configs), return_remapped_features=True,
                                                  reinitialize_evicted_rows=reset, rng=np.random.default_rng(seed), **kwargs)


def _kjt(f1_start, f2_start=1010, f3_start=1020):
    # B = 2: each feature's ten ids in a bag of 6, a bag of 4; f3 belongs to no table and is dropped
    values = np.concatenate([np.arange(s, s + 10) for s in (f1_start, f2_start, f3_start)])
    return KeyedJaggedTensor(["f1", "f2", "f3"], values, lengths=np.array([6, 4, 6, 4, 6, 4]))


def _pooled_by_loops(W, ids, lengths):
    out, start = np.zeros((len(lengths), W.shape[1])), 0
    for b, L in enumerate(lengths):
        for j in range(start, start + L):
            out[b] += W[ids[j]]
        start += L
    return out


def _weight(m):
    return m.state_dict()["_embedding_module.embedding_bags.t1.weight"]


# --- TorchRec's test_zch_ebc_ec_train ----------------------------------------------------------------
EXPECTED_REMAP = [
    (1000, [19] * 10, [19] * 10),
    (1000, list(range(10)), list(range(10, 19)) + [19]),
    (2000, [19] * 10, list(range(10, 19)) + [19]),
    (2000, list(range(1, 10)) + [19], list(range(10, 19)) + [0]),
]


def test_remapped_ids_follow_torchrec_test():
    m = _mc_ebc(reset=False)
    assert int(m._managed_collision_collection.open_slots()["t1"][0]) == 19
    for call, (f1_start, f1_out, f2_out) in enumerate(EXPECTED_REMAP, start=1):
        _, remapped = m(_kjt(f1_start))
        assert remapped.keys() == ["f1", "f2"]
        np.testing.assert_array_equal(remapped["f1"].values(), f1_out, err_msg=f"call {call}")
        np.testing.assert_array_equal(remapped["f2"].values(), f2_out, err_msg=f"call {call}")
        if call == 1:
            assert int(m._managed_collision_collection.open_slots()["t1"][0]) == 19
        if call == 2:
            assert int(m._managed_collision_collection.open_slots()["t1"][0]) == 0


def test_embeddings_are_a_plain_lookup_of_the_remapped_ids():
    m = _mc_ebc()
    m(_kjt(1000))
    emb, remapped = m(_kjt(1000))
    W = _weight(m)  # call 2 re-initialises its evicted rows before the lookup reads them
    assert emb.keys() == ["f1", "f2"]
    np.testing.assert_allclose(emb["f1"], _pooled_by_loops(W, remapped["f1"].values(), [6, 4]), rtol=1e-15)
    np.testing.assert_allclose(emb["f2"], _pooled_by_loops(W, remapped["f2"].values(), [6, 4]), rtol=1e-15)


def test_evicted_rows_are_reinitialised_from_the_generator():
    m = _mc_ebc(seed=11)
    m(_kjt(1000))
    before = _weight(m).copy()
    m(_kjt(1000))  # the round admits 19 ids: output ids 0..18 change owner
    after = _weight(m)
    twin = _mcc(_configs())  # the same stream through a bare collection tells the evicted ids, in order
    twin(_kjt(1000))
    twin(_kjt(1000))
    E = twin.evict()["t1"]
    np.testing.assert_array_equal(np.sort(E), np.arange(19))
    bound = np.sqrt(1 / Z)
    draws = np.random.default_rng(11).uniform(-bound, bound, (19, 3))  # row-major, one row per id of E
    np.testing.assert_array_equal(after[E], draws)
    np.testing.assert_array_equal(after[19], before[19])  # the miss row is never an eviction
    assert all(v is None for v in m._managed_collision_collection.evict().values())  # consumed by forward


def test_torchrec_no_op_leaves_rows_in_place():
    m = _mc_ebc(reset=False)
    m(_kjt(1000))
    before = _weight(m).copy()
    m(_kjt(1000))
    np.testing.assert_array_equal(_weight(m), before)
    assert evict_as_torchrec({"t1": np.array([0, 1])}, m._embedding_module) is None
    np.testing.assert_array_equal(_weight(m), before)


def test_eval_changes_no_table():
    m = _mc_ebc()
    m(_kjt(1000))
    m(_kjt(1000))
    before = {k: v.copy() for k, v in m.state_dict().items()}
    m.eval()
    assert not m._managed_collision_collection.module_of("t1").training
    _, remapped = m(_kjt(2000))
    np.testing.assert_array_equal(remapped["f1"].values(), [19] * 10)
    for key, value in before.items():
        np.testing.assert_array_equal(m.state_dict()[key], value)


def test_lookup_remapped_lengths_mask():
    m = _mc_ebc()
    kjt = KeyedJaggedTensor(["f1", "f2"], np.array([5, 6, 7]), lengths=np.array([2, 0, 0, 1]))
    np.testing.assert_array_equal(m.lookup_remapped_lengths_mask(kjt), [True, False, False, True])


def test_state_dict_keys():
    keys = list(_mc_ebc().state_dict())
    prefix = "_managed_collision_collection._managed_collision_modules.t1."
    assert keys == [prefix + k for k in ("_output_segments_tensor", "_current_iter_tensor", "_mch_sorted_raw_ids",
                                         "_mch_remapped_ids_mapping", "_mch_counts", "_mch_last_access_iter")] + [
        "_embedding_module.embedding_bags.t1.weight"]


def test_state_dict_round_trip_resorts_and_continues():
    a = _mc_ebc(reset=False)
    a(_kjt(1000))
    a(_kjt(1000))
    b = _mc_ebc(reset=False, seed=99)
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)
    out_a, rem_a = a(_kjt(2000))
    out_b, rem_b = b(_kjt(2000))
    np.testing.assert_array_equal(rem_a.values(), rem_b.values())
    np.testing.assert_array_equal(out_a.values(), out_b.values())


def test_embedding_collection_variant():
    configs = _configs(EmbeddingConfig)
    ec = EmbeddingCollection(configs, rng=np.random.default_rng(1))
    m = ManagedCollisionEmbeddingCollection(ec, _mcc(configs, LFU_EvictionPolicy(), I=1), return_remapped_features=True,
                                            rng=np.random.default_rng(2))
    emb, remapped = m(_kjt(1000))
    W = m.state_dict()["_embedding_module.embeddings.t1.weight"]  # evicted rows re-initialised before the lookup
    assert list(emb) == ["f1", "f2"]
    np.testing.assert_array_equal(emb["f1"].values(), W[remapped["f1"].values()])
    np.testing.assert_array_equal(emb["f1"].lengths(), [6, 4])
    assert list(m.state_dict())[-1] == "_embedding_module.embeddings.t1.weight"
    assert isinstance(m, BaseManagedCollisionEmbeddingCollection)


# --- evict() itself ----------------------------------------------------------------------------------
def test_evict_applies_init_fn_to_the_evicted_rows_only():
    def sevens(W):
        W[:] = 7.0

    configs = [EmbeddingBagConfig(4, 2, name="a", feature_names=["x"], init_fn=sevens),
               EmbeddingBagConfig(3, 2, name="b", feature_names=["y"])]
    ebc = EmbeddingBagCollection(configs, rng=np.random.default_rng(0))
    ebc.load_state_dict({"embedding_bags.a.weight": np.zeros((4, 2)), "embedding_bags.b.weight": np.zeros((3, 2))})
    evict({"a": np.array([2, 0]), "b": None}, ebc, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(ebc.state_dict()["embedding_bags.a.weight"], [[7, 7], [0, 0], [7, 7], [0, 0]])
    np.testing.assert_array_equal(ebc.state_dict()["embedding_bags.b.weight"], np.zeros((3, 2)))


def test_evict_bad_input_changes_nothing():
    configs = [EmbeddingBagConfig(4, 2, name="a", feature_names=["x"])]
    ebc = EmbeddingBagCollection(configs, rng=np.random.default_rng(0))
    before = ebc.state_dict()["embedding_bags.a.weight"].copy()
    with pytest.raises(IndexError, match=r"table 'a': evicted ids expected rows in \[0, 4\), got 4"):
        evict({"a": np.array([0, 4])}, ebc, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"evictions expected tables of the embedding module \['a'\], got 'z'"):
        evict({"a": np.array([1]), "z": np.array([0])}, ebc, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(ebc.state_dict()["embedding_bags.a.weight"], before)


# --- configuration and bad input ---------------------------------------------------------------------
def test_equal_configs_are_accepted():
    ebc = EmbeddingBagCollection(_configs(), rng=np.random.default_rng(0))
    m = ManagedCollisionEmbeddingBagCollection(ebc, _mcc(_configs()))  # equal, not the same objects
    assert m(_kjt(1000))[1] is None
    assert configs_match(_configs(), _configs())
    assert not configs_match(_configs(), _configs(pooling=PoolingType.MEAN))


def test_different_configs_are_rejected():
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(Z, 4, name="t1", feature_names=["f1", "f2"])],
                                 rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"configs expected to equal the managed collision collection's .* 4"):
        ManagedCollisionEmbeddingBagCollection(ebc, _mcc(_configs()))


def test_wrong_module_kinds_are_rejected():
    configs = _configs(EmbeddingConfig)
    ec = EmbeddingCollection(configs, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="embedding_bag_collection expected an EmbeddingBagCollection, got Embedding"):
        ManagedCollisionEmbeddingBagCollection(ec, _mcc(configs))
    with pytest.raises(TypeError, match="managed_collision_collection expected a ManagedCollisionCollection, got dict"):
        ManagedCollisionEmbeddingCollection(ec, {})


def test_an_offset_table_is_rejected():
    configs = _configs()
    ebc = EmbeddingBagCollection(configs, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="table 't1': output_global_offset expected 0 .* got 5"):
        ManagedCollisionEmbeddingBagCollection(ebc, _mcc(configs, offset=5))


def test_missing_feature_or_weights_raise_before_any_state_changes():
    m = _mc_ebc()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"expected key 'f2' \(a feature of table 't1'\)"):
        m(KeyedJaggedTensor(["f1"], np.array([1, 2]), lengths=np.array([1, 1])))
    configs = _configs()
    weighted = ManagedCollisionEmbeddingBagCollection(
        EmbeddingBagCollection(configs, is_weighted=True, rng=np.random.default_rng(0)), _mcc(configs))
    w_before = {k: v.copy() for k, v in weighted.state_dict().items()}
    with pytest.raises(ValueError, match="features expected weights .* got a KJT without weights"):
        weighted(_kjt(1000))
    for module, saved in ((m, before), (weighted, w_before)):
        for key, value in saved.items():
            np.testing.assert_array_equal(module.state_dict()[key], value)


@pytest.mark.parametrize("name", ["BaseManagedCollisionEmbeddingCollection", "ManagedCollisionEmbeddingBagCollection",
                                  "ManagedCollisionEmbeddingCollection"])
def test_page_classes_resolve_at_the_root(name):
    import refimpl
    import refimpl.modules.mc_embedding_modules as mce

    assert getattr(refimpl, name) is getattr(mce, name)
    assert callable(mce.evict) and "evict" in mce.__all__
