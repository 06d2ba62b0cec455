"""The NumPy module base: ordered parameters, child modules and a TorchRec-shaped state_dict.

refimpl modules are plain objects; this base only gives them what the contract needs from a
module: `state_dict()` with TorchRec's keys (own parameters first in registration order, then
each child's under `<child>.`), `load_state_dict(d)` that accepts anything `np.asarray` takes
and casts to the module's dtype, and `__call__` that delegates to `forward`.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Tuple

import numpy as np


def as_numpy(value: Any) -> np.ndarray:
    """A NumPy view of an array-like, including torch tensors (which refimpl never imports)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


class Module:
    """Base class of every refimpl module."""

    def __init__(self, dtype: Any = np.float64) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "dtype", np.dtype(dtype))

    # --- registration -------------------------------------------------------------------------
    def register_parameter(self, name: str, value: np.ndarray) -> None:
        """Add (or replace) a parameter under `name` (dotted names are allowed: "kernels.0")."""
        self._parameters[name] = np.asarray(value)

    def register_module(self, name: str, module: "Module | None") -> None:
        """Add a child whose state appears under `name.`; None registers nothing."""
        if module is not None:
            self._modules[name] = module

    def parameter(self, name: str) -> np.ndarray:
        return self._parameters[name]

    def children(self) -> Iterator[Tuple[str, "Module"]]:
        return iter(self._modules.items())

    # --- state --------------------------------------------------------------------------------
    def state_dict(self, prefix: str = "") -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        for name, value in self._parameters.items():
            out[prefix + name] = value
        for name, child in self._modules.items():
            out.update(child.state_dict(prefix + name + "."))
        return out

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy `state` into this module, casting to each parameter's dtype.

        Raises KeyError for missing or unexpected keys (when strict) and ValueError for a
        shape mismatch, naming the key, the expected and the received shape.
        """
        own = self.state_dict()
        if strict:
            missing = [k for k in own if k not in state]
            unexpected = [k for k in state if k not in own]
            if missing or unexpected:
                raise KeyError(
                    f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                    f"unexpected keys {unexpected}"
                )
        for key, current in own.items():
            if key not in state:
                continue
            value = as_numpy(state[key])
            if value.shape != current.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: '{key}' expected shape "
                    f"{tuple(current.shape)}, got {tuple(value.shape)}"
                )
            self._assign(key, value.astype(current.dtype, copy=True))

    def _assign(self, key: str, value: np.ndarray) -> None:
        if key in self._parameters:
            self._parameters[key] = value
            return
        head, _, rest = key.partition(".")
        # A child registered under a dotted name ("_mlp.0") is matched by the longest prefix.
        for name, child in self._modules.items():
            if key.startswith(name + "."):
                child._assign(key[len(name) + 1 :], value)
                return
        raise KeyError(f"{type(self).__name__}: no parameter '{key}' (head '{head}', rest '{rest}')")

    def parameters(self) -> Iterator[np.ndarray]:
        seen = set()
        for value in self.state_dict().values():
            if id(value) not in seen:
                seen.add(id(value))
                yield value

    # --- calling ------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, grad_output: Any) -> Tuple[Any, Dict[str, np.ndarray]]:
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.state_dict().items())
        return f"{type(self).__name__}({shapes})"


def prefixed(grads: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    """A child's parameter gradients re-keyed under its state_dict prefix."""
    return {prefix + k: v for k, v in grads.items()}
