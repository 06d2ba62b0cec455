"""Fuzz: the managed-collision entry points (MCHManagedCollisionModule, ManagedCollisionCollection and the
MC-EBC / MC-EC) in refimpl and accel, fed ids at the edges and malformed jagged input.

Ids are drawn from small values, negatives, the int64 extremes -2^63 and 2^63 - 2, and the reserved sentinel
2^63 - 1 (an empty slot's raw id); some batches carry int32, uint8 or float ids, 2-D ids, negative lengths,
offsets that go down, or lack a feature. Streams of such batches run through modules with each eviction
policy, with and without an input hash. Both packages must raise the same ValueError / IndexError /
TypeError, naming the argument, feature or table, or give the same remapped ids, evictions and pooled
embeddings; a refused batch leaves the state as it was (the next batches still agree).
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import accel
import refimpl
from tests.fuzz.conftest import assert_clear_error, assert_same_values, outcome

SENTINEL = 2**63 - 1
EXTREME_IDS = (-(2**63), -(2**62), -1, 2**62, 2**63 - 2, SENTINEL)
Z = 5
NAMED = ("ids", "values", "lengths", "offsets", "feature", "key", "'f1'", "'f2'", "'t1'", "'t2'", "weights",
         "input_hash_func", "stride")
POLICIES = ("LFU", "LRU", "DLFU")
BATCH_FAULTS = ("none", "none", "sentinel", "int32 ids", "uint8 ids", "float ids", "2-D ids", "negative length",
                "offsets going down", "missing feature")


def _policy(package, name):
    return {"LFU": lambda: package.LFU_EvictionPolicy(), "LRU": lambda: package.LRU_EvictionPolicy(),
            "DLFU": lambda: package.DistanceLFU_EvictionPolicy()}[name]()


def _modulo_hash(ids, size):
    # Works on NumPy arrays and torch tensors alike: floor modulo, so outputs lie in [0, size).
    return ids % size


def mch(package, policy, interval, hashed, name="t1"):
    extra = {"input_hash_size": 97, "input_hash_func": _modulo_hash} if hashed else {}
    return package.MCHManagedCollisionModule(zch_size=Z, device=torch.device("cpu") if package is accel else None,
                                             eviction_policy=_policy(package, policy), eviction_interval=interval,
                                             name=name, **extra)


@st.composite
def id_lists(draw, size):
    return draw(st.lists(st.one_of(st.integers(0, 12), st.sampled_from(EXTREME_IDS)), min_size=size, max_size=size))


@st.composite
def batches(draw):
    """(lengths per feature f1, f2 over B bags, int64 ids, fault) of one batch, the fault not yet applied."""
    batch = draw(st.integers(0, 3))
    lengths = np.array(draw(st.lists(st.integers(0, 3), min_size=2 * batch, max_size=2 * batch)), dtype=np.int64)
    ids = np.array(draw(id_lists(int(lengths.sum()))), dtype=np.int64)
    fault = draw(st.sampled_from(BATCH_FAULTS))
    if fault == "sentinel":
        ids = np.append(ids, SENTINEL)
        lengths = np.append(lengths, [1, 0]) if batch == 0 else lengths
        if batch:
            lengths[-1] += 1
    return {"batch": max(batch, 1) if fault == "sentinel" else batch, "lengths": lengths, "ids": ids,
            "fault": fault}


def _faulty(parts):
    """(keys, ids, lengths, offsets or None) with the batch's fault applied, as NumPy arrays."""
    keys, ids, lengths, offsets = ["f1", "f2"], parts["ids"], parts["lengths"].copy(), None
    fault, batch = parts["fault"], parts["batch"]
    if fault == "int32 ids":
        ids = ids.astype(np.int32)
    elif fault == "uint8 ids":
        ids = ids.astype(np.uint8)
    elif fault == "float ids":
        ids = ids.astype(np.float64)
    elif fault == "2-D ids":
        ids = ids.reshape(-1, 1)
    elif fault == "negative length" and batch:
        lengths[0] = -1
    elif fault == "offsets going down" and batch:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        offsets[1] = offsets[0] - 1
        lengths = None
    elif fault == "missing feature":
        keys, ids, lengths = ["f1"], ids[:int(lengths[:batch].sum())], lengths[:batch]
    return keys, ids, lengths, offsets


def _jagged_dict(package, parts):
    """{feature: JaggedTensor} of one batch, built inside the call under test (construction may raise)."""
    keys, ids, lengths, offsets = _faulty(parts)
    kjt = _kjt(package, keys, ids, lengths, offsets)
    return kjt.to_dict()


def _kjt(package, keys, ids, lengths, offsets):
    conv = (lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))) if package is accel else (
        lambda a: a)
    return package.KeyedJaggedTensor(keys, conv(ids), lengths=conv(lengths), offsets=conv(offsets))


def _ids(jt_or_kjt):
    values = jt_or_kjt.values()
    return np.asarray(values.detach() if torch.is_tensor(values) else values, dtype=np.int64)


def agree(got, want, what, read):
    if want[0] == "error" or got[0] == "error":
        assert want[0] == got[0] == "error", f"{what}: accel {got[:3]}, refimpl {want[:3]}"
        assert got[1] is want[1], (
            f"{what}: accel raised {got[1].__name__}: {got[2]}; refimpl {want[1].__name__}: {want[2]}")
        assert_clear_error(got, NAMED, f"accel {what}")
        assert_clear_error(want, NAMED, f"refimpl {what}")
        return False
    read(got[1], want[1])
    return True


def _same_evictions(a, r, what):
    a_ev, r_ev = a.evict(), r.evict()
    assert (a_ev is None) == (r_ev is None), f"{what}: evict() accel {a_ev}, refimpl {r_ev}"
    if a_ev is not None:
        np.testing.assert_array_equal(np.sort(np.asarray(a_ev)), np.sort(np.asarray(r_ev)), err_msg=what)


@given(policy=st.sampled_from(POLICIES), interval=st.integers(1, 2), hashed=st.booleans(),
       stream=st.lists(batches(), min_size=1, max_size=3))
def test_mch_module_streams_with_edge_ids(policy, interval, hashed, stream):
    a, r = mch(accel, policy, interval, hashed), mch(refimpl, policy, interval, hashed)
    for step, parts in enumerate(stream):
        what = f"MCH {policy} I={interval} hashed={hashed} step {step} ({parts['fault']})"

        def same_ids(got, want):
            assert list(got) == list(want)
            for key in want:
                np.testing.assert_array_equal(_ids(got[key]), _ids(want[key]), err_msg=f"{what}: {key}")

        agree(outcome(lambda: a(_jagged_dict(accel, parts))), outcome(lambda: r(_jagged_dict(refimpl, parts))),
              what, same_ids)
        _same_evictions(a, r, what)
    for key, value in r.state_dict().items():
        np.testing.assert_array_equal(a.state_dict()[key].numpy(), np.asarray(value), err_msg=key)


def _collection(package, policy, interval):
    configs = [package.EmbeddingBagConfig(num_embeddings=Z, embedding_dim=2, name="t1", feature_names=["f1"]),
               package.EmbeddingBagConfig(num_embeddings=Z, embedding_dim=2, name="t2", feature_names=["f2"])]
    modules = {t: mch(package, policy, interval, False, name=t) for t in ("t1", "t2")}
    return configs, package.ManagedCollisionCollection(modules, configs)


@given(policy=st.sampled_from(POLICIES), stream=st.lists(batches(), min_size=1, max_size=3))
def test_managed_collision_collection_streams(policy, stream):
    (_, a), (_, r) = _collection(accel, policy, 1), _collection(refimpl, policy, 1)
    for step, parts in enumerate(stream):
        what = f"ManagedCollisionCollection {policy} step {step} ({parts['fault']})"

        def same_kjt(got, want):
            assert list(got.keys()) == list(want.keys())
            np.testing.assert_array_equal(_ids(got), _ids(want), err_msg=what)

        agree(outcome(lambda: a(_kjt(accel, *_faulty(parts)))), outcome(lambda: r(_kjt(refimpl, *_faulty(parts)))),
              what, same_kjt)
        a_ev, r_ev = a.evict(), r.evict()
        assert list(a_ev) == list(r_ev)
        for t in r_ev:
            assert (a_ev[t] is None) == (r_ev[t] is None), what
            if r_ev[t] is not None:
                np.testing.assert_array_equal(np.sort(np.asarray(a_ev[t])), np.sort(np.asarray(r_ev[t])))


def _mc_ebc(package, policy, kind):
    torch.manual_seed(0)
    configs, mcc = _collection(package, policy, 1)
    if kind == "ec":
        cls = package.EmbeddingConfig
        configs = [cls(num_embeddings=c.num_embeddings, embedding_dim=2, name=c.name, feature_names=c.feature_names)
                   for c in configs]
        mcc = package.ManagedCollisionCollection(
            {t: mch(package, policy, 1, False, name=t) for t in ("t1", "t2")}, configs)
        return package.ManagedCollisionEmbeddingCollection(
            package.EmbeddingCollection(configs), mcc, True, reinitialize_evicted_rows=False)
    return package.ManagedCollisionEmbeddingBagCollection(
        package.EmbeddingBagCollection(configs), mcc, True, reinitialize_evicted_rows=False)


@pytest.mark.parametrize("kind", ["ebc", "ec"])
@given(policy=st.sampled_from(POLICIES), stream=st.lists(batches(), min_size=1, max_size=2))
def test_mc_embedding_collections_stream(kind, policy, stream):
    a, r = _mc_ebc(accel, policy, kind), _mc_ebc(refimpl, policy, kind)
    # Floating tables in float64; the int64 buffers as they are (2^63 - 1 has no float64 twin).
    r.load_state_dict({k: (v.double() if v.is_floating_point() else v).numpy() for k, v in a.state_dict().items()})
    for step, parts in enumerate(stream):
        what = f"MC-{kind.upper()} {policy} step {step} ({parts['fault']})"

        def same_lookup(got, want):
            (g_emb, g_remapped), (w_emb, w_remapped) = got, want
            np.testing.assert_array_equal(_ids(g_remapped), _ids(w_remapped), err_msg=what)
            if kind == "ebc":
                assert_same_values(g_emb.values(), w_emb.values(), what, rtol=1e-6, atol=1e-7)
            else:
                for key in w_emb:
                    assert_same_values(g_emb[key].values(), w_emb[key].values(), f"{what}: {key}", rtol=1e-6,
                                       atol=1e-7)

        agree(outcome(lambda: a(_kjt(accel, *_faulty(parts)))), outcome(lambda: r(_kjt(refimpl, *_faulty(parts)))),
              what, same_lookup)


@pytest.mark.parametrize("package", [accel, refimpl], ids=["accel", "refimpl"])
@pytest.mark.parametrize("ids", [[SENTINEL], [0, SENTINEL, 3]])
def test_the_sentinel_id_is_refused_by_name(package, ids):
    module = mch(package, "LFU", 1, False)
    features = _kjt(package, ["f1"], np.array(ids, np.int64), np.array([len(ids)], np.int64), None).to_dict()
    with pytest.raises(ValueError, match=r"feature 'f1'.*ids expected values (other than|below) 2(\^|\*\*)63 - 1"):
        module(features)


def test_raw_sentinel_before_the_hash():
    # The reserved value only matters among the ids that are recorded and looked up, i.e. after the hash: a raw
    # 2^63 - 1 is hashed like any id (TorchRec gives [3, 2] here too).
    ids = np.array([SENTINEL, 3], np.int64)
    outs = []
    for package in (refimpl, accel):
        module = mch(package, "LFU", 1, True)
        features = _kjt(package, ["f1"], ids, np.array([2], np.int64), None).to_dict()
        outs.append(_ids(module(features)["f1"]))
    np.testing.assert_array_equal(outs[0], [3, 2])
    np.testing.assert_array_equal(outs[1], outs[0])
