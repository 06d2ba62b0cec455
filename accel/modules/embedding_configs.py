"""Embedding table configuration for accel: refimpl's pure-Python enums and dataclasses, with the
dtype conversions of `torchrec.modules.embedding_configs` in torch dtypes.

The config classes are shared with refimpl (one object works in both packages); only
data_type_to_dtype / dtype_to_data_type differ, mapping DataType to torch dtypes as TorchRec does.
BF16 is torch.bfloat16 here, and accel's collections store BF16 tables in it (TorchRec stores every
non-FP32 table as float16, D31).
"""

from __future__ import annotations

from typing import Dict

import torch

from refimpl.modules.embedding_configs import (
    DATA_TYPE_NUM_BITS,
    BaseEmbeddingConfig,
    DataType,
    EmbeddingBagConfig,
    EmbeddingConfig,
    EmbeddingTableConfig,
    PoolingMode,
    PoolingType,
    QuantConfig,
    ShardingType,
    as_enum,
    data_type_to_sparse_type,
    pooling_type_to_pooling_mode,
    pooling_type_to_str,
)

__all__ = [
    "DATA_TYPE_NUM_BITS",
    "BaseEmbeddingConfig",
    "DataType",
    "EmbeddingBagConfig",
    "EmbeddingConfig",
    "EmbeddingTableConfig",
    "PoolingMode",
    "PoolingType",
    "QuantConfig",
    "ShardingType",
    "as_enum",
    "data_type_to_dtype",
    "data_type_to_sparse_type",
    "dtype_to_data_type",
    "pooling_type_to_pooling_mode",
    "pooling_type_to_str",
]

_TORCH_DTYPES: Dict[DataType, torch.dtype] = {
    DataType.FP32: torch.float32,
    DataType.FP16: torch.float16,
    DataType.BF16: torch.bfloat16,
    DataType.INT64: torch.int64,
    DataType.INT32: torch.int32,
    DataType.INT8: torch.int8,
    DataType.UINT8: torch.uint8,
    DataType.INT4: torch.quint4x2,
    DataType.INT2: torch.quint2x4,
    DataType.NFP8: torch.float8_e4m3fn,
}
_DATA_TYPES_BY_TORCH: Dict[torch.dtype, DataType] = {d: t for t, d in _TORCH_DTYPES.items()}
# Quantised int8 tensors are INT8 tables too (TorchRec's rule), though INT8 converts back to int8.
_DATA_TYPES_BY_TORCH[torch.qint8] = DataType.INT8
_DATA_TYPES_BY_TORCH[torch.quint8] = DataType.INT8


def data_type_to_dtype(data_type: DataType) -> torch.dtype:
    """DataType -> torch dtype: FP32 float32, FP16 float16, BF16 bfloat16, INT64 int64, INT32 int32,
    INT8 int8, UINT8 uint8, INT4 quint4x2, INT2 quint2x4, NFP8 float8_e4m3fn (TorchRec's table)."""
    return _TORCH_DTYPES[as_enum(DataType, data_type, "data_type")]


def dtype_to_data_type(dtype: torch.dtype) -> DataType:
    """torch dtype -> DataType, the inverse of data_type_to_dtype, with qint8 and quint8 -> INT8.
    Other dtypes (float64, bool, ...) raise ValueError where TorchRec raises a bare Exception."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r} ({type(dtype).__name__})")
    if dtype not in _DATA_TYPES_BY_TORCH:
        supported = ", ".join(str(d) for d in _DATA_TYPES_BY_TORCH)
        raise ValueError(f"Invalid data type: dtype expected one of {supported}, got {dtype}")
    return _DATA_TYPES_BY_TORCH[dtype]
