"""Shared pieces of the fuzz suite: outcome capture, the clear-error rule, and tensor layouts.

Every fuzzed call ends in one of two outcomes: a ValueError / IndexError / TypeError whose message names the
argument (or feature, or table), or a value. `outcome` records which; `assert_clear_error` holds the first to
the message rule and `assert_same_values` holds accel's value to refimpl's, NaN for NaN.
"""

import warnings
from typing import Any, Callable, Sequence, Tuple

import numpy as np
import pytest
import torch

ERRORS = (ValueError, IndexError, TypeError)


def outcome(call: Callable[[], Any]) -> Tuple:
    """("error", type, message) for a clear-error type, ("value", result) otherwise; anything else propagates.

    NumPy's overflow and invalid-value warnings are silenced (NaN/Inf inputs make them by design); its
    ComplexWarning is not, so a cast that drops an imaginary part fails the test instead of passing quietly.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        try:
            return "value", call()
        except ERRORS as exc:
            return "error", type(exc), str(exc)


def assert_clear_error(result: Tuple, names: Sequence[str], what: str) -> None:
    """The message of an error outcome names one of `names` (an argument, feature or table)."""
    assert result[0] == "error", f"{what}: expected an error, got a value"
    assert any(name in result[2] for name in names), f"{what}: {result[1].__name__} names none of {names}: {result[2]}"


def as_float64(value: Any) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def assert_same_values(got: Any, want: Any, what: str, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """accel's value equals refimpl's elementwise: NaN exactly where refimpl has NaN, the same infinities,
    finite values within rtol/atol (float64 both sides)."""
    got, want = as_float64(got), as_float64(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, refimpl {want.shape}"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN pattern")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}: +inf pattern")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}: -inf pattern")
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=atol, err_msg=what)


# Layouts a tensor can arrive in; the values are always those of the given array.
LAYOUTS = ("contiguous", "transposed", "sliced", "zero-stride")


def with_layout(a: np.ndarray, layout: str) -> torch.Tensor:
    """A tensor holding a's values in `layout`: a transposed view of a copy (non-contiguous), every other
    row of a larger tensor, or (for arrays whose rows along dim 0 are all equal) a 0-stride expand."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if a.ndim < 2 or layout == "contiguous":
        return t
    if layout == "transposed":
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "sliced":
        wide = torch.zeros((2 * a.shape[0],) + a.shape[1:], dtype=t.dtype)
        wide[::2] = t
        return wide[::2]
    if layout == "zero-stride":
        return t[:1].expand_as(t) if a.shape[0] else t
    raise AssertionError(layout)


@pytest.fixture(scope="module", autouse=True)
def quiet_numpy_floating_point():
    """NaN/Inf inputs make NumPy warn about invalid values and overflow by design; the tests check the values."""
    with np.errstate(all="ignore"):
        yield
