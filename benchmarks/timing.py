"""Median wall times of callables, after warm-up, with the device synchronised around each call.

Several callables are timed in rounds, a block of consecutive calls each per round, so that a
burst of load from elsewhere on the machine lands on all of them alike and their ratio stays
fair. Before each block the machine idles for a moment and one untimed call is made: thread
pools of another runtime (OpenBLAS under NumPy, the OpenMP pools of torch and Numba) keep
spinning for up to about 0.1 s after their last call, and a block measured inside that window
runs on fewer than all cores.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence


@dataclass(frozen=True)
class TimingPlan:
    """How many calls to make: `warmup` untimed calls (they absorb Numba/CUDA compilation and
    allocator growth), then up to `reps` timed calls in `rounds` blocks, stopping early once at
    least `min_reps` are done and the timed calls have used `budget_s` (so that a slow provider
    does not hold the sweep for minutes). `pause_s` is the idle time before each block."""

    warmup: int = 3
    reps: int = 15
    min_reps: int = 5
    budget_s: float = 10.0
    rounds: int = 3
    pause_s: float = 0.25


FULL = TimingPlan()
QUICK = TimingPlan(warmup=1, reps=3, min_reps=2, budget_s=1.0, rounds=1, pause_s=0.0)


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
    block = max(1, math.ceil(plan.reps / max(1, plan.rounds)))

    def done(i: int) -> bool:
        n = len(samples[i])
        return n >= plan.reps or (n >= plan.min_reps and sum(samples[i]) >= plan.budget_s)

    active = list(range(len(items)))
    while active:
        for i in active:
            if len(items) > 1:
                time.sleep(plan.pause_s)
                _call(items[i])  # settles the caches and thread pools on this item
            for _ in range(block):
                samples[i].append(_call(items[i]))
                if done(i):
                    break
        active = [i for i in active if not done(i)]
    return [Timing(1e3 * statistics.median(s), len(s)) for s in samples]


def median_time(fn: Callable[[], object], plan: TimingPlan, sync: Callable[[], None] = lambda: None,
                setup: Optional[Callable[[], None]] = None) -> Timing:
    """Median over the timed calls of `fn()` alone."""
    return median_times([Timed(fn, sync, setup)], plan)[0]
