"""Checks of the MC embedding collections and of mc_embedding_modules.evict: both packages start
every step from the same embedding rows; the rows evict re-initialises (ledger D30) are random
draws of each package, so they are compared as sets (exactly the slots that changed owner,
inside the init bounds) and then copied from the package under test into refimpl.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from conformance.checks import expect_error
from conformance.properties import mc_io as io
from conformance.properties.mc_checks import MCError, _outcome, sides
from conformance.properties.mc_io import Stream, Tables
from conformance.records import Record
from conformance.runner import SKIP, Context, Outcome

EPS32 = float(np.finfo(np.float32).eps)


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
