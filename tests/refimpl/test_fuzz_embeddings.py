"""Fuzz: hand-made malformed KeyedJaggedTensors against refimpl's sparse validators and EBC/EC entry points.

Every input is a valid KJT with one fault planted (or none): negative or huge lengths (including lengths whose
int64 sum wraps around to the number of ids), offsets that do not start at 0 or go down, lengths that do not sum
to the ids, lengths and offsets that disagree, ids out of range, wrong dtypes, weights of the wrong length, a
missing key, a wrong stride, no keys at all. The outcome must be the fault's ValueError / IndexError / TypeError
with a message naming the argument, or, without a fault, the pooled sums and rows written out below in float64.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from refimpl.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from refimpl.sparse import KeyedJaggedTensor

# f1 is read by both tables (ids must be < 3, t2's row count), f2 by t2 only; "extra" is read by none.
TABLES = (("t1", 5, ("f1",)), ("t2", 3, ("f1", "f2")))
DIM = 2
ROWS = {"f1": 3, "f2": 3}
BIG = 2**62

# fault -> the error it must raise (None: the input stays valid)
FAULTS = {
    "none": None,
    "int32 parts": None,
    "extra key with any ids": None,
    "negative length": ValueError,
    "huge length": ValueError,
    "lengths wrapping to the id count": ValueError,
    "offsets not starting at 0": ValueError,
    "offsets going down": ValueError,
    "offsets ending short": ValueError,
    "lengths not summing to the ids": ValueError,
    "lengths and offsets disagree": ValueError,
    "offsets of the wrong size": ValueError,
    "neither lengths nor offsets": ValueError,
    "rows not divisible by the keys": ValueError,
    "wrong stride": ValueError,
    "negative stride": TypeError,
    "duplicate keys": ValueError,
    "missing key": ValueError,
    "no keys at all": ValueError,
    "id too large": IndexError,
    "negative id": IndexError,
    "huge unsigned id": IndexError,
    "float ids": TypeError,
    "float lengths": TypeError,
    "weights too short": ValueError,
    "weights too long": ValueError,
    "2-D weights": ValueError,
}

# Words one of which a clear message names: the argument, the feature or the table.
NAMED = ("lengths", "offsets", "values", "weights", "stride", "keys", "key", "feature", "ids")


def offsets_of(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@st.composite
def valid_parts(draw, min_batch=0, keys=None):
    """A valid KJT's parts as plain NumPy: keys (f1, f2 in some order, maybe "extra"), lengths, ids, weights."""
    if keys is None:
        keys = draw(st.permutations(["f1", "f2"]))
        if draw(st.booleans()):
            keys.insert(draw(st.integers(0, 2)), "extra")
    batch = draw(st.integers(min_batch, 3))
    lengths = np.array(draw(st.lists(st.integers(0, 3), min_size=len(keys) * batch, max_size=len(keys) * batch)),
                       dtype=np.int64)
    ids = []
    for k, key in enumerate(keys):
        n = int(lengths[k * batch:(k + 1) * batch].sum())
        high = ROWS.get(key, 1000) - 1
        ids += draw(st.lists(st.integers(0, high), min_size=n, max_size=n))
    ids = np.array(ids, dtype=np.int64)
    weights = np.array(draw(st.lists(st.floats(-2, 2), min_size=ids.size, max_size=ids.size)), dtype=np.float64)
    return {"keys": keys, "values": ids, "lengths": lengths, "offsets": None, "weights": weights,
            "stride": draw(st.sampled_from([None, batch])), "batch": batch}


def _read_positions(parts):
    """Value positions of the keys the tables read."""
    keys, batch, offsets = parts["keys"], parts["batch"], offsets_of(parts["lengths"])
    out = []
    for k, key in enumerate(keys):
        if key in ROWS:
            out += range(offsets[k * batch], offsets[(k + 1) * batch])
    return out


@st.composite
def faulty_parts(draw, fault):
    """(parts, the error the fault must raise). Parts hold lengths and/or offsets as the draw chooses."""
    needs_rows = fault in ("negative length", "huge length", "offsets going down", "lengths and offsets disagree")
    if fault == "lengths wrapping to the id count":
        parts = draw(valid_parts(min_batch=2, keys=["f1", "f2"]))  # at least four rows
    else:
        parts = draw(valid_parts(min_batch=1 if needs_rows else 0))
    lengths = parts["lengths"]
    rows = lengths.size
    give = draw(st.sampled_from(["lengths", "offsets", "both"]))
    offsets = None
    if fault == "negative length":
        lengths[draw(st.integers(0, rows - 1))] = -draw(st.sampled_from([1, 2, BIG]))
    elif fault == "huge length":
        lengths[draw(st.integers(0, rows - 1))] = draw(st.sampled_from([BIG, np.iinfo(np.int64).max]))
    elif fault == "lengths wrapping to the id count":
        # Four rows of 2^62 more than they hold: the int64 sum wraps around to exactly the number of ids.
        lengths[:4] += BIG
    elif fault == "offsets going down":
        offsets = offsets_of(lengths)
        i = draw(st.integers(1, rows))
        offsets[i] = offsets[i - 1] - draw(st.integers(1, 3))
        give = "offsets"
    elif fault == "offsets not starting at 0":
        offsets = offsets_of(lengths) + draw(st.sampled_from([1, -1, BIG]))
        give = draw(st.sampled_from(["offsets", "both"]))
    elif fault == "offsets ending short":
        offsets = offsets_of(lengths)
        offsets[-1] -= 1
        give = "offsets"
    elif fault == "lengths not summing to the ids":
        if draw(st.booleans()) and parts["values"].size:
            parts["values"], parts["weights"] = parts["values"][:-1], parts["weights"][:-1]
        else:
            parts["values"], parts["weights"] = np.append(parts["values"], 0), np.append(parts["weights"], 1.0)
    elif fault == "lengths and offsets disagree":
        offsets = offsets_of(lengths)
        i = draw(st.integers(0, rows - 1))
        lengths = lengths.copy()
        lengths[i] += 1
        give = "both"
    elif fault == "offsets of the wrong size":
        offsets = np.append(offsets_of(lengths), offsets_of(lengths)[-1])
        give = "both"
    elif fault == "neither lengths nor offsets":
        give = "neither"
    elif fault == "rows not divisible by the keys":
        lengths = np.append(lengths, 0)
        parts["stride"] = None
    elif fault == "wrong stride":
        parts["stride"] = parts["batch"] + draw(st.integers(1, 3))
    elif fault == "negative stride":
        parts["stride"] = -1
    elif fault == "duplicate keys":
        parts["keys"] = [parts["keys"][0]] + parts["keys"][:-1]
    elif fault == "missing key":
        parts = _drop_key(parts, draw(st.sampled_from(["f1", "f2"])))
        lengths = parts["lengths"]
    elif fault == "no keys at all":
        parts.update(keys=[], values=np.zeros(0, np.int64), weights=np.zeros(0), stride=None, batch=0)
        lengths = np.zeros(0, np.int64)
    elif fault in ("id too large", "negative id", "huge unsigned id"):
        positions = _read_positions(parts)
        if not positions:  # nothing read: make one bag of f1 hold one id
            parts = _single_id(parts)
            lengths, positions = parts["lengths"], _read_positions(parts)
        j = draw(st.sampled_from(positions))
        if fault == "id too large":
            parts["values"][j] = draw(st.sampled_from([3, 4, 5, BIG, np.iinfo(np.int64).max]))
        elif fault == "negative id":
            parts["values"][j] = draw(st.sampled_from([-1, -BIG, np.iinfo(np.int64).min]))
        else:
            values = parts["values"].astype(np.uint64)
            values[j] = np.uint64(2**63 + 5)
            parts["values"] = values
    elif fault == "float ids":
        if parts["values"].size == 0:
            parts = _single_id(parts)
            lengths = parts["lengths"]
        parts["values"] = parts["values"].astype(np.float64)
    elif fault == "float lengths":
        if lengths.size == 0:
            parts = _single_id(parts)
        lengths = parts["lengths"].astype(np.float64)
        give = draw(st.sampled_from(["lengths", "both"]))
        offsets = offsets_of(parts["lengths"])
    elif fault == "weights too short":
        parts["weights"] = parts["weights"][:-1] if parts["weights"].size else np.zeros(0)
        if parts["values"].size == 0:
            parts = _single_id(parts)
            parts["weights"] = np.zeros(0)
            lengths = parts["lengths"]
    elif fault == "weights too long":
        parts["weights"] = np.append(parts["weights"], 0.5)
    elif fault == "2-D weights":
        parts["weights"] = parts["weights"].reshape(-1, 1)
    elif fault == "int32 parts":
        parts["values"] = parts["values"].astype(np.int32)
        lengths = lengths.astype(np.int32)
    elif fault == "extra key with any ids" and "extra" not in parts["keys"]:
        parts = _with_extra(parts, draw(st.lists(st.integers(-BIG, BIG), min_size=0, max_size=3)))
        lengths = parts["lengths"]
    if offsets is None and give in ("offsets", "both"):
        offsets = offsets_of(lengths.astype(np.int64)) if lengths.dtype.kind in "iu" else None
        give = "lengths" if offsets is None else give
    parts["lengths"] = lengths if give in ("lengths", "both") else None
    parts["offsets"] = offsets if give in ("offsets", "both") else None
    if give == "neither":
        parts["lengths"] = parts["offsets"] = None
    return parts, FAULTS[fault]


def _drop_key(parts, key):
    keys, batch, lengths = parts["keys"], parts["batch"], parts["lengths"]
    k = keys.index(key)
    offsets = offsets_of(lengths)
    lo, hi = offsets[k * batch], offsets[(k + 1) * batch]
    keep = np.r_[0:lo, hi:parts["values"].size]
    return dict(parts, keys=keys[:k] + keys[k + 1:], values=parts["values"][keep], weights=parts["weights"][keep],
                lengths=np.concatenate([lengths[:k * batch], lengths[(k + 1) * batch:]]))


def _single_id(parts):
    return dict(parts, keys=["f1", "f2"], values=np.array([1], np.int64), weights=np.array([0.5]),
                lengths=np.array([1, 0], np.int64), stride=None, batch=1)


def _with_extra(parts, extra_ids):
    batch = parts["batch"]
    extra_lengths = np.zeros(batch, np.int64)
    if batch:
        extra_lengths[0] = len(extra_ids)
    elif extra_ids:
        extra_ids = []
    return dict(parts, keys=parts["keys"] + ["extra"],
                values=np.concatenate([parts["values"], np.array(extra_ids, np.int64)]),
                weights=np.concatenate([parts["weights"], np.ones(len(extra_ids))]),
                lengths=np.concatenate([parts["lengths"], extra_lengths]))


# --- the modules and the expected results --------------------------------------------------------------------


def modules():
    rng = np.random.default_rng(0)
    bag_tables = [EmbeddingBagConfig(rows, DIM, name=name, feature_names=list(features), pooling=PoolingType.SUM)
                  for name, rows, features in TABLES]
    seq_tables = [EmbeddingConfig(rows, DIM, name=name, feature_names=list(features)) for name, rows, features in TABLES]
    return {
        "ebc": EmbeddingBagCollection(bag_tables, rng=rng),
        "weighted ebc": EmbeddingBagCollection(bag_tables, is_weighted=True, rng=rng),
        "ec": EmbeddingCollection(seq_tables, rng=rng),
    }


MODULES = modules()


def bags(parts, key):
    """[ids of sample b] and [weights of sample b] of `key`, read by the layout's definition."""
    keys, lengths = parts["keys"], parts["lengths"] if parts["lengths"] is not None else np.diff(parts["offsets"])
    batch = lengths.size // len(keys)
    offsets, k = offsets_of(lengths), keys.index(key)
    spans = [(offsets[k * batch + b], offsets[k * batch + b + 1]) for b in range(batch)]
    return ([parts["values"][lo:hi].astype(np.int64) for lo, hi in spans],
            [parts["weights"][lo:hi] for lo, hi in spans])


def expected_pooled(module, parts, weighted):
    """out[b] = [sum_j w_j W_t[i_j] for each (table t, feature f) slot] in table then feature order."""
    state = module.state_dict()
    blocks = []
    for name, _, features in TABLES:
        W = state[f"embedding_bags.{name}.weight"]
        for feature in features:
            ids, ws = bags(parts, feature)
            blocks.append(np.array([(ws[b][:, None] * W[ids[b]]).sum(0) if weighted else W[ids[b]].sum(0)
                                    for b in range(len(ids))]).reshape(len(ids), DIM))
    return np.concatenate(blocks, axis=1)


def expected_rows(module, parts):
    """{feature@table: W_t[ids of f]} for the sequence collection (every feature of t2 shares f1's name rule)."""
    state = module.state_dict()
    out = {}
    for name, _, features in TABLES:
        for feature in features:
            ids = np.concatenate(bags(parts, feature)[0] + [np.zeros(0, np.int64)])
            label = f"{feature}@{name}" if feature == "f1" else feature
            out[label] = state[f"embeddings.{name}.weight"][ids]
    return out


def kjt(parts, cls=KeyedJaggedTensor):
    return cls(parts["keys"], parts["values"], weights=parts["weights"], lengths=parts["lengths"],
               offsets=parts["offsets"], stride=parts["stride"])


def run(name, parts):
    """The module's output as float64 arrays (KJT construction included)."""
    out = MODULES[name](kjt(parts))
    if name == "ec":
        return {k: np.asarray(v.values()) for k, v in out.items()}
    return np.asarray(out.values())


def check(name, parts, error):
    """error raised with a message that names what is wrong, or the formula's result."""
    if error is not None:
        with pytest.raises(error, match="|".join(NAMED)):
            run(name, parts)
        return
    got = run(name, parts)
    module = MODULES[name]
    if name == "ec":
        want = expected_rows(module, parts)
        assert list(got) == list(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-15, atol=0)
    else:
        np.testing.assert_allclose(got, expected_pooled(module, parts, name == "weighted ebc"), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("fault", list(FAULTS))
@given(data=st.data())
def test_collections_raise_the_fault_or_give_the_formula(fault, data):
    parts, error = data.draw(faulty_parts(fault))
    for name in MODULES:
        check(name, parts, error)


# Faults only a collection can see: the KJT itself is valid.
COLLECTION_FAULTS = ("id too large", "negative id", "huge unsigned id", "float ids", "missing key", "no keys at all")


@pytest.mark.parametrize("fault", [f for f, e in FAULTS.items() if e is not None and f not in COLLECTION_FAULTS])
@given(data=st.data())
def test_the_kjt_itself_rejects_layout_and_content_faults(fault, data):
    # Faults of the KJT's own parts are caught at construction, before any module sees them.
    parts, error = data.draw(faulty_parts(fault))
    with pytest.raises(error, match="|".join(NAMED)):
        kjt(parts)


def test_wrapped_lengths_are_not_mistaken_for_a_valid_kjt():
    # int64 sum of [2^62 + 1, 2^62, 2^62, 2^62 - 1] wraps to 0 + 2 (mod 2^64): two ids would "fit".
    lengths = np.array([BIG + 1, BIG, BIG, BIG - 1], np.int64)
    with pytest.raises(ValueError, match="lengths"):
        KeyedJaggedTensor(["f1", "f2"], np.array([0, 1]), lengths=lengths)
    with pytest.raises(ValueError, match="offsets"):
        KeyedJaggedTensor(["f1", "f2"], np.array([0, 1]), offsets=offsets_of(lengths))
