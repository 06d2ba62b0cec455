"""Position weights for id-list features: `torchrec.modules.feature_processor` in NumPy.

Value j of a bag starting at offsets[b] sits at position pos_j = j - offsets[b] in its bag; a
position-weighted feature f gets the per-value weights w_j = p_f[pos_j] from a learnt vector p_f of
length max_feature_lengths[f] (initialised to ones), which a weighted EmbeddingBagCollection then
uses as per-sample weights.

As in TorchRec, PositionWeightedModule writes the weighted JaggedTensors into the dict it is given
and returns that same dict; PositionWeightedProcessor returns a KeyedJaggedTensor holding only the
position-weighted keys (or its input unchanged when it has none). recspec's departures: a position
at or past a feature's max length raises an IndexError naming the feature (TorchRec fails inside
its gather), and a non-positive max length for PositionWeightedProcessor raises a ValueError
naming the feature (TorchRec: "No active exception to reraise").
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from refimpl.base import Module, as_numpy
from refimpl.modules.embedding_modules import as_keyed_jagged_tensor
from refimpl.sparse import JaggedTensor, KeyedJaggedTensor
from refimpl.validate import MissingKeyError, is_integer_dtype

__all__ = [
    "BaseFeatureProcessor",
    "BaseGroupedFeatureProcessor",
    "PositionWeightedModule",
    "PositionWeightedProcessor",
    "offsets_to_range_traceble",
    "position_weighted_module_update_features",
    "position_weights",
    "position_weights_backward",
]

Array = np.ndarray


# --- formulas --------------------------------------------------------------------------------------
def offsets_to_range_traceble(offsets: Any, values: Any) -> Array:
    """pos_j = j - offsets[b] for offsets[b] <= j < offsets[b + 1], the last segment ending at numel(values)

    Shapes: offsets (K,) starting at 0; values any shape with n = numel(values) -> pos int64 (n,).
    Source: semantics.md 8 (FBGEMM's offsets_range; recspec rejects offsets that do not start at 0,
    where TorchRec leaves the leading positions uninitialised).
    """
    offsets = as_numpy(offsets)
    n = int(np.size(as_numpy(values)))
    _check_offsets(offsets, n)
    K = offsets.shape[0]
    pos = np.empty(n, dtype=np.int64)
    for b in range(K):
        start = int(offsets[b])
        end = int(offsets[b + 1]) if b + 1 < K else n
        pos[start:end] = np.arange(end - start)
    return pos


def position_weights(p: Array, pos: Array) -> Array:
    """w_j = p[pos_j]
    Shapes: p (L,); pos (n,) with 0 <= pos_j < L -> w (n,)."""
    return p[pos]


def position_weights_backward(grad_w: Array, pos: Array, L: int) -> Array:
    """dL/dp[k] = sum_{j : pos_j = k} dL/dw_j
    Shapes: grad_w (n,); pos (n,) -> (L,)."""
    grad_p = np.zeros(L, dtype=grad_w.dtype)
    np.add.at(grad_p, pos, grad_w)
    return grad_p


def position_weighted_module_update_features(
    features: Dict[str, Any], weighted_features: Mapping[str, Any]
) -> Dict[str, Any]:
    """features <- features updated with weighted_features; returns the same dict object (as TorchRec)."""
    features.update(weighted_features)
    return features


# --- checks ----------------------------------------------------------------------------------------
def _check_offsets(offsets: Array, n: int) -> None:
    name = "offsets_to_range_traceble"
    if offsets.ndim != 1:
        raise ValueError(f"{name}: offsets expected a 1-D array, got shape {offsets.shape}")
    if offsets.size and not is_integer_dtype(offsets.dtype):
        raise TypeError(f"{name}: offsets expected an integer dtype, got {offsets.dtype}")
    if offsets.size == 0:
        if n:
            raise ValueError(f"{name}: offsets expected at least one entry for {n} values, got none")
        return
    if offsets[0] != 0:
        raise ValueError(f"{name}: offsets expected offsets[0] == 0, got {offsets[0]}")
    drops = np.flatnonzero(offsets[1:] < offsets[:-1])
    if drops.size:
        i = int(drops[0])
        raise ValueError(
            f"{name}: offsets expected non-decreasing entries, got offsets[{i + 1}] = {offsets[i + 1]} "
            f"< offsets[{i}] = {offsets[i]}"
        )
    if offsets[-1] > n:
        raise ValueError(f"{name}: offsets expected offsets[-1] <= numel(values) = {n}, got {offsets[-1]}")


def _check_positions(pos: Array, L: int, feature: str, who: str) -> None:
    outside = np.flatnonzero((pos < 0) | (pos >= L))
    if outside.size:
        j = int(outside[0])
        raise IndexError(
            f"{who}: feature '{feature}': positions expected values in [0, {L}) (its max feature length), "
            f"got position {pos[j]} at value {j} of the feature"
        )


def _check_max_lengths(max_feature_lengths: Any, minimum: int, who: str) -> Dict[str, int]:
    if not isinstance(max_feature_lengths, Mapping):
        raise TypeError(
            f"{who}: max_feature_lengths expected a dict feature -> int, got {type(max_feature_lengths).__name__}"
        )
    checked = {}
    for feature, length in max_feature_lengths.items():
        if not isinstance(feature, str):
            raise TypeError(f"{who}: max_feature_lengths expected str keys, got {feature!r}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < minimum:
            raise ValueError(
                f"{who}: max_feature_lengths['{feature}'] expected an int >= {minimum}, got {length!r}"
            )
        checked[feature] = int(length)
    return checked


def _as_jagged(jt: Any, feature: str, who: str) -> JaggedTensor:
    if isinstance(jt, JaggedTensor):
        return jt
    for accessor in ("values", "lengths", "offsets"):
        if not callable(getattr(jt, accessor, None)):
            raise TypeError(
                f"{who}: features['{feature}'] expected a JaggedTensor, got {type(jt).__name__} without {accessor}()"
            )
    weights = jt.weights_or_none() if callable(getattr(jt, "weights_or_none", None)) else None
    return JaggedTensor(jt.values(), weights=weights, lengths=jt.lengths(), offsets=jt.offsets())


# --- modules ---------------------------------------------------------------------------------------
class BaseFeatureProcessor(Module):
    """A module from a dict feature -> JaggedTensor to the same (forward left to subclasses)."""

    def forward(self, features: Dict[str, JaggedTensor]) -> Dict[str, JaggedTensor]:
        raise NotImplementedError(f"{type(self).__name__}.forward: a feature processor must define forward")


class BaseGroupedFeatureProcessor(Module):
    """A module from a KeyedJaggedTensor to a KeyedJaggedTensor (forward left to subclasses)."""

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        raise NotImplementedError(f"{type(self).__name__}.forward: a feature processor must define forward")


class _PositionWeights:
    """The learnt vectors p_f, `position_weights.<f>` of length max_feature_lengths[f], ones at start."""

    def _init_weights(self, max_feature_lengths: Dict[str, int]) -> None:
        self.max_feature_lengths = max_feature_lengths
        self._positions: Optional[Dict[str, Array]] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """p_f <- 1 for every feature."""
        for feature, L in self.max_feature_lengths.items():
            self.register_parameter(f"position_weights.{feature}", np.ones(L, dtype=self.dtype))

    def _weights_for(self, feature: str, pos: Array, who: str) -> Array:
        p = self.parameter(f"position_weights.{feature}")
        _check_positions(pos, p.shape[0], feature, who)
        return position_weights(p, pos)

    def _backward(self, grads: Mapping[str, Array]) -> Tuple[None, Dict[str, Array]]:
        grad_params = {
            f"position_weights.{f}": np.zeros(L, dtype=self.dtype) for f, L in self.max_feature_lengths.items()
        }
        for feature, grad_w in grads.items():
            pos = self._positions[feature]
            grad_params[f"position_weights.{feature}"] = position_weights_backward(
                grad_w, pos, self.max_feature_lengths[feature]
            )
        return None, grad_params


class PositionWeightedModule(_PositionWeights, BaseFeatureProcessor):
    """features[f] <- JaggedTensor(values_f, lengths_f, weights = p_f[pos]) for every f in max_feature_lengths

    pos = offsets_to_range_traceble(offsets_f, values_f); existing weights are replaced; other
    keys are left as they are. Returns the input dict itself, updated.
    State: `position_weights.<f>` (max_feature_lengths[f],), ones.
    """

    def __init__(
        self, max_feature_lengths: Dict[str, int], device: Any = None, *, dtype: Any = np.float64
    ) -> None:
        super().__init__(dtype)
        self._init_weights(_check_max_lengths(max_feature_lengths, 0, "PositionWeightedModule"))

    def forward(self, features: Dict[str, Any]) -> Dict[str, Any]:
        who = "PositionWeightedModule"
        if not isinstance(features, dict):
            raise TypeError(f"{who}: features expected a dict feature -> JaggedTensor, got {type(features).__name__}")
        positions, weighted = {}, {}
        for feature in self.max_feature_lengths:
            if feature not in features:
                raise MissingKeyError(
                    f"{who}: features expected key '{feature}' (a position-weighted feature), got keys {list(features)}"
                )
            jt = _as_jagged(features[feature], feature, who)
            pos = offsets_to_range_traceble(jt.offsets(), jt.values())
            w = self._weights_for(feature, pos, who)
            weighted[feature] = JaggedTensor(jt.values(), weights=w, lengths=jt.lengths(), offsets=jt.offsets())
            positions[feature] = pos
        self._positions = positions
        return position_weighted_module_update_features(features, weighted)

    def backward(self, grad_output: Mapping[str, Any]) -> Tuple[None, Dict[str, Array]]:
        """(None: ids have no gradient; {`position_weights.<f>`: dL/dp_f}).

        grad_output: feature -> dL/d weights of its output JaggedTensor (n_f,); features left out
        contribute nothing."""
        who = "PositionWeightedModule.backward"
        if self._positions is None:
            raise RuntimeError(f"{who}: call forward first")
        if not isinstance(grad_output, Mapping):
            raise TypeError(f"{who}: grad_output expected a dict feature -> array, got {type(grad_output).__name__}")
        grads = {}
        for feature, g in grad_output.items():
            if feature not in self._positions:
                raise MissingKeyError(
                    f"{who}: grad_output key expected one of {list(self._positions)}, got {feature!r}"
                )
            g = as_numpy(g).astype(self.dtype, copy=False)
            n = self._positions[feature].shape[0]
            if g.shape != (n,):
                raise ValueError(f"{who}: grad_output['{feature}'] expected shape ({n},), got {g.shape}")
            grads[feature] = g
        return self._backward(grads)


class PositionWeightedProcessor(_PositionWeights, BaseGroupedFeatureProcessor):
    """out = the position-weighted keys of features (input order) with weights_j = p_f[pos_j]

    pos_j = the value's position in its bag, or, when the KJT has weights, those weights truncated
    to integers (row-wise sharding passes positions that way). No position-weighted key: the input
    is returned unchanged. Every key position-weighted: the same keys, values and lengths.
    Otherwise the other keys are dropped. State: `position_weights.<f>` (length,), ones.
    """

    def __init__(
        self, max_feature_lengths: Dict[str, int], device: Any = None, *, dtype: Any = np.float64
    ) -> None:
        super().__init__(dtype)
        self._init_weights(_check_max_lengths(max_feature_lengths, 1, "PositionWeightedProcessor"))

    def forward(self, features: Any) -> Any:
        who = "PositionWeightedProcessor"
        keys = list(features.keys()) if callable(getattr(features, "keys", None)) else None
        if keys is not None and not any(key in self.max_feature_lengths for key in keys):
            self._positions, self._sizes = {}, []
            return features
        kjt = as_keyed_jagged_tensor(features, who)
        keys = kjt.keys()
        chosen = [f for f, key in enumerate(keys) if key in self.max_feature_lengths]
        sub = kjt if len(chosen) == len(keys) else kjt.permute(chosen)
        given = sub.weights_or_none()
        if given is None:
            pos = offsets_to_range_traceble(sub.offsets(), sub.values())
        else:
            if given.size and not np.isfinite(given).all():
                raise ValueError(f"{who}: features weights expected finite positions, got non-finite values")
            pos = given.astype(np.int64)  # truncation toward zero, as torch's .long()
        opk = sub.offset_per_key()
        positions, weights = {}, []
        for f, key in enumerate(sub.keys()):
            positions[key] = pos[opk[f] : opk[f + 1]]
            weights.append(self._weights_for(key, positions[key], who))
        self._positions = positions
        self._sizes = [opk[f + 1] - opk[f] for f in range(len(opk) - 1)]
        out_weights = np.concatenate(weights) if weights else np.empty(0, dtype=self.dtype)
        return KeyedJaggedTensor(
            sub.keys(), sub.values(), weights=out_weights, lengths=sub.lengths(), stride=sub.stride()
        ).sync()

    def backward(self, grad_output: Any) -> Tuple[None, Dict[str, Array]]:
        """(None: ids and incoming positions have no gradient; {`position_weights.<f>`: dL/dp_f}).

        grad_output: dL/d weights of the output KJT, aligned with its values (n_out,)."""
        who = "PositionWeightedProcessor.backward"
        if self._positions is None:
            raise RuntimeError(f"{who}: call forward first")
        g = as_numpy(grad_output).astype(self.dtype, copy=False)
        n = sum(self._sizes)
        if g.shape != (n,):
            raise ValueError(f"{who}: grad_output expected shape ({n},) (one per output value), got {g.shape}")
        bounds = np.cumsum([0] + self._sizes)
        grads = {key: g[bounds[f] : bounds[f + 1]] for f, key in enumerate(self._positions)}
        return self._backward(grads)
