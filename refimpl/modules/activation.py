"""Activations: the elementwise functions refimpl modules accept, and SwishLayerNorm.

Mirrors `torchrec.modules.activation`. An elementwise activation carries its derivative so
that every module using it can write its backward with the chain rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


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
