"""Position-weighted features: drop-ins for `torchrec.modules.feature_processor`.

A position weight multiplies each id by p_f[j], j its 0-based position inside its bag, through
the weights that a weighted EmbeddingBagCollection then uses: w_j = p_f[j - offsets[b]]. The
gather runs on the `accel.kernels.position_weights` kernel, differentiable w.r.t. p_f.

As in TorchRec, PositionWeightedModule writes the weighted features into the dict it is given
and returns that same dict (position_weighted_module_update_features); positions at or past a
feature's max length raise an IndexError naming the feature instead of reading out of bounds.
"""

from __future__ import annotations

import abc
import operator
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from accel.kernels import position_weights as position_kernels
from accel.sparse import JaggedTensor, KeyedJaggedTensor
from accel.validate import MissingKeyError

__all__ = [
    "BaseFeatureProcessor",
    "BaseGroupedFeatureProcessor",
    "PositionWeightedModule",
    "PositionWeightedProcessor",
    "offsets_to_range_traceble",
    "position_weighted_module_update_features",
]

DeviceLike = Optional[Union[str, torch.device]]


class BaseFeatureProcessor(nn.Module):
    """Maps a dict of per-feature JaggedTensors to a dict of JaggedTensors (`forward` to implement)."""

    @abc.abstractmethod
    def forward(self, features: Dict[str, JaggedTensor]) -> Dict[str, JaggedTensor]:
        pass


class BaseGroupedFeatureProcessor(nn.Module):
    """Maps a KeyedJaggedTensor to a KeyedJaggedTensor (`forward` to implement)."""

    @abc.abstractmethod
    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        pass


def position_weighted_module_update_features(
    features: Dict[str, JaggedTensor], weighted_features: Dict[str, JaggedTensor]
) -> Dict[str, JaggedTensor]:
    """features <- features updated with weighted_features; returns the same (mutated) dict, as TorchRec."""
    features.update(weighted_features)
    return features


def offsets_to_range_traceble(offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """pos[j] = j - offsets[b] for offsets[b] <= j < offsets[b + 1] (the last bag ends at numel(values)).

    Shapes: offsets (B + 1,) or (B,) starting at 0, values (n,) -> pos (n,) int64.
    Offsets that do not start at 0, decrease or pass numel(values) are a ValueError (TorchRec
    leaves such positions uninitialised).
    """
    n = values.numel()
    offsets = offsets.long()
    if offsets.dim() != 1:
        raise ValueError(f"offsets_to_range_traceble: offsets expected a 1-D tensor, got shape {tuple(offsets.shape)}")
    bounds = torch.cat([offsets, offsets.new_tensor([n])])
    if offsets.numel() == 0:
        if n:
            raise ValueError(f"offsets_to_range_traceble: offsets expected at least one bag for {n} values, got none")
        return offsets.new_empty(0)
    if int(offsets[0]) != 0 or bool((bounds[1:] < bounds[:-1]).any()):
        raise ValueError(
            "offsets_to_range_traceble: offsets expected to start at 0 and not decrease up to numel(values) = "
            f"{n}, got {offsets.tolist()}"
        )
    lengths = bounds[1:] - bounds[:-1]
    bag = torch.repeat_interleave(torch.arange(offsets.numel(), device=offsets.device), lengths, output_size=n)
    return torch.arange(n, device=offsets.device) - offsets[bag]


def _check_lengths(max_feature_lengths: Any, minimum: int, who: str) -> Dict[str, int]:
    if not isinstance(max_feature_lengths, dict):
        raise TypeError(
            f"{who}: max_feature_lengths expected a dict feature -> int, got {type(max_feature_lengths).__name__}"
        )
    for key, length in max_feature_lengths.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"{who}: max_feature_lengths expected feature names without '.', got {key!r}")
        try:
            length = operator.index(length)
        except TypeError:
            raise TypeError(f"{who}: max_feature_lengths['{key}'] expected an int, got {length!r}") from None
        if length < minimum:
            raise ValueError(f"{who}: max_feature_lengths['{key}'] expected an int >= {minimum}, got {length}")
    return max_feature_lengths


def _position_weights(max_feature_lengths: Dict[str, int], device: DeviceLike) -> nn.ParameterDict:
    """p_f = 1 (float32, length max_feature_lengths[f]); no RNG."""
    return nn.ParameterDict(
        {key: nn.Parameter(torch.ones(int(length), device=device)) for key, length in max_feature_lengths.items()}
    )


def _weights_for(who: str, feature: str, offsets: torch.Tensor, p: torch.Tensor, num_values: int) -> torch.Tensor:
    """w_j = p[j - offsets[b]] on the kernel; a position >= len(p) is an IndexError naming the feature."""
    try:
        return position_kernels.position_weighted(offsets.long(), p, num_values)
    except IndexError as error:
        raise IndexError(f"{who}: feature '{feature}' (max length {p.shape[0]}): {error}") from error


class PositionWeightedModule(BaseFeatureProcessor):
    """features[f].weights <- p_f[pos], pos[j] = j's position in its bag, for every f in max_feature_lengths.

    Shapes: position_weights.f (max_feature_lengths[f],) float32, filled with 1 (no RNG).
    Returns the input dict itself, updated (as TorchRec); other features are left untouched.
    """

    def __init__(self, max_feature_lengths: Dict[str, int], device: DeviceLike = None) -> None:
        super().__init__()
        self.max_feature_lengths = _check_lengths(max_feature_lengths, 0, "PositionWeightedModule")
        self.position_weights = _position_weights(max_feature_lengths, device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """p_f = 1 for every feature."""
        for p in self.position_weights.values():
            p.fill_(1.0)

    def forward(self, features: Dict[str, JaggedTensor]) -> Dict[str, JaggedTensor]:
        who = "PositionWeightedModule"
        weighted: Dict[str, JaggedTensor] = {}
        for key, p in self.position_weights.items():
            if key not in features:
                raise MissingKeyError(
                    f"{who}: features expected key '{key}' (it has position weights) among {list(features)}, "
                    "got no such key"
                )
            jt = features[key]
            values, lengths, offsets = jt.values(), jt.lengths(), jt.offsets()
            weights = _weights_for(who, key, offsets, p, values.shape[0])
            weighted[key] = JaggedTensor(values=values, weights=weights, lengths=lengths, offsets=offsets)
        return position_weighted_module_update_features(features, weighted)


class PositionWeightedProcessor(BaseGroupedFeatureProcessor):
    """KJT -> the KJT of its position-weighted keys, weights_f = p_f[pos_f].

    pos_f is each id's position in its bag, or, when the input KJT carries weights, those
    weights read as positions (TorchRec's row-wise-sharding convention). Keys without position
    weights are dropped when some key has them; with none, the input is returned unchanged.
    Shapes: position_weights.f (max_feature_lengths[f],) float32 filled with 1; every length >= 1.
    """

    def __init__(self, max_feature_lengths: Dict[str, int], device: DeviceLike = None) -> None:
        super().__init__()
        self.max_feature_lengths = _check_lengths(max_feature_lengths, 1, "PositionWeightedProcessor")
        self.position_weights = _position_weights(max_feature_lengths, device)

    def forward(self, features: Any) -> Any:
        who = "PositionWeightedProcessor"
        kjt = KeyedJaggedTensor.from_any(features)
        keys = kjt.keys()
        chosen = [f for f, key in enumerate(keys) if key in self.position_weights]
        if not chosen:
            return features
        batch, opk = kjt.stride(), kjt.offset_per_key()
        offsets, positions = kjt.offsets(), kjt.weights_or_none()
        weights: List[torch.Tensor] = []
        for f in chosen:
            key, p = keys[f], self.position_weights[keys[f]]
            if positions is None:
                local = offsets[f * batch : (f + 1) * batch + 1] - offsets[f * batch]
                weights.append(_weights_for(who, key, local, p, opk[f + 1] - opk[f]))
            else:
                weights.append(self._given_positions(key, positions[opk[f] : opk[f + 1]], p))
        weights_cat = torch.cat(weights) if weights else None
        if len(chosen) == len(keys):
            return KeyedJaggedTensor._trusted(
                keys, kjt.values(), weights_cat, kjt.lengths_or_none(), kjt.offsets_or_none(), batch
            )
        lengths, values = kjt.lengths(), kjt.values()
        return KeyedJaggedTensor._trusted(
            [keys[f] for f in chosen],
            torch.cat([values[opk[f] : opk[f + 1]] for f in chosen]),
            weights_cat,
            torch.cat([lengths[f * batch : (f + 1) * batch] for f in chosen]),
            None,
            batch,
        ).sync()

    @staticmethod
    def _given_positions(key: str, positions: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """w_j = p[int(positions[j])], each position checked against [0, len(p))."""
        index = positions.long()
        outside = (index < 0) | (index >= p.shape[0])
        if bool(outside.any()):
            j = int(outside.nonzero()[0, 0])
            raise IndexError(
                f"PositionWeightedProcessor: feature '{key}': positions (the input's weights) expected values in "
                f"[0, {p.shape[0]}), got {int(index[j])} at position {j}"
            )
        return p.index_select(0, index)
