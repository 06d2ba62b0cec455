"""Embedding towers: drop-ins for `torchrec.modules.embedding_tower`.

A tower is an embedding module followed by an interaction: out = interaction(embedding(features)).
A collection of towers routes the unweighted and/or weighted KJT to each tower by the kind of
its embedding module and concatenates the outputs along dimension 1.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from torch import nn

from accel.modules.embedding_modules import EmbeddingBagCollectionInterface, EmbeddingCollectionInterface

__all__ = ["EmbeddingTower", "EmbeddingTowerCollection", "tower_input_params"]

DeviceLike = Optional[Union[str, torch.device]]


def _is_torchrec(module: nn.Module, class_name: str) -> bool:
    """TorchRec's own collection classes, recognised without importing TorchRec."""
    return any(
        cls.__name__ == class_name and cls.__module__.startswith("torchrec.") for cls in type(module).__mro__
    )


def tower_input_params(module: nn.Module) -> Tuple[bool, bool]:
    """(needs the KJT, needs the weighted KJT): EmbeddingCollection (True, False); EmbeddingBagCollection
    (not weighted, weighted); any other module (True, True)."""
    if isinstance(module, EmbeddingCollectionInterface) or _is_torchrec(module, "EmbeddingCollection"):
        return True, False
    if isinstance(module, EmbeddingBagCollectionInterface) or _is_torchrec(module, "EmbeddingBagCollection"):
        weighted = bool(module.is_weighted())
        return not weighted, weighted
    return True, True


class EmbeddingTower(nn.Module):
    """out = interaction(embedding(*args, **kwargs)).

    Submodules `embedding` and `interaction` (their state_dict keys are prefixed so; a plain
    callable is kept as an attribute); `device` is accepted for TorchRec's signature and not used.
    """

    def __init__(
        self, embedding_module: nn.Module, interaction_module: nn.Module, device: DeviceLike = None
    ) -> None:
        super().__init__()
        for arg, module in (("embedding_module", embedding_module), ("interaction_module", interaction_module)):
            # TorchRec stores any callable (a plain function runs as well); only non-callables are refused.
            if not callable(module):
                raise TypeError(f"EmbeddingTower: {arg} expected an nn.Module or callable, got {type(module).__name__}")
        self.embedding = embedding_module
        self.interaction = interaction_module

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.interaction(self.embedding(*args, **kwargs))


class EmbeddingTowerCollection(nn.Module):
    """out = [tower_0(inputs_0) | tower_1(inputs_1) | ...] along dimension 1.

    inputs_i is (features, weighted_features), (weighted_features,) or (features,) as
    tower_input_params(tower_i.embedding) says. Shapes: tower_i -> (B, N_i); out (B, sum_i N_i).
    """

    def __init__(self, towers: List[EmbeddingTower], device: DeviceLike = None) -> None:
        super().__init__()
        towers = list(towers)
        for i, tower in enumerate(towers):
            if not isinstance(getattr(tower, "embedding", None), nn.Module):
                raise TypeError(
                    f"EmbeddingTowerCollection: towers[{i}] expected an EmbeddingTower (with an `embedding` "
                    f"module), got {type(tower).__name__}"
                )
        self.towers = nn.ModuleList(towers)
        self._input_params: List[Tuple[bool, bool]] = [tower_input_params(t.embedding) for t in towers]

    def forward(self, features: Any = None, weighted_features: Any = None) -> torch.Tensor:
        if not self._input_params:
            raise ValueError("EmbeddingTowerCollection: towers expected at least one tower to run, got none")
        outputs = []
        for i, (tower, (needs_kjt, needs_weighted)) in enumerate(zip(self.towers, self._input_params)):
            for arg, needed, given in (
                ("features", needs_kjt, features),
                ("weighted_features", needs_weighted, weighted_features),
            ):
                if needed and given is None:
                    raise ValueError(
                        f"EmbeddingTowerCollection: towers[{i}] ({type(tower.embedding).__name__}) expected "
                        f"{arg}, got None"
                    )
            if needs_kjt and needs_weighted:
                outputs.append(tower(features, weighted_features))
            elif needs_weighted:
                outputs.append(tower(weighted_features))
            else:
                outputs.append(tower(features))
        return torch.cat(outputs, dim=1)
