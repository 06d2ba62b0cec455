"""NumPy counterparts of `torchrec.modules.utils`: module-or-factory resolution, output-size
probing, and the xavier initialisers with TorchRec's fan rules.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Tuple, Union

import numpy as np

from refimpl.base import Module
from refimpl.nn import Linear


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


def extract_module_or_tensor_callable(
    module_or_callable: Union[Callable[[], Module], Module, Callable[[np.ndarray], np.ndarray]],
) -> Union[Module, Callable[[np.ndarray], np.ndarray]]:
    """module_or_callable() if that returns a Module, else module_or_callable itself when it needs an input
    Shapes: none.
    Source: semantics.md section 10 (TorchRec's rule: call with no arguments; a TypeError about a
    missing required positional argument means the callable takes a tensor and is kept)."""
    try:
        result = module_or_callable()
    except TypeError as error:
        if "required positional argument" in str(error):
            return module_or_callable
        raise
    if not isinstance(result, Module):
        raise ValueError(
            "module_or_callable: expected a callable that takes no input and returns a refimpl Module, "
            f"got one returning {type(result).__name__}"
        )
    return result


def get_module_output_dimension(
    module: Union[Callable[[np.ndarray], np.ndarray], Module], in_features: int
) -> int:
    """out = module(zeros(1, in_features)).shape[-1]
    Shapes: probe (1, in_features) in the module's dtype (float64 for a plain callable) -> int.
    Source: semantics.md section 10."""
    dtype = module.dtype if isinstance(module, Module) else np.float64
    return int(np.asarray(module(np.zeros((1, in_features), dtype=dtype))).shape[-1])


def check_module_output_dimension(
    module: Union[Sequence[Module], Module], in_features: int, out_features: int
) -> bool:
    """all(get_module_output_dimension(m, in_features) == out_features for m in module), lists recursing
    Shapes: none.
    Source: semantics.md section 10."""
    if isinstance(module, (list, tuple)):
        return all(check_module_output_dimension(m, in_features, out_features) for m in module)
    return get_module_output_dimension(module, in_features) == out_features


def init_mlp_weights_xavier_uniform(m: Module, rng: np.random.Generator) -> None:
    """W ~ U(-sqrt(6 / (fan_in + fan_out)), +sqrt(6 / (fan_in + fan_out))),  b = 0, for a Linear m
    Shapes: W (out, in), b (out,); in place.
    Source: semantics.md section 10. As TorchRec's, it acts on `m` alone and leaves any module that
    is not a Linear unchanged; a Linear without bias is rejected, as TorchRec's raises there too."""
    if not isinstance(m, Linear):
        return
    if not m.has_bias:
        raise ValueError(
            "init_mlp_weights_xavier_uniform: m expected a Linear with a bias, got one with bias=False"
        )
    weight = m.parameter("weight")
    m.register_parameter("weight", xavier_uniform(weight.shape, rng, m.dtype))
    m.register_parameter("bias", np.zeros_like(m.parameter("bias")))
