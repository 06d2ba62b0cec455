"""NumPy counterparts of `torchrec.modules.utils`: module-or-factory resolution, output-size
probing, the xavier initialisers with TorchRec's fan rules, and the per-feature JaggedTensor
outputs of sequence embeddings (construct_jagged_tensors).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from refimpl.base import Module, as_numpy
from refimpl.nn import Linear
from refimpl.sparse import JaggedTensor


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


# --- jagged outputs of sequence embeddings -----------------------------------------------------------
def _name_groups(
    embedding_names: Sequence[str], features_to_permute_indices: Optional[Dict[str, List[int]]], who: str
) -> Dict[str, List[int]]:
    """name -> the key positions carrying it (first-occurrence order), reordered by
    features_to_permute_indices[name] (k_i <- k_{perm[i]}) when given."""
    groups: Dict[str, List[int]] = {}
    for k, name in enumerate(embedding_names):
        groups.setdefault(name, []).append(k)
    for name, perm in (features_to_permute_indices or {}).items():
        if name not in groups:
            continue
        indices = groups[name]
        if sorted(int(i) for i in perm) != list(range(len(indices))):
            raise ValueError(
                f"{who}: features_to_permute_indices['{name}'] expected a permutation of "
                f"{list(range(len(indices)))}, got {list(perm)}"
            )
        groups[name] = [indices[int(i)] for i in perm]
    return groups


def jagged_outputs(
    embeddings: np.ndarray,
    lengths: np.ndarray,
    values: Optional[np.ndarray],
    embedding_names: Sequence[str],
    need_indices: bool,
    features_to_permute_indices: Optional[Dict[str, List[int]]],
    who: str,
) -> Dict[str, JaggedTensor]:
    """out[name] = JaggedTensor(values = [E_{k_1} | E_{k_2} | ...], lengths = lengths[k_1], weights = ids_{k_1})
    with E_k the rows of key k (embeddings split by L_k = sum_b lengths[k, b]) and k_1, k_2, ... the
    keys named `name` (several for column-wise shards, joined along dimension 1); weights only when
    need_indices.
    Shapes: embeddings (sum_k L_k, D); lengths (F, B); values (sum_k L_k,) ids -> {name: JaggedTensor}.
    Source: semantics.md 10."""
    F = lengths.shape[0]
    if len(embedding_names) != F:
        raise ValueError(f"{who}: embedding_names expected {F} names (one per key), got {len(embedding_names)}")
    L = lengths.sum(axis=1, dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(L)]).astype(np.int64)
    if embeddings.ndim != 2 or embeddings.shape[0] != bounds[-1]:
        raise ValueError(
            f"{who}: embeddings expected shape ({bounds[-1]}, D) (one row per id), got {embeddings.shape}"
        )
    if need_indices and (values is None or values.shape[0] != bounds[-1]):
        got = None if values is None else values.shape
        raise ValueError(f"{who}: values expected shape ({bounds[-1]},) (one id per row), got {got}")
    out: Dict[str, JaggedTensor] = {}
    for name, keys in _name_groups(embedding_names, features_to_permute_indices, who).items():
        first = keys[0]
        for k in keys[1:]:
            if L[k] != L[first]:
                raise ValueError(
                    f"{who}: embedding '{name}' expected its keys to hold equally many ids to join them, "
                    f"got {L[first]} (key {first}) and {L[k]} (key {k})"
                )
        E = np.concatenate([embeddings[bounds[k] : bounds[k + 1]] for k in keys], axis=1)
        ids = values[bounds[first] : bounds[first + 1]] if need_indices else None
        out[name] = JaggedTensor(E, weights=ids, lengths=lengths[first])
    return out


def _gathered(embeddings: np.ndarray, reverse_indices: Any, who: str) -> np.ndarray:
    """embeddings[reverse_indices] (rows), range-checked."""
    idx = as_numpy(reverse_indices).astype(np.int64).reshape(-1)
    outside = np.flatnonzero((idx < 0) | (idx >= embeddings.shape[0]))
    if outside.size:
        j = int(outside[0])
        raise IndexError(
            f"{who}: reverse_indices expected rows in [0, {embeddings.shape[0]}), got {idx[j]} at position {j}"
        )
    return embeddings[idx]


def construct_jagged_tensors(
    embeddings: Any,
    features: Any,
    embedding_names: List[str],
    need_indices: bool = False,
    features_to_permute_indices: Optional[Dict[str, List[int]]] = None,
    original_features: Any = None,
    reverse_indices: Any = None,
    seq_vbe_ctx: Any = None,
    use_gather_select: bool = False,
) -> Dict[str, JaggedTensor]:
    """jagged_outputs(embeddings[reverse_indices] if given, lengths of features as (F, B), ids of features, ...)
    with features <- original_features when given.
    Shapes: embeddings (n, D) (rows in the KJT's value order); features a KJT with F keys and n ids.
    Source: semantics.md 10; use_gather_select picks TorchRec's kernel, not the result, so it is ignored;
    variable batch size per key (seq_vbe_ctx) is not supported."""
    who = "construct_jagged_tensors"
    if seq_vbe_ctx is not None:
        raise NotImplementedError(f"{who}: variable batch size per key is not supported; seq_vbe_ctx expected None")
    if original_features is not None:
        features = original_features
    embeddings = as_numpy(embeddings)
    if reverse_indices is not None:
        embeddings = _gathered(embeddings, reverse_indices, who)
    F = len(features.keys())
    lengths = as_numpy(features.lengths()).reshape(F, int(features.stride()) if F else 0)
    values = as_numpy(features.values()) if need_indices else None
    return jagged_outputs(
        embeddings, lengths, values, embedding_names, need_indices, features_to_permute_indices, who
    )


def construct_jagged_tensors_inference(
    embeddings: Any,
    lengths: Any,
    values: Any,
    embedding_names: List[str],
    need_indices: bool = False,
    features_to_permute_indices: Optional[Dict[str, List[int]]] = None,
    reverse_indices: Any = None,
    remove_padding: bool = False,
) -> Dict[str, JaggedTensor]:
    """jagged_outputs(embeddings', lengths, values, ...) with embeddings' = embeddings[reverse_indices]
    if given, else embeddings[: sum(lengths)] when remove_padding (padded rows dropped), else embeddings.
    Shapes: embeddings (n, D); lengths (F, B); values (n,) ids.
    Source: semantics.md 10."""
    who = "construct_jagged_tensors_inference"
    embeddings = as_numpy(embeddings)
    lengths = as_numpy(lengths)
    if lengths.ndim != 2:
        raise ValueError(f"{who}: lengths expected a 2-D (F, B) array, got shape {lengths.shape}")
    if reverse_indices is not None:
        embeddings = _gathered(embeddings, reverse_indices, who)
    elif remove_padding:
        embeddings = embeddings[: int(lengths.sum())]
    values = None if values is None else as_numpy(values)
    return jagged_outputs(
        embeddings, lengths, values, embedding_names, need_indices, features_to_permute_indices, who
    )
