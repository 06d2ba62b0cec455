"""The tolerance table: values, scaling, units and reasons."""

import numpy as np
import pytest

from conformance import tolerances
from conformance.tolerances import Tolerance


def test_float64_forward_scales_with_the_reduction_length():
    eps = np.finfo(np.float64).eps
    assert tolerances.forward64(10).value == pytest.approx(tolerances.FORWARD64_FACTOR * 10 * eps)
    assert tolerances.forward64(20).value == pytest.approx(2 * tolerances.forward64(10).value)
    assert tolerances.forward64(0).value == tolerances.forward64(1).value  # n is at least 1
    assert "n = 10" in tolerances.forward64(10).reason


def test_gradients_are_looser_than_forward():
    assert tolerances.gradient64(7).value > tolerances.forward64(7).value
    assert tolerances.gradient64(7).unit == "rel"


def test_float32_is_a_ratio_with_the_stated_k():
    tol = tolerances.forward32()
    assert tol.unit == "ratio" and tol.value == tolerances.K32
    assert "FlashAttention" in tol.reason
    override = tolerances.forward32(8.0, "sequential sums")
    assert (override.value, override.reason) == (8.0, "sequential sums")
    assert tolerances.floor32() == pytest.approx(tolerances.FLOOR32_ULPS * np.finfo(np.float32).eps)


def test_exact_and_torchrec_values():
    assert (tolerances.EXACT.value, tolerances.EXACT.unit) == (0.0, "ulp")
    assert tolerances.TORCHREC_TEST_VALUES.value == 1e-4


def test_every_table_entry_has_a_reason():
    for tol in (tolerances.forward64(3), tolerances.gradient64(3), tolerances.forward32(),
                tolerances.finite_difference(), tolerances.EXACT, tolerances.TORCHREC_TEST_VALUES):
        assert len(tol.reason) > 20


def test_tolerance_rejects_unknown_units_and_negative_values():
    with pytest.raises(ValueError, match=r"unit expected 'rel', 'ulp' or 'ratio', got 'abs'"):
        Tolerance(1.0, "abs", "r")
    with pytest.raises(ValueError, match=r"value expected >= 0, got -1"):
        Tolerance(-1.0, "rel", "r")
