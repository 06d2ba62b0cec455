"""Error measurement: normwise relative error, ULPs, and the worst element of a whole record.

`Errors` accumulates comparisons over every case of one record and remembers the worst one
(highest error relative to its tolerance), so that a failure can say where, by how much and on
which input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

import numpy as np

from conformance.tolerances import Tolerance


@dataclass(frozen=True)
class Worst:
    """The element that came closest to (or went furthest past) its tolerance."""

    case: str
    array: str
    index: Tuple[int, ...]
    got: float
    ref: float
    ulps: float
    err: float
    tolerance: Tolerance
    note: str = ""
    ref32: Optional[float] = None  # a float32 reference's value there (refimpl in float32), where known

    @property
    def abs_err(self) -> float:
        """|got - ref| in float64 (nan for a comparison that could not be made)."""
        if self.note:
            return math.nan
        return float(_abs_diff(np.float64(self.got), np.float64(self.ref)))

    @property
    def gap32(self) -> Optional[float]:
        """|ref32 - ref|: how far a float32 reference lies from the float64 one at this element."""
        if self.ref32 is None:
            return None
        return float(_abs_diff(np.float64(self.ref32), np.float64(self.ref)))

    def with_ref32(self, ref32: float) -> "Worst":
        return replace(self, ref32=float(ref32))

    def explain(self) -> str:
        """One line: where (case, array, index), the values, abs and ULP error, the error in the
        tolerance's unit against the tolerance and its reason, and the float32 reference's gap."""
        if self.note:
            return f"case '{self.case}', {self.array}: {self.note}"
        gap = ""
        if self.ref32 is not None:
            gap = f"; float32 reference {self.ref32!r}, {self.gap32:.3g} from float64"
        return (
            f"case '{self.case}', {self.array}{list(self.index)}: got {self.got!r}, "
            f"reference {self.ref!r} (abs error {self.abs_err:.3g}, {_fmt_ulps(self.ulps)}{gap}; "
            f"error {self.err:.3g} {self.tolerance.unit} vs tolerance {self.tolerance.value:.3g}: "
            f"{self.tolerance.reason})"
        )

    def as_dict(self) -> Dict[str, Any]:
        """The element as JSON-ready values (non-finite numbers as strings, as JSON has none)."""
        d: Dict[str, Any] = {"case": self.case, "array": self.array, "index": list(self.index)}
        for key in ("got", "ref", "abs_err", "ulps", "err", "ref32", "gap32"):
            d[key] = _json_number(getattr(self, key))
        d.update(unit=self.tolerance.unit, tolerance=self.tolerance.value, reason=self.tolerance.reason,
                 note=self.note)
        return d


def _json_number(value: Optional[float]) -> Any:
    if value is None or math.isfinite(value):
        return value
    return str(value)


def _fmt_ulps(ulps: float) -> str:
    return "inf ULP" if math.isinf(ulps) else f"{ulps:.3g} ULP"


def ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| in units in the last place of ref, in got's floating dtype."""
    dtype = got.dtype if np.issubdtype(got.dtype, np.floating) else np.dtype(np.float64)
    spacing = np.spacing(np.abs(ref.astype(dtype)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _abs_diff(got, ref) / spacing.astype(np.float64)


def _abs_diff(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| in float64, 0 where both are the same non-finite value, inf where one is."""
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g - r)
    same = (g == r) | (np.isnan(g) & np.isnan(r))
    return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))


def normwise(got: np.ndarray, ref: np.ndarray, scale: Optional[float] = None) -> float:
    """max |got - ref| / scale, scale = max |ref| unless given; 0/0 counts as 0."""
    diff = _abs_diff(got, ref)
    if diff.size == 0:
        return 0.0
    top = float(diff.max())
    if scale is None:
        finite = np.abs(ref[np.isfinite(ref)].astype(np.float64))
        scale = float(finite.max()) if finite.size else 0.0
    if top == 0.0:
        return 0.0
    return top / scale if scale > 0 else math.inf


class Errors:
    """Running maxima of the comparisons of one record; `failed` once any exceeds its tolerance."""

    def __init__(self) -> None:
        self.comparisons = 0
        self.max_abs = 0.0
        self.max_err = 0.0
        self.failed = False
        self.worst: Optional[Worst] = None
        self._worst_excess = -math.inf

    def add(
        self,
        case: str,
        array: str,
        got: np.ndarray,
        ref: np.ndarray,
        tolerance: Tolerance,
        scale: Optional[float] = None,
    ) -> float:
        """Compare got with ref under tolerance ("rel" or "ulp"); return the error in its unit."""
        got = np.asarray(got)
        ref = np.asarray(ref)
        self.comparisons += 1
        if got.shape != ref.shape:
            self._record(
                Worst(case, array, (), math.nan, math.nan, math.inf, math.inf, tolerance,
                      note=f"shape {got.shape}, expected {ref.shape}"),
                math.inf, math.inf,
            )
            return math.inf
        diff = _abs_diff(got, ref)
        if tolerance.unit == "ulp":
            err_all = ulps(got, ref)
            err = float(err_all.max()) if err_all.size else 0.0
        elif tolerance.unit == "rel":
            err_all = diff
            err = normwise(got, ref, scale)
        else:
            raise ValueError(f"Errors.add: tolerance unit expected 'rel' or 'ulp', got {tolerance.unit!r}")
        if diff.size == 0:
            self._record(None, 0.0, 0.0)
            return 0.0
        index = np.unravel_index(int(np.argmax(err_all)), err_all.shape)
        worst = Worst(
            case, array, tuple(int(i) for i in index), float(got[index]), float(ref[index]),
            float(ulps(got[index], ref[index])), err, tolerance,
        )
        self._record(worst, float(diff.max()), err)
        return err

    def add_ratio(self, err: float, worst: Optional[Worst], abs_err: float = 0.0) -> None:
        """Record an error the caller computed in its tolerance's unit (a ratio), with its worst
        element (None for an empty comparison)."""
        self.comparisons += 1
        self._record(worst, abs_err, err)

    def fail(self, case: str, array: str, note: str, tolerance: Tolerance) -> None:
        """A comparison that cannot be made (an exception, a missing gradient) fails the record."""
        self.comparisons += 1
        self._record(
            Worst(case, array, (), math.nan, math.nan, math.inf, math.inf, tolerance, note=note),
            math.inf, math.inf,
        )

    def _record(self, worst: Optional[Worst], abs_err: float, err: float) -> None:
        self.max_abs = max(self.max_abs, abs_err)
        self.max_err = max(self.max_err, err)
        if worst is None:
            return
        limit = worst.tolerance.value
        if limit == 0:
            excess = math.inf if err > 0 else 0.0
        else:
            excess = err / limit
        if err > limit:
            self.failed = True
        if excess > self._worst_excess or self.worst is None:
            self._worst_excess = excess
            self.worst = worst
