"""The one generic runner: records in, one row per record out, failures that explain themselves.

A row: module, property, cases, max abs error, max error (in the tolerance's unit: ULP,
normwise relative, or float32 error ratio), status, and the record's stable id. A failing row
says where (case, array, index), by how much (got, reference, abs and ULP error, a float32
reference's gap to float64 where the record has one, tolerance and its reason) and how to rerun
it alone (`python -m conformance --repro ID`). Rendering (text, JSON, JUnit) is conformance.report.
"""

from __future__ import annotations

import difflib
import math
import shlex
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence

from conformance import ledger as ledger_mod
from conformance.compare import Errors, Worst
from conformance.records import Record
from conformance.tolerances import Tolerance

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Context:
    """Where records run: the package under test, its device, the golden set and the seed.

    `device` is the torch device the checks put tensors on. With `cuda_simulator` the tensors stay on
    the CPU and every check runs inside accel's `simulated_cuda()` block, so accel launches its CUDA
    kernels on Numba's simulator (NUMBA_ENABLE_CUDASIM=1); rows then name the device "cuda (simulator)".
    """

    against: str = "accel"  # or "torchrec"
    device: str = "cpu"  # or "cuda"
    golden_dir: Path = GOLDEN_DIR
    seed: int = 0
    ledger: Dict[str, ledger_mod.Entry] = field(default_factory=ledger_mod.load)
    cuda_simulator: bool = False

    def __post_init__(self) -> None:
        if self.cuda_simulator and self.device != "cpu":
            raise ValueError(f"Context: cuda_simulator runs on CPU tensors, so device must be 'cpu', "
                             f"got {self.device!r}")

    @property
    def device_label(self) -> str:
        """The device as rows and repro commands name it: "cpu", "cuda" or "cuda (simulator)"."""
        return SIMULATOR_LABEL if self.cuda_simulator else self.device

    @staticmethod
    def for_device(device: str, **kwargs: object) -> "Context":
        """The Context for `--device device`: CUDA on Numba's simulator when torch has no CUDA device and
        NUMBA_ENABLE_CUDASIM=1, else `device` itself."""
        if device == "cuda" and simulator_fallback():
            return Context(device="cpu", cuda_simulator=True, **kwargs)  # type: ignore[arg-type]
        return Context(device=device, **kwargs)  # type: ignore[arg-type]


SIMULATOR_LABEL = "cuda (simulator)"


def simulator_fallback() -> bool:
    """True when `--device cuda` must run on Numba's CUDA simulator: torch sees no CUDA device and the
    simulator is on (NUMBA_ENABLE_CUDASIM=1)."""
    import numba
    import torch

    return not torch.cuda.is_available() and bool(numba.config.ENABLE_CUDASIM)


@dataclass
class Outcome:
    """What a check found; `errors` carries the numbers, `detail` any explanation."""

    status: str
    cases: int = 0
    errors: Optional[Errors] = None
    detail: str = ""
    tolerance: float = math.nan
    unit: str = ""

    @staticmethod
    def from_errors(errors: Errors, cases: int, tolerance: Tolerance) -> "Outcome":
        """PASS unless a comparison exceeded its tolerance; a failure explains its worst element."""
        status = FAIL if errors.failed else PASS
        detail = errors.worst.explain() if errors.failed and errors.worst else ""
        # The row shows the tolerance that bound hardest (builds of one record differ in n).
        shown = errors.worst.tolerance if errors.worst is not None else tolerance
        return Outcome(status, cases, errors, detail, shown.value, shown.unit)


@dataclass
class Row:
    module: str
    property: str
    kind: str
    device: str
    against: str
    cases: int
    max_abs: float
    max_err: float
    unit: str
    tolerance: float
    status: str
    detail: str = ""
    repro: str = ""
    id: str = ""
    short_id: str = ""
    seconds: float = 0.0
    worst: Optional[Dict[str, Any]] = None  # compare.Worst.as_dict() of the record's worst element

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        for key in ("max_abs", "max_err", "tolerance"):
            value = d[key]
            d[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        return d


def repro_command(record: Record, ctx: Context) -> str:
    """The one line that reruns exactly this record in this context (device, package, seed, golden set)."""
    device = "cuda" if ctx.cuda_simulator else ctx.device
    cmd = f"python -m conformance --repro {shlex.quote(record.id)} --device {device}"
    if ctx.cuda_simulator:
        cmd = "NUMBA_ENABLE_CUDASIM=1 " + cmd
    if ctx.against != "accel":
        cmd += f" --against {ctx.against}"
    if ctx.seed != 0:
        cmd += f" --seed {ctx.seed}"
    if ctx.golden_dir != GOLDEN_DIR:
        cmd += f" --golden {shlex.quote(str(ctx.golden_dir))}"
    return cmd


def skip_reason(record: Record, ctx: Context) -> Optional[str]:
    """Why `record` does not run in `ctx`, or None."""
    if ctx.against == "torchrec" and "accel" in record.sides:
        if record.kind == "error":
            return ("recspec's input validation is its own: TorchRec raises RuntimeError or "
                    "AssertionError for these inputs (see the discrepancy ledger)")
        if "float32" not in record.dtypes:
            return ("TorchRec's modules are float32-only (its cross nets reject float64 input, "
                    "semantics.md 3); float64 comparisons run against accel")
    return None


def run_record(record: Record, ctx: Context, diagnose: bool = False) -> Row:
    """Run one record; a failure (or, with `diagnose`, any outcome) also gets the float32
    reference at its worst element where the record has one (`_with_float32_reference`)."""
    row = Row(record.module, record.property, record.kind, ctx.device_label, ctx.against,
              0, math.nan, math.nan, "", math.nan, SKIP, repro=repro_command(record, ctx),
              id=record.id, short_id=record.short_id)
    reason = skip_reason(record, ctx)
    if reason is not None:
        row.detail = reason
        return row
    start = time.perf_counter()
    try:
        with _launch_path(ctx):
            outcome = record.check(record, ctx)
    except Exception as exc:  # a check that crashes is a failure that must still explain itself
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        row.seconds = time.perf_counter() - start
        row.status = FAIL
        row.detail = (f"check raised {type(exc).__name__}: {exc} "
                      f"(at {Path(frame.filename).name}:{frame.lineno})")
        return _discrepancy_verdict(record, ctx, row)
    row.seconds = time.perf_counter() - start
    row.status = outcome.status
    row.cases = outcome.cases
    row.detail = outcome.detail
    if outcome.errors is not None:
        row.max_abs = outcome.errors.max_abs
        row.max_err = outcome.errors.max_err
        row.unit = outcome.unit
        row.tolerance = outcome.tolerance
        worst = outcome.errors.worst
        if worst is not None and (outcome.status == FAIL or diagnose):
            worst = _with_float32_reference(record, ctx, worst)
            if worst.ref32 is not None and outcome.status == FAIL:
                row.detail = _replace_explanation(row.detail, outcome.errors.worst, worst)
        row.worst = worst.as_dict() if worst is not None else None
    return _discrepancy_verdict(record, ctx, row)


def _replace_explanation(detail: str, old: Worst, new: Worst) -> str:
    """`detail` with the worst element's explanation redone to show the float32 reference."""
    before = old.explain()
    return detail.replace(before, new.explain()) if before in detail else f"{detail} ({new.explain()})"


def _with_float32_reference(record: Record, ctx: Context, worst: Worst) -> Worst:
    """`worst` with refimpl-float32's value at its element, for a failing forward_f32 record.

    The float32 check keeps only the ratio; the float32 reference is recomputed here, on the
    same build, case and state, so that a failure shows how far a correct float32 result lies
    from float64 at the element in question. Any record this does not know stays as it is.
    """
    if record.kind != "forward_f32" or worst.note:
        return worst
    try:
        value = _float32_reference(record, ctx, worst)
    except Exception:  # a diagnosis must never turn a failure report into a crash
        return worst
    return worst if value is None else worst.with_ref32(value)


def _float32_reference(record: Record, ctx: Context, worst: Worst) -> Optional[float]:
    """refimpl-float32 at `worst`'s element: the worst case rebuilt as the dense or embedding
    float32 check builds it (same seed, so the same state and inputs); None for another check."""
    import numpy as np

    from conformance import adapters, checks, generators
    from conformance.properties import embeddings_checks, embeddings_io

    build = next((b for b in record.builds if worst.case.startswith(f"{b.name}/")), None)
    if build is None:
        return None
    case_name = worst.case[len(build.name) + 1:]
    with _launch_path(ctx):
        if record.check is checks.check_forward_f32:
            case = next((c for c in generators.cases(record.generator, build, ctx.seed) if c.name == case_name), None)
            if case is None:
                return None
            pair = adapters.make_pair(build, seed=ctx.seed, dtype=np.float32, package=ctx.against, device=ctx.device)
            own = adapters.run_ref(pair.ref, adapters.cast(case.x, np.float32), np.float32)
            return float(np.asarray(own)[worst.index])
        if record.check is embeddings_checks.check_forward_f32:
            batch = dict(embeddings_checks.case_list(record, build, ctx)).get(case_name)
            if batch is None:
                return None
            if batch.weights is not None:  # the check rounds per-id weights to float32 once, as here
                batch = batch.with_weights(batch.weights.astype(np.float32).astype(np.float64))
            pair = embeddings_io.make_pair(build, seed=ctx.seed, dtype=np.float32, package=ctx.against,
                                           device=ctx.device)
            _, own = embeddings_io.run(pair.ref, build, batch, "refimpl", np.float32)
            return float(np.asarray(own[worst.array])[worst.index])
    return None


def _launch_path(ctx: Context) -> ContextManager[object]:
    """accel's simulated_cuda() block for a simulator context; nothing otherwise."""
    if not ctx.cuda_simulator:
        return nullcontext()
    from accel.kernels._device import simulated_cuda

    return simulated_cuda()


def _discrepancy_verdict(record: Record, ctx: Context, row: Row) -> Row:
    """A discrepancy record passes when its ledger entry's expectation holds."""
    if record.discrepancy is None or row.status == SKIP:
        return row
    entry = ctx.ledger.get(record.discrepancy)
    if entry is None:
        row.status = FAIL
        row.detail = (f"record names discrepancy {record.discrepancy}, which the ledger "
                      f"(conformance/discrepancies.json) does not list. {row.detail}").strip()
        return row
    reproduced = row.status == PASS
    if reproduced != entry.expected:
        row.status = FAIL
        if entry.expected:
            row.detail = (f"expected discrepancy {entry.id} ({entry.item}) no longer reproduces: "
                          f"{row.detail or 'the demonstration did not hold'}. If this change is "
                          f"intended, update conformance/discrepancies.json and docs/discrepancies.md")
        else:
            row.detail = (f"discrepancy {entry.id} ({entry.item}) is marked resolved in the ledger "
                          f"but reproduces again")
    else:
        row.status = PASS
    return row


def select(records: Iterable[Record], module: Optional[str] = None, prop: Optional[str] = None,
           device: str = "cpu") -> List[Record]:
    """The records for `module` (case-insensitive) and `prop`; on a CUDA pass only the records
    that run the package under test (refimpl-only records ran on the CPU pass)."""
    out = []
    for r in records:
        if module is not None and r.module.lower() != module.lower():
            continue
        if prop is not None and r.property != prop:
            continue
        if device != "cpu" and "accel" not in r.sides:
            continue
        out.append(r)
    return out


def find(records: Iterable[Record], ident: str) -> Record:
    """The record whose id ("Module/property", module case-insensitive) or short id is `ident`."""
    records = list(records)
    text = ident.strip()
    for r in records:
        if r.id == text or r.short_id == text.lower():
            return r
    module, _, prop = text.partition("/")
    for r in records:
        if r.module.lower() == module.lower() and r.property == prop:
            return r
    close = difflib.get_close_matches(text, [r.id for r in records], n=3, cutoff=0.5)
    hint = f"; close: {', '.join(close)}" if close else ""
    raise KeyError(f"record id expected a 'Module/property' id or an 8-digit short id of a registered record, "
                   f"got {ident!r}{hint}")


Progress = Callable[[int, int, Record], None]


def run(records: Sequence[Record], ctx: Context, progress: Optional[Progress] = None,
        diagnose: bool = False) -> List[Row]:
    """One row per record, in order; `progress(i, n, record)` is told before each starts."""
    rows = []
    for i, record in enumerate(records):
        if progress is not None:
            progress(i, len(records), record)
        rows.append(run_record(record, ctx, diagnose))
    return rows
