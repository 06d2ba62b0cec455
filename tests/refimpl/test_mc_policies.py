"""refimpl.modules.mc_policies: scoring rules, selection and the policy classes (semantics.md 11.3-11.4).

Golden values are the worked examples of semantics.md 11.3 / 14 (TV1 step 1, TV7) and float32
formulas written out here.
"""

import numpy as np
import pytest

from refimpl.modules.mc_policies import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    MCHEvictionPolicy,
    MCHEvictionPolicyMetadataInfo,
    distance_lfu_scores,
    lfu_scores,
    lru_scores,
    select_evictions,
)

M = 2**63 - 1


def test_metadata_info():
    assert LFU_EvictionPolicy().metadata_info == [MCHEvictionPolicyMetadataInfo("counts", True, False)]
    assert LRU_EvictionPolicy().metadata_info == [("last_access_iter", True, True)]
    assert [m.metadata_name for m in DistanceLFU_EvictionPolicy().metadata_info] == ["counts", "last_access_iter"]
    info = MCHEvictionPolicyMetadataInfo(metadata_name="x", is_mch_metadata=False, is_history_metadata=True)
    assert info._fields == ("metadata_name", "is_mch_metadata", "is_history_metadata")


def test_the_interface_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        MCHEvictionPolicy([])


def test_threshold_filter_must_be_callable():
    with pytest.raises(TypeError, match="threshold_filtering_func expected a callable or None, got int"):
        LFU_EvictionPolicy(threshold_filtering_func=3)


def test_lfu_scores_pin_the_sentinel():
    s = lfu_scores(np.array([0, 0, 0, 0, 0]), np.array([2, 1, 1]))
    assert s.dtype == np.int64
    np.testing.assert_array_equal(s, [0, 0, 0, 0, M, 2, 1, 1])


def test_select_evictions_tv1_step1():
    # merged scores [0,0,0,0,M | 2,1,1]: keep [4,5,6,7,0]; slots 1,2,3 go to candidates 0,1,2
    ev, sel = select_evictions(5, np.array([0, 0, 0, 0, M, 2, 1, 1]))
    np.testing.assert_array_equal(ev, [1, 2, 3])
    np.testing.assert_array_equal(sel, [0, 1, 2])


def test_select_evictions_residents_win_ties():
    ev, sel = select_evictions(3, np.array([1, 5, M, 1, 1]))
    assert ev.shape == (0,) and sel.shape == (0,)
    ev, sel = select_evictions(3, np.array([1, 5, M, 2, 1]))
    np.testing.assert_array_equal(ev, [0])
    np.testing.assert_array_equal(sel, [0])


def test_lru_scores_formula_and_dtypes():
    last, cand = np.array([1, 3, 0, 0]), np.array([4, 2])
    s = lru_scores(4, last, cand, 1.0)
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, -np.array([4, 2, 5, 1, 1, 3], dtype=np.float32))
    s2 = lru_scores(4, last, cand, 2)
    assert s2.dtype == np.int64
    np.testing.assert_array_equal(s2, -np.array([16, 4, 25, 1, 1, 9]))
    s_half = lru_scores(4, last, cand, 0.5)
    np.testing.assert_array_equal(s_half, -np.power(np.array([4, 2, 5, 1, 1, 3], dtype=np.float32), np.float32(0.5)))


def test_distance_lfu_scores_tv7_step4():
    # cur 4: residents 1 (count 4, last 1), 4 (2, 2), 5 (3, 3), sentinel; candidates 2 and 6 seen once at 4
    s = distance_lfu_scores(4, np.array([4, 2, 3, 0]), np.array([1, 2, 3, 0]), np.array([1, 1]), np.array([4, 4]), 1.0)
    assert s.dtype == np.float32
    expected = np.array([4 / 4, 2 / 3, 3 / 2, np.float32(M), 1.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(s, expected)
    ev, sel = select_evictions(4, s)
    np.testing.assert_array_equal(ev, [1])  # 4 goes; 1 keeps its slot against candidate 2 (tie)
    np.testing.assert_array_equal(sel, [0])


def test_distance_lfu_int_exponent_divides_in_float32():
    s = distance_lfu_scores(3, np.array([5, 0]), np.array([1, 0]), np.array([7]), np.array([3]), 2)
    np.testing.assert_array_equal(s, np.array([5 / 9, np.float32(M) / 1, 7 / 1], dtype=np.float32))


def test_negative_int_exponent_is_rejected():
    with pytest.raises(ValueError, match="decay_exponent: an int exponent must be >= 0 .* got -1"):
        lru_scores(2, np.array([1, 0]), np.array([2]), -1)


def test_lfu_update_in_place():
    counts = np.array([2, 5, 0, 0])
    policy = LFU_EvictionPolicy()
    # frequency-ordered candidates: id at slot 1 (matched, +3), two new ids with counts 2 and 1
    ev, sel = policy.update_metadata_and_generate_eviction_scores(
        1, 4, np.array([0, 1, 2]), np.array([3, 2, 1]), np.array([True, False, False]), np.array([1]),
        {"counts": counts}, {},
    )
    np.testing.assert_array_equal(counts, [2, 8, 2, M])  # the 2-count candidate took slot 2 (an empty slot)
    np.testing.assert_array_equal(ev, [2])
    np.testing.assert_array_equal(sel, [0])


def test_lru_coalesce_and_update():
    policy = LRU_EvictionPolicy()
    hist = {"last_access_iter": np.array([1, 1, 2, 2, 2])}
    # history ids [7, 9, 9, 7, 5] -> unique [5, 7, 9], inverse [1, 2, 2, 1, 0]
    coalesced = policy.coalesce_history_metadata(2, hist, np.array([1, 2, 2]), np.array([1, 2, 2, 1, 0]))
    np.testing.assert_array_equal(coalesced["last_access_iter"], [2, 2, 2])
    masked = policy.coalesce_history_metadata(
        3, hist, np.array([2, 2, 2]), np.array([1, 2, 2, 1, 0, 0]), additional_ids=np.array([5]),
        threshold_mask=np.array([True, False, True]),
    )  # the additional id 5 counts as seen at the current iteration 3
    np.testing.assert_array_equal(masked["last_access_iter"], [3, 2])
    recorded = {"last_access_iter": np.zeros(3, dtype=np.int64)}
    policy.record_history_metadata(6, np.array([1, 2, 3]), recorded)
    np.testing.assert_array_equal(recorded["last_access_iter"], [6, 6, 6])


def test_distance_lfu_update_matches_tv5_step2():
    # table after TV5 step 1: raw [10,20,30,M,M], counts [1,2,1,0,M], last [1,1,1,0,1]; step 2 sees 40 x3, 50 x1
    counts, last = np.array([1, 2, 1, 0, M]), np.array([1, 1, 1, 0, 1])
    policy = DistanceLFU_EvictionPolicy()
    coalesced = {"last_access_iter": np.array([2, 2])}  # unique ids [40, 50]
    ev, sel = policy.update_metadata_and_generate_eviction_scores(
        2, 5, np.array([0, 1]), np.array([3, 1]), np.array([False, False]), np.array([], dtype=np.int64),
        {"counts": counts, "last_access_iter": last}, coalesced,
    )
    # scores: 10 1/2, 20 2/2, 30 1/2, empty 0/3, sentinel M | 40 3/1, 50 1/1 -> keep M, 40, 20, 50 (loses the
    # tie with 20 only on order), 10 (beats 30 by slot order); 30's slot and the empty one go
    np.testing.assert_array_equal(ev, [2, 3])
    np.testing.assert_array_equal(sel, [0, 1])
    np.testing.assert_array_equal(counts, [1, 2, 3, 1, M])
    np.testing.assert_array_equal(last, [1, 1, 2, 2, 2])
