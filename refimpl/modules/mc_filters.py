"""Threshold filters of managed collision: which ids of an eviction round may enter the table.

Each filter takes the per-unique-id counts c (ids in ascending order, as `unique` returns them)
and returns (mask, threshold); an id passes when its score is strictly greater than the
threshold. Scores and thresholds are float32, as TorchRec 1.8 computes them (semantics.md 11.1).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from refimpl.base import as_numpy

__all__ = ["dynamic_threshold_filter", "average_threshold_filter", "probabilistic_threshold_filter"]

Array = np.ndarray


def _counts(id_counts: Any, who: str) -> Array:
    c = as_numpy(id_counts)
    if c.ndim != 1:
        raise ValueError(f"{who}: id_counts expected a 1-D array of per-id counts, got shape {c.shape}")
    if c.dtype.kind not in "iuf":
        raise TypeError(f"{who}: id_counts expected an integer or float array, got dtype {c.dtype}")
    return c


def dynamic_threshold_filter(id_counts: Any, threshold_skew_multiplier: float = 10.0) -> Tuple[Array, np.float32]:
    """mask_j = c_j > thr,  thr = float32(sum_j c_j) * float32(multiplier / n)   (float32, strict >)

    Shapes: c (n,) -> mask (n,) bool, thr a float32 scalar. Source: semantics.md 11.1; the float32
    rounding of the sum and of (1/n)*multiplier is TorchRec's. With no ids (n = 0) recspec returns
    (empty mask, NaN); TorchRec raises ZeroDivisionError, which ends an eviction round over an empty
    window.
    """
    c = _counts(id_counts, "dynamic_threshold_filter")
    n = c.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool), np.float32(np.nan)
    mass = np.float32((1 / n) * threshold_skew_multiplier)
    thr = np.float32(np.float32(c.sum()) * mass)
    return c.astype(np.float32) > thr, thr


def average_threshold_filter(id_counts: Any) -> Tuple[Array, np.float32]:
    """mask_j = c_j > thr,  thr = mean_j float32(c_j)   (float32, strict >)

    Shapes: c (n,) -> mask (n,) bool, thr a float32 scalar (NaN for n = 0). Source: semantics.md
    11.1. The sum is exact while it stays below 2^24 (a window of fewer than 16.7 million ids); past
    that TorchRec's float32 summation order can round the mean differently in the last bit.
    """
    c = _counts(id_counts, "average_threshold_filter")
    n = c.shape[0]
    c32 = c.astype(np.float32)
    if n == 0:
        return np.zeros(0, dtype=bool), np.float32(np.nan)
    thr = np.float32(np.float32(c32.astype(np.float64).sum()) / np.float32(n))
    return c32 > thr, thr


def probabilistic_threshold_filter(
    id_counts: Any, per_id_probability: float = 0.01, rng: Optional[np.random.Generator] = None
) -> Tuple[Array, Array]:
    """mask_j = score_j > t_j,  score_j = 1 - (1 - p)^{c_j}  (float32),  t_j ~ U[0, 1) (float32)

    Shapes: c (n,) -> mask (n,) bool, t (n,) float32 (the random thresholds). One uniform draw per
    unique id, in ascending-id order, from `rng` (a numpy Generator; a fresh unseeded one when None).
    Source: semantics.md 11.1 (an id seen 100 times at p = 0.01 passes with probability 0.634, D27).
    TorchRec draws t from torch's global generator; its vectorised pow may differ from this
    correctly rounded float32 pow in the last bit.
    """
    c = _counts(id_counts, "probabilistic_threshold_filter")
    if rng is None:
        rng = np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"probabilistic_threshold_filter: rng expected a numpy.random.Generator or None, got {type(rng).__name__}"
        )
    q = np.float32(1 - per_id_probability)
    score = np.float32(1) - np.power(q, c.astype(np.float32))
    t = rng.random(c.shape[0], dtype=np.float32)
    return score > t, t
