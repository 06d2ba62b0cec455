"""Checks of the managed-collision records: stream agreement (fixed and random streams), sem. 14's
vectors, bad input and the threshold filters; the helpers the other check files share. The
invariants and state_dict round trips are in mc_invariants, the MC embedding collections and
mc_embedding_modules.evict in mc_wrapped.

Each is `check(record, ctx) -> Outcome`; "the package under test" is `ctx.against` (accel, or
TorchRec). Agreement is exact: every remapped id, every evict() result and every state_dict
entry after every step.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from conformance import generators
from conformance.checks import expect_error
from conformance.properties import mc_io as io
from conformance.properties import mc_streams
from conformance.properties.mc_io import MAX, MCH, Stream, Wrapped
from conformance.records import Record
from conformance.runner import FAIL, PASS, SKIP, Context, Outcome


def sides(record: Record, ctx: Context) -> List[str]:
    return ["refimpl" if s == "refimpl" else ctx.against for s in record.sides]


def _crash(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"raised {type(exc).__name__}: {exc} (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"


def _outcome(problems: Sequence[str], count: int, skipped: int = 0, why: str = "") -> Outcome:
    if problems:
        return Outcome(FAIL, count, detail="; ".join(problems))
    detail = f"{skipped} case(s) not run here: {why}" if skipped else ""
    return Outcome(PASS, count, detail=detail)


# --- agreement ---------------------------------------------------------------------------------
def fits_torchrec(stream: Stream) -> bool:
    """Whether TorchRec records every id of the stream (its window is fixed by the first batch)."""
    spec = stream.module
    if isinstance(spec, MCH):
        return mc_streams.torchrec_fits(stream.steps, spec.interval)
    tables = spec.tables if isinstance(spec, Wrapped) else spec
    for table in tables.tables:
        steps = [_table_step(step, table.features) for step in stream.steps]
        if not mc_streams.torchrec_fits(steps, tables.interval):
            return False
    return True


def _table_step(step: io.Step, features: Sequence[str]) -> io.Step:
    """The ids one table's module sees in a collection step (its features, in config order)."""
    if step.batch is None:
        return step
    b = step.batch
    ids = [int(v) for f in features if f in b.keys for v in b.values[b.key_slice(f)]]
    return io.forward(ids)


def agreement_problem(stream: Stream, ctx: Context) -> str:
    """'' when the package under test and refimpl show the same arrays after every step."""
    if isinstance(stream.module, Wrapped):
        from conformance.properties.mc_wrapped import wrapped_problem

        try:
            return wrapped_problem(stream, ctx)
        except Exception as exc:  # the failure is the finding
            return f"{ctx.against} or refimpl {_crash(exc)}"
    try:
        _, ref = io.run(stream, "refimpl", seed=ctx.seed)
    except Exception as exc:  # the failure is the finding
        return f"refimpl {_crash(exc)}"
    try:
        _, got = io.run(stream, ctx.against, ctx.device, ctx.seed)
    except Exception as exc:  # the failure is the finding
        return f"{ctx.against} {_crash(exc)}"
    return io.first_difference(got, ref, stream.steps)


def check_streams(record: Record, ctx: Context) -> Outcome:
    """Every stream in record.data gives the same remapped ids, evict() results, state_dict
    entries and open slots in refimpl and in the package under test, after every step. Against
    TorchRec, streams that would overflow its fixed history window (D37) are not run."""
    problems, count, skipped = [], 0, 0
    for stream in record.data:
        if ctx.against == "torchrec" and not fits_torchrec(stream):
            skipped += 1
            continue
        count += 1
        problem = agreement_problem(stream, ctx)
        if problem:
            problems.append(f"stream '{stream.name}': {problem}")
    return _outcome(problems, count, skipped, "they overflow TorchRec's history window (ledger D37)")


def check_deviation_streams(record: Record, ctx: Context) -> Outcome:
    """check_streams on streams where recspec deviates from TorchRec on purpose: refimpl and accel
    agree; against TorchRec the ledger's discrepancy records show what TorchRec does instead."""
    if ctx.against == "torchrec":
        return Outcome(SKIP, detail="recspec deviates from TorchRec here on purpose (ledger D30, D35-D37); "
                                    "the discrepancy records run TorchRec's side")
    return check_streams(record, ctx)


def for_random_streams(n: int, ctx: Context, label: str, problem_of: Callable[[Stream], str],
                       **compose: Any) -> Tuple[int, str]:
    """(streams run, '' or the first problem with its stream) over n random streams: Hypothesis
    (seeded by ctx.seed; a failure is shrunk to a short stream) where it is installed, else
    seeded NumPy draws of the same distribution."""
    def guarded(stream: Stream) -> str:
        try:
            return problem_of(stream)
        except Exception as exc:  # a crash is a finding, shrunk like any other
            return _crash(exc)

    try:
        from hypothesis import HealthCheck, Phase, given, seed, settings
    except ImportError:  # pragma: no cover - Hypothesis is a test dependency
        rng = generators.rng_for(ctx.seed, "mc streams", label)
        for i in range(n):
            stream = mc_streams.random_stream(rng, **compose)
            problem = guarded(stream)
            if problem:
                return i + 1, f"{problem} (stream: {stream.describe()})"
        return n, ""
    runs: List[int] = [0]
    found: List[str] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink))
    @seed(ctx.seed)
    @given(mc_streams.streams(**compose))
    def search(stream: Stream) -> None:
        runs[0] += 1
        problem = guarded(stream)
        if problem:
            found.append(f"{problem} (stream: {stream.describe()})")
            raise AssertionError(found[-1])

    try:
        search()
    except AssertionError:
        return runs[0], found[-1] if found else "failed without a recorded problem"
    return runs[0], ""


def check_random_streams(record: Record, ctx: Context) -> Outcome:
    """refimpl and the package under test agree exactly on random streams (record.data[0] of
    them, with compose options record.data[1:]; against TorchRec only streams that avoid
    recspec's deliberate deviations)."""
    n, options = record.data[0], dict(record.data[1:])
    count, problem = for_random_streams(n, ctx, record.id, lambda s: agreement_problem(s, ctx),
                                        torchrec_safe=ctx.against == "torchrec", **options)
    return _outcome([problem] if problem else [], count)


# --- sem. 14's vectors ---------------------------------------------------------------------------
def vector_problem(vector: Any, package: str, ctx: Context) -> str:
    try:
        _, obs = io.run(vector.stream, package, ctx.device if package != "refimpl" else "cpu", ctx.seed)
    except Exception as exc:  # the failure is the finding
        return _crash(exc)
    for i, (got, want) in enumerate(zip(obs, vector.expected)):
        for name, expected in want.items():
            where = f"step {i} {vector.stream.steps[i].describe()}: {name}"
            if name not in got:
                return f"{where} not shown (have {sorted(got)})"
            value = got[name]
            if expected is None or value is None:
                if (expected is None) != (value is None):
                    return f"{where} is {_list(value)}, TorchRec 1.8 gave {_list(expected)}"
                continue
            want_arr = np.asarray(expected)
            same = (np.allclose(value.astype(np.float64), want_arr, rtol=1e-6, atol=0)
                    if want_arr.dtype.kind == "f" else value.tolist() == list(expected))
            if value.shape != want_arr.shape or not same:
                return f"{where} is {_list(value)}, TorchRec 1.8 gave {_list(expected)}"
    return ""


def _list(x: Any) -> str:
    if x is None:
        return "None"
    values = x.tolist() if hasattr(x, "tolist") else list(x)
    return "[" + ", ".join("M" if v == MAX else str(v) for v in values) + "]"


def check_vectors(record: Record, ctx: Context) -> Outcome:
    """Every vector in record.data reproduces, step by step, in refimpl and the package under test."""
    problems, count = [], 0
    for vector in record.data:
        for package in sides(record, ctx):
            count += 1
            problem = vector_problem(vector, package, ctx)
            if problem:
                problems.append(f"{package} '{vector.name}': {problem}")
    return _outcome(problems, count)


# --- bad input ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MCError:
    """Bad input: building stream.module must raise (bad None), or after stream.steps the call
    `bad` must raise, leaving the state_dict as it was; `follow` then runs on the module and on
    one that never saw the bad call, and both must show the same arrays."""

    label: str
    stream: Stream
    bad: Optional[io.Step]
    exception: type
    match: str
    mentions: Tuple[str, ...] = ()
    follow: Tuple[io.Step, ...] = ()


def error_problem(case: MCError, package: str, ctx: Context) -> str:
    device = ctx.device if package != "refimpl" else "cpu"
    if case.bad is None:
        return expect_error(lambda: io.build(case.stream, package, device, ctx.seed), case)
    with io.running(package, ctx.seed):
        module = io.build(case.stream, package, device, ctx.seed)
        clean = io.build(case.stream, package, device, ctx.seed)
        for step in case.stream.steps:
            io.observe(module, step, package, device)
            io.observe(clean, step, package, device)
        before = io.state_of(module)
        problem = expect_error(lambda: io.observe(module, case.bad, package, device), case)
        if problem:
            return problem
        after = io.state_of(module)
        changed = [k for k in before if not np.array_equal(before[k], after[k])]
        if changed:
            return f"the failed call changed {changed}"
        got = [io.observe(module, s, package, device) for s in case.follow]
        want = [io.observe(clean, s, package, device) for s in case.follow]
    # Rows re-initialised by an MC embedding collection's evict are random draws: not compared.
    problem = io.first_difference(got, want, case.follow,
                                  skip=lambda name: name.startswith(("state _embedding_module", "embeddings")))
    return f"after the failed call: {problem}" if problem else ""


def check_errors(record: Record, ctx: Context) -> Outcome:
    """Every MCError in record.data raises as stated (naming the argument, the expected and the
    received value) in refimpl and the package under test, and changes no state."""
    problems, count = [], 0
    for case in record.data:
        for package in sides(record, ctx):
            count += 1
            try:
                problem = error_problem(case, package, ctx)
            except Exception as exc:  # a crash outside the bad call is a finding too
                problem = _crash(exc)
            if problem:
                problems.append(f"{package} ({case.label}): {problem}")
    return _outcome(problems, count)


# --- threshold filters ------------------------------------------------------------------------------
def _apply_filter(flt: io.Filter, counts: Sequence[int], package: str, ctx: Context) -> Tuple[np.ndarray, np.float32]:
    """(mask as bool, threshold as float32) of the filter on int64 counts in `package`."""
    c: Any = np.asarray(counts, dtype=np.int64)
    if package != "refimpl":
        import torch

        c = torch.as_tensor(c, device=ctx.device)
    mask, threshold = flt.build(package, ctx.seed)(c)
    return io.to_numpy(mask).astype(bool), np.float32(io.to_numpy(threshold))


def check_filters(record: Record, ctx: Context) -> Outcome:
    """record.data = ((filter, counts), ...): the deterministic filters give the same mask and
    threshold (float32) in refimpl and the package under test."""
    problems, count = [], 0
    for flt, counts in record.data:
        count += 1
        m_ref, t_ref = _apply_filter(flt, counts, "refimpl", ctx)
        m_got, t_got = _apply_filter(flt, counts, ctx.against, ctx)
        if m_ref.tolist() != m_got.tolist() or not (t_ref == t_got or (np.isnan(t_ref) and np.isnan(t_got))):
            problems.append(f"{flt.describe()} on {list(counts)}: {ctx.against} mask {m_got.tolist()} threshold "
                            f"{t_got!r}, refimpl mask {m_ref.tolist()} threshold {t_ref!r}")
    return _outcome(problems, count)


def check_filter_vectors(record: Record, ctx: Context) -> Outcome:
    """record.data = ((filter, counts, mask, threshold), ...) from sem. 11.1: reproduced exactly
    (the thresholds are exact in float32) in refimpl and the package under test."""
    problems, count = [], 0
    for flt, counts, mask, threshold in record.data:
        for package in sides(record, ctx):
            count += 1
            got_mask, got_threshold = _apply_filter(flt, counts, package, ctx)
            if got_mask.tolist() != list(mask) or float(got_threshold) != threshold:
                problems.append(f"{package} {flt.describe()} on {list(counts)}: mask {got_mask.tolist()}, threshold "
                                f"{float(got_threshold)!r}; sem. 11.1: {list(mask)}, {threshold!r}")
    return _outcome(problems, count)
