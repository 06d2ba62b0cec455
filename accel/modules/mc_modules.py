"""Managed collision: drop-ins for `torchrec.modules.mc_modules` (semantics.md 11).

MCHManagedCollisionModule keeps Z slots sorted by raw id, each owning one output id in [off, off + Z); an id
in the table maps to its slot's output id, any other id to the shared miss id off + Z - 1 (the sentinel slot
Z - 1 is never given away, so Z - 1 ids are managed). In training every forward records its ids in a history
window and every eviction_interval-th forward runs an eviction round (accel.kernels.mc_eviction) that admits
the best-scored new ids in place of the worst-scored residents. Buffers, their order, persistence, dtypes,
state_dict keys, the load-time re-sort and the results, id for id, are TorchRec 1.8's; state dicts load both
ways. Departures where TorchRec is silently wrong (docs/discrepancies.md):

* the history window grows as needed, so no id is ever dropped from a round (TorchRec sizes it from the first
  training batch and ignores later overflow; an empty first batch there disables learning). Where TorchRec's
  window does not overflow, the results are identical;
* ManagedCollisionCollection finds each feature by key on every call (TorchRec caches the first call's key
  permutation) and gives each table's features to that table's own module, by name (TorchRec pairs them by
  dict order);
* bad input raises before any state changes: ids not int64 (TypeError), an id equal to 2^63 - 1 (the reserved
  empty-slot value), a hash function's output outside [0, input_hash_size), a missing feature, zch_size < 2,
  eviction_interval < 1 (ValueError). Negative raw ids are valid ids.

On a CUDA device the remap runs on the GPU; the history and the eviction rounds run on host copies.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from accel.kernels import mc_eviction, mc_history, mc_remap
from accel.modules.mc_filters import (  # noqa: F401  (TorchRec's mc_modules holds them)
    average_threshold_filter,
    dynamic_threshold_filter,
    probabilistic_threshold_filter,
)
from accel.modules.mc_policies import (  # noqa: F401  (TorchRec's mc_modules holds them)
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    MCHEvictionPolicy,
    MCHEvictionPolicyMetadataInfo,
)
from accel.sparse import JaggedTensor, KeyedJaggedTensor
# Pure dispatch over getattr and dicts, no maths: shared with refimpl (both of TorchRec's and the page's forms).
from refimpl.modules.mc_modules import apply_mc_method_to_jt_dict  # noqa: F401

__all__ = [
    "DistanceLFU_EvictionPolicy",
    "LFU_EvictionPolicy",
    "LRU_EvictionPolicy",
    "MCHEvictionPolicy",
    "MCHEvictionPolicyMetadataInfo",
    "MCHManagedCollisionModule",
    "ManagedCollisionCollection",
    "ManagedCollisionModule",
    "apply_mc_method_to_jt_dict",
    "average_threshold_filter",
    "dynamic_threshold_filter",
    "probabilistic_threshold_filter",
]

MAX_ID = torch.iinfo(torch.int64).max
# TorchRec's limit: 1024 row-wise shards, 1025 segment bounds.
_MAX_SEGMENTS = 1025
Features = Dict[str, Any]


class ManagedCollisionModule(nn.Module):
    """Base of the managed-collision modules: maps raw ids to output ids in [off, off + Z).

    Registers `_output_segments_tensor` (int64 [1025], the segment bounds padded with -1) and
    `_current_iter_tensor` (int64 [1]) and a load hook that calls validate_state(), unless
    skip_state_validation.
    """

    def __init__(
        self,
        device: Any,
        output_segments: Optional[List[int]] = None,
        skip_state_validation: bool = False,
        read_only_suffix: str = "_readonly",
        enable_per_feature_lookups: bool = False,
    ) -> None:
        super().__init__()
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._read_only_suffix = read_only_suffix
        self._enable_per_feature_lookups = enable_per_feature_lookups
        if skip_state_validation:
            return
        # The page's form ManagedCollisionModule(device) has no segments (D21): an all -1 segment table.
        output_segments = [] if output_segments is None else [int(s) for s in output_segments]
        if len(output_segments) > _MAX_SEGMENTS:
            raise ValueError(
                f"{type(self).__name__}: output_segments expected at most {_MAX_SEGMENTS} bounds, "
                f"got {len(output_segments)}"
            )
        padded = output_segments + [-1] * (_MAX_SEGMENTS - len(output_segments))
        self.register_buffer("_output_segments_tensor", torch.tensor(padded, dtype=torch.int64, device=self._device))
        self.register_buffer("_current_iter_tensor", torch.zeros(1, dtype=torch.int64, device=self._device))
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.validate_state())

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def readable_suffix(self) -> str:
        return self._read_only_suffix

    def _abstract(self, method: str):
        raise NotImplementedError(f"{type(self).__name__}.{method}: ManagedCollisionModule is a base class")

    def preprocess(self, features: Features) -> Features:
        return self._abstract("preprocess")

    def profile(self, features: Features) -> Features:
        return self._abstract("profile")

    def remap(self, features: Features, mutate_miss_lengths: bool = True, write_weights: Any = None) -> Features:
        return self._abstract("remap")

    def forward(self, features: Features, mutate_miss_lengths: bool = True) -> Features:
        return self._abstract("forward")

    def evict(self) -> Optional[torch.Tensor]:
        return self._abstract("evict")

    def output_size(self) -> int:
        return self._abstract("output_size")

    def input_size(self) -> int:
        return self._abstract("input_size")

    def buckets(self) -> int:
        return self._abstract("buckets")

    def open_slots(self) -> torch.Tensor:
        return self._abstract("open_slots")

    def validate_state(self) -> None:
        return self._abstract("validate_state")

    def rebuild_with_output_id_range(
        self, output_id_range, output_segments=None, device=None
    ) -> "ManagedCollisionModule":
        return self._abstract("rebuild_with_output_id_range")


def _jagged(values: torch.Tensor, feature: Any) -> JaggedTensor:
    # feature's layout around new values (its lengths, offsets and weights pass through).
    return JaggedTensor._trusted(values, feature.weights_or_none(), feature.lengths(), feature.offsets())


class MCHManagedCollisionModule(ManagedCollisionModule):
    """out_j = map[pos_j] if raw[pos_j] == v_j else off + Z - 1, pos_j = searchsorted_left(raw[0 : Z - 1], v_j).

    Training forward = remap(profile(preprocess(features))): preprocess hashes ids (input_hash_func(v,
    input_hash_size)) when a hash is given; profile records the batch and, every eviction_interval-th call,
    runs an eviction round of eviction_policy; remap looks the ids up. Eval mode skips profile entirely.
    mch_size and mch_hash_func are accepted and ignored (deprecated in TorchRec). Module docstring for the
    departures from TorchRec.
    """

    def __init__(
        self,
        zch_size: int,
        device: Any,
        eviction_policy: MCHEvictionPolicy,
        eviction_interval: int,
        input_hash_size: int = (2**63) - 1,
        input_hash_func: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
        mch_size: Optional[int] = None,
        mch_hash_func: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
        name: Optional[str] = None,
        output_global_offset: int = 0,
        output_segments: Optional[List[int]] = None,
        buckets: int = 1,
    ) -> None:
        who = f"MCHManagedCollisionModule '{name}'" if name is not None else "MCHManagedCollisionModule"
        if not isinstance(zch_size, int) or zch_size < 2:
            raise ValueError(f"{who}: zch_size expected an int >= 2 (one slot is the miss sentinel), got {zch_size!r}")
        if not isinstance(eviction_interval, int) or eviction_interval < 1:
            raise ValueError(f"{who}: eviction_interval expected an int >= 1, got {eviction_interval!r}")
        if not isinstance(eviction_policy, MCHEvictionPolicy):
            raise TypeError(f"{who}: eviction_policy expected an MCHEvictionPolicy, got {type(eviction_policy).__name__}")
        if not 1 <= input_hash_size <= MAX_ID:
            raise ValueError(f"{who}: input_hash_size expected a value in [1, 2^63 - 1], got {input_hash_size}")
        if output_segments is None:
            output_segments = [output_global_offset, output_global_offset + zch_size]
        super().__init__(device=device, output_segments=output_segments)
        self._who = who
        self._name = name
        self._zch_size = zch_size
        self._eviction_interval = eviction_interval
        self._eviction_policy = eviction_policy
        self._input_hash_size = input_hash_size
        self._input_hash_func = input_hash_func
        self._output_global_offset = output_global_offset
        self._buckets = buckets
        dev = self.device
        self.register_buffer("_mch_sorted_raw_ids", torch.full((zch_size,), MAX_ID, dtype=torch.int64, device=dev))
        self.register_buffer("_mch_slots", torch.tensor([zch_size - 1], dtype=torch.int64, device=dev),
                             persistent=False)
        self.register_buffer("_delimiter", torch.tensor([MAX_ID], dtype=torch.int64, device=dev), persistent=False)
        self.register_buffer(
            "_mch_remapped_ids_mapping",
            torch.arange(output_global_offset, output_global_offset + zch_size, dtype=torch.int64, device=dev),
        )
        self._mch_metadata: Dict[str, torch.Tensor] = {}
        self._history_names: List[str] = []
        for info in eviction_policy.metadata_info:
            if info.is_mch_metadata:
                self.register_buffer("_mch_" + info.metadata_name, torch.zeros(zch_size, dtype=torch.int64, device=dev))
                self._mch_metadata[info.metadata_name] = getattr(self, "_mch_" + info.metadata_name)
            if info.is_history_metadata:
                self._history_names.append(info.metadata_name)
        self._current_iter = -1
        self._last_eviction_iter = -1
        self._input_history_buffer_size = -1
        self._current_history_buffer_offset = 0
        self._history_accumulator: Optional[torch.Tensor] = None
        self._evicted = False
        self._evicted_emb_indices = torch.empty((1,), device=dev)
        # Facts about the table the rounds keep between them (sortedness, the LFU count histogram).
        self._memo = mc_eviction.TableMemo()

    # --- accessors -------------------------------------------------------------------------------
    def output_size(self) -> int:
        return self._zch_size

    def input_size(self) -> int:
        return self._input_hash_size

    def buckets(self) -> int:
        return self._buckets

    def open_slots(self) -> torch.Tensor:
        """(Z - 1) - #{raw < 2^63 - 1}, int64 [1]."""
        return self._mch_slots - torch.searchsorted(self._mch_sorted_raw_ids, self._delimiter)

    def reset_inference_mode(self) -> None:
        self._evicted = False
        self._last_eviction_iter = -1

    def rebuild_with_output_id_range(
        self, output_id_range: Tuple[int, int], output_segments: Optional[List[int]] = None, device: Any = None
    ) -> "MCHManagedCollisionModule":
        """An empty module over output ids [a, b): Z = b - a, off = a, the same policy, interval and hash;
        output_segments defaults to [a, b] (the page's two-argument form, D25)."""
        if output_segments is None:
            output_segments = [output_id_range[0], output_id_range[1]]
        return type(self)(
            name=self._name,
            zch_size=output_id_range[1] - output_id_range[0],
            device=device or self.device,
            eviction_policy=self._eviction_policy,
            eviction_interval=self._eviction_interval,
            input_hash_size=self._input_hash_size,
            input_hash_func=self._input_hash_func,
            output_global_offset=output_id_range[0],
            output_segments=output_segments,
            buckets=len(output_segments) - 1,
        )

    # --- input checks ----------------------------------------------------------------------------
    def _check_dtype(self, features: Features) -> None:
        for key, feature in features.items():
            values = feature.values()
            if not isinstance(values, torch.Tensor) or values.dtype != torch.int64:
                got = values.dtype if isinstance(values, torch.Tensor) else type(values).__name__
                raise TypeError(f"{self._who}: feature '{key}' ids expected dtype torch.int64, got {got}")
            if values.dim() != 1:
                raise ValueError(f"{self._who}: feature '{key}' ids expected a 1-D tensor, got shape {tuple(values.shape)}")

    def _check_ids(self, features: Features, hashed: bool) -> None:
        # Ids about to be recorded or looked up: the reserved value never; hash outputs inside their range.
        lo, hi = (0, self._input_hash_size) if hashed else (-(2**63), MAX_ID)
        for key, feature in features.items():
            values = feature.values()
            j = mc_remap.first_outside(values, lo, hi)
            if j < 0:
                continue
            if hashed:
                raise ValueError(
                    f"{self._who}: feature '{key}': input_hash_func output expected ids in "
                    f"[0, {self._input_hash_size}), got {int(values[j])}"
                )
            raise ValueError(
                f"{self._who}: feature '{key}' ids expected values other than 2^63 - 1 = {MAX_ID} "
                f"(reserved for empty slots), got {MAX_ID}"
            )

    def checked_input(self, features: Features) -> Features:
        """preprocess(features) after every check of the ids (module docstring); changes no state.

        With a hash, only its outputs are range-checked: the raw ids may take any int64 value, 2^63 - 1
        included (the reserved value only matters among the ids recorded and looked up)."""
        self._check_dtype(features)
        hashed = self._input_hash_func is not None
        features = self._preprocess(features)
        if hashed:
            self._check_dtype(features)
        self._check_ids(features, hashed)
        return features

    # --- the three stages ------------------------------------------------------------------------
    def _preprocess(self, features: Features) -> Features:
        if self._input_hash_func is None:
            return features
        return {
            key: _jagged(self._input_hash_func(feature.values(), self._input_hash_size), feature)
            for key, feature in features.items()
        }

    def preprocess(self, features: Features) -> Features:
        """v <- input_hash_func(v, input_hash_size) when a hash is given (train and eval)."""
        self._check_dtype(features)
        return self._preprocess(features)

    def profile(self, features: Features) -> Features:
        """Training only: record the batch; every eviction_interval-th call, run an eviction round."""
        if not self.training:
            return features
        self._check_dtype(features)
        self._check_ids(features, self._input_hash_func is not None)
        self._profile(features)
        return features

    def _profile(self, features: Features) -> None:
        if self._current_iter == -1:
            self._current_iter = int(self._current_iter_tensor.item())
            self._last_eviction_iter = self._current_iter
        self._current_iter += 1
        self._current_iter_tensor.data += 1
        total = sum(int(feature.values().numel()) for feature in features.values())
        if self._input_history_buffer_size == -1:
            self._init_history(int(total * self._eviction_interval * 1.25))
        self._reserve(self._current_history_buffer_offset + total)
        last = getattr(self, "_history_last_access_iter", None) if self._history_names else None
        p = self._current_history_buffer_offset
        for feature in features.values():
            p = mc_history.record(self._history_accumulator, last, p, feature.values(), self._current_iter)
        self._current_history_buffer_offset = p
        if self._current_iter - self._last_eviction_iter == self._eviction_interval:
            self._coalesce_and_evict()
            self._last_eviction_iter = self._current_iter

    def _init_history(self, size: int) -> None:
        # TorchRec's first window size; it grows later instead of dropping ids (module docstring).
        self._input_history_buffer_size = size
        self._history_accumulator = torch.empty(size, dtype=torch.int64, device=self.device)
        for name in self._history_names:
            self.register_buffer("_history_" + name, torch.zeros(size, dtype=torch.int64, device=self.device),
                                 persistent=False)

    def _reserve(self, needed: int) -> None:
        p = self._current_history_buffer_offset
        self._history_accumulator = mc_history.grown(self._history_accumulator, p, needed)
        for name in self._history_names:
            attr = "_history_" + name
            setattr(self, attr, mc_history.grown(getattr(self, attr), p, needed))
        self._input_history_buffer_size = self._history_accumulator.shape[0]

    def remap(self, features: Features, mutate_miss_lengths: bool = True, write_weights: Any = None) -> Features:
        """Pure lookup (train and eval); mutate_miss_lengths and write_weights are accepted and ignored."""
        self._check_dtype(features)
        self._check_ids(features, False)
        return self._remap(features)

    def _remap(self, features: Features) -> Features:
        miss = self._output_global_offset + self._zch_size - 1
        raw, mapping = self._mch_sorted_raw_ids, self._mch_remapped_ids_mapping
        return {
            key: _jagged(mc_remap.remap_ids(raw, mapping, feature.values().to(raw.device), miss), feature)
            for key, feature in features.items()
        }

    def forward(self, features: Features, mutate_miss_lengths: bool = True) -> Features:
        """remap(profile(preprocess(features))), every check done before any state changes."""
        return self.forward_checked(self.checked_input(features))

    def forward_checked(self, features: Features) -> Features:
        """profile + remap of input that checked_input returned."""
        if self.training:
            self._profile(features)
        return self._remap(features)

    # --- eviction --------------------------------------------------------------------------------
    def _coalesce_and_evict(self) -> None:
        p = self._current_history_buffer_offset
        history = self._history_accumulator[:p].cpu()
        last = self._history_last_access_iter[:p].cpu() if self._history_names else None
        policy = self._eviction_policy
        if policy._round_kind is None:
            evicted = self._generic_round(history, last)
        else:
            u, c, la = mc_history.coalesce(history, last)
            if policy._threshold_filtering_func is not None and u.numel() > 0:
                mask = policy._threshold_filtering_func(c.to(self.device))[0].cpu()
                u, c = u[mask], c[mask]
                la = la[mask] if la is not None else None
            evicted = self._kernel_round(u, c, la)
        if self._evicted:
            evicted = mc_eviction.union(self._evicted_emb_indices.cpu(), evicted)
        self._evicted_emb_indices = evicted.to(self.device)
        self._evicted = True
        self._current_history_buffer_offset = 0

    def _table(self) -> mc_eviction.Table:
        return mc_eviction.Table(
            self._mch_sorted_raw_ids, self._mch_remapped_ids_mapping,
            self._mch_metadata.get("counts"), self._mch_metadata.get("last_access_iter"),
        )

    def _kernel_round(self, u, c, la) -> torch.Tensor:
        table = self._table()
        on_host = self.device.type == "cpu"
        work = table if on_host else mc_eviction.Table(*(None if t is None else t.cpu() for t in table))
        policy = self._eviction_policy
        evicted = mc_eviction.evict_round(policy._round_kind, policy._decay_exponent, self._current_iter,
                                          work, u, c, la, self._memo if on_host else None)
        if not on_host:
            for dst, src in zip(table, work):
                if dst is not None:
                    dst.copy_(src)
        return evicted

    @torch.no_grad()
    def _generic_round(self, history: torch.Tensor, last: Optional[torch.Tensor]) -> torch.Tensor:
        # A user-defined policy: TorchRec's round through the policy's methods, on host copies.
        policy = self._eviction_policy
        u, inverse, c = torch.unique(history, return_inverse=True, return_counts=True)
        mask = policy._threshold_filtering_func(c)[0] if policy._threshold_filtering_func is not None else None
        hist = {name: last for name in self._history_names}
        coalesced = policy.coalesce_history_metadata(self._current_iter, hist, c, inverse, threshold_mask=mask)
        if mask is not None:
            u, c = u[mask], c[mask]
        order = torch.argsort(c, descending=True, stable=True)
        fu, fc = u[order], c[order]
        table = mc_eviction.Table(*(None if t is None else t.cpu() for t in self._table()))
        pos = torch.searchsorted(table.raw[:-1], fu)
        matched = table.raw[pos] == fu
        meta = {name: t.cpu() for name, t in self._mch_metadata.items()}
        ev, sel = policy.update_metadata_and_generate_eviction_scores(
            self._current_iter, self._zch_size, order, fc, matched, pos[matched], meta, coalesced)
        table.raw[ev] = fu[~matched][sel]
        evicted = table.mapping[ev].clone()
        perm = torch.argsort(table.raw, stable=True)
        self._mch_sorted_raw_ids.copy_(table.raw[perm])
        self._mch_remapped_ids_mapping.copy_(table.mapping[perm])
        for name, t in meta.items():
            self._mch_metadata[name].copy_(t[perm])
        return evicted

    @torch.no_grad()
    def evict(self) -> Optional[torch.Tensor]:
        """The output ids whose slots changed owner since the last call (int64), or None without a round."""
        if not self._evicted:
            return None
        self._evicted = False
        return self._evicted_emb_indices

    # --- state -----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate_state(self) -> None:
        """After a load: off and off + Z must be segment bounds; the table is re-sorted by raw id (stable)."""
        start, end = self._output_global_offset, self._output_global_offset + self._zch_size
        segments = self._output_segments_tensor
        if not (bool((segments == start).any()) and bool((segments == end).any())):
            raise ValueError(
                f"{self._who}: _output_segments_tensor expected to contain the bounds {start} and {end}, "
                f"got {segments[segments >= 0].tolist()}"
            )
        perm = torch.argsort(self._mch_sorted_raw_ids, stable=True)
        self._mch_sorted_raw_ids.copy_(self._mch_sorted_raw_ids[perm])
        self._mch_remapped_ids_mapping.copy_(self._mch_remapped_ids_mapping[perm])
        for buffer in self._mch_metadata.values():
            buffer.copy_(buffer[perm])


class ManagedCollisionCollection(nn.Module):
    """Remaps a KJT feature by feature: the features of table t (config order) go through module t.

    Output: KJT(keys = every config's features in config order, remapped values, the input's lengths and
    weights of those features, the input's stride). Keys the configs do not name are dropped. Features are
    found by key on every call and modules by table name (module docstring).
    """

    def __init__(
        self,
        managed_collision_modules: Dict[str, ManagedCollisionModule],
        embedding_configs: Sequence[Any],
        need_preprocess: bool = True,
    ) -> None:
        super().__init__()
        for config in embedding_configs:
            if config.name not in managed_collision_modules:
                raise ValueError(
                    f"ManagedCollisionCollection: table '{config.name}' expected in managed_collision_modules "
                    f"(keys {list(managed_collision_modules)}), got none"
                )
            size = managed_collision_modules[config.name].output_size()
            if size != config.num_embeddings:
                raise ValueError(
                    f"ManagedCollisionCollection: table '{config.name}': module output_size() expected "
                    f"num_embeddings = {config.num_embeddings}, got {size}"
                )
        self._managed_collision_modules = nn.ModuleDict(managed_collision_modules)
        self._embedding_configs = embedding_configs
        self.need_preprocess = need_preprocess
        self._table_to_features: Dict[str, List[str]] = {c.name: list(c.feature_names) for c in embedding_configs}
        self._feature_names: List[str] = [f for c in embedding_configs for f in c.feature_names]
        self._table_feature_splits: List[int] = [len(c.feature_names) for c in embedding_configs]

    def embedding_configs(self) -> Sequence[Any]:
        return self._embedding_configs

    def table_to_number_buckets(self) -> Dict[str, int]:
        return {table: module.buckets() for table, module in self._managed_collision_modules.items()}

    def _order(self, keys: List[str]) -> List[int]:
        index = {key: i for i, key in enumerate(keys)}
        for table, features in self._table_to_features.items():
            for feature in features:
                if feature not in index:
                    raise ValueError(
                        f"ManagedCollisionCollection: feature '{feature}' of table '{table}' expected among the "
                        f"input keys, got keys {keys}"
                    )
        return [index[f] for f in self._feature_names]

    def forward(self, features: Any, mutate_miss_lengths: bool = True) -> KeyedJaggedTensor:
        kjt = KeyedJaggedTensor.from_any(features)
        order = self._order(kjt.keys())
        if order != list(range(len(kjt.keys()))):
            kjt = kjt.permute(order)
        splits = kjt.split(self._table_feature_splits)
        # Every table's input is checked before any module changes state.
        checked = []
        for table, part in zip(self._table_to_features, splits):
            module = self._managed_collision_modules[table]
            jt = {table: JaggedTensor._trusted(part.values(), None, part.lengths(), None)}
            checked.append((module, module.checked_input(jt) if hasattr(module, "checked_input") else None, jt))
        values = []
        for table, (module, ready, jt) in zip(self._table_to_features, checked):
            out = module.forward_checked(ready) if ready is not None else module(jt, mutate_miss_lengths)
            values.append(out[table].values())
        cat = torch.cat(values) if values else kjt.values()[:0]
        return KeyedJaggedTensor._trusted(kjt.keys(), cat, kjt.weights_or_none(), kjt.lengths(), None, kjt.stride())

    def evict(self) -> Dict[str, Optional[torch.Tensor]]:
        return {table: module.evict() for table, module in self._managed_collision_modules.items()}

    def open_slots(self) -> Dict[str, torch.Tensor]:
        return {table: module.open_slots() for table, module in self._managed_collision_modules.items()}
