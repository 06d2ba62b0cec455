"""Managed collision: `torchrec.modules.mc_modules` in NumPy (semantics.md 11).

A managed-collision module maps raw ids to the rows of a table of Z slots: an id owns a slot (and
its output id off + s) once an eviction round admits it; every other id goes to the shared miss
id off + Z - 1. Training calls record the ids they see; every `eviction_interval` training calls an
eviction round ranks the ids of that window against the residents with the policy's score and
swaps the winners in (refimpl.modules.mc_remap for the table steps, mc_policies for the scores,
mc_filters for the admission filters).

Default behaviour is TorchRec 1.8's, id for id. recspec departs from it where TorchRec is silently
wrong or crashes (docs/managed_collision.md, "Where recspec differs from TorchRec"):
  * the history window grows as needed: no id is ever dropped (TorchRec sizes it from the first
    training batch and ignores ids past it; an empty first batch disables learning there);
  * ManagedCollisionCollection finds each table's features by key on every call and hands them to
    the module registered under that table's name (TorchRec caches the first call's key order and
    pairs tables with modules by position);
  * bad input (ids that are not int64, the reserved id 2^63 - 1, a hash outside
    [0, input_hash_size), a missing feature, zch_size < 2, eviction_interval < 1) raises a
    TypeError or ValueError naming the feature and table before any state changes;
  * dynamic_threshold_filter over an empty window passes nothing instead of dividing by zero.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from refimpl.base import Module, as_numpy
from refimpl.modules.embedding_modules import as_keyed_jagged_tensor
from refimpl.modules.mc_filters import (
    average_threshold_filter,
    dynamic_threshold_filter,
    probabilistic_threshold_filter,
)
from refimpl.modules.mc_policies import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    MCHEvictionPolicy,
    MCHEvictionPolicyMetadataInfo,
)
from refimpl.modules.mc_remap import (
    MAX,
    assign_new_ids,
    coalesce_history,
    concat_history,
    frequency_order,
    match_ids,
    open_slot_count,
    pending_evictions,
    remap_ids,
    resort_table,
)
from refimpl.sparse import JaggedTensor, KeyedJaggedTensor

__all__ = [
    "ManagedCollisionModule",
    "MCHManagedCollisionModule",
    "ManagedCollisionCollection",
    "apply_mc_method_to_jt_dict",
    # re-exported so that every name of TorchRec's mc_modules resolves here
    "MCHEvictionPolicyMetadataInfo",
    "MCHEvictionPolicy",
    "LFU_EvictionPolicy",
    "LRU_EvictionPolicy",
    "DistanceLFU_EvictionPolicy",
    "dynamic_threshold_filter",
    "average_threshold_filter",
    "probabilistic_threshold_filter",
]

Array = np.ndarray
Features = Dict[str, JaggedTensor]

_SEGMENTS = 1025  # TorchRec's fixed length of _output_segments_tensor (at most 1024 row-wise shards)


# --- shared frame: train/eval and checked state loading -----------------------------------------
class TrainingMode:
    """`training` flag with torch's train()/eval(), passed down to child modules."""

    training = True

    def train(self, mode: bool = True) -> "TrainingMode":
        self.training = bool(mode)
        for _, child in self.children():
            if isinstance(child, TrainingMode):
                child.train(mode)
        return self

    def eval(self) -> "TrainingMode":
        return self.train(False)


def check_state_layout(module: Module, state: Mapping[str, Any], strict: bool = True) -> None:
    """Every key and shape of `state` against module.state_dict(), before anything is assigned."""
    own = module.state_dict()
    name = type(module).__name__
    if strict:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise KeyError(f"{name}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
    for key, current in own.items():
        if key in state:
            shape = tuple(np.shape(as_numpy(state[key])))
            if shape != current.shape:
                raise ValueError(
                    f"{name}.load_state_dict: '{key}' expected shape {tuple(current.shape)}, got {shape}"
                )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_features(features: Any, who: str) -> None:
    if not isinstance(features, Mapping):
        raise TypeError(f"{who}: features expected a dict of JaggedTensor, got {type(features).__name__}")
    for name, jt in features.items():
        if not callable(getattr(jt, "values", None)) or not callable(getattr(jt, "lengths", None)):
            raise TypeError(f"{who}: features['{name}'] expected a JaggedTensor, got {type(jt).__name__}")


def _same_layout(jt: Any, values: Array) -> JaggedTensor:
    """A JaggedTensor with jt's lengths, offsets and weights around new values."""
    return JaggedTensor(values=values, weights=jt.weights_or_none(), lengths=jt.lengths(), offsets=jt.offsets())


# --- ManagedCollisionModule ---------------------------------------------------------------------
class ManagedCollisionModule(TrainingMode, Module):
    """Base of the managed-collision modules: raw ids in, output ids in [off, off + output_size()) out.

    State: `_output_segments_tensor` int64 (1025,) (the row-wise shard boundaries, padded with -1)
    and `_current_iter_tensor` int64 (1,), unless skip_state_validation. `device` is accepted and
    ignored. TorchRec's abstract methods are not enforced there; here they raise
    NotImplementedError until a subclass defines them.
    """

    def __init__(
        self,
        device: Any,
        output_segments: Optional[Sequence[int]] = None,
        skip_state_validation: bool = False,
        read_only_suffix: str = "_readonly",
        enable_per_feature_lookups: bool = False,
    ) -> None:
        super().__init__(np.int64)
        self._device = device
        self._read_only_suffix = read_only_suffix
        self._enable_per_feature_lookups = enable_per_feature_lookups
        self._skip_state_validation = bool(skip_state_validation)
        segments = [] if output_segments is None else list(output_segments)
        if len(segments) > _SEGMENTS:
            raise ValueError(
                f"{type(self).__name__}: output_segments expected at most {_SEGMENTS} boundaries "
                f"(1024 shards), got {len(segments)}"
            )
        if not all(_is_int(s) for s in segments):
            raise TypeError(f"{type(self).__name__}: output_segments expected ints, got {segments!r}")
        if skip_state_validation:
            return
        padded = np.full(_SEGMENTS, -1, dtype=np.int64)
        padded[: len(segments)] = segments
        self.register_parameter("_output_segments_tensor", padded)
        self.register_parameter("_current_iter_tensor", np.zeros(1, dtype=np.int64))

    @property
    def device(self) -> Any:
        return self._device

    @property
    def readable_suffix(self) -> str:
        return self._read_only_suffix

    def _abstract(self, method: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.{method}: defined by managed-collision subclasses")

    def preprocess(self, features: Features) -> Features:
        return self._abstract("preprocess")

    def profile(self, features: Features) -> Features:
        return self._abstract("profile")

    def remap(self, features: Features, mutate_miss_lengths: bool = True, write_weights: Any = None) -> Features:
        return self._abstract("remap")

    def forward(self, features: Features, mutate_miss_lengths: bool = True) -> Features:
        return self._abstract("forward")

    def evict(self) -> Optional[Array]:
        return self._abstract("evict")

    def output_size(self) -> int:
        return self._abstract("output_size")

    def input_size(self) -> int:
        return self._abstract("input_size")

    def buckets(self) -> int:
        return self._abstract("buckets")

    def open_slots(self) -> Array:
        return self._abstract("open_slots")

    def validate_state(self) -> None:
        return self._abstract("validate_state")

    def rebuild_with_output_id_range(self, output_id_range, output_segments=None, device=None):
        return self._abstract("rebuild_with_output_id_range")

    # --- checked loading: validate everything, assign, then the post-load step ------------------
    def check_loadable(self, state: Mapping[str, Any], prefix: str = "") -> None:
        """Raise before loading when `state` (keys under `prefix`) cannot be loaded."""

    def after_load(self) -> None:
        """TorchRec's post-load hook: validate_state()."""
        if not self._skip_state_validation:
            self.validate_state()

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        check_state_layout(self, state, strict)
        self.check_loadable(state)
        super().load_state_dict(state, strict)
        self.after_load()


# --- MCHManagedCollisionModule ------------------------------------------------------------------
class MCHManagedCollisionModule(ManagedCollisionModule):
    """out = remap(profile(preprocess(ids))): an id owning a slot s maps to map[s], any other id to off + Z - 1.

    preprocess: ids <- input_hash_func(ids, input_hash_size) when given (train and eval).
    profile (training only): iteration += 1; record the ids; every eviction_interval-th training
    call run an eviction round over the recorded window (eviction_round) and clear it.
    remap: remap_ids against the sorted table (a pure lookup, train and eval).
    Shapes: features {name: JaggedTensor of int64 ids} -> the same layout with output ids.
    State (TorchRec's names and order): `_output_segments_tensor` (1025,), `_current_iter_tensor` (1,),
    `_mch_sorted_raw_ids` (Z,), `_mch_remapped_ids_mapping` (Z,), then `_mch_<name>` (Z,) for the
    policy's metadata (LFU counts; LRU last_access_iter; DistanceLFU both); all int64.
    Source: semantics.md 11.3. recspec departures (see the module docstring): the window grows
    instead of dropping ids; zch_size must be >= 2 (TorchRec accepts 1: a table holding only the
    sentinel, in which every id misses); bad ids raise before the state changes. As in TorchRec,
    reset_inference_mode() sets the last eviction iteration to -1, after which the round condition
    (iteration - last == eviction_interval) only holds again if the iteration is small enough.
    """

    def __init__(
        self,
        zch_size: int,
        device: Any,
        eviction_policy: MCHEvictionPolicy,
        eviction_interval: int,
        input_hash_size: int = (2**63) - 1,
        input_hash_func: Optional[Callable[[Array, int], Array]] = None,
        mch_size: Optional[int] = None,
        mch_hash_func: Optional[Callable[[Array, int], Array]] = None,
        name: Optional[str] = None,
        output_global_offset: int = 0,
        output_segments: Optional[Sequence[int]] = None,
        buckets: int = 1,
    ) -> None:
        who = "MCHManagedCollisionModule" if name is None else f"MCHManagedCollisionModule '{name}'"
        self._check_arguments(who, zch_size, eviction_policy, eviction_interval, input_hash_size, input_hash_func,
                              output_global_offset, buckets)
        if output_segments is None:
            output_segments = [output_global_offset, output_global_offset + zch_size]
        super().__init__(device=device, output_segments=output_segments)
        if mch_size is not None or mch_hash_func is not None:
            warnings.warn(
                f"{who}: mch_size and mch_hash_func are deprecated and ignored (as in TorchRec)",
                DeprecationWarning,
                stacklevel=2,
            )
        self._who = who
        self._name = name
        self._zch_size = int(zch_size)
        self._eviction_policy = eviction_policy
        self._eviction_interval = int(eviction_interval)
        self._input_hash_size = int(input_hash_size)
        self._input_hash_func = input_hash_func
        self._output_global_offset = int(output_global_offset)
        self._buckets = int(buckets)
        Z, off = self._zch_size, self._output_global_offset
        self.register_parameter("_mch_sorted_raw_ids", np.full(Z, MAX, dtype=np.int64))
        self.register_parameter("_mch_remapped_ids_mapping", np.arange(off, off + Z, dtype=np.int64))
        for info in eviction_policy.metadata_info:
            if info.is_mch_metadata:
                self.register_parameter("_mch_" + info.metadata_name, np.zeros(Z, dtype=np.int64))
        self._history_names = [i.metadata_name for i in eviction_policy.metadata_info if i.is_history_metadata]
        # Runtime state that TorchRec keeps outside the state dict.
        self._current_iter = -1
        self._last_eviction_iter = -1
        self._history_ids: List[Array] = []
        self._history_metadata: Dict[str, List[Array]] = {n: [] for n in self._history_names}
        self._evicted = False
        self._evicted_emb_indices: Optional[Array] = None

    @staticmethod
    def _check_arguments(who, zch_size, eviction_policy, eviction_interval, input_hash_size, input_hash_func,
                         output_global_offset, buckets) -> None:
        for arg, value in (("zch_size", zch_size), ("eviction_interval", eviction_interval),
                           ("input_hash_size", input_hash_size), ("output_global_offset", output_global_offset),
                           ("buckets", buckets)):
            if not _is_int(value):
                raise TypeError(f"{who}: {arg} expected an int, got {type(value).__name__} {value!r}")
        if zch_size < 2:
            raise ValueError(
                f"{who}: zch_size expected >= 2 (one slot is the shared miss id, so zch_size - 1 ids "
                f"can be managed), got {zch_size}"
            )
        if eviction_interval < 1:
            raise ValueError(
                f"{who}: eviction_interval expected >= 1 (training calls per round), got {eviction_interval}"
            )
        if input_hash_size < 1:
            raise ValueError(f"{who}: input_hash_size expected >= 1, got {input_hash_size}")
        if not isinstance(eviction_policy, MCHEvictionPolicy):
            raise TypeError(
                f"{who}: eviction_policy expected an MCHEvictionPolicy (LFU_EvictionPolicy, LRU_EvictionPolicy, "
                f"DistanceLFU_EvictionPolicy), got {type(eviction_policy).__name__}"
            )
        if input_hash_func is not None and not callable(input_hash_func):
            raise TypeError(f"{who}: input_hash_func expected a callable or None, got {type(input_hash_func).__name__}")

    # --- the table, read by name (load_state_dict replaces the arrays) --------------------------
    def _raw(self) -> Array:
        return self.parameter("_mch_sorted_raw_ids")

    def _map(self) -> Array:
        return self.parameter("_mch_remapped_ids_mapping")

    def _metadata(self) -> Dict[str, Array]:
        return {
            i.metadata_name: self.parameter("_mch_" + i.metadata_name)
            for i in self._eviction_policy.metadata_info
            if i.is_mch_metadata
        }

    # --- input checks -----------------------------------------------------------------------
    def _check_ids(self, features: Any, who: str) -> None:
        """int64 1-D ids, none equal to the reserved 2^63 - 1, in every feature (no state read or written)."""
        _check_features(features, who)
        for name, jt in features.items():
            ids = as_numpy(jt.values())
            where = f"{who}: feature '{name}' (table '{self._name or name}')"
            if ids.dtype != np.int64:
                raise TypeError(f"{where}: ids expected dtype int64, got {ids.dtype}")
            if ids.ndim != 1:
                raise ValueError(f"{where}: ids expected a 1-D array, got shape {ids.shape}")
            if (ids == MAX).any():
                raise ValueError(
                    f"{where}: ids expected values below 2**63 - 1 (the reserved empty-slot sentinel), "
                    f"got 2**63 - 1 at position {int(np.argmax(ids == MAX))}"
                )

    def _check_hashed(self, name: str, hashed: Any, ids: Array) -> Array:
        where = f"{self._who}.preprocess: feature '{name}' (table '{self._name or name}')"
        hashed = as_numpy(hashed)
        if hashed.dtype != np.int64:
            raise TypeError(f"{where}: input_hash_func expected to return int64 ids, got dtype {hashed.dtype}")
        if hashed.shape != ids.shape:
            raise ValueError(f"{where}: input_hash_func expected to return shape {ids.shape}, got {hashed.shape}")
        bad = (hashed < 0) | (hashed >= self._input_hash_size)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(
                f"{where}: input_hash_func expected ids in [0, input_hash_size={self._input_hash_size}), "
                f"got {int(hashed[k])} for input id {int(ids[k])}"
            )
        return hashed

    # --- the three stages -------------------------------------------------------------------
    def preprocess(self, features: Features) -> Features:
        """ids <- input_hash_func(ids, input_hash_size) when a hash is given, else unchanged (train and eval)."""
        who = f"{self._who}.preprocess"
        if self._input_hash_func is None:
            self._check_ids(features, who)
            return features
        _check_features(features, who)
        out: Features = {}
        for name, jt in features.items():
            ids = as_numpy(jt.values())
            if ids.dtype != np.int64:
                raise TypeError(f"{who}: feature '{name}' (table '{self._name or name}'): ids expected dtype int64, "
                                f"got {ids.dtype}")
            hashed = self._check_hashed(name, self._input_hash_func(ids, self._input_hash_size), ids)
            out[name] = _same_layout(jt, hashed)
        self._check_ids(out, who)
        return out

    def profile(self, features: Features) -> Features:
        """Training: cur += 1; record every feature's ids (dict order); a round when cur - last_round == I.
        Eval: nothing (the iteration does not advance)."""
        if not self.training:
            return features
        self._check_ids(features, f"{self._who}.profile")
        if self._current_iter == -1:
            # The first training call continues from the (possibly loaded) iteration counter.
            self._current_iter = int(self.parameter("_current_iter_tensor")[0])
            self._last_eviction_iter = self._current_iter
        self._current_iter += 1
        self.parameter("_current_iter_tensor")[0] += 1
        for jt in features.values():
            ids = as_numpy(jt.values())
            history = {n: np.empty(ids.shape[0], dtype=np.int64) for n in self._history_names}
            self._eviction_policy.record_history_metadata(self._current_iter, ids, history)
            self._history_ids.append(ids.copy())
            for n in self._history_names:
                self._history_metadata[n].append(history[n])
        if self._current_iter - self._last_eviction_iter == self._eviction_interval:
            self.eviction_round()
            self._last_eviction_iter = self._current_iter
        return features

    def remap(self, features: Features, mutate_miss_lengths: bool = True, write_weights: Any = None) -> Features:
        """out = remap_ids(ids, raw, map, off + Z - 1) per feature; lengths and weights unchanged.
        mutate_miss_lengths and write_weights are accepted and ignored, as in TorchRec."""
        self._check_ids(features, f"{self._who}.remap")
        raw, mapping = self._raw(), self._map()
        miss = self._output_global_offset + self._zch_size - 1
        return {name: _same_layout(jt, remap_ids(as_numpy(jt.values()), raw, mapping, miss))
                for name, jt in features.items()}

    def forward(self, features: Features, mutate_miss_lengths: bool = True) -> Features:
        """remap(profile(preprocess(features))): ids admitted by this call's round are remapped already."""
        return self.remap(self.profile(self.preprocess(features)))

    # --- the eviction round -----------------------------------------------------------------
    def eviction_round(self) -> None:
        """One round over the window h (semantics.md 11.3 steps 1-15):
        u, c = unique(h); optional filter; policy metadata per unique id; update_and_evict; clear h."""
        h = concat_history(self._history_ids)
        u, inv, c = coalesce_history(h)
        f = self._eviction_policy.threshold_filtering_func
        mask = None if f is None else f(c)[0]
        history = {n: concat_history(parts) for n, parts in self._history_metadata.items()}
        coalesced = self._eviction_policy.coalesce_history_metadata(
            self._current_iter, history, c, inv, threshold_mask=mask
        )
        if mask is not None:
            u, c = u[mask], c[mask]
        self.update_and_evict(u, c, coalesced)
        self._history_ids = []
        self._history_metadata = {n: [] for n in self._history_names}

    def update_and_evict(self, u: Array, c: Array, coalesced: Dict[str, Array]) -> None:
        """Steps 5-14: fu = u in frequency order; match against the table; the policy updates metadata
        and picks (ev, sel); raw[ev] = new ids[sel]; E = map[ev] joins the pending evictions; re-sort."""
        o = frequency_order(c)
        fu, fc = u[o], c[o]
        raw, mapping, metadata = self._raw(), self._map(), self._metadata()
        pos, matched = match_ids(raw, fu)
        ev, sel = self._eviction_policy.update_metadata_and_generate_eviction_scores(
            self._current_iter, self._zch_size, o, fc, matched, pos[matched], metadata, coalesced
        )
        assign_new_ids(raw, ev, fu[~matched], sel)
        E = mapping[ev]
        self._evicted_emb_indices = pending_evictions(self._evicted_emb_indices if self._evicted else None, E)
        self._evicted = True
        resort_table(raw, mapping, metadata)

    def evict(self) -> Optional[Array]:
        """The output ids whose slots changed owner since the last call (int64, possibly empty), or None
        when no round has run since; the pending set is consumed."""
        if not self._evicted:
            return None
        self._evicted = False
        return self._evicted_emb_indices

    # --- accessors --------------------------------------------------------------------------
    def output_size(self) -> int:
        return self._zch_size

    def input_size(self) -> int:
        return self._input_hash_size

    def buckets(self) -> int:
        return self._buckets

    def open_slots(self) -> Array:
        """(Z - 1) - #{raw < MAX} as int64 (1,)."""
        return open_slot_count(self._raw())

    def reset_inference_mode(self) -> None:
        """Forget pending evictions and the last round's iteration (TorchRec's semantics, see the class)."""
        self._evicted = False
        self._last_eviction_iter = -1

    def rebuild_with_output_id_range(
        self,
        output_id_range: Tuple[int, int],
        output_segments: Optional[Sequence[int]] = None,
        device: Any = None,
    ) -> "MCHManagedCollisionModule":
        """A new, empty module over output ids [a, b): Z = b - a, off = a, the same policy object,
        interval and hash, buckets = len(output_segments) - 1 (output_segments defaults to [a, b])."""
        a, b = output_id_range
        segments = [a, b] if output_segments is None else list(output_segments)
        return type(self)(
            zch_size=b - a,
            device=device if device is not None else self._device,
            eviction_policy=self._eviction_policy,
            eviction_interval=self._eviction_interval,
            input_hash_size=self._input_hash_size,
            input_hash_func=self._input_hash_func,
            name=self._name,
            output_global_offset=a,
            output_segments=segments,
            buckets=len(segments) - 1,
        )

    # --- state ------------------------------------------------------------------------------
    def _segments_ok(self, segments: Array) -> bool:
        start = self._output_global_offset
        return start in segments and start + self._zch_size in segments

    def check_loadable(self, state: Mapping[str, Any], prefix: str = "") -> None:
        """The loaded `_output_segments_tensor` must contain off and off + Z (TorchRec asserts it after loading)."""
        key = prefix + "_output_segments_tensor"
        if key in state and not self._segments_ok(as_numpy(state[key])):
            start, end = self._output_global_offset, self._output_global_offset + self._zch_size
            segments = [int(s) for s in as_numpy(state[key]) if s != -1]
            raise ValueError(
                f"{self._who}.load_state_dict: '{key}' expected to contain the shard bounds {start} and {end}, "
                f"got segments {segments}"
            )

    def validate_state(self) -> None:
        """Check the segments and re-sort raw ids, map and metadata by raw id (stable)."""
        segments = self.parameter("_output_segments_tensor")
        if not self._segments_ok(segments):
            raise ValueError(
                f"{self._who}: _output_segments_tensor expected to contain {self._output_global_offset} and "
                f"{self._output_global_offset + self._zch_size}, got {[int(s) for s in segments if s != -1]}"
            )
        resort_table(self._raw(), self._map(), self._metadata())


# --- ManagedCollisionCollection ------------------------------------------------------------------
class ManagedCollisionCollection(TrainingMode, Module):
    """out = KJT(keys = the configs' features in config order, values = module_t(ids of t's features) for every table t)

    Each table's features are found in the input by key (extra keys are dropped) and sent, their
    values concatenated in feature order, as one JaggedTensor {table: jt} to the module registered
    under the table's name: remap(profile(preprocess(.))). Lengths and weights follow the features.
    Shapes: a KJT with B samples -> a KJT with the configs' features, the same B.
    State: `_managed_collision_modules.<table>.<buffer>` in the modules' dict order.
    Source: semantics.md 11.6. recspec departures: features are found by key on every call and the
    modules paired by table name (TorchRec caches the first call's permutation and pairs by
    position); a missing feature raises ValueError naming it and its table; every table's input is
    checked before any module's state changes; a module without a config is rejected.
    """

    _who = "ManagedCollisionCollection"

    def __init__(
        self,
        managed_collision_modules: Dict[str, ManagedCollisionModule],
        embedding_configs: Sequence[Any],
        need_preprocess: bool = True,
    ) -> None:
        super().__init__(np.int64)
        who = self._who
        if not isinstance(managed_collision_modules, Mapping):
            raise TypeError(
                f"{who}: managed_collision_modules expected a dict table name -> ManagedCollisionModule, "
                f"got {type(managed_collision_modules).__name__}"
            )
        if isinstance(embedding_configs, (str, bytes)) or not isinstance(embedding_configs, Sequence):
            raise TypeError(f"{who}: embedding_configs expected a list of embedding configs, got "
                            f"{type(embedding_configs).__name__}")
        for table, module in managed_collision_modules.items():
            if not isinstance(module, ManagedCollisionModule):
                raise TypeError(
                    f"{who}: managed_collision_modules['{table}'] expected a ManagedCollisionModule, "
                    f"got {type(module).__name__}"
                )
        names = [config.name for config in embedding_configs]
        for config in embedding_configs:
            if config.name not in managed_collision_modules:
                raise ValueError(f"{who}: Table {config.name} is not present in managed_collision_modules "
                                 f"(keys {list(managed_collision_modules)})")
            size = managed_collision_modules[config.name].output_size()
            if size != config.num_embeddings:
                raise ValueError(
                    f"{who}: table '{config.name}': max_output_id (the module's output_size()) expected to match "
                    f"num_embeddings {config.num_embeddings}, got {size}"
                )
        for table in managed_collision_modules:
            if table not in names:
                raise ValueError(f"{who}: managed_collision_modules['{table}'] expected an embedding config named "
                                 f"'{table}', got configs {names}")
        self._modules_by_table: Dict[str, ManagedCollisionModule] = dict(managed_collision_modules)
        self._embedding_configs = embedding_configs
        self.need_preprocess = need_preprocess
        self._feature_names: List[str] = [f for config in embedding_configs for f in config.feature_names]
        self._table_feature_splits: List[int] = [len(config.feature_names) for config in embedding_configs]
        for table, module in managed_collision_modules.items():
            self.register_module(f"_managed_collision_modules.{table}", module)

    def embedding_configs(self) -> Sequence[Any]:
        return self._embedding_configs

    def module_of(self, table: str) -> ManagedCollisionModule:
        """The module registered for `table`."""
        if table not in self._modules_by_table:
            raise ValueError(f"{self._who}: table expected one of {list(self._modules_by_table)}, got '{table}'")
        return self._modules_by_table[table]

    def table_to_number_buckets(self) -> Dict[str, int]:
        return {table: module.buckets() for table, module in self._modules_by_table.items()}

    def _table_inputs(self, kjt: KeyedJaggedTensor) -> Dict[str, Features]:
        """{table: {table: JaggedTensor(values and lengths of its features, in feature order)}}."""
        jt_dict = kjt.to_dict()
        inputs: Dict[str, Features] = {}
        for config in self._embedding_configs:
            for feature in config.feature_names:
                if feature not in jt_dict:
                    raise ValueError(
                        f"{self._who}: features expected key '{feature}' (a feature of table '{config.name}') "
                        f"among the input's keys {kjt.keys()}, got no such key"
                    )
            hashed = getattr(self._modules_by_table[config.name], "_input_hash_func", None) is not None
            for feature in config.feature_names:
                self._check_feature_ids(feature, config.name, jt_dict[feature].values(), hashed)
            jts = [jt_dict[f] for f in config.feature_names]
            values = np.concatenate([jt.values() for jt in jts]) if jts else np.empty(0, dtype=np.int64)
            lengths = np.concatenate([jt.lengths() for jt in jts]) if jts else np.empty(0, dtype=np.int64)
            inputs[config.name] = {config.name: JaggedTensor(values=values, lengths=lengths)}
        return inputs

    def _check_feature_ids(self, feature: str, table: str, ids: Array, hashed: bool) -> None:
        """Errors that name the feature, ahead of the module's own checks (which see one array per table)."""
        where = f"{self._who}: feature '{feature}' (table '{table}')"
        if ids.dtype != np.int64:
            raise TypeError(f"{where}: ids expected dtype int64, got {ids.dtype}")
        if not hashed and (ids == MAX).any():
            raise ValueError(f"{where}: ids expected values below 2**63 - 1 (the reserved empty-slot sentinel), "
                             f"got 2**63 - 1 at position {int(np.argmax(ids == MAX))}")

    def forward(self, features: Any, mutate_miss_lengths: bool = True) -> KeyedJaggedTensor:
        """Remap every table's features with its module (see the class); in training this profiles."""
        kjt = as_keyed_jagged_tensor(features, self._who)
        inputs = self._table_inputs(kjt)
        # Every table's ids are checked (and hashed) before any module records anything.
        preprocessed = {t: self._modules_by_table[t].preprocess(jt) for t, jt in inputs.items()}
        values, lengths, weights = [], [], []
        source = kjt.to_dict()
        for config in self._embedding_configs:
            module = self._modules_by_table[config.name]
            out = module.remap(module.profile(preprocessed[config.name]), mutate_miss_lengths)
            values.append(as_numpy(out[config.name].values()))
            for feature in config.feature_names:
                lengths.append(source[feature].lengths())
                if kjt.weights_or_none() is not None:
                    weights.append(source[feature].weights())
        dtype = kjt.values().dtype
        # Parts of a validated KJT, regrouped like TorchRec's permute: a feature read by two tables
        # appears twice among the keys, so the unique-key check of the constructor does not apply.
        return KeyedJaggedTensor._trusted(
            list(self._feature_names),
            np.concatenate(values) if values else np.empty(0, dtype=dtype),
            None if kjt.weights_or_none() is None else (np.concatenate(weights) if weights else kjt.weights()[:0]),
            np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int32),
            None,
            kjt.stride(),
        )

    def evict(self) -> Dict[str, Optional[Array]]:
        """{table: module.evict()} in the modules' dict order (consumes each pending set)."""
        return {table: module.evict() for table, module in self._modules_by_table.items()}

    def open_slots(self) -> Dict[str, Array]:
        return {table: module.open_slots() for table, module in self._modules_by_table.items()}

    def check_loadable(self, state: Mapping[str, Any], prefix: str = "") -> None:
        for table, module in self._modules_by_table.items():
            module.check_loadable(state, f"{prefix}_managed_collision_modules.{table}.")

    def after_load(self) -> None:
        for module in self._modules_by_table.values():
            module.after_load()

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Load every module's buffers, then re-sort each table (TorchRec's post-load hook)."""
        check_state_layout(self, state, strict)
        self.check_loadable(state)
        super().load_state_dict(state, strict)
        self.after_load()


# --- apply_mc_method_to_jt_dict ------------------------------------------------------------------
def apply_mc_method_to_jt_dict(*args: Any, **kwargs: Any) -> Features:
    """getattr(mc_module, method)(features_dict)

    TorchRec 1.8's form (mc_module, method, features_dict). The page's form (method, features_dict,
    table_to_features, managed_collisions) is accepted too (D20): for every table t, the method of
    managed_collisions[t] applied to {f: features_dict[f] for f in table_to_features[t]}, the results merged.
    """
    if args and isinstance(args[0], str) or "table_to_features" in kwargs:
        return _apply_per_table(*args, **kwargs)
    return _apply_one(*args, **kwargs)


def _apply_one(mc_module: Any, method: str, features_dict: Features) -> Features:
    if not callable(getattr(mc_module, method, None)):
        raise ValueError(f"apply_mc_method_to_jt_dict: method expected a method of {type(mc_module).__name__}, "
                         f"got {method!r}")
    return getattr(mc_module, method)(features_dict)


def _apply_per_table(
    method: str, features_dict: Features, table_to_features: Mapping[str, Sequence[str]], managed_collisions: Mapping
) -> Features:
    out: Features = {}
    for table, features in table_to_features.items():
        if table not in managed_collisions:
            raise ValueError(f"apply_mc_method_to_jt_dict: managed_collisions expected table '{table}', "
                             f"got {list(managed_collisions)}")
        for f in features:
            if f not in features_dict:
                raise ValueError(f"apply_mc_method_to_jt_dict: features_dict expected feature '{f}' "
                                 f"(table '{table}'), got keys {list(features_dict)}")
        out.update(_apply_one(managed_collisions[table], method, {f: features_dict[f] for f in features}))
    return out
