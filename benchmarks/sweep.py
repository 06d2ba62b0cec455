"""Run every case on every provider and collect one row per (case, provider).

Per case: the first provider (the anchor) is built under `torch.manual_seed(0)`; its parameters
are loaded into every other provider, so they all compute the same function on the same seeded
float32 inputs, and each row records how far its forward lies from the anchor's
(max |y - y_anchor| / max |y_anchor|) next to its times. All providers of a case are timed in
interleaved rounds, so that load from elsewhere hits them alike.
"""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from benchmarks import machine
from benchmarks.cases import Case
from benchmarks.providers import Unavailable
from benchmarks.timing import Timed, TimingPlan, median_times


@dataclass
class Row:
    case: str
    provider: str
    role: str  # "anchor", "accel", "refimpl" or "gemm"
    device: str
    status: str  # "ok", "n/a" (provider cannot run it here) or "error"
    note: str = ""
    unit: str = ""
    fwd_ms: Optional[float] = None
    fwd_bwd_ms: Optional[float] = None
    reps: Optional[int] = None  # timed calls behind the fwd+bwd median (fwd has at least as many)
    fwd_rate: Optional[float] = None  # GFLOP/s or GB/s from the case's work model
    fwd_bwd_rate: Optional[float] = None
    speedup_fwd: Optional[float] = None  # same-device anchor time / this time
    speedup_fwd_bwd: Optional[float] = None
    rel_err: Optional[float] = None
    load_1min: Optional[float] = None  # the machine's load average when the row was measured
    others_busy: Optional[float] = None  # CPU share other programs used just before the case

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def case_inputs(case: Case, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in case.input_shapes]


def _rel_err(out: Optional[np.ndarray], ref: Optional[np.ndarray]) -> Optional[float]:
    if out is None or ref is None:
        return None
    if out.shape != ref.shape:
        return float("inf")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return float(np.max(np.abs(out - ref))) / (scale or 1.0) if ref.size else 0.0


def _error_row(case: Case, provider, status: str, exc: Exception) -> Row:
    note = str(exc) if status == "n/a" else f"{type(exc).__name__}: {exc}"
    return Row(case.name, provider.name, provider.role, provider.device, status,
               note.splitlines()[0][:300] if note else "")


def _prepare_all(case: Case, providers: Sequence, log: Callable[[str], None]):
    """Build every provider with the first one's parameters and run each once (a provider that
    fails here gets an error row instead of a place in the timing rounds)."""
    inputs = case_inputs(case)
    state = ref = None
    ready, failed = [], []
    for provider in providers:
        log(f"  {case.name:24s} {provider.name}")
        try:
            prepared = provider.prepare(case, state, inputs)
            out = prepared.output()
            if state is None:
                state, ref = prepared.state, out
            if prepared.before_backward is not None:
                prepared.before_backward()
            prepared.forward_backward()
            ready.append((provider, prepared, _rel_err(out, ref)))
        except Unavailable as exc:
            failed.append(_error_row(case, provider, "n/a", exc))
        except Exception as exc:  # one broken provider must not lose the rest of the sweep
            failed.append(_error_row(case, provider, "error", exc))
    return ready, failed


def run_case(
    case: Case, providers: Sequence, plan: TimingPlan, log: Callable[[str], None] = print,
    quiet_wait_s: float = 0.0,
) -> List[Row]:
    """Time the case on every provider, forward then forward+backward, in interleaved rounds.

    `providers[0]` should be an anchor: its parameters go to the others and its forward is the
    reference of the rel_err column. Rows come back in the order of `providers`. With
    `quiet_wait_s` > 0 it first waits up to that long for the rest of the machine to go idle.
    """
    busy = machine.wait_until_quiet(quiet_wait_s) if quiet_wait_s > 0 else machine.others_busy(0.25)
    ready, failed = _prepare_all(case, providers, log)
    fwd = median_times([Timed(p.forward, p.sync) for _, p, _ in ready], plan)
    fwd_bwd = median_times([Timed(p.forward_backward, p.sync, p.before_backward) for _, p, _ in ready], plan)
    work = case.work
    load = os.getloadavg()[0]
    rows = failed + [
        Row(case.name, provider.name, provider.role, provider.device, "ok", unit=work.unit,
            fwd_ms=f.median_ms, fwd_bwd_ms=fb.median_ms, reps=fb.reps,
            fwd_rate=work.fwd / f.median_ms / 1e6, fwd_bwd_rate=work.fwd_bwd / fb.median_ms / 1e6,
            rel_err=err, load_1min=load, others_busy=busy)
        for (provider, _, err), f, fb in zip(ready, fwd, fwd_bwd)
    ]
    del ready  # the providers' modules and buffers, before the next case allocates its own
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    order = {p.name: i for i, p in enumerate(providers)}
    rows.sort(key=lambda r: order[r.provider])
    _fill_speedups(rows)
    return rows


def _fill_speedups(rows: List[Row]) -> None:
    anchors = {r.device: r for r in rows if r.role == "anchor" and r.status == "ok"}
    for row in rows:
        anchor = anchors.get(row.device)
        if anchor is None or row.status != "ok":
            continue
        row.speedup_fwd = anchor.fwd_ms / row.fwd_ms
        row.speedup_fwd_bwd = anchor.fwd_bwd_ms / row.fwd_bwd_ms


# Medians of the same computation measured in the same rounds still differ by a few per cent
# here (2 shared cores); a miss by less than this is reported as within noise.
NOISE = 0.03


def evaluate_targets(cases: Sequence[Case], rows: Sequence[Row]) -> List[Dict[str, object]]:
    """One verdict per (case, device with an accel row): the case's target on fwd+bwd times."""
    verdicts = []
    for case in cases:
        mine = [r for r in rows if r.case == case.name and r.status == "ok"]
        for accel in (r for r in mine if r.role == "accel"):
            against = [r for r in mine if r.device == accel.device and r.role == case.target.against]
            if not against:
                continue
            base = against[0]
            if case.target.against == "gemm":
                value = accel.fwd_bwd_ms / base.fwd_bwd_ms
                met = value <= case.target.factor
            else:
                value = base.fwd_bwd_ms / accel.fwd_bwd_ms
                met = value >= case.target.factor
            near = abs(value - case.target.factor) <= NOISE * case.target.factor
            verdict = "met" if met else ("missed, within noise" if near else "missed")
            verdicts.append(
                dict(case=case.name, device=accel.device, target=case.target.text,
                     against=base.provider, value=value, met=met, verdict=verdict)
            )
    return verdicts
