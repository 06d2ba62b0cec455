"""Pooled and sequence embedding collections: `torchrec.modules.embedding_modules` in NumPy.

A collection's lookups are "slots", one per (table, feature) pair in output order (tables in
config order, each table's features in order); a feature shared by two tables is two slots reading
the same bags and is named `feature@table`. Bag b of a feature holds the ids i_j (weights w_j) of
values[offsets[b] : offsets[b + 1]] of that feature's JaggedTensor.

Precision: FP32 tables are stored in the module's `dtype` (float64 by default, the reference
precision); any other data_type is stored in 16 bits as TorchRec stores it (BF16 as a real
ml_dtypes.bfloat16, every other type as float16). Lookups accumulate in float32 or the module's
dtype when wider, and the outputs have that dtype.

recspec's departures from TorchRec 1.8 (docs/discrepancies.md): a batch of size 0 gives an empty
output of the right shape; weighted MEAN is sum_j w_j W[i_j] / L; BF16 tables are bfloat16; a
feature missing from the input or an id outside its table raises an error naming the feature and
the table.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np

from refimpl.base import Module, as_numpy
from refimpl.modules.embedding_configs import DataType, PoolingType, as_enum, check_tables
from refimpl.sparse import JaggedTensor, KeyedJaggedTensor, KeyedTensor
from refimpl.validate import MissingKeyError, missing_key, validate_ids_in_range

__all__ = [
    "EmbeddingBagCollection",
    "EmbeddingBagCollectionInterface",
    "EmbeddingCollection",
    "EmbeddingCollectionInterface",
    "embedding_rows_to_dense",
    "get_embedding_names_by_table",
    "pooled_embedding",
    "pooled_embedding_backward",
    "process_pooled_embeddings",
    "reorder_inverse_indices",
    "sequence_embedding",
]

Array = np.ndarray


# --- formulas --------------------------------------------------------------------------------------
def accumulation_dtype(dtype: Any) -> np.dtype:
    """float32 for 16-bit and float32 tables, float64 for float64 ones."""
    return np.result_type(np.dtype(dtype), np.float32)


def pooled_embedding(
    W: Array, ids: Array, offsets: Array, weights: Optional[Array] = None, mode: str = "SUM", acc_dtype: Any = None
) -> Array:
    """e_b = sum_{j in bag b} w_j W[i_j] (SUM),  e_b = (1 / L_b) sum_{j in bag b} w_j W[i_j] (MEAN),  0 for L_b = 0

    Shapes: W (rows, D); ids (n,); offsets (B + 1,), bag b = ids[offsets[b] : offsets[b + 1]] of
    length L_b; weights (n,) or None (w_j = 1) -> e (B, D) in acc_dtype (accumulation_dtype(W)).
    Source: semantics.md 7.2 step 2; weighted MEAN is recspec's definition (TorchRec raises).
    """
    acc = accumulation_dtype(W.dtype) if acc_dtype is None else np.dtype(acc_dtype)
    B, D = offsets.shape[0] - 1, W.shape[1]
    e = np.zeros((B, D), dtype=acc)
    for b in range(B):
        bag = slice(int(offsets[b]), int(offsets[b + 1]))
        L_b = bag.stop - bag.start
        if L_b == 0:
            continue
        W_rows = W[ids[bag]].astype(acc)  # the accumulation dtype
        w = np.ones(L_b, dtype=acc) if weights is None else weights[bag].astype(acc)
        total = w @ W_rows
        e[b] = total / L_b if mode == "MEAN" else total
    return e


def pooled_embedding_backward(
    grad_e: Array, W: Array, ids: Array, offsets: Array, weights: Optional[Array] = None, mode: str = "SUM"
) -> Tuple[Array, Optional[Array]]:
    """dL/dW[i_j] += (w_j / s_b) dL/de_b,   dL/dw_j = <W[i_j], dL/de_b> / s_b,   s_b = L_b (MEAN) or 1 (SUM)

    Shapes: grad_e (B, D); the rest as pooled_embedding -> (grad_rows (n, D), one row per id, to be
    summed into W by embedding_rows_to_dense; grad_weights (n,), None when weights is None).
    Source: the chain rule through pooled_embedding.
    """
    acc = grad_e.dtype
    n = ids.shape[0]
    grad_rows = np.zeros((n, W.shape[1]), dtype=acc)
    grad_w = None if weights is None else np.zeros(n, dtype=acc)
    for b in range(offsets.shape[0] - 1):
        bag = slice(int(offsets[b]), int(offsets[b + 1]))
        L_b = bag.stop - bag.start
        if L_b == 0:
            continue
        s_b = L_b if mode == "MEAN" else 1
        w = np.ones(L_b, dtype=acc) if weights is None else weights[bag].astype(acc)
        grad_rows[bag] = (w / s_b)[:, None] * grad_e[b]
        if grad_w is not None:
            grad_w[bag] = W[ids[bag]].astype(acc) @ grad_e[b] / s_b
    return grad_rows, grad_w


def sequence_embedding(W: Array, ids: Array, acc_dtype: Any = None) -> Array:
    """e_j = W[i_j]
    Shapes: W (rows, D); ids (n,) -> e (n, D) in acc_dtype (accumulation_dtype(W)).
    Source: semantics.md 7.3 (TorchRec returns the rows as float32). Its backward is
    dL/dW = embedding_rows_to_dense(ids, dL/de)."""
    acc = accumulation_dtype(W.dtype) if acc_dtype is None else np.dtype(acc_dtype)
    return W[ids].astype(acc)


def embedding_rows_to_dense(ids: Array, grad_rows: Array, num_embeddings: int) -> Array:
    """dL/dW[r] = sum_{j : i_j = r} g_j   (zero for rows no id touches)
    Shapes: ids (n,); grad_rows g (n, D) -> (num_embeddings, D)."""
    dense = np.zeros((num_embeddings, grad_rows.shape[1]), dtype=grad_rows.dtype)
    np.add.at(dense, ids, grad_rows)
    return dense


# --- helpers with TorchRec's names -----------------------------------------------------------------
def get_embedding_names_by_table(tables: Sequence[Any]) -> List[List[str]]:
    """name(t, f) = f when feature f occurs once over all tables' feature_names, else "f@t"
    Shapes: one list per table, in table and feature order (a table without features gives []).
    Source: semantics.md 7.1."""
    count: Dict[str, int] = {}
    for table in tables:
        for feature in table.feature_names:
            count[feature] = count.get(feature, 0) + 1
    return [
        [feature if count[feature] == 1 else f"{feature}@{table.name}" for feature in table.feature_names]
        for table in tables
    ]


def reorder_inverse_indices(
    inverse_indices: Optional[Tuple[Sequence[str], Any]], feature_names: Sequence[str]
) -> Array:
    """out[k] = idx[keys.index(feature_names[k] before any '@')];  None -> an empty array
    Shapes: inverse_indices = (keys (F_in,), idx (F_in, B)) -> (len(feature_names), B).
    Source: semantics.md 7.4."""
    if inverse_indices is None:
        return np.empty(0, dtype=np.int64)
    keys, idx = inverse_indices
    idx = as_numpy(idx)
    row_of = {key: r for r, key in enumerate(keys)}
    rows = []
    for name in feature_names:
        feature = name.split("@")[0]
        if feature not in row_of:
            raise missing_key(feature, list(keys), f"reorder_inverse_indices: feature_names ('{name}')")
        rows.append(row_of[feature])
    return idx[np.array(rows, dtype=np.int64)] if rows else idx[:0]


def process_pooled_embeddings(pooled_embeddings: Sequence[Any], inverse_indices: Any) -> Array:
    """out = [P_0[inv_0] | P_1[inv_1] | ...] when inverse_indices is non-empty, else [P_0 | P_1 | ...]
    Shapes: P_k (B_k, D_k); inverse_indices (K, B) or empty -> (B, sum_k D_k).
    Source: semantics.md 7.4."""
    pooled = [as_numpy(p) for p in pooled_embeddings]
    inverse = as_numpy(inverse_indices)
    name = "process_pooled_embeddings"
    if not pooled:
        raise ValueError(f"{name}: pooled_embeddings expected at least one array, got none")
    if inverse.size > 0:
        if inverse.ndim != 2 or inverse.shape[0] != len(pooled):
            raise ValueError(
                f"{name}: inverse_indices expected shape ({len(pooled)}, B) (one row per pooled "
                f"embedding), got {inverse.shape}"
            )
        for k, (P, rows) in enumerate(zip(pooled, inverse)):
            if ((rows < 0) | (rows >= P.shape[0])).any():
                raise IndexError(
                    f"{name}: inverse_indices[{k}] expected row numbers in [0, {P.shape[0]}), got {rows.tolist()}"
                )
        pooled = [P[rows.astype(np.int64)] for P, rows in zip(pooled, inverse)]
    return np.concatenate(pooled, axis=1)


# --- interfaces ------------------------------------------------------------------------------------
class EmbeddingBagCollectionInterface(Module, metaclass=ABCMeta):
    """What an EmbeddingBagCollection offers: KJT -> KeyedTensor, its configs, is_weighted()."""

    @abstractmethod
    def forward(self, features: Any) -> KeyedTensor: ...

    @abstractmethod
    def embedding_bag_configs(self) -> List[Any]: ...

    @abstractmethod
    def is_weighted(self) -> bool: ...


class EmbeddingCollectionInterface(Module, metaclass=ABCMeta):
    """What an EmbeddingCollection offers: KJT -> dict of JaggedTensor, its configs and names."""

    @abstractmethod
    def forward(self, features: Any) -> Dict[str, JaggedTensor]: ...

    @abstractmethod
    def embedding_configs(self) -> List[Any]: ...

    @abstractmethod
    def need_indices(self) -> bool: ...

    @abstractmethod
    def embedding_dim(self) -> int: ...

    @abstractmethod
    def embedding_names_by_table(self) -> List[List[str]]: ...


# --- configuration and input checks ----------------------------------------------------------------
def table_dtype(config: Any, dtype: Any) -> np.dtype:
    """Storage dtype of a table: FP32 -> the module's dtype, BF16 -> ml_dtypes.bfloat16, any other
    data_type -> float16 (TorchRec stores every non-FP32 table as float16; recspec keeps BF16 as BF16)."""
    data_type = as_enum(DataType, config.data_type, f"table '{config.name}': data_type")
    if data_type is DataType.FP32:
        return np.dtype(dtype)
    if data_type is DataType.BF16:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float16)


def as_keyed_jagged_tensor(features: Any, who: str) -> KeyedJaggedTensor:
    """A refimpl KeyedJaggedTensor from one, or from any object with TorchRec's KJT accessors
    (keys, values, lengths, offsets, weights_or_none, stride), validated once."""
    if isinstance(features, KeyedJaggedTensor):
        return features
    for accessor in ("keys", "values", "lengths", "offsets", "weights_or_none"):
        if not callable(getattr(features, accessor, None)):
            raise TypeError(
                f"{who}: features expected a KeyedJaggedTensor (keys, values, lengths, offsets, "
                f"weights_or_none), got {type(features).__name__} without {accessor}()"
            )
    variable = getattr(features, "variable_stride_per_key", None)
    if callable(variable) and variable():
        raise NotImplementedError(
            f"{who}: variable batch size per key is not supported; features expected one batch size "
            "for every key, got variable_stride_per_key() == True"
        )
    offsets = features.offsets()
    stride = features.stride() if callable(getattr(features, "stride", None)) else None
    return KeyedJaggedTensor(
        list(features.keys()),
        features.values(),
        weights=features.weights_or_none(),
        lengths=features.lengths(),
        # TorchRec's empty KJT can hold offsets without a single entry; lengths then say it all.
        offsets=offsets if offsets is not None and np.size(as_numpy(offsets)) else None,
        stride=None if stride is None else int(stride),
    )


class _Slot(NamedTuple):
    """One (table, feature) lookup: table index and name, feature, output name, first column, width."""

    table: int
    table_name: str
    feature: str
    name: str
    column: int
    dim: int


class _Bag(NamedTuple):
    """A slot's input in the last forward: ids, per-feature offsets, weights, where the ids start in the KJT."""

    ids: Array
    offsets: Array
    weights: Optional[Array]
    start: int


class _TableCollection(Module):
    """Shared frame of EBC and EC: tables, slots, initialisation and per-feature input lookup."""

    _prefix = ""
    _who = ""

    def __init__(self, tables: Any, dtype: Any, rng: Optional[np.random.Generator]) -> None:
        super().__init__(dtype)
        self._tables = check_tables(tables, self._who)
        self._check_collection(self._tables)  # every check before the configs are touched
        self._rng = np.random.default_rng() if rng is None else rng
        self._acc = accumulation_dtype(self.dtype)
        for config in self._tables:
            if not config.feature_names:
                config.feature_names = [config.name]  # TorchRec mutates the config the same way
        self._names_by_table = get_embedding_names_by_table(self._tables)
        self._slots: List[_Slot] = []
        column = 0
        for t, config in enumerate(self._tables):
            for feature, name in zip(config.feature_names, self._names_by_table[t]):
                self._slots.append(_Slot(t, config.name, feature, name, column, config.embedding_dim))
                column += config.embedding_dim
        self._bags: Optional[List[_Bag]] = None
        self._input: Optional[KeyedJaggedTensor] = None

    def _check_collection(self, tables: List[Any]) -> None:
        """Checks of one kind of collection on top of check_tables."""

    def _key(self, t: int) -> str:
        return f"{self._prefix}.{self._tables[t].name}.weight"

    def _draw_normal(self, t: int) -> None:
        """W_t ~ N(0, 1): the table as created, before its init (nn.Embedding(Bag)'s draw in TorchRec)."""
        config = self._tables[t]
        shape = (config.num_embeddings, config.embedding_dim)
        W = self._rng.standard_normal(shape).astype(table_dtype(config, self.dtype))
        self.register_parameter(self._key(t), W)

    def _init_table(self, t: int, rng: np.random.Generator) -> None:
        """W_t <- init_fn(W_t) when given (in place, or its returned array), else W_t ~ U(min, max)."""
        config = self._tables[t]
        W = self.parameter(self._key(t))
        if config.init_fn is None:
            lo, hi = config.get_weight_init_min(), config.get_weight_init_max()
            self.register_parameter(self._key(t), rng.uniform(lo, hi, W.shape).astype(W.dtype))
            return
        result = config.init_fn(W)
        if result is not None and result is not W:
            result = as_numpy(result)
            if result.shape != W.shape:
                raise ValueError(
                    f"{self._who}: table '{config.name}': init_fn expected to return None or an array of "
                    f"shape {W.shape}, got shape {result.shape}"
                )
            self.register_parameter(self._key(t), result.astype(W.dtype))

    @property
    def device(self) -> str:
        """refimpl runs on the host; the device argument is accepted and ignored."""
        return "cpu"

    def _read_bags(self, features: Any) -> Tuple[KeyedJaggedTensor, List[_Bag]]:
        """Each slot's ids, offsets and weights from the input, ids checked against its table."""
        kjt = as_keyed_jagged_tensor(features, self._who)
        jt_dict = kjt.to_dict()
        start_of = kjt.offset_per_key()
        index = kjt.index_per_key()
        bags = []
        for slot in self._slots:
            if slot.feature not in jt_dict:
                raise MissingKeyError(
                    f"{self._who}: features expected key '{slot.feature}' (a feature of table "
                    f"'{slot.table_name}') among the input's keys {kjt.keys()}, got no such key"
                )
            jt = jt_dict[slot.feature]
            ids = jt.values()
            if ids.ndim != 1:
                raise ValueError(
                    f"{self._who}: feature '{slot.feature}' (table '{slot.table_name}'): ids expected a "
                    f"1-D array, got shape {ids.shape}"
                )
            validate_ids_in_range(ids, self._tables[slot.table].num_embeddings, slot.feature, slot.table_name)
            bags.append(_Bag(ids, jt.offsets(), jt.weights_or_none(), start_of[index[slot.feature]]))
        return kjt, bags

    def _require_forward(self) -> List[_Bag]:
        if self._bags is None:
            raise RuntimeError(f"{self._who}.backward: call forward first")
        return self._bags


# --- EmbeddingBagCollection ------------------------------------------------------------------------
class EmbeddingBagCollection(_TableCollection, EmbeddingBagCollectionInterface):
    """out[b, c_s : c_s + D_s] = pooled_embedding(W_{t_s}, bags of feature f_s)[b] for every slot s = (t_s, f_s)

    pooling per table: SUM (w_j = 1 unless is_weighted) or MEAN (the sum over the bag's length);
    an empty bag gives zeros. Shapes: features a KJT with B samples -> KeyedTensor(keys = embedding
    names, length_per_key = D_s, values (B, sum_s D_s)). KJT weights are ignored unless is_weighted.
    State: `embedding_bags.<table>.weight` (num_embeddings, D). Init, in TorchRec's order: W_t ~
    N(0, 1) for every table, then for every table init_fn(W_t) or U(min, max), drawn from `rng`.
    """

    _prefix = "embedding_bags"
    _who = "EmbeddingBagCollection"

    def __init__(
        self,
        tables: List[Any],
        is_weighted: bool = False,
        device: Any = None,
        *,
        dtype: Any = np.float64,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(tables, dtype, rng)
        self._is_weighted = bool(is_weighted)
        for t in range(len(self._tables)):
            self._draw_normal(t)
        self.reset_parameters()

    def _check_collection(self, tables: List[Any]) -> None:
        self._modes: List[str] = []
        for config in tables:
            pooling = as_enum(PoolingType, config.pooling, f"{self._who}: table '{config.name}': pooling")
            if pooling is PoolingType.NONE:
                raise ValueError(f"{self._who}: table '{config.name}': pooling expected SUM or MEAN, got NONE")
            self._modes.append(pooling.value)

    def is_weighted(self) -> bool:
        return self._is_weighted

    def embedding_bag_configs(self) -> List[Any]:
        """The configs given to the constructor (the same list object)."""
        return self._tables

    def reset_parameters(self, rng: Optional[np.random.Generator] = None) -> None:
        """W_t <- init_fn(W_t) or U(min, max) for every table in order (from `rng`, else the module's)."""
        for t in range(len(self._tables)):
            self._init_table(t, self._rng if rng is None else rng)

    def forward(self, features: Any) -> KeyedTensor:
        if not self._tables:
            raise ValueError(f"{self._who}: tables expected at least one table to look up, got none")
        kjt, bags = self._read_bags(features)
        if self._is_weighted and kjt.weights_or_none() is None:
            raise ValueError(
                f"{self._who}: features expected weights (the collection is_weighted=True), got a KJT without weights"
            )
        pooled = []
        for slot, bag in zip(self._slots, bags):
            weights = bag.weights if self._is_weighted else None
            W = self.parameter(self._key(slot.table))
            pooled.append(pooled_embedding(W, bag.ids, bag.offsets, weights, self._modes[slot.table], self._acc))
        self._input, self._bags = kjt, bags
        return KeyedTensor(
            [slot.name for slot in self._slots], [slot.dim for slot in self._slots], np.concatenate(pooled, axis=1)
        )

    def _row_grads(self, grad_output: Any) -> Iterator[Tuple[_Slot, _Bag, Array, Optional[Array]]]:
        """(slot, its input, dL/dW rows per id, dL/dw per id) for every slot of the last forward."""
        bags = self._require_forward()
        if isinstance(grad_output, Mapping):
            raise TypeError(f"{self._who}.backward: grad_output expected an array or a KeyedTensor, got a dict")
        if callable(getattr(grad_output, "values", None)):
            grad_output = grad_output.values()
        G = as_numpy(grad_output).astype(self._acc, copy=False)
        expected = (self._input.stride(), sum(slot.dim for slot in self._slots))
        if G.shape != expected:
            raise ValueError(f"{self._who}.backward: grad_output expected shape {expected}, got {G.shape}")
        for slot, bag in zip(self._slots, bags):
            weights = bag.weights if self._is_weighted else None
            W = self.parameter(self._key(slot.table))
            grad_e = G[:, slot.column : slot.column + slot.dim]
            mode = self._modes[slot.table]
            rows, grad_w = pooled_embedding_backward(grad_e, W, bag.ids, bag.offsets, weights, mode)
            yield slot, bag, rows, grad_w

    def _weights_grad(self) -> Optional[Array]:
        return np.zeros(self._input.values().shape[0], dtype=self._acc) if self._is_weighted else None

    def backward(self, grad_output: Any) -> Tuple[Optional[Array], Dict[str, Array]]:
        """(dL/d KJT weights aligned with its values, or None when unweighted; {state key: dL/dW dense}).

        grad_output: dL/d values of the output KeyedTensor (B, sum_s D_s), or that KeyedTensor."""
        grad_params = {
            self._key(t): np.zeros((c.num_embeddings, c.embedding_dim), dtype=self._acc)
            for t, c in enumerate(self._tables)
        }
        grad_weights = self._weights_grad()
        for slot, bag, rows, grad_w in self._row_grads(grad_output):
            num_embeddings = self._tables[slot.table].num_embeddings
            grad_params[self._key(slot.table)] += embedding_rows_to_dense(bag.ids, rows, num_embeddings)
            if grad_weights is not None:
                grad_weights[bag.start : bag.start + bag.ids.shape[0]] += grad_w
        return grad_weights, grad_params

    def sparse_backward(self, grad_output: Any) -> Tuple[Optional[Array], Dict[str, Tuple[Array, Array]]]:
        """As backward, with each table's gradient as (ids (n,), rows (n, D)): one row per looked-up id,
        repeats not summed (what refimpl.optim.apply_sparse_step takes)."""
        parts: Dict[str, Tuple[List[Array], List[Array]]] = {
            self._key(t): ([], []) for t in range(len(self._tables))
        }
        grad_weights = self._weights_grad()
        for slot, bag, rows, grad_w in self._row_grads(grad_output):
            ids_list, rows_list = parts[self._key(slot.table)]
            ids_list.append(bag.ids.astype(np.int64))
            rows_list.append(rows)
            if grad_weights is not None:
                grad_weights[bag.start : bag.start + bag.ids.shape[0]] += grad_w
        return grad_weights, {key: _joined(self, key, i, r) for key, (i, r) in parts.items()}


def _joined(module: _TableCollection, key: str, ids: List[Array], rows: List[Array]) -> Tuple[Array, Array]:
    D = module.parameter(key).shape[1]
    if not ids:
        return np.empty(0, dtype=np.int64), np.empty((0, D), dtype=module._acc)
    return np.concatenate(ids), np.concatenate(rows, axis=0)


# --- EmbeddingCollection ---------------------------------------------------------------------------
class EmbeddingCollection(_TableCollection, EmbeddingCollectionInterface):
    """out[name_s] = JaggedTensor(values = sequence_embedding(W_{t_s}, ids of f_s), lengths of f_s)

    Every slot s = (t_s, f_s) gives its ids' rows in value order, with the feature's per-sample
    lengths and, when need_indices, its ids as the JaggedTensor's weights. All tables share D.
    Shapes: features a KJT -> {name: JaggedTensor(values (n_f, D), lengths (B,))}.
    State: `embeddings.<table>.weight` (num_embeddings, D). Init, in TorchRec's interleaved order:
    for each table, W_t ~ N(0, 1) then init_fn(W_t) or U(min, max), drawn from `rng`.
    use_gather_select(_per_sharding) are kept for TorchRec's signature; one lookup serves both.
    """

    _prefix = "embeddings"
    _who = "EmbeddingCollection"

    def __init__(
        self,
        tables: List[Any],
        device: Any = None,
        need_indices: bool = False,
        use_gather_select: bool = False,
        use_gather_select_per_sharding: Optional[Dict[str, bool]] = None,
        *,
        dtype: Any = np.float64,
        rng: Optional[np.random.Generator] = None,
    ) -> None:
        super().__init__(tables, dtype, rng)
        self._need_indices = bool(need_indices)
        self._use_gather_select = use_gather_select
        self._use_gather_select_per_sharding = use_gather_select_per_sharding
        for t in range(len(self._tables)):
            self._draw_normal(t)
            self._init_table(t, self._rng)

    def _check_collection(self, tables: List[Any]) -> None:
        for config in tables:
            if config.embedding_dim != tables[0].embedding_dim:
                raise ValueError(
                    f"{self._who}: All tables in a EmbeddingCollection are required to have same embedding "
                    f"dimension; table '{config.name}' expected embedding_dim {tables[0].embedding_dim} (that of "
                    f"'{tables[0].name}'), got {config.embedding_dim}"
                )

    def need_indices(self) -> bool:
        return self._need_indices

    def embedding_dim(self) -> int:
        """The D every table shares; -1 without tables."""
        return self._tables[0].embedding_dim if self._tables else -1

    def embedding_configs(self) -> List[Any]:
        """The configs given to the constructor (the same list object)."""
        return self._tables

    def embedding_names_by_table(self) -> List[List[str]]:
        return self._names_by_table

    def use_gather_select(self) -> bool:
        return self._use_gather_select

    def reset_parameters(self, rng: Optional[np.random.Generator] = None) -> None:
        """W_t <- init_fn(W_t) or U(min, max) for every table in order (from `rng`, else the module's)."""
        for t in range(len(self._tables)):
            self._init_table(t, self._rng if rng is None else rng)

    def forward(self, features: Any) -> Dict[str, JaggedTensor]:
        if not self._tables:
            return {}
        kjt, bags = self._read_bags(features)
        out: Dict[str, JaggedTensor] = {}
        for slot, bag in zip(self._slots, bags):
            e = sequence_embedding(self.parameter(self._key(slot.table)), bag.ids, self._acc)
            lengths = np.diff(bag.offsets)
            out[slot.name] = JaggedTensor(e, weights=bag.ids if self._need_indices else None, lengths=lengths)
        self._input, self._bags = kjt, bags
        return out

    def _slot_grads(self, grad_output: Any) -> Iterator[Tuple[_Slot, _Bag, Array]]:
        """(slot, its input, dL/de (n, D)) for every slot that grad_output names."""
        bags = self._require_forward()
        if not isinstance(grad_output, Mapping):
            raise TypeError(
                f"{self._who}.backward: grad_output expected a dict embedding name -> array (n, D), "
                f"got {type(grad_output).__name__}"
            )
        names = [slot.name for slot in self._slots]
        for name in grad_output:
            if name not in names:
                raise missing_key(name, names, f"{self._who}.backward: grad_output")
        for slot, bag in zip(self._slots, bags):
            if slot.name not in grad_output:
                continue  # an output the loss does not read contributes nothing
            g = grad_output[slot.name]
            if callable(getattr(g, "values", None)):
                g = g.values()
            g = as_numpy(g).astype(self._acc, copy=False)
            expected = (bag.ids.shape[0], slot.dim)
            if g.shape != expected:
                raise ValueError(
                    f"{self._who}.backward: grad_output['{slot.name}'] expected shape {expected}, got {g.shape}"
                )
            yield slot, bag, g

    def backward(self, grad_output: Mapping[str, Any]) -> Tuple[None, Dict[str, Array]]:
        """(None: ids have no gradient; {state key: dL/dW = embedding_rows_to_dense(ids, dL/de)}).

        grad_output: embedding name -> dL/d values (n, D) (or a JaggedTensor holding it); names left
        out contribute nothing."""
        grad_params = {
            self._key(t): np.zeros((c.num_embeddings, c.embedding_dim), dtype=self._acc)
            for t, c in enumerate(self._tables)
        }
        for slot, bag, g in self._slot_grads(grad_output):
            num_embeddings = self._tables[slot.table].num_embeddings
            grad_params[self._key(slot.table)] += embedding_rows_to_dense(bag.ids, g, num_embeddings)
        return None, grad_params

    def sparse_backward(self, grad_output: Mapping[str, Any]) -> Tuple[None, Dict[str, Tuple[Array, Array]]]:
        """As backward, with each table's gradient as (ids (n,), rows (n, D)), repeats not summed."""
        parts: Dict[str, Tuple[List[Array], List[Array]]] = {
            self._key(t): ([], []) for t in range(len(self._tables))
        }
        for slot, bag, g in self._slot_grads(grad_output):
            ids_list, rows_list = parts[self._key(slot.table)]
            ids_list.append(bag.ids.astype(np.int64))
            rows_list.append(g)
        return None, {key: _joined(self, key, i, r) for key, (i, r) in parts.items()}
