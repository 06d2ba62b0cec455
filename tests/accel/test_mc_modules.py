"""accel.modules.mc_modules: semantics.md 14's test vectors, the departures from TorchRec, bad input, and
seeded random streams against TorchRec 1.8 when it is installed."""

import functools

import numpy as np
import pytest
import torch

from accel.modules import mc_modules as mc
from accel.modules.embedding_configs import EmbeddingBagConfig
from accel.sparse import JaggedTensor, KeyedJaggedTensor

M = 2**63 - 1


def jt(ids):
    return JaggedTensor(torch.tensor(ids, dtype=torch.int64), lengths=torch.tensor([len(ids)]))


def policy(name, decay=1.0, threshold_filtering_func=None):
    if name == "LFU":
        return mc.LFU_EvictionPolicy(threshold_filtering_func=threshold_filtering_func)
    cls = {"LRU": mc.LRU_EvictionPolicy, "DLFU": mc.DistanceLFU_EvictionPolicy}[name]
    return cls(decay, threshold_filtering_func=threshold_filtering_func)


def mch(Z, pol, I=1, off=0, **kw):
    return mc.MCHManagedCollisionModule(zch_size=Z, device=torch.device("cpu"), eviction_policy=pol,
                                        eviction_interval=I, output_global_offset=off, **kw)


def step(m, ids):
    out = m({"t": jt(ids)})["t"].values().tolist()
    ev = m.evict()
    return out, None if ev is None else ev.tolist()


def table(m):
    meta = {k[5:]: v.tolist() for k, v in m.state_dict().items() if k in ("_mch_counts", "_mch_last_access_iter")}
    return m._mch_sorted_raw_ids.tolist(), m._mch_remapped_ids_mapping.tolist(), meta


IDS = [[10, 20, 20, 30], [40, 40, 40, 50], [10, 60, 60, 60, 60], [70, 80, 10, 10]]

# (policy, I, per step: out, evict, raw, map, counts, last, open slots); semantics.md 14 TV1-TV6.
TV1_6 = {
    ("LFU", 1): [
        ([2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], [1, 2, 1, 0, M], None, 1),
        ([0, 0, 0, 4], [0], [10, 20, 30, 40, M], [2, 1, 3, 0, 4], [1, 2, 1, 3, M], None, 0),
        ([2, 3, 3, 3, 3], [3], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [2, 2, 3, 4, M], None, 0),
        ([4, 4, 2, 2], [], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [4, 2, 3, 4, M], None, 0),
    ],
    ("LFU", 2): [
        ([4, 4, 4, 4], None, [M] * 5, [0, 1, 2, 3, 4], [0, 0, 0, 0, 0], None, 4),
        ([0, 0, 0, 4], [0, 1, 2, 3], [10, 20, 30, 40, M], [2, 1, 3, 0, 4], [1, 2, 1, 3, M], None, 0),
        ([2, 4, 4, 4, 4], None, [10, 20, 30, 40, M], [2, 1, 3, 0, 4], [1, 2, 1, 3, M], None, 0),
        ([4, 4, 2, 2], [3], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [4, 2, 3, 4, M], None, 0),
    ],
    ("LRU", 1): [
        ([2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], None, [1, 1, 1, 0, 1], 1),
        ([3, 3, 3, 0], [3, 0], [10, 20, 40, 50, M], [2, 1, 3, 0, 4], None, [1, 1, 2, 2, 2], 0),
        ([2, 1, 1, 1, 1], [1], [10, 40, 50, 60, M], [2, 3, 0, 1, 4], None, [3, 2, 2, 3, 3], 0),
        ([3, 0, 2, 2], [3, 0], [10, 60, 70, 80, M], [2, 1, 3, 0, 4], None, [4, 3, 4, 4, 4], 0),
    ],
    ("LRU", 2): [
        ([4, 4, 4, 4], None, [M] * 5, [0, 1, 2, 3, 4], None, [0] * 5, 4),
        ([0, 0, 0, 1], [0, 1, 2, 3], [10, 20, 40, 50, M], [3, 2, 0, 1, 4], None, [1, 1, 2, 2, 2], 0),
        ([3, 4, 4, 4, 4], None, [10, 20, 40, 50, M], [3, 2, 0, 1, 4], None, [1, 1, 2, 2, 2], 0),
        ([0, 1, 3, 3], [0, 1, 2], [10, 60, 70, 80, M], [3, 2, 0, 1, 4], None, [4, 3, 4, 4, 4], 0),
    ],
    ("DLFU", 1): [
        ([2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], [1, 2, 1, 0, M], [1, 1, 1, 0, 1], 1),
        ([3, 3, 3, 0], [3, 0], [10, 20, 40, 50, M], [2, 1, 3, 0, 4], [1, 2, 3, 1, M], [1, 1, 2, 2, 2], 0),
        ([2, 0, 0, 0, 0], [0], [10, 20, 40, 60, M], [2, 1, 3, 0, 4], [2, 2, 3, 4, M], [3, 1, 2, 3, 3], 0),
        ([1, 4, 2, 2], [1], [10, 40, 60, 70, M], [2, 3, 0, 1, 4], [4, 3, 4, 1, M], [4, 2, 3, 4, 4], 0),
    ],
    ("DLFU", 2): [
        ([4, 4, 4, 4], None, [M] * 5, [0, 1, 2, 3, 4], [0] * 5, [0] * 5, 4),
        ([0, 0, 0, 2], [0, 1, 2, 3], [10, 20, 40, 50, M], [3, 1, 0, 2, 4], [1, 2, 3, 1, M], [1, 1, 2, 2, 2], 0),
        ([3, 4, 4, 4, 4], None, [10, 20, 40, 50, M], [3, 1, 0, 2, 4], [1, 2, 3, 1, M], [1, 1, 2, 2, 2], 0),
        ([2, 4, 3, 3], [1, 2], [10, 40, 60, 70, M], [3, 0, 1, 2, 4], [4, 3, 4, 1, M], [4, 2, 3, 4, 4], 0),
    ],
}


@pytest.mark.parametrize("name,interval", list(TV1_6))
def test_semantics_vectors_tv1_to_tv6(name, interval):
    m = mch(5, policy(name), interval)
    for k, (ids, want) in enumerate(zip(IDS, TV1_6[(name, interval)])):
        out, ev, raw, mapping, counts, last, open_slots = want
        assert step(m, ids) == (out, ev), k
        got_raw, got_map, meta = table(m)
        assert (got_raw, got_map) == (raw, mapping), k
        if counts is not None:
            assert meta["counts"] == counts, k
        if last is not None:
            assert meta["last_access_iter"] == last, k
        assert m._current_iter_tensor.tolist() == [k + 1]
        assert m.open_slots().tolist() == [open_slots]


TV7_STEP4 = {
    ("DLFU", 1.0): ([12, 13], [12], [1, 2, 5, M], [10, 12, 11, 13], [4, 1, 3, M], [1, 4, 3, 4]),
    ("DLFU", 2.0): ([10, 12], [10, 12], [2, 5, 6, M], [10, 11, 12, 13], [1, 3, 1, M], [4, 3, 4, 4]),
    ("LRU", 0.5): ([12, 10], [12, 10], [2, 5, 6, M], [12, 11, 10, 13], None, [4, 3, 4, 4]),
    ("LRU", 2.0): ([12, 10], [12, 10], [2, 5, 6, M], [12, 11, 10, 13], None, [4, 3, 4, 4]),
}


@pytest.mark.parametrize("name,decay", list(TV7_STEP4))
def test_semantics_vector_tv7_decay_and_offset(name, decay):
    m = mch(4, policy(name, decay), 1, off=10)
    assert step(m, [1, 1, 1, 1, 2, 3]) == ([10, 10, 10, 10, 11, 12], [10, 11, 12])
    assert step(m, [4, 4]) == ([12, 12], [12])
    assert step(m, [5, 5, 5]) == ([11, 11, 11], [11])
    assert table(m)[:2] == ([1, 4, 5, M], [10, 12, 11, 13])
    out, ev, raw, mapping, counts, last = TV7_STEP4[(name, decay)]
    assert step(m, [2, 6]) == (out, ev)
    _, _, meta = table(m)
    assert table(m)[:2] == (raw, mapping)
    assert meta.get("counts") == counts and meta["last_access_iter"] == last


def test_semantics_vector_tv8_hashing():
    calls = []

    def h(x, s):
        calls.append(s)
        return x % s

    m = mch(5, policy("LFU"), 1, off=100, input_hash_size=7, input_hash_func=h)
    assert m({"t": jt([3, 10, 17, 5])})["t"].values().tolist() == [102, 102, 102, 103]
    assert calls == [7]
    assert table(m)[:2] == ([3, 5, M, M, M], [102, 103, 100, 101, 104])
    assert m.evict().tolist() == [102, 103]
    assert m.remap({"t": jt([3, 8])})["t"].values().tolist() == [102, 104]


def test_semantics_vector_tv9_eval_changes_nothing():
    m = mch(5, policy("LFU"), 1)
    step(m, [1, 2])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.eval()
    assert step(m, [3, 3, 3, 1]) == ([4, 4, 4, 2], None)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.train()
    assert step(m, [3, 3, 3, 1]) == ([1, 1, 1, 2], [1])
    assert m._current_iter_tensor.tolist() == [2]


def test_history_grows_where_torchrec_truncates_tv10():
    # TorchRec's window is int(2 * 2 * 1.25) = 5 ids: it records 3, 4, 5 of the second batch and drops 6, 7.
    m = mch(10, policy("LFU"), 2)
    step(m, [1, 2])
    step(m, [3, 4, 5, 6, 7])
    assert table(m)[0] == [1, 2, 3, 4, 5, 6, 7, M, M, M]


def test_empty_first_batch_does_not_disable_learning():
    m = mch(4, policy("LFU"), 1)
    assert step(m, []) == ([], [])
    assert step(m, [5, 5, 6]) == ([1, 1, 2], [1, 2])
    assert m.open_slots().tolist() == [1]


def test_semantics_vector_tv11_two_features():
    m = mch(10, policy("LFU"), 1)
    out = m({"a": jt([1, 2]), "b": jt([2, 3, 3])})
    assert out["a"].values().tolist() == [8, 6] and out["b"].values().tolist() == [6, 7, 7]


def test_semantics_vector_tv12_pending_union():
    m = mch(4, policy("LFU"), 1)
    m({"t": jt([1])})
    m({"t": jt([2])})
    assert m.evict().tolist() == [1, 2]
    assert m.evict() is None


def test_semantics_vector_tv13_average_threshold():
    m = mch(6, policy("DLFU", 1.0, mc.average_threshold_filter), 1)
    assert step(m, [1, 1, 1, 2, 3, 3]) == ([4, 4, 4, 5, 5, 5], [4])
    assert table(m)[0] == [1, M, M, M, M, M]
    assert table(m)[2] == {"counts": [3, 0, 0, 0, 0, M], "last_access_iter": [1, 0, 0, 0, 0, 1]}
    assert step(m, [1, 2, 2, 2, 2])[0] == [4, 3, 3, 3, 3]
    assert table(m)[0] == [1, 2, M, M, M, M]
    assert table(m)[2] == {"counts": [3, 4, 0, 0, 0, M], "last_access_iter": [1, 2, 0, 0, 0, 2]}


def preset(m, raw, counts):
    state = m.state_dict()
    state["_mch_sorted_raw_ids"] = torch.tensor(raw)
    state["_mch_counts"] = torch.tensor(counts)
    m.load_state_dict(state)


@pytest.mark.parametrize("flt,ids,raw,counts", [
    (None, [3, 4, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 10], [4, 6, 7, 8, M], [11, 3, 3, 3, M]),
    ("average", [3, 4, 5, 6, 6, 6, 7, 8, 8, 9, 10], [4, 5, 6, 8, M], [10, 1, 3, 2, M]),
])
def test_semantics_vector_tv15_preset_lfu(flt, ids, raw, counts):
    m = mch(5, policy("LFU", threshold_filtering_func=mc.average_threshold_filter if flt else None), 1)
    preset(m, [4, 5, M, M, M], [10, 1, 0, 0, 0])
    mc.apply_mc_method_to_jt_dict(m, "profile", {"t": jt(ids)})
    assert table(m)[0] == raw and table(m)[2]["counts"] == counts


def test_semantics_vector_tv15_sequences():
    m = mch(5, policy("LRU"), 1)
    for ids, open_slots in [([5, 6, 7], 1), ([3, 4, 5], 0), ([7, 8], 0)]:
        mc.apply_mc_method_to_jt_dict(m, "profile", {"t": jt(ids)})
        assert m.open_slots().tolist() == [open_slots]
    assert table(m)[0] == [3, 4, 7, 8, M] and table(m)[2]["last_access_iter"] == [2, 2, 3, 3, 3]
    for decay, raw, counts, last in [(1.0, [3, 5, 7, 8, M], [1, 5, 1, 1, M], [2, 1, 3, 3, 3]),
                                     (10.0, [3, 4, 7, 8, M], [1, 1, 1, 1, M], [2, 2, 3, 3, 3])]:
        m = mch(5, policy("DLFU", decay), 1)
        for ids in ([5, 5, 5, 5, 5, 6], [3, 4], [7, 8]):
            m.profile({"t": jt(ids)})
        assert table(m)[0] == raw
        assert table(m)[2] == {"counts": counts, "last_access_iter": last}
    m = mch(5, policy("LFU", threshold_filtering_func=functools.partial(mc.dynamic_threshold_filter,
                                                                        threshold_skew_multiplier=0.75)), 1)
    m.profile({"t": jt([5] * 5 + [4] * 4 + [3] * 3 + [2] * 2 + [1])})
    assert table(m)[0] == [3, 4, 5, M, M] and table(m)[2]["counts"] == [3, 4, 5, 0, M]


def test_filters_formulas():
    c = torch.tensor([5, 4, 3, 2, 1])
    mask, thr = mc.dynamic_threshold_filter(c, 0.75)
    assert mask.tolist() == [True, True, True, False, False] and float(thr) == pytest.approx(2.25)
    assert not mc.dynamic_threshold_filter(c)[0].any()
    mask, thr = mc.average_threshold_filter(c)
    assert mask.tolist() == [True, True, False, False, False] and float(thr) == 3.0
    torch.manual_seed(3)
    mask, r = mc.probabilistic_threshold_filter(torch.tensor([100, 0, 1]), 0.01)
    score = 1 - np.float32(0.99) ** np.array([100, 0, 1], np.float32)
    assert mask.tolist() == (score > r.numpy()).tolist()
    torch.manual_seed(3)
    assert torch.equal(r, torch.rand(3))


def test_filter_returning_an_index_array():
    def more_than_once(c):
        return torch.nonzero(c > 1).squeeze(1), 1

    m = mch(5, policy("LFU", threshold_filtering_func=more_than_once), 1)
    assert step(m, [1, 1, 2, 3, 3, 3]) == ([3, 3, 4, 2, 2, 2], [2, 3])
    assert table(m)[:2] == ([1, 3, M, M, M], [3, 2, 0, 1, 4])


def test_user_policy_runs_through_the_policy_methods():
    class MethodLFU(mc.LFU_EvictionPolicy):
        _round_kind = None

    m = mch(5, MethodLFU(), 1)
    for ids, want in zip(IDS, TV1_6[("LFU", 1)]):
        assert step(m, ids) == want[:2]
        assert table(m)[:2] == (want[2], want[3]) and table(m)[2]["counts"] == want[4]


def test_buffers_state_dict_and_load_resort():
    m = mch(5, policy("DLFU"), 1)
    assert list(m.state_dict()) == ["_output_segments_tensor", "_current_iter_tensor", "_mch_sorted_raw_ids",
                                    "_mch_remapped_ids_mapping", "_mch_counts", "_mch_last_access_iter"]
    assert [n for n, _ in m.named_buffers()][:6] == ["_output_segments_tensor", "_current_iter_tensor",
                                                    "_mch_sorted_raw_ids", "_mch_slots", "_delimiter",
                                                    "_mch_remapped_ids_mapping"]
    seg = m.state_dict()["_output_segments_tensor"]
    assert seg.shape == (1025,) and seg[:3].tolist() == [0, 5, -1]
    state = m.state_dict()
    state["_mch_sorted_raw_ids"] = torch.tensor([30, 10, 20, M, M])
    state["_mch_counts"] = torch.tensor([3, 1, 2, 0, 0])
    m.load_state_dict(state)
    raw, mapping, meta = table(m)
    assert (raw, mapping, meta["counts"]) == ([10, 20, 30, M, M], [1, 2, 0, 3, 4], [1, 2, 3, 0, 0])
    state["_output_segments_tensor"] = torch.full((1025,), -1)
    with pytest.raises(ValueError, match="_output_segments_tensor expected to contain the bounds 0 and 5"):
        m.load_state_dict(state)


def test_loaded_iteration_sets_the_next_round():
    a = mch(5, policy("LFU"), 2)
    step(a, [1])
    b = mch(5, policy("LFU"), 2)
    b.load_state_dict(a.state_dict())
    assert step(b, [2]) == ([4], None)  # iteration 2: the round comes at iteration 3
    assert step(b, [2]) == ([3], [3])


def test_accessors_and_rebuild():
    m = mch(6, policy("LRU"), 3, input_hash_size=100, name="t")
    assert (m.output_size(), m.input_size(), m.buckets(), m.open_slots().tolist()) == (6, 100, 1, [5])
    r = m.rebuild_with_output_id_range((10, 14), [0, 10, 14])
    assert (r.output_size(), r.buckets(), r._mch_remapped_ids_mapping.tolist()) == (4, 2, [10, 11, 12, 13])
    assert r.remap({"t": jt([7])})["t"].values().tolist() == [13]
    step(m, [1])
    m.reset_inference_mode()
    assert m.evict() is None


def test_base_module_methods_raise():
    base = mc.ManagedCollisionModule(torch.device("cpu"), [0, 4])
    assert [n for n, _ in base.named_buffers()] == ["_output_segments_tensor", "_current_iter_tensor"]
    with pytest.raises(NotImplementedError, match="ManagedCollisionModule.remap"):
        base.remap({})
    assert list(mc.ManagedCollisionModule("cpu", [0, 4], skip_state_validation=True).state_dict()) == []


def test_negative_ids_are_managed():
    m = mch(4, policy("LFU"), 1)
    assert step(m, [-7, -7, 3, -(2**63)]) == ([0, 0, 2, 1], [0, 1, 2])
    assert table(m)[0] == [-(2**63), -7, 3, M]


# --- bad input: raised before any state changes -------------------------------------------------


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}, m._current_iter, m._current_history_buffer_offset


def assert_unchanged(m, snap):
    state, cur, p = snap
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert (m._current_iter, m._current_history_buffer_offset) == (cur, p)


@pytest.mark.parametrize("values,err,pattern", [
    (torch.tensor([1, 2], dtype=torch.int32), TypeError, "feature 't' ids expected dtype torch.int64, got torch.int32"),
    (torch.tensor([1.0, 2.0]), TypeError, "expected dtype torch.int64, got torch.float32"),
    (torch.tensor([1, M]), ValueError, r"feature 't' ids expected values other than 2\^63 - 1"),
])
def test_bad_ids_raise_before_state_changes(values, err, pattern):
    m = mch(4, policy("DLFU"), 1)
    step(m, [1, 2])
    snap = snapshot(m)
    bad = {"t": JaggedTensor(values, lengths=torch.tensor([2]))}
    for call in (m, m.profile, m.remap):
        with pytest.raises(err, match=pattern):
            call(bad)
    assert_unchanged(m, snap)


def test_raw_reserved_id_is_fine_before_a_hash():
    m = mch(4, policy("LFU"), 1, input_hash_size=10, input_hash_func=lambda x, s: torch.remainder(x, s))
    # 2^63 - 1 = 7 (mod 10): hashed like any id.
    assert step(m, [M, 7, 3]) == ([1, 1, 2], [1, 2])


def test_hash_output_out_of_range_raises_before_state_changes():
    m = mch(4, policy("LFU"), 1, input_hash_size=10, input_hash_func=lambda x, s: x)
    step(m, [1, 2])
    snap = snapshot(m)
    with pytest.raises(ValueError, match=r"input_hash_func output expected ids in \[0, 10\), got 12"):
        m({"t": jt([3, 12])})
    assert_unchanged(m, snap)


@pytest.mark.parametrize("kw,pattern", [
    ({"zch_size": 1}, "zch_size expected an int >= 2"),
    ({"eviction_interval": 0}, "eviction_interval expected an int >= 1, got 0"),
    ({"input_hash_size": 0}, r"input_hash_size expected a value in \[1, 2\^63 - 1\], got 0"),
    ({"output_segments": list(range(1026))}, "output_segments expected at most 1025 bounds, got 1026"),
])
def test_bad_configuration(kw, pattern):
    args = dict(zch_size=4, device=torch.device("cpu"), eviction_policy=policy("LFU"), eviction_interval=1)
    args.update(kw)
    with pytest.raises(ValueError, match=pattern):
        mc.MCHManagedCollisionModule(**args)
    with pytest.raises(TypeError, match="eviction_policy expected an MCHEvictionPolicy, got str"):
        mc.MCHManagedCollisionModule(4, torch.device("cpu"), "LFU", 1)


# --- ManagedCollisionCollection -----------------------------------------------------------------


def collection(order=("t1", "t2")):
    configs = [EmbeddingBagConfig(num_embeddings=4, embedding_dim=2, name="t1", feature_names=["f1", "f2"]),
               EmbeddingBagConfig(num_embeddings=3, embedding_dim=2, name="t2", feature_names=["f3"])]
    modules = {"t1": mch(4, policy("LFU"), 1), "t2": mch(3, policy("LFU"), 1)}
    return mc.ManagedCollisionCollection({t: modules[t] for t in order}, configs)


def tv14_kjt():
    return KeyedJaggedTensor(["f3", "f1", "x", "f2"], torch.tensor([7, 7, 10, 11, 99, 10, 12]),
                             weights=torch.tensor([.1, .2, .3, .4, .5, .6, .7]),
                             lengths=torch.tensor([2, 0, 1, 1, 1, 1, 1, 0]))


@pytest.mark.parametrize("order", [("t1", "t2"), ("t2", "t1")])
def test_collection_tv14_and_modules_paired_by_name(order):
    c = collection(order)
    out = c(tv14_kjt())
    assert out.keys() == ["f1", "f2", "f3"]
    assert out.values().tolist() == [0, 1, 2, 1, 1]
    assert out.lengths().tolist() == [1, 1, 1, 0, 2, 0]
    assert out.weights().tolist() == pytest.approx([.3, .4, .7, .1, .2])
    assert out.stride() == 2
    mods = c._managed_collision_modules
    assert mods["t1"]._mch_sorted_raw_ids.tolist() == [10, 11, 12, M]
    assert mods["t2"]._mch_sorted_raw_ids.tolist() == [7, M, M]
    assert list(c.state_dict())[0].startswith(f"_managed_collision_modules.{order[0]}.")
    assert {t: v.tolist() for t, v in c.open_slots().items()} == {"t1": [0], "t2": [1]}


def test_collection_maps_by_key_on_every_call():
    c = collection()
    c(tv14_kjt())
    c.eval()
    kjt = KeyedJaggedTensor(["f2", "f3", "f1"], torch.tensor([12, 7, 10]), lengths=torch.tensor([1, 0, 1, 0, 1, 0]))
    out = c(kjt)
    assert out.keys() == ["f1", "f2", "f3"]
    assert out.values().tolist() == [0, 2, 1]
    assert out.lengths().tolist() == [1, 0, 1, 0, 1, 0]


def test_collection_missing_feature_and_bad_ids_change_no_state():
    c = collection()
    c(tv14_kjt())
    snaps = {t: snapshot(m) for t, m in c._managed_collision_modules.items()}
    with pytest.raises(ValueError, match="feature 'f2' of table 't1' expected among the input keys"):
        c(KeyedJaggedTensor(["f1", "f3"], torch.tensor([1, 2]), lengths=torch.tensor([1, 1])))
    bad = KeyedJaggedTensor(["f1", "f2", "f3"], torch.tensor([1, 2, M]), lengths=torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="MCHManagedCollisionModule: feature 't2' ids expected values other than"):
        c(bad)
    for t, m in c._managed_collision_modules.items():
        assert_unchanged(m, snaps[t])


def test_collection_configuration_errors_and_empty_batch():
    configs = [EmbeddingBagConfig(num_embeddings=4, embedding_dim=2, name="t1", feature_names=["f1"])]
    with pytest.raises(ValueError, match="table 't1' expected in managed_collision_modules"):
        mc.ManagedCollisionCollection({}, configs)
    with pytest.raises(ValueError, match="module output_size\\(\\) expected num_embeddings = 4, got 5"):
        mc.ManagedCollisionCollection({"t1": mch(5, policy("LFU"))}, configs)
    c = mc.ManagedCollisionCollection({"t1": mch(4, policy("LFU"))}, configs)
    out = c(KeyedJaggedTensor(["f1"], torch.tensor([], dtype=torch.int64), lengths=torch.tensor([], dtype=torch.int64)))
    assert out.stride() == 0 and out.values().numel() == 0
    assert c.evict()["t1"].tolist() == []


# --- against TorchRec 1.8 -----------------------------------------------------------------------


def _policies(mod, kind, decay, flt):
    f = {None: None, "avg": mod.average_threshold_filter,
         "dyn": functools.partial(mod.dynamic_threshold_filter, threshold_skew_multiplier=0.75),
         "prob": functools.partial(mod.probabilistic_threshold_filter, per_id_probability=0.3)}[flt]
    if kind == "LFU":
        return mod.LFU_EvictionPolicy(threshold_filtering_func=f)
    cls = mod.LRU_EvictionPolicy if kind == "LRU" else mod.DistanceLFU_EvictionPolicy
    return cls(decay, threshold_filtering_func=f)


def _pair(torchrec, rng, kind, decay, interval, hashing, off, flt):
    from torchrec.modules import mc_modules as tmc

    Z = int(rng.integers(2, 40))
    kw = dict(zch_size=Z, device=torch.device("cpu"), eviction_interval=interval, output_global_offset=off)
    if hashing:
        kw.update(input_hash_size=23, input_hash_func=lambda x, s: torch.remainder(x, s))
    return (tmc.MCHManagedCollisionModule(eviction_policy=_policies(tmc, kind, decay, flt), **kw),
            mc.MCHManagedCollisionModule(eviction_policy=_policies(mc, kind, decay, flt), **kw))


def _same_state(t, a, where):
    st, sa = t.state_dict(), a.state_dict()
    assert list(st) == list(sa), where
    for k in st:
        assert st[k].dtype == sa[k].dtype and torch.equal(st[k], sa[k]), (where, k, st[k], sa[k])


def _stream(torchrec, t, a, rng, steps, first, flt, seed):
    tjt = torchrec.sparse.jagged_tensor.JaggedTensor
    for k in range(steps):
        # Later batches are no larger than the first training batch, so TorchRec's window never overflows.
        n = first if k == 0 else int(rng.integers(1 if flt == "dyn" else 0, first + 1))
        ids = torch.from_numpy(rng.integers(-20, 60, n))
        train = k == 0 or rng.random() >= 0.2
        t.train(train)
        a.train(train)
        torch.manual_seed(seed * 1000 + k)
        ot = t({"x": tjt(ids, lengths=torch.tensor([n]))})["x"].values()
        torch.manual_seed(seed * 1000 + k)
        oa = a({"x": jt(ids.tolist())})["x"].values()
        assert ot.tolist() == oa.tolist(), (k, ids.tolist())
        if rng.random() < 0.7:  # otherwise the evictions stay unconsumed and accumulate
            et, ea = t.evict(), a.evict()
            assert (et is None) == (ea is None) and (et is None or et.tolist() == ea.tolist()), k
        _same_state(t, a, k)


CASES = [(kind, decay, interval, hashing, off, flt)
         for kind, decay in [("LFU", 1.0), ("LRU", 1.0), ("LRU", 0.5), ("DLFU", 1.0), ("DLFU", 2.0)]
         for interval in (1, 2, 3)
         for hashing, off, flt in [(False, 0, None), (True, 7, None), (False, 3, "avg"), (False, 0, "prob"),
                                   (True, 0, "dyn")]]


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_random_stream_matches_torchrec(case):
    torchrec = pytest.importorskip("torchrec", reason="TorchRec 1.8 is the oracle of the stream tests")
    seed = CASES.index(case)
    rng = np.random.default_rng(seed)
    t, a = _pair(torchrec, rng, *case)
    _stream(torchrec, t, a, rng, 20, int(rng.integers(1, 30)), case[-1], seed)


@pytest.mark.parametrize("direction", ["torchrec_to_accel", "accel_to_torchrec"])
def test_state_dict_loads_both_ways_and_the_stream_continues(direction):
    torchrec = pytest.importorskip("torchrec", reason="TorchRec 1.8 is the interop oracle")
    rng = np.random.default_rng(7)
    case = ("DLFU", 1.0, 2, False, 0, None)
    t, a = _pair(torchrec, rng, *case)
    _stream(torchrec, t, a, rng, 6, 12, None, 70)
    t2, a2 = _pair(torchrec, np.random.default_rng(7), *case)
    if direction == "torchrec_to_accel":
        a2.load_state_dict(t.state_dict())
        t2.load_state_dict(t.state_dict())
    else:
        t2.load_state_dict(a.state_dict())
        a2.load_state_dict(a.state_dict())
    _same_state(t2, a2, "loaded")
    _stream(torchrec, t2, a2, rng, 8, 12, None, 71)


# --- the page's forms, accepted beside TorchRec's (D20, D21, D25) ----------------------------------------------
def test_page_forms_of_the_base_rebuild_and_apply():
    from accel.modules.mc_modules import ManagedCollisionModule, apply_mc_method_to_jt_dict
    from accel.sparse import JaggedTensor

    base = ManagedCollisionModule(torch.device("cpu"))  # no output_segments: every bound -1
    assert torch.equal(base.state_dict()["_output_segments_tensor"], torch.full((1025,), -1, dtype=torch.int64))
    mch = mc.MCHManagedCollisionModule(zch_size=5, device=torch.device("cpu"),
                                       eviction_policy=mc.LFU_EvictionPolicy(), eviction_interval=1)
    rebuilt = mch.rebuild_with_output_id_range((10, 14))  # output_segments defaults to [10, 14]
    assert rebuilt.output_size() == 4
    assert rebuilt.state_dict()["_output_segments_tensor"][:3].tolist() == [10, 14, -1]
    mch.train()
    mch({"f": JaggedTensor(torch.tensor([7, 7, 9]), lengths=torch.tensor([3]))})
    jt = JaggedTensor(torch.tensor([9, 7, 8]), lengths=torch.tensor([3]))
    expected = apply_mc_method_to_jt_dict(mch, "remap", {"f": jt})["f"].values()
    got = apply_mc_method_to_jt_dict("remap", {"f": jt, "x": jt}, {"t": ["f"]}, {"t": mch})
    assert list(got) == ["f"]
    assert torch.equal(got["f"].values(), expected)
    assert expected[2].item() == 4  # 8 was never seen: the shared miss id off + Z - 1
    with pytest.raises(ValueError, match=r"features_dict expected feature 'g' \(table 't'\), got keys \['f'\]"):
        apply_mc_method_to_jt_dict("remap", {"f": jt}, {"t": ["g"]}, {"t": mch})
    with pytest.raises(ValueError, match=r"managed_collisions expected table 'u', got \['t'\]"):
        apply_mc_method_to_jt_dict("remap", {"f": jt}, {"u": ["f"]}, {"t": mch})
