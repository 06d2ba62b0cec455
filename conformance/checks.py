"""The generic checks, one per kind: each runs a record's builds on its generator's cases.

Every check is `check(record, ctx) -> Outcome`. "accel" below means the package under test
(`ctx.against`: accel, or TorchRec). Module-specific invariants and discrepancy demonstrations
live with their records in `conformance.properties`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np

from conformance import adapters, conditioning, generators, tolerances
from conformance.compare import Errors, Worst, ulps
from conformance.records import Build, ErrorCase, Record
from conformance.runner import FAIL, PASS, Context, Outcome
from conformance.tolerances import Tolerance


def _pairs(record: Record, ctx: Context, dtype: Any) -> Iterator[Tuple[Build, adapters.Pair, List[generators.Case]]]:
    for build in record.builds:
        pair = adapters.make_pair(build, seed=ctx.seed, dtype=dtype, package=ctx.against, device=ctx.device)
        yield build, pair, generators.cases(record.generator, build, ctx.seed)


def conditioned(tol: Tolerance, spread: float) -> Tolerance:
    """`tol`, or CONDITIONING_FACTOR x the measured spread where that is larger (see
    conformance.conditioning: an ill-conditioned output may move that much under any correct
    implementation's rounding)."""
    limit = tolerances.CONDITIONING_FACTOR * spread
    if not limit > tol.value:
        return tol
    return Tolerance(limit, tol.unit, f"{tol.reason}; raised to {tolerances.CONDITIONING_FACTOR:g} x the "
                                      f"output's conditioning spread {spread:.3g}")


def _spread(record: Record, ctx: Context, build: Build, pair: adapters.Pair, rel: float) -> conditioning.Spread:
    return conditioning.Spread(build, pair.state, rel, generators.rng_for(ctx.seed, record.id, build.name, "spread"))


def check_forward(record: Record, ctx: Context) -> Outcome:
    """accel(x) == refimpl(x) in float64, normwise within forward64(n) (or the record's
    override), raised where the output is ill-conditioned (`conditioned`)."""
    errors, count = Errors(), 0
    for build, pair, cases in _pairs(record, ctx, np.float64):
        tol = record.tolerance or tolerances.forward64(build.reduction)
        wobble = _spread(record, ctx, build, pair, build.reduction * tolerances.EPS64)
        for case in cases:
            count += 1
            ref = adapters.run_ref(pair.ref, case.x, np.float64)
            got = adapters.run_torch(pair.other, case.x, np.float64, ctx.device)
            case_tol = tol if tol.unit != "rel" else conditioned(tol, conditioning.spread(ref, wobble.outputs(case.x)))
            errors.add(f"{build.name}/{case.name}", "output", got, ref, case_tol)
    return Outcome.from_errors(errors, count, record.tolerance or tolerances.forward64(1))


def check_forward_f32(record: Record, ctx: Context) -> Outcome:
    """FlashAttention's rule, elementwise: |accel32 - ref64| <= K32 x (the error a correct float32
    implementation makes there), where ref64 is refimpl in float64 on the float32-rounded inputs
    and parameters, and that error is estimated as the largest of
        |refimpl32 - ref64|                refimpl-float32's own error,
        |ref64(perturbed) - ref64|         the spread from rounding every input and parameter
                                           once more (relative eps32, conformance.conditioning):
                                           where an output is ill-conditioned any float32 result
                                           wobbles, and refimpl32 may have been lucky there,
        FLOOR32_ULPS x eps32 x max|ref64|  a floor, so an exact refimpl32 does not demand exactness.
    """
    tol = record.tolerance or tolerances.forward32()
    errors, count = Errors(), 0
    for build, pair, cases in _pairs(record, ctx, np.float32):
        ref64_module = pair.reference64()
        wobble = _spread(record, ctx, build, pair, tolerances.EPS32)
        for case in cases:
            count += 1
            label = f"{build.name}/{case.name}"
            x32 = adapters.cast(case.x, np.float32)
            ref64 = adapters.run_ref(ref64_module, x32, np.float64)
            own = adapters.run_ref(pair.ref, x32, np.float32)
            got = adapters.run_torch(pair.other, x32, np.float32, ctx.device)
            if got.shape != ref64.shape:
                errors.fail(label, "output", f"shape {got.shape}, expected {ref64.shape}", tol)
                continue
            if ref64.size == 0:
                errors.add_ratio(0.0, None)
                continue
            moved = [np.abs(m - ref64) for m in wobble.outputs(x32)]
            floor = np.full(ref64.shape, tolerances.floor32() * float(np.abs(ref64).max()))
            allowance = np.maximum.reduce([np.abs(own - ref64), floor, *moved])
            err = np.abs(got.astype(np.float64) - ref64)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(err == 0, 0.0, err / allowance)
            ratio = np.where(np.isnan(ratio), np.inf, ratio)
            index = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            worst = Worst(label, "output", tuple(int(i) for i in index), float(got[index]), float(ref64[index]),
                          float(ulps(got[index], ref64[index])), float(ratio[index]), tol)
            errors.add_ratio(float(ratio[index]), worst, abs_err=float(err.max()))
    outcome = Outcome.from_errors(errors, count, tol)
    if outcome.status == FAIL and errors.worst is not None:
        outcome.detail = (f"accel-float32 is {errors.worst.err:.3g} x as far from float64 as a correct float32 "
                          f"result may be (allowed {tol.value:g}); worst: {outcome.detail}")
    return outcome


def check_backward_fd(record: Record, ctx: Context) -> Outcome:
    """refimpl's backward == central differences of L = sum(forward(x) * G), float64, for every
    input element and every parameter element (refimpl only: the executable spec's gradients)."""
    from refimpl.grad_check import central_difference_grad

    tol = record.tolerance or tolerances.finite_difference()
    errors, count = Errors(), 0
    for build in record.builds:
        module = adapters.construct(build, "refimpl", seed=ctx.seed)
        module.load_state_dict(adapters.exercise(module.state_dict(), ctx.seed))
        for case in generators.cases(record.generator, build, ctx.seed):
            count += 1
            xs = [np.array(a, dtype=np.float64) for a in (case.x if build.takes_list else [case.x])]

            def forward() -> np.ndarray:
                return np.asarray(module(xs if build.takes_list else xs[0]))

            g = generators.cotangent(forward().shape, ctx.seed, record.id, build.name, case.name)
            _, analytic = adapters.ref_gradients(module, xs if build.takes_list else xs[0], g)

            def loss(_: np.ndarray) -> float:
                return float(np.sum(forward() * g))

            numeric = {name: central_difference_grad(loss, x, eps=tolerances.FD_STEP)
                       for name, x in zip(_input_names(build), xs)}
            state = module.state_dict()
            for key, value in state.items():
                # Perturbed in place through load_state_dict's copy, restored after each probe.
                param = value.copy()

                def param_loss(p: np.ndarray, key: str = key) -> float:
                    module.load_state_dict({key: p}, strict=False)
                    return loss(p)

                numeric[f"grad {key}"] = central_difference_grad(param_loss, param, eps=tolerances.FD_STEP)
                module.load_state_dict({key: value.copy()}, strict=False)
            label = f"{build.name}/{case.name}"
            _compare_gradients(errors, label, analytic, numeric, tol, floor=1.0)
    return Outcome.from_errors(errors, count, tol)


def _input_names(build: Build) -> List[str]:
    if build.takes_list:
        return [f"grad input[{i}]" for i in range(len(build.in_shape))]
    return ["grad input"]


def _gradient_scale(ref: dict, floor: float = 0.0) -> float:
    """The largest reference gradient of a case (at least `floor`): the scale all of its
    gradients are compared at (see `_compare_gradients`)."""
    return max([floor] + [float(np.abs(np.asarray(a, dtype=np.float64)).max()) for a in ref.values()
                          if np.size(a)])


def _compare_gradients(errors: Errors, label: str, got: dict, ref: dict, tol: Tolerance, floor: float = 0.0) -> None:
    """Every gradient of `ref` against `got`, normwise over the case: the scale is the largest
    reference gradient of the case (at least `floor`). All of them come out of one backward
    chain, so their rounding is of the order of eps times that; an array that is exactly zero
    in one package (a saturated softmax gate) and 1e-286 in the other is not an error."""
    scale = _gradient_scale(ref, floor)
    for name in sorted(set(got) | set(ref)):
        if name not in got or name not in ref:
            side = "the package under test" if name not in got else "refimpl"
            errors.fail(label, name, f"missing from {side}'s gradients", tol)
            continue
        errors.add(label, name, np.asarray(got[name]), np.asarray(ref[name], dtype=np.float64), tol, scale=scale)


def check_autograd(record: Record, ctx: Context) -> Outcome:
    """accel's autograd gradients of sum(output * G) == refimpl's backward, float64, for the
    inputs and every parameter (named as in state_dict); tolerances raised where ill-conditioned."""
    errors, count = Errors(), 0
    for build, pair, cases in _pairs(record, ctx, np.float64):
        tol = record.tolerance or tolerances.gradient64(build.reduction)
        wobble = _spread(record, ctx, build, pair, build.reduction * tolerances.EPS64)
        for case in cases:
            count += 1
            label = f"{build.name}/{case.name}"
            shape = adapters.run_ref(pair.ref, case.x, np.float64).shape
            g = generators.cotangent(shape, ctx.seed, record.id, label)
            ref_y, ref_grads = adapters.ref_gradients(pair.ref, case.x, g)
            got_y, got_grads = adapters.torch_gradients(pair.other, case.x, g, np.float64, ctx.device)
            moved = wobble.gradients(case.x, g)
            out_tol = conditioned(tolerances.forward64(build.reduction),
                                  conditioning.spread(ref_y, [y for y, _ in moved]))
            errors.add(label, "output", got_y, ref_y, out_tol)
            scale = _gradient_scale(ref_grads)
            grad_spread = max([conditioning.spread(ref_grads[k], [m[k] for _, m in moved], scale) for k in ref_grads],
                              default=0.0)
            _compare_gradients(errors, label, got_grads, ref_grads, conditioned(tol, grad_spread))
    return Outcome.from_errors(errors, count, record.tolerance or tolerances.gradient64(1))


# --- errors ----------------------------------------------------------------------------------
def expect_error(call: Callable[[], Any], case: ErrorCase) -> str:
    """'' when call() raises case.exception with a message matching case.match and mentioning
    every case.mentions token; otherwise what went wrong."""
    try:
        call()
    except Exception as exc:  # the point is to inspect whatever is raised
        message = str(exc)
        if not isinstance(exc, case.exception):
            return f"raised {type(exc).__name__}({message!r}), expected {case.exception.__name__}"
        if not re.search(case.match, message):
            return f"message {message!r} does not match {case.match!r} (it must name the argument)"
        missing = [m for m in case.mentions if not re.search(rf"(?<![\w.]){re.escape(m)}(?![\w])", message)]
        if missing:
            return f"message {message!r} does not state {missing} (expected and received values)"
        return ""
    return f"raised nothing, expected {case.exception.__name__}"


def _bad_input(case: ErrorCase, seed: int) -> Any:
    rng = generators.rng_for(seed, "error", case.label)
    if isinstance(case.inputs, list):
        return [rng.standard_normal(s) for s in case.inputs]
    return rng.standard_normal(case.inputs)


def error_calls(case: ErrorCase, package: str, ctx: Context) -> Callable[[], Any]:
    """A zero-argument call that must raise: the constructor, or a forward on bad input."""
    if case.inputs is None:
        return lambda: adapters.construct(case.build, package, seed=ctx.seed)
    x = _bad_input(case, ctx.seed)
    if package == "refimpl":
        module = adapters.construct(case.build, package, seed=ctx.seed)
        return lambda: module(x)
    module = adapters.construct(case.build, package, seed=ctx.seed).to(ctx.device)
    return lambda: module(adapters.to_torch(x, np.float32, ctx.device))


def check_error(record: Record, ctx: Context) -> Outcome:
    """Every ErrorCase in record.data raises the named exception, naming the argument and the
    expected and received values, in refimpl and in the package under test."""
    problems, count = [], 0
    for case in record.data:
        for side in record.sides:
            package = "refimpl" if side == "refimpl" else ctx.against
            count += 1
            problem = expect_error(error_calls(case, package, ctx), case)
            if problem:
                problems.append(f"{package} ({case.label}): {problem}")
    return Outcome(FAIL if problems else PASS, count, detail="; ".join(problems))


# --- golden vectors --------------------------------------------------------------------------
def _golden(record: Record, ctx: Context) -> Tuple[Build, Dict[str, np.ndarray], str]:
    """The Build and arrays of the golden file named in record.data, after checking its sha256."""
    from conformance.golden import store

    name = record.data[0]
    manifest = store.read_manifest(ctx.golden_dir)
    entry = manifest["files"].get(name)
    if entry is None:
        raise KeyError(f"golden set {ctx.golden_dir}: manifest lists no file {name!r}")
    path = ctx.golden_dir / name
    digest = store.sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"golden file {path}: sha256 expected {entry['sha256']} (manifest), got {digest}")
    build = Build.from_description(entry["constructor"], reduction=entry["reduction"], label=name)
    return build, store.read_npz(path), name


def _golden_expected(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    from conformance.golden import store

    expected = store.input_gradients_of(arrays)
    expected.update({f"grad {k}": v for k, v in store.prefixed(arrays, "grad.").items()})
    return expected


def check_golden_refimpl(record: Record, ctx: Context) -> Outcome:
    """refimpl, built from the manifest's constructor and loaded with the stored state,
    reproduces the stored output and gradients (float64, tight)."""
    from conformance.golden import store

    build, arrays, name = _golden(record, ctx)
    module = adapters.construct(build, "refimpl")
    module.load_state_dict(store.prefixed(arrays, "state."))
    y, grads = adapters.ref_gradients(module, store.inputs_of(arrays), arrays["grad_output"])
    errors = Errors()
    errors.add(name, "output", y, arrays["output"], tolerances.forward64(build.reduction))
    _compare_gradients(errors, name, grads, _golden_expected(arrays), tolerances.gradient64(build.reduction))
    return Outcome.from_errors(errors, 1, tolerances.forward64(build.reduction))


def check_golden_accel(record: Record, ctx: Context) -> Outcome:
    """The package under test, in float64 with the stored state, matches the stored output and
    gradients (autograd)."""
    from conformance.golden import store

    build, arrays, name = _golden(record, ctx)
    module = adapters.construct(build, ctx.against).to(device=ctx.device, dtype=adapters.torch_dtype(np.float64))
    adapters.load_torch(module, store.prefixed(arrays, "state."))
    y, grads = adapters.torch_gradients(module, store.inputs_of(arrays), arrays["grad_output"], np.float64, ctx.device)
    errors = Errors()
    errors.add(name, "output", y, arrays["output"], tolerances.forward64(build.reduction))
    _compare_gradients(errors, name, grads, _golden_expected(arrays), tolerances.gradient64(build.reduction))
    return Outcome.from_errors(errors, 1, tolerances.forward64(build.reduction))
