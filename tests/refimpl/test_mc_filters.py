"""refimpl.modules.mc_filters: the threshold filters of managed collision (semantics.md 11.1).

Golden values are the worked examples of semantics.md 11.1 and float32 formulas written here;
TorchRec's own filters are compared when it is installed.
"""

import numpy as np
import pytest

from refimpl.modules.mc_filters import (
    average_threshold_filter,
    dynamic_threshold_filter,
    probabilistic_threshold_filter,
)

C = np.array([5, 4, 3, 2, 1], dtype=np.int64)


def test_dynamic_threshold_worked_example():
    mask, thr = dynamic_threshold_filter(C, threshold_skew_multiplier=0.75)
    assert thr == np.float32(2.25) and thr.dtype == np.float32
    np.testing.assert_array_equal(mask, [True, True, True, False, False])


def test_dynamic_threshold_default_multiplier_passes_nothing_here():
    mask, thr = dynamic_threshold_filter(C)
    assert thr == np.float32(30.0)
    assert not mask.any()


def test_dynamic_threshold_is_strict():
    mask, thr = dynamic_threshold_filter(np.array([2, 2, 2]), threshold_skew_multiplier=1.0)
    assert thr == 2.0
    assert not mask.any()


def test_dynamic_threshold_rounds_in_float32():
    c = np.array([16777217, 1, 0], dtype=np.int64)  # 2^24 + 1 has no float32 of its own
    mask, thr = dynamic_threshold_filter(c, threshold_skew_multiplier=1.0)
    expected = np.float32(np.float32(16777218) * np.float32(1 / 3))
    assert thr == expected
    np.testing.assert_array_equal(mask, c.astype(np.float32) > expected)


def test_dynamic_threshold_of_no_ids_passes_nothing():
    mask, thr = dynamic_threshold_filter(np.empty(0, dtype=np.int64))
    assert mask.shape == (0,) and mask.dtype == bool and np.isnan(thr)


def test_average_threshold_worked_example():
    mask, thr = average_threshold_filter(C)
    assert thr == np.float32(3.0) and thr.dtype == np.float32
    np.testing.assert_array_equal(mask, [True, True, False, False, False])


def test_average_threshold_of_no_ids():
    mask, thr = average_threshold_filter(np.empty(0, dtype=np.int64))
    assert mask.shape == (0,) and np.isnan(thr)


def test_probabilistic_scores_against_the_formula():
    c = np.array([0, 1, 100, 1000], dtype=np.int64)
    rng = np.random.default_rng(7)
    mask, t = probabilistic_threshold_filter(c, per_id_probability=0.01, rng=rng)
    expected_t = np.random.default_rng(7).random(4, dtype=np.float32)
    np.testing.assert_array_equal(t, expected_t)
    score = 1 - np.float32(0.99) ** c.astype(np.float32)
    np.testing.assert_array_equal(mask, score > expected_t)
    assert round(float(1 - 0.99**100), 4) == 0.634  # D27: the page says 60%
    assert not mask[0]  # an id never seen scores 0 and never passes


def test_probabilistic_pass_rate_matches_the_score():
    c = np.full(4000, 100, dtype=np.int64)
    mask, _ = probabilistic_threshold_filter(c, per_id_probability=0.01, rng=np.random.default_rng(0))
    assert abs(mask.mean() - 0.634) < 0.03


def test_probabilistic_rejects_a_legacy_random_state():
    with pytest.raises(TypeError, match="rng expected a numpy.random.Generator or None, got RandomState"):
        probabilistic_threshold_filter(C, rng=np.random.RandomState(0))


@pytest.mark.parametrize("f", [dynamic_threshold_filter, average_threshold_filter, probabilistic_threshold_filter])
def test_bad_counts(f):
    with pytest.raises(ValueError, match=r"id_counts expected a 1-D array of per-id counts, got shape \(2, 2\)"):
        f(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="id_counts expected an integer or float array, got dtype <U1"):
        f(np.array(["a"]))


def test_filters_match_torchrec():
    torch = pytest.importorskip("torch")
    tmc = pytest.importorskip("torchrec.modules.mc_modules", reason="TorchRec 1.8 is the behavioural oracle")
    rng = np.random.default_rng(3)
    for _ in range(200):
        c = rng.integers(0, 10 ** int(rng.integers(1, 7)), int(rng.integers(1, 40)))
        mult = float(rng.choice([0.1, 0.75, 1.0, 10.0, 1 / 3]))
        for ours, theirs in [
            (dynamic_threshold_filter(c, mult), tmc.dynamic_threshold_filter(torch.tensor(c), mult)),
            (average_threshold_filter(c), tmc.average_threshold_filter(torch.tensor(c))),
        ]:
            assert ours[1] == theirs[1].item()
            np.testing.assert_array_equal(ours[0], theirs[0].numpy())
