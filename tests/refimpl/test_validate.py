"""refimpl.validate: every rejected jagged input raises an error naming the argument (and, for a
keyed jagged tensor, the key and sample), the expected and the received value."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.sparse import JaggedTensor, KeyedJaggedTensor, KeyedTensor
from refimpl.validate import (
    check_jagged_contents,
    is_integer_dtype,
    validate_ids_in_range,
    validate_jagged,
    validate_keyed_jagged,
    validate_keyed_tensor,
)

I64 = np.int64


def arr(*xs, dtype=I64):
    return np.array(xs, dtype=dtype)


# (values, lengths, offsets, weights, exception, pattern): each row breaks exactly one rule.
JAGGED_ERRORS = {
    "neither lengths nor offsets": (np.arange(3), None, None, None, ValueError, "lengths or offsets"),
    "float lengths": (np.arange(3), arr(1.0, 2.0, dtype=np.float32), None, None, TypeError, "lengths.*integer.*float32"),
    "float offsets": (np.arange(3), None, arr(0.0, 3.0, dtype=np.float64), None, TypeError, "offsets.*integer.*float64"),
    "bool lengths": (np.arange(1), arr(True, dtype=bool), None, None, TypeError, "lengths.*integer"),
    "negative length": (np.arange(3), arr(2, -1, 2), None, None, ValueError, r"lengths.*row 1.*lengths\[1\] = -1"),
    "offsets[0] != 0": (np.arange(3), None, arr(1, 2, 3), None, ValueError, r"offsets.*offsets\[0\] == 0, got 1"),
    "non-monotone offsets": (np.arange(3), None, arr(0, 2, 1, 3), None, ValueError, r"offsets.*non-decreasing.*offsets\[2\] = 1"),
    "offsets[-1] != n": (np.arange(3), None, arr(0, 1, 2), None, ValueError, r"offsets.*\(3\), got 2"),
    "sum(lengths) != n": (np.arange(3), arr(1, 1), None, None, ValueError, r"lengths.*sum\(lengths\).*\(3\), got 2"),
    "lengths and offsets disagree": (np.arange(3), arr(2, 1), arr(0, 1, 3), None, ValueError, r"lengths and offsets.*lengths\[0\]"),
    "offsets of the wrong size": (np.arange(3), arr(1, 2), arr(0, 3), None, ValueError, r"offsets.*len\(lengths\) \+ 1 = 3"),
    "empty offsets": (np.arange(0), None, arr(), None, ValueError, "offsets.*at least one entry"),
    "2-D lengths": (np.arange(3), arr(1, 2).reshape(1, 2), None, None, ValueError, "lengths.*1-D.*got shape"),
    "weights too short": (np.arange(3), arr(3), None, np.ones(2), ValueError, r"weights.*\(3,\).*got \(2,\)"),
    "weights 2-D": (np.arange(3), arr(3), None, np.ones((3, 1)), ValueError, r"weights.*\(3, 1\)"),
    "values 3-D": (np.zeros((3, 1, 1)), arr(3), None, None, ValueError, "values.*3-D"),
    "values 0-D": (np.array(1.0), arr(1), None, None, ValueError, "values.*0-D"),
}


@pytest.mark.parametrize("case", list(JAGGED_ERRORS))
def test_validate_jagged_rejects(case):
    values, lengths, offsets, weights, error, pattern = JAGGED_ERRORS[case]
    with pytest.raises(error, match=pattern):
        validate_jagged(values, lengths, offsets, weights, "JaggedTensor")


@pytest.mark.parametrize("case", list(JAGGED_ERRORS))
def test_jagged_tensor_constructor_rejects(case):
    values, lengths, offsets, weights, error, pattern = JAGGED_ERRORS[case]
    with pytest.raises(error, match=f"JaggedTensor: .*{pattern}"):
        JaggedTensor(values, weights=weights, lengths=lengths, offsets=offsets)


def test_validate_jagged_accepts_valid_input_including_empty_bags():
    validate_jagged(np.arange(3.0), arr(0, 3, 0), arr(0, 0, 3, 3), np.ones(3), "JaggedTensor")
    validate_jagged(np.zeros((0, 4)), arr(0, 0), None, None, "JaggedTensor")
    validate_jagged(np.zeros(0), np.zeros(0, np.float32), None, None, "JaggedTensor")


def test_unsigned_offsets_that_go_down_are_caught_without_wrap_around():
    with pytest.raises(ValueError, match="non-decreasing"):
        validate_jagged(np.arange(3), None, arr(0, 3, 2, 3, dtype=np.uint32), None, "JaggedTensor")


@given(st.lists(st.integers(min_value=-2, max_value=3), max_size=8), st.integers(0, 12))
def test_content_check_agrees_with_its_formula(lengths, num_values):
    lengths = np.array(lengths, dtype=I64)
    valid = bool((lengths >= 0).all()) and int(lengths.sum()) == num_values
    if valid:
        check_jagged_contents(num_values, lengths, None)
    else:
        with pytest.raises(ValueError, match="lengths"):
            check_jagged_contents(num_values, lengths, None)


# --- keyed jagged --------------------------------------------------------------------------------

KEYS = ["f1", "f2"]

KEYED_ERRORS = {
    "duplicate keys": (["f1", "f1"], arr(2, 0, 1, 1, 1, 3), None, None, ValueError, "keys.*unique.*'f1'"),
    "keys a string": ("f1", arr(8), None, None, TypeError, "keys"),
    "non-str key": (["f1", 2], arr(2, 0, 1, 1, 1, 3), None, None, TypeError, r"keys\[1\]"),
    "lengths not divisible": (KEYS, arr(2, 0, 1, 1, 4), None, None, ValueError, r"lengths.*divisible.*\(2\).*5"),
    "offsets not divisible": (KEYS, None, arr(0, 2, 3, 8), None, ValueError, r"offsets.*divisible.*\(2\).*3"),
    "stride mismatch": (KEYS, arr(2, 0, 1, 1, 1, 3), None, 2, ValueError, "stride.*3, got 2"),
    "stride negative": (KEYS, arr(2, 0, 1, 1, 1, 3), None, -1, TypeError, "stride.*non-negative"),
    "rows without keys": ([], arr(8), None, None, ValueError, "lengths.*without keys.*1"),
    "negative length names key and sample": (
        KEYS, arr(2, 0, 1, 1, 5, -1), None, None, ValueError, r"lengths \(key 'f2', sample 2\).*-1"),
    "non-monotone offsets name key and sample": (
        KEYS, None, arr(0, 2, 2, 3, 6, 5, 8), None, ValueError, r"offsets \(key 'f2', sample 1\)"),
    "disagreement names key and sample": (
        KEYS, arr(2, 0, 1, 2, 0, 3), arr(0, 2, 2, 3, 4, 5, 8), None, ValueError,
        r"lengths and offsets \(key 'f2', sample 0\)"),
}


@pytest.mark.parametrize("case", list(KEYED_ERRORS))
def test_validate_keyed_jagged_rejects(case):
    keys, lengths, offsets, stride, error, pattern = KEYED_ERRORS[case]
    with pytest.raises(error, match=pattern):
        validate_keyed_jagged(keys, np.arange(8), lengths, offsets, None, stride)


@pytest.mark.parametrize("case", list(KEYED_ERRORS))
def test_keyed_jagged_tensor_constructor_rejects(case):
    keys, lengths, offsets, stride, error, pattern = KEYED_ERRORS[case]
    with pytest.raises(error, match=pattern):
        KeyedJaggedTensor(keys, np.arange(8), lengths=lengths, offsets=offsets, stride=stride)


def test_validate_keyed_jagged_returns_the_batch_size():
    lengths = arr(2, 0, 1, 1, 1, 3)
    assert validate_keyed_jagged(KEYS, np.arange(8), lengths, None, None) == 3
    assert validate_keyed_jagged(KEYS, np.arange(8), None, arr(0, 2, 2, 3, 4, 5, 8), None, 3) == 3
    assert validate_keyed_jagged(KEYS, np.zeros(0), arr(), None, None) == 0
    assert validate_keyed_jagged([], np.zeros(0), arr(), None, None, 5) == 5


def test_duplicate_keys_allowed_when_asked():
    lengths = arr(2, 0, 1, 1, 1, 3)
    assert validate_keyed_jagged(["f1", "f1"], np.arange(8), lengths, None, None, allow_duplicate_keys=True) == 3


# --- keyed tensor ----------------------------------------------------------------------------------

KT_ERRORS = {
    "duplicate keys": (["a", "a"], [1, 2], np.zeros((2, 3)), 1, None, ValueError, "keys.*unique"),
    "too few lengths": (["a", "b"], [3], np.zeros((2, 3)), 1, None, ValueError, "length_per_key.*2 entries.*got 1"),
    "negative length": (["a", "b"], [4, -1], np.zeros((2, 3)), 1, None, ValueError, "length_per_key.*'b'.*-1"),
    "sum too small": (["a", "b"], [1, 1], np.zeros((2, 3)), 1, None, ValueError, "values.*sum.*= 2.*key_dim 1"),
    "key_dim outside": (["a"], [3], np.zeros((2, 3)), 2, None, ValueError, "key_dim.*got 2"),
    "key_dim not int": (["a"], [3], np.zeros((2, 3)), 1.0, None, TypeError, "key_dim"),
    "bad offset_per_key": (["a", "b"], [1, 2], np.zeros((2, 3)), 1, [0, 2, 3], ValueError, r"offset_per_key.*\[0, 1, 3\]"),
}


@pytest.mark.parametrize("case", list(KT_ERRORS))
def test_validate_keyed_tensor_rejects(case):
    keys, lengths, values, key_dim, offsets, error, pattern = KT_ERRORS[case]
    with pytest.raises(error, match=pattern):
        validate_keyed_tensor(keys, lengths, values, key_dim, offsets)


def test_keyed_tensor_constructor_rejects_lengths_that_do_not_fit():
    with pytest.raises(ValueError, match="length_per_key|values"):
        KeyedTensor(["a", "b"], [2, 2], np.zeros((2, 3)))


def test_keyed_tensor_constructor_rejects_a_wrong_index_per_key():
    with pytest.raises(ValueError, match="index_per_key"):
        KeyedTensor(["a", "b"], [1, 2], np.zeros((2, 3)), index_per_key={"a": 1, "b": 0})


def test_validate_keyed_tensor_accepts_empty_segments():
    validate_keyed_tensor(["a", "b"], [0, 3], np.zeros((2, 3)), 1)
    validate_keyed_tensor(["a"], [2], np.zeros((2, 3)), 0, [0, 2])


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id, position", [(10, 2), (-1, 0), (99, 3)])
def test_ids_out_of_range_name_feature_table_id_and_range(bad_id, position):
    ids = np.array([0, 3, 9, 4])
    ids[position] = bad_id
    with pytest.raises(IndexError, match=rf"feature 'f1' \(table 't1'\).*\[0, 10\).*id {bad_id} at position {position}"):
        validate_ids_in_range(ids, 10, "f1", "t1")


def test_ids_in_range_pass_including_none_and_the_last_row():
    validate_ids_in_range(np.array([0, 9, 9]), 10, "f1", "t1")
    validate_ids_in_range(np.zeros(0, I64), 10, "f1", "t1")
    validate_ids_in_range(np.zeros(0, np.float32), 10, "f1", "t1")


def test_float_ids_are_a_type_error():
    with pytest.raises(TypeError, match=r"feature 'f1' \(table 't1'\): ids.*integer.*float64"):
        validate_ids_in_range(np.array([1.0]), 10, "f1", "t1")


@pytest.mark.parametrize("num_embeddings", [0, -3, 2.5, True])
def test_num_embeddings_must_be_a_positive_int(num_embeddings):
    with pytest.raises(ValueError, match="table 't1': num_embeddings"):
        validate_ids_in_range(np.array([0]), num_embeddings, "f1", "t1")


def test_uint64_ids_compare_exactly():
    with pytest.raises(IndexError, match="id 18446744073709551615"):
        validate_ids_in_range(np.array([2**64 - 1], dtype=np.uint64), 10, "f1", "t1")


class _TorchLikeDtype:
    """Stands in for a torch dtype, which refimpl recognises by name without importing torch."""

    def __init__(self, name):
        self.name = name

    def __str__(self):
        return self.name


@pytest.mark.parametrize(
    "dtype, expected",
    [(np.int8, True), (np.uint64, True), (np.float16, False), (np.bool_, False),
     (_TorchLikeDtype("torch.int32"), True), (_TorchLikeDtype("torch.float32"), False),
     (_TorchLikeDtype("torch.bool"), False)],
)
def test_is_integer_dtype(dtype, expected):
    assert is_integer_dtype(dtype) is expected
