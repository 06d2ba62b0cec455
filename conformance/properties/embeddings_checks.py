"""Checks of the embedding records: the generic kinds over jagged inputs, invariants, error cases.

Each is `check(record, ctx) -> Outcome`; "the package under test" is `ctx.against` (accel, or
TorchRec). Inputs come from `embeddings_cases`, modules and outputs from `embeddings_io`.
Expected values in the invariants come from NumPy loops written here, never from either package.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from conformance import adapters, generators, tolerances
from conformance.checks import _compare_gradients, expect_error
from conformance.compare import Errors, Worst, ulps
from conformance.properties import embeddings_cases as cases_mod
from conformance.properties import embeddings_io as io
from conformance.records import Build, ErrorCase, Record
from conformance.runner import FAIL, PASS, Context, Outcome
from conformance.tolerances import Tolerance

F64 = np.float64
F32 = np.float32


def sides(record: Record, ctx: Context) -> List[str]:
    return ["refimpl" if s == "refimpl" else ctx.against for s in record.sides]


def case_list(record: Record, build: Build, ctx: Context) -> List[Tuple[str, io.Batch]]:
    """The record's generator cases for `build`; against TorchRec without the batches of size 0,
    which TorchRec cannot take (IndexError in KJT.to_dict, ledger D33)."""
    out = cases_mod.cases(record.generator, build, ctx.seed)
    if ctx.against == "torchrec":
        out = [(name, b) for name, b in out if b.stride > 0]
    return out


def _run(pair: io.Pair, package: str, build: Build, b: io.Batch, ctx: Context, dtype: Any = None
         ) -> Tuple[List[str], Dict[str, np.ndarray]]:
    dtype = pair.dtype if dtype is None else dtype
    module = pair.ref if package == "refimpl" else pair.other
    return io.run(module, build, b, package, dtype, ctx.device)


def _compare(errors: Errors, label: str, got: Tuple[List[str], Dict[str, np.ndarray]],
             ref: Tuple[List[str], Dict[str, np.ndarray]], tol: Tolerance) -> None:
    """Keys in order, then every array: ids and lengths exactly, floats within `tol`."""
    if got[0] != ref[0]:
        errors.fail(label, "output keys", f"keys {got[0]}, expected {ref[0]}", tol)
        return
    for name in sorted(set(got[1]) | set(ref[1])):
        if name not in got[1] or name not in ref[1]:
            errors.fail(label, name, f"missing from {'the package under test' if name not in got[1] else 'refimpl'}",
                        tol)
            continue
        exact = not np.issubdtype(ref[1][name].dtype, np.floating)
        errors.add(label, name, got[1][name], ref[1][name], tolerances.EXACT if exact else tol)


# --- the generic kinds -------------------------------------------------------------------------
def check_forward(record: Record, ctx: Context) -> Outcome:
    """The package under test == refimpl in float64 on every case, within forward64(n), n the
    longest bag (ids, lengths and keys exactly)."""
    errors, count = Errors(), 0
    for build in record.builds:
        pair = io.make_pair(build, seed=ctx.seed, dtype=F64, package=ctx.against, device=ctx.device)
        tol = record.tolerance or tolerances.forward64(build.reduction)
        for name, b in case_list(record, build, ctx):
            count += 1
            _compare(errors, f"{build.name}/{name}", _run(pair, ctx.against, build, b, ctx),
                     _run(pair, "refimpl", build, b, ctx), tol)
    return Outcome.from_errors(errors, count, record.tolerance or tolerances.forward64(1))


def _abs_state(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: np.abs(v) for k, v in state.items()}


def check_forward_f32(record: Record, ctx: Context) -> Outcome:
    """|accel32 - ref64| <= K32 x max(|refimpl32 - ref64|, FLOOR32_ULPS eps32 S) elementwise, ref64
    being refimpl in float64 on the float32-rounded parameters and weights, and S the same
    lookup with |W| and |w| (the sum of the magnitudes a correct float32 sum rounds)."""
    tol = record.tolerance or tolerances.forward32()
    errors, count = Errors(), 0
    for build in record.builds:
        pair = io.make_pair(build, seed=ctx.seed, dtype=F32, package=ctx.against, device=ctx.device)
        ref64 = pair.reference64()
        magnitude = io.construct(build, "refimpl", dtype=F64)
        magnitude.load_state_dict(_abs_state(pair.state))
        for name, b in case_list(record, build, ctx):
            count += 1
            label = f"{build.name}/{name}"
            b32 = b.with_weights(None if b.weights is None else b.weights.astype(F32).astype(F64))
            keys, want = io.run(ref64, build, b32, "refimpl", F64)
            _, own = io.run(pair.ref, build, b32, "refimpl", F32)
            _, scale = io.run(magnitude, build, b32.with_weights(None if b32.weights is None else np.abs(b32.weights)),
                              "refimpl", F64)
            got_keys, got = _run(pair, ctx.against, build, b32, ctx, F32)
            if got_keys != keys:
                errors.fail(label, "output keys", f"keys {got_keys}, expected {keys}", tol)
                continue
            for out in io.differentiable(want):
                if got[out].shape != want[out].shape:
                    errors.fail(label, out, f"shape {got[out].shape}, expected {want[out].shape}", tol)
                    continue
                if want[out].size == 0:
                    errors.add_ratio(0.0, None)
                    continue
                floor = tolerances.floor32() * np.abs(scale[out])
                allowance = np.maximum(np.abs(own[out] - want[out]), floor)
                err = np.abs(got[out] - want[out])
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio = np.where(err == 0, 0.0, err / allowance)
                ratio = np.where(np.isnan(ratio), np.inf, ratio)
                index = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
                worst = Worst(label, out, tuple(int(i) for i in index), float(got[out][index]),
                              float(want[out][index]), float(ulps(got[out].astype(F32)[index], want[out][index])),
                              float(ratio[index]), tol)
                errors.add_ratio(float(ratio[index]), worst, abs_err=float(err.max()))
    return Outcome.from_errors(errors, count, tol)


def _loss(module: Any, build: Build, b: io.Batch, G: Dict[str, np.ndarray]) -> float:
    _, arrays = io.run(module, build, b, "refimpl", F64)
    return float(sum(np.sum(arrays[k] * G[k]) for k in G))


def check_backward_fd(record: Record, ctx: Context) -> Outcome:
    """refimpl's backward == central differences of L = sum_k <output_k, G_k> in float64, for
    every parameter element and every per-id weight (refimpl only: the spec's own gradients)."""
    from refimpl.grad_check import central_difference_grad

    tol = record.tolerance or tolerances.finite_difference()
    errors, count = Errors(), 0
    for build in record.builds:
        module = io.construct(build, "refimpl", seed=ctx.seed)
        module.load_state_dict(adapters.exercise(module.state_dict(), ctx.seed))
        for name, b in case_list(record, build, ctx):
            count += 1
            label = f"{build.name}/{name}"
            _, arrays = io.run(module, build, b, "refimpl", F64)
            G = io.cotangents(arrays, generators.rng_for(ctx.seed, "cotangent", record.id, label))
            _, analytic = io.ref_gradients(module, build, b, G)
            numeric = {}
            for key, value in module.state_dict().items():
                param = np.array(value, dtype=F64)

                def param_loss(p: np.ndarray, key: str = key) -> float:
                    module.load_state_dict({key: p}, strict=False)
                    return _loss(module, build, b, G)

                numeric[f"grad {key}"] = central_difference_grad(param_loss, param, eps=tolerances.FD_STEP)
                module.load_state_dict({key: value.copy()}, strict=False)
            if "grad weights" in analytic:
                w = b.weights.copy()
                numeric["grad weights"] = central_difference_grad(
                    lambda x: _loss(module, build, b.with_weights(x), G), w, eps=tolerances.FD_STEP)
            _compare_gradients(errors, label, analytic, numeric, tol, floor=1.0)
    return Outcome.from_errors(errors, count, tol)


def check_autograd(record: Record, ctx: Context) -> Outcome:
    """The package under test's autograd gradients of sum_k <output_k, G_k> == refimpl's backward
    in float64: every parameter (named as in state_dict) and the per-id weights."""
    errors, count = Errors(), 0
    for build in record.builds:
        pair = io.make_pair(build, seed=ctx.seed, dtype=F64, package=ctx.against, device=ctx.device)
        tol = record.tolerance or tolerances.gradient64(build.reduction)
        for name, b in case_list(record, build, ctx):
            count += 1
            label = f"{build.name}/{name}"
            _, arrays = io.run(pair.ref, build, b, "refimpl", F64)
            G = io.cotangents(arrays, generators.rng_for(ctx.seed, "cotangent", record.id, label))
            ref_arrays, ref_grads = io.ref_gradients(pair.ref, build, b, G)
            got_arrays, got_grads = io.torch_gradients(pair.other, build, b, G, F64, ctx.device)
            for out in io.differentiable(ref_arrays):
                errors.add(label, out, got_arrays.get(out, np.full(ref_arrays[out].shape, np.nan)), ref_arrays[out],
                           tolerances.forward64(build.reduction))
            _compare_gradients(errors, label, got_grads, ref_grads, tol)
    return Outcome.from_errors(errors, count, record.tolerance or tolerances.gradient64(1))


# --- invariants ----------------------------------------------------------------------------------
def slots(build: Build) -> List[Tuple[str, str, int, int, str]]:
    """(name, feature, first column, D, pooling) per slot of an EBC build, in output order."""
    tabs = io.tables_of(build)
    count: Dict[str, int] = {}
    for t in tabs:
        for f in dict(t.kwargs)["feature_names"]:
            count[f] = count.get(f, 0) + 1
    out, column = [], 0
    for t in tabs:
        kw = dict(t.kwargs)
        for f in kw["feature_names"]:
            name = f if count[f] == 1 else f"{f}@{kw['name']}"
            out.append((name, f, column, t.args[1], kw.get("pooling", "SUM")))
            column += t.args[1]
    return out


def _table_of(build: Build, name: str) -> str:
    """The table of an embedding name: the part after '@', else the one table reading that feature."""
    if "@" in name:
        return name.split("@", 1)[1]
    return next(dict(t.kwargs)["name"] for t in io.tables_of(build) if name in dict(t.kwargs)["feature_names"])


def ebc_formula(build: Build, state: Dict[str, np.ndarray], b: io.Batch, use_weights: bool) -> np.ndarray:
    """out[b, c_s : c_s + D_s] = sum_j w_j W_t[i_j] (SUM) or that over L (MEAN); 0 for an empty bag."""
    cols = slots(build)
    out = np.zeros((b.stride, sum(s[3] for s in cols)))
    for name, feature, column, D, pooling in cols:
        W = state[f"embedding_bags.{_table_of(build, name)}.weight"]
        for s in range(b.stride):
            bag = b.bag(feature, s)
            for j in range(bag.start, bag.stop):
                w = b.weights[j] if use_weights else 1.0
                out[s, column:column + D] += w * W[b.values[j]]
            if pooling == "MEAN" and bag.stop > bag.start:
                out[s, column:column + D] /= bag.stop - bag.start
    return out


def _each_case(record: Record, ctx: Context, dtype: Any = F64):
    for build in record.builds:
        pair = io.make_pair(build, seed=ctx.seed, dtype=dtype, package=ctx.against, device=ctx.device)
        for name, b in case_list(record, build, ctx):
            yield build, pair, name, b


def check_ebc_formula(record: Record, ctx: Context) -> Outcome:
    """Both packages == the pooled sum written out as a loop over bags (weighted only when is_weighted)."""
    errors, count = Errors(), 0
    for build, pair, name, b in _each_case(record, ctx):
        expected = ebc_formula(build, pair.state, b, cases_mod.weighted(build))
        for package in sides(record, ctx):
            count += 1
            _, got = _run(pair, package, build, b, ctx)
            errors.add(f"{package}:{build.name}/{name}", "out", got["out"], expected,
                       tolerances.forward64(build.reduction))
    return Outcome.from_errors(errors, count, tolerances.forward64(1))


def check_empty_bags_zero(record: Record, ctx: Context) -> Outcome:
    """Every slot's columns are exactly 0 in the rows whose bag is empty (SUM and MEAN)."""
    errors, count = Errors(), 0
    for build, pair, name, b in _each_case(record, ctx):
        for package in sides(record, ctx):
            _, got = _run(pair, package, build, b, ctx)
            for slot, feature, column, D, _ in slots(build):
                for s in range(b.stride):
                    bag = b.bag(feature, s)
                    if bag.stop == bag.start:
                        count += 1
                        errors.add(f"{package}:{build.name}/{name}", f"out[{s}, {slot}]",
                                   got["out"][s, column:column + D], np.zeros(D), tolerances.EXACT)
    return Outcome.from_errors(errors, count, tolerances.EXACT)


def _with_pooling(build: Build, pooling: str) -> Build:
    tabs = tuple(replace(t, kwargs=tuple((k, v) for k, v in t.kwargs if k != "pooling") + (("pooling", pooling),))
                 for t in io.tables_of(build))
    return replace(build, args=(tabs,) + tuple(build.args[1:]), label=f"{build.name} {pooling}")


def check_mean_is_sum_over_length(record: Record, ctx: Context) -> Outcome:
    """MEAN x L == SUM bag by bag (and both 0 for empty bags), with the same tables and inputs."""
    errors, count = Errors(), 0
    for build in record.builds:
        mean = _with_pooling(build, "MEAN")
        pair_mean = io.make_pair(mean, seed=ctx.seed, package=ctx.against, device=ctx.device)
        pair_sum = io.make_pair(_with_pooling(build, "SUM"), seed=ctx.seed, package=ctx.against, device=ctx.device,
                                state=pair_mean.state)
        tol = tolerances.forward64(build.reduction)
        for name, b in case_list(record, build, ctx):
            for package in sides(record, ctx):
                count += 1
                _, m = _run(pair_mean, package, mean, b, ctx)
                _, s = _run(pair_sum, package, mean, b, ctx)
                scaled = m["out"].copy()
                for _, feature, column, D, _ in slots(mean):
                    for r in range(b.stride):
                        bag = b.bag(feature, r)
                        scaled[r, column:column + D] *= bag.stop - bag.start
                errors.add(f"{package}:{build.name}/{name}", "MEAN x L vs SUM", scaled, s["out"], tol)
    return Outcome.from_errors(errors, count, tolerances.forward64(1))


def check_key_order(record: Record, ctx: Context) -> Outcome:
    """The output does not depend on the KJT's key order: reversed keys give the same arrays, exactly."""
    errors, count = Errors(), 0
    for build, pair, name, b in _each_case(record, ctx):
        reversed_b = b.permuted(list(reversed(range(len(b.keys)))))
        for package in sides(record, ctx):
            count += 1
            _compare(errors, f"{package}:{build.name}/{name}", _run(pair, package, build, reversed_b, ctx),
                     _run(pair, package, build, b, ctx), tolerances.EXACT)
    return Outcome.from_errors(errors, count, tolerances.EXACT)


def check_ignores_weights(record: Record, ctx: Context) -> Outcome:
    """An unweighted collection ignores KJT weights (TorchRec does): with and without them, the same output."""
    errors, count = Errors(), 0
    for build, pair, name, b in _each_case(record, ctx):
        rng = generators.rng_for(ctx.seed, record.id, name)
        with_w = b.with_weights(rng.standard_normal(b.values.shape[0]) + 3.0)
        for package in sides(record, ctx):
            count += 1
            _compare(errors, f"{package}:{build.name}/{name}", _run(pair, package, build, with_w, ctx),
                     _run(pair, package, build, b.with_weights(None), ctx), tolerances.EXACT)
    return Outcome.from_errors(errors, count, tolerances.EXACT)


def check_ec_rows(record: Record, ctx: Context) -> Outcome:
    """values[name][j] == W_t[i_j] exactly, lengths == the feature's lengths, and (need_indices)
    the JaggedTensor's weights are the ids."""
    errors, count = Errors(), 0
    for build, pair, name, b in _each_case(record, ctx):
        need = dict(build.kwargs).get("need_indices", False)
        for package in sides(record, ctx):
            keys, got = _run(pair, package, build, b, ctx)
            for slot, feature, _, D, _ in slots(build):
                count += 1
                label = f"{package}:{build.name}/{name}"
                ids = b.values[b.key_slice(feature)]
                W = pair.state[f"embeddings.{_table_of(build, slot)}.weight"]
                if f"values[{slot}]" not in got:
                    errors.fail(label, slot, f"no output named {slot!r} among {keys}", tolerances.EXACT)
                    continue
                errors.add(label, f"values[{slot}]", got[f"values[{slot}]"], W[ids].reshape(-1, D), tolerances.EXACT)
                k = b.keys.index(feature)
                errors.add(label, f"lengths[{slot}]", got[f"lengths[{slot}]"],
                           b.lengths[k * b.stride:(k + 1) * b.stride], tolerances.EXACT)
                if need:
                    errors.add(label, f"indices[{slot}]", got.get(f"indices[{slot}]", np.zeros(0)), ids,
                               tolerances.EXACT)
    return Outcome.from_errors(errors, count, tolerances.EXACT)


def positions(b: io.Batch, feature: str) -> np.ndarray:
    """pos_j = j - offsets[b] within each bag of `feature`, by a loop over bags."""
    out = []
    for s in range(b.stride):
        bag = b.bag(feature, s)
        out += list(range(bag.stop - bag.start))
    return np.asarray(out, dtype=np.int64)


def check_position_weights(record: Record, ctx: Context) -> Outcome:
    """weights[f][j] == p_f[pos_j] exactly, pos_j the value's position in its bag."""
    errors, count = Errors(), 0
    for build, pair, name, b in _each_case(record, ctx):
        for package in sides(record, ctx):
            _, got = _run(pair, package, build, b, ctx)
            label = f"{package}:{build.name}/{name}"
            if build.module == "PositionWeightedModule":
                for f, _ in build.args[0]:
                    count += 1
                    errors.add(label, f"weights[{f}]", got[f"weights[{f}]"],
                               pair.state[f"position_weights.{f}"][positions(b, f)], tolerances.EXACT)
            else:
                count += 1
                fp = [k for k in b.keys if k in dict(build.args[0])]
                want = [pair.state[f"position_weights.{f}"][positions(b, f)] for f in fp]
                errors.add(label, "weights", got["weights"], np.concatenate(want) if want else np.zeros(0),
                           tolerances.EXACT)
    return Outcome.from_errors(errors, count, tolerances.EXACT)


def check_init_bounds(record: Record, ctx: Context) -> Outcome:
    """Freshly built tables hold W ~ U(-sqrt(1/rows), sqrt(1/rows)) (the configs' default bounds):
    every entry inside them, and spread over them (not a constant)."""
    problems, count = [], 0
    for build in record.builds:
        for package in sides(record, ctx):
            module = io.construct(build, package, seed=ctx.seed)
            state = module.state_dict()
            for t in io.tables_of(build):
                count += 1
                key = [k for k in state if k.endswith(f".{dict(t.kwargs)['name']}.weight")][0]
                W = io._np(state[key]).astype(F64)
                bound = float(np.sqrt(1.0 / t.args[0]))
                if W.shape != tuple(t.args) or np.abs(W).max() > bound or np.ptp(W) < bound / 4:
                    problems.append(f"{package} {key}: shape {W.shape}, |W| max {np.abs(W).max():.4g}, spread "
                                    f"{np.ptp(W):.4g}; expected {tuple(t.args)} inside +-{bound:.4g}")
    return outcome_of(problems, count)


# --- fused optimizer steps ----------------------------------------------------------------------
STEPS = 3
LR, EPS = 0.1, 1e-8


def _ref_step(module: Any, build: Build, b: io.Batch, G: Dict[str, np.ndarray], rule: str, states: Any) -> Any:
    """One refimpl training step: forward, row-sparse backward, refimpl.optim.sparse_step."""
    from refimpl.optim import sparse_step

    names, _ = io.run(module, build, b, "refimpl", F64)
    grad_out = G["out"] if build.module == "EmbeddingBagCollection" else {n: G[f"values[{n}]"] for n in names}
    _, row_grads = module.sparse_backward(grad_out)
    return sparse_step(module, row_grads, rule, states, lr=LR, eps=EPS)


def check_fused_steps(record: Record, ctx: Context) -> Outcome:
    """STEPS training steps of accel's fused optimizer (optimizer=rule, lr, eps: the update applied
    to the touched rows inside the backward) == refimpl's forward, row-sparse backward and
    refimpl.optim.sparse_step, in float64: each step's output, then the tables and the optimizer
    state after it; the tables never get a .grad."""
    import torch

    rule = record.data[0]
    errors, count = Errors(), 0
    for build in record.builds:
        pair = io.make_pair(build, seed=ctx.seed, dtype=F64, package=ctx.against, device=ctx.device)
        fused = io.construct(replace(build, kwargs=build.kwargs + (("optimizer", rule), ("lr", LR), ("eps", EPS))),
                             ctx.against, seed=ctx.seed).to(device=ctx.device, dtype=torch.float64)
        adapters.load_torch(fused, pair.state)
        ref, states = pair.ref, None
        tol = tolerances.gradient64(build.reduction)
        for step in range(STEPS):
            for name, b in case_list(record, build, ctx):
                count += 1
                label = f"{build.name}/step {step}/{name}"
                _, arrays = io.run(ref, build, b, "refimpl", F64)
                G = io.cotangents(arrays, generators.rng_for(ctx.seed, "cotangent", record.id, label))
                got, grads = io.torch_gradients(fused, build, b, G, F64, ctx.device)
                for out in io.differentiable(arrays):
                    errors.add(label, out, got[out], arrays[out], tolerances.forward64(build.reduction))
                states = _ref_step(ref, build, b, G, rule, states)
                for key, value in fused.state_dict().items():
                    errors.add(label, key, io._np(value), ref.state_dict()[key], tol)
                for table_name, G_t in fused.optimizer_state().items():
                    key = next(k for k in states if k.split(".")[1] == table_name)
                    errors.add(label, f"optimizer state {table_name}", io._np(G_t), states[key], tol)
                stray = [k for k, p in fused.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
                if stray:
                    errors.fail(label, "table .grad", f"tables got dense gradients: {stray}", tol)
    return Outcome.from_errors(errors, count, tolerances.gradient64(1))


# --- errors --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JaggedError:
    """Bad input for an embedding module: `batch` None means the constructor must raise."""

    label: str
    build: Build
    exception: type
    match: str
    mentions: Tuple[str, ...] = ()
    batch: Optional[io.Batch] = None

    def as_case(self) -> ErrorCase:
        return ErrorCase(self.label, self.build, self.exception, self.match, self.mentions)


def jagged_error_call(case: JaggedError, package: str, ctx: Context) -> Callable[[], Any]:
    def call() -> Any:
        module = io.construct(case.build, package, seed=ctx.seed)
        if case.batch is None:
            return module
        if package != "refimpl":
            module = module.to(ctx.device)
        args, _ = io.module_input(case.build, case.batch, package, F32, ctx.device)
        return module(*args)

    return call


def check_jagged_errors(record: Record, ctx: Context) -> Outcome:
    """Every JaggedError in record.data raises as stated, naming the argument (feature, table) and
    the expected and received values, in refimpl and in the package under test."""
    problems, count = [], 0
    for case in record.data:
        for package in sides(record, ctx):
            count += 1
            problem = expect_error(jagged_error_call(case, package, ctx), case.as_case())
            if problem:
                problems.append(f"{package} ({case.label}): {problem}")
    return Outcome(FAIL if problems else PASS, count, detail="; ".join(problems))


def outcome_of(problems: Sequence[str], count: int) -> Outcome:
    return Outcome(FAIL if problems else PASS, count, detail="; ".join(problems))
