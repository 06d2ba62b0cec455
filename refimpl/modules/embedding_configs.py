"""Embedding table configuration: `torchrec.modules.embedding_configs` as pure-Python enums and
dataclasses, plus the NumPy dtype conversions.

The dataclasses have TorchRec 1.8's fields, positional order and defaults (semantics.md 6.2), so a
config reads the same in both libraries. One deliberate difference (D12): `init_fn` stays None unless
given, instead of being filled with a `partial(uniform_, a=min, b=max)` at construction; the modules
draw U(get_weight_init_min(), get_weight_init_max()) themselves, and two configs with equal fields
compare equal. accel re-exports these classes; only the dtype conversions differ (torch dtypes there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum, IntEnum, unique
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Type, TypeVar

import ml_dtypes
import numpy as np


class _ByValue(Enum):
    """An enum that also converts from another library's enum with the same values
    (`PoolingType(torchrec.modules.embedding_configs.PoolingType.MEAN)` is `PoolingType.MEAN`)."""

    @classmethod
    def _missing_(cls, value: object) -> Optional["_ByValue"]:
        if isinstance(value, Enum) and type(value).__name__ == cls.__name__:
            for member in cls:
                if member.value == value.value:
                    return member
        return None


@unique
class DataType(_ByValue):
    """Storage type of a table's rows (TorchRec's `torchrec.types.DataType`); `str()` is the value."""

    FP32 = "FP32"
    FP16 = "FP16"
    BF16 = "BF16"
    INT64 = "INT64"
    INT32 = "INT32"
    INT8 = "INT8"
    UINT8 = "UINT8"
    INT4 = "INT4"
    INT2 = "INT2"
    NFP8 = "NFP8"

    def __str__(self) -> str:
        return self.value


@unique
class PoolingType(_ByValue):
    """How a bag of rows becomes one vector: SUM, MEAN, or NONE (no pooling, sequence lookups)."""

    SUM = "SUM"
    MEAN = "MEAN"
    NONE = "NONE"


@unique
class ShardingType(_ByValue):
    """TorchRec's well-known sharding schemes (lower-case values); unsharded modules only read
    ROW_WISE / TABLE_ROW_WISE, in pooling_type_to_pooling_mode."""

    DATA_PARALLEL = "data_parallel"
    TABLE_WISE = "table_wise"
    COLUMN_WISE = "column_wise"
    ROW_WISE = "row_wise"
    TABLE_ROW_WISE = "table_row_wise"
    TABLE_COLUMN_WISE = "table_column_wise"


class PoolingMode(IntEnum):
    """FBGEMM's pooling mode numbering (SUM 0, MEAN 1, NONE 2); an int, so kernels take it as is."""

    SUM = 0
    MEAN = 1
    NONE = 2


DATA_TYPE_NUM_BITS: Dict[DataType, int] = {
    DataType.FP32: 32,
    DataType.FP16: 16,
    DataType.BF16: 16,
    DataType.INT8: 8,
    DataType.UINT8: 8,
    DataType.NFP8: 8,
    DataType.INT4: 4,
    DataType.INT2: 2,
}


class QuantConfig(NamedTuple):
    """Quantisation observers for activations and weights (torch quantisation objects in TorchRec;
    recspec stores whatever is given), with optional per-table weight dtypes."""

    activation: Any
    weight: Any
    per_table_weight_dtype: Optional[Dict[str, Any]] = None


@dataclass
class BaseEmbeddingConfig:
    """One embedding table W of shape (num_embeddings, embedding_dim), read by `feature_names`.

    Default initialisation: W ~ U(get_weight_init_min(), get_weight_init_max()), the bounds being
    -+sqrt(1 / num_embeddings) unless given. `init_fn`, when given, is applied to the table's weight
    in place (a NumPy array in refimpl, a torch tensor in accel) instead; recspec never fills it in
    (D12). Fields, order and defaults: TorchRec 1.8 (semantics.md 6.2); the fields after `need_pos`
    configure sharded and virtual tables and are carried, not used, by the unsharded modules.
    """

    num_embeddings: int
    embedding_dim: int
    name: str = ""
    data_type: DataType = DataType.FP32
    feature_names: List[str] = field(default_factory=list)
    weight_init_max: Optional[float] = None
    weight_init_min: Optional[float] = None
    num_embeddings_post_pruning: Optional[int] = None
    init_fn: Optional[Callable[[Any], Any]] = None
    need_pos: bool = False
    input_dim: Optional[int] = None
    total_num_buckets: Optional[int] = None
    use_virtual_table: bool = False
    virtual_table_eviction_policy: Optional[Any] = None
    enable_embedding_update: bool = False
    stash_weights: bool = False

    def __post_init__(self) -> None:
        # TorchRec derives the default bounds here (ZeroDivisionError for num_embeddings=0);
        # recspec rejects the same configs, with a message that says which field is wrong.
        if self.init_fn is None:
            self.get_weight_init_max()
            self.get_weight_init_min()

    def _default_bound(self, which: str) -> float:
        if isinstance(self.num_embeddings, bool) or not isinstance(self.num_embeddings, (int, np.integer)):
            raise TypeError(
                f"table '{self.name}': num_embeddings expected an int, got {type(self.num_embeddings).__name__}"
            )
        if self.num_embeddings <= 0:
            raise ValueError(
                f"table '{self.name}': num_embeddings expected a positive row count to derive the default "
                f"{which} = sqrt(1 / num_embeddings), got {self.num_embeddings}; give {which} or init_fn"
            )
        return math.sqrt(1 / self.num_embeddings)

    def get_weight_init_max(self) -> float:
        """weight_init_max if given, else sqrt(1 / num_embeddings)."""
        if self.weight_init_max is None:
            return self._default_bound("weight_init_max")
        return self.weight_init_max

    def get_weight_init_min(self) -> float:
        """weight_init_min if given, else -sqrt(1 / num_embeddings)."""
        if self.weight_init_min is None:
            return -self._default_bound("weight_init_min")
        return self.weight_init_min

    def num_features(self) -> int:
        """len(feature_names)."""
        return len(self.feature_names)


@dataclass
class EmbeddingBagConfig(BaseEmbeddingConfig):
    """A pooled table (EmbeddingBagCollection): each bag of ids becomes one SUM or MEAN row."""

    pooling: PoolingType = PoolingType.SUM


@dataclass
class EmbeddingConfig(BaseEmbeddingConfig):
    """A sequence table (EmbeddingCollection): one row per id, no pooling."""


@dataclass
class EmbeddingTableConfig(BaseEmbeddingConfig):
    """A table as the sharding planner sees it: pooling, weighting and output names included."""

    pooling: PoolingType = PoolingType.SUM
    is_weighted: bool = False
    has_feature_processor: bool = False
    embedding_names: List[str] = field(default_factory=list)


# --- conversions -------------------------------------------------------------------------------
E = TypeVar("E", bound=Enum)


def as_enum(cls: Type[E], value: object, argument: str) -> E:
    """`value` as a member of `cls`: a member, its value (e.g. "SUM"), or another library's member
    of the same-named enum (TorchRec's); anything else is a TypeError or ValueError naming `argument`."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        pass
    expected = ", ".join(f"{cls.__name__}.{m.name}" for m in cls)
    if isinstance(value, (str, Enum)):
        raise ValueError(f"{argument}: expected one of {expected}, got {value!r}")
    raise TypeError(f"{argument}: expected a {cls.__name__} ({expected}), got {type(value).__name__}")


# NumPy has no 4/2-bit or float8 dtypes of its own; ml_dtypes provides them, as it does bfloat16.
# TorchRec's INT4/INT2 are torch's unsigned packed quint4x2/quint2x4, hence uint4/uint2 here.
_NUMPY_DTYPES: Dict[DataType, np.dtype] = {
    DataType.FP32: np.dtype(np.float32),
    DataType.FP16: np.dtype(np.float16),
    DataType.BF16: np.dtype(ml_dtypes.bfloat16),
    DataType.INT64: np.dtype(np.int64),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT8: np.dtype(np.int8),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.INT4: np.dtype(ml_dtypes.uint4),
    DataType.INT2: np.dtype(ml_dtypes.uint2),
    DataType.NFP8: np.dtype(ml_dtypes.float8_e4m3fn),
}
_DATA_TYPES_BY_NUMPY: Dict[np.dtype, DataType] = {d: t for t, d in _NUMPY_DTYPES.items()}

_SPARSE_TYPES: Dict[DataType, str] = {
    DataType.FP32: "fp32",
    DataType.FP16: "fp16",
    DataType.BF16: "bf16",
    DataType.INT8: "int8",
    DataType.UINT8: "int8",
    DataType.INT4: "int4",
    DataType.INT2: "int2",
    DataType.NFP8: "nfp8",
}


def data_type_to_dtype(data_type: DataType) -> np.dtype:
    """DataType -> NumPy dtype: FP32 float32, FP16 float16, BF16 ml_dtypes.bfloat16 (a real
    bfloat16, D31), INT64 int64, INT32 int32, INT8 int8, UINT8 uint8, INT4 uint4, INT2 uint2,
    NFP8 float8_e4m3fn (the last three from ml_dtypes)."""
    return _NUMPY_DTYPES[as_enum(DataType, data_type, "data_type")]


def dtype_to_data_type(dtype: Any) -> DataType:
    """NumPy dtype (or anything np.dtype takes) -> DataType, the inverse of data_type_to_dtype.
    Other dtypes (float64, bool, ...) raise ValueError where TorchRec raises a bare Exception."""
    try:
        key = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected a NumPy dtype, got {dtype!r} ({type(dtype).__name__})") from None
    if key not in _DATA_TYPES_BY_NUMPY:
        supported = ", ".join(str(d) for d in _DATA_TYPES_BY_NUMPY)
        raise ValueError(f"Invalid data type: dtype expected one of {supported}, got {key}")
    return _DATA_TYPES_BY_NUMPY[key]


def data_type_to_sparse_type(data_type: DataType) -> str:
    """DataType -> the value of FBGEMM's SparseType ("fp32", "fp16", "bf16", "int8" for INT8 and
    UINT8, "int4", "int2", "nfp8"); `fbgemm_gpu.split_embedding_configs.SparseType(s)` is TorchRec's
    result. INT64 and INT32 have none: ValueError."""
    member = as_enum(DataType, data_type, "data_type")
    if member not in _SPARSE_TYPES:
        raise ValueError(
            f"Invalid DataType: data_type expected one of {', '.join(str(t) for t in _SPARSE_TYPES)}, got {member}"
        )
    return _SPARSE_TYPES[member]


def pooling_type_to_pooling_mode(
    pooling_type: PoolingType, sharding_type: Optional[ShardingType] = None
) -> PoolingMode:
    """SUM -> PoolingMode.SUM, NONE -> PoolingMode.NONE, MEAN -> PoolingMode.MEAN except under
    ROW_WISE / TABLE_ROW_WISE sharding, where each shard sums and the division happens later
    (PoolingMode.SUM)."""
    pooling = as_enum(PoolingType, pooling_type, "pooling_type")
    sharding = None if sharding_type is None else as_enum(ShardingType, sharding_type, "sharding_type")
    if pooling is PoolingType.MEAN and sharding in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE):
        return PoolingMode.SUM
    return PoolingMode[pooling.name]


def pooling_type_to_str(pooling_type: PoolingType) -> str:
    """SUM -> "sum", MEAN -> "mean" (torch's EmbeddingBag mode names); NONE has none: ValueError."""
    pooling = as_enum(PoolingType, pooling_type, "pooling_type")
    if pooling is PoolingType.NONE:
        raise ValueError(
            f"Unsupported pooling type: pooling_type expected PoolingType.SUM or PoolingType.MEAN, got {pooling}"
        )
    return pooling.value.lower()


# --- collection-level checks (shared by refimpl and accel: configuration, not maths) ----------
def check_tables(tables: Any, who: str) -> List[Any]:
    """A list of configs with unique non-empty names (no '.', a state_dict key part), positive sizes
    and no feature twice in one table."""
    if isinstance(tables, (str, bytes)) or not isinstance(tables, (list, tuple)):
        raise TypeError(f"{who}: tables expected a list of embedding configs, got {type(tables).__name__}")
    seen: Dict[str, int] = {}
    for i, config in enumerate(tables):
        name = getattr(config, "name", None)
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"{who}: tables[{i}].name expected a non-empty str without '.' (a state_dict key part), got {name!r}"
            )
        if name in seen:
            raise ValueError(f"{who}: Duplicate table name '{name}' (tables[{seen[name]}] and tables[{i}])")
        seen[name] = i
        for size_field in ("num_embeddings", "embedding_dim"):
            value = getattr(config, size_field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{who}: table '{name}': {size_field} expected a positive int, got {value!r}")
        features = list(config.feature_names)
        for feature in features:
            if not isinstance(feature, str):
                raise TypeError(f"{who}: table '{name}': feature_names expected str entries, got {feature!r}")
            if features.count(feature) > 1:
                raise ValueError(
                    f"{who}: table '{name}': feature_names expected unique names, got '{feature}' "
                    f"{features.count(feature)} times"
                )
    return tables
