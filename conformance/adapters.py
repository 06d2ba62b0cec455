"""Matched pairs: the same `Build` constructed in refimpl and in the package under test.

The package under test is accel, or TorchRec with `--against torchrec`; both are torch
modules, so one adapter serves them. A pair is made the way a user would compare them:
    1. construct the torch module under `torch.manual_seed(seed)` (float32, TorchRec's default),
    2. take its state_dict, replacing constant parameters (zero biases, unit LayerNorm gains)
       with seeded noise so that every parameter path is exercised,
    3. load that state into the torch module (cast to the dtype under test) and into a refimpl
       module built with the same arguments (`load_state_dict` casts).
In float32 the state is rounded to float32 once, so that the float64 reference runs on exactly
the values the float32 modules hold.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from conformance.records import Act, Build

PACKAGES = ("refimpl", "accel", "torchrec")


# --- resolving names per package -----------------------------------------------------------------
def torchrec_missing() -> Optional[str]:
    """None when TorchRec imports, else why not (for a clear message)."""
    try:
        with warnings.catch_warnings():
            # FBGEMM announces its own module renames on import; they are not ours to report.
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module("torchrec")
    except Exception as exc:  # ImportError, or a broken FBGEMM binary raising OSError
        return f"{type(exc).__name__}: {exc}"
    return None


def module_class(package: str, name: str) -> Any:
    """The class `name` in `package` (refimpl, accel or torchrec), by the mirror rule."""
    if package not in PACKAGES:
        raise ValueError(f"package expected one of {PACKAGES}, got {package!r}")
    if package == "refimpl":
        import refimpl

        return getattr(refimpl, name)
    if name == "Linear":  # torch.nn.Linear is the torch packages' counterpart of refimpl.nn.Linear
        import torch

        return torch.nn.Linear
    if package == "accel":
        import accel

        return getattr(accel, name)
    import refimpl

    # The mirror rule: refimpl.modules.<file>.<Name> is torchrec.modules.<file>.<Name>.
    path = getattr(refimpl, name).__module__.replace("refimpl.", "torchrec.", 1)
    return getattr(importlib.import_module(path), name)


def activation(package: str, name: str) -> Callable[[Any], Any]:
    """refimpl's ElementwiseActivation `name`, or `torch.<name>` for the torch packages."""
    if package == "refimpl":
        from refimpl.modules import activation as act

        return getattr(act, name)
    import torch

    return getattr(torch, name)


def _resolve(value: Any, package: str, seed: int, dtype: Any) -> Any:
    if isinstance(value, Act):
        return activation(package, value.name)
    if isinstance(value, Build):
        return construct(value, package, seed=seed, dtype=dtype, reseed=False)
    if isinstance(value, tuple):
        return [_resolve(v, package, seed, dtype) for v in value]
    return value


@functools.lru_cache(maxsize=None)
def _accepts(cls: Any, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def construct(build: Build, package: str, *, seed: int = 0, dtype: Any = np.float64, reseed: bool = True) -> Any:
    """`build` constructed in `package`: refimpl with `dtype=` and `rng=default_rng(seed)`;
    accel/TorchRec under `torch.manual_seed(seed)` in float32 (the caller casts). With
    reseed=False a torch module draws from the current stream instead (a nested module, or a
    caller that seeded and drew inputs first, as TorchRec's own tests do)."""
    cls = module_class(package, build.module)
    if package == "refimpl":
        args, kwargs = _arguments(build, package, seed, dtype)
        # Only arguments the class takes: refimpl.nn.Linear and DeepFM may not draw or cast.
        if _accepts(cls, "dtype"):
            kwargs.setdefault("dtype", dtype)
        if _accepts(cls, "rng"):
            kwargs.setdefault("rng", np.random.default_rng(seed))
        return cls(*args, **kwargs)
    import torch

    if not reseed:
        args, kwargs = _arguments(build, package, seed, dtype)
        return cls(*args, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Arguments first: a nested module (DeepFM's dense_module) draws before its parent.
        args, kwargs = _arguments(build, package, seed, dtype)
        return cls(*args, **kwargs)


def _arguments(build: Build, package: str, seed: int, dtype: Any) -> Tuple[List[Any], Dict[str, Any]]:
    return ([_resolve(a, package, seed, dtype) for a in build.args],
            {k: _resolve(v, package, seed, dtype) for k, v in build.kwargs})


# --- state -----------------------------------------------------------------------------------
def torch_state(module: Any) -> Dict[str, np.ndarray]:
    """A torch module's state_dict as float64 NumPy copies."""
    return {k: v.detach().cpu().double().numpy().copy() for k, v in module.state_dict().items()}


def exercise(state: Dict[str, np.ndarray], seed: int) -> Dict[str, np.ndarray]:
    """`state` with every constant parameter (zero bias, unit gain) replaced by value + N(0, 0.5^2)
    noise seeded by (seed, key): TorchRec's zero-initialised biases would hide a misplaced bias."""
    out = {}
    for key, value in state.items():
        if value.size and np.all(value == value.flat[0]):
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            value = value + 0.5 * rng.standard_normal(value.shape)
        out[key] = value
    return out


def torch_dtype(dtype: Any) -> Any:
    import torch

    return {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]


def load_torch(module: Any, state: Dict[str, np.ndarray]) -> None:
    import torch

    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})


@dataclass
class Pair:
    """A refimpl module and a torch module (accel or TorchRec) holding the same parameters."""

    build: Build
    ref: Any
    other: Any
    state: Dict[str, np.ndarray]  # float64 copies of what both hold
    dtype: np.dtype
    device: str

    def reference64(self) -> Any:
        """A float64 refimpl module holding exactly this pair's (possibly float32-rounded) state."""
        module = construct(self.build, "refimpl", dtype=np.float64)
        module.load_state_dict(self.state)
        return module


def make_pair(
    build: Build,
    *,
    seed: int = 0,
    dtype: Any = np.float64,
    package: str = "accel",
    device: str = "cpu",
    state: Optional[Dict[str, np.ndarray]] = None,
) -> Pair:
    """The matched pair for `build` (see the module docstring); `state` overrides step 2."""
    dtype = np.dtype(dtype)
    other = construct(build, package, seed=seed)
    if state is None:
        state = exercise(torch_state(other), seed)
    # Round once: the float64 reference then sees the float32 modules' exact values.
    state = {k: np.asarray(v).astype(dtype).astype(np.float64) for k, v in state.items()}
    other = other.to(device=device, dtype=torch_dtype(dtype))
    load_torch(other, state)
    ref = construct(build, "refimpl", seed=seed, dtype=dtype)
    ref.load_state_dict(state)
    return Pair(build, ref, other, state, dtype, device)


# --- running ---------------------------------------------------------------------------------
def cast(x: Any, dtype: Any) -> Any:
    """x (an array or a list of arrays) in `dtype`."""
    if isinstance(x, list):
        return [np.asarray(a, dtype=dtype) for a in x]
    return np.asarray(x, dtype=dtype)


def to_torch(x: Any, dtype: Any, device: str = "cpu", requires_grad: bool = False) -> Any:
    import torch

    if isinstance(x, list):
        return [to_torch(a, dtype, device, requires_grad) for a in x]
    t = torch.tensor(np.asarray(x, dtype=np.dtype(dtype)), device=device)
    return t.requires_grad_(requires_grad) if requires_grad else t


def to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def run_ref(module: Any, x: Any, dtype: Any) -> np.ndarray:
    return np.asarray(module(cast(x, dtype)))


def run_torch(module: Any, x: Any, dtype: Any, device: str = "cpu") -> np.ndarray:
    import torch

    with torch.no_grad():
        return to_numpy(module(to_torch(x, dtype, device)))


def _input_names(x: Any) -> List[str]:
    return [f"grad input[{i}]" for i in range(len(x))] if isinstance(x, list) else ["grad input"]


def ref_gradients(module: Any, x: Any, grad_output: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """refimpl's output and analytic gradients, named "grad input[...]" and "grad <state key>"."""
    y = np.asarray(module(cast(x, module.dtype)))
    grad_inputs, grad_params = module.backward(grad_output.astype(module.dtype))
    inputs = grad_inputs if isinstance(x, list) else [grad_inputs]
    grads = {name: np.asarray(g) for name, g in zip(_input_names(x), inputs)}
    grads.update({f"grad {k}": np.asarray(v) for k, v in grad_params.items()})
    return y, grads


def torch_gradients(
    module: Any, x: Any, grad_output: np.ndarray, dtype: Any, device: str = "cpu"
) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """The torch module's output and autograd gradients of sum(output * grad_output), named as
    in `ref_gradients`; a parameter autograd leaves untouched has gradient zero."""
    module.zero_grad(set_to_none=True)
    xt = to_torch(x, dtype, device, requires_grad=True)
    y = module(xt)
    y.backward(to_torch(grad_output, dtype, device))
    inputs = xt if isinstance(x, list) else [xt]
    grads = {name: _grad_or_zeros(t) for name, t in zip(_input_names(x), inputs)}
    for key, p in module.named_parameters(remove_duplicate=False):
        grads[f"grad {key}"] = _grad_or_zeros(p)
    return to_numpy(y), grads


def _grad_or_zeros(t: Any) -> np.ndarray:
    return np.zeros(tuple(t.shape)) if t.grad is None else to_numpy(t.grad)
