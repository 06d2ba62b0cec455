"""accel.modules.embedding_configs: refimpl's config classes, torch dtype conversions (semantics.md 6.3)."""

import pytest
import torch

import refimpl.modules.embedding_configs as ref
from accel.modules import embedding_configs as cfg
from accel.modules.embedding_configs import DataType, data_type_to_dtype, dtype_to_data_type

TORCH_TABLE = {
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


def test_config_classes_are_refimpls():
    # one config object serves both packages
    for name in ["DataType", "PoolingType", "ShardingType", "QuantConfig", "BaseEmbeddingConfig",
                 "EmbeddingBagConfig", "EmbeddingConfig", "EmbeddingTableConfig", "PoolingMode",
                 "DATA_TYPE_NUM_BITS", "data_type_to_sparse_type", "pooling_type_to_pooling_mode",
                 "pooling_type_to_str"]:
        assert getattr(cfg, name) is getattr(ref, name), name
    import accel

    assert accel.EmbeddingBagConfig is ref.EmbeddingBagConfig
    assert accel.PoolingType is ref.PoolingType


@pytest.mark.parametrize("data_type", list(DataType), ids=str)
def test_data_type_to_dtype_round_trip(data_type):
    dtype = data_type_to_dtype(data_type)
    assert dtype == TORCH_TABLE[data_type]
    assert dtype_to_data_type(dtype) is data_type


def test_bf16_is_torch_bfloat16():
    # D31: the conversion names bfloat16, and accel stores BF16 tables in it (TorchRec: float16)
    assert data_type_to_dtype(DataType.BF16) is torch.bfloat16
    assert data_type_to_dtype("BF16") is torch.bfloat16


def test_quantised_int8_dtypes_map_to_int8():
    assert dtype_to_data_type(torch.qint8) is DataType.INT8
    assert dtype_to_data_type(torch.quint8) is DataType.INT8


@pytest.mark.parametrize("dtype", [torch.float64, torch.bool, torch.complex64, torch.int16])
def test_other_dtypes_raise_value_error(dtype):
    with pytest.raises(ValueError, match=rf"Invalid data type: dtype expected one of .* got {dtype}"):
        dtype_to_data_type(dtype)


def test_non_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="dtype: expected a torch.dtype, got 'float32'"):
        dtype_to_data_type("float32")
    with pytest.raises(TypeError, match="data_type: expected a DataType .* got dtype"):
        data_type_to_dtype(torch.float32)


def test_conversions_match_torchrec():
    tr = pytest.importorskip("torchrec.modules.embedding_configs", reason="TorchRec is optional; interop check")
    for data_type in tr.DataType:
        assert data_type_to_dtype(data_type) == tr.data_type_to_dtype(data_type), data_type
    for dtype in [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.int8, torch.qint8,
                  torch.quint8, torch.uint8, torch.quint4x2, torch.quint2x4, torch.float8_e4m3fn]:
        assert dtype_to_data_type(dtype).value == tr.dtype_to_data_type(dtype).value, dtype
    with pytest.raises(Exception, match="Invalid data type"):  # TorchRec's bare Exception, our ValueError
        tr.dtype_to_data_type(torch.float64)
    with pytest.raises(ValueError, match="Invalid data type"):
        dtype_to_data_type(torch.float64)
