"""Linear: the NumPy counterpart of `torch.nn.Linear`, y = x W^T + b on any leading shape."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from refimpl.base import Module


def linear(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray]) -> np.ndarray:
    """y = x W^T + b
    Shapes: x (*, in); W (out, in); b (out,) or None -> (*, out).
    Source: torch.nn.Linear."""
    y = x @ W.T
    return y if b is None else y + b


def linear_backward(
    grad_y: np.ndarray, x: np.ndarray, W: np.ndarray, has_bias: bool
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """dL/dx = g W,  dL/dW = sum_* g^T x,  dL/db = sum_* g
    Shapes: grad_y g (*, out); x (*, in); W (out, in) -> ((*, in), (out, in), (out,) or None)."""
    g_rows = grad_y.reshape(-1, W.shape[0])
    x_rows = x.reshape(-1, W.shape[1])
    grad_x = grad_y @ W
    grad_W = g_rows.T @ x_rows
    grad_b = g_rows.sum(axis=0) if has_bias else None
    return grad_x, grad_W, grad_b


def check_size(name: str, value: Any) -> int:
    """`value` as an int after checking it is a non-negative integer; errors name `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a non-negative int, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value}")
    return int(value)


class Linear(Module):
    """y = x W^T + b with W (out_features, in_features), b (out_features,).

    state_dict: `weight` (out, in), `bias` (out,) when `bias`. Initialisation as torch's:
    weight then bias, each ~ U(-1/sqrt(in_features), 1/sqrt(in_features)), drawn from `rng`.
    Inputs are cast to the module's dtype, as `load_state_dict` casts parameters.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Any = np.float64,
        device: Any = None,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(dtype)
        self.in_features = check_size("in_features", in_features)
        self.out_features = check_size("out_features", out_features)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias: expected a bool, got {bias!r} ({type(bias).__name__})")
        rng = np.random.default_rng() if rng is None else rng
        # torch's kaiming_uniform_(a=sqrt(5)) bound reduces to 1/sqrt(fan_in); fan_in 0 gives 0.
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        shape = (self.out_features, self.in_features)
        self.register_parameter("weight", rng.uniform(-bound, bound, shape).astype(self.dtype))
        if bias:
            b = rng.uniform(-bound, bound, self.out_features)
            self.register_parameter("bias", b.astype(self.dtype))
        self._x: Optional[np.ndarray] = None

    @property
    def has_bias(self) -> bool:
        return "bias" in self._parameters

    def forward(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: input expected shape (*, {self.in_features}), got {tuple(x.shape)}"
            )
        self._x = x
        b = self.parameter("bias") if self.has_bias else None
        return linear(x, self.parameter("weight"), b)

    def backward(self, grad_output: Any) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        g = np.asarray(grad_output, dtype=self.dtype)
        expected = self._x.shape[:-1] + (self.out_features,)
        if g.shape != expected:
            raise ValueError(f"Linear: grad_output expected shape {expected}, got {g.shape}")
        grad_x, grad_W, grad_b = linear_backward(g, self._x, self.parameter("weight"), self.has_bias)
        grads = {"weight": grad_W}
        if grad_b is not None:
            grads["bias"] = grad_b
        return grad_x, grads
