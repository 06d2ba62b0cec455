"""Median wall times of callables, after warm-up, with the device synchronised around each call.

Several callables are timed in interleaved rounds (one call of each per round), so that a burst
of load from elsewhere on the machine lands on all of them alike and their ratio stays fair.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence


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
class Timed:
    """One callable to time: `setup()` runs untimed before each call, `sync()` around it."""

    fn: Callable[[], object]
    sync: Callable[[], None] = lambda: None
    setup: Optional[Callable[[], None]] = None


@dataclass(frozen=True)
class Timing:
    median_ms: float
    reps: int


def _call(item: Timed) -> float:
    if item.setup is not None:
        item.setup()
    item.sync()
    start = time.perf_counter()
    item.fn()
    item.sync()
    return time.perf_counter() - start


def median_times(items: Sequence[Timed], plan: TimingPlan) -> List[Timing]:
    """Median over the timed calls of each item; each stops on its own count and budget."""
    for item in items:
        for _ in range(plan.warmup):
            _call(item)
    samples: List[List[float]] = [[] for _ in items]
    active = list(range(len(items)))
    while active:
        for i in active:
            samples[i].append(_call(items[i]))
        active = [
            i for i in active
            if len(samples[i]) < plan.reps
            and not (len(samples[i]) >= plan.min_reps and sum(samples[i]) >= plan.budget_s)
        ]
    return [Timing(1e3 * statistics.median(s), len(s)) for s in samples]


def median_time(fn: Callable[[], object], plan: TimingPlan, sync: Callable[[], None] = lambda: None,
                setup: Optional[Callable[[], None]] = None) -> Timing:
    """Median over the timed calls of `fn()` alone."""
    return median_times([Timed(fn, sync, setup)], plan)[0]
