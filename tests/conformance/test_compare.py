"""Error measurement: normwise errors, ULPs and the worst element of a record."""

import math

import numpy as np
import pytest

from conformance import tolerances
from conformance.compare import Errors, normwise, ulps

REL = tolerances.Tolerance(1e-12, "rel", "test")


def test_normwise_is_max_abs_error_over_max_abs_reference():
    ref = np.array([[4.0, -2.0], [0.0, 1.0]])
    got = ref + np.array([[0.0, 1e-3], [2e-3, 0.0]])
    assert normwise(got, ref) == pytest.approx(2e-3 / 4.0)
    assert normwise(got, ref, scale=1.0) == pytest.approx(2e-3)


def test_normwise_of_zero_reference():
    assert normwise(np.zeros(3), np.zeros(3)) == 0.0
    assert normwise(np.array([0.0, 1e-300]), np.zeros(2)) == math.inf
    assert normwise(np.zeros((0, 4)), np.zeros((0, 4))) == 0.0


def test_ulps_counts_units_in_the_last_place_of_the_reference():
    ref = np.array([1.0, 2.0, 0.5])
    got = np.array([np.nextafter(1.0, 2.0), 2.0 + 2 * np.spacing(2.0), 0.5])
    assert ulps(got, ref).tolist() == [1.0, 2.0, 0.0]
    assert ulps(np.float32([np.nextafter(np.float32(1), np.float32(2))]), np.array([1.0]))[0] == 1.0


def test_nan_where_the_reference_is_finite_is_an_infinite_error():
    assert normwise(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == math.inf
    assert normwise(np.array([np.nan]), np.array([np.nan])) == 0.0


def test_errors_remember_the_worst_element():
    errors = Errors()
    ref = np.arange(6.0).reshape(2, 3)
    errors.add("B=2", "output", ref.copy(), ref, REL)
    got = ref.copy()
    got[1, 2] += 1e-9
    err = errors.add("B=2 large", "output", got, ref, REL)
    assert errors.failed and err == pytest.approx(1e-9 / 5.0)
    assert errors.worst.index == (1, 2) and errors.worst.case == "B=2 large"
    assert errors.max_abs == pytest.approx(1e-9, rel=1e-6)
    text = errors.worst.explain()
    assert "case 'B=2 large', output[1, 2]" in text and "reference 5.0" in text and "ULP" in text
    assert errors.worst.abs_err == abs(got[1, 2] - 5.0) and "abs error 1e-09" in text
    assert errors.worst.ref32 is None and errors.worst.gap32 is None and "float32" not in text


def test_worst_with_a_float32_reference_states_its_gap():
    errors = Errors()
    ref = np.array([1.0 / 3.0])
    errors.add("c", "output", ref + 1e-9, ref, REL)
    worst = errors.worst.with_ref32(np.float32(1.0 / 3.0))
    gap = abs(float(np.float32(1.0 / 3.0)) - 1.0 / 3.0)
    assert worst.gap32 == gap and f"{gap:.3g} from float64" in worst.explain()
    d = worst.as_dict()
    assert d["index"] == [0] and d["ref32"] == float(np.float32(1.0 / 3.0)) and d["gap32"] == gap
    assert d["abs_err"] == pytest.approx(1e-9, rel=1e-6) and d["unit"] == "rel" and d["tolerance"] == 1e-12


def test_worst_as_dict_writes_non_finite_numbers_as_strings():
    errors = Errors()
    errors.add("c", "output", np.array([np.inf]), np.array([1.0]), REL)
    d = errors.worst.as_dict()
    assert d["got"] == "inf" and d["abs_err"] == "inf" and d["ref"] == 1.0


def test_errors_pass_within_tolerance():
    errors = Errors()
    errors.add("c", "output", np.array([1.0 + 1e-15]), np.array([1.0]), REL)
    assert not errors.failed and errors.comparisons == 1


def test_a_shape_mismatch_fails_and_says_so():
    errors = Errors()
    assert errors.add("c", "output", np.zeros((2, 3)), np.zeros((2, 4)), REL) == math.inf
    assert errors.failed and "shape (2, 3), expected (2, 4)" in errors.worst.explain()


def test_exact_tolerance_fails_on_one_ulp():
    errors = Errors()
    errors.add("c", "output", np.array([np.nextafter(3.0, 4.0)]), np.array([3.0]), tolerances.EXACT)
    assert errors.failed and errors.max_err == 1.0


def test_fail_records_an_explained_failure():
    errors = Errors()
    errors.fail("c", "grad bias.0", "missing from refimpl's gradients", REL)
    assert errors.failed and "grad bias.0: missing from refimpl's gradients" in errors.worst.explain()


def test_add_rejects_a_ratio_tolerance():
    with pytest.raises(ValueError, match=r"tolerance unit expected 'rel' or 'ulp', got 'ratio'"):
        Errors().add("c", "output", np.ones(1), np.ones(1), tolerances.forward32())
