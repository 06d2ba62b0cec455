"""refimpl.modules.embedding_configs: TorchRec 1.8's fields, defaults and conversions (semantics.md 6)."""

import dataclasses
import math
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

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
    data_type_to_dtype,
    data_type_to_sparse_type,
    dtype_to_data_type,
    pooling_type_to_pooling_mode,
    pooling_type_to_str,
)

REQUIRED = object()

# semantics.md 6.2, field order = positional order
BASE_FIELDS = [
    ("num_embeddings", REQUIRED),
    ("embedding_dim", REQUIRED),
    ("name", ""),
    ("data_type", DataType.FP32),
    ("feature_names", []),
    ("weight_init_max", None),
    ("weight_init_min", None),
    ("num_embeddings_post_pruning", None),
    ("init_fn", None),
    ("need_pos", False),
    ("input_dim", None),
    ("total_num_buckets", None),
    ("use_virtual_table", False),
    ("virtual_table_eviction_policy", None),
    ("enable_embedding_update", False),
    ("stash_weights", False),
]
EXPECTED_FIELDS = {
    BaseEmbeddingConfig: BASE_FIELDS,
    EmbeddingBagConfig: BASE_FIELDS + [("pooling", PoolingType.SUM)],
    EmbeddingConfig: BASE_FIELDS,
    EmbeddingTableConfig: BASE_FIELDS
    + [("pooling", PoolingType.SUM), ("is_weighted", False), ("has_feature_processor", False), ("embedding_names", [])],
}


def field_defaults(cls):
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out.append((f.name, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            out.append((f.name, f.default_factory()))
        else:
            out.append((f.name, REQUIRED))
    return out


@pytest.mark.parametrize("cls", list(EXPECTED_FIELDS), ids=lambda c: c.__name__)
def test_fields_defaults_and_positional_order(cls):
    assert field_defaults(cls) == EXPECTED_FIELDS[cls]
    values = [f"v{i}" for i in range(len(EXPECTED_FIELDS[cls]))]
    values[0], values[1], values[8] = 10, 4, (lambda w: w)  # init_fn given: no default bounds needed
    config = cls(*values)
    assert [getattr(config, name) for name, _ in EXPECTED_FIELDS[cls]] == values


def test_list_defaults_are_not_shared():
    a, b = EmbeddingTableConfig(4, 2), EmbeddingTableConfig(4, 2)
    a.feature_names.append("f")
    a.embedding_names.append("f")
    assert b.feature_names == [] and b.embedding_names == []


def test_page_field_pruning_indices_remapping_is_gone():
    # D12: the page's 8th field was replaced by num_embeddings_post_pruning in TorchRec 1.8.
    with pytest.raises(TypeError, match="pruning_indices_remapping"):
        EmbeddingBagConfig(10, 4, pruning_indices_remapping=None)


def test_weight_init_bounds_default_and_given():
    c = EmbeddingBagConfig(10, 4)
    assert c.get_weight_init_max() == math.sqrt(1 / 10)
    assert c.get_weight_init_min() == -math.sqrt(1 / 10)
    # each bound independently; an explicit 0.0 is kept (a given value, not a missing one)
    c = EmbeddingBagConfig(25, 4, weight_init_max=0.0)
    assert c.get_weight_init_max() == 0.0
    assert c.get_weight_init_min() == -0.2
    c = EmbeddingBagConfig(25, 4, weight_init_min=-3.0)
    assert (c.get_weight_init_min(), c.get_weight_init_max()) == (-3.0, 0.2)


def test_num_features():
    assert EmbeddingConfig(3, 2, feature_names=["a", "b", "a"]).num_features() == 3
    assert EmbeddingConfig(3, 2).num_features() == 0


def test_init_fn_stays_none_and_equal_configs_compare_equal():
    # D12: TorchRec freezes a partial into init_fn, so equal fields compare unequal there.
    a = EmbeddingBagConfig(10, 4, name="t", feature_names=["f"])
    b = EmbeddingBagConfig(10, 4, name="t", feature_names=["f"])
    assert a.init_fn is None
    assert a == b
    assert a != EmbeddingBagConfig(10, 4, name="t", feature_names=["f"], pooling=PoolingType.MEAN)


@pytest.mark.parametrize("num_embeddings", [0, -3])
def test_non_positive_num_embeddings_without_bounds_is_a_value_error(num_embeddings):
    with pytest.raises(ValueError, match=rf"table 't': num_embeddings expected a positive .* got {num_embeddings}"):
        EmbeddingBagConfig(num_embeddings, 4, name="t")


def test_zero_rows_with_explicit_bounds_or_init_fn_is_accepted():
    c = EmbeddingBagConfig(0, 4, weight_init_max=0.5, weight_init_min=-0.5)
    assert (c.get_weight_init_min(), c.get_weight_init_max()) == (-0.5, 0.5)
    c = EmbeddingConfig(0, 4, name="t", init_fn=lambda w: w)
    with pytest.raises(ValueError, match="num_embeddings expected a positive row count .* got 0"):
        c.get_weight_init_max()


def test_num_embeddings_type_error():
    with pytest.raises(TypeError, match="num_embeddings expected an int, got str"):
        EmbeddingBagConfig("10", 4)


def test_enum_values_and_str():
    assert [m.value for m in DataType] == [
        "FP32", "FP16", "BF16", "INT64", "INT32", "INT8", "UINT8", "INT4", "INT2", "NFP8"
    ]
    assert all(str(m) == m.value for m in DataType)
    assert [m.value for m in PoolingType] == ["SUM", "MEAN", "NONE"]
    assert [m.value for m in ShardingType] == [
        "data_parallel", "table_wise", "column_wise", "row_wise", "table_row_wise", "table_column_wise"
    ]
    assert [(m.name, int(m)) for m in PoolingMode] == [("SUM", 0), ("MEAN", 1), ("NONE", 2)]


def test_data_type_num_bits():
    assert DATA_TYPE_NUM_BITS == {
        DataType.FP32: 32, DataType.FP16: 16, DataType.BF16: 16, DataType.INT8: 8,
        DataType.UINT8: 8, DataType.NFP8: 8, DataType.INT4: 4, DataType.INT2: 2,
    }


def test_quant_config():
    q = QuantConfig("act", "w")
    assert q._fields == ("activation", "weight", "per_table_weight_dtype")
    assert (q.activation, q.weight, q.per_table_weight_dtype) == ("act", "w", None)


NUMPY_TABLE = {
    DataType.FP32: np.float32,
    DataType.FP16: np.float16,
    DataType.BF16: ml_dtypes.bfloat16,
    DataType.INT64: np.int64,
    DataType.INT32: np.int32,
    DataType.INT8: np.int8,
    DataType.UINT8: np.uint8,
    DataType.INT4: ml_dtypes.uint4,
    DataType.INT2: ml_dtypes.uint2,
    DataType.NFP8: ml_dtypes.float8_e4m3fn,
}


@pytest.mark.parametrize("data_type", list(DataType), ids=str)
def test_data_type_to_dtype_round_trip(data_type):
    dtype = data_type_to_dtype(data_type)
    assert dtype == np.dtype(NUMPY_TABLE[data_type])
    assert dtype_to_data_type(dtype) is data_type
    assert dtype_to_data_type(dtype.name) is data_type


def test_bf16_is_a_real_bfloat16():
    # D31: TorchRec's collections store BF16 tables as float16; recspec keeps bfloat16.
    dtype = data_type_to_dtype(DataType.BF16)
    assert dtype == np.dtype(ml_dtypes.bfloat16) and dtype != np.dtype(np.float16)
    assert np.array(1 + 2**-8, dtype=np.float32).astype(dtype) == 1.0  # 8 mantissa bits, not 10


@pytest.mark.parametrize("dtype", [np.float64, np.bool_, np.uint16, np.complex64])
def test_dtype_to_data_type_rejects_other_dtypes(dtype):
    with pytest.raises(ValueError, match=rf"Invalid data type: dtype expected one of .* got {np.dtype(dtype)}"):
        dtype_to_data_type(dtype)


def test_dtype_to_data_type_rejects_non_dtypes():
    with pytest.raises(TypeError, match="dtype: expected a NumPy dtype, got"):
        dtype_to_data_type(object())


SPARSE_TABLE = {
    DataType.FP32: "fp32", DataType.FP16: "fp16", DataType.BF16: "bf16", DataType.INT8: "int8",
    DataType.UINT8: "int8", DataType.INT4: "int4", DataType.INT2: "int2", DataType.NFP8: "nfp8",
}


@pytest.mark.parametrize("data_type", list(DataType), ids=str)
def test_data_type_to_sparse_type(data_type):
    if data_type in SPARSE_TABLE:
        assert data_type_to_sparse_type(data_type) == SPARSE_TABLE[data_type]
    else:
        with pytest.raises(ValueError, match=rf"Invalid DataType: data_type expected .* got {data_type}"):
            data_type_to_sparse_type(data_type)


@pytest.mark.parametrize("sharding", [None] + list(ShardingType), ids=str)
def test_pooling_type_to_pooling_mode(sharding):
    assert pooling_type_to_pooling_mode(PoolingType.SUM, sharding) is PoolingMode.SUM
    assert pooling_type_to_pooling_mode(PoolingType.NONE, sharding) is PoolingMode.NONE
    row_wise = sharding in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)
    expected = PoolingMode.SUM if row_wise else PoolingMode.MEAN
    assert pooling_type_to_pooling_mode(PoolingType.MEAN, sharding) is expected
    assert pooling_type_to_pooling_mode(PoolingType.MEAN) == 1


def test_pooling_type_to_str():
    assert pooling_type_to_str(PoolingType.SUM) == "sum"
    assert pooling_type_to_str(PoolingType.MEAN) == "mean"
    with pytest.raises(ValueError, match="Unsupported pooling type: pooling_type expected .* got PoolingType.NONE"):
        pooling_type_to_str(PoolingType.NONE)


def test_as_enum_accepts_values_and_names_the_argument():
    assert as_enum(PoolingType, "MEAN", "pooling") is PoolingType.MEAN
    assert pooling_type_to_str("SUM") == "sum"
    with pytest.raises(ValueError, match=r"pooling_type: expected one of PoolingType.SUM, .* got 'max'"):
        pooling_type_to_str("max")
    with pytest.raises(TypeError, match=r"data_type: expected a DataType .* got int"):
        data_type_to_dtype(3)
    with pytest.raises(ValueError, match=r"sharding_type: expected one of ShardingType.DATA_PARALLEL.* got 'rw'"):
        pooling_type_to_pooling_mode(PoolingType.MEAN, "rw")


def test_refimpl_configs_never_import_torch():
    code = "import sys, refimpl.modules.embedding_configs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torchrec_enums_convert_by_value():
    tr = pytest.importorskip("torchrec.modules.embedding_configs", reason="TorchRec is optional; interop check")
    assert PoolingType(tr.PoolingType.MEAN) is PoolingType.MEAN
    assert as_enum(DataType, tr.DataType.BF16, "data_type") is DataType.BF16
    assert pooling_type_to_pooling_mode(tr.PoolingType.MEAN, tr.ShardingType.ROW_WISE) is PoolingMode.SUM
    with pytest.raises(ValueError, match="pooling_type: expected one of PoolingType.SUM"):
        pooling_type_to_str(tr.ShardingType.ROW_WISE)  # same value space, different enum


def test_fields_and_defaults_match_torchrec():
    tr = pytest.importorskip("torchrec.modules.embedding_configs", reason="TorchRec is optional; interop check")
    pairs = [
        (tr.BaseEmbeddingConfig, BaseEmbeddingConfig),
        (tr.EmbeddingBagConfig, EmbeddingBagConfig),
        (tr.EmbeddingConfig, EmbeddingConfig),
        (tr.EmbeddingTableConfig, EmbeddingTableConfig),
    ]
    for theirs, ours in pairs:
        def normalise(entries):
            return [(n, d.value if hasattr(d, "value") else d) for n, d in entries]

        assert normalise(field_defaults(ours)) == normalise(field_defaults(theirs)), ours.__name__
    assert [m.value for m in DataType] == [m.value for m in tr.DataType]
    assert [m.value for m in PoolingType] == [m.value for m in tr.PoolingType]
    assert [m.value for m in ShardingType] == [m.value for m in tr.ShardingType]
    assert {k.value: v for k, v in DATA_TYPE_NUM_BITS.items()} == {k.value: v for k, v in tr.DATA_TYPE_NUM_BITS.items()}
    assert QuantConfig._fields == tr.QuantConfig._fields
    for data_type in tr.DataType:
        try:
            theirs = tr.data_type_to_sparse_type(data_type).value
        except ValueError:
            theirs = None
        ours = data_type_to_sparse_type(data_type) if DataType(data_type) in SPARSE_TABLE else None
        assert ours == theirs, data_type
    for pooling in tr.PoolingType:
        for sharding in [None] + list(tr.ShardingType):
            assert int(pooling_type_to_pooling_mode(pooling, sharding)) == tr.pooling_type_to_pooling_mode(
                pooling, sharding
            ).value
    c = tr.EmbeddingBagConfig(10, 4)
    ours = EmbeddingBagConfig(10, 4)
    assert (ours.get_weight_init_min(), ours.get_weight_init_max()) == (c.get_weight_init_min(), c.get_weight_init_max())
