"""Check anyone's implementation: recspec's records run on a third-party CrossNet, MLP, DeepFM, ...

    import conformance
    result = conformance.check(module="CrossNet", impl=MyCrossNet)      # a torch nn.Module class
    result = conformance.check(module="CrossNet", impl=cross_net)       # (params, inputs) -> outputs
    print(result.report())
    assert result.ok

The reference is refimpl in float64, on the same named cases, constructions and tolerances that
`python -m conformance` uses for accel. Each construction's parameters are refimpl's seeded
initialisation with every constant parameter replaced by seeded noise (a zero bias would hide a
misplaced bias), handed to the implementation as a state dict under recspec's (TorchRec's) keys.
What runs, by kind:
    forward      dtype float64: every `forward` record of the module
    forward_f32  dtype float32: every `forward_f32` record (the implementation's float32 error is at
                 most 4 x a correct float32 result's, checks.check_forward_f32)
    autograd     dtype float64, dense torch modules: gradients of the input and every parameter
    golden       dtype float64: each committed golden file of the module (outputs, and gradients
                 when the implementation has autograd); the format is docs/golden_format.md
`impl` is one of
    a class, or `factory(fn)`   called with the construction's arguments (activations as torch
                                functions, nested modules as torch modules, table configs as
                                accel's, or TorchRec's for a TorchRec class), then loaded with the state
    a torch module instance     a copy runs every construction whose state keys and shapes it matches
    a plain callable            `impl(params, inputs)` -> outputs, NumPy in and out (anything
                                `np.asarray` takes out); with a `config` parameter it also receives
                                the constructor as JSON ({"module", "args", "kwargs"})
and an `Adapter` maps recspec's keys, inputs and outputs onto the implementation's. The embedding
modules (JAGGED) take a KeyedJaggedTensor: a torch module gets accel's (a dict of JaggedTensors for
PositionWeightedModule), a plain callable `jagged_arrays`' dict, and returns its outputs named as the
golden files name them (JAGGED_OUTPUTS).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from conformance import adapters, checks, conditioning, generators, tolerances
from conformance.compare import Errors, Worst, ulps
from conformance.golden import store
from conformance.records import Act, Build, Record
from conformance.runner import FAIL, GOLDEN_DIR, PASS, SKIP, Outcome, Row

try:  # the text table lives in conformance.report where that module exists
    from conformance.report import format_table
except ImportError:
    from conformance.runner import format_table  # type: ignore[attr-defined,no-redef]

API_KINDS = ("forward", "forward_f32", "autograd", "golden")
DEFAULT_KINDS = {"float64": ("forward", "autograd", "golden"), "float32": ("forward_f32",)}
_CHECKS = {checks.check_forward: "forward", checks.check_forward_f32: "forward_f32",
           checks.check_autograd: "autograd"}


# --- what the user passes --------------------------------------------------------------------------
@dataclass(frozen=True)
class Adapter:
    """How recspec's constructions, state and inputs reach an implementation.

    construct  Build -> the implementation's module, replacing the default call of `impl` with the
               Build's arguments (Build.describe() gives them as JSON)
    keys       recspec state_dict key -> the implementation's key: a dict (keys it lacks stay as they
               are) or a function; a key mapped to None is not passed on
    params     the renamed state (NumPy arrays in the dtype) -> what a plain callable takes (jnp
               arrays, a pytree, one packed buffer)
    inputs     recspec's input (an array, or a list of arrays, batch first; torch tensors for a torch
               module; jagged: `jagged_arrays`' dict, or accel's KeyedJaggedTensor for a torch module)
               -> the implementation's input (another layout, another array library, another KJT type)
    outputs    the implementation's output -> recspec's layout, in the same array library (a torch
               tensor stays a tensor, so that autograd reaches it)
    """

    construct: Optional[Callable[[Build], Any]] = None
    keys: Union[Mapping[str, Optional[str]], Callable[[str], Optional[str]], None] = None
    params: Callable[[Dict[str, np.ndarray]], Any] = lambda p: p
    inputs: Callable[[Any], Any] = lambda x: x
    outputs: Callable[[Any], Any] = lambda y: y

    def key(self, name: str) -> Optional[str]:
        if self.keys is None:
            return name
        if callable(self.keys):
            return self.keys(name)
        return self.keys.get(name, name)

    def rename(self, state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        renamed = {self.key(k): v for k, v in state.items()}
        renamed.pop(None, None)
        return renamed  # type: ignore[return-value]


@dataclass(frozen=True)
class factory:  # lower case: it reads as a call, factory(make_crossnet)
    """Marks a function that builds a module from a construction's arguments (like a class)."""

    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@dataclass
class Result:
    """The rows of one `check` call (conformance.runner.Row, one per property); `ok` when none
    failed and at least one passed."""

    module: str
    rows: List[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return any(r.status == PASS for r in self.rows) and not self.failures

    @property
    def failures(self) -> List[Row]:
        return [r for r in self.rows if r.status == FAIL]

    def report(self) -> str:
        return format_table(self.rows)

    def __str__(self) -> str:
        return self.report()


# --- one implementation bound to one construction ---------------------------------------------------
class StateMismatch(ValueError):
    """The implementation's parameters do not have recspec's keys (after the adapter's renaming)."""


def _to_numpy(y: Any) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu()
    return np.asarray(y)


class _Bound:
    """`impl` built for one construction and holding one state: forward(x) and, for torch modules,
    gradients(x, G) named as conformance.adapters (dense) or embeddings_io (jagged) names them.
    x is an array or a list of arrays (dense), or an embeddings_io.Batch (jagged)."""

    def __init__(self, build: Build, call: Callable[[Any], Any], module: Any = None,
                 inverse: Optional[Dict[str, str]] = None, dtype: Any = np.float64, device: str = "cpu") -> None:
        self.build, self.call, self.module, self.inverse = build, call, module, inverse or {}
        self.dtype, self.device = np.dtype(dtype), device
        self.jagged = build.module in JAGGED

    @property
    def has_gradients(self) -> bool:
        return self.module is not None

    def forward(self, x: Any) -> Any:
        """The output as a NumPy array (dense), or (output keys or None, named arrays) (jagged)."""
        if self.module is None:
            if not self.jagged:
                return _to_numpy(self.call(adapters.cast(x, self.dtype)))
            out = self.call(jagged_arrays(x, self.dtype))
            if not isinstance(out, Mapping):
                raise TypeError(f"output: expected a dict of named arrays ({JAGGED_OUTPUTS}), got {type(out).__name__}")
            return None, {k: _to_numpy(v) for k, v in out.items()}
        import torch

        with torch.no_grad():
            if self.jagged:
                return self._io().outputs(self.build, self.call(self._torch_jagged(x)[0]))
            return _to_numpy(self.call(adapters.to_torch(x, self.dtype, self.device)))

    def gradients(self, x: Any, grad_output: Any) -> Tuple[Any, Dict[str, np.ndarray]]:
        if self.jagged:
            return self._jagged_gradients(x, grad_output)
        module = self.module
        module.zero_grad(set_to_none=True)
        xt = adapters.to_torch(x, self.dtype, self.device, requires_grad=True)
        y = self.call(xt)
        y.backward(adapters.to_torch(grad_output, self.dtype, self.device))
        names = [f"grad input[{i}]" for i in range(len(xt))] if isinstance(x, list) else ["grad input"]
        grads = {n: adapters._grad_or_zeros(t) for n, t in zip(names, xt if isinstance(x, list) else [xt])}
        return _to_numpy(y), self._parameter_grads(grads)

    def _parameter_grads(self, grads: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        for key, p in self.module.named_parameters(remove_duplicate=False):
            grads[f"grad {self.inverse.get(key, key)}"] = adapters._grad_or_zeros(p)
        return grads

    @staticmethod
    def _io() -> Any:
        from conformance.properties import embeddings_io

        return embeddings_io

    def _torch_jagged(self, b: Any, requires_grad: bool = False) -> Tuple[Any, Any]:
        """(the forward's input: an accel KeyedJaggedTensor, or its dict of JaggedTensors for the
        dict-taking modules; the weights leaf or None)."""
        io = self._io()
        kjt = io.to_kjt(b, "accel", self.dtype, self.device, requires_grad=requires_grad and b.weights is not None)
        x = kjt.to_dict() if self.build.module in io.DICT_MODULES else kjt
        return x, kjt.weights_or_none()

    def _jagged_gradients(self, b: Any, G: Dict[str, np.ndarray]) -> Tuple[Any, Dict[str, np.ndarray]]:
        """(the named outputs, the gradients of sum_k <output_k, G_k>: "grad <key>", and
        "grad weights" for the KJT's weights)."""
        import torch

        io = self._io()
        self.module.zero_grad(set_to_none=True)
        x, leaf = self._torch_jagged(b, requires_grad=True)
        result = self.call(x)
        tensors = io._torch_outputs(self.build, result)
        loss = sum((tensors[k] * torch.as_tensor(G[k], dtype=tensors[k].dtype, device=tensors[k].device)).sum()
                   for k in G)
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()
        grads = {} if leaf is None else {"grad weights": adapters._grad_or_zeros(leaf)}
        return io.outputs(self.build, result), self._parameter_grads(grads)


# The jagged modules check() runs, their input for a plain callable and the outputs it returns.
JAGGED = ("EmbeddingBagCollection", "EmbeddingCollection", "PositionWeightedModule", "PositionWeightedProcessor")
JAGGED_OUTPUTS = ("EmbeddingBagCollection: {'out'}; EmbeddingCollection: {'values[f]', 'lengths[f]', "
                  "'indices[f]'}; PositionWeightedModule: {'weights[f]'}; PositionWeightedProcessor: {'weights'}")


def jagged_arrays(b: Any, dtype: Any = np.float64) -> Dict[str, Any]:
    """A KeyedJaggedTensor as plain arrays, the jagged input of a plain callable: {"keys": [...],
    "lengths": int64 (key-major, F x B), "values": int64 ids, "weights": per-id weights in `dtype`
    or None, "stride": B}; bag b of key k is values[offsets[k*B+b]:offsets[k*B+b+1]]."""
    return {"keys": list(b.keys), "lengths": b.lengths.copy(), "values": b.values.copy(),
            "weights": None if b.weights is None else b.weights.astype(dtype), "stride": int(b.stride)}


def _torch_arguments(build: Build, seed: int, package: str = "accel") -> Tuple[List[Any], Dict[str, Any]]:
    """The Build's arguments for a torch class: Act names as torch functions, nested Builds as
    torch modules (torch.nn.Linear for "Linear"), table configs as `package`'s configs (TorchRec's
    for a TorchRec class), (feature, length) pairs as a dict, tuples as lists."""
    from conformance.properties import embeddings_io as io

    def resolve(value: Any) -> Any:
        if isinstance(value, Act):
            return adapters.activation("accel", value.name)
        if isinstance(value, Build) and value.module in io.CONFIGS:
            return io.config(value, package)
        if isinstance(value, Build):
            return adapters.construct(value, "accel", seed=seed)
        if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                                                      for v in value):
            return {k: v for k, v in value}
        if isinstance(value, tuple):
            return [resolve(v) for v in value]
        return value

    return [resolve(a) for a in build.args], {k: resolve(v) for k, v in build.kwargs}


def _is_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # without torch nothing is a torch module
        return False
    return isinstance(obj, torch.nn.Module)


def _builds_modules(impl: Any) -> bool:
    target = impl.func if isinstance(impl, functools.partial) else impl
    return inspect.isclass(target) or isinstance(impl, factory)


def _check_keys(have: Dict[str, Tuple[int, ...]], want: Dict[str, Tuple[int, ...]]) -> None:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise StateMismatch(f"state keys: the implementation lacks {missing} and has unexpected {extra} "
                            f"(expected recspec's keys {sorted(want)}; rename them with Adapter(keys=...))")


def bind(impl: Any, adapter: Adapter, build: Build, state: Dict[str, np.ndarray], dtype: Any,
         device: str = "cpu", seed: int = 0) -> _Bound:
    """`impl` built for `build` and holding `state` (float64 NumPy, recspec's keys) in `dtype`;
    StateMismatch when the implementation's state keys or shapes differ from recspec's."""
    dtype = np.dtype(dtype)
    renamed = {k: np.asarray(v, dtype=dtype) for k, v in adapter.rename(state).items()}
    if adapter.construct is not None or _builds_modules(impl) or _is_module(impl):
        if adapter.construct is not None:
            module = adapter.construct(build)
        elif _is_module(impl):
            module = copy.deepcopy(impl)
        else:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                target = impl.fn if isinstance(impl, factory) else impl
                package = "torchrec" if getattr(target, "__module__", "").startswith("torchrec.") else "accel"
                args, kwargs = _torch_arguments(build, seed, package)
                module = impl(*args, **kwargs)
        if not _is_module(module):  # a construct hook may return a plain callable
            return _function(module, adapter, build, renamed, dtype)
        import torch

        module = module.to(device=device, dtype=adapters.torch_dtype(dtype))
        have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        want = {k: tuple(v.shape) for k, v in renamed.items()}
        _check_keys(have, want)
        if have != want:
            wrong = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
            raise StateMismatch(f"state shapes (expected, the implementation's): {wrong}")
        module.load_state_dict({k: torch.as_tensor(v, device=device) for k, v in renamed.items()})
        inverse = {adapter.key(k): k for k in state if adapter.key(k) is not None}
        return _Bound(build, lambda x: adapter.outputs(module(adapter.inputs(x))), module, inverse, dtype, device)
    if not callable(impl):
        raise TypeError(f"impl: expected a torch nn.Module class or instance, factory(fn) or a callable "
                        f"(params, inputs) -> outputs, got {type(impl).__name__}")
    return _function(impl, adapter, build, renamed, dtype)


def _function(fn: Callable[..., Any], adapter: Adapter, build: Build, renamed: Dict[str, np.ndarray],
              dtype: np.dtype) -> _Bound:
    params = adapter.params(renamed)
    try:
        takes_config = "config" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and C callables have no signature
        takes_config = False
    extra = {"config": build.describe()} if takes_config else {}
    return _Bound(build, lambda x: adapter.outputs(fn(params, adapter.inputs(x), **extra)), dtype=dtype)


# --- the checks -------------------------------------------------------------------------------------
@dataclass
class _Run:
    impl: Any
    adapter: Adapter
    seed: int
    device: str
    golden_dir: Path = GOLDEN_DIR

    def state(self, build: Build, dtype: Any = np.float64) -> Dict[str, np.ndarray]:
        """refimpl's seeded parameters, constants replaced by noise, rounded once to `dtype`."""
        module = _construct_refimpl(build, seed=self.seed)
        state = adapters.exercise(module.state_dict(), self.seed)
        return {k: np.asarray(v).astype(dtype).astype(np.float64) for k, v in state.items()}

    @property
    def instance(self) -> bool:
        return _is_module(self.impl) and self.adapter.construct is None

    def bind(self, build: Build, state: Dict[str, np.ndarray], dtype: Any, skipped: List[str]) -> Optional[_Bound]:
        """The bound implementation; None (noted in `skipped`) for a module instance of another
        configuration, which runs only the constructions it fits."""
        try:
            return bind(self.impl, self.adapter, build, state, dtype, self.device, self.seed)
        except StateMismatch as exc:
            if not self.instance:
                raise
            skipped.append(f"{build.name}: {exc}")
            return None


def _construct_refimpl(build: Build, seed: int = 0, dtype: Any = np.float64) -> Any:
    from conformance.properties import embeddings_io

    return embeddings_io.construct(build, "refimpl", seed=seed, dtype=dtype)


def _reference(build: Build, state: Dict[str, np.ndarray], dtype: Any = np.float64) -> Any:
    module = _construct_refimpl(build, dtype=dtype)
    module.load_state_dict(state)
    return module


def _guarded(errors: Errors, label: str, tol: tolerances.Tolerance, fn: Callable[[], Any]) -> Any:
    """fn(), or None after recording what it raised as a failed comparison."""
    try:
        return fn()
    except Exception as exc:  # the implementation's own error is a finding, not a crash
        errors.fail(label, "output", f"the implementation raised {type(exc).__name__}: {exc}", tol)
        return None


def _forward(record: Record, run: _Run) -> Tuple[Errors, int, List[str]]:
    errors, count, skipped = Errors(), 0, []
    for build in record.builds:
        state = run.state(build)
        bound = run.bind(build, state, np.float64, skipped)
        if bound is None:
            continue
        ref = _reference(build, state)
        tol = record.tolerance or tolerances.forward64(build.reduction)
        wobble = conditioning.Spread(build, state, build.reduction * tolerances.EPS64,
                                     generators.rng_for(run.seed, record.id, build.name, "spread"))
        for case in generators.cases(record.generator, build, run.seed):
            count += 1
            label = f"{build.name}/{case.name}"
            got = _guarded(errors, label, tol, lambda: bound.forward(case.x))
            if got is None:
                continue
            want = adapters.run_ref(ref, case.x, np.float64)
            case_tol = tol if tol.unit != "rel" else checks.conditioned(
                tol, conditioning.spread(want, wobble.outputs(case.x)))
            errors.add(label, "output", got, want, case_tol)
    return errors, count, skipped


def _jagged_forward(record: Record, run: _Run) -> Tuple[Errors, int, List[str]]:
    """embeddings_checks.check_forward's comparison: every named output array, ids and lengths
    exactly, and the output's keys in order where the implementation returns TorchRec's types."""
    from conformance.properties import embeddings_cases, embeddings_io

    errors, count, skipped = Errors(), 0, []
    for build in record.builds:
        state = run.state(build)
        bound = run.bind(build, state, np.float64, skipped)
        if bound is None:
            continue
        ref = _reference(build, state)
        tol = record.tolerance or tolerances.forward64(build.reduction)
        for name, b in embeddings_cases.cases(record.generator, build, run.seed):
            count += 1
            label = f"{build.name}/{name}"
            got = _guarded(errors, label, tol, lambda: bound.forward(b))
            if got is not None:
                _compare_named(errors, label, got, embeddings_io.run(ref, build, b, "refimpl", np.float64), tol)
    return errors, count, skipped


def _compare_named(errors: Errors, label: str, got: Tuple[Optional[List[str]], Dict[str, np.ndarray]],
                   ref: Tuple[List[str], Dict[str, np.ndarray]], tol: tolerances.Tolerance) -> None:
    if got[0] is not None and list(got[0]) != list(ref[0]):
        errors.fail(label, "output keys", f"keys {list(got[0])}, expected {list(ref[0])}", tol)
        return
    for name in sorted(set(got[1]) | set(ref[1])):
        if name not in got[1] or name not in ref[1]:
            side = "the implementation's" if name not in got[1] else "refimpl's"
            errors.fail(label, name, f"missing from {side} outputs (expected {sorted(ref[1])})", tol)
            continue
        exact = not np.issubdtype(ref[1][name].dtype, np.floating)
        errors.add(label, name, got[1][name], ref[1][name], tolerances.EXACT if exact else tol)


def _forward_f32(record: Record, run: _Run) -> Tuple[Errors, int, List[str]]:
    """conformance.checks.check_forward_f32's rule, with the implementation as the package under test."""
    tol = record.tolerance or tolerances.forward32()
    errors, count, skipped = Errors(), 0, []
    for build in record.builds:
        state = run.state(build, np.float32)
        bound = run.bind(build, state, np.float32, skipped)
        if bound is None:
            continue
        ref64_module, own_module = _reference(build, state), _reference(build, state, np.float32)
        wobble = conditioning.Spread(build, state, tolerances.EPS32,
                                     generators.rng_for(run.seed, record.id, build.name, "spread"))
        for case in generators.cases(record.generator, build, run.seed):
            count += 1
            label = f"{build.name}/{case.name}"
            x32 = adapters.cast(case.x, np.float32)
            got = _guarded(errors, label, tol, lambda: bound.forward(x32))
            if got is None:
                continue
            ref64 = adapters.run_ref(ref64_module, x32, np.float64)
            if got.shape != ref64.shape:
                errors.fail(label, "output", f"shape {got.shape}, expected {ref64.shape}", tol)
                continue
            if ref64.size == 0:
                errors.add_ratio(0.0, None)
                continue
            own = adapters.run_ref(own_module, x32, np.float32)
            floor = np.full(ref64.shape, tolerances.floor32() * float(np.abs(ref64).max()))
            allowance = np.maximum.reduce([np.abs(own - ref64), floor]
                                          + [np.abs(m - ref64) for m in wobble.outputs(x32)])
            _add_ratio(errors, label, "output", got, ref64, allowance, tol)
    return errors, count, skipped


def _add_ratio(errors: Errors, label: str, array: str, got: np.ndarray, ref64: np.ndarray, allowance: np.ndarray,
               tol: tolerances.Tolerance) -> None:
    """|got - ref64| / allowance elementwise, its largest value and element recorded in `errors`."""
    got = np.asarray(got, dtype=np.float32)  # ULPs of a float32 result are float32 ULPs
    err = np.abs(got.astype(np.float64) - ref64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(err == 0, 0.0, err / allowance)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    index = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst = Worst(label, array, tuple(int(i) for i in index), float(got[index]), float(ref64[index]),
                  float(ulps(got[index], ref64[index])), float(ratio[index]), tol)
    errors.add_ratio(float(ratio[index]), worst, abs_err=float(err.max()))


def _jagged_forward_f32(record: Record, run: _Run) -> Tuple[Errors, int, List[str]]:
    """embeddings_checks.check_forward_f32's rule on the float outputs: |got - ref64| <= K32 x
    max(|refimpl32 - ref64|, FLOOR32_ULPS eps32 S), S the same lookup over |W| and |w|."""
    from conformance.properties import embeddings_cases
    from conformance.properties import embeddings_io as io

    tol = record.tolerance or tolerances.forward32()
    errors, count, skipped = Errors(), 0, []
    for build in record.builds:
        state = run.state(build, np.float32)
        bound = run.bind(build, state, np.float32, skipped)
        if bound is None:
            continue
        ref64, own32 = _reference(build, state), _reference(build, state, np.float32)
        magnitude = _reference(build, {k: np.abs(v) for k, v in state.items()})
        for name, b in embeddings_cases.cases(record.generator, build, run.seed):
            count += 1
            label = f"{build.name}/{name}"
            b32 = b.with_weights(None if b.weights is None else b.weights.astype(np.float32).astype(np.float64))
            got = _guarded(errors, label, tol, lambda: bound.forward(b32))
            if got is None:
                continue
            keys, want = io.run(ref64, build, b32, "refimpl", np.float64)
            if got[0] is not None and list(got[0]) != list(keys):
                errors.fail(label, "output keys", f"keys {list(got[0])}, expected {list(keys)}", tol)
                continue
            _, own = io.run(own32, build, b32, "refimpl", np.float32)
            absolute = b32.with_weights(None if b32.weights is None else np.abs(b32.weights))
            _, scale = io.run(magnitude, build, absolute, "refimpl", np.float64)
            for out in io.differentiable(want):
                value = got[1].get(out)
                if value is None or np.shape(value) != want[out].shape:
                    note = "missing" if value is None else f"shape {np.shape(value)}, expected {want[out].shape}"
                    errors.fail(label, out, note, tol)
                elif want[out].size == 0:
                    errors.add_ratio(0.0, None)
                else:
                    allowance = np.maximum(np.abs(own[out] - want[out]), tolerances.floor32() * np.abs(scale[out]))
                    _add_ratio(errors, label, out, value, want[out], allowance, tol)
    return errors, count, skipped


def _autograd(record: Record, run: _Run) -> Tuple[Errors, int, List[str]]:
    errors, count, skipped = Errors(), 0, []
    for build in record.builds:
        state = run.state(build)
        bound = run.bind(build, state, np.float64, skipped)
        if bound is None:
            continue
        ref = _reference(build, state)
        tol = record.tolerance or tolerances.gradient64(build.reduction)
        wobble = conditioning.Spread(build, state, build.reduction * tolerances.EPS64,
                                     generators.rng_for(run.seed, record.id, build.name, "spread"))
        for case in generators.cases(record.generator, build, run.seed):
            count += 1
            label = f"{build.name}/{case.name}"
            g = generators.cotangent(adapters.run_ref(ref, case.x, np.float64).shape, run.seed, record.id, label)
            ref_y, ref_grads = adapters.ref_gradients(ref, case.x, g)
            result = _guarded(errors, label, tol, lambda: bound.gradients(case.x, g))
            if result is None:
                continue
            got_y, got_grads = result
            moved = wobble.gradients(case.x, g)
            out_tol = checks.conditioned(tolerances.forward64(build.reduction),
                                         conditioning.spread(ref_y, [y for y, _ in moved]))
            errors.add(label, "output", got_y, ref_y, out_tol)
            scale = checks._gradient_scale(ref_grads)
            spread = max([conditioning.spread(ref_grads[k], [m[k] for _, m in moved], scale) for k in ref_grads],
                         default=0.0)
            checks._compare_gradients(errors, label, got_grads, ref_grads, checks.conditioned(tol, spread))
    return errors, count, skipped


def _golden(name: str, entry: Dict[str, Any], run: _Run, golden_dir: Path) -> Tuple[Errors, int, List[str]]:
    """The stored output (and gradients, where the implementation has autograd) from the stored
    input and state."""
    build = Build.from_description(entry["constructor"], reduction=entry["reduction"], label=name)
    path = golden_dir / name
    digest = store.sha256(path)
    if digest != entry["sha256"]:
        raise store.GoldenFormatError(f"golden file {path}: sha256 expected {entry['sha256']} (manifest), "
                                      f"got {digest}")
    arrays = store.read_npz(path)
    state = store.prefixed(arrays, "state.")
    errors = Errors()
    fwd, grad = tolerances.forward64(build.reduction), tolerances.gradient64(build.reduction)
    skipped: List[str] = []
    bound = run.bind(build, state, np.float64, skipped)
    if bound is None:
        return errors, 0, skipped
    if bound.jagged:
        _golden_jagged(errors, name, build, bound, arrays, fwd, grad)
        return errors, 1, []
    x = store.inputs_of(arrays)
    if bound.has_gradients:
        result = _guarded(errors, name, fwd, lambda: bound.gradients(x, arrays["grad_output"]))
        if result is not None:
            y, grads = result
            errors.add(name, "output", y, arrays["output"], fwd)
            expected = store.input_gradients_of(arrays)
            expected.update({f"grad {k}": v for k, v in store.prefixed(arrays, "grad.").items()})
            checks._compare_gradients(errors, name, grads, expected, grad)
    else:
        y = _guarded(errors, name, fwd, lambda: bound.forward(x))
        if y is not None:
            errors.add(name, "output", y, arrays["output"], fwd)
    return errors, 1, []


def _golden_jagged(errors: Errors, name: str, build: Build, bound: _Bound, arrays: Dict[str, np.ndarray],
                   fwd: tolerances.Tolerance, grad: tolerances.Tolerance) -> None:
    from conformance.properties import embeddings_golden

    b, G, expected = embeddings_golden.stored(build, arrays)
    want = store.prefixed(arrays, "output.")
    if bound.has_gradients:
        result = _guarded(errors, name, fwd, lambda: bound.gradients(b, G))
        if result is None:
            return
        (_, got), grads = result
        wanted = {k: v for k, v in expected.items() if k.startswith("grad ")}
        if "grad weights" not in wanted:  # the weights of an unweighted lookup have no gradient
            grads.pop("grad weights", None)
        checks._compare_gradients(errors, name, grads, wanted, grad)
    else:
        got = _guarded(errors, name, fwd, lambda: bound.forward(b))
        if got is None:
            return
        got = got[1]
    _compare_named(errors, name, (None, got), ([], want), fwd)


_KIND_CHECKS = {"forward": _forward, "forward_f32": _forward_f32, "autograd": _autograd}
_JAGGED_CHECKS = {"forward": _jagged_forward, "forward_f32": _jagged_forward_f32}


# --- the public entry point -------------------------------------------------------------------------
def _records(module: str) -> List[Record]:
    """The module's records that check() runs: the generic dense kinds, and the jagged forwards."""
    from conformance.properties import RECORDS, embeddings_checks

    if module in JAGGED:
        jagged = (embeddings_checks.check_forward, embeddings_checks.check_forward_f32)
        return [r for r in RECORDS if r.module == module and r.check in jagged]
    return [r for r in RECORDS if r.module == module and _CHECKS.get(r.check) == r.kind]


def _golden_files(module: str, golden_dir: Path) -> Dict[str, Dict[str, Any]]:
    manifest = store.read_manifest(golden_dir)
    return {name: e for name, e in manifest["files"].items() if e["module"] == module}


def modules() -> List[str]:
    """The module names `check` accepts: the dense modules and the embedding modules with a
    KeyedJaggedTensor (or dict of JaggedTensors) input."""
    from conformance.properties import modules as registered

    return [m for m in registered() if _records(m)]


def _module_name(module: str) -> str:
    valid = modules()
    for name in valid:
        if name.lower() == str(module).lower():
            return name
    raise ValueError(f"module: expected one of {valid}, got {module!r}")


def _dtype_name(dtype: Any) -> str:
    """"float32" or "float64" from a NumPy dtype, a name, or a torch dtype (torch.float32)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).replace("torch.", "")
    if name not in DEFAULT_KINDS:
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
    return name


def _impl_name(impl: Any) -> str:
    target = impl.fn if isinstance(impl, factory) else impl
    target = target.func if isinstance(target, functools.partial) else target
    if not inspect.isclass(target) and _is_module(target):
        target = type(target)
    return getattr(target, "__name__", type(target).__name__)


def check(module: str, impl: Any, adapter: Optional[Adapter] = None, properties: Optional[Iterable[str]] = None,
          dtype: Any = np.float64, *, seed: int = 0, device: str = "cpu", golden_dir: Optional[Path] = None
          ) -> Result:
    """Run `module`'s records on `impl` (see the module docstring) and return one row per property.

    properties: kinds ("forward", "forward_f32", "autograd", "golden") or property names
    ("forward_leading_dims", "golden[CrossNet]"); default every kind that runs in `dtype`.
    """
    golden_dir = Path(golden_dir) if golden_dir is not None else GOLDEN_DIR
    name = _module_name(module)
    dtype_name = _dtype_name(dtype)
    adapter = adapter or Adapter()
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter: expected a conformance.Adapter, got {type(adapter).__name__}")
    records = _records(name)
    golden = _golden_files(name, golden_dir)
    available = [r.property for r in records] + [f"golden[{Path(f).stem}]" for f in golden]
    wanted = list(DEFAULT_KINDS[dtype_name]) if properties is None else list(properties)
    if isinstance(properties, str):
        raise TypeError(f"properties: expected a list of names, got the string {properties!r}")
    unknown = [p for p in wanted if p not in API_KINDS and p not in available]
    if unknown:
        raise ValueError(f"properties: expected kinds from {list(API_KINDS)} or properties of {name} "
                         f"{available}, got {unknown}")
    if not (callable(impl) or _is_module(impl)):
        raise TypeError(f"impl: expected a torch nn.Module class or instance, factory(fn) or a callable "
                        f"(params, inputs) -> outputs, got {type(impl).__name__}")
    run = _Run(impl, adapter, seed, device, golden_dir)
    label = _impl_name(impl)
    result = Result(name)
    for record in records:
        if record.kind in wanted or record.property in wanted:
            result.rows.append(_record_row(record, run, dtype_name, label))
    for file, entry in golden.items():
        prop = f"golden[{Path(file).stem}]"
        if "golden" in wanted or prop in wanted:
            result.rows.append(_golden_row(name, prop, file, entry, run, dtype_name, label, golden_dir))
    return result


def _repro(module: str, prop: str, label: str, dtype_name: str, run: _Run) -> str:
    """The call that reruns one property: the same module, implementation, dtype, seed and device."""
    extra = "" if run.seed == 0 else f", seed={run.seed}"
    extra += "" if run.device == "cpu" else f", device={run.device!r}"
    extra += "" if run.golden_dir == GOLDEN_DIR else f", golden_dir={str(run.golden_dir)!r}"
    return (f"conformance.check(module={module!r}, impl={label}, properties=[{prop!r}], "
            f"dtype='{dtype_name}'{extra})")


def _row(module: str, prop: str, kind: str, run: _Run, label: str, dtype_name: str) -> Row:
    row = Row(module, prop, kind, run.device, label, 0, math.nan, math.nan, "", math.nan, SKIP,
              repro=_repro(module, prop, label, dtype_name, run))
    if hasattr(row, "id"):
        row.id = f"{module}/{prop}"
    return row


def _fill(row: Row, outcome: Callable[[], Tuple[Errors, int, List[str]]], tol: tolerances.Tolerance) -> Row:
    try:
        errors, count, skipped = outcome()
    except Exception as exc:  # a mismatched state, a broken golden file: a failure that explains itself
        row.status, row.detail = FAIL, f"{type(exc).__name__}: {exc}"
        return row
    if count == 0:
        row.detail = (f"the module instance fits none of the constructions (it runs those whose state keys "
                      f"and shapes it matches): {'; '.join(skipped)}")
        return row
    out = Outcome.from_errors(errors, count, tol)
    row.status, row.cases, row.detail = out.status, out.cases, out.detail
    row.max_abs, row.max_err, row.unit, row.tolerance = errors.max_abs, errors.max_err, out.unit, out.tolerance
    if errors.worst is not None and hasattr(errors.worst, "as_dict") and hasattr(row, "worst"):
        row.worst = errors.worst.as_dict()
    if skipped:
        names = [k.split(":")[0] for k in skipped]
        row.detail = f"{row.detail} (constructions the instance does not fit: {names})".strip()
    return row


def _record_row(record: Record, run: _Run, dtype_name: str, label: str) -> Row:
    row = _row(record.module, record.property, record.kind, run, label, dtype_name)
    if dtype_name not in record.dtypes:
        row.detail = f"{record.kind} records run in {list(record.dtypes)}, this check in {dtype_name}"
        return row
    if record.kind == "autograd" and not (_is_module(run.impl) or _builds_modules(run.impl)
                                          or run.adapter.construct is not None):
        row.detail = "a plain callable has no autograd: gradients are checked on torch modules"
        return row
    tol = record.tolerance or (tolerances.forward32() if record.kind == "forward_f32" else tolerances.forward64(1))
    kinds = _JAGGED_CHECKS if record.module in JAGGED else _KIND_CHECKS
    return _fill(row, lambda: kinds[record.kind](record, run), tol)


def _golden_row(module: str, prop: str, file: str, entry: Dict[str, Any], run: _Run, dtype_name: str,
                label: str, golden_dir: Path) -> Row:
    row = _row(module, prop, "golden", run, label, dtype_name)
    if dtype_name != "float64":
        row.detail = "golden vectors are float64: check them with dtype=float64"
        return row
    return _fill(row, lambda: _golden(file, entry, run, golden_dir), tolerances.forward64(entry["reduction"]))


__all__: Sequence[str] = ("Adapter", "Result", "StateMismatch", "check", "factory", "modules")
