"""accel.sparse: TorchRec's sparse layout over torch tensors (semantics.md section 1).

Golden values come from the worked examples, from NumPy formulas written here, or from refimpl's
types built from the same NumPy inputs; TorchRec itself is compared when it is installed.
"""

import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import refimpl.sparse as ref
from accel.sparse import (
    JaggedTensor,
    KeyedJaggedTensor,
    KeyedTensor,
    complete_cumsum,
    from_refimpl,
    from_torchrec,
    regroup,
    to_refimpl,
    to_torchrec,
)

EXAMPLE_OFFSETS = [0, 2, 2, 3, 4, 5, 8]
TORCHREC_REASON = "TorchRec is optional (scripts/install-torchrec.sh); the interop tests need it"


def example_kjt(weighted: bool = True) -> KeyedJaggedTensor:
    # semantics.md 1.2: f1 = [[0, 1], [], [2]], f2 = [[3], [4], [5, 6, 7]]
    return KeyedJaggedTensor(
        keys=["f1", "f2"],
        values=torch.arange(8),
        weights=torch.arange(8, dtype=torch.float64) / 10 if weighted else None,
        offsets=torch.tensor(EXAMPLE_OFFSETS),
    )


def assert_same(actual, expected):
    """Equal values, dtype and shape between a tensor and a NumPy array (or two tensors)."""
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_array_equal(actual, expected)


def assert_kjt_matches(fast: KeyedJaggedTensor, spec: ref.KeyedJaggedTensor):
    assert fast.keys() == spec.keys() and fast.stride() == spec.stride()
    assert_same(fast.values(), spec.values())
    assert_same(fast.lengths(), spec.lengths())
    assert_same(fast.offsets(), spec.offsets())
    assert fast.length_per_key() == spec.length_per_key()
    assert fast.offset_per_key() == spec.offset_per_key()
    if spec.weights_or_none() is None:
        assert fast.weights_or_none() is None
    else:
        assert_same(fast.weights(), spec.weights())


@st.composite
def keyed_case(draw):
    """F keys, batch B (0 included) and lengths with plenty of empty bags."""
    num_keys = draw(st.integers(1, 3))
    batch = draw(st.integers(0, 4))
    lengths = draw(st.lists(st.sampled_from([0, 0, 1, 2, 3]), min_size=num_keys * batch,
                            max_size=num_keys * batch))
    return [f"f{f}" for f in range(num_keys)], np.asarray(lengths, dtype=np.int64)


# --- JaggedTensor ------------------------------------------------------------------------------


def test_complete_cumsum_keeps_int32_and_widens_narrow_dtypes():
    offsets = complete_cumsum(torch.tensor([2, 0, 3], dtype=torch.int32))
    assert offsets.tolist() == [0, 2, 2, 5] and offsets.dtype == torch.int32
    wide = complete_cumsum(torch.tensor([200, 100], dtype=torch.uint8))
    assert wide.tolist() == [0, 200, 300] and wide.dtype == torch.int64


def test_lengths_and_offsets_are_cached_and_or_none_reports_only_stored():
    jt = JaggedTensor(torch.arange(5.0), offsets=torch.tensor([0, 2, 2, 5]))
    assert jt.lengths_or_none() is None
    lengths = jt.lengths()
    assert lengths.tolist() == [2, 0, 3] and jt.lengths_or_none() is lengths


def test_to_padded_dense_worked_example():
    # semantics.md 1.1: lengths [2,0,1,1,1,3], N=2, pad 10
    jt = JaggedTensor(torch.arange(8.0), lengths=torch.tensor([2, 0, 1, 1, 1, 3]))
    expected = [[0, 1], [10, 10], [2, 10], [3, 10], [4, 10], [5, 6]]
    assert jt.to_padded_dense(desired_length=2, padding_value=10.0).tolist() == expected


def test_to_padded_dense_gradient_reaches_kept_values_only():
    values = torch.arange(12.0, dtype=torch.float64).reshape(6, 2).requires_grad_()
    jt = JaggedTensor(values, lengths=torch.tensor([1, 0, 5]))
    upstream = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(3, 2, 2)
    (grad,) = torch.autograd.grad((jt.to_padded_dense(2) * upstream).sum(), values)
    # d/d values[offsets[b] + j] = upstream[b, j] for j < min(len_b, N); 0 for truncated values
    expected = np.zeros((6, 2))
    expected[0] = upstream[0, 0]
    expected[1:3] = upstream[2, :2]
    np.testing.assert_array_equal(grad.numpy(), expected)


def test_to_padded_dense_weights_and_width_zero():
    jt = JaggedTensor(torch.arange(3.0), weights=torch.tensor([1.0, 2.0, 3.0]), lengths=torch.tensor([2, 1]))
    assert jt.to_padded_dense_weights(3, -1.0).tolist() == [[1.0, 2.0, -1.0], [3.0, -1.0, -1.0]]
    assert jt.to_padded_dense(0).shape == (2, 0)
    with pytest.raises(ValueError, match="desired_length"):
        jt.to_padded_dense(-2)


def test_dense_round_trips_match_refimpl():
    rows = [np.array([1.0, 2.0]), np.zeros(0), np.array([3.0])]
    fast = JaggedTensor.from_dense([torch.from_numpy(r) for r in rows])
    spec = ref.JaggedTensor.from_dense(rows)
    assert_same(fast.values(), spec.values())
    assert_same(fast.lengths(), spec.lengths())
    assert [r.tolist() for r in fast.to_dense()] == [r.tolist() for r in spec.to_dense()]
    dense = np.arange(6.0).reshape(2, 3)
    kept = JaggedTensor.from_dense_lengths(torch.from_numpy(dense), torch.tensor([0, 2]))
    assert_same(kept.values(), ref.JaggedTensor.from_dense_lengths(dense, np.array([0, 2])).values())
    with pytest.raises(ValueError, match="lengths"):
        JaggedTensor.from_dense_lengths(torch.from_numpy(dense), torch.tensor([4, 0]))


def test_weights_of_an_unweighted_tensor_raise():
    with pytest.raises(ValueError, match="weights"):
        JaggedTensor(torch.arange(2.0), lengths=[2]).weights()


def test_inputs_may_be_lists_or_numpy_and_land_on_the_values_device():
    jt = JaggedTensor(np.arange(3.0), lengths=[1, 2])
    assert isinstance(jt.values(), torch.Tensor) and jt.lengths().device == jt.device()
    assert jt.to("cpu").offsets().tolist() == [0, 1, 3]


@given(keyed_case())
def test_jagged_rows_and_padding_match_refimpl(case):
    _, lengths = case
    values = np.arange(lengths.sum(), dtype=np.float64) * 0.5
    spec = ref.JaggedTensor(values, lengths=lengths)
    fast = JaggedTensor(torch.from_numpy(values), lengths=torch.from_numpy(lengths))
    assert_same(fast.offsets(), spec.offsets())
    assert_same(fast.to_padded_dense(padding_value=-3.0), spec.to_padded_dense(padding_value=-3.0))
    assert_same(fast.to_padded_dense(1), spec.to_padded_dense(1))
    by_offsets = JaggedTensor(torch.from_numpy(values), offsets=fast.offsets())
    assert_same(by_offsets.lengths(), lengths)


# --- KeyedJaggedTensor -------------------------------------------------------------------------


def test_worked_example_matches_refimpl_and_the_written_rows():
    fast = example_kjt()
    spec = ref.KeyedJaggedTensor(
        ["f1", "f2"], np.arange(8), weights=np.arange(8.0) / 10, offsets=np.array(EXAMPLE_OFFSETS)
    )
    assert_kjt_matches(fast, spec)
    assert fast.lengths_offset_per_key() == [0, 3, 6] and fast.stride_per_key() == [3, 3]
    jt_dict = fast.to_dict()
    assert [r.tolist() for r in jt_dict["f1"].to_dense()] == [[0, 1], [], [2]]
    assert [r.tolist() for r in jt_dict["f2"].to_dense()] == [[3], [4], [5, 6, 7]]
    assert jt_dict["f2"].offsets().tolist() == [0, 1, 2, 5]
    assert fast["f2"].values().tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(KeyError, match="'f3'"):
        fast["f3"]


def test_permute_with_weights_and_repeats_matches_refimpl():
    fast = example_kjt().permute([1, 0, 1])
    spec = to_refimpl(example_kjt()).permute([1, 0, 1])
    assert fast.keys() == ["f2", "f1", "f2"]
    assert_kjt_matches(fast, spec)
    assert fast.index_per_key() == {"f2": 2, "f1": 1}
    with pytest.raises(IndexError, match="indices"):
        example_kjt().permute([2])


def test_permute_passes_gradients_to_the_weights():
    weights = torch.linspace(0.1, 0.8, 8, dtype=torch.float64).requires_grad_()
    kjt = KeyedJaggedTensor(["f1", "f2"], torch.arange(8), weights=weights, offsets=torch.tensor(EXAMPLE_OFFSETS))
    permuted = kjt.permute([1, 1])
    (grad,) = torch.autograd.grad((permuted.weights() * permuted.values()).sum(), weights)
    # f2's weights are used twice, f1's not at all: d/dw_i = 2 * value_i for i in f2, else 0
    assert grad.tolist() == [0, 0, 0, 6, 8, 10, 12, 14]


def test_split_matches_refimpl_including_empty_groups():
    fast_parts = example_kjt().split([0, 1, 1])
    spec_parts = to_refimpl(example_kjt()).split([0, 1, 1])
    for fast, spec in zip(fast_parts, spec_parts):
        assert_kjt_matches(fast, spec)
    assert fast_parts[0].stride() == 3 and fast_parts[0].to_dict() == {}
    with pytest.raises(ValueError, match="segments"):
        example_kjt().split([3])


def test_from_jt_dict_and_concat_rebuild_the_example():
    kjt = example_kjt()
    rebuilt = KeyedJaggedTensor.from_jt_dict(kjt.to_dict())
    assert_kjt_matches(rebuilt, to_refimpl(kjt))
    halves = kjt.split([1, 1])
    assert_kjt_matches(KeyedJaggedTensor.concat(halves), to_refimpl(kjt))
    with pytest.raises(NotImplementedError, match="batch"):
        KeyedJaggedTensor.from_jt_dict(
            {"a": JaggedTensor(torch.arange(1), lengths=[1]), "b": JaggedTensor(torch.arange(2), lengths=[1, 1])}
        )


def test_variable_batch_arguments_are_not_supported():
    with pytest.raises(NotImplementedError, match="stride_per_key_per_rank"):
        KeyedJaggedTensor(["f1"], torch.arange(2), lengths=torch.tensor([1, 1]), stride_per_key_per_rank=[[2]])


def test_batch_of_zero_with_keys_and_the_empty_tensor():
    kjt = KeyedJaggedTensor(["f1", "f2"], torch.zeros(0, dtype=torch.int64), lengths=torch.zeros(0, dtype=torch.int32))
    assert kjt.stride() == 0 and kjt.length_per_key() == [0, 0]
    for jt in kjt.to_dict().values():
        assert jt.lengths().shape == (0,) and jt.offsets().tolist() == [0]
    empty = KeyedJaggedTensor.empty(is_weighted=True)
    assert empty.keys() == [] and empty.stride() == 0 and empty.to_dict() == {}
    assert empty.lengths().dtype == torch.int32 and empty.weights().shape == (0,)


def test_to_moves_parts_and_converts_weights_dtype():
    moved = example_kjt().to("cpu", dtype=torch.float32)
    assert moved.weights().dtype == torch.float32 and moved.values().dtype == torch.int64
    assert moved.offsets().tolist() == EXAMPLE_OFFSETS


@given(keyed_case())
def test_to_dict_and_permute_match_refimpl(case):
    keys, lengths = case
    values = np.arange(lengths.sum()) + 100
    weights = values / 4.0
    spec = ref.KeyedJaggedTensor(keys, values, weights=weights, lengths=lengths)
    fast = KeyedJaggedTensor(keys, torch.from_numpy(values), weights=torch.from_numpy(weights),
                             lengths=torch.from_numpy(lengths))
    assert_kjt_matches(fast, spec)
    for (key, fast_jt), (spec_key, spec_jt) in zip(fast.to_dict().items(), spec.to_dict().items()):
        assert key == spec_key
        assert_same(fast_jt.values(), spec_jt.values())
        assert_same(fast_jt.offsets(), spec_jt.offsets())
        assert_same(fast_jt.weights(), spec_jt.weights())
    order = list(range(len(keys)))[::-1] + [0]
    assert_kjt_matches(fast.permute(order), spec.permute(order))


# --- from_any and conversions ------------------------------------------------------------------


class TorchRecLike:
    """Only the accessors a TorchRec KeyedJaggedTensor offers, nothing of accel or refimpl."""

    def __init__(self, keys, values, lengths, weights=None, variable=False):
        self._keys, self._values, self._lengths, self._weights = keys, values, lengths, weights
        self._variable = variable

    def keys(self):
        return self._keys

    def values(self):
        return self._values

    def lengths(self):
        return self._lengths

    def offsets(self):
        return complete_cumsum(self._lengths)

    def weights_or_none(self):
        return self._weights

    def variable_stride_per_key(self):
        return self._variable


def test_from_any_reads_the_torchrec_accessors():
    duck = TorchRecLike(["f1", "f2"], torch.arange(8), torch.tensor([2, 0, 1, 1, 1, 3]), torch.ones(8))
    kjt = KeyedJaggedTensor.from_any(duck)
    spec = ref.KeyedJaggedTensor(
        ["f1", "f2"], np.arange(8), weights=np.ones(8, dtype=np.float32), offsets=np.array(EXAMPLE_OFFSETS)
    )
    assert_kjt_matches(kjt, spec)
    assert KeyedJaggedTensor.from_any(kjt) is kjt
    spec = to_refimpl(example_kjt())
    assert_kjt_matches(KeyedJaggedTensor.from_any(spec), spec)


def test_from_any_validates_and_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match=r"offsets expected offsets\[-1\] == number of values \(2\)"):
        KeyedJaggedTensor.from_any(TorchRecLike(["f1"], torch.arange(2), torch.tensor([3, 1])))
    with pytest.raises(NotImplementedError, match="variable batch"):
        KeyedJaggedTensor.from_any(TorchRecLike(["f1"], torch.arange(2), torch.tensor([2]), variable=True))
    with pytest.raises(TypeError, match="lengths"):
        KeyedJaggedTensor.from_any(object())


def test_refimpl_round_trip_is_equal_and_shares_memory():
    spec = ref.KeyedJaggedTensor(["a", "b"], np.arange(5), weights=np.linspace(0, 1, 5), lengths=np.array([1, 0, 2, 2]))
    fast = from_refimpl(spec)
    assert_kjt_matches(fast, spec)
    assert np.shares_memory(fast.values().numpy(), spec.values())
    back = to_refimpl(fast)
    assert np.shares_memory(back.weights(), spec.weights())
    assert_kjt_matches(fast, back)
    jt = ref.JaggedTensor(np.arange(3.0), lengths=np.array([0, 3]))
    assert_same(to_refimpl(from_refimpl(jt)).to_padded_dense(), jt.to_padded_dense())
    kt = ref.KeyedTensor(["a", "b"], [1, 2], np.arange(6.0).reshape(2, 3))
    assert_same(from_refimpl(kt)["b"], kt["b"])
    assert_same(to_refimpl(from_refimpl(kt)).values(), kt.values())
    with pytest.raises(TypeError, match="obj"):
        from_refimpl(fast)


def test_torchrec_conversions_explain_a_missing_install(monkeypatch):
    for name in ("torchrec", "torchrec.sparse", "torchrec.sparse.jagged_tensor"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(ImportError, match="scripts/install-torchrec.sh"):
        to_torchrec(example_kjt())
    with pytest.raises(ImportError, match="scripts/install-torchrec.sh"):
        from_torchrec(object())


def test_torchrec_round_trip_and_its_own_semantics():
    pytest.importorskip("torchrec", reason=TORCHREC_REASON)
    kjt = example_kjt()
    theirs = to_torchrec(kjt)
    assert type(theirs).__module__.startswith("torchrec")
    assert theirs.length_per_key() == kjt.length_per_key()
    ours_back = from_torchrec(theirs.permute([1, 0, 1]))
    assert_kjt_matches(ours_back, to_refimpl(kjt.permute([1, 0, 1])))
    for key, jt in theirs.to_dict().items():
        assert_same(jt.values(), kjt[key].values())
    jt = JaggedTensor(torch.arange(8.0), lengths=torch.tensor([2, 0, 1, 1, 1, 3]))
    assert_same(to_torchrec(jt).to_padded_dense(2, 10.0), jt.to_padded_dense(2, 10.0))
    assert_same(from_torchrec(to_torchrec(jt)).offsets(), jt.offsets())
    kt = KeyedTensor(["a", "b"], [1, 2], torch.arange(6.0).reshape(2, 3))
    assert from_torchrec(to_torchrec(kt)).offset_per_key() == [0, 1, 3]


# --- KeyedTensor -------------------------------------------------------------------------------


def test_keyed_tensor_matches_refimpl_for_both_key_dims():
    values = np.arange(12.0).reshape(3, 4)
    for key_dim, lengths in ((1, [1, 3]), (0, [2, 1])):
        spec = ref.KeyedTensor(["a", "b"], lengths, values, key_dim=key_dim)
        fast = KeyedTensor(["a", "b"], lengths, torch.from_numpy(values), key_dim=key_dim)
        assert fast.offset_per_key() == spec.offset_per_key()
        for key in ("a", "b"):
            assert_same(fast[key], spec[key])
            assert_same(fast.to_dict()[key], spec.to_dict()[key])
    listed = KeyedTensor.from_tensor_list(["x", "y"], [torch.ones(2, 1), torch.zeros(2, 2)])
    assert listed.length_per_key() == [1, 2] and listed["x"].tolist() == [[1.0], [1.0]]
    with pytest.raises(ValueError, match="length_per_key"):
        KeyedTensor(["a", "b"], [1], torch.zeros(2, 1))


def test_regroup_matches_refimpl_and_is_differentiable():
    a_np, b_np = np.arange(6.0).reshape(2, 3), np.array([[10.0], [20.0]])
    a_values = torch.from_numpy(a_np.copy()).requires_grad_()
    b_values = torch.from_numpy(b_np.copy()).requires_grad_()
    fast = [KeyedTensor(["a", "b"], [1, 2], a_values), KeyedTensor(["c"], [1], b_values)]
    spec = [ref.KeyedTensor(["a", "b"], [1, 2], a_np), ref.KeyedTensor(["c"], [1], b_np)]
    groups = [["c", "a"], ["b"], []]
    outs = regroup(fast, groups)
    for out, expected in zip(outs, ref.regroup(spec, groups)):
        assert_same(out.detach(), expected)
    assert KeyedTensor.regroup(fast, groups)[0].tolist() == outs[0].tolist()
    upstream = [torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64),
                torch.tensor([[5.0, 6.0], [7.0, 8.0]], dtype=torch.float64)]
    loss = (outs[0] * upstream[0]).sum() + (outs[1] * upstream[1]).sum()
    grad_a, grad_b = torch.autograd.grad(loss, [a_values, b_values])
    # out_0 = [c | a], out_1 = [b]: each input slice receives the upstream block it was copied to
    np.testing.assert_array_equal(grad_a.numpy(), [[2.0, 5.0, 6.0], [4.0, 7.0, 8.0]])
    np.testing.assert_array_equal(grad_b.numpy(), [[1.0], [3.0]])
    assert outs[2].shape == (2, 0)
    named = KeyedTensor.regroup_as_dict(fast, [["b"]], ["x"])
    assert list(named) == ["x"] and named["x"].shape == (2, 2)
    with pytest.raises(ValueError, match="'z'"):
        regroup(fast, [["z"]])
