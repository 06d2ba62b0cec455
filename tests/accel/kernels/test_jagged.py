"""accel.kernels._jagged: 16-bit conversions bit for bit against torch's casts, the (slot, bag) work split, table
arguments and the launchers' checks."""

import numpy as np
import pytest
import torch
from numba import njit

from accel.kernels import _jagged


@njit
def _to_f32(bits, bf16, out):
    for i in range(bits.shape[0]):
        out[i] = _jagged.bf16_bits_to_f32(bits[i]) if bf16 else _jagged.f16_bits_to_f32(bits[i])


@njit
def _from_f32(x, bf16, out):
    for i in range(x.shape[0]):
        out[i] = _jagged.f32_to_bf16_bits(x[i]) if bf16 else _jagged.f32_to_f16_bits(x[i])


def torch_bits(x: np.ndarray, dtype) -> np.ndarray:
    return torch.from_numpy(x).to(dtype).view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_pattern_converts_to_float32_exactly(dtype):
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(bits.size, np.float32)
    _to_f32(bits, dtype == torch.bfloat16, got)
    want = torch.from_numpy(bits.view(np.int16)).view(dtype).float().numpy()
    nan = np.isnan(want)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(got[nan]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_rounds_to_nearest_even_like_torch(dtype):
    rng = np.random.default_rng(0)
    edges = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e30, 2.0 ** -24, 2.0 ** -25,
                      2.0 ** -25 * 1.0001, 3 * 2.0 ** -26, 2.0 ** -14, 6.0e-5, np.inf, -np.inf, 1.0 + 2.0 ** -8,
                      1.0 + 3 * 2.0 ** -9, 3.0e38], np.float32)
    # Random bit patterns cover every exponent, ties included (low bits zero half of the time).
    raw = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    raw[::2] &= np.uint32(0xFFFF0000)
    x = np.concatenate([edges, -edges, raw.view(np.float32)])
    x = x[~np.isnan(x)]
    got = np.empty(x.size, np.uint16)
    _from_f32(x, dtype == torch.bfloat16, got)
    np.testing.assert_array_equal(got, torch_bits(x, dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nan_stays_nan(dtype):
    got = np.empty(2, np.uint16)
    _from_f32(np.array([np.nan, -np.nan], np.float32), dtype == torch.bfloat16, got)
    back = torch.from_numpy(got.view(np.int16)).view(dtype).float().numpy()
    assert np.isnan(back).all()


def test_work_bounds_split_items_by_elements_read():
    B = 4
    lengths = np.array([10, 0, 0, 0, 1, 1, 1, 1])  # key 0 has all its ids in bag 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    key = np.array([0, 1], np.int64)
    bounds = _jagged.work_bounds(offsets, key, np.array([1, 1], np.int64), B, 2)
    # Items laid out as (length + 1) units: slot 0 = 11 + 1 + 1 + 1, slot 1 = 2 + 2 + 2 + 2; half of 22 is 11.
    np.testing.assert_array_equal(bounds, [[0, 0], [1, 0], [4, 4]])
    # Every (slot, bag) is owned by exactly one chunk, whatever the chunk count.
    for chunks in (1, 3, 5, 40):
        bounds = _jagged.work_bounds(offsets, key, np.array([3, 7], np.int64), B, chunks)
        assert (bounds[0] == 0).all() and (bounds[-1] == B).all() and (np.diff(bounds, axis=0) >= 0).all()


def test_table_args_groups_and_pads():
    tables = [torch.zeros(2, 3), torch.zeros(4, 5, dtype=torch.bfloat16), torch.zeros(6, 7, dtype=torch.float16)]
    args = _jagged.table_args(tables, torch.float32, torch.device("cpu"))
    assert len(args.wide) == 4 and len(args.half) == 4
    np.testing.assert_array_equal(args.table_format, [_jagged.WIDE, _jagged.BF16, _jagged.F16])
    np.testing.assert_array_equal(args.table_index, [0, 0, 1])
    np.testing.assert_array_equal(args.dims, [3, 5, 7])
    np.testing.assert_array_equal(args.rows, [2, 4, 6])
    assert args.half[0].dtype == np.uint16 and args.half[0].shape == (4, 5)
    assert len(_jagged.padded(list(range(26)), None)) == 32


def test_checks():
    assert _jagged.check_tables("weights", [torch.zeros(1, 1, dtype=torch.float16)])[0] == torch.float32
    assert _jagged.check_tables("weights", [torch.zeros(1, 1, dtype=torch.float64)])[0] == torch.float64
    with pytest.raises(ValueError, match=r"offsets must have F \* batch_size \+ 1 entries \(batch_size = 0\), got 3"):
        _jagged.check_offsets(torch.tensor([0, 1, 2]), 0, 2)
    assert _jagged.check_offsets(torch.tensor([0, 1, 3, 3, 4]), 2, 4) == 2
    with pytest.raises(ValueError, match=r"got \[3, 2\] at position 3"):
        _jagged.check_offsets(torch.tensor([0, 1, 3, 2, 4]), 2, 4)
    with pytest.raises(TypeError, match="batch_size must be an int, got float"):
        _jagged.check_count("batch_size", 2.0)
    with pytest.raises(ValueError, match="batch_size must be >= 0, got -1"):
        _jagged.check_count("batch_size", -1)
