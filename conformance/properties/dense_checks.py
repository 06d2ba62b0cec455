"""Checks specific to the dense modules: invariants the spec implies and discrepancy demonstrations.

Each is `check(record, ctx) -> Outcome` and runs on refimpl and on the package under test
(`ctx.against`). Expected values come from float64 NumPy formulas written here, never from
either implementation.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from conformance import adapters, generators, tolerances
from conformance.checks import expect_error
from conformance.compare import Errors, Worst, ulps
from conformance.records import Act, Build, ErrorCase, Record
from conformance.runner import FAIL, PASS, Context, Outcome

Formula = Callable[[Any, Dict[str, np.ndarray]], np.ndarray]


def _sides(record: Record, ctx: Context) -> List[str]:
    return ["refimpl" if s == "refimpl" else ctx.against for s in record.sides]


def _run(pair: adapters.Pair, package: str, x: Any, ctx: Context) -> np.ndarray:
    if package == "refimpl":
        return adapters.run_ref(pair.ref, x, pair.dtype)
    return adapters.run_torch(pair.other, x, pair.dtype, ctx.device)


def formula_check(formula: Formula, state_edit: Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]] = None
                  ) -> Callable[[Record, Context], Outcome]:
    """A check that both packages equal `formula(x, state)` on the record's generator cases,
    after `state_edit` rewrote the pair's (exercised) parameters."""

    def check(record: Record, ctx: Context) -> Outcome:
        errors, count = Errors(), 0
        for build in record.builds:
            pair = adapters.make_pair(build, seed=ctx.seed, package=ctx.against, device=ctx.device)
            if state_edit is not None:
                pair = adapters.make_pair(build, seed=ctx.seed, package=ctx.against, device=ctx.device,
                                          state=state_edit(dict(pair.state)))
            tol = record.tolerance or tolerances.forward64(build.reduction)
            for case in generators.cases(record.generator, build, ctx.seed):
                expected = formula(case.x, pair.state)
                for package in _sides(record, ctx):
                    count += 1
                    got = _run(pair, package, case.x, ctx)
                    errors.add(f"{package}:{build.name}/{case.name}", "output", got, expected, tol)
        return Outcome.from_errors(errors, count, record.tolerance or tolerances.forward64(1))

    return check


# --- formulas ---------------------------------------------------------------------------------
def _flat(x: Sequence[np.ndarray]) -> np.ndarray:
    """Each (B, ...) array flattened row-major after dim 0, concatenated in list order."""
    return np.concatenate([a.reshape(a.shape[0], int(np.prod(a.shape[1:]))) for a in x], axis=1)


def fm_pairwise(x: Sequence[np.ndarray], state: Dict[str, np.ndarray]) -> np.ndarray:
    """y_b = sum_{j<k} flat_bj flat_bk, the brute-force double loop over every scalar pair
    (written here rather than taken from refimpl, so that the invariant checks refimpl too)."""
    flat = _flat(x)
    y = np.zeros((flat.shape[0], 1))
    for j in range(flat.shape[1]):
        for k in range(j + 1, flat.shape[1]):
            y[:, 0] += flat[:, j] * flat[:, k]
    return y


def deepfm_linear(x: Sequence[np.ndarray], state: Dict[str, np.ndarray]) -> np.ndarray:
    """y = flat W^T + b with W, b = dense_module.weight, dense_module.bias (a Linear dense module)."""
    return _flat(x) @ state["dense_module.weight"].T + state["dense_module.bias"]


def zero_kernel_cross(x: np.ndarray, state: Dict[str, np.ndarray]) -> np.ndarray:
    """With every kernel zero, x_{l+1} = x_0 * b_l + x_l, so x_L = x_0 * (1 + sum_l b_l)."""
    biases = [v.reshape(-1) for k, v in state.items() if k.startswith("bias.")]
    return x * (1 + sum(biases, np.zeros(x.shape[-1])))


def zero_kernel_vector_cross(x: np.ndarray, state: Dict[str, np.ndarray]) -> np.ndarray:
    """With w_l = 0, TorchRec's x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l is x_l + b_l (D3's form),
    so x_L = x_0 + sum_l b_l."""
    biases = [v.reshape(-1) for k, v in state.items() if k.startswith("bias.")]
    return x + sum(biases, np.zeros(x.shape[-1]))


def zero_kernels(prefixes: Tuple[str, ...]) -> Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]:
    def edit(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {k: np.zeros_like(v) if k.startswith(prefixes) else v for k, v in state.items()}

    return edit


def identity(x: np.ndarray, state: Dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def perceptron_formula(x: np.ndarray, state: Dict[str, np.ndarray]) -> np.ndarray:
    """y = relu(x W^T + b)"""
    return np.maximum(x @ state["_linear.weight"].T + state["_linear.bias"], 0.0)


# --- invariants with their own shape ------------------------------------------------------------
def check_swish_bounded(record: Record, ctx: Context) -> Outcome:
    """|y| <= |x| elementwise: y = x * s with s = sigmoid(.) in [0, 1], and rounding is monotone,
    so max(|y|, |x|) == |x| exactly."""
    errors, count = Errors(), 0
    for build in record.builds:
        pair = adapters.make_pair(build, seed=ctx.seed, package=ctx.against, device=ctx.device)
        for case in generators.cases(record.generator, build, ctx.seed):
            for package in _sides(record, ctx):
                count += 1
                y = _run(pair, package, case.x, ctx)
                errors.add(f"{package}:{build.name}/{case.name}", "max(|y|, |x|) vs |x|",
                           np.maximum(np.abs(y), np.abs(case.x)), np.abs(case.x), tolerances.EXACT)
    return Outcome.from_errors(errors, count, tolerances.EXACT)


def check_mixture_one_expert(record: Record, ctx: Context) -> Outcome:
    """K experts that are copies of one expert equal the K = 1 module holding it: the softmax
    weights sum to one, so sum_i p_i expert = expert (the K = 1 path skips the gates)."""
    single, mixture = record.builds
    errors, count = Errors(), 0
    one = adapters.make_pair(single, seed=ctx.seed, package=ctx.against, device=ctx.device)
    probe = adapters.make_pair(mixture, seed=ctx.seed, package=ctx.against, device=ctx.device)
    K = dict(mixture.kwargs).get("num_experts", mixture.args[2] if len(mixture.args) > 2 else 1)
    state = {k: (np.repeat(one.state[k], K, axis=0) if k in one.state and k.split(".")[0].endswith("_kernels")
                 else v) for k, v in probe.state.items()}
    state.update({k: v for k, v in one.state.items() if k.startswith("bias.")})
    many = adapters.make_pair(mixture, seed=ctx.seed, package=ctx.against, device=ctx.device, state=state)
    tol = record.tolerance or tolerances.forward64(mixture.reduction)
    for case in generators.cases(record.generator, single, ctx.seed):
        expected = adapters.run_ref(one.ref, case.x, np.float64)
        for package in _sides(record, ctx):
            count += 1
            errors.add(f"{package}:K={K}/{case.name}", "output", _run(many, package, case.x, ctx), expected, tol)
    return Outcome.from_errors(errors, count, tol)


def check_mlp_composed(record: Record, ctx: Context) -> Outcome:
    """MLP(x) == P_{n-1}(... P_0(x)) with Perceptrons holding the MLP's per-layer parameters."""
    errors, count = Errors(), 0
    for build in record.builds:
        pair = adapters.make_pair(build, seed=ctx.seed, package=ctx.against, device=ctx.device)
        in_size, sizes = build.args[0], build.args[1]
        activation = dict(build.kwargs).get("activation", "relu")
        layers = []
        for i, (n_in, n_out) in enumerate(zip((in_size,) + tuple(sizes), sizes)):
            layer = Build("Perceptron", (n_in, n_out), (("activation", _layer_activation(activation, n_out)),))
            prefix = f"_mlp.{i}."
            state = {k[len(prefix):]: v for k, v in pair.state.items() if k.startswith(prefix)}
            layers.append(adapters.make_pair(layer, seed=ctx.seed, package=ctx.against, device=ctx.device, state=state))
        tol = record.tolerance or tolerances.forward64(build.reduction)
        for case in generators.cases(record.generator, build, ctx.seed):
            for package in _sides(record, ctx):
                count += 1
                expected = case.x
                for layer in layers:
                    expected = _run(layer, package, expected, ctx)
                errors.add(f"{package}:{build.name}/{case.name}", "output", _run(pair, package, case.x, ctx),
                           expected, tol)
    return Outcome.from_errors(errors, count, record.tolerance or tolerances.forward64(1))


def _layer_activation(activation: str, out_size: int) -> Any:
    """The Perceptron activation an MLP string stands for (sem. 5.2): relu, sigmoid, or a
    SwishLayerNorm(out_size) per layer."""
    if activation == "swish_layernorm":
        return Build("SwishLayerNorm", (out_size,))
    return Act(activation)


def check_state_dict(record: Record, ctx: Context) -> Outcome:
    """state_dict keys (in order), shapes and dtypes are TorchRec's (semantics.md); refimpl's
    dtype is its `dtype=` (float64), the torch packages' float32."""
    problems, count = [], 0
    for build, expected in zip(record.builds, record.data):
        for package in _sides(record, ctx):
            count += 1
            module = adapters.construct(build, package, seed=ctx.seed)
            if package == "refimpl":
                got = [(k, tuple(v.shape), str(v.dtype)) for k, v in module.state_dict().items()]
                dtype = "float64"
            else:
                got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in module.state_dict().items()]
                dtype = "float32"
            want = [(k, tuple(s), dtype) for k, s in expected]
            if got != want:
                problems.append(f"{package} {build.name}: state_dict {got}, expected {want}")
    return Outcome(FAIL if problems else PASS, count, detail="; ".join(problems))


def check_torchrec_values(record: Record, ctx: Context) -> Outcome:
    """TorchRec's own test: torch.manual_seed(0), inputs drawn by torch.randn, then the module
    built (drawing its parameters); the outputs TorchRec's test prints, rtol = atol = 1e-4.
    refimpl, loaded with the torch module's parameters, must give them too."""
    import torch

    tol = tolerances.TORCHREC_TEST_VALUES
    errors, count = Errors(), 0
    for build, (input_shapes, expected) in zip(record.builds, record.data):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            xs = [torch.randn(*shape) for shape in input_shapes]
            module = adapters.construct(build, ctx.against, reseed=False)
        x = [t.numpy().astype(np.float64) for t in xs] if build.takes_list else xs[0].numpy().astype(np.float64)
        state = adapters.torch_state(module)
        ref = adapters.construct(build, "refimpl")
        ref.load_state_dict(state)
        expected = np.asarray(expected, dtype=np.float64)
        for package in _sides(record, ctx):
            count += 1
            if package == "refimpl":
                got = adapters.run_ref(ref, x, np.float64)
            else:
                got = adapters.run_torch(module.to(ctx.device), x, np.float32, ctx.device)
            if got.shape != expected.shape:
                errors.fail(package, "output", f"shape {got.shape}, expected {expected.shape}", _ALLCLOSE)
                continue
            ratio = np.abs(got - expected) / (tol.value + tol.value * np.abs(expected))
            index = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            worst = Worst(f"{package}:{build.name}", "output", tuple(int(i) for i in index), float(got[index]),
                          float(expected[index]), float(ulps(got[index], expected[index])), float(ratio[index]),
                          _ALLCLOSE)
            errors.add_ratio(float(ratio.max()), worst, abs_err=float(np.abs(got - expected).max()))
    return Outcome.from_errors(errors, count, _ALLCLOSE)


_ALLCLOSE = tolerances.Tolerance(1.0, "ratio", "|got - expected| / (atol + rtol |expected|) <= 1, "
                                 "atol = rtol = 1e-4 as in TorchRec's tests")


# --- discrepancy demonstrations ---------------------------------------------------------------
def values_check(build_state: Callable[[], Tuple[Build, Dict[str, np.ndarray]]], x: Any, expected: Any,
                 extra: Callable[[], Tuple[str, bool]] = None) -> Callable[[Record, Context], Outcome]:
    """The module gives exactly `expected` on `x` in both packages (and `extra()` holds)."""

    def check(record: Record, ctx: Context) -> Outcome:
        build, state = build_state()
        # float32, TorchRec's dtype: the demonstrations use small integers, exact in any float type.
        pair = adapters.make_pair(build, seed=ctx.seed, dtype=np.float32, package=ctx.against,
                                  device=ctx.device, state=state)
        errors, count = Errors(), 0
        want = np.asarray(expected, dtype=np.float64)
        for package in _sides(record, ctx):
            count += 1
            errors.add(package, "output", _run(pair, package, x, ctx), want, tolerances.EXACT)
        outcome = Outcome.from_errors(errors, count, tolerances.EXACT)
        if extra is not None:
            what, holds = extra()
            outcome.cases += 1
            if not holds:
                outcome.status = FAIL
                outcome.detail = (outcome.detail + "; " if outcome.detail else "") + what
        return outcome

    return check


def errors_check(cases: Sequence[ErrorCase], torchrec_cases: Sequence[ErrorCase] = ()) -> Callable[[Record, Context], Outcome]:
    """Each ErrorCase raises as stated in both packages; against TorchRec, `torchrec_cases`
    state what TorchRec raises instead (the other half of the discrepancy)."""
    from conformance.checks import error_calls

    def check(record: Record, ctx: Context) -> Outcome:
        problems, count = [], 0
        for package in _sides(record, ctx):
            chosen = torchrec_cases if package == "torchrec" and torchrec_cases else cases
            for case in chosen:
                count += 1
                problem = expect_error(error_calls(case, package, ctx), case)
                if problem:
                    problems.append(f"{package} ({case.label}): {problem}")
        return Outcome(FAIL if problems else PASS, count, detail="; ".join(problems))

    return check


def vector_cross_d3_state() -> Tuple[Build, Dict[str, np.ndarray]]:
    """VectorCrossNet(2, 1) with w = 0 and b = 1 (D3's demonstration)."""
    return Build("VectorCrossNet", (2, 1), in_shape=(2,)), {"kernels.0": np.zeros((2, 1)), "bias.0": np.ones((2, 1))}


def vector_cross_d3_documented() -> Tuple[str, bool]:
    """The page's formula, refimpl's vector_cross_layer_documented, gives [[4, 6]] on the same input."""
    from refimpl.modules.crossnet import vector_cross_layer_documented

    x = np.array([[2.0, 3.0]])
    got = vector_cross_layer_documented(x, x, np.zeros((2, 1)), np.ones((2, 1)))
    return f"vector_cross_layer_documented gave {got.tolist()}, expected [[4.0, 6.0]]", got.tolist() == [[4.0, 6.0]]


def fm_d8_state() -> Tuple[Build, Dict[str, np.ndarray]]:
    return Build("FactorizationMachine", in_shape=((1, 2),)), {}


def fm_d8_fieldwise() -> Tuple[str, bool]:
    """The paper's per-dimension FM, refimpl's factorization_machine_fieldwise, gives 0 on [[[1, 1]]]."""
    from refimpl.modules.deepfm import factorization_machine_fieldwise

    got = factorization_machine_fieldwise([np.array([[[1.0, 1.0]]])])
    return f"factorization_machine_fieldwise gave {got.tolist()}, expected [[0.0]]", got.tolist() == [[0.0]]


def output_shape_check(build: Build, batch: int, shape: Tuple[int, ...]) -> Callable[[Record, Context], Outcome]:
    """The output has `shape`, and list(output) is its `batch` rows, not the shape (D9)."""

    def check(record: Record, ctx: Context) -> Outcome:
        pair = adapters.make_pair(build, seed=ctx.seed, dtype=np.float32, package=ctx.against, device=ctx.device)
        x = generators.rng_for(ctx.seed, record.id).standard_normal((batch,) + build.in_shape)
        problems = []
        for package in _sides(record, ctx):
            y = _run(pair, package, x, ctx)
            if y.shape != shape or len(list(y)) != batch:
                problems.append(f"{package}: output shape {y.shape}, {len(list(y))} rows; expected {shape}, "
                                f"{batch} rows")
        return Outcome(FAIL if problems else PASS, len(_sides(record, ctx)), detail="; ".join(problems))

    return check


def check_d4_input_shape(record: Record, ctx: Context) -> Outcome:
    """LowRankCrossNet maps (2, 3, N) row by row (it equals the (6, N) result reshaped); CrossNet,
    VectorCrossNet and LowRankMixtureCrossNet reject (2, 3, N): recspec with ValueError naming
    input, TorchRec with RuntimeError."""
    from conformance.checks import error_calls

    N = 4
    low_rank = Build("LowRankCrossNet", (N, 2, 2), in_shape=(N,), reduction=2 * (N + 4))
    x = generators.rng_for(ctx.seed, record.id).standard_normal((2, 3, N))
    pair = adapters.make_pair(low_rank, seed=ctx.seed, package=ctx.against, device=ctx.device)
    errors = Errors()
    tol = tolerances.forward64(low_rank.reduction)
    rows = adapters.run_ref(pair.ref, x.reshape(6, N), np.float64).reshape(2, 3, N)
    for package in _sides(record, ctx):
        errors.add(f"{package}:LowRankCrossNet", "(2,3,N) output vs rows", _run(pair, package, x, ctx), rows, tol)
    problems = [errors.worst.explain()] if errors.failed and errors.worst else []
    for name, args in (("CrossNet", (N, 2)), ("VectorCrossNet", (N, 2)), ("LowRankMixtureCrossNet", (N, 2, 2, 2))):
        for package in _sides(record, ctx):
            exception, match = (RuntimeError, "") if package == "torchrec" else (ValueError, r"input")
            case = ErrorCase(f"{name} (2,3,{N})", Build(name, args, in_shape=(N,)), exception, match,
                             () if package == "torchrec" else ("(2, 3, 4)",), (2, 3, N))
            problem = expect_error(error_calls(case, package, ctx), case)
            if problem:
                problems.append(f"{package} {name}: {problem}")
    count = errors.comparisons + 3 * len(_sides(record, ctx))
    return Outcome(FAIL if problems else PASS, count, errors, "; ".join(problems))
