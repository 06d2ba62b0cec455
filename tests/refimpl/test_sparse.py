"""refimpl.sparse: TorchRec's jagged layout (semantics.md section 1) over NumPy arrays.

Expected values are written out by hand (the worked examples) or rebuilt here with plain
Python loops over bags, never read back from the implementation under test.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.sparse import JaggedTensor, KeyedJaggedTensor, KeyedTensor, complete_cumsum, regroup

# The worked example: keys [f1, f2], values 0..7, offsets [0, 2, 2, 3, 4, 5, 8]
# => f1 = [[0, 1], [], [2]] and f2 = [[3], [4], [5, 6, 7]].
EXAMPLE_OFFSETS = np.array([0, 2, 2, 3, 4, 5, 8])
EXAMPLE_LENGTHS = np.array([2, 0, 1, 1, 1, 3])
EXAMPLE_ROWS = {"f1": [[0, 1], [], [2]], "f2": [[3], [4], [5, 6, 7]]}


def _example(**kwargs):
    return KeyedJaggedTensor(["f1", "f2"], np.arange(8), offsets=EXAMPLE_OFFSETS, **kwargs)


def _as_lists(rows):
    return [row.tolist() for row in rows]


@st.composite
def jagged_lengths(draw, max_bags=12, max_len=4):
    """Bag lengths with plenty of zeros (empty bags) and the all-empty batch."""
    return draw(st.lists(st.sampled_from([0, 0, 1, 2, max_len]), min_size=0, max_size=max_bags))


# --- KeyedJaggedTensor: the worked example ----------------------------------------------------


def test_worked_example_accessors():
    kjt = _example()
    assert kjt.keys() == ["f1", "f2"]
    assert kjt.stride() == 3
    np.testing.assert_array_equal(kjt.lengths(), EXAMPLE_LENGTHS)
    np.testing.assert_array_equal(kjt.offsets(), EXAMPLE_OFFSETS)
    assert kjt.length_per_key() == [3, 5]
    assert kjt.offset_per_key() == [0, 3, 8]
    assert kjt.lengths_offset_per_key() == [0, 3, 6]
    assert kjt.stride_per_key() == [3, 3]
    assert kjt.index_per_key() == {"f1": 0, "f2": 1}
    assert kjt.variable_stride_per_key() is False
    assert type(kjt.length_per_key()) is list and type(kjt.offset_per_key()[0]) is int


def test_worked_example_to_dict_in_keys_order_with_per_key_offsets():
    jt_dict = _example().to_dict()
    assert list(jt_dict) == ["f1", "f2"]
    for key, rows in EXAMPLE_ROWS.items():
        assert _as_lists(jt_dict[key].to_dense()) == rows
        np.testing.assert_array_equal(jt_dict[key].lengths(), [len(r) for r in rows])
        np.testing.assert_array_equal(jt_dict[key].offsets(), np.cumsum([0] + [len(r) for r in rows]))
    assert jt_dict["f1"].offsets()[0] == 0 and jt_dict["f2"].offsets()[0] == 0


def test_getitem_gives_one_keys_rows():
    jt = _example()["f2"]
    assert _as_lists(jt.to_dense()) == EXAMPLE_ROWS["f2"]
    assert jt.weights_or_none() is None


def test_getitem_missing_key_raises_keyerror_naming_it():
    with pytest.raises(KeyError, match="'f9'"):
        _example()["f9"]
    with pytest.raises(ValueError, match=r"expected one of \['f1', 'f2'\]"):
        _example()["f9"]


def test_lengths_and_offsets_give_the_same_tensor():
    by_lengths = KeyedJaggedTensor.from_lengths_sync(["f1", "f2"], np.arange(8), EXAMPLE_LENGTHS)
    by_offsets = KeyedJaggedTensor.from_offsets_sync(["f1", "f2"], np.arange(8), EXAMPLE_OFFSETS)
    for kjt in (by_lengths, by_offsets):
        np.testing.assert_array_equal(kjt.lengths(), EXAMPLE_LENGTHS)
        np.testing.assert_array_equal(kjt.offsets(), EXAMPLE_OFFSETS)
        assert kjt.length_per_key() == [3, 5]


def test_or_none_accessors_return_only_what_is_stored_or_cached():
    kjt = _example()
    assert kjt.lengths_or_none() is None
    np.testing.assert_array_equal(kjt.offsets_or_none(), EXAMPLE_OFFSETS)
    kjt.lengths()
    np.testing.assert_array_equal(kjt.lengths_or_none(), EXAMPLE_LENGTHS)


def test_offsets_keep_int32_lengths_dtype():
    kjt = KeyedJaggedTensor(["f1", "f2"], np.arange(8), lengths=EXAMPLE_LENGTHS.astype(np.int32))
    assert kjt.offsets().dtype == np.int32
    assert kjt.to_dict()["f2"].offsets().dtype == np.int32


def test_explicit_stride_is_kept():
    kjt = _example(stride=3)
    assert kjt.stride() == 3


def test_weights_are_cut_with_their_values():
    weights = np.arange(8) / 10.0
    jt_dict = _example(weights=weights).to_dict()
    assert _as_lists(jt_dict["f1"].to_dense_weights()) == [[0.0, 0.1], [], [0.2]]
    assert _as_lists(jt_dict["f2"].to_dense_weights()) == [[0.3], [0.4], [0.5, 0.6, 0.7]]


def test_weights_accessor_without_weights_raises():
    with pytest.raises(ValueError, match="weights"):
        _example().weights()


def test_to_dict_hands_out_a_copy_of_its_cache():
    kjt = _example()
    first = kjt.to_dict()
    first.pop("f1")
    assert list(kjt.to_dict()) == ["f1", "f2"]


# --- permute / split ---------------------------------------------------------------------------


def _weighted_three_keys():
    """keys a, b, c; B = 2; bags a=[[1,2],[]], b=[[3],[4,5,6]], c=[[],[7]]; weight = value / 10."""
    values = np.array([1, 2, 3, 4, 5, 6, 7])
    lengths = np.array([2, 0, 1, 3, 0, 1])
    return KeyedJaggedTensor(["a", "b", "c"], values, weights=values / 10.0, lengths=lengths)


BAGS = {"a": [[1, 2], []], "b": [[3], [4, 5, 6]], "c": [[], [7]]}


def _expected_flat(keys):
    values = [v for key in keys for bag in BAGS[key] for v in bag]
    lengths = [len(bag) for key in keys for bag in BAGS[key]]
    return values, lengths


@pytest.mark.parametrize("indices", [[2, 0, 1], [1, 1, 0], [2], [0, 2, 0, 2], []])
def test_permute_moves_values_lengths_and_weights_with_repeats_and_drops(indices):
    kjt = _weighted_three_keys()
    permuted = kjt.permute(indices)
    keys = [["a", "b", "c"][i] for i in indices]
    values, lengths = _expected_flat(keys)
    assert permuted.keys() == keys
    assert permuted.stride() == 2
    np.testing.assert_array_equal(permuted.values(), values)
    np.testing.assert_array_equal(permuted.lengths(), lengths)
    np.testing.assert_allclose(permuted.weights(), np.array(values) / 10.0, rtol=0, atol=0)
    np.testing.assert_array_equal(permuted.offsets(), np.cumsum([0] + lengths))


def test_permute_with_a_repeated_key_lookup_takes_the_last_copy():
    permuted = _weighted_three_keys().permute([1, 0, 1])
    assert permuted.index_per_key() == {"b": 2, "a": 1}
    assert _as_lists(permuted["b"].to_dense()) == BAGS["b"]


def test_permute_out_of_range_index_raises():
    with pytest.raises(IndexError, match=r"indices\[1\]"):
        _weighted_three_keys().permute([0, 3])


@pytest.mark.parametrize("segments", [[1, 2], [0, 3], [3, 0], [1, 1, 1], [0, 0, 3]])
def test_split_gives_consecutive_key_groups(segments):
    parts = _weighted_three_keys().split(segments)
    start = 0
    for part, size in zip(parts, segments):
        keys = ["a", "b", "c"][start : start + size]
        values, lengths = _expected_flat(keys)
        assert part.keys() == keys
        assert part.stride() == 2
        np.testing.assert_array_equal(part.values(), values)
        np.testing.assert_array_equal(part.lengths(), lengths)
        np.testing.assert_array_equal(part.weights(), np.array(values) / 10.0)
        start += size
    assert len(parts) == len(segments)


def test_split_sizes_must_cover_the_keys():
    with pytest.raises(ValueError, match="segments"):
        _weighted_three_keys().split([1, 1])


# --- B = 0, empty keys, VBE --------------------------------------------------------------------


def test_batch_of_zero_with_keys_gives_empty_jagged_tensors():
    kjt = KeyedJaggedTensor(["f1", "f2"], np.zeros(0, np.int64), lengths=np.zeros(0, np.int32))
    assert kjt.stride() == 0
    assert kjt.length_per_key() == [0, 0]
    assert kjt.offset_per_key() == [0, 0, 0]
    jt_dict = kjt.to_dict()
    assert list(jt_dict) == ["f1", "f2"]
    for jt in jt_dict.values():
        assert jt.lengths().shape == (0,)
        np.testing.assert_array_equal(jt.offsets(), [0])
        assert jt.to_dense() == []
        assert jt.to_padded_dense().shape == (0, 0)


def test_batch_of_zero_from_offsets():
    kjt = KeyedJaggedTensor(["f1"], np.zeros(0), offsets=np.array([0]))
    assert kjt.stride() == 0
    assert kjt.to_dict()["f1"].lengths().shape == (0,)


def test_empty_has_no_keys_and_stride_zero():
    kjt = KeyedJaggedTensor.empty()
    assert kjt.keys() == [] and kjt.stride() == 0 and kjt.to_dict() == {}
    np.testing.assert_array_equal(kjt.offsets(), [0])
    assert KeyedJaggedTensor.empty(is_weighted=True).weights().shape == (0,)


def test_no_keys_with_an_explicit_stride():
    kjt = KeyedJaggedTensor([], np.zeros(0), lengths=np.zeros(0, np.int64), stride=4)
    assert kjt.stride() == 4 and kjt.to_dict() == {} and kjt.length_per_key() == []


def test_empty_float_lengths_are_accepted_as_in_torchrec():
    kjt = KeyedJaggedTensor(["f1"], np.zeros(0), lengths=np.zeros(0, np.float32))
    assert kjt.lengths().dtype.kind in "iu"
    assert kjt.stride() == 0


@pytest.mark.parametrize("arg", ["stride_per_key_per_rank", "inverse_indices"])
def test_variable_batch_is_refused(arg):
    with pytest.raises(NotImplementedError, match=arg):
        KeyedJaggedTensor(["f1"], np.arange(2), lengths=np.array([2]), **{arg: [[1]]})


def test_from_jt_dict_with_different_batch_sizes_is_refused():
    d = {"a": JaggedTensor(np.arange(2), lengths=np.array([2])), "b": JaggedTensor(np.arange(2), lengths=np.array([1, 1]))}
    with pytest.raises(NotImplementedError, match="batch size"):
        KeyedJaggedTensor.from_jt_dict(d)


# --- from_jt_dict -------------------------------------------------------------------------------


def test_from_jt_dict_round_trips_to_dict():
    kjt = _weighted_three_keys()
    back = KeyedJaggedTensor.from_jt_dict(kjt.to_dict())
    assert back.keys() == ["a", "b", "c"] and back.stride() == 2
    np.testing.assert_array_equal(back.values(), [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(back.lengths(), [2, 0, 1, 3, 0, 1])
    np.testing.assert_array_equal(back.weights(), np.array([1, 2, 3, 4, 5, 6, 7]) / 10.0)


def test_from_jt_dict_keys_follow_dict_order():
    jts = _weighted_three_keys().to_dict()
    back = KeyedJaggedTensor.from_jt_dict({"c": jts["c"], "a": jts["a"]})
    assert back.keys() == ["c", "a"]
    np.testing.assert_array_equal(back.values(), [7, 1, 2])


def test_from_jt_dict_mixed_weights_raise():
    d = {
        "a": JaggedTensor(np.arange(2), weights=np.ones(2), lengths=np.array([2])),
        "b": JaggedTensor(np.arange(1), lengths=np.array([1])),
    }
    with pytest.raises(ValueError, match="weights"):
        KeyedJaggedTensor.from_jt_dict(d)


@given(
    st.lists(st.sampled_from([0, 0, 1, 3]), min_size=0, max_size=15),
    st.integers(min_value=1, max_value=4),
)
def test_kjt_to_dict_matches_a_loop_over_bags(raw_lengths, num_keys):
    batch = len(raw_lengths) // num_keys
    lengths = np.array(raw_lengths[: num_keys * batch], dtype=np.int64)
    values = np.arange(int(lengths.sum())) * 3 + 1
    keys = [f"k{f}" for f in range(num_keys)]
    kjt = KeyedJaggedTensor(keys, values, lengths=lengths)
    # bag f * B + b is sample b of key f, read off the flat values in order
    expected, cursor = {key: [] for key in keys}, 0
    for i, length in enumerate(lengths.tolist()):
        expected[keys[i // batch] if batch else keys[0]].append(values[cursor : cursor + length].tolist())
        cursor += length
    assert kjt.stride() == batch
    assert {key: _as_lists(jt.to_dense()) for key, jt in kjt.to_dict().items()} == {
        key: expected[key] for key in keys
    }
    assert kjt.length_per_key() == [sum(len(bag) for bag in expected[key]) for key in keys]


# --- JaggedTensor ------------------------------------------------------------------------------


def test_to_padded_dense_worked_example():
    jt = JaggedTensor(np.arange(8), lengths=np.array([2, 0, 1, 1, 1, 3]))
    expected = [[0, 1], [10, 10], [2, 10], [3, 10], [4, 10], [5, 6]]
    np.testing.assert_array_equal(jt.to_padded_dense(desired_length=2, padding_value=10), expected)


def test_to_padded_dense_defaults_to_the_longest_row():
    jt = JaggedTensor(np.arange(1.0, 5.0), lengths=np.array([1, 0, 3]))
    np.testing.assert_array_equal(jt.to_padded_dense(), [[1, 0, 0], [0, 0, 0], [2, 3, 4]])


def test_to_padded_dense_of_rows_of_vectors():
    values = np.arange(10.0).reshape(5, 2)
    jt = JaggedTensor(values, lengths=np.array([2, 0, 3]))
    out = jt.to_padded_dense(desired_length=2, padding_value=-1.0)
    expected = np.full((3, 2, 2), -1.0)
    expected[0] = values[0:2]
    expected[2] = values[2:4]
    np.testing.assert_array_equal(out, expected)


def test_to_padded_dense_weights():
    jt = JaggedTensor(np.arange(3), weights=np.array([0.5, 0.25, 2.0]), lengths=np.array([0, 3]))
    np.testing.assert_array_equal(jt.to_padded_dense_weights(2, 9.0), [[9.0, 9.0], [0.5, 0.25]])
    assert JaggedTensor(np.arange(3), lengths=np.array([3])).to_padded_dense_weights() is None


def test_to_padded_dense_rejects_a_negative_length():
    with pytest.raises(ValueError, match="desired_length"):
        JaggedTensor(np.arange(3), lengths=np.array([3])).to_padded_dense(desired_length=-1)


def test_to_dense_and_weights_with_an_empty_bag():
    jt = JaggedTensor(np.array([4, 5, 6]), weights=np.array([1.0, 2.0, 3.0]), offsets=np.array([0, 1, 1, 3]))
    assert _as_lists(jt.to_dense()) == [[4], [], [5, 6]]
    assert _as_lists(jt.to_dense_weights()) == [[1.0], [], [2.0, 3.0]]
    np.testing.assert_array_equal(jt.lengths(), [1, 0, 2])
    assert JaggedTensor(np.arange(2), lengths=np.array([2])).to_dense_weights() is None


def test_jagged_weights_accessor_without_weights_raises():
    with pytest.raises(ValueError, match="weights"):
        JaggedTensor(np.arange(2), lengths=np.array([2])).weights()


def test_from_dense_concatenates_rows_with_int32_lengths():
    jt = JaggedTensor.from_dense(
        [np.array([1.0, 2.0]), np.zeros(0), np.array([3.0])],
        weights=[np.array([0.1, 0.2]), np.zeros(0), np.array([0.3])],
    )
    np.testing.assert_array_equal(jt.values(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(jt.weights(), [0.1, 0.2, 0.3])
    assert jt.lengths().dtype == np.int32
    np.testing.assert_array_equal(jt.lengths(), [2, 0, 1])


def test_from_dense_weights_must_match_each_row():
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        JaggedTensor.from_dense([np.array([1.0, 2.0]), np.array([3.0])], weights=[np.array([1.0]), np.array([2.0, 3.0])])


def test_from_dense_lengths_keeps_the_leading_entries_of_each_row():
    values = np.arange(12).reshape(3, 4)
    weights = values / 2.0
    jt = JaggedTensor.from_dense_lengths(values, np.array([2, 0, 4]), weights=weights)
    assert _as_lists(jt.to_dense()) == [[0, 1], [], [8, 9, 10, 11]]
    assert _as_lists(jt.to_dense_weights()) == [[0.0, 0.5], [], [4.0, 4.5, 5.0, 5.5]]


def test_from_dense_lengths_rejects_a_length_past_the_width():
    with pytest.raises(ValueError, match="lengths"):
        JaggedTensor.from_dense_lengths(np.zeros((2, 3)), np.array([1, 4]))


def test_jagged_empty():
    jt = JaggedTensor.empty(is_weighted=True)
    assert jt.to_dense() == [] and jt.weights().shape == (0,)
    np.testing.assert_array_equal(jt.offsets(), [0])


@given(jagged_lengths())
def test_lengths_offsets_round_trip(lengths):
    lengths = np.array(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.arange(int(offsets[-1]), dtype=np.float64)
    from_lengths = JaggedTensor(values, lengths=lengths)
    from_offsets = JaggedTensor(values, offsets=offsets)
    np.testing.assert_array_equal(from_lengths.offsets(), offsets)
    np.testing.assert_array_equal(from_offsets.lengths(), lengths)
    expected_rows = [values[offsets[b] : offsets[b + 1]].tolist() for b in range(len(lengths))]
    assert _as_lists(from_lengths.to_dense()) == expected_rows == _as_lists(from_offsets.to_dense())
    np.testing.assert_array_equal(complete_cumsum(lengths), offsets)


def test_complete_cumsum_widens_narrow_integers():
    offsets = complete_cumsum(np.array([200, 100], dtype=np.uint8))
    np.testing.assert_array_equal(offsets, [0, 200, 300])
    assert offsets.dtype == np.int64


# --- KeyedTensor and regroup ------------------------------------------------------------------


def _pooled(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    a = KeyedTensor(["x", "y"], [2, 3], rng.standard_normal((batch, 5)))
    b = KeyedTensor(["z"], [1], rng.standard_normal((batch, 1)))
    return a, b


def test_keyed_tensor_accessors_key_dim_1():
    a, _ = _pooled()
    v = a.values()
    assert a.keys() == ["x", "y"] and a.key_dim() == 1
    assert a.length_per_key() == [2, 3] and a.offset_per_key() == [0, 2, 5]
    np.testing.assert_array_equal(a["x"], v[:, 0:2])
    np.testing.assert_array_equal(a["y"], v[:, 2:5])
    d = a.to_dict()
    assert list(d) == ["x", "y"]
    np.testing.assert_array_equal(d["y"], v[:, 2:5])


def test_keyed_tensor_key_dim_0():
    values = np.arange(12.0).reshape(4, 3)
    kt = KeyedTensor(["p", "q"], [1, 3], values, key_dim=0)
    np.testing.assert_array_equal(kt["p"], values[0:1])
    np.testing.assert_array_equal(kt.to_dict()["q"], values[1:4])


def test_keyed_tensor_missing_key():
    with pytest.raises(KeyError, match="'w'"):
        _pooled()[0]["w"]


def test_from_tensor_list_concatenates_and_measures_along_key_dim():
    t1, t2 = np.ones((2, 3)), np.zeros((2, 1))
    kt = KeyedTensor.from_tensor_list(["a", "b"], [t1, t2])
    assert kt.length_per_key() == [3, 1]
    np.testing.assert_array_equal(kt.values(), np.concatenate([t1, t2], axis=1))


def test_regroup_concatenates_named_slices_in_group_order():
    a, b = _pooled()
    va, vb = a.values(), b.values()
    out = regroup([a, b], [["z", "x"], ["y"], ["x", "z", "y"]])
    np.testing.assert_array_equal(out[0], np.concatenate([vb[:, 0:1], va[:, 0:2]], axis=1))
    np.testing.assert_array_equal(out[1], va[:, 2:5])
    np.testing.assert_array_equal(out[2], np.concatenate([va[:, 0:2], vb[:, 0:1], va[:, 2:5]], axis=1))
    same = KeyedTensor.regroup([a, b], [["z", "x"], ["y"], ["x", "z", "y"]])
    for left, right in zip(out, same):
        np.testing.assert_array_equal(left, right)


def test_regroup_empty_group_and_as_dict():
    a, b = _pooled(batch=3)
    out = regroup([a, b], [[]])
    assert out[0].shape == (3, 0)
    as_dict = KeyedTensor.regroup_as_dict([a, b], [["y"], ["z"]], ["g1", "g2"])
    assert list(as_dict) == ["g1", "g2"]
    np.testing.assert_array_equal(as_dict["g2"], b.values())


def test_regroup_key_in_two_tensors_takes_the_last():
    first = KeyedTensor(["x"], [1], np.zeros((2, 1)))
    second = KeyedTensor(["x"], [1], np.ones((2, 1)))
    np.testing.assert_array_equal(regroup([first, second], [["x"]])[0], np.ones((2, 1)))


def test_regroup_unknown_key():
    with pytest.raises(KeyError, match="'nope'"):
        regroup(list(_pooled()), [["x", "nope"]])


def test_regroup_batch_mismatch():
    a, _ = _pooled(batch=2)
    _, b = _pooled(batch=3)
    with pytest.raises(ValueError, match=r"keyed_tensors\[1\]"):
        regroup([a, b], [["x", "z"]])
