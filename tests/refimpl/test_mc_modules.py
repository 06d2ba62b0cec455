"""refimpl.modules.mc_modules: MCHManagedCollisionModule, ManagedCollisionCollection (semantics.md 11, 14).

The test vectors TV1-TV15 of semantics.md 14 were produced by TorchRec 1.8.0; they are written out
here as tables and must reproduce id for id. A seeded random stream is also compared step by step
with TorchRec itself when it is installed.
"""

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl.modules.embedding_configs import EmbeddingBagConfig
from refimpl.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    ManagedCollisionModule,
    MCHManagedCollisionModule,
    apply_mc_method_to_jt_dict,
    average_threshold_filter,
    dynamic_threshold_filter,
    probabilistic_threshold_filter,
)
from refimpl.sparse import JaggedTensor, KeyedJaggedTensor

M = 2**63 - 1


def _mch(Z, policy, I=1, **kwargs):
    return MCHManagedCollisionModule(zch_size=Z, device=None, eviction_policy=policy, eviction_interval=I, **kwargs)


def _jt(ids, lengths=None):
    ids = np.asarray(ids, dtype=np.int64)
    return JaggedTensor(values=ids, lengths=np.array([ids.shape[0]] if lengths is None else lengths))


def _step(m, ids, name="t"):
    out = m({name: _jt(ids)})[name].values()
    return out, m.evict()


def _state(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


def _assert_table(m, raw, mapping, counts=None, last=None):
    sd = m.state_dict()
    np.testing.assert_array_equal(sd["_mch_sorted_raw_ids"], raw)
    np.testing.assert_array_equal(sd["_mch_remapped_ids_mapping"], mapping)
    if counts is not None:
        np.testing.assert_array_equal(sd["_mch_counts"], counts)
    if last is not None:
        np.testing.assert_array_equal(sd["_mch_last_access_iter"], last)


def _assert_evict(ev, expected):
    if expected is None:
        assert ev is None
    else:
        assert ev is not None and ev.dtype == np.int64
        np.testing.assert_array_equal(ev, expected)


STEPS = [[10, 20, 20, 30], [40, 40, 40, 50], [10, 60, 60, 60, 60], [70, 80, 10, 10]]

# --- TV1, TV3, TV5: Z=5, I=1, one row per step -------------------------------------------------------
# (out, evict(), raw, map, counts, last, iteration, open slots)
TV1_LFU = [
    ([2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], [1, 2, 1, 0, M], None, 1, 1),
    ([0, 0, 0, 4], [0], [10, 20, 30, 40, M], [2, 1, 3, 0, 4], [1, 2, 1, 3, M], None, 2, 0),
    ([2, 3, 3, 3, 3], [3], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [2, 2, 3, 4, M], None, 3, 0),
    ([4, 4, 2, 2], [], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [4, 2, 3, 4, M], None, 4, 0),
]
TV3_LRU = [
    ([2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], None, [1, 1, 1, 0, 1], 1, 1),
    ([3, 3, 3, 0], [3, 0], [10, 20, 40, 50, M], [2, 1, 3, 0, 4], None, [1, 1, 2, 2, 2], 2, 0),
    ([2, 1, 1, 1, 1], [1], [10, 40, 50, 60, M], [2, 3, 0, 1, 4], None, [3, 2, 2, 3, 3], 3, 0),
    ([3, 0, 2, 2], [3, 0], [10, 60, 70, 80, M], [2, 1, 3, 0, 4], None, [4, 3, 4, 4, 4], 4, 0),
]
TV5_DLFU = [
    ([2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], [1, 2, 1, 0, M], [1, 1, 1, 0, 1], 1, 1),
    ([3, 3, 3, 0], [3, 0], [10, 20, 40, 50, M], [2, 1, 3, 0, 4], [1, 2, 3, 1, M], [1, 1, 2, 2, 2], 2, 0),
    ([2, 0, 0, 0, 0], [0], [10, 20, 40, 60, M], [2, 1, 3, 0, 4], [2, 2, 3, 4, M], [3, 1, 2, 3, 3], 3, 0),
    ([1, 4, 2, 2], [1], [10, 40, 60, 70, M], [2, 3, 0, 1, 4], [4, 3, 4, 1, M], [4, 2, 3, 4, 4], 4, 0),
]


@pytest.mark.parametrize(
    "policy, table",
    [(LFU_EvictionPolicy, TV1_LFU), (LRU_EvictionPolicy, TV3_LRU), (DistanceLFU_EvictionPolicy, TV5_DLFU)],
    ids=["TV1-LFU", "TV3-LRU", "TV5-DLFU"],
)
def test_interval_one_vectors(policy, table):
    m = _mch(5, policy())
    for ids, (out, ev, raw, mapping, counts, last, it, open_) in zip(STEPS, table):
        got, got_ev = _step(m, ids)
        np.testing.assert_array_equal(got, out)
        _assert_evict(got_ev, ev)
        _assert_table(m, raw, mapping, counts, last)
        np.testing.assert_array_equal(m.state_dict()["_current_iter_tensor"], [it])
        np.testing.assert_array_equal(m.open_slots(), [open_])


# --- TV2, TV4, TV6: I=2 (rounds at steps 2 and 4) ------------------------------------------------------
# {step: (out, evict(), raw, map, counts, last)}; raw None = not given by the vector
TV2 = {1: ([4, 4, 4, 4], None, [M] * 5, [0, 1, 2, 3, 4], None, None),
       2: ([0, 0, 0, 4], [0, 1, 2, 3], [10, 20, 30, 40, M], [2, 1, 3, 0, 4], [1, 2, 1, 3, M], None),
       3: ([2, 4, 4, 4, 4], None, None, None, None, None),
       4: ([4, 4, 2, 2], [3], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [4, 2, 3, 4, M], None)}
TV4 = {1: ([4, 4, 4, 4], None, None, None, None, None),
       2: ([0, 0, 0, 1], [0, 1, 2, 3], [10, 20, 40, 50, M], [3, 2, 0, 1, 4], None, [1, 1, 2, 2, 2]),
       3: ([3, 4, 4, 4, 4], None, None, None, None, None),
       4: ([0, 1, 3, 3], [0, 1, 2], [10, 60, 70, 80, M], [3, 2, 0, 1, 4], None, [4, 3, 4, 4, 4])}
TV6 = {2: ([0, 0, 0, 2], [0, 1, 2, 3], [10, 20, 40, 50, M], [3, 1, 0, 2, 4], [1, 2, 3, 1, M], [1, 1, 2, 2, 2]),
       3: ([3, 4, 4, 4, 4], None, None, None, None, None),
       4: ([2, 4, 3, 3], [1, 2], [10, 40, 60, 70, M], [3, 0, 1, 2, 4], [4, 3, 4, 1, M], [4, 2, 3, 4, 4])}


@pytest.mark.parametrize(
    "policy, table",
    [(LFU_EvictionPolicy, TV2), (LRU_EvictionPolicy, TV4), (DistanceLFU_EvictionPolicy, TV6)],
    ids=["TV2-LFU", "TV4-LRU", "TV6-DLFU"],
)
def test_interval_two_vectors(policy, table):
    m = _mch(5, policy(), I=2)
    for step, ids in enumerate(STEPS, start=1):
        got, got_ev = _step(m, ids)
        if step not in table:
            continue
        out, ev, raw, mapping, counts, last = table[step]
        np.testing.assert_array_equal(got, out)
        _assert_evict(got_ev, ev)
        if raw is not None:
            _assert_table(m, raw, mapping, counts, last)


# --- TV7: Z=4, off=10, decay exponents -----------------------------------------------------------------
TV7_STEPS = [[1, 1, 1, 1, 2, 3], [4, 4], [5, 5, 5], [2, 6]]
TV7_FIRST = [([10, 10, 10, 10, 11, 12], [10, 11, 12]), ([12, 12], [12]), ([11, 11, 11], [11])]
TV7_LAST = [
    (DistanceLFU_EvictionPolicy(1.0), [12, 13], [12], [1, 2, 5, M], [10, 12, 11, 13], [4, 1, 3, M], [1, 4, 3, 4]),
    (DistanceLFU_EvictionPolicy(2.0), [10, 12], [10, 12], [2, 5, 6, M], [10, 11, 12, 13], [1, 3, 1, M], [4, 3, 4, 4]),
    (LRU_EvictionPolicy(0.5), [12, 10], [12, 10], [2, 5, 6, M], [12, 11, 10, 13], None, [4, 3, 4, 4]),
    (LRU_EvictionPolicy(2.0), [12, 10], [12, 10], [2, 5, 6, M], [12, 11, 10, 13], None, [4, 3, 4, 4]),
]


@pytest.mark.parametrize("policy, out, ev, raw, mapping, counts, last", TV7_LAST,
                         ids=["DLFU-1", "DLFU-2", "LRU-0.5", "LRU-2"])
def test_tv7_offset_and_decay(policy, out, ev, raw, mapping, counts, last):
    m = _mch(4, policy, output_global_offset=10)
    for ids, (want_out, want_ev) in zip(TV7_STEPS, TV7_FIRST):
        got, got_ev = _step(m, ids)
        np.testing.assert_array_equal(got, want_out)
        _assert_evict(got_ev, want_ev)
    _assert_table(m, [1, 4, 5, M], [10, 12, 11, 13])
    got, got_ev = _step(m, TV7_STEPS[3])
    np.testing.assert_array_equal(got, out)
    _assert_evict(got_ev, ev)
    _assert_table(m, raw, mapping, counts, last)


def test_tv8_hashing_and_offset():
    calls = []

    def hash_mod(x, s):
        calls.append(s)
        return x % s

    m = _mch(5, LFU_EvictionPolicy(), output_global_offset=100, input_hash_size=7, input_hash_func=hash_mod)
    out, ev = _step(m, [3, 10, 17, 5])
    np.testing.assert_array_equal(out, [102, 102, 102, 103])
    assert calls == [7]
    _assert_table(m, [3, 5, M, M, M], [102, 103, 100, 101, 104])
    _assert_evict(ev, [102, 103])
    remapped = m.remap({"t": _jt([3, 8])})["t"].values()
    np.testing.assert_array_equal(remapped, [102, 104])


def test_tv9_eval_changes_nothing():
    m = _mch(5, LFU_EvictionPolicy())
    _step(m, [1, 2])
    before = _state(m)
    m.eval()
    out, ev = _step(m, [3, 3, 3, 1])
    np.testing.assert_array_equal(out, [4, 4, 4, 2])
    assert ev is None
    for key, value in before.items():
        np.testing.assert_array_equal(m.state_dict()[key], value)
    m.train()
    out, _ = _step(m, [3, 3, 3, 1])
    np.testing.assert_array_equal(out, [1, 1, 1, 2])
    np.testing.assert_array_equal(m.state_dict()["_current_iter_tensor"], [2])


def test_tv10_history_window_grows_instead_of_dropping():
    # TorchRec sizes the window from the first batch (H = int(2 * 2 * 1.25) = 5) and records only
    # 3, 4, 5 of the second batch, giving raw [1, 2, 3, 4, 5, M, ...]; recspec keeps every id.
    m = _mch(10, LFU_EvictionPolicy(), I=2)
    _step(m, [1, 2])
    _step(m, [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(m.state_dict()["_mch_sorted_raw_ids"], [1, 2, 3, 4, 5, 6, 7, M, M, M])


def test_empty_first_batch_does_not_disable_learning():
    m = _mch(4, LFU_EvictionPolicy())
    out, ev = _step(m, [])
    assert out.shape == (0,)
    _assert_evict(ev, [])
    out, _ = _step(m, [7, 7])
    np.testing.assert_array_equal(out, [2, 2])


def test_tv11_two_features_in_one_dict():
    m = _mch(10, LFU_EvictionPolicy())
    out = m({"a": _jt([1, 2]), "b": _jt([2, 3, 3])})
    np.testing.assert_array_equal(out["a"].values(), [8, 6])
    np.testing.assert_array_equal(out["b"].values(), [6, 7, 7])


def test_tv12_pending_evictions_are_a_sorted_union():
    m = _mch(4, LFU_EvictionPolicy())
    m({"t": _jt([1])})
    m({"t": _jt([2])})
    _assert_evict(m.evict(), [1, 2])
    assert m.evict() is None


def test_tv13_average_threshold_with_distance_lfu():
    m = _mch(6, DistanceLFU_EvictionPolicy(threshold_filtering_func=average_threshold_filter))
    out, _ = _step(m, [1, 1, 1, 2, 3, 3])
    np.testing.assert_array_equal(out, [4, 4, 4, 5, 5, 5])
    _assert_table(m, [1, M, M, M, M, M], [4, 0, 1, 2, 3, 5], [3, 0, 0, 0, 0, M], [1, 0, 0, 0, 0, 1])
    out, _ = _step(m, [1, 2, 2, 2, 2])
    np.testing.assert_array_equal(out, [4, 3, 3, 3, 3])
    np.testing.assert_array_equal(m.state_dict()["_mch_sorted_raw_ids"], [1, 2, M, M, M, M])
    np.testing.assert_array_equal(m.state_dict()["_mch_counts"], [3, 4, 0, 0, 0, M])
    np.testing.assert_array_equal(m.state_dict()["_mch_last_access_iter"], [1, 2, 0, 0, 0, 2])


# --- TV15: TorchRec's own tests ----------------------------------------------------------------------
def _preset(m, raw, counts):
    sd = _state(m)
    sd["_mch_sorted_raw_ids"][: len(raw)] = raw
    sd["_mch_counts"][: len(counts)] = counts
    m.load_state_dict(sd)


def test_tv15_lfu_preset():
    m = _mch(5, LFU_EvictionPolicy())
    _preset(m, [4, 5], [10, 1])
    m.profile({"t": _jt([3, 4, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 10])})
    np.testing.assert_array_equal(m.state_dict()["_mch_sorted_raw_ids"], [4, 6, 7, 8, M])
    np.testing.assert_array_equal(m.state_dict()["_mch_counts"], [11, 3, 3, 3, M])


def test_tv15_lru_sequence():
    m = _mch(5, LRU_EvictionPolicy(1.0))
    m.profile({"t": _jt([5, 6, 7])})
    np.testing.assert_array_equal(m.open_slots(), [1])
    m.profile({"t": _jt([3, 4, 5])})
    np.testing.assert_array_equal(m.open_slots(), [0])
    m.profile({"t": _jt([7, 8])})
    np.testing.assert_array_equal(m.state_dict()["_mch_sorted_raw_ids"], [3, 4, 7, 8, M])
    np.testing.assert_array_equal(m.state_dict()["_mch_last_access_iter"], [2, 2, 3, 3, 3])


@pytest.mark.parametrize("decay, raw, counts, last", [
    (1.0, [3, 5, 7, 8, M], [1, 5, 1, 1, M], [2, 1, 3, 3, 3]),
    (10.0, [3, 4, 7, 8, M], [1, 1, 1, 1, M], [2, 2, 3, 3, 3]),
])
def test_tv15_distance_lfu_sequence(decay, raw, counts, last):
    m = _mch(5, DistanceLFU_EvictionPolicy(decay))
    for ids in ([5, 5, 5, 5, 5, 6], [3, 4], [7, 8]):
        m.profile({"t": _jt(ids)})
    _assert_table(m, raw, m.state_dict()["_mch_remapped_ids_mapping"], counts, last)


def test_tv15_dynamic_threshold():
    m = _mch(5, LFU_EvictionPolicy(functools.partial(dynamic_threshold_filter, threshold_skew_multiplier=0.75)))
    m.profile({"t": _jt([5] * 5 + [4] * 4 + [3] * 3 + [2] * 2 + [1])})
    np.testing.assert_array_equal(m.state_dict()["_mch_sorted_raw_ids"], [3, 4, 5, M, M])
    np.testing.assert_array_equal(m.state_dict()["_mch_counts"], [3, 4, 5, 0, M])


def test_tv15_average_threshold_preset():
    m = _mch(5, LFU_EvictionPolicy(average_threshold_filter))
    _preset(m, [4, 5], [10, 1])
    m.profile({"t": _jt([3, 4, 5, 6, 6, 6, 7, 8, 8, 9, 10])})
    np.testing.assert_array_equal(m.state_dict()["_mch_sorted_raw_ids"], [4, 5, 6, 8, M])
    np.testing.assert_array_equal(m.state_dict()["_mch_counts"], [10, 1, 3, 2, M])


def test_probabilistic_filter_is_reproducible_from_its_rng():
    def run(seed):
        f = functools.partial(probabilistic_threshold_filter, per_id_probability=0.2, rng=np.random.default_rng(seed))
        m = _mch(5, LFU_EvictionPolicy(f))
        for _ in range(10):
            m.profile({"t": _jt([1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5])})
        return m.state_dict()["_mch_sorted_raw_ids"].copy()

    first = run(42)
    np.testing.assert_array_equal(run(42), first)
    assert (first[:-1] != M).sum() == 4  # ten rounds fill every managed slot at p = 0.2


# --- accessors, modes, rebuild ---------------------------------------------------------------------
def test_accessors_and_state_layout():
    m = _mch(5, DistanceLFU_EvictionPolicy(), input_hash_size=1000, output_global_offset=3, buckets=2)
    assert (m.output_size(), m.input_size(), m.buckets()) == (5, 1000, 2)
    sd = m.state_dict()
    assert list(sd) == ["_output_segments_tensor", "_current_iter_tensor", "_mch_sorted_raw_ids",
                        "_mch_remapped_ids_mapping", "_mch_counts", "_mch_last_access_iter"]
    assert all(v.dtype == np.int64 for v in sd.values())
    np.testing.assert_array_equal(sd["_output_segments_tensor"][:3], [3, 8, -1])
    assert sd["_output_segments_tensor"].shape == (1025,)
    np.testing.assert_array_equal(sd["_mch_remapped_ids_mapping"], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(m.open_slots(), [4])


def test_default_input_hash_size_is_torchrec_value():
    assert _mch(2, LFU_EvictionPolicy()).input_size() == 2**63 - 1


def test_rebuild_with_output_id_range_gives_an_empty_module():
    m = _mch(5, LRU_EvictionPolicy(), I=3)
    _step(m, [1, 2])
    r = m.rebuild_with_output_id_range((10, 14), [0, 10, 14])
    assert isinstance(r, MCHManagedCollisionModule) and r.output_size() == 4 and r.buckets() == 2
    np.testing.assert_array_equal(r.state_dict()["_mch_remapped_ids_mapping"], [10, 11, 12, 13])
    np.testing.assert_array_equal(r.state_dict()["_mch_sorted_raw_ids"], [M] * 4)
    np.testing.assert_array_equal(r.state_dict()["_output_segments_tensor"][:4], [0, 10, 14, -1])
    page_form = m.rebuild_with_output_id_range((0, 2))
    assert page_form.buckets() == 1 and page_form.output_size() == 2


def test_negative_raw_ids_are_managed():
    m = _mch(4, LFU_EvictionPolicy())
    out, ev = _step(m, [-5, -5, 0, -(2**63)])
    np.testing.assert_array_equal(m.state_dict()["_mch_sorted_raw_ids"], [-(2**63), -5, 0, M])
    np.testing.assert_array_equal(out, m.remap({"t": _jt([-5, -5, 0, -(2**63)])})["t"].values())
    np.testing.assert_array_equal(out, [0, 0, 2, 1])  # -5 most frequent, then MIN < 0 by id
    _assert_evict(ev, [0, 1, 2])


def test_reset_inference_mode_clears_pending_evictions():
    m = _mch(4, LFU_EvictionPolicy())
    m({"t": _jt([1])})
    m.reset_inference_mode()
    assert m.evict() is None


def test_remap_keeps_lengths_and_weights_with_empty_bags():
    m = _mch(4, LFU_EvictionPolicy())
    m({"t": _jt([9])})
    jt = JaggedTensor(values=np.array([9, 8, 9], dtype=np.int64), weights=np.array([0.5, 1.5, 2.5]),
                      lengths=np.array([2, 0, 1]))
    out = m.remap({"t": jt})["t"]
    np.testing.assert_array_equal(out.values(), [2, 3, 2])
    np.testing.assert_array_equal(out.lengths(), [2, 0, 1])
    np.testing.assert_array_equal(out.weights(), [0.5, 1.5, 2.5])


def test_base_module_methods_need_a_subclass():
    base = ManagedCollisionModule(None, [0, 4])
    assert list(base.state_dict()) == ["_output_segments_tensor", "_current_iter_tensor"]
    with pytest.raises(NotImplementedError, match="ManagedCollisionModule.remap"):
        base.remap({})
    assert ManagedCollisionModule(None, [0, 4], skip_state_validation=True).state_dict() == {}


def test_apply_mc_method_both_forms():
    m = _mch(4, LFU_EvictionPolicy())
    m({"t": _jt([5])})
    out = apply_mc_method_to_jt_dict(m, "remap", {"t": _jt([5, 6])})
    np.testing.assert_array_equal(out["t"].values(), [2, 3])
    page = apply_mc_method_to_jt_dict("remap", {"f": _jt([5]), "x": _jt([1])}, {"t": ["f"]}, {"t": m})
    assert list(page) == ["f"]
    np.testing.assert_array_equal(page["f"].values(), [2])
    with pytest.raises(ValueError, match="method expected a method of MCHManagedCollisionModule, got 'nope'"):
        apply_mc_method_to_jt_dict(m, "nope", {})


# --- state dict --------------------------------------------------------------------------------------
def test_load_resorts_the_table():
    m = _mch(5, LFU_EvictionPolicy())
    sd = _state(m)
    sd["_mch_sorted_raw_ids"] = np.array([30, 10, 20, M, M])
    sd["_mch_counts"] = np.array([3, 1, 2, 0, 0])
    m.load_state_dict(sd)
    _assert_table(m, [10, 20, 30, M, M], [1, 2, 0, 3, 4], [1, 2, 3, 0, 0])


def test_load_keeps_loaded_segments_and_rejects_foreign_ones():
    m = _mch(5, LFU_EvictionPolicy())
    sd = _state(m)
    sd["_output_segments_tensor"][:3] = [0, 2, 5]
    m.load_state_dict(sd)
    np.testing.assert_array_equal(m.state_dict()["_output_segments_tensor"][:4], [0, 2, 5, -1])
    before = _state(m)
    bad = _state(m)
    bad["_output_segments_tensor"][:3] = [0, 4, -1]
    bad["_mch_counts"][0] = 99
    with pytest.raises(ValueError, match=r"_output_segments_tensor' expected to contain the shard bounds 0 and 5"):
        m.load_state_dict(bad)
    for key, value in before.items():
        np.testing.assert_array_equal(m.state_dict()[key], value)


def _random_batches(seed, n_steps, high=30):
    rng = np.random.default_rng(seed)
    first = int(rng.integers(6, 12))
    return [rng.integers(0, high, first if s == 0 else int(rng.integers(0, first + 1))) for s in range(n_steps)]


@pytest.mark.parametrize("policy", [LFU_EvictionPolicy, LRU_EvictionPolicy, DistanceLFU_EvictionPolicy])
def test_state_dict_mid_stream_continues_identically(policy):
    batches = _random_batches(3, 16)
    a = _mch(6, policy(), I=2)
    for ids in batches[:8]:
        _step(a, ids)
    b = _mch(6, policy(), I=2)
    b.load_state_dict(_state(a))
    for ids in batches[8:]:
        # An even number of calls so far: the window was empty when saved, so both continue alike.
        out_a, ev_a = _step(a, ids)
        out_b, ev_b = _step(b, ids)
        np.testing.assert_array_equal(out_a, out_b)
        assert (ev_a is None) == (ev_b is None)
        if ev_a is not None:
            np.testing.assert_array_equal(ev_a, ev_b)
        for key, value in a.state_dict().items():
            np.testing.assert_array_equal(b.state_dict()[key], value)


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"zch_size": 1}, ValueError, r"zch_size expected >= 2 .* got 1"),
    ({"zch_size": 4.0}, TypeError, r"zch_size expected an int, got float"),
    ({"eviction_interval": 0}, ValueError, r"eviction_interval expected >= 1 .* got 0"),
    ({"eviction_policy": "lfu"}, TypeError, r"eviction_policy expected an MCHEvictionPolicy .* got str"),
    ({"output_segments": list(range(1026))}, ValueError, r"output_segments expected at most 1025 .* got 1026"),
    ({"input_hash_size": 0}, ValueError, r"input_hash_size expected >= 1, got 0"),
])
def test_bad_configuration(kwargs, error, pattern):
    args = {"zch_size": 4, "device": None, "eviction_policy": LFU_EvictionPolicy(), "eviction_interval": 1, "name": "t"}
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        MCHManagedCollisionModule(**args)


def test_deprecated_mch_size_is_ignored_with_a_warning():
    with pytest.warns(DeprecationWarning, match="mch_size and mch_hash_func are deprecated"):
        m = _mch(4, LFU_EvictionPolicy(), mch_size=100)
    assert m.output_size() == 4


@pytest.mark.parametrize("ids, error, pattern", [
    (np.array([1, 2], dtype=np.int32), TypeError, r"feature 't' \(table 'tab'\): ids expected dtype int64, got int32"),
    (np.array([1.0, 2.0]), TypeError, r"feature 't' \(table 'tab'\): ids expected dtype int64, got float64"),
    (np.array([1, M], dtype=np.int64), ValueError,
     r"feature 't' \(table 'tab'\): ids expected values below 2\*\*63 - 1"),
])
def test_bad_ids_leave_the_state_untouched(ids, error, pattern):
    m = _mch(4, LRU_EvictionPolicy(), name="tab")
    _step(m, [1, 2])
    before = _state(m)
    bad = JaggedTensor(values=ids, lengths=np.array([len(ids)]))
    with pytest.raises(error, match=pattern):
        m({"t": bad})
    with pytest.raises(error, match=pattern):
        m.remap({"t": bad})
    for key, value in before.items():
        np.testing.assert_array_equal(m.state_dict()[key], value)
    out, _ = _step(m, [1, 2])  # the window was not touched either: the next round is as if nothing happened
    np.testing.assert_array_equal(m.state_dict()["_current_iter_tensor"], [2])
    assert out.tolist() == m.remap({"t": _jt([1, 2])})["t"].values().tolist()


@pytest.mark.parametrize("hash_func, error, pattern", [
    (lambda x, s: x, ValueError, r"input_hash_func expected ids in \[0, input_hash_size=7\), got 7 for input id 7"),
    (lambda x, s: x % s - 1, ValueError, r"expected ids in \[0, input_hash_size=7\), got -1"),
    (lambda x, s: (x % s).astype(np.int32), TypeError,
     r"input_hash_func expected to return int64 ids, got dtype int32"),
])
def test_bad_hash_output_leaves_the_state_untouched(hash_func, error, pattern):
    m = _mch(4, LFU_EvictionPolicy(), input_hash_size=7, input_hash_func=hash_func, name="tab")
    before = _state(m)
    with pytest.raises(error, match=pattern):
        m({"t": _jt([7, 10])})
    for key, value in before.items():
        np.testing.assert_array_equal(m.state_dict()[key], value)


# --- ManagedCollisionCollection ----------------------------------------------------------------------
def _tv14_collection(order=("t1", "t2")):
    configs = [EmbeddingBagConfig(4, 2, name="t1", feature_names=["f1", "f2"]),
               EmbeddingBagConfig(3, 2, name="t2", feature_names=["f3"])]
    modules = {"t1": _mch(4, LFU_EvictionPolicy()), "t2": _mch(3, LFU_EvictionPolicy())}
    return ManagedCollisionCollection({t: modules[t] for t in order}, configs)


def _tv14_kjt():
    return KeyedJaggedTensor(
        ["f3", "f1", "x", "f2"], np.array([7, 7, 10, 11, 99, 10, 12]),
        weights=np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]), lengths=np.array([2, 0, 1, 1, 1, 1, 1, 0]),
    )


@pytest.mark.parametrize("order", [("t1", "t2"), ("t2", "t1")])
def test_tv14_collection(order):
    mcc = _tv14_collection(order)
    out = mcc(_tv14_kjt())
    assert out.keys() == ["f1", "f2", "f3"] and out.stride() == 2
    np.testing.assert_array_equal(out.values(), [0, 1, 2, 1, 1])
    np.testing.assert_array_equal(out.lengths(), [1, 1, 1, 0, 2, 0])
    np.testing.assert_allclose(out.weights(), [0.3, 0.4, 0.7, 0.1, 0.2])
    sd = mcc.state_dict()
    np.testing.assert_array_equal(sd["_managed_collision_modules.t1._mch_sorted_raw_ids"], [10, 11, 12, M])
    np.testing.assert_array_equal(sd["_managed_collision_modules.t2._mch_sorted_raw_ids"], [7, M, M])
    assert next(iter(sd)) == f"_managed_collision_modules.{order[0]}._output_segments_tensor"


def test_collection_maps_by_key_on_every_call():
    mcc = _tv14_collection()
    mcc(_tv14_kjt())
    mcc.eval()
    reordered = KeyedJaggedTensor(["f2", "f1", "f3"], np.array([12, 10, 11, 7]), lengths=np.array([1, 0, 1, 1, 1, 0]))
    out = mcc(reordered)
    assert out.keys() == ["f1", "f2", "f3"]
    np.testing.assert_array_equal(out.values(), [0, 1, 2, 1])
    np.testing.assert_array_equal(out.lengths(), [1, 1, 1, 0, 1, 0])


def test_collection_feature_shared_by_two_tables():
    configs = [EmbeddingBagConfig(4, 2, name="t1", feature_names=["f"]),
               EmbeddingBagConfig(5, 2, name="t2", feature_names=["f"])]
    mcc = ManagedCollisionCollection({"t1": _mch(4, LFU_EvictionPolicy()), "t2": _mch(5, LFU_EvictionPolicy())},
                                     configs)
    out = mcc(KeyedJaggedTensor(["f"], np.array([3, 4, 3]), lengths=np.array([2, 1])))
    assert out.keys() == ["f", "f"]  # as TorchRec's permute: one copy per table
    # t1 (Z=4): 3 then 4 take slots 1, 2; t2 (Z=5): slots 2, 3
    np.testing.assert_array_equal(out.values(), [1, 2, 1, 2, 3, 2])
    np.testing.assert_array_equal(out.lengths(), [2, 1, 2, 1])


def test_collection_missing_feature_raises_before_any_state_changes():
    mcc = _tv14_collection()
    before = {k: v.copy() for k, v in mcc.state_dict().items()}
    kjt = KeyedJaggedTensor(["f1", "f2"], np.array([1, 2]), lengths=np.array([1, 1]))
    with pytest.raises(ValueError, match=r"expected key 'f3' \(a feature of table 't2'\)"):
        mcc(kjt)
    bad_t2 = KeyedJaggedTensor(["f1", "f2", "f3"], np.array([1, 2, M]), lengths=np.array([1, 1, 1]))
    with pytest.raises(ValueError, match=r"feature 'f3' \(table 't2'\): ids expected values below 2\*\*63 - 1"):
        mcc(bad_t2)
    int32_ids = KeyedJaggedTensor(["f1", "f2", "f3"], np.array([1, 2, 3], dtype=np.int32), lengths=np.array([1, 1, 1]))
    with pytest.raises(TypeError, match=r"feature 'f1' \(table 't1'\): ids expected dtype int64, got int32"):
        mcc(int32_ids)
    for key, value in before.items():
        np.testing.assert_array_equal(mcc.state_dict()[key], value)


def test_collection_empty_batch_and_evict_open_slots():
    mcc = _tv14_collection()
    out = mcc(KeyedJaggedTensor(["f1", "f2", "f3"], np.empty(0, dtype=np.int64), lengths=np.zeros(3, dtype=np.int64)))
    assert out.keys() == ["f1", "f2", "f3"] and out.values().shape == (0,)
    ev = mcc.evict()
    assert list(ev) == ["t1", "t2"] and ev["t1"].shape == (0,)
    assert {t: int(v[0]) for t, v in mcc.open_slots().items()} == {"t1": 3, "t2": 2}


@pytest.mark.parametrize("modules, configs, error, pattern", [
    ({}, [EmbeddingBagConfig(4, 2, name="t1", feature_names=["f"])], ValueError,
     "Table t1 is not present in managed_collision_modules"),
    ({"t1": "x"}, [EmbeddingBagConfig(4, 2, name="t1", feature_names=["f"])], TypeError,
     r"managed_collision_modules\['t1'\] expected a ManagedCollisionModule, got str"),
    ({"t1": 5}, [EmbeddingBagConfig(4, 2, name="t1", feature_names=["f"])], TypeError, "got int"),
    ({"t1": 3}, [EmbeddingBagConfig(4, 2, name="t1", feature_names=["f"])], ValueError,
     "num_embeddings 4, got 3"),
    ({"t1": 4, "t9": 4}, [EmbeddingBagConfig(4, 2, name="t1", feature_names=["f"])], ValueError,
     r"managed_collision_modules\['t9'\] expected an embedding config named 't9'"),
])
def test_collection_bad_configuration(modules, configs, error, pattern):
    built = {t: _mch(z, LFU_EvictionPolicy()) if isinstance(z, int) and z != 5 else z for t, z in modules.items()}
    with pytest.raises(error, match=pattern):
        ManagedCollisionCollection(built, configs)


def test_collection_load_resorts_every_table():
    mcc = _tv14_collection()
    sd = {k: v.copy() for k, v in mcc.state_dict().items()}
    sd["_managed_collision_modules.t2._mch_sorted_raw_ids"] = np.array([9, 4, M])
    sd["_managed_collision_modules.t2._mch_counts"] = np.array([2, 5, 0])
    mcc.load_state_dict(sd)
    got = mcc.state_dict()
    np.testing.assert_array_equal(got["_managed_collision_modules.t2._mch_sorted_raw_ids"], [4, 9, M])
    np.testing.assert_array_equal(got["_managed_collision_modules.t2._mch_remapped_ids_mapping"], [1, 0, 2])
    np.testing.assert_array_equal(got["_managed_collision_modules.t2._mch_counts"], [5, 2, 0])


# --- TorchRec 1.8 itself, on a seeded random stream ---------------------------------------------------
def _torchrec_pair(policy_name, decay, filter_name, Z, I, hashing, offset):
    torch = pytest.importorskip("torch")
    tmc = pytest.importorskip("torchrec.modules.mc_modules", reason="TorchRec 1.8 is the behavioural oracle")
    filters = {None: (None, None),
               "average": (average_threshold_filter, tmc.average_threshold_filter),
               "dynamic": (functools.partial(dynamic_threshold_filter, threshold_skew_multiplier=1.0),
                           functools.partial(tmc.dynamic_threshold_filter, threshold_skew_multiplier=1.0))}
    ours_filter, theirs_filter = filters[filter_name]
    args = {} if policy_name == "LFU" else {"decay_exponent": decay}
    ours_policy = {"LFU": LFU_EvictionPolicy, "LRU": LRU_EvictionPolicy,
                   "DLFU": DistanceLFU_EvictionPolicy}[policy_name]
    theirs_policy = {"LFU": tmc.LFU_EvictionPolicy, "LRU": tmc.LRU_EvictionPolicy,
                     "DLFU": tmc.DistanceLFU_EvictionPolicy}[policy_name]
    common = {"zch_size": Z, "eviction_interval": I, "output_global_offset": offset}
    if hashing:
        common.update(input_hash_size=23, input_hash_func=lambda x, s: x % s)
    ours = MCHManagedCollisionModule(
        device=None, eviction_policy=ours_policy(threshold_filtering_func=ours_filter, **args), **common
    )
    theirs = tmc.MCHManagedCollisionModule(
        device=torch.device("cpu"),
        eviction_policy=theirs_policy(threshold_filtering_func=theirs_filter, **args),
        **common,
    )
    return ours, theirs


def _assert_same_state(ours, theirs, where):
    theirs_sd = theirs.state_dict()
    assert list(ours.state_dict()) == list(theirs_sd), where
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, theirs_sd[key].numpy(), err_msg=f"{where}: {key}")


STREAM_CASES = [
    (policy, decay, filt, I, hashing)
    for policy, decay, filt in [("LFU", None, None), ("LRU", 1.0, None), ("DLFU", 1.0, None), ("LRU", 2.0, None),
                                ("DLFU", 2.0, None), ("LRU", 2, None), ("DLFU", 0.5, None),
                                ("LFU", None, "average"), ("DLFU", 1.0, "dynamic")]
    for I in (1, 2, 3)
    for hashing in (False, True)
]


@pytest.mark.parametrize("policy, decay, filt, I, hashing", STREAM_CASES)
def test_random_stream_matches_torchrec(policy, decay, filt, I, hashing):
    torch = pytest.importorskip("torch")
    tjt = pytest.importorskip("torchrec.sparse.jagged_tensor", reason="TorchRec 1.8 is the behavioural oracle")
    seed = STREAM_CASES.index((policy, decay, filt, I, hashing))
    rng = np.random.default_rng(seed)
    offset = 7 if hashing else 0
    ours, theirs = _torchrec_pair(policy, decay, filt, Z=8, I=I, hashing=hashing, offset=offset)
    first = 10
    for step in range(24):
        train = step == 0 or rng.random() < 0.8
        ours.train(train)
        theirs.train(train)
        # Later batches are no larger than the first, so TorchRec's window (sized by it) never overflows.
        # TorchRec's dynamic filter divides by the number of ids: its windows must not be empty.
        smallest = 1 if filt == "dynamic" else 0
        total = first if step == 0 else int(rng.integers(smallest, first + 1))
        sizes = [first] if step == 0 else [int(n) for n in rng.multinomial(total, [0.5, 0.5])]
        low, high = (-50, 200) if hashing else (0, 25)
        batch = {f"f{k}": rng.integers(low, high, n) for k, n in enumerate(sizes)}
        mine = ours({k: _jt(v) for k, v in batch.items()})
        theirs_out = theirs({k: tjt.JaggedTensor(values=torch.tensor(v), lengths=torch.tensor([len(v)]))
                             for k, v in batch.items()})
        where = f"step {step} ({'train' if train else 'eval'})"
        for k in batch:
            np.testing.assert_array_equal(mine[k].values(), theirs_out[k].values().numpy(), err_msg=where)
        if rng.random() < 0.6:  # otherwise the evictions stay pending and accumulate
            ev, tev = ours.evict(), theirs.evict()
            assert (ev is None) == (tev is None), where
            if ev is not None:
                np.testing.assert_array_equal(ev, tev.numpy(), err_msg=where)
        _assert_same_state(ours, theirs, where)
        np.testing.assert_array_equal(ours.open_slots(), theirs.open_slots().numpy(), err_msg=where)


def test_load_resort_matches_torchrec():
    torch = pytest.importorskip("torch")
    ours, theirs = _torchrec_pair("DLFU", 1.0, None, Z=5, I=1, hashing=False, offset=0)
    sd = _state(ours)
    sd["_mch_sorted_raw_ids"] = np.array([30, 10, 20, M, M])
    sd["_mch_counts"] = np.array([3, 1, 2, 0, 0])
    sd["_mch_last_access_iter"] = np.array([1, 2, 3, 0, 0])
    ours.load_state_dict(sd)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    _assert_same_state(ours, theirs, "after load")
    _assert_table(ours, [10, 20, 30, M, M], [1, 2, 0, 3, 4], [1, 2, 3, 0, 0], [2, 3, 1, 0, 0])


def test_collection_stream_matches_torchrec_with_a_fixed_key_order():
    torch = pytest.importorskip("torch")
    tmc = pytest.importorskip("torchrec.modules.mc_modules", reason="TorchRec 1.8 is the behavioural oracle")
    tcfg = pytest.importorskip("torchrec.modules.embedding_configs")
    tjt = pytest.importorskip("torchrec.sparse.jagged_tensor")
    ours_cfg = [EmbeddingBagConfig(6, 2, name="t1", feature_names=["f1", "f2"]),
                EmbeddingBagConfig(5, 2, name="t2", feature_names=["f3"])]
    theirs_cfg = [tcfg.EmbeddingBagConfig(6, 2, name="t1", feature_names=["f1", "f2"]),
                  tcfg.EmbeddingBagConfig(5, 2, name="t2", feature_names=["f3"])]
    ours = ManagedCollisionCollection({"t1": _mch(6, DistanceLFU_EvictionPolicy(), I=2),
                                       "t2": _mch(5, LFU_EvictionPolicy())}, ours_cfg)
    cpu = torch.device("cpu")
    theirs = tmc.ManagedCollisionCollection(
        {"t1": tmc.MCHManagedCollisionModule(6, cpu, tmc.DistanceLFU_EvictionPolicy(), 2),
         "t2": tmc.MCHManagedCollisionModule(5, cpu, tmc.LFU_EvictionPolicy(), 1)}, theirs_cfg)
    rng = np.random.default_rng(11)
    keys = ["f3", "x", "f1", "f2"]  # one order throughout: TorchRec's cached permutation stays right
    for step in range(12):
        lengths = rng.integers(0, 3, 2 * len(keys)) if step else np.full(2 * len(keys), 2)
        values = rng.integers(0, 12, int(lengths.sum()))
        weights = rng.random(values.shape[0])
        out = ours(KeyedJaggedTensor(keys, values, weights=weights, lengths=lengths))
        ref = theirs(tjt.KeyedJaggedTensor(keys, torch.tensor(values), weights=torch.tensor(weights),
                                           lengths=torch.tensor(lengths)))
        assert out.keys() == ref.keys() == ["f1", "f2", "f3"]
        np.testing.assert_array_equal(out.values(), ref.values().numpy(), err_msg=f"step {step}")
        np.testing.assert_array_equal(out.lengths(), ref.lengths().numpy(), err_msg=f"step {step}")
        np.testing.assert_array_equal(out.weights(), ref.weights().numpy(), err_msg=f"step {step}")
        for key, value in ours.state_dict().items():
            np.testing.assert_array_equal(value, theirs.state_dict()[key].numpy(), err_msg=f"step {step}: {key}")
        ev, tev = ours.evict(), theirs.evict()
        assert list(ev) == list(tev) == ["t1", "t2"]
        for table in ev:
            assert (ev[table] is None) == (tev[table] is None), f"step {step}: {table}"
            if ev[table] is not None:
                np.testing.assert_array_equal(ev[table], tev[table].numpy(), err_msg=f"step {step}: {table}")


PAGE_NAMES = ["DistanceLFU_EvictionPolicy", "LFU_EvictionPolicy", "LRU_EvictionPolicy", "MCHEvictionPolicy",
              "MCHEvictionPolicyMetadataInfo", "MCHManagedCollisionModule", "ManagedCollisionCollection",
              "ManagedCollisionModule", "apply_mc_method_to_jt_dict", "average_threshold_filter",
              "dynamic_threshold_filter", "probabilistic_threshold_filter"]


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_every_page_name_resolves_here_and_at_the_root(name):
    import refimpl
    import refimpl.modules.mc_modules as mc

    assert getattr(refimpl, name) is getattr(mc, name)
    assert name in mc.__all__


# --- invariants over random streams ------------------------------------------------------------------
def _table(m):
    sd = m.state_dict()
    raw, mapping = sd["_mch_sorted_raw_ids"], sd["_mch_remapped_ids_mapping"]
    return {int(r): int(o) for r, o in zip(raw, mapping) if r != M}


@settings(deadline=None)
@given(
    policy=st.sampled_from(["LFU", "LRU", "DLFU"]),
    I=st.integers(1, 3),
    offset=st.integers(-5, 5),
    stream=st.lists(st.tuples(st.booleans(), st.lists(st.integers(-8, 8), max_size=7)), min_size=1, max_size=8),
)
def test_table_invariants_on_random_streams(policy, I, offset, stream):
    Z = 5
    pol = {"LFU": LFU_EvictionPolicy, "LRU": LRU_EvictionPolicy, "DLFU": DistanceLFU_EvictionPolicy}[policy]()
    m = _mch(Z, pol, I=I, output_global_offset=offset)
    for train, ids in stream:
        before, state = _table(m), _state(m)
        m.train(train)
        out, _ = _step(m, ids)
        raw = m.state_dict()["_mch_sorted_raw_ids"]
        assert (raw[1:] >= raw[:-1]).all() and raw[-1] == M  # sorted (np.diff would wrap), sentinel last
        assert len(_table(m)) == int((raw != M).sum()) <= Z - 1  # no duplicates, at most Z - 1 managed
        assert sorted(m.state_dict()["_mch_remapped_ids_mapping"]) == list(range(offset, offset + Z))
        assert m.state_dict()["_mch_remapped_ids_mapping"][-1] == offset + Z - 1  # the miss id stays the sentinel's
        assert ((out >= offset) & (out < offset + Z)).all()
        after = _table(m)
        for raw_id in set(before) & set(after):
            assert before[raw_id] == after[raw_id]  # a resident keeps its output id
        if not train:
            for key, value in state.items():
                np.testing.assert_array_equal(m.state_dict()[key], value)


def test_reset_inference_mode_then_training_matches_torchrec():
    torch = pytest.importorskip("torch")
    tjt = pytest.importorskip("torchrec.sparse.jagged_tensor", reason="TorchRec 1.8 is the behavioural oracle")
    ours, theirs = _torchrec_pair("LFU", None, None, Z=5, I=1, hashing=False, offset=0)
    for step, ids in enumerate([[1, 2], [3], [4, 4], [5, 6], [7]]):
        if step == 2:
            ours.reset_inference_mode()
            theirs.reset_inference_mode()
        ours({"t": _jt(ids)})
        theirs({"t": tjt.JaggedTensor(values=torch.tensor(ids), lengths=torch.tensor([len(ids)]))})
        _assert_same_state(ours, theirs, f"step {step}")
    # iteration 2 - (-1) != 1 from then on: no further round admits 4..7 (TorchRec's behaviour, kept)
    np.testing.assert_array_equal(ours.state_dict()["_mch_sorted_raw_ids"], [1, 2, 3, M, M])


def test_load_into_a_trained_module_matches_torchrec():
    # The iteration counter is read from the state only on the first training call, and the
    # window recorded so far survives the load: both as in TorchRec.
    torch = pytest.importorskip("torch")
    tjt = pytest.importorskip("torchrec.sparse.jagged_tensor", reason="TorchRec 1.8 is the behavioural oracle")
    ours, theirs = _torchrec_pair("DLFU", 1.0, None, Z=6, I=2, hashing=False, offset=0)
    donor = _mch(6, DistanceLFU_EvictionPolicy(), I=2)
    for ids in ([9, 9, 8], [7, 9], [6, 6, 6, 6], [5]):
        _step(donor, ids)

    def both(ids):
        ours({"t": _jt(ids)})
        theirs({"t": tjt.JaggedTensor(values=torch.tensor(ids), lengths=torch.tensor([len(ids)]))})

    for ids in ([1, 2, 2], [3, 1], [4, 4, 4]):
        both(ids)
    sd = _state(donor)
    ours.load_state_dict(sd)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    _assert_same_state(ours, theirs, "after load")
    for step, ids in enumerate(([1, 9], [4, 6, 2], [3, 3])):
        both(ids)
        _assert_same_state(ours, theirs, f"step {step} after load")
