"""Pooled and sequence embedding collections: drop-ins for `torchrec.modules.embedding_modules`.

A collection's lookups are "slots": one per (table, feature) pair, in output order (tables in
config order, each table's features in order). A feature shared by two tables is two slots that
read the same bags. Every forward is one table-batched kernel call over all slots
(`accel.kernels.pooled_lookup` / `sequence_lookup`), fed by small slot tables (KJT key index,
table index, first output column) built once per KJT key order and cached by that order, so the
input's key order never matters and a new order is mapped afresh, never reused from another.

Parameters, state_dict keys (`embedding_bags.<table>.weight`, `embeddings.<table>.weight`) and
the creation (RNG) order are TorchRec's: a collection built after `torch.manual_seed(s)` holds
TorchRec's values, and state dicts load both ways unchanged. recspec's departures (docs/
discrepancies.md): BF16 tables are bfloat16 (TorchRec stores them as float16); a batch of size 0
gives an empty output; weighted MEAN is sum_j w_j W[i_j] / L; a missing feature or an id outside
its table raises an error naming the feature and the table before any kernel runs.

Training without table-sized gradients: `optimizer="sgd" | "adagrad" | "rowwise_adagrad"` (with
`lr`, `eps`) makes the backward update the touched rows in place (FBGEMM's rules, see
`accel.kernels.sparse_optim`), so no gradient the size of a table is ever allocated; the tables'
`.grad` stays None and the optimizer state lives in non-persistent buffers (`momentum1` of each
table module, outside the state_dict), readable through `optimizer_state()`.

On the meta device (device="meta", as TorchRec builds a model before sharding it) construction
allocates no data and forward returns outputs of the right shapes, dtypes and autograd graph: the
input's layout is checked, its contents (lengths, id ranges) cannot be. A sequence lookup's row
count depends on the lengths, so EmbeddingCollection takes a meta KJT with one key only.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from accel.kernels import pooled_lookup as pooled_kernels
from accel.kernels import sequence_lookup as sequence_kernels
from accel.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from refimpl.modules.embedding_configs import check_tables
from refimpl.modules.embedding_modules import get_embedding_names_by_table as spec_names_by_table
from accel.sparse import JaggedTensor, KeyedJaggedTensor, KeyedTensor
from accel.validate import MissingKeyError, has_contents, missing_key
from refimpl import validate as spec

__all__ = [
    "EmbeddingBagCollection",
    "EmbeddingBagCollectionInterface",
    "EmbeddingCollection",
    "EmbeddingCollectionInterface",
    "get_embedding_names_by_table",
    "process_pooled_embeddings",
    "reorder_inverse_indices",
]

DeviceLike = Optional[Union[str, torch.device]]
Configs = Union[Sequence[EmbeddingBagConfig], Sequence[EmbeddingConfig]]

FUSED_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
# Kernel pooling modes (the kernel API's `mode` argument).
_MODE = {"SUM": 0, "MEAN": 1}
_ID_DTYPES = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})
# A handful of key orders per module covers real pipelines; past that the cache starts afresh.
_MAX_CACHED_PLANS = 16


# --- helpers shared with TorchRec's API -------------------------------------------------------------


def get_embedding_names_by_table(tables: Configs) -> List[List[str]]:
    """name(t, f) = f if feature f occurs once over all tables' feature_names, else "f@t".

    Returns one list per table, in table and feature order (tables without features give []).
    Naming is configuration, not maths, so accel uses refimpl's rule as is.
    """
    return spec_names_by_table(tables)


def reorder_inverse_indices(
    inverse_indices: Optional[Tuple[List[str], torch.Tensor]], feature_names: List[str]
) -> torch.Tensor:
    """out[j] = idx[keys.index(name_j before '@')]; None -> an empty tensor.

    Shapes: inverse_indices = (keys, idx (F_in, B)) -> (len(feature_names), B).
    """
    if inverse_indices is None:
        return torch.empty(0)
    keys, idx = inverse_indices
    row_of = {key: i for i, key in enumerate(keys)}
    rows = []
    for name in feature_names:
        feature = name.split("@")[0]
        if feature not in row_of:
            raise missing_key(feature, list(keys), f"reorder_inverse_indices: feature_names ('{name}')")
        rows.append(row_of[feature])
    return idx.index_select(0, torch.tensor(rows, dtype=torch.int64, device=idx.device))


def process_pooled_embeddings(pooled_embeddings: List[torch.Tensor], inverse_indices: torch.Tensor) -> torch.Tensor:
    """out = [P_0[inv_0] | P_1[inv_1] | ...] (rows gathered when inverse_indices is non-empty), else [P_0 | P_1 | ...].

    Shapes: P_k (B_k, D_k); inverse_indices (K, B) or empty -> (B, sum_k D_k).
    """
    if inverse_indices.numel() > 0:
        if inverse_indices.dim() != 2 or inverse_indices.shape[0] != len(pooled_embeddings):
            raise ValueError(
                "process_pooled_embeddings: inverse_indices expected shape "
                f"({len(pooled_embeddings)}, B) (one row per pooled embedding), got {tuple(inverse_indices.shape)}"
            )
        gathered = []
        for k, (pooled, rows) in enumerate(zip(pooled_embeddings, inverse_indices)):
            n = pooled.shape[0]
            if bool(((rows < 0) | (rows >= n)).any()):
                raise IndexError(
                    f"process_pooled_embeddings: inverse_indices[{k}] expected row numbers in [0, {n}), "
                    f"got {rows.tolist()}"
                )
            gathered.append(pooled.index_select(0, rows.long()))
        pooled_embeddings = gathered
    return torch.cat(pooled_embeddings, dim=1)


# --- interfaces -----------------------------------------------------------------------------------


class EmbeddingBagCollectionInterface(abc.ABC, nn.Module):
    """What an EmbeddingBagCollection offers: KJT -> KeyedTensor, its configs, is_weighted()."""

    @abc.abstractmethod
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pass

    @abc.abstractmethod
    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        pass

    @abc.abstractmethod
    def is_weighted(self) -> bool:
        pass


class EmbeddingCollectionInterface(abc.ABC, nn.Module):
    """What an EmbeddingCollection offers: KJT -> dict of JaggedTensor, its configs and names."""

    @abc.abstractmethod
    def forward(self, features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]:
        pass

    @abc.abstractmethod
    def embedding_configs(self) -> List[EmbeddingConfig]:
        pass

    @abc.abstractmethod
    def need_indices(self) -> bool:
        pass

    @abc.abstractmethod
    def embedding_dim(self) -> int:
        pass

    @abc.abstractmethod
    def embedding_names_by_table(self) -> List[List[str]]:
        pass


# --- configuration checks -------------------------------------------------------------------------


def _enum_value(member: Any) -> str:
    """"SUM", "FP32", ...: recspec's and TorchRec's enums (and plain strings) alike."""
    return str(getattr(member, "value", member))


def table_dtype(config: Any) -> torch.dtype:
    """Storage dtype of a table: FP32 -> float32, BF16 -> bfloat16, any other data_type -> float16.

    TorchRec stores every non-FP32 table as float16; recspec keeps that except for BF16, which
    really is bfloat16.
    """
    data_type = _enum_value(config.data_type)
    if data_type == "FP32":
        return torch.float32
    if data_type == "BF16":
        return torch.bfloat16
    return torch.float16


class FusedOptimizer(NamedTuple):
    """An optimizer applied inside the backward: name in FUSED_OPTIMIZERS, learning rate, epsilon."""

    name: str
    lr: float
    eps: float


def _check_optimizer(optimizer: Optional[str], lr: float, eps: float, who: str) -> Optional[FusedOptimizer]:
    if optimizer is None:
        return None
    if optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(f"{who}: optimizer expected None or one of {list(FUSED_OPTIMIZERS)}, got {optimizer!r}")
    for arg, value in (("lr", lr), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{who}: {arg} expected a finite float, got {value!r}")
    if lr < 0:
        raise ValueError(f"{who}: lr expected 0 <= lr, got {lr}")
    if eps <= 0:
        raise ValueError(f"{who}: eps expected 0 < eps, got {eps}")
    return FusedOptimizer(optimizer, float(lr), float(eps))


def _register_optimizer_state(table: nn.Module, fused: Optional[FusedOptimizer]) -> None:
    """Adagrad's accumulator per element [rows, D], row-wise Adagrad's per row [rows]; zeros, float32.

    Non-persistent: a state_dict stays exactly TorchRec's.
    """
    if fused is None or fused.name == "sgd":
        return
    rows, dim = table.weight.shape
    shape = (rows, dim) if fused.name == "adagrad" else (rows,)
    table.register_buffer(
        "momentum1", torch.zeros(shape, dtype=torch.float32, device=table.weight.device), persistent=False
    )


@torch.no_grad()
def _initialise(weight: torch.Tensor, config: Any) -> None:
    """W ~ config.init_fn, or U(get_weight_init_min(), get_weight_init_max()) when it is None."""
    if config.init_fn is not None:
        config.init_fn(weight)
    else:
        nn.init.uniform_(weight, a=config.get_weight_init_min(), b=config.get_weight_init_max())


def _is_meta(device: Any) -> bool:
    return torch.device(device).type == "meta" if device is not None else False


# --- per-call input handling ----------------------------------------------------------------------


class _Slots(NamedTuple):
    """The (table, feature) lookups of a collection for one KJT key order, as kernel arguments."""

    key: torch.Tensor  # int64 [S] on the host: KJT key index of the slot's feature
    table: torch.Tensor  # int64 [S]: table index (within the kernel call's weights list)
    column: torch.Tensor  # int64 [S]: first output column (pooled) of the slot
    rows: torch.Tensor  # int64 [S]: num_embeddings of the slot's table, for the range check
    key_index: Tuple[int, ...]  # the same keys as Python ints (for error messages and splits)
    features: Tuple[str, ...]
    tables: Tuple[str, ...]


def _slots(
    who: str, keys: Sequence[str], configs: Sequence[Any], table_index: Sequence[int], columns: Sequence[int]
) -> _Slots:
    """Slot tables for the slots of `configs` (tables table_index) against the KJT `keys`.

    Host (CPU) tensors whatever the tables' device: the kernels' launchers read them on the host, so
    CUDA tables cost no device-to-host copy per call."""
    position = {key: k for k, key in enumerate(keys)}  # a repeated key: the last one, as TorchRec's to_dict
    key_index, slot_table, rows, features, tables = [], [], [], [], []
    for t, config in zip(table_index, configs):
        for feature in config.feature_names:
            if feature not in position:
                raise MissingKeyError(
                    f"{who}: features expected key '{feature}' (a feature of table '{config.name}') among "
                    f"the input's keys {list(keys)}, got no such key"
                )
            key_index.append(position[feature])
            slot_table.append(t)
            rows.append(config.num_embeddings)
            features.append(feature)
            tables.append(config.name)

    def tensor(values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64)

    return _Slots(
        tensor(key_index), tensor(slot_table), tensor(columns), tensor(rows),
        tuple(key_index), tuple(features), tuple(tables),
    )


def _check_ids(who: str, kjt: KeyedJaggedTensor, ids: torch.Tensor, offsets: torch.Tensor, slots: _Slots) -> None:
    """Every id of every slot lies in [0, num_embeddings of the slot's table): one pass, before any kernel.
    Nothing to check for ids on the meta device (no values)."""
    if ids.numel() == 0 or not has_contents(ids):
        return
    first_bad = pooled_kernels.find_out_of_range(ids, offsets, slots.key, slots.rows, kjt.stride())
    if first_bad < 0:
        return
    opk = kjt.offset_per_key()
    for s, k in enumerate(slots.key_index):
        if opk[k] <= first_bad < opk[k + 1]:
            feature_ids = ids[opk[k] : opk[k + 1]].cpu().numpy()
            # Words the error exactly as refimpl does (feature, table, id, range, position).
            spec.validate_ids_in_range(feature_ids, int(slots.rows[s]), slots.features[s], slots.tables[s])
    raise AssertionError(f"{who}: the range kernel flagged id position {first_bad}, no slot owns an id out of range")


def _weights(tables: nn.ModuleDict) -> List[torch.Tensor]:
    """Every table's weight, in order. Read from `_parameters` directly: Module.__getattr__ costs about
    a microsecond a table, which for dozens of tables would be most of the per-call overhead."""
    return [table._parameters["weight"] for table in tables.values()]


def _kjt_parts(who: str, features: Any, device: torch.device) -> Tuple[KeyedJaggedTensor, torch.Tensor, torch.Tensor]:
    """The input as an accel KJT (validated once), its ids and global offsets as int64 on `device`."""
    kjt = KeyedJaggedTensor.from_any(features)
    ids = kjt.values()
    if ids.dim() != 1:
        raise ValueError(f"{who}: features.values() expected 1-D integer ids, got shape {tuple(ids.shape)}")
    if ids.numel() and ids.dtype not in _ID_DTYPES:
        raise TypeError(f"{who}: features.values() expected 1-D integer ids, got {ids.dtype} shape {tuple(ids.shape)}")
    if device.type == "meta" and ids.device != device:
        # As with TorchRec's meta tables, features from any device give meta outputs (validated where they are).
        kjt = kjt.to(device)
        ids = kjt.values()
    if ids.device != device:
        raise ValueError(
            f"{who}: features expected on device {device} (that of the tables), got {ids.device}; move one with .to()"
        )
    return kjt, ids.long(), kjt.offsets().long()


# --- EmbeddingBagCollection -----------------------------------------------------------------------


class _PooledGroup(NamedTuple):
    """One kernel call: the tables of one pooling mode and their slots (columns local to the call)."""

    mode: int
    tables: Tuple[int, ...]
    slots: _Slots
    total_dim: int


class _PooledPlan(NamedTuple):
    groups: Tuple[_PooledGroup, ...]
    all_slots: _Slots  # every slot, in output order, for the one range check
    # Output column j is column column_order[j] of the groups' outputs side by side (None: one group).
    column_order: Optional[torch.Tensor]


class EmbeddingBagCollection(EmbeddingBagCollectionInterface):
    """out[b, c_s : c_s + D_s] = pool_{j in bag(f_s, b)} w_j W_{t_s}[i_j] for every slot s = (t_s, f_s).

    pool is SUM (w_j = 1 unless is_weighted) or MEAN (the sum divided by the bag's length L,
    weighted or not); an empty bag gives zeros. Shapes: features a KJT with B samples ->
    KeyedTensor(keys = embedding names, values (B, sum_s D_s) float32).
    Init (TorchRec's order): W_t ~ N(0, 1) for every table in order, then init_fn (default
    U(-sqrt(1/rows), sqrt(1/rows))) for every table in order.
    Extra keyword arguments: optimizer ("sgd" | "adagrad" | "rowwise_adagrad"), lr, eps for
    the fused training mode (module docstring).
    """

    def __init__(
        self,
        tables: List[EmbeddingBagConfig],
        is_weighted: bool = False,
        device: DeviceLike = None,
        *,
        optimizer: Optional[str] = None,
        lr: float = 0.01,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        who = "EmbeddingBagCollection"
        check_tables(tables, who)
        for config in tables:
            if _enum_value(config.pooling) not in _MODE:
                raise ValueError(
                    f"{who}: table '{config.name}': pooling expected SUM or MEAN, got {_enum_value(config.pooling)}"
                )
        self._fused = _check_optimizer(optimizer, lr, eps, who)
        self._is_weighted = bool(is_weighted)
        self._embedding_bag_configs = tables
        self.embedding_bags: nn.ModuleDict = nn.ModuleDict()
        self._lengths_per_embedding: List[int] = []
        for config in tables:
            # nn.EmbeddingBag draws N(0, 1) on creation, where and as TorchRec's does.
            self.embedding_bags[config.name] = nn.EmbeddingBag(
                config.num_embeddings,
                config.embedding_dim,
                mode=_enum_value(config.pooling).lower(),
                include_last_offset=True,
                device=device,
                dtype=table_dtype(config),
            )
            if device is None:
                device = self.embedding_bags[config.name].weight.device
            if not config.feature_names:
                config.feature_names = [config.name]  # TorchRec mutates the config the same way
            self._lengths_per_embedding += [config.embedding_dim] * len(config.feature_names)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._embedding_names: List[str] = [name for names in get_embedding_names_by_table(tables) for name in names]
        self._feature_names: List[List[str]] = [list(config.feature_names) for config in tables]
        self._plans: Dict[Tuple[Tuple[str, ...], torch.device], _PooledPlan] = {}
        self.reset_parameters()
        for bag in self.embedding_bags.values():
            _register_optimizer_state(bag, self._fused)

    # --- accessors -----------------------------------------------------------------------------
    def is_weighted(self) -> bool:
        return self._is_weighted

    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        return self._embedding_bag_configs

    @property
    def device(self) -> torch.device:
        return self._device

    def optimizer_state(self) -> Dict[str, torch.Tensor]:
        """table name -> its fused optimizer's accumulator (the live buffer); {} for SGD or no optimizer."""
        return {
            name: bag.momentum1 for name, bag in self.embedding_bags.items() if hasattr(bag, "momentum1")
        }

    def reset_parameters(self) -> None:
        """W_t <- init_fn(W_t) (default U(min, max)) for every table in order; nothing on the meta device."""
        if _is_meta(self._device):
            return
        for config in self._embedding_bag_configs:
            _initialise(self.embedding_bags[config.name].weight, config)

    # --- forward -------------------------------------------------------------------------------
    def _plan(self, keys: Sequence[str], device: torch.device) -> _PooledPlan:
        cache_key = (tuple(keys), device)
        plan = self._plans.get(cache_key)
        if plan is not None:
            return plan
        who = "EmbeddingBagCollection"
        configs = self._embedding_bag_configs
        widths = self._lengths_per_embedding
        columns = [sum(widths[:s]) for s in range(len(widths))]
        all_slots = _slots(who, keys, configs, range(len(configs)), columns)
        slot_mode = [_MODE[_enum_value(c.pooling)] for c in configs for _ in c.feature_names]
        groups, source = [], [0] * sum(widths)
        start = 0  # first column of the group's output among all groups' outputs side by side
        for mode in sorted(set(slot_mode)):
            members = tuple(t for t, c in enumerate(configs) if _MODE[_enum_value(c.pooling)] == mode)
            member_slots = [s for s in range(len(widths)) if slot_mode[s] == mode]
            local = [sum(widths[q] for q in member_slots[:i]) for i in range(len(member_slots))]
            slots = _slots(who, keys, [configs[t] for t in members], range(len(members)), local)
            for s, column in zip(member_slots, local):
                for j in range(widths[s]):
                    source[columns[s] + j] = start + column + j
            total = sum(widths[s] for s in member_slots)
            groups.append(_PooledGroup(mode, members, slots, total))
            start += total
        column_order = None
        if len(groups) > 1:
            column_order = torch.tensor(source, dtype=torch.int64, device=device)
        plan = _PooledPlan(tuple(groups), all_slots, column_order)
        if len(self._plans) >= _MAX_CACHED_PLANS:
            self._plans.clear()
        self._plans[cache_key] = plan
        return plan

    def forward(self, features: Any) -> KeyedTensor:
        """features: an accel KeyedJaggedTensor, TorchRec's, or anything with its accessors."""
        who = "EmbeddingBagCollection"
        if not self._embedding_bag_configs:
            raise ValueError(f"{who}: tables expected at least one table to look up, got none")
        weights = _weights(self.embedding_bags)
        kjt, ids, offsets = _kjt_parts(who, features, weights[0].device)
        plan = self._plan(kjt.keys(), ids.device)
        per_sample_weights = None
        if self._is_weighted:
            per_sample_weights = kjt.weights_or_none()
            if per_sample_weights is None:
                raise ValueError(
                    f"{who}: features expected weights (the collection is_weighted=True), got a KJT without weights"
                )
        _check_ids(who, kjt, ids, offsets, plan.all_slots)
        batch_size = kjt.stride()
        outputs = [self._lookup(group, weights, ids, offsets, batch_size, per_sample_weights) for group in plan.groups]
        values = outputs[0] if plan.column_order is None else torch.cat(outputs, dim=1).index_select(1, plan.column_order)
        return KeyedTensor(self._embedding_names, self._lengths_per_embedding, values)

    def _lookup(
        self,
        group: _PooledGroup,
        weights: List[torch.Tensor],
        ids: torch.Tensor,
        offsets: torch.Tensor,
        batch_size: int,
        per_sample_weights: Optional[torch.Tensor],
    ) -> torch.Tensor:
        tables = [weights[t] for t in group.tables]
        s = group.slots
        if self._fused is None:
            return pooled_kernels.pooled_lookup(
                tables, ids, offsets, s.key, s.table, s.column, group.total_dim, batch_size,
                per_sample_weights, group.mode,
            )
        state = self._state(group.tables)
        return pooled_kernels.pooled_lookup_fused(
            tables, ids, offsets, s.key, s.table, s.column, group.total_dim, batch_size,
            per_sample_weights, group.mode, self._fused.name, self._fused.lr, self._fused.eps, state,
        )

    def _state(self, members: Sequence[int]) -> List[torch.Tensor]:
        if self._fused.name == "sgd":
            return []
        bags = list(self.embedding_bags.values())
        return [bags[t].momentum1 for t in members]


# --- EmbeddingCollection --------------------------------------------------------------------------


class EmbeddingCollection(EmbeddingCollectionInterface):
    """out[name_s] = JaggedTensor(values = [W_{t_s}[i_j] for j in feature f_s's ids], lengths of f_s).

    Every slot s = (t_s, f_s) gives its ids' rows in value order, float32, with the feature's
    per-sample lengths (and its ids as the JaggedTensor's weights when need_indices).
    Shapes: features a KJT -> {name: JaggedTensor(values (n_f, D), lengths (B,))}, D shared by all tables.
    Init (TorchRec's order, interleaved): for each table in order, W_t ~ N(0, 1), then init_fn
    (default U(-sqrt(1/rows), sqrt(1/rows))).
    `use_gather_select(_per_sharding)` are kept for TorchRec's signature: one lookup serves both.
    Extra keyword arguments: optimizer, lr, eps for the fused training mode (module docstring).
    """

    def __init__(
        self,
        tables: List[EmbeddingConfig],
        device: DeviceLike = None,
        need_indices: bool = False,
        use_gather_select: bool = False,
        use_gather_select_per_sharding: Optional[Dict[str, bool]] = None,
        *,
        optimizer: Optional[str] = None,
        lr: float = 0.01,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        who = "EmbeddingCollection"
        check_tables(tables, who)
        dims = {config.embedding_dim for config in tables}
        if len(dims) > 1:
            first = tables[0]
            odd = next(c for c in tables if c.embedding_dim != first.embedding_dim)
            raise ValueError(
                f"{who}: All tables in a EmbeddingCollection are required to have same embedding dimension; "
                f"table '{odd.name}' expected embedding_dim {first.embedding_dim} (that of '{first.name}'), "
                f"got {odd.embedding_dim}"
            )
        self._fused = _check_optimizer(optimizer, lr, eps, who)
        self._embedding_configs = tables
        self._embedding_dim = tables[0].embedding_dim if tables else -1
        self._need_indices = bool(need_indices)
        self._use_gather_select = use_gather_select
        self._use_gather_select_per_sharding = use_gather_select_per_sharding
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.embeddings: nn.ModuleDict = nn.ModuleDict()
        for config in tables:
            self.embeddings[config.name] = nn.Embedding(
                config.num_embeddings, config.embedding_dim, device=device, dtype=table_dtype(config)
            )
            if not _is_meta(device):
                _initialise(self.embeddings[config.name].weight, config)
            if not config.feature_names:
                config.feature_names = [config.name]
            _register_optimizer_state(self.embeddings[config.name], self._fused)
        self._embedding_names_by_table = get_embedding_names_by_table(tables)
        self._feature_names: List[List[str]] = [list(config.feature_names) for config in tables]
        self._plans: Dict[Tuple[Tuple[str, ...], torch.device], _Slots] = {}

    # --- accessors -----------------------------------------------------------------------------
    def need_indices(self) -> bool:
        return self._need_indices

    def embedding_dim(self) -> int:
        return self._embedding_dim

    def embedding_configs(self) -> List[EmbeddingConfig]:
        return self._embedding_configs

    def embedding_names_by_table(self) -> List[List[str]]:
        return self._embedding_names_by_table

    def use_gather_select(self) -> bool:
        return self._use_gather_select

    def use_gather_select_per_sharding(self) -> Optional[Dict[str, bool]]:
        return self._use_gather_select_per_sharding

    @property
    def device(self) -> torch.device:
        return self._device

    def optimizer_state(self) -> Dict[str, torch.Tensor]:
        """table name -> its fused optimizer's accumulator (the live buffer); {} for SGD or no optimizer."""
        return {name: emb.momentum1 for name, emb in self.embeddings.items() if hasattr(emb, "momentum1")}

    def reset_parameters(self) -> None:
        """W_t <- init_fn(W_t) (default U(min, max)) for every table in order; nothing on the meta device."""
        if _is_meta(self._device):
            return
        for config in self._embedding_configs:
            _initialise(self.embeddings[config.name].weight, config)

    # --- forward -------------------------------------------------------------------------------
    def _plan(self, keys: Sequence[str], device: torch.device) -> _Slots:
        cache_key = (tuple(keys), device)
        slots = self._plans.get(cache_key)
        if slots is None:
            configs = self._embedding_configs
            count = sum(len(c.feature_names) for c in configs)
            slots = _slots("EmbeddingCollection", keys, configs, range(len(configs)), [0] * count)
            if len(self._plans) >= _MAX_CACHED_PLANS:
                self._plans.clear()
            self._plans[cache_key] = slots
        return slots

    def forward(self, features: Any) -> Dict[str, JaggedTensor]:
        """features: an accel KeyedJaggedTensor, TorchRec's, or anything with its accessors."""
        who = "EmbeddingCollection"
        if not self._embedding_configs:
            return {}
        weights = _weights(self.embeddings)
        kjt, ids, offsets = _kjt_parts(who, features, weights[0].device)
        slots = self._plan(kjt.keys(), ids.device)
        _check_ids(who, kjt, ids, offsets, slots)
        batch_size = kjt.stride()
        if not has_contents(ids):
            return self._forward_meta(kjt, ids, weights, slots)
        if self._fused is None:
            rows = sequence_kernels.sequence_lookup(weights, ids, offsets, slots.key, slots.table, batch_size)
        else:
            state = [] if self._fused.name == "sgd" else [emb.momentum1 for emb in self.embeddings.values()]
            rows = sequence_kernels.sequence_lookup_fused(
                weights, ids, offsets, slots.key, slots.table, batch_size,
                self._fused.name, self._fused.lr, self._fused.eps, state,
            )
        length_per_key, opk = kjt.length_per_key(), kjt.offset_per_key()
        parts = torch.split(rows, [length_per_key[k] for k in slots.key_index], dim=0)
        lengths, values = kjt.lengths(), kjt.values()
        names = [name for table_names in self._embedding_names_by_table for name in table_names]
        out: Dict[str, JaggedTensor] = {}
        for name, k, part in zip(names, slots.key_index, parts):
            indices = values[opk[k] : opk[k + 1]] if self._need_indices else None
            # Parts of a validated KJT: their lengths sum to the part's rows by construction.
            out[name] = JaggedTensor._trusted(part, indices, lengths[k * batch_size : (k + 1) * batch_size], None)
        return out

    def _forward_meta(self, kjt: KeyedJaggedTensor, ids: torch.Tensor, weights: List[torch.Tensor],
                      slots: _Slots) -> Dict[str, JaggedTensor]:
        # Meta ids have no lengths to split them by key: with one key, every slot reads all of them.
        keys = kjt.keys()
        if len(keys) != 1:
            raise ValueError(
                f"EmbeddingCollection: features on the meta device expected one key (meta lengths have no "
                f"values to split the ids by key), got {len(keys)} keys {keys}"
            )
        lengths, values = kjt.lengths(), kjt.values()
        names = [name for table_names in self._embedding_names_by_table for name in table_names]
        out: Dict[str, JaggedTensor] = {}
        for name, t in zip(names, slots.table.tolist()):
            acc = torch.float64 if weights[t].dtype == torch.float64 else torch.float32
            rows = torch.nn.functional.embedding(ids, weights[t]).to(acc)
            out[name] = JaggedTensor._trusted(rows, values if self._need_indices else None, lengths, None)
        return out
