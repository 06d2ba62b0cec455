"""NumPy counterparts of `torchrec.modules.utils`: module-or-factory resolution, output-size
probing, and the xavier initialisers with TorchRec's fan rules.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Tuple, Union

import numpy as np

from refimpl.base import Module


def _fans(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """fan_in = shape[1] * rf, fan_out = shape[0] * rf, rf = prod(shape[2:])
    Shapes: at least 2 dims.
    Source: semantics.md section 0 (torch.nn.init's fan rule)."""
    if len(shape) < 2:
        raise ValueError(f"xavier init: shape expected at least 2 dimensions, got {shape}")
    receptive_field = int(np.prod(shape[2:], dtype=np.int64))
    return shape[1] * receptive_field, shape[0] * receptive_field


def xavier_normal(
    shape: Sequence[int], rng: np.random.Generator, dtype: Any = np.float64
) -> np.ndarray:
    """W ~ N(0, std^2), std = sqrt(2 / (fan_in + fan_out))
    Shapes: shape (a, b, c...) -> array of that shape; fan_in = b*prod(c...), fan_out = a*prod(c...).
    Source: Glorot & Bengio 2010; TorchRec's xavier_normal_ (semantics.md section 0).

    One draw of prod(shape) normals in row-major order, then a cast to `dtype`.
    """
    shape = tuple(int(d) for d in shape)
    fan_in, fan_out = _fans(shape)
    std = math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out > 0 else 0.0
    return (std * rng.standard_normal(shape)).astype(dtype)


def xavier_uniform(
    shape: Sequence[int], rng: np.random.Generator, dtype: Any = np.float64
) -> np.ndarray:
    """W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    Shapes: shape (a, b, c...) -> array of that shape; fans as in `xavier_normal`.
    Source: Glorot & Bengio 2010; torch.nn.init.xavier_uniform_ (gain 1)."""
    shape = tuple(int(d) for d in shape)
    fan_in, fan_out = _fans(shape)
    bound = math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out > 0 else 0.0
    return rng.uniform(-bound, bound, shape).astype(dtype)
