"""Embedding collections behind managed collision: `torchrec.modules.mc_embedding_modules` in NumPy (semantics.md 12).

forward(kjt) = (embedding_module(r), r if return_remapped_features else None), r = mcc(kjt): the raw
ids are remapped (and, in training, profiled) by the ManagedCollisionCollection, looked up by the
EmbeddingBagCollection / EmbeddingCollection, and the rows whose slots changed owner are handed to
`evict`.

recspec departures from TorchRec 1.8 (docs/managed_collision.md):
  * `evict` re-initialises the rows of the evicted output ids with the table's init (the intent
    TorchRec documents; TorchRec's evict is a no-op that leaves the previous owner's row in place).
    `evict_as_torchrec` is the no-op, and the wrappers take `reinitialize_evicted_rows=False` to use it.
  * the wrappers accept an embedding module and a collection whose configs are equal by value
    (name, num_embeddings, embedding_dim, feature_names, pooling, data_type), not only the same objects.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from refimpl.base import Module
from refimpl.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingCollection,
    as_keyed_jagged_tensor,
)
from refimpl.modules.mc_modules import (
    ManagedCollisionCollection,
    TrainingMode,
    check_state_layout,
)
from refimpl.sparse import JaggedTensor, KeyedJaggedTensor, KeyedTensor

__all__ = [
    "evict",
    "evict_as_torchrec",
    "reinitialised_rows",
    "configs_match",
    "BaseManagedCollisionEmbeddingCollection",
    "ManagedCollisionEmbeddingBagCollection",
    "ManagedCollisionEmbeddingCollection",
]

Array = np.ndarray
EmbeddingModule = Union[EmbeddingBagCollection, EmbeddingCollection]

_COMPARED_FIELDS = ("name", "num_embeddings", "embedding_dim", "feature_names", "pooling", "data_type")


def _tables_of(module: EmbeddingModule) -> Tuple[str, List[Any]]:
    """(state_dict prefix, configs) of an EmbeddingBagCollection or EmbeddingCollection."""
    if isinstance(module, EmbeddingBagCollection):
        return "embedding_bags", list(module.embedding_bag_configs())
    if isinstance(module, EmbeddingCollection):
        return "embeddings", list(module.embedding_configs())
    raise TypeError(
        "embedding_module expected a refimpl EmbeddingBagCollection or EmbeddingCollection, "
        f"got {type(module).__name__}"
    )


def reinitialised_rows(config: Any, W: Array, rows: Array, rng: np.random.Generator) -> Array:
    """W'[r] = init(rows of W): U(min, max) drawn from rng (k x D, row-major) when config.init_fn is None,
    else config.init_fn applied to a copy of the rows (in place, or its returned array)

    Shapes: W (num_embeddings, D); rows (k,) -> (k, D) in W's dtype. Source: the table init of
    refimpl's EmbeddingBagCollection (embedding_configs.BaseEmbeddingConfig), row by row.
    """
    if config.init_fn is None:
        lo, hi = config.get_weight_init_min(), config.get_weight_init_max()
        return rng.uniform(lo, hi, (rows.shape[0], W.shape[1])).astype(W.dtype)
    block = W[rows].copy()
    result = config.init_fn(block)
    if result is not None and result is not block:
        block = np.asarray(result).astype(W.dtype)
    return block


def evict(
    evictions: Mapping[str, Optional[Array]], ebc: EmbeddingModule, rng: Optional[np.random.Generator] = None
) -> None:
    """W_t[e] <- reinitialised_rows(config_t, W_t, e) for every table t and its evicted output ids e (None: none)

    Shapes: evictions {table: (k,) int64 output ids or None}; ebc an EmbeddingBagCollection or
    EmbeddingCollection, updated in place. Tables are visited in the dict's order, rows in the
    array's order, each drawing from `rng` (a fresh unseeded Generator when None).
    Source: the intent of TorchRec's MCH.evict documentation (D30); TorchRec 1.8's evict does
    nothing (evict_as_torchrec). A table or an output id outside it raises before any row changes.
    """
    prefix, configs = _tables_of(ebc)
    by_name = {config.name: config for config in configs}
    plan = []
    for table, ids in evictions.items():
        if ids is None:
            continue
        if table not in by_name:
            raise ValueError(f"evict: evictions expected tables of the embedding module {list(by_name)}, got '{table}'")
        rows = np.asarray(ids).astype(np.int64).reshape(-1)
        n = by_name[table].num_embeddings
        bad = (rows < 0) | (rows >= n)
        if bad.any():
            raise IndexError(
                f"evict: table '{table}': evicted ids expected rows in [0, {n}), got {int(rows[np.argmax(bad)])}"
            )
        plan.append((by_name[table], rows))
    rng = np.random.default_rng() if rng is None else rng
    for config, rows in plan:
        W = ebc.parameter(f"{prefix}.{config.name}.weight")
        W[rows] = reinitialised_rows(config, W, rows, rng)


def evict_as_torchrec(evictions: Mapping[str, Optional[Array]], ebc: EmbeddingModule) -> None:
    """TorchRec 1.8's evict: nothing happens; the new owner of a slot reads the previous owner's row (D30)."""


def configs_match(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """a == b field by field over (name, num_embeddings, embedding_dim, feature_names, pooling, data_type)."""
    if len(a) != len(b):
        return False
    return all(_compared(x) == _compared(y) for x, y in zip(a, b))


def _compared(config: Any) -> Tuple[Any, ...]:
    """The compared fields of a config (feature_names as a list, so a tuple and a list compare equal)."""
    return tuple(
        list(config.feature_names) if f == "feature_names" else getattr(config, f, None) for f in _COMPARED_FIELDS
    )


def _describe(configs: Sequence[Any]) -> List[Tuple[Any, ...]]:
    return [_compared(c) for c in configs]


class BaseManagedCollisionEmbeddingCollection(TrainingMode, Module):
    """(emb, r) = (embedding_module(r), r or None),  r = managed_collision_collection(kjt), then
    evict(mcc.evict(), embedding_module)

    The evictions of every table are consumed by each forward (a later mcc.evict() returns None) and
    their rows re-initialised (reinitialize_evicted_rows=True, from `rng`; the embedding module's generator
    when None) or left as they are (reinitialize_evicted_rows=False, TorchRec's no-op).
    State: `_managed_collision_collection._managed_collision_modules.<t>.*`, then the embedding
    module's under `_embedding_module.`. Source: semantics.md 12. allow_in_place_embed_weight_update
    is kept for TorchRec's signature: refimpl always updates rows in place.
    """

    _who = "BaseManagedCollisionEmbeddingCollection"

    def __init__(
        self,
        embedding_module: EmbeddingModule,
        managed_collision_collection: ManagedCollisionCollection,
        return_remapped_features: bool = False,
        allow_in_place_embed_weight_update: bool = False,
        *,
        reinitialize_evicted_rows: bool = True,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(np.float64)
        _, configs = _tables_of(embedding_module)
        if not isinstance(managed_collision_collection, ManagedCollisionCollection):
            raise TypeError(
                f"{self._who}: managed_collision_collection expected a ManagedCollisionCollection, "
                f"got {type(managed_collision_collection).__name__}"
            )
        mc_configs = list(managed_collision_collection.embedding_configs())
        if not configs_match(configs, mc_configs):
            raise ValueError(
                f"{self._who}: the embedding module's configs expected to equal the managed collision "
                f"collection's (fields {', '.join(_COMPARED_FIELDS)}), got {_describe(configs)} and "
                f"{_describe(mc_configs)}"
            )
        for config in mc_configs:
            offset = getattr(managed_collision_collection.module_of(config.name), "_output_global_offset", 0)
            if offset != 0:
                raise ValueError(
                    f"{self._who}: table '{config.name}': output_global_offset expected 0 (output ids are the "
                    f"rows of an unsharded table), got {offset}"
                )
        self._managed_collision_collection = managed_collision_collection
        self._embedding_module = embedding_module
        self._return_remapped_features = bool(return_remapped_features)
        self._allow_in_place_embed_weight_update = bool(allow_in_place_embed_weight_update)
        self._reinitialize_evicted_rows = bool(reinitialize_evicted_rows)
        if rng is None:
            rng = getattr(embedding_module, "_rng", None)
        self._rng = np.random.default_rng() if rng is None else rng
        self.register_module("_managed_collision_collection", managed_collision_collection)
        self.register_module("_embedding_module", embedding_module)

    def forward(
        self, features: Any, mutate_miss_lengths: bool = True
    ) -> Tuple[Union[KeyedTensor, Dict[str, JaggedTensor]], Optional[KeyedJaggedTensor]]:
        kjt = as_keyed_jagged_tensor(features, self._who)
        weighted = isinstance(self._embedding_module, EmbeddingBagCollection) and self._embedding_module.is_weighted()
        if weighted and kjt.weights_or_none() is None:
            raise ValueError(
                f"{self._who}: features expected weights (the embedding bag collection is_weighted=True), "
                "got a KJT without weights"
            )
        remapped = self._managed_collision_collection(kjt, mutate_miss_lengths=mutate_miss_lengths)
        evictions = self._managed_collision_collection.evict()
        # Before the lookup, so that an id admitted in this step reads its fresh row, not its predecessor's.
        if self._reinitialize_evicted_rows:
            evict(evictions, self._embedding_module, self._rng)
        else:
            evict_as_torchrec(evictions, self._embedding_module)
        emb = self._embedding_module(remapped)
        return emb, (remapped if self._return_remapped_features else None)

    def lookup_remapped_lengths_mask(self, features: Any) -> Array:
        """mask = lengths(mcc(kjt)) != 0 (runs the collection, so it profiles in training)."""
        remapped = self._managed_collision_collection(as_keyed_jagged_tensor(features, self._who))
        return remapped.lengths().astype(bool)

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Load everything, then re-sort every managed-collision table (TorchRec's post-load hook)."""
        check_state_layout(self, state, strict)
        self._managed_collision_collection.check_loadable(state, "_managed_collision_collection.")
        super().load_state_dict(state, strict)
        self._managed_collision_collection.after_load()


class ManagedCollisionEmbeddingBagCollection(BaseManagedCollisionEmbeddingCollection):
    """BaseManagedCollisionEmbeddingCollection over an EmbeddingBagCollection: emb is a KeyedTensor (B, sum D)."""

    _who = "ManagedCollisionEmbeddingBagCollection"

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        managed_collision_collection: ManagedCollisionCollection,
        return_remapped_features: bool = False,
        allow_in_place_embed_weight_update: bool = False,
        *,
        reinitialize_evicted_rows: bool = True,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        if not isinstance(embedding_bag_collection, EmbeddingBagCollection):
            raise TypeError(
                f"{self._who}: embedding_bag_collection expected an EmbeddingBagCollection, "
                f"got {type(embedding_bag_collection).__name__}"
            )
        super().__init__(
            embedding_bag_collection, managed_collision_collection, return_remapped_features,
            allow_in_place_embed_weight_update, reinitialize_evicted_rows=reinitialize_evicted_rows, rng=rng,
        )

    @property
    def _embedding_bag_collection(self) -> EmbeddingBagCollection:
        return self._embedding_module


class ManagedCollisionEmbeddingCollection(BaseManagedCollisionEmbeddingCollection):
    """BaseManagedCollisionEmbeddingCollection over an EmbeddingCollection: emb is {name: JaggedTensor (n, D)}."""

    _who = "ManagedCollisionEmbeddingCollection"

    def __init__(
        self,
        embedding_collection: EmbeddingCollection,
        managed_collision_collection: ManagedCollisionCollection,
        return_remapped_features: bool = False,
        allow_in_place_embed_weight_update: bool = False,
        *,
        reinitialize_evicted_rows: bool = True,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        if not isinstance(embedding_collection, EmbeddingCollection):
            raise TypeError(
                f"{self._who}: embedding_collection expected an EmbeddingCollection, "
                f"got {type(embedding_collection).__name__}"
            )
        super().__init__(
            embedding_collection, managed_collision_collection, return_remapped_features,
            allow_in_place_embed_weight_update, reinitialize_evicted_rows=reinitialize_evicted_rows, rng=rng,
        )

    @property
    def _embedding_collection(self) -> EmbeddingCollection:
        return self._embedding_module
