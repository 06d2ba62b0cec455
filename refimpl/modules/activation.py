"""Activations: the elementwise functions refimpl modules accept, and SwishLayerNorm.

Mirrors `torchrec.modules.activation`. An elementwise activation carries its derivative so
that every module using it can write its backward with the chain rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from refimpl.base import Module
from refimpl.validate import real_array


@dataclass(frozen=True)
class ElementwiseActivation:
    """g(z) applied elementwise, with g'(z) for the backward pass."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.fn(z)


def _relu(z: np.ndarray) -> np.ndarray:
    """g(z) = max(z, 0)"""
    return np.maximum(z, 0)


def _relu_derivative(z: np.ndarray) -> np.ndarray:
    """g'(z) = 1 if z > 0 else 0 (torch's convention at z = 0)."""
    return (z > 0).astype(z.dtype)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """sigma(z) = 1 / (1 + exp(-z)), evaluated without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def _sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    """sigma'(z) = sigma(z) (1 - sigma(z))"""
    s = _sigmoid(z)
    return s * (1 - s)


def _identity(z: np.ndarray) -> np.ndarray:
    return z


def _identity_derivative(z: np.ndarray) -> np.ndarray:
    return np.ones_like(z)


relu = ElementwiseActivation("relu", _relu, _relu_derivative)
sigmoid = ElementwiseActivation("sigmoid", _sigmoid, _sigmoid_derivative)
identity = ElementwiseActivation("identity", _identity, _identity_derivative)


def _normalized_axes(x: np.ndarray, gamma: np.ndarray) -> tuple:
    """The trailing len(gamma.shape) axes of x, after checking they equal gamma's shape."""
    k = gamma.ndim
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != tuple(gamma.shape):
        raise ValueError(
            f"SwishLayerNorm: input expected trailing shape {tuple(gamma.shape)}, "
            f"got input of shape {tuple(x.shape)}"
        )
    return tuple(range(x.ndim - k, x.ndim))


def _layer_norm_hat(x: np.ndarray, axes: tuple, eps: float) -> tuple:
    """x_hat = (x - mu) / sqrt(var + eps), biased var over `axes`; also returns 1/sqrt(var + eps)."""
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    return (x - mu) * inv_std, inv_std


def swish_layernorm(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    """Y = X * sigmoid(LayerNorm(X)),  LayerNorm(X) = (X - mu) / sqrt(var + eps) * gamma + beta
    Shapes: x (*, d...); gamma, beta (d...) -> (*, d...); mu and the biased var over the trailing dims d....
    Source: page, torchrec.modules.activation.SwishLayerNorm; semantics.md section 2."""
    axes = _normalized_axes(x, gamma)
    x_hat, _ = _layer_norm_hat(x, axes, eps)
    return x * _sigmoid(x_hat * gamma + beta)


def swish_layernorm_backward(
    grad_y: np.ndarray, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple:
    """dL/dX = g s + (1/sigma)(dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat)),
    dx_hat = g X s (1 - s) gamma,  dL/dgamma = sum_* g X s (1 - s) x_hat,  dL/dbeta = sum_* g X s (1 - s)
    Shapes: grad_y g and x (*, d...); gamma, beta (d...) -> ((*, d...), (d...), (d...));
    s = sigmoid(x_hat gamma + beta), means over the trailing dims d...."""
    axes = _normalized_axes(x, gamma)
    x_hat, inv_std = _layer_norm_hat(x, axes, eps)
    s = _sigmoid(x_hat * gamma + beta)
    grad_z = grad_y * x * s * (1 - s)
    leading = tuple(range(x.ndim - gamma.ndim))
    grad_gamma = (grad_z * x_hat).sum(axis=leading)
    grad_beta = grad_z.sum(axis=leading)
    grad_x_hat = grad_z * gamma
    grad_x_norm = inv_std * (
        grad_x_hat
        - grad_x_hat.mean(axis=axes, keepdims=True)
        - x_hat * (grad_x_hat * x_hat).mean(axis=axes, keepdims=True)
    )
    return grad_y * s + grad_x_norm, grad_gamma, grad_beta


def _input_dims(input_dims: Any) -> Tuple[int, ...]:
    dims = (input_dims,) if isinstance(input_dims, (int, np.integer)) else input_dims
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(
            f"SwishLayerNorm: input_dims expected an int or a list of ints, got {input_dims!r}"
        ) from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(
                f"SwishLayerNorm: input_dims expected positive ints, got {input_dims!r}"
            )
    if not dims:
        raise ValueError("SwishLayerNorm: input_dims expected at least one dimension, got []")
    return tuple(int(d) for d in dims)


class SwishLayerNorm(Module):
    """Y = X * sigmoid(LayerNorm(X)) over the trailing `input_dims` (see `swish_layernorm`).

    state_dict: `norm.0.weight` (gamma, init 1) and `norm.0.bias` (beta, init 0), both of shape
    `input_dims`; no randomness. Inputs are cast to the module's dtype.
    """

    eps = 1e-5

    def __init__(
        self, input_dims: Union[int, Sequence[int]], device: Any = None, *, dtype: Any = np.float64
    ) -> None:
        super().__init__(dtype)
        self.input_dims = _input_dims(input_dims)
        self.register_parameter("norm.0.weight", np.ones(self.input_dims, dtype=self.dtype))
        self.register_parameter("norm.0.bias", np.zeros(self.input_dims, dtype=self.dtype))
        self._x: Optional[np.ndarray] = None

    def forward(self, x: Any) -> np.ndarray:
        x = real_array(x, "SwishLayerNorm: input", self.dtype)
        y = swish_layernorm(x, self.parameter("norm.0.weight"), self.parameter("norm.0.bias"), self.eps)
        self._x = x
        return y

    def backward(self, grad_output: Any) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        if self._x is None:
            raise RuntimeError("SwishLayerNorm.backward called before forward")
        g = real_array(grad_output, "SwishLayerNorm: grad_output", self.dtype)
        if g.shape != self._x.shape:
            raise ValueError(
                f"SwishLayerNorm: grad_output expected shape {self._x.shape}, got {g.shape}"
            )
        grad_x, grad_gamma, grad_beta = swish_layernorm_backward(
            g, self._x, self.parameter("norm.0.weight"), self.parameter("norm.0.bias"), self.eps
        )
        return grad_x, {"norm.0.weight": grad_gamma, "norm.0.bias": grad_beta}
