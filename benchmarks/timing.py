"""Median wall time of a callable, after warm-up, with the device synchronised around each call."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class TimingPlan:
    """How many calls to make: `warmup` untimed calls (they absorb Numba/CUDA compilation and
    allocator growth), then up to `reps` timed calls, stopping early once at least `min_reps`
    are done and the timed calls have used `budget_s` (so that a slow provider does not hold
    the sweep for minutes)."""

    warmup: int = 3
    reps: int = 15
    min_reps: int = 5
    budget_s: float = 10.0


FULL = TimingPlan()
QUICK = TimingPlan(warmup=1, reps=3, min_reps=2, budget_s=1.0)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    reps: int


def median_time(
    fn: Callable[[], object],
    plan: TimingPlan,
    sync: Callable[[], None] = lambda: None,
    setup: Optional[Callable[[], None]] = None,
) -> Timing:
    """Median over the timed calls of `fn()`; `setup()` runs before each call, untimed."""
    for _ in range(plan.warmup):
        if setup is not None:
            setup()
        fn()
    sync()
    samples = []
    spent = 0.0
    while len(samples) < plan.reps:
        if setup is not None:
            setup()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        spent += elapsed
        if len(samples) >= plan.min_reps and spent >= plan.budget_s:
            break
    return Timing(median_ms=1e3 * statistics.median(samples), reps=len(samples))
