"""accel.modules.mc_embedding_modules: TorchRec's zch train vector (semantics.md 14, TV15), lookups equal to
the plain collections on the remapped ids, the row re-initialisation of evicted ids and its opt-out, equal
configs, eval mode, and agreement with TorchRec's MC-EBC when installed."""

import copy

import numpy as np
import pytest
import torch

from accel.modules import mc_embedding_modules as mce
from accel.modules import mc_modules as mc
from accel.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from accel.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from accel.sparse import KeyedJaggedTensor

Z = 20


def configs(cls):
    return [cls(num_embeddings=Z, embedding_dim=4, name="t1", feature_names=["f1", "f2"])]


def build(kind, cls_config=None, reinit=True, mcc_configs=None, interval=2):
    cls = EmbeddingBagConfig if kind == "ebc" else EmbeddingConfig
    tables = configs(cls)
    mcc = mc.ManagedCollisionCollection(
        {"t1": mc.MCHManagedCollisionModule(Z, torch.device("cpu"), mc.DistanceLFU_EvictionPolicy(), interval)},
        tables if mcc_configs is None else mcc_configs(tables),
    )
    if kind == "ebc":
        return mce.ManagedCollisionEmbeddingBagCollection(EmbeddingBagCollection(tables), mcc, True,
                                                          reinitialize_evicted_rows=reinit)
    return mce.ManagedCollisionEmbeddingCollection(EmbeddingCollection(tables), mcc, True,
                                                   reinitialize_evicted_rows=reinit)


def kjt(f1, f2, f3=None):
    f3 = list(range(1020, 1030)) if f3 is None else f3
    ids = list(f1) + list(f2) + list(f3)
    # B = 2: five ids per bag, and the second f3 bag empty.
    return KeyedJaggedTensor(["f1", "f2", "f3"], torch.tensor(ids), lengths=torch.tensor([5, 5, 5, 5, len(f3), 0]))


def weight(m):
    mod = m._embedding_module
    return (mod.embedding_bags if hasattr(mod, "embedding_bags") else mod.embeddings)["t1"].weight


@pytest.mark.parametrize("kind", ["ebc", "ec"])
def test_zch_train_vector(kind):
    m = build(kind)
    first = kjt(range(1000, 1010), range(1010, 1020))
    second = kjt(range(2000, 2010), range(1010, 1020))
    open_slots = []
    outs = []
    for batch in (first, first, second, second):
        _, r = m(batch)
        outs.append(r)
        open_slots.append(int(m._managed_collision_collection.open_slots()["t1"]))
    assert outs[0].keys() == ["f1", "f2"]
    assert outs[0].values().tolist() == [19] * 20
    assert outs[1].values().tolist() == list(range(19)) + [19]
    assert outs[2].values().tolist() == [19] * 10 + list(range(10, 19)) + [19]
    assert outs[3].values().tolist() == list(range(1, 10)) + [19] + list(range(10, 19)) + [0]
    assert open_slots == [19, 0, 0, 0]
    assert outs[3].lengths().tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("kind", ["ebc", "ec"])
def test_lookup_is_the_plain_collection_on_the_remapped_ids(kind):
    m = build(kind, interval=1)
    batch = kjt(range(1000, 1010), [1000, 1001, 7, 7, 7, 1002, 1003, 1004, 1005, 1006])
    emb, r = m(batch)
    W = weight(m).detach().numpy().astype(np.float64)
    ids = r.values().numpy()
    if kind == "ebc":
        offsets = np.concatenate([[0], np.cumsum(r.lengths().numpy())])
        want = np.stack([
            np.concatenate([W[ids[offsets[f * 2 + b]:offsets[f * 2 + b + 1]]].sum(axis=0) for f in range(2)])
            for b in range(2)
        ])
        assert emb.keys() == ["f1", "f2"]
        np.testing.assert_allclose(emb.values().detach().numpy(), want, rtol=1e-6, atol=1e-6)
    else:
        assert list(emb) == ["f1", "f2"]
        got = np.concatenate([emb[f].values().detach().numpy() for f in ("f1", "f2")])
        np.testing.assert_allclose(got, W[ids], rtol=1e-6, atol=1e-6)


def test_evicted_rows_are_reinitialised_from_torchs_rng_before_the_lookup():
    m = build("ebc", interval=1)
    before = weight(m).detach().clone()
    torch.manual_seed(11)
    emb, r = m(kjt(range(1000, 1010), range(1010, 1020)))
    # One round admitted 19 ids into slots 0..18 (rank order of the empty slots is ascending).
    rows = torch.arange(19)
    bound = (1 / Z) ** 0.5
    torch.manual_seed(11)
    want = torch.empty(19, 4).uniform_(-bound, bound)
    after = weight(m).detach()
    assert torch.equal(after[rows], want)
    assert torch.equal(after[19], before[19])
    # The lookup already read the fresh rows: bag 0 of f1 = rows of 1000..1004.
    ids = r.values()[:5]
    np.testing.assert_allclose(emb.values()[0, :4].detach().numpy(), after[ids].sum(0).numpy(), rtol=1e-6)


def test_torchrec_no_op_on_request():
    m = build("ebc", reinit=False, interval=1)
    before = weight(m).detach().clone()
    m(kjt(range(1000, 1010), range(1010, 1020)))
    assert torch.equal(weight(m).detach(), before)
    assert mce.evict({"t1": torch.tensor([0, 1])}, m._embedding_module, reinitialize=False) is None
    assert torch.equal(weight(m).detach(), before)


def test_evict_checks_rows_and_uses_init_fn():
    m = build("ebc")
    with pytest.raises(IndexError, match=r"table 't1': evicted ids expected rows in \[0, 20\), got \[3, 20\]"):
        mce.evict({"t1": torch.tensor([3, 20])}, m._embedding_module)
    with pytest.raises(ValueError, match="table 'tx' expected among the embedding tables"):
        mce.evict({"tx": torch.tensor([1])}, m._embedding_module)
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(num_embeddings=4, embedding_dim=2, name="t", feature_names=["f"],
                                                     init_fn=lambda w: torch.nn.init.constant_(w, 0.5))])
    mce.evict({"t": torch.tensor([2]), "u": None}, ebc)
    assert ebc.embedding_bags["t"].weight[2].tolist() == [0.5, 0.5]


def test_equal_configs_are_accepted_and_different_ones_rejected():
    m = build("ebc", mcc_configs=copy.deepcopy)
    assert m._embedding_module.embedding_bag_configs() is not m._managed_collision_collection.embedding_configs()

    def other(tables):
        t = copy.deepcopy(tables)
        t[0].embedding_dim = 8
        return t

    with pytest.raises(ValueError, match="table 't1': managed_collision_collection config expected to equal"):
        build("ebc", mcc_configs=other)


def test_eval_changes_nothing_and_lengths_mask():
    m = build("ec", interval=1)
    m(kjt(range(1000, 1010), range(1010, 1020)))
    m.eval()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    _, r = m(kjt(range(3000, 3010), range(1010, 1020)))
    assert r.values().tolist()[:10] == [19] * 10
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    mask = m.lookup_remapped_lengths_mask(KeyedJaggedTensor(["f1", "f2"], torch.tensor([1000, 5]),
                                                            lengths=torch.tensor([1, 0, 0, 1])))
    assert mask.tolist() == [True, False, False, True]


def test_state_dict_keys():
    keys = list(build("ebc").state_dict())
    assert keys[0] == "_managed_collision_collection._managed_collision_modules.t1._output_segments_tensor"
    assert keys[-1] == "_embedding_module.embedding_bags.t1.weight"
    assert list(build("ec").state_dict())[-1] == "_embedding_module.embeddings.t1.weight"


def test_matches_torchrec_mc_ebc_with_the_no_op_evict():
    torchrec = pytest.importorskip("torchrec", reason="TorchRec 1.8 is the oracle")
    from torchrec.modules import mc_embedding_modules as tmce
    from torchrec.modules import mc_modules as tmc
    from torchrec.modules.embedding_configs import EmbeddingBagConfig as TConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection as TEBC

    tables = [TConfig(num_embeddings=Z, embedding_dim=4, name="t1", feature_names=["f1", "f2"])]
    tm = tmce.ManagedCollisionEmbeddingBagCollection(
        TEBC(tables), tmc.ManagedCollisionCollection(
            {"t1": tmc.MCHManagedCollisionModule(Z, torch.device("cpu"), tmc.LRU_EvictionPolicy(), 1)}, tables),
        return_remapped_features=True)
    am = build("ebc", reinit=False, interval=1)
    am._managed_collision_collection._managed_collision_modules["t1"] = mc.MCHManagedCollisionModule(
        Z, torch.device("cpu"), mc.LRU_EvictionPolicy(), 1)
    am.load_state_dict(tm.state_dict())
    rng = np.random.default_rng(5)
    for _ in range(6):
        f1, f2 = rng.integers(0, 40, 10), rng.integers(0, 40, 10)
        batch = kjt(f1.tolist(), f2.tolist(), [])
        te, tr = tm(torchrec.KeyedJaggedTensor(batch.keys(), batch.values(), lengths=batch.lengths()))
        ae, ar = am(batch)
        assert tr.values().tolist() == ar.values().tolist()
        np.testing.assert_allclose(ae.values().detach().numpy(), te.values().detach().numpy(), rtol=1e-6, atol=1e-6)
