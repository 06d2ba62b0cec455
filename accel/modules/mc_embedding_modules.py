"""Embedding collections behind managed collision: drop-ins for `torchrec.modules.mc_embedding_modules`
(semantics.md 12).

    forward(kjt) = (E(r), r if return_remapped_features else None),  r = mcc(kjt)

where E is accel's EmbeddingBagCollection (KeyedTensor out) or EmbeddingCollection (dict of JaggedTensor
out) and mcc a ManagedCollisionCollection over the same tables. The forward consumes the collection's pending
evictions (`mcc.evict()`), as TorchRec does, and hands them to `evict`. Departures from TorchRec
(docs/discrepancies.md):

* `evict` re-initialises the rows of the evicted output ids with the table's init (init_fn, else
  U(min, max)), drawn from torch's global RNG, and zeroes their fused-optimizer state, so an admitted id never
  inherits the embedding of the id it replaced; the forward does this between the remap and the lookup, so
  the admitted id's first lookup already reads its fresh row (the rows change in place: run the backward of a
  forward before the next forward, as usual). TorchRec's evict is a no-op (the rows keep the old values);
  `reinitialize_evicted_rows=False` on the wrappers (`reinitialize=False` on `evict`) gives that behaviour;
* the embedding module and the collection may hold equal configs (compared by value, an init_fn
  functools.partial by its function and arguments), not only the identical objects.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from accel.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from accel.modules.mc_modules import ManagedCollisionCollection
from accel.sparse import JaggedTensor, KeyedJaggedTensor, KeyedTensor

__all__ = [
    "BaseManagedCollisionEmbeddingCollection",
    "ManagedCollisionEmbeddingBagCollection",
    "ManagedCollisionEmbeddingCollection",
    "evict",
]


def _tables(module: nn.Module) -> nn.ModuleDict:
    return module.embedding_bags if hasattr(module, "embedding_bags") else module.embeddings


def _configs(module: nn.Module) -> Sequence[Any]:
    if hasattr(module, "embedding_bag_configs"):
        return module.embedding_bag_configs()
    return module.embedding_configs()


@torch.no_grad()
def evict(evictions: Dict[str, Optional[torch.Tensor]], ebc: nn.Module, reinitialize: bool = True) -> None:
    """W_t[i] <- init_t(a fresh (len(i), D) block) for the evicted output ids i of every table t.

    init_t is the table config's init_fn, else U(get_weight_init_min(), get_weight_init_max()); one block is
    drawn per table in `evictions` order, from torch's global RNG. The rows' fused-optimizer state (if any)
    is zeroed. reinitialize=False: TorchRec's no-op.
    """
    if not reinitialize:
        return
    tables = _tables(ebc)
    configs = {config.name: config for config in _configs(ebc)}
    state = ebc.optimizer_state() if hasattr(ebc, "optimizer_state") else {}
    for table, ids in evictions.items():
        if ids is None or ids.numel() == 0:
            continue
        if table not in tables:
            raise ValueError(f"evict: table '{table}' expected among the embedding tables {list(tables)}, got none")
        weight = tables[table].weight
        rows = ids.to(device=weight.device, dtype=torch.int64)
        if bool(((rows < 0) | (rows >= weight.shape[0])).any()):
            raise IndexError(
                f"evict: table '{table}': evicted ids expected rows in [0, {weight.shape[0]}), got {rows.tolist()}"
            )
        block = torch.empty((rows.numel(), weight.shape[1]), dtype=weight.dtype, device=weight.device)
        config = configs[table]
        if config.init_fn is not None:
            config.init_fn(block)
        else:
            nn.init.uniform_(block, a=config.get_weight_init_min(), b=config.get_weight_init_max())
        weight[rows] = block
        if table in state:
            state[table][rows] = 0


def _same_callable(a: Any, b: Any) -> bool:
    if a is b or a == b:
        return True
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return _same_callable(a.func, b.func) and a.args == b.args and a.keywords == b.keywords
    return False


def _same_config(a: Any, b: Any) -> bool:
    # Field by field; init_fn by function and arguments.
    if type(a) is not type(b) or not dataclasses.is_dataclass(a):
        return a == b
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if not (_same_callable(x, y) if callable(x) or callable(y) else x == y):
            return False
    return True


class BaseManagedCollisionEmbeddingCollection(nn.Module):
    """(E(mcc(kjt)), mcc(kjt) or None): an embedding collection fed by a managed-collision collection.

    Module docstring for the lookup, the eviction hand-off and the departures from TorchRec.
    """

    def __init__(
        self,
        embedding_module: Union[EmbeddingBagCollection, EmbeddingCollection],
        managed_collision_collection: ManagedCollisionCollection,
        return_remapped_features: bool = False,
        allow_in_place_embed_weight_update: bool = False,
        *,
        reinitialize_evicted_rows: bool = True,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        mine, theirs = list(_configs(embedding_module)), list(managed_collision_collection.embedding_configs())
        names = ([c.name for c in mine], [c.name for c in theirs])
        if names[0] != names[1]:
            raise ValueError(
                f"{who}: managed_collision_collection expected the embedding module's tables {names[0]}, got {names[1]}"
            )
        for a, b in zip(mine, theirs):
            if not _same_config(a, b):
                raise ValueError(
                    f"{who}: table '{a.name}': managed_collision_collection config expected to equal the "
                    f"embedding module's {a}, got {b}"
                )
        self._managed_collision_collection = managed_collision_collection
        self._return_remapped_features = return_remapped_features
        self._allow_in_place_embed_weight_update = allow_in_place_embed_weight_update
        self._reinitialize_evicted_rows = reinitialize_evicted_rows
        self._embedding_module = embedding_module

    def forward(
        self, features: Any, mutate_miss_lengths: bool = True
    ) -> Tuple[Union[KeyedTensor, Dict[str, JaggedTensor]], Optional[KeyedJaggedTensor]]:
        remapped = self._managed_collision_collection(features, mutate_miss_lengths=mutate_miss_lengths)
        # Before the lookup, so that an id admitted in this step reads its fresh row, not its predecessor's.
        evict(self._managed_collision_collection.evict(), self._embedding_module, self._reinitialize_evicted_rows)
        embeddings = self._embedding_module(remapped)
        return embeddings, (remapped if self._return_remapped_features else None)

    def lookup_remapped_lengths_mask(self, features: Any) -> torch.Tensor:
        """mcc(features).lengths() != 0 (profiles in training, as a forward does)."""
        return self._managed_collision_collection(features, mutate_miss_lengths=True).lengths().to(torch.bool)


class ManagedCollisionEmbeddingBagCollection(BaseManagedCollisionEmbeddingCollection):
    """(EBC(mcc(kjt)) as a KeyedTensor, the remapped KJT or None)."""

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        managed_collision_collection: ManagedCollisionCollection,
        return_remapped_features: bool = False,
        allow_in_place_embed_weight_update: bool = False,
        *,
        reinitialize_evicted_rows: bool = True,
    ) -> None:
        super().__init__(embedding_bag_collection, managed_collision_collection, return_remapped_features,
                         allow_in_place_embed_weight_update, reinitialize_evicted_rows=reinitialize_evicted_rows)

    @property
    def _embedding_bag_collection(self) -> EmbeddingBagCollection:
        return self._embedding_module


class ManagedCollisionEmbeddingCollection(BaseManagedCollisionEmbeddingCollection):
    """(EC(mcc(kjt)) as a dict of JaggedTensor, the remapped KJT or None)."""

    def __init__(
        self,
        embedding_collection: EmbeddingCollection,
        managed_collision_collection: ManagedCollisionCollection,
        return_remapped_features: bool = False,
        allow_in_place_embed_weight_update: bool = False,
        *,
        reinitialize_evicted_rows: bool = True,
    ) -> None:
        super().__init__(embedding_collection, managed_collision_collection, return_remapped_features,
                         allow_in_place_embed_weight_update, reinitialize_evicted_rows=reinitialize_evicted_rows)

    @property
    def _embedding_collection(self) -> EmbeddingCollection:
        return self._embedding_module
