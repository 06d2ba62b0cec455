"""accel.validate: the same rules and the same messages as refimpl.validate, on torch tensors,
with one device-to-host read per call."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from accel import validate as av
from accel.sparse import JaggedTensor, KeyedJaggedTensor
from refimpl import validate as rv

I64 = np.int64


def arr(*xs, dtype=I64):
    return np.array(xs, dtype=dtype)


def t(a):
    return None if a is None else torch.from_numpy(np.array(a))


def _message(fn, *args, **kwargs):
    """(type, message) of the error fn raises."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return type(info.value), str(info.value)


# (values, lengths, offsets, weights, argument named in the message)
JAGGED_ERRORS = {
    "neither lengths nor offsets": (np.arange(3), None, None, None, "lengths or offsets"),
    "float lengths": (np.arange(3), arr(1.0, 2.0, dtype=np.float32), None, None, "lengths"),
    "bool offsets": (np.arange(1), None, arr(False, True, dtype=bool), None, "offsets"),
    "negative length": (np.arange(3), arr(2, -1, 2), None, None, "lengths"),
    "offsets[0] != 0": (np.arange(3), None, arr(1, 2, 3), None, "offsets"),
    "non-monotone offsets": (np.arange(3), None, arr(0, 2, 1, 3), None, "offsets"),
    "offsets[-1] != n": (np.arange(3), None, arr(0, 1, 2), None, "offsets"),
    "sum(lengths) != n": (np.arange(3), arr(1, 1), None, None, "lengths"),
    "lengths and offsets disagree": (np.arange(3), arr(2, 1), arr(0, 1, 3), None, "lengths and offsets"),
    "offsets of the wrong size": (np.arange(3), arr(1, 2), arr(0, 3), None, "offsets"),
    "weights too short": (np.arange(3), arr(3), None, np.ones(2), "weights"),
    "values 3-D": (np.zeros((3, 1, 1)), arr(3), None, None, "values"),
}


@pytest.mark.parametrize("case", list(JAGGED_ERRORS))
def test_validate_jagged_raises_refimpls_error(case):
    values, lengths, offsets, weights, argument = JAGGED_ERRORS[case]
    expected = _message(rv.validate_jagged, values, lengths, offsets, weights, "JaggedTensor")
    kind, message = _message(av.validate_jagged, t(values), t(lengths), t(offsets), t(weights), "JaggedTensor")
    # Only a dtype reads differently: torch prints "torch.float32" where NumPy prints "float32".
    assert (kind, message.replace("torch.", "")) == expected
    got = (kind, message)
    assert argument in got[1]


@pytest.mark.parametrize("case", list(JAGGED_ERRORS))
def test_jagged_tensor_constructor_rejects(case):
    values, lengths, offsets, weights, argument = JAGGED_ERRORS[case]
    with pytest.raises((ValueError, TypeError), match=f"JaggedTensor: .*{argument}"):
        JaggedTensor(t(values), weights=t(weights), lengths=t(lengths), offsets=t(offsets))


KEYS = ["f1", "f2"]

KEYED_ERRORS = {
    "duplicate keys": (["f1", "f1"], arr(2, 0, 1, 1, 1, 3), None, None, "keys"),
    "lengths not divisible": (KEYS, arr(2, 0, 1, 1, 4), None, None, "lengths"),
    "stride mismatch": (KEYS, arr(2, 0, 1, 1, 1, 3), None, 2, "stride"),
    "negative length": (KEYS, arr(2, 0, 1, 1, 5, -1), None, None, "lengths (key 'f2', sample 2)"),
    "non-monotone offsets": (KEYS, None, arr(0, 2, 2, 3, 6, 5, 8), None, "offsets (key 'f2', sample 1)"),
    "disagreement": (KEYS, arr(2, 0, 1, 2, 0, 3), arr(0, 2, 2, 3, 4, 5, 8), None, "(key 'f2', sample 0)"),
}


@pytest.mark.parametrize("case", list(KEYED_ERRORS))
def test_validate_keyed_jagged_raises_refimpls_error(case):
    keys, lengths, offsets, stride, argument = KEYED_ERRORS[case]
    values = np.arange(8)
    expected = _message(rv.validate_keyed_jagged, keys, values, lengths, offsets, None, stride)
    got = _message(av.validate_keyed_jagged, keys, t(values), t(lengths), t(offsets), None, stride)
    assert got == expected
    assert argument in got[1]


@pytest.mark.parametrize("case", list(KEYED_ERRORS))
def test_keyed_jagged_tensor_constructor_rejects(case):
    keys, lengths, offsets, stride, argument = KEYED_ERRORS[case]
    with pytest.raises(ValueError) as info:
        KeyedJaggedTensor(keys, torch.arange(8), lengths=t(lengths), offsets=t(offsets), stride=stride)
    assert argument in str(info.value)


def test_validate_keyed_jagged_returns_the_batch_size():
    lengths = torch.tensor([2, 0, 1, 1, 1, 3])
    assert av.validate_keyed_jagged(KEYS, torch.arange(8), lengths, None, None) == 3
    assert av.validate_keyed_jagged(KEYS, torch.zeros(0), torch.zeros(0, dtype=torch.int32), None, None) == 0


@st.composite
def maybe_broken_jagged(draw):
    """A valid (lengths, offsets, n) triple, then possibly one entry nudged off."""
    lengths = np.array(draw(st.lists(st.sampled_from([0, 0, 1, 2]), max_size=8)), dtype=I64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(I64)
    n = int(offsets[-1])
    which = draw(st.sampled_from(["none", "lengths", "offsets", "n"]))
    delta = draw(st.sampled_from([-1, 1]))
    if which == "lengths" and lengths.size:
        lengths[draw(st.integers(0, lengths.size - 1))] += delta
    elif which == "offsets":
        offsets[draw(st.integers(0, offsets.size - 1))] += delta
    elif which == "n":
        n = max(n + delta, 0)
    use = draw(st.sampled_from(["lengths", "offsets", "both"]))
    return (None if use == "offsets" else lengths), (None if use == "lengths" else offsets), n


@given(maybe_broken_jagged())
def test_device_flags_fire_exactly_when_refimpl_rejects(case):
    lengths, offsets, n = case
    try:
        rv.check_jagged_contents(n, lengths, offsets)
        host_rejects = False
    except ValueError:
        host_rejects = True
    flags = av.jagged_content_flags(n, t(lengths), t(offsets))
    assert bool(torch.stack(flags).any()) == host_rejects if flags else not host_rejects


class _HostReads(TorchFunctionMode):
    """Counts the tensor methods that read device data back to the host."""

    READS = {"item", "tolist", "__bool__", "__int__", "__index__", "__float__", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def test_a_valid_call_reads_the_device_once():
    lengths = torch.tensor([2, 0, 1, 1, 1, 3])
    offsets = torch.tensor([0, 2, 2, 3, 4, 5, 8])
    for call in (
        lambda: av.validate_keyed_jagged(KEYS, torch.arange(8), lengths, offsets, torch.ones(8)),
        lambda: av.validate_jagged(torch.arange(8), lengths, None, None),
        lambda: av.validate_ids_in_range(torch.tensor([0, 3, 9]), 10, "f1", "t1"),
    ):
        with _HostReads() as mode:
            call()
        assert len(mode.reads) == 1, mode.reads


def test_parts_on_another_device_are_rejected():
    meta_lengths = torch.zeros(3, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match="lengths expected device cpu.*got meta"):
        av.validate_jagged(torch.arange(3), meta_lengths, None, None)


# --- dense lengths -----------------------------------------------------------------------------


def test_validate_dense_lengths_matches_refimpl():
    values, lengths = torch.zeros(2, 3), torch.tensor([1, 4])
    with pytest.raises(ValueError, match="lengths") as info:
        av.validate_dense_lengths(values, lengths, None)
    with pytest.raises(ValueError) as ref_info:
        rv.check_dense_lengths_contents(3, lengths.numpy(), "JaggedTensor.from_dense_lengths")
    assert str(info.value) == str(ref_info.value)
    with pytest.raises(ValueError, match="weights"):
        av.validate_dense_lengths(values, torch.tensor([1, 2]), torch.zeros(2, 2))


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[0, 3, 10], [-1, 2], [7, 12, 11]])
def test_ids_out_of_range_raise_refimpls_index_error(ids):
    expected = _message(rv.validate_ids_in_range, np.array(ids), 10, "f1", "t1")
    got = _message(av.validate_ids_in_range, torch.tensor(ids), 10, "f1", "t1")
    assert got == expected
    assert got[0] is IndexError and "feature 'f1' (table 't1')" in got[1] and "[0, 10)" in got[1]


def test_ids_in_range_and_empty_ids_pass():
    av.validate_ids_in_range(torch.tensor([0, 9]), 10, "f1", "t1")
    av.validate_ids_in_range(torch.zeros(0, dtype=torch.int32), 10, "f1", "t1")


def test_float_ids_are_a_type_error():
    with pytest.raises(TypeError, match=r"feature 'f1' \(table 't1'\): ids.*integer.*torch.float32"):
        av.validate_ids_in_range(torch.tensor([1.0]), 10, "f1", "t1")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for torch tensors")
def test_cuda_tensors_raise_the_same_messages():
    values, lengths = torch.arange(3, device="cuda"), torch.tensor([2, -1, 2], device="cuda")
    expected = _message(rv.validate_jagged, np.arange(3), arr(2, -1, 2), None, None, "JaggedTensor")
    assert _message(av.validate_jagged, values, lengths, None, None, "JaggedTensor") == expected
    ids = torch.tensor([0, 10], device="cuda")
    with pytest.raises(IndexError, match="id 10 at position 1"):
        av.validate_ids_in_range(ids, 10, "f1", "t1")


# --- the meta device: layout checked, contents skipped ----------------------------------------------


def meta(a, dtype=None):
    return None if a is None else torch.as_tensor(np.array(a), dtype=dtype).to("meta")


def test_has_contents_is_false_for_meta_tensors_only():
    assert av.has_contents(torch.zeros(2), None)
    assert not av.has_contents(torch.zeros(2), torch.zeros(2, device="meta"))
    assert av.has_contents()


def test_meta_jagged_parts_pass_without_reading_contents():
    # On the CPU these lengths would be rejected (sum 5 != 3 values); meta lengths have no values to sum.
    av.validate_jagged(meta(np.arange(3)), meta(arr(2, 3)), None, meta(np.ones(3)))
    jt = JaggedTensor(meta(np.zeros((3, 2))), lengths=meta(arr(2, 1)))
    assert jt.values().device.type == "meta" and jt.lengths().shape == (2,)


def test_meta_keyed_jagged_returns_the_batch_size_from_shapes():
    assert av.validate_keyed_jagged(KEYS, meta(np.arange(8)), meta(arr(2, 0, 1, 1, 1, 3)), None, None) == 3
    kjt = KeyedJaggedTensor(KEYS, meta(np.arange(4)), offsets=meta(arr(0, 1, 2, 3, 4)))
    assert kjt.stride() == 2 and kjt.offsets().device.type == "meta"


# Layout errors read no contents, so the meta device raises them exactly as the CPU does.
META_LAYOUT_ERRORS = ["neither lengths nor offsets", "float lengths", "bool offsets", "offsets of the wrong size",
                      "weights too short", "values 3-D"]


@pytest.mark.parametrize("case", META_LAYOUT_ERRORS)
def test_meta_jagged_layout_errors_are_refimpls(case):
    values, lengths, offsets, weights, argument = JAGGED_ERRORS[case]
    expected = _message(rv.validate_jagged, values, lengths, offsets, weights, "JaggedTensor")
    kind, message = _message(av.validate_jagged, meta(values), meta(lengths), meta(offsets), meta(weights))
    assert (kind, message.replace("torch.", "")) == expected
    assert argument in message


@pytest.mark.parametrize("case", ["duplicate keys", "lengths not divisible", "stride mismatch"])
def test_meta_keyed_layout_errors_are_refimpls(case):
    keys, lengths, offsets, stride, argument = KEYED_ERRORS[case]
    expected = _message(rv.validate_keyed_jagged, keys, np.arange(8), lengths, offsets, None, stride)
    assert _message(av.validate_keyed_jagged, keys, meta(np.arange(8)), meta(lengths), meta(offsets), None,
                    stride) == expected
    with pytest.raises(ValueError, match=argument.split(" ")[0]):
        KeyedJaggedTensor(keys, meta(np.arange(8)), lengths=meta(lengths), stride=stride)


def test_meta_ids_skip_the_range_check_but_not_the_dtype_check():
    av.validate_ids_in_range(meta([-1, 10, 99]), 10, "f1", "t1")  # no values to compare
    with pytest.raises(TypeError, match=r"feature 'f1' \(table 't1'\): ids.*integer.*torch.float32"):
        av.validate_ids_in_range(meta([1.0], torch.float32), 10, "f1", "t1")


def test_meta_dense_lengths_keep_the_layout_check():
    av.validate_dense_lengths(meta(np.zeros((2, 3))), meta(arr(1, 4)), None)  # 4 > 3 is a content rule
    with pytest.raises(ValueError, match="weights"):
        av.validate_dense_lengths(meta(np.zeros((2, 2))), meta(arr(1, 2)), meta(np.zeros((2, 3))))


def test_meta_validation_reads_nothing_back():
    with _HostReads() as mode:
        av.validate_keyed_jagged(KEYS, meta(np.arange(8)), meta(arr(2, 0, 1, 1, 1, 3)), meta(arr(0, 2, 2, 3, 4, 5, 8)),
                                 meta(np.ones(8)))
        av.validate_ids_in_range(meta([0, 3]), 10, "f1", "t1")
    assert mode.reads == []
