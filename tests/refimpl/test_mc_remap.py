"""refimpl.modules.mc_remap: the table steps of managed collision (semantics.md 11.3).

Golden values are written by hand from the formulas or rebuilt with plain Python loops here.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl.modules.mc_remap import (
    MAX,
    assign_new_ids,
    coalesce_history,
    concat_history,
    frequency_order,
    last_access_per_id,
    match_ids,
    open_slot_count,
    pending_evictions,
    remap_ids,
    resort_table,
    stable_argsort_descending,
)

M = 2**63 - 1
RAW = np.array([10, 20, 30, M, M], dtype=np.int64)
MAP = np.array([2, 1, 3, 0, 4], dtype=np.int64)


def test_max_is_the_int64_maximum():
    assert MAX == M


def test_remap_hits_and_misses():
    out = remap_ids(np.array([20, 25, 10, 99, -3, 30]), RAW, MAP, miss_id=4)
    np.testing.assert_array_equal(out, [1, 4, 2, 4, 4, 3])
    assert out.dtype == np.int64


def test_remap_empty_input_and_offset_miss():
    assert remap_ids(np.empty(0, dtype=np.int64), RAW, MAP, 4).shape == (0,)
    np.testing.assert_array_equal(remap_ids(np.array([1]), np.array([M, M]), np.array([100, 101]), 101), [101])


def _remap_by_loop(values, raw, mapping, miss):
    managed = {int(raw[s]): int(mapping[s]) for s in range(raw.shape[0] - 1) if raw[s] != M}
    return [managed.get(int(v), miss) for v in values]


@settings(deadline=None)
@given(st.lists(st.integers(-50, 50), max_size=6, unique=True), st.lists(st.integers(-60, 60), max_size=12))
def test_remap_equals_a_dictionary_lookup(residents, values):
    Z = 7
    raw = np.full(Z, M, dtype=np.int64)
    raw[: len(residents)] = sorted(residents)
    mapping = np.arange(100, 100 + Z)[::-1].copy()
    values = np.array(values, dtype=np.int64)
    np.testing.assert_array_equal(remap_ids(values, raw, mapping, 106), _remap_by_loop(values, raw, mapping, 106))


def test_coalesce_history():
    u, inv, c = coalesce_history(np.array([7, 9, 9, 7, 5, 7]))
    np.testing.assert_array_equal(u, [5, 7, 9])
    np.testing.assert_array_equal(inv, [1, 2, 2, 1, 0, 1])
    np.testing.assert_array_equal(c, [1, 3, 2])
    u, inv, c = coalesce_history(np.empty(0, dtype=np.int64))
    assert u.shape == inv.shape == c.shape == (0,)


def test_last_access_per_id():
    np.testing.assert_array_equal(last_access_per_id(np.array([1, 3, 2, 2]), np.array([0, 0, 1, 0]), 2), [3, 2])


def test_frequency_order_breaks_ties_by_id():
    np.testing.assert_array_equal(frequency_order(np.array([1, 3, 1, 3, 2])), [1, 3, 4, 0, 2])


def test_stable_argsort_descending_with_extremes():
    s = np.array([0, -(2**63), M, 0, M])
    np.testing.assert_array_equal(stable_argsort_descending(s), [2, 4, 0, 3, 1])
    f = np.array([-1.0, -2.0, -1.0], dtype=np.float32)
    np.testing.assert_array_equal(stable_argsort_descending(f), [0, 2, 1])


def test_match_ids():
    pos, matched = match_ids(RAW, np.array([20, 15, 40, 10]))
    np.testing.assert_array_equal(pos, [1, 1, 3, 0])
    np.testing.assert_array_equal(matched, [True, False, False, True])


def test_assign_new_ids_keeps_the_mapping():
    raw = RAW.copy()
    assign_new_ids(raw, np.array([3, 0]), np.array([40, 50]), np.array([1, 0]))
    np.testing.assert_array_equal(raw, [40, 20, 30, 50, M])


def test_pending_evictions():
    np.testing.assert_array_equal(pending_evictions(None, np.array([3, 0])), [3, 0])
    np.testing.assert_array_equal(pending_evictions(np.array([3, 0]), np.array([1, 3])), [0, 1, 3])
    assert pending_evictions(None, np.empty(0, dtype=np.int64)).shape == (0,)


def test_resort_table_is_the_load_example():
    raw, mapping = np.array([30, 10, 20, M, M]), np.arange(5)
    counts = np.array([3, 1, 2, 0, 0])
    resort_table(raw, mapping, {"counts": counts})
    np.testing.assert_array_equal(raw, [10, 20, 30, M, M])
    np.testing.assert_array_equal(mapping, [1, 2, 0, 3, 4])
    np.testing.assert_array_equal(counts, [1, 2, 3, 0, 0])


def test_open_slot_count():
    np.testing.assert_array_equal(open_slot_count(RAW), [1])
    np.testing.assert_array_equal(open_slot_count(np.array([M, M, M])), [2])
    np.testing.assert_array_equal(open_slot_count(np.array([1, 2, M])), [0])


def test_concat_history():
    np.testing.assert_array_equal(concat_history([np.array([1, 2]), np.array([], dtype=np.int64), np.array([3])]),
                                  [1, 2, 3])
    assert concat_history([]).dtype == np.int64
