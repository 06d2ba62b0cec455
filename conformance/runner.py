"""The one generic runner: records in, one row per record out, failures that explain themselves.

A row: module, property, cases, max abs error, max error (in the tolerance's unit: ULP,
normwise relative, or float32 error ratio), status. A failing row says where (case, array,
index), by how much (got, reference, ULPs, tolerance and its reason) and how to rerun it alone.
"""

from __future__ import annotations

import math
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ContextManager, Dict, Iterable, List, Optional, Sequence

from conformance import ledger as ledger_mod
from conformance.compare import Errors
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

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        for key in ("max_abs", "max_err", "tolerance"):
            value = d[key]
            d[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        return d


def repro_command(record: Record, ctx: Context) -> str:
    device = "cuda" if ctx.cuda_simulator else ctx.device
    cmd = f"python -m conformance --module {record.module} --property '{record.property}' --device {device}"
    if ctx.cuda_simulator:
        cmd = "NUMBA_ENABLE_CUDASIM=1 " + cmd
    if ctx.against != "accel":
        cmd += f" --against {ctx.against}"
    if ctx.golden_dir != GOLDEN_DIR:
        cmd += f" --golden {ctx.golden_dir}"
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


def run_record(record: Record, ctx: Context) -> Row:
    row = Row(record.module, record.property, record.kind, ctx.device_label, ctx.against,
              0, math.nan, math.nan, "", math.nan, SKIP, repro=repro_command(record, ctx))
    reason = skip_reason(record, ctx)
    if reason is not None:
        row.detail = reason
        return row
    try:
        with _launch_path(ctx):
            outcome = record.check(record, ctx)
    except Exception as exc:  # a check that crashes is a failure that must still explain itself
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        row.status = FAIL
        row.detail = (f"check raised {type(exc).__name__}: {exc} "
                      f"(at {Path(frame.filename).name}:{frame.lineno})")
        return _discrepancy_verdict(record, ctx, row)
    row.status = outcome.status
    row.cases = outcome.cases
    row.detail = outcome.detail
    if outcome.errors is not None:
        row.max_abs = outcome.errors.max_abs
        row.max_err = outcome.errors.max_err
        row.unit = outcome.unit
        row.tolerance = outcome.tolerance
    return _discrepancy_verdict(record, ctx, row)


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


def run(records: Sequence[Record], ctx: Context) -> List[Row]:
    return [run_record(r, ctx) for r in records]


def _fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = "inf" if math.isinf(value) else f"{value:.3g}"
    return f"{text} {unit}".strip()


def format_table(rows: Sequence[Row]) -> str:
    """Aligned text: one line per row, then each failure's explanation and repro command."""
    header = ("module", "property", "device", "cases", "max abs err", "max ULP/rel err", "tolerance", "status")
    lines = [
        (r.module, r.property, r.device, str(r.cases), _fmt(r.max_abs), _fmt(r.max_err, r.unit),
         _fmt(r.tolerance, r.unit), r.status)
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    failures = [r for r in rows if r.status == FAIL]
    for r in failures:
        out.append("")
        out.append(f"FAIL {r.module}/{r.property} [{r.device}]: {r.detail}")
        out.append(f"  repro: {r.repro}")
    reasons: Dict[str, int] = {}
    for r in rows:
        if r.status == SKIP:
            reasons[r.detail] = reasons.get(r.detail, 0) + 1
    if reasons:
        out.append("")
        out += [f"SKIP x{n}: {reason}" for reason, n in reasons.items()]
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, SKIP)}
    out.append("")
    out.append(f"{len(rows)} properties: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
    return "\n".join(out)
