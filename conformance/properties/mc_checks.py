"""Checks of the managed-collision records: stream agreement, sem. 14's vectors, invariants over
random streams, state_dict round trips and bad input.

Each is `check(record, ctx) -> Outcome`; "the package under test" is `ctx.against` (accel, or
TorchRec). Agreement is exact: every remapped id, every evict() result and every state_dict
entry after every step. Invariants are judged by NumPy loops written here (the table lookup, the
window counts), never by either package.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from conformance import generators
from conformance.checks import expect_error
from conformance.properties import mc_io as io
from conformance.properties import mc_streams
from conformance.properties.mc_io import MAX, MCH, Stream, Tables, Wrapped
from conformance.records import Record
from conformance.runner import FAIL, PASS, SKIP, Context, Outcome

EPS32 = float(np.finfo(np.float32).eps)


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


# --- invariants ------------------------------------------------------------------------------------
INVARIANTS = ("table", "outputs", "resident", "lfu", "eval")


def lookup(raw: np.ndarray, mapping: np.ndarray, ids: np.ndarray, miss: int) -> np.ndarray:
    """out_j = map[pos] if raw[pos] == x_j else miss, pos = searchsorted_left(raw[0:Z-1], x_j) (sem. 11.3 remap)."""
    Z = raw.shape[0]
    out = np.empty(ids.shape[0], dtype=np.int64)
    for j, x in enumerate(ids):
        pos = int(np.searchsorted(raw[:Z - 1], x, side="left"))
        out[j] = mapping[pos] if pos < Z - 1 and raw[pos] == x else miss
    return out


def table_problem(state: Dict[str, np.ndarray], spec: MCH, open_slots: Optional[np.ndarray]) -> str:
    """The table is sorted with no duplicate real ids, holds at most Z - 1 of them with the
    sentinel last, and its output ids are a permutation of [off, off + Z) ending in the miss id."""
    Z, off = spec.zch_size, spec.offset
    raw, mapping = state["_mch_sorted_raw_ids"], state["_mch_remapped_ids_mapping"]
    if raw.shape != (Z,) or mapping.shape != (Z,):
        return f"raw ids shape {raw.shape}, map shape {mapping.shape}, expected ({Z},)"
    if np.any(raw[1:] < raw[:-1]):
        return f"raw ids not sorted: {_list(raw)}"
    real = raw[raw != MAX]
    if np.any(real[1:] == real[:-1]):
        return f"duplicate real ids: {_list(raw)}"
    if real.size > Z - 1 or raw[Z - 1] != MAX:
        return f"{real.size} managed ids (at most Z - 1 = {Z - 1}), last slot {_list(raw[-1:])}: {_list(raw)}"
    if sorted(mapping.tolist()) != list(range(off, off + Z)) or mapping[Z - 1] != off + Z - 1:
        return f"output ids {mapping.tolist()} are not a permutation of [{off}, {off + Z}) ending in {off + Z - 1}"
    if open_slots is not None and open_slots.tolist() != [Z - 1 - real.size]:
        return f"open_slots() {open_slots.tolist()}, expected [{Z - 1 - real.size}]"
    return ""


def _table(state: Dict[str, np.ndarray]) -> Dict[int, Tuple[int, Dict[str, int]]]:
    """real id -> (output id, metadata) for every managed id."""
    raw, mapping = state["_mch_sorted_raw_ids"], state["_mch_remapped_ids_mapping"]
    meta = {k[len("_mch_"):]: v for k, v in state.items() if k.startswith("_mch_") and k not in (
        "_mch_sorted_raw_ids", "_mch_remapped_ids_mapping")}
    return {int(x): (int(mapping[s]), {k: int(v[s]) for k, v in meta.items()})
            for s, x in enumerate(raw) if x != MAX}


def lfu_problem(before: Dict[int, Any], after: Dict[int, Any], window: List[int], filtered: bool) -> str:
    """An LFU round admits a candidate only over residents with a strictly lower count: every
    admitted id's count exceeds every evicted resident's count (its stored count plus this
    window's occurrences, or at least the stored count when a filter may have dropped them)."""
    admitted = [x for x in after if x not in before]
    evicted = [x for x in before if x not in after]
    seen = {x: window.count(x) for x in set(window)}
    for a in admitted:
        if not filtered and after[a][1]["counts"] != seen.get(a, 0):
            return f"admitted id {a} has count {after[a][1]['counts']}, seen {seen.get(a, 0)} times in the window"
    if not filtered:
        for x in set(before) & set(after):
            want = before[x][1]["counts"] + seen.get(x, 0)
            if after[x][1]["counts"] != want:
                return f"resident {x} has count {after[x][1]['counts']}, expected {want}"
    if admitted and evicted:
        low = min(after[a][1]["counts"] for a in admitted)
        scores = {e: before[e][1]["counts"] + (0 if filtered else seen.get(e, 0)) for e in evicted}
        worst = max(scores, key=scores.get)
        if low <= scores[worst]:
            return (f"evicted resident {worst} (count {scores[worst]}) for a candidate with count {low} "
                    f"(admitted {admitted}, evicted {evicted})")
    return ""


def invariant_problem(stream: Stream, package: str, ctx: Context, which: Sequence[str] = INVARIANTS) -> str:
    """'' when every invariant in `which` holds after every step of `stream` in `package`."""
    spec: MCH = stream.module
    device = ctx.device if package != "refimpl" else "cpu"
    with io.running(package, ctx.seed):
        module = io.build(stream, package, device, ctx.seed)
        before = io.state_of(module)
        training, window = True, []
        for i, step in enumerate(stream.steps):
            obs = io.observe(module, step, package, device)
            after = {k[len("state "):]: v for k, v in obs.items() if k is not None and k.startswith("state ")}
            where = f"step {i} {step.describe()}"
            problem = _step_problem(spec, step, obs, before, after, training, window, which)
            if problem:
                return f"{where}: {problem}"
            if step.op in ("train", "eval"):
                training = step.op == "train"
            before = after
    return ""


def _step_problem(spec: MCH, step: io.Step, obs: io.Observation, before: Dict[str, np.ndarray],
                  after: Dict[str, np.ndarray], training: bool, window: List[int], which: Sequence[str]) -> str:
    Z, off = spec.zch_size, spec.offset
    if "table" in which:
        problem = table_problem(after, spec, obs.get("open_slots"))
        if problem:
            return problem
    changed = [k for k in after if not np.array_equal(after[k], before[k])]
    profiles = step.op == "forward" and training
    if not profiles and changed and ("eval" in which or step.op != "forward"):
        return f"{'eval-mode forward' if step.op == 'forward' else step.op + '()'} changed {changed}"
    if step.op in ("forward", "remap") and "outputs" in which:
        ids = step.ids() if step.op == "remap" else spec.hashed(step.ids())
        got = np.concatenate([obs[f"values[{k}]"] for k, _, _ in step.features]) if step.features else ids
        if np.any((got < off) | (got >= off + Z)):
            return f"output ids {got.tolist()} outside [{off}, {off + Z})"
        want = lookup(after["_mch_sorted_raw_ids"], after["_mch_remapped_ids_mapping"], ids, off + Z - 1)
        if got.tolist() != want.tolist():
            return f"output ids {got.tolist()}, the table after the step gives {want.tolist()}"
    if step.op == "evict" and obs.get("evict") is not None:
        ev = obs["evict"]
        if np.any((ev < off) | (ev >= off + Z - 1)) or len(set(ev.tolist())) != ev.size:
            return f"evict() gave {ev.tolist()}: expected distinct ids in [{off}, {off + Z - 1})"
    if not profiles:
        return ""
    old, new = _table(before), _table(after)
    if "resident" in which:
        moved = [x for x in set(old) & set(new) if old[x][0] != new[x][0]]
        if moved:
            return f"resident ids {moved} changed output id: {[(old[x][0], new[x][0]) for x in moved]}"
    window.extend(spec.hashed(step.ids()).tolist())
    iteration = int(after["_current_iter_tensor"][0])
    if iteration % spec.interval:  # no eviction round this step: the table must not move
        if set(old) != set(new):
            return f"the managed ids changed without an eviction round (iteration {iteration}, I={spec.interval})"
        return ""
    problem = ""
    if "lfu" in which and spec.policy.name == "LFU":
        problem = lfu_problem(old, new, window, spec.policy.filter is not None)
    window.clear()
    return problem


def invariant_streams(options: Dict[str, Any]) -> List[Stream]:
    """The named MCH streams an invariant record also runs (those of its policies, without the
    probabilistic filter), so that every invariant sees full tables and evictions of residents."""
    names = {p.name for p in options.get("policies", mc_streams.POLICIES)}
    return [s for s in mc_streams.NAMED if s.module.policy.name in names]


def check_invariants(record: Record, ctx: Context) -> Outcome:
    """record.data = (number of random streams, invariants, compose options): the invariants hold
    after every step of the named streams and of each random stream, in refimpl and in the
    package under test."""
    n, which, options = record.data
    problems, count = [], 0
    for package in sides(record, ctx):
        for stream in invariant_streams(dict(options)):
            if package == "torchrec" and not fits_torchrec(stream):
                continue
            count += 1
            problem = invariant_problem(stream, package, ctx, which)
            if problem:
                problems.append(f"{package}: {problem} (stream '{stream.name}')")
        runs, problem = for_random_streams(n, ctx, f"{record.id}/{package}",
                                           lambda s, p=package: invariant_problem(s, p, ctx, which),
                                           torchrec_safe=package == "torchrec", **dict(options))
        count += runs
        if problem:
            problems.append(f"{package}: {problem}")
    return _outcome(problems, count)


# --- state_dict round trip ------------------------------------------------------------------------
def save_points(stream: Stream) -> List[int]:
    """Steps after which an eviction round just closed in training mode (the history window is
    empty, and history is not part of the state_dict), with steps still to come."""
    spec: MCH = stream.module
    training, forwards, out = True, 0, []
    for i, step in enumerate(stream.steps[:-1]):
        if step.op in ("train", "eval"):
            training = step.op == "train"
        if step.op == "forward" and training:
            forwards += 1
            if forwards % spec.interval == 0:
                out.append(i)
    return out


def _load(module: Any, state: Dict[str, np.ndarray], package: str) -> None:
    if package == "refimpl":
        module.load_state_dict(state)
        return
    import torch

    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})


def checkpoint_problem(stream: Stream, package: str, ctx: Context) -> str:
    """Save the state_dict right after an eviction round (evict() called first, since pending
    evictions are not saved), load it into a fresh module, and run the rest of the stream on
    both: they must show the same arrays after every step."""
    points = save_points(stream)
    device = ctx.device if package != "refimpl" else "cpu"
    for k in points[:1] + points[-1:] if len(points) > 1 else points:
        rest = stream.steps[k + 1:]
        if package == "torchrec" and not mc_streams.torchrec_fits(rest, stream.module.interval):
            continue  # the fresh module's window is sized by its own first batch (D37)
        with io.running(package, ctx.seed):
            original = io.build(stream, package, device, ctx.seed)
            for step in stream.steps[:k + 1]:
                io.observe(original, step, package, device)
            original.evict()
            fresh = io.build(stream, package, device, ctx.seed)
            _load(fresh, io.state_of(original), package)
            fresh.train()
            ref = [io.observe(original, s, package, device) for s in rest]
            got = [io.observe(fresh, s, package, device) for s in rest]
        problem = io.first_difference(got, ref, rest, start=k + 1)
        if problem:
            return f"saved after step {k}, the loaded module differs from the original: {problem}"
    return ""


def check_checkpoint(record: Record, ctx: Context) -> Outcome:
    """state_dict saved mid-stream and loaded into a fresh module continues the stream exactly."""
    n = record.data[0]
    problems, count = [], 0
    for package in sides(record, ctx):
        runs, problem = for_random_streams(n, ctx, f"{record.id}/{package}",
                                           lambda s, p=package: checkpoint_problem(s, p, ctx),
                                           torchrec_safe=package == "torchrec")
        count += runs
        if problem:
            problems.append(f"{package}: {problem}")
    return _outcome(problems, count)


# --- the MC embedding collections ------------------------------------------------------------------
def _weights(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if k.startswith("_embedding_module.")}


def _owner_changes(before: Dict[str, np.ndarray], after: Dict[str, np.ndarray], table: str) -> List[int]:
    """The output ids (rows) of `table` whose owner changed in a step."""
    prefix = f"_managed_collision_collection._managed_collision_modules.{table}."
    owners = []
    for state in (before, after):
        raw, mapping = state[prefix + "_mch_sorted_raw_ids"], state[prefix + "_mch_remapped_ids_mapping"]
        owners.append({int(m): int(r) for r, m in zip(raw, mapping)})
    return sorted(m for m in owners[0] if owners[0][m] != owners[1][m])


def _lookup(emb: Any, tables: Any, weights: Dict[str, np.ndarray], obs: io.Observation) -> io.Observation:
    """refimpl's embedding module, holding `weights`, on a step's remapped features: what the step's
    embeddings are when the lookup reads those rows."""
    from refimpl.sparse import KeyedJaggedTensor

    emb.load_state_dict({k[len("_embedding_module."):]: v for k, v in weights.items()})
    keys = [str(k) for k in obs["remapped keys"]]
    lengths = obs["remapped lengths"]
    kjt = KeyedJaggedTensor(keys, obs["remapped values"], lengths=lengths,
                            stride=lengths.shape[0] // len(keys) if keys else 0)
    result = emb(kjt)
    if isinstance(result, dict):
        return {f"embeddings[{k}]": np.asarray(jt.values(), dtype=np.float64) for k, jt in result.items()}
    return {"embeddings": np.asarray(result.values(), dtype=np.float64)}


def _close(a: np.ndarray, b: np.ndarray, longest: int) -> bool:
    """Equal within float32 rounding of a sum of `longest` rows: 4 L eps32 of the largest value."""
    bound = 4 * max(longest, 1) * EPS32 * max(1.0, float(np.abs(b).max()) if b.size else 0.0)
    return a.shape == b.shape and (a.size == 0 or float(np.abs(a - b).max()) <= bound)


def _read_rows(got: io.Observation, before: io.Observation, after: io.Observation, longest: int) -> Optional[str]:
    """Which rows the step's lookup read: "before" or "after" the evicted rows were re-initialised,
    "either" when they give the same embeddings, None when neither reproduces the output."""
    names = [n for n in before]
    fits_before = all(_close(got[n], before[n], longest) for n in names)
    fits_after = all(_close(got[n], after[n], longest) for n in names)
    if fits_before and fits_after:
        return "either"
    return "before" if fits_before else "after" if fits_after else None


def wrapped_problem(stream: Stream, ctx: Context, check_reinit: Optional[bool] = None) -> str:
    """Both packages start every step from the same embedding rows (the torch module's, copied into
    refimpl), and must show the same remapped features and MC state; the same rows re-initialised
    by evict, exactly those whose slot changed owner, inside the table's init bounds (D30; not
    TorchRec's no-op); and embeddings that are the lookup of the remapped ids in their own rows,
    read at the same moment in both (before or after the re-initialisation), within float32
    rounding. refimpl then takes the package's re-initialised rows, so that later steps compare."""
    tables = stream.module.tables
    check_reinit = ctx.against != "torchrec" if check_reinit is None else check_reinit
    lookup_module = io.wrapped(tables, "refimpl")._embedding_module
    with io.running(ctx.against, ctx.seed):
        other = io.build(stream, ctx.against, ctx.device, ctx.seed)
        ref = io.build(stream, "refimpl", seed=ctx.seed)
        ref.load_state_dict(io.state_of(other))
        before = io.state_of(other)
        for i, step in enumerate(stream.steps):
            where = f"step {i} {step.describe()}"
            got = io.observe(other, step, ctx.against, ctx.device)
            want = io.observe(ref, step, "refimpl")
            ints = lambda name: not name.startswith(("embeddings", "state _embedding_module"))  # noqa: E731
            problem = io.first_difference([{k: v for k, v in got.items() if ints(k)}],
                                          [{k: v for k, v in want.items() if ints(k)}], [step], start=i)
            if problem:
                return problem
            after = io.state_of(other)
            ref_after = {k[len("state "):]: v for k, v in want.items() if k.startswith("state ")}
            if step.op == "forward":
                longest = int(step.batch.lengths.max()) if step.batch.lengths.size else 1
                read = {}
                from_before = _lookup(lookup_module, tables, _weights(before), want)
                for side, obs, state in ((ctx.against, got, after), ("refimpl", want, ref_after)):
                    read[side] = _read_rows(obs, from_before, _lookup(lookup_module, tables, _weights(state), want),
                                            longest)
                    if read[side] is None:
                        return f"{where}: {side}'s embeddings are not the lookup of its remapped ids in its rows"
                if "either" not in read.values() and read[ctx.against] != read["refimpl"]:
                    return (f"{where}: {ctx.against} looks its rows up {read[ctx.against]} re-initialising the "
                            f"evicted ones, refimpl {read['refimpl']}")
            if check_reinit:
                for t in tables.tables:
                    key = next(k for k in _weights(after) if k.endswith(f".{t.name}.weight"))
                    expected = _owner_changes(before, after, t.name)
                    for side, state in ((ctx.against, after), ("refimpl", ref_after)):
                        rows = np.nonzero(np.any(state[key] != before[key], axis=1))[0].tolist()
                        if rows != expected:
                            return (f"{where}: {side} re-initialised rows {rows} of {t.name}, the slots that "
                                    f"changed owner are {expected}")
                    bound = float(np.sqrt(1.0 / t.rows))
                    if expected and float(np.abs(after[key][expected]).max()) > bound:
                        return f"{where}: re-initialised rows of {t.name} outside +-{bound:.4g}"
            ref.load_state_dict(_weights(after), strict=False)
            before = after
    return ""


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


# --- mc_embedding_modules.evict -------------------------------------------------------------------------
EVICT_TABLES = Tables((io.Table("t", 6, ("f",), dim=3), io.Table("u", 4, ("g",), dim=3)))


def _embedding_pair(kind: str, ctx: Context) -> Tuple[Any, Any]:
    """(refimpl, package under test) embedding collections of EVICT_TABLES holding the same rows."""
    from conformance.properties import embeddings_io as eio

    spec = replace(EVICT_TABLES, kind=kind)
    name = "EmbeddingBagCollection" if kind == "EmbeddingBagConfig" else "EmbeddingCollection"
    import refimpl.modules.embedding_modules as em

    ref = getattr(em, name)(spec.configs("refimpl"), rng=np.random.default_rng(ctx.seed))
    other = eio.adapters.module_class(ctx.against, name)(spec.configs(ctx.against))
    ref.load_state_dict(io.state_of(other))
    return ref, other


def _ids(package: str, ids: Optional[Sequence[int]]) -> Any:
    if ids is None or package == "refimpl":
        return None if ids is None else np.asarray(ids, dtype=np.int64)
    import torch

    return torch.tensor(list(ids), dtype=torch.int64)


def check_evict_function(record: Record, ctx: Context) -> Outcome:
    """evict({t: ids, u: None}, collection) re-initialises exactly rows `ids` of table t, inside
    the init bounds +-sqrt(1/rows), and nothing else, in refimpl and the package under test (an
    EmbeddingBagCollection and an EmbeddingCollection). TorchRec's evict does nothing (D30)."""
    if ctx.against == "torchrec":
        return Outcome(SKIP, detail="recspec deviates from TorchRec here on purpose (ledger D30); the D30 record "
                                    "of ManagedCollisionEmbeddingBagCollection runs TorchRec's side")
    problems, count, bound = [], 0, float(np.sqrt(1 / 6))
    for kind in ("EmbeddingBagConfig", "EmbeddingConfig"):
        with io.running(ctx.against, ctx.seed):
            pair = _embedding_pair(kind, ctx)
            before = io.state_of(pair[1])
            for package, module in zip(("refimpl", ctx.against), pair):
                count += 1
                io.mc_embedding_modules(package).evict({"t": _ids(package, [4, 1]), "u": None}, module)
                after = io.state_of(module)
                for key in before:
                    rows = np.nonzero(np.any(after[key] != before[key], axis=1))[0].tolist()
                    want = [1, 4] if ".t." in key else []
                    if rows != want:
                        problems.append(f"{package} {kind}: rows {rows} of {key} changed, expected {want}")
                    elif rows and float(np.abs(after[key][rows]).max()) > bound:
                        problems.append(f"{package} {kind}: re-initialised rows of {key} outside +-{bound:.4g}")
    return _outcome(problems, count)


class _OutOfRange(Exception):
    """Stands for "IndexError or ValueError" in an expected-error case (both allowed by the CONTRACT
    for an id outside a table: refimpl raises IndexError, accel ValueError)."""


def _raised(call: Callable[[], Any], case: MCError) -> str:
    """expect_error, with _OutOfRange accepting IndexError and ValueError."""
    if case.exception is not _OutOfRange:
        return expect_error(call, case)
    for exc in (IndexError, ValueError):
        problem = expect_error(call, replace(case, exception=exc))
        if not problem.startswith("raised "):
            return problem
    return expect_error(call, replace(case, exception=IndexError)) + " or ValueError"


def check_evict_errors(record: Record, ctx: Context) -> Outcome:
    """evict with a table the collection does not have raises ValueError naming it; with an id
    outside [0, rows) raises IndexError or ValueError naming the table and the id; no row changes."""
    problems, count = [], 0
    cases = (({"x": [1]}, ValueError, r"'x'"), ({"t": [2, 6]}, _OutOfRange, r"'t'[\s\S]*6"))
    with io.running(ctx.against, ctx.seed):
        pair = _embedding_pair("EmbeddingBagConfig", ctx)
        for package, module in zip(sides(record, ctx), pair):
            before = io.state_of(module)
            for evictions, exc, pattern in cases:
                count += 1
                ev = {t: _ids(package, ids) for t, ids in evictions.items()}
                case = MCError(f"evict({evictions})", Stream("", EVICT_TABLES, ()), None, exc, pattern)
                problem = _raised(lambda: io.mc_embedding_modules(package).evict(ev, module), case)
                changed = [k for k, v in io.state_of(module).items() if not np.array_equal(v, before[k])]
                if problem or changed:
                    problems.append(f"{package} evict({evictions}): {problem or f'changed {changed}'}")
    return _outcome(problems, count)
