"""Fuzz: PositionWeightedModule and PositionWeightedProcessor in refimpl and accel, fed malformed jagged input.

Bags are drawn with zero lengths and lengths past the feature's max length, then one fault is planted in the
layout (a negative or a 2^62 length, offsets that go down, do not start at 0, end short or past the ids, an
offset near 2^62; int32 parts; float offsets) or, for the processor, in the positions carried as weights (NaN,
+-Inf, negative, too large, fractional). The parts reach the modules as the package's own jagged types or as
plain objects with TorchRec's accessors, which nothing validated before. Both packages must raise a
ValueError / IndexError / TypeError naming the argument or feature, or give the same weights (refimpl's, in
float64).
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import accel
import refimpl
from tests.fuzz.conftest import assert_clear_error, assert_same_values, outcome

MAX_LENGTHS = {"f": 3, "g": 1}
NAMED = ("offsets", "lengths", "values", "weights", "position", "feature", "'f'", "'g'", "keys")
LAYOUT_FAULTS = ("none", "bag past max length", "negative length", "huge length", "offsets going down",
                 "offsets not starting at 0", "offsets ending short", "offsets past the ids", "offset near 2^62",
                 "int32 parts", "float offsets")
POSITION_FAULTS = ("none", "nan", "inf", "-inf", "negative", "too large", "fractional", "2^63")


class Accessors:
    """TorchRec's JaggedTensor / KeyedJaggedTensor accessors over unvalidated parts."""

    def __init__(self, values, lengths, offsets, weights=None, keys=None):
        self._parts = (values, lengths, offsets, weights, keys)

    def values(self):
        return self._parts[0]

    def lengths(self):
        return self._parts[1]

    def offsets(self):
        return self._parts[2]

    def weights_or_none(self):
        return self._parts[3]

    def weights(self):
        return self._parts[3]

    def keys(self):
        return list(self._parts[4])


@st.composite
def jagged_parts(draw, rows, max_length):
    """lengths (rows,), offsets, int64 ids, with `fault` planted; the ids are never read."""
    limit = max_length + (1 if draw(st.booleans()) else 0)
    lengths = np.array(draw(st.lists(st.integers(0, limit), min_size=rows, max_size=rows)), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.arange(int(offsets[-1]), dtype=np.int64)
    fault = draw(st.sampled_from(LAYOUT_FAULTS))
    if fault == "bag past max length" and rows:
        lengths[draw(st.integers(0, rows - 1))] = max_length + 1
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.arange(int(offsets[-1]), dtype=np.int64)
    elif fault in ("negative length", "huge length") and rows:
        lengths[draw(st.integers(0, rows - 1))] = -1 if fault == "negative length" else 2**62
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    elif fault == "offsets going down" and rows:
        i = draw(st.integers(1, rows))
        offsets[i] = offsets[i - 1] - draw(st.integers(1, 2))
    elif fault == "offsets not starting at 0":
        offsets = offsets + draw(st.sampled_from([1, -1]))
    elif fault == "offsets ending short" and offsets[-1] > 0:
        offsets[-1] -= 1
    elif fault == "offsets past the ids":
        offsets[-1] += 1
    elif fault == "offset near 2^62" and rows:
        offsets[draw(st.integers(1, rows))] = 2**62
    elif fault == "int32 parts":
        values, lengths, offsets = values.astype(np.int32), lengths.astype(np.int32), offsets.astype(np.int32)
    elif fault == "float offsets":
        offsets = offsets.astype(np.float32)
    return {"values": values, "lengths": lengths, "offsets": offsets, "fault": fault}


def _accel_jagged(parts, plain):
    values, lengths, offsets = (torch.from_numpy(np.ascontiguousarray(parts[k]))
                                for k in ("values", "lengths", "offsets"))
    if plain:
        return Accessors(values, lengths, offsets)
    return accel.JaggedTensor(values, lengths=lengths, offsets=offsets)


def _refimpl_jagged(parts, plain):
    values, lengths, offsets = parts["values"], parts["lengths"], parts["offsets"]
    if plain:
        return Accessors(values, lengths, offsets)
    return refimpl.JaggedTensor(values, lengths=lengths, offsets=offsets)


def compare(got, want, what, read):
    if want[0] == "error" or got[0] == "error":
        assert_clear_error(want, NAMED, f"refimpl {what}")
        assert_clear_error(got, NAMED, f"accel {what}")
        return
    assert_same_values(read(got[1]), read(want[1]), what)


@given(data=st.data())
def test_position_weighted_module_on_malformed_bags(data):
    a_module, r_module = accel.PositionWeightedModule(MAX_LENGTHS), refimpl.PositionWeightedModule(MAX_LENGTHS)
    rows = data.draw(st.integers(0, 3))
    parts = {key: data.draw(jagged_parts(rows, length)) for key, length in MAX_LENGTHS.items()}
    plain = data.draw(st.booleans())
    got = outcome(lambda: a_module({k: _accel_jagged(p, plain) for k, p in parts.items()}))
    want = outcome(lambda: r_module({k: _refimpl_jagged(p, plain) for k, p in parts.items()}))
    faults = {k: p["fault"] for k, p in parts.items()}
    for key in MAX_LENGTHS:
        compare(got, want, f"PositionWeightedModule {faults} {'accessors' if plain else 'jagged'}",
                lambda out: out[key].weights())
        if got[0] == "error":
            break


@st.composite
def grouped_parts(draw):
    """A KJT's parts over keys f (max length 3) and h (no position weights), maybe with positions as weights."""
    batch = draw(st.integers(0, 3))
    keys = draw(st.sampled_from([["f", "h"], ["h", "f"], ["f"]]))
    parts = draw(jagged_parts(batch * len(keys), MAX_LENGTHS["f"]))
    n = parts["values"].size
    positions = None
    fault = draw(st.sampled_from(POSITION_FAULTS))
    if draw(st.booleans()) or fault != "none":
        positions = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.float32)
        if n:
            j = draw(st.integers(0, n - 1))
            positions[j] = {"none": positions[j], "nan": np.nan, "inf": np.inf, "-inf": -np.inf, "negative": -1.0,
                            "too large": 3.0, "fractional": 1.75, "2^63": 2.0**63}[fault]
    return dict(parts, keys=keys, batch=batch, positions=positions, position_fault=fault)


def _accel_kjt(parts, plain):
    t = {k: None if parts[k] is None else torch.from_numpy(np.ascontiguousarray(parts[k]))
         for k in ("values", "lengths", "offsets", "positions")}
    if plain:
        return Accessors(t["values"], t["lengths"], t["offsets"], t["positions"], parts["keys"])
    return accel.KeyedJaggedTensor(parts["keys"], t["values"], weights=t["positions"], lengths=t["lengths"],
                                   offsets=t["offsets"])


def _refimpl_kjt(parts, plain):
    weights = None if parts["positions"] is None else parts["positions"].astype(np.float64)
    if plain:
        return Accessors(parts["values"], parts["lengths"], parts["offsets"], weights, parts["keys"])
    return refimpl.KeyedJaggedTensor(parts["keys"], parts["values"], weights=weights, lengths=parts["lengths"],
                                     offsets=parts["offsets"])


@given(data=st.data())
def test_position_weighted_processor_on_malformed_kjts(data):
    a_module = accel.PositionWeightedProcessor({"f": MAX_LENGTHS["f"]})
    r_module = refimpl.PositionWeightedProcessor({"f": MAX_LENGTHS["f"]})
    parts = data.draw(grouped_parts())
    plain = data.draw(st.booleans())
    got = outcome(lambda: a_module(_accel_kjt(parts, plain)))
    want = outcome(lambda: r_module(_refimpl_kjt(parts, plain)))
    what = f"PositionWeightedProcessor ({parts['fault']}, positions {parts['position_fault']}, keys {parts['keys']})"
    compare(got, want, what, lambda out: out.weights())
    if got[0] == "value":
        assert list(got[1].keys()) == list(want[1].keys()) == ["f"]
        np.testing.assert_array_equal(np.asarray(got[1].values()), np.asarray(want[1].values()))


@pytest.mark.parametrize("fault", ["nan", "inf", "2^63"])
def test_processor_refuses_positions_that_are_no_integer(fault):
    # A cast of NaN or an out-of-range float to int64 is undefined; it must never reach an index.
    value = {"nan": np.nan, "inf": np.inf, "2^63": 2.0**63}[fault]
    for package, tensor in ((accel, torch.tensor), (refimpl, np.array)):
        kjt = package.KeyedJaggedTensor(["f"], tensor([1, 2]), weights=tensor([0.0, value]), lengths=tensor([2]))
        with pytest.raises((ValueError, IndexError), match="positions|weights"):
            package.PositionWeightedProcessor({"f": 3})(kjt)
