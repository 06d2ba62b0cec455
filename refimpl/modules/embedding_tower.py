"""Embedding towers: `torchrec.modules.embedding_tower` in NumPy.

A tower is y = interaction(embedding(inputs)); a collection of towers feeds each tower the
features it takes (unweighted, weighted or both) and concatenates the outputs along dimension 1.
Backward runs the same chain in reverse: interaction, then embedding.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from refimpl.base import Module, as_numpy, prefixed
from refimpl.modules.embedding_modules import EmbeddingBagCollectionInterface, EmbeddingCollectionInterface

__all__ = ["EmbeddingTower", "EmbeddingTowerCollection", "tower_input_params"]

Array = np.ndarray


def tower_input_params(module: Any) -> Tuple[bool, bool]:
    """(takes features, takes weighted_features): EmbeddingCollection (True, False),
    EmbeddingBagCollection (not is_weighted, is_weighted), any other module (True, True).
    Source: semantics.md 13."""
    if isinstance(module, EmbeddingCollectionInterface):
        return True, False
    if isinstance(module, EmbeddingBagCollectionInterface):
        return not module.is_weighted(), module.is_weighted()
    return True, True


def _backward_of(module: Any, role: str) -> Callable[[Any], Tuple[Any, Dict[str, Array]]]:
    backward = getattr(module, "backward", None)
    if not isinstance(module, Module) or backward is None:
        raise TypeError(
            f"EmbeddingTower.backward: {role} expected a refimpl Module with backward, got {type(module).__name__}"
        )
    return backward


class EmbeddingTower(Module):
    """y = interaction(embedding(*args, **kwargs))

    State: the embedding module's under `embedding.`, then the interaction module's under
    `interaction.` (a plain callable interaction has none). `device` is accepted and ignored.
    """

    def __init__(self, embedding_module: Any, interaction_module: Any, device: Any = None) -> None:
        dtype = embedding_module.dtype if isinstance(embedding_module, Module) else np.float64
        super().__init__(dtype)
        for role, module in (("embedding_module", embedding_module), ("interaction_module", interaction_module)):
            if not callable(module):
                raise TypeError(f"EmbeddingTower: {role} expected a module or callable, got {type(module).__name__}")
        self.embedding = embedding_module
        self.interaction = interaction_module
        if isinstance(embedding_module, Module):
            self.register_module("embedding", embedding_module)
        if isinstance(interaction_module, Module):
            self.register_module("interaction", interaction_module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.interaction(self.embedding(*args, **kwargs))

    def backward(self, grad_output: Any) -> Tuple[Any, Dict[str, Array]]:
        """(the embedding module's grad_inputs, {state key: gradient}), through interaction then embedding."""
        grad_embeddings, grads_interaction = _backward_of(self.interaction, "interaction")(grad_output)
        grad_inputs, grads_embedding = _backward_of(self.embedding, "embedding")(grad_embeddings)
        return grad_inputs, {**prefixed(grads_embedding, "embedding."), **prefixed(grads_interaction, "interaction.")}


class EmbeddingTowerCollection(Module):
    """y = [tower_0(inputs_0) | tower_1(inputs_1) | ...] along dimension 1

    inputs_i by tower_input_params(tower_i.embedding): (features, weighted_features) when it takes
    both, (weighted_features,) when only weighted, else (features,).
    State: `towers.<i>.embedding.*`, `towers.<i>.interaction.*`. `device` is accepted and ignored.
    """

    def __init__(self, towers: List[EmbeddingTower], device: Any = None) -> None:
        if isinstance(towers, (str, bytes)) or not isinstance(towers, (list, tuple)):
            raise TypeError(
                f"EmbeddingTowerCollection: towers expected a list of EmbeddingTower, got {type(towers).__name__}"
            )
        for i, tower in enumerate(towers):
            if not isinstance(tower, EmbeddingTower):
                raise TypeError(
                    f"EmbeddingTowerCollection: towers[{i}] expected an EmbeddingTower, got {type(tower).__name__}"
                )
        super().__init__(towers[0].dtype if towers else np.float64)
        self.towers = list(towers)
        for i, tower in enumerate(self.towers):
            self.register_module(f"towers.{i}", tower)
        self._input_params = [tower_input_params(tower.embedding) for tower in self.towers]
        self._widths: Optional[List[int]] = None

    def forward(self, features: Any = None, weighted_features: Any = None) -> Array:
        if not self.towers:
            raise ValueError("EmbeddingTowerCollection: towers expected at least one tower to run, got none")
        outputs = []
        for i, (tower, (takes_features, takes_weighted)) in enumerate(zip(self.towers, self._input_params)):
            for needed, arg, value in (
                (takes_features, "features", features),
                (takes_weighted, "weighted_features", weighted_features),
            ):
                if needed and value is None:
                    raise ValueError(f"EmbeddingTowerCollection: towers[{i}] expected {arg}, got None")
            if takes_features and takes_weighted:
                outputs.append(as_numpy(tower(features, weighted_features)))
            elif takes_weighted:
                outputs.append(as_numpy(tower(weighted_features)))
            else:
                outputs.append(as_numpy(tower(features)))
        self._widths = [out.shape[1] for out in outputs]
        return np.concatenate(outputs, axis=1)

    def backward(self, grad_output: Any) -> Tuple[Tuple[Optional[Array], Optional[Array]], Dict[str, Array]]:
        """((dL/d features, dL/d weighted_features), {state key: gradient}).

        A tower's grad_inputs is added to the input it was given (towers taking both give a pair);
        an input no tower returns a gradient for gets None (ids have none)."""
        if self._widths is None:
            raise RuntimeError("EmbeddingTowerCollection.backward: call forward first")
        g = as_numpy(grad_output)
        total = sum(self._widths)
        if g.ndim != 2 or g.shape[1] != total:
            raise ValueError(
                f"EmbeddingTowerCollection.backward: grad_output expected shape (B, {total}), got {g.shape}"
            )
        sums: List[Optional[Array]] = [None, None]
        grad_params: Dict[str, Array] = {}
        start = 0
        for i, (tower, width, params) in enumerate(zip(self.towers, self._widths, self._input_params)):
            grad_inputs, grads = tower.backward(g[:, start : start + width])
            start += width
            grad_params.update(prefixed(grads, f"towers.{i}."))
            if params == (True, True):
                if grad_inputs is None:
                    parts = (None, None)
                elif isinstance(grad_inputs, (tuple, list)) and len(grad_inputs) == 2:
                    parts = grad_inputs
                else:
                    raise TypeError(
                        f"EmbeddingTowerCollection.backward: towers[{i}] takes features and weighted_features, "
                        f"so its grad_inputs expected None or a pair, got {type(grad_inputs).__name__}"
                    )
            else:
                parts = (grad_inputs, None) if params[0] else (None, grad_inputs)
            for k, part in enumerate(parts):
                if part is not None:
                    sums[k] = as_numpy(part) if sums[k] is None else sums[k] + as_numpy(part)
        return (sums[0], sums[1]), grad_params
