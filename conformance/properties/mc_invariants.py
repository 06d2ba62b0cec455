"""Invariants of MCHManagedCollisionModule over streams (issue 4 item 5), judged by NumPy loops
written here (the table lookup, the window counts), never by either package; and the state_dict
round trip (saved mid-stream, loaded into a fresh module, the stream continues identically).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from conformance.properties import mc_io as io
from conformance.properties import mc_streams
from conformance.properties.mc_checks import _list, _outcome, fits_torchrec, for_random_streams, sides
from conformance.properties.mc_io import MAX, MCH, Stream
from conformance.records import Record
from conformance.runner import Context, Outcome

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
