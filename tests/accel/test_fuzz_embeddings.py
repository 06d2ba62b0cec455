"""Fuzz: hand-made malformed KeyedJaggedTensors against accel's sparse validators and EBC/EC entry points.

Each input is a valid KJT with one fault planted (or none), as torch tensors: negative or huge lengths (including
lengths whose int64 sum wraps around to the number of ids), offsets that do not start at 0 or go down, lengths
that do not sum to the ids, lengths and offsets that disagree, ids out of range, wrong dtypes, weights of the wrong
length, a missing key, a wrong stride, no keys at all. accel must do what refimpl does on the same parts (the
reference, itself fuzzed against written-out formulas in tests/refimpl/test_fuzz_embeddings.py): raise the same
ValueError / IndexError / TypeError, with a message naming the argument, feature or table, or give refimpl's
output. The kernels only ever see inputs that passed, so a fault that slipped through would show as a crash or
as a wrong result.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import refimpl
from accel.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from accel.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from accel.sparse import KeyedJaggedTensor
from accel import validate as av

# f1 is read by both tables (ids must be < 3, t2's row count), f2 by t2 only; "extra" by none.
TABLES = (("t1", 5, ("f1",), PoolingType.SUM), ("t2", 3, ("f1", "f2"), PoolingType.MEAN))
DIM = 2
ROWS = {"f1": 3, "f2": 3}
BIG = 2**62
I64 = torch.int64

FAULTS = (
    "none", "int32 parts", "uint8 ids", "extra key with any ids", "negative length", "huge length",
    "lengths wrapping to the id count", "offsets not starting at 0", "offsets going down", "offsets ending short",
    "lengths not summing to the ids", "lengths and offsets disagree", "offsets of the wrong size",
    "neither lengths nor offsets", "rows not divisible by the keys", "wrong stride", "duplicate keys", "missing key",
    "no keys at all", "id too large", "negative id", "float ids", "bool lengths", "float lengths",
    "weights too short", "weights too long", "2-D weights", "float64 weights", "2-D ids",
)
ERRORS = (ValueError, IndexError, TypeError)
# Words one of which a clear message names: the argument, the feature or the table.
NAMED = ("lengths", "offsets", "values", "weights", "stride", "keys", "key", "feature", "ids")


def offsets_of(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@st.composite
def valid_parts(draw, min_batch=0, keys=None):
    """A valid KJT's parts as NumPy: keys (f1, f2 in some order, maybe "extra"), lengths, ids, float32 weights."""
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
        ids += draw(st.lists(st.integers(0, ROWS.get(key, 1000) - 1), min_size=n, max_size=n))
    ids = np.array(ids, dtype=np.int64)
    # Weights exact in float32, so that both packages pool the same numbers.
    weights = np.array(draw(st.lists(st.sampled_from([-1.5, -0.25, 0.5, 1.0, 2.0]), min_size=ids.size,
                                     max_size=ids.size)), dtype=np.float32)
    return {"keys": keys, "values": ids, "lengths": lengths, "offsets": None, "weights": weights,
            "stride": draw(st.sampled_from([None, batch])), "batch": batch}


def _positions_read(parts):
    keys, batch, offsets = parts["keys"], parts["batch"], offsets_of(parts["lengths"])
    return [j for k, key in enumerate(keys) if key in ROWS for j in range(offsets[k * batch], offsets[(k + 1) * batch])]


def _one_id():
    return {"keys": ["f1", "f2"], "values": np.array([1], np.int64), "weights": np.array([0.5], np.float32),
            "lengths": np.array([1, 0], np.int64), "offsets": None, "stride": None, "batch": 1}


@st.composite
def faulty_parts(draw, fault):
    """A KJT's parts (NumPy arrays, lengths and/or offsets as drawn) with `fault` planted."""
    if fault == "lengths wrapping to the id count":
        parts = draw(valid_parts(min_batch=2, keys=["f1", "f2"]))
    elif fault in ("negative length", "huge length", "offsets going down", "lengths and offsets disagree"):
        parts = draw(valid_parts(min_batch=1))
    elif fault in ("id too large", "negative id", "float ids", "weights too short", "2-D ids", "uint8 ids",
                   "bool lengths", "float lengths"):
        parts = draw(st.one_of(valid_parts(min_batch=1), st.just(_one_id())))
        if not _positions_read(parts):
            parts = _one_id()
    else:
        parts = draw(valid_parts())
    lengths, rows = parts["lengths"], parts["lengths"].size
    give = draw(st.sampled_from(["lengths", "offsets", "both"]))
    offsets = None
    if fault == "negative length":
        lengths[draw(st.integers(0, rows - 1))] = -draw(st.sampled_from([1, 2, BIG]))
    elif fault == "huge length":
        lengths[draw(st.integers(0, rows - 1))] = draw(st.sampled_from([BIG, np.iinfo(np.int64).max]))
    elif fault == "lengths wrapping to the id count":
        lengths[:4] += BIG  # the int64 sum wraps around to exactly the number of ids
    elif fault == "offsets not starting at 0":
        offsets = offsets_of(lengths) + draw(st.sampled_from([1, -1, BIG]))
        give = draw(st.sampled_from(["offsets", "both"]))
    elif fault == "offsets going down":
        offsets = offsets_of(lengths)
        i = draw(st.integers(1, rows))
        offsets[i] = offsets[i - 1] - draw(st.integers(1, 3))
        give = "offsets"
    elif fault == "offsets ending short":
        offsets = offsets_of(lengths)
        offsets[-1] -= 1
        give = "offsets"
    elif fault == "lengths not summing to the ids":
        if draw(st.booleans()) and parts["values"].size:
            parts["values"], parts["weights"] = parts["values"][:-1], parts["weights"][:-1]
        else:
            parts["values"] = np.append(parts["values"], 0)
            parts["weights"] = np.append(parts["weights"], np.float32(1))
    elif fault == "lengths and offsets disagree":
        offsets = offsets_of(lengths)
        lengths = lengths.copy()
        lengths[draw(st.integers(0, rows - 1))] += 1
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
    elif fault == "duplicate keys":
        parts["keys"] = [parts["keys"][0]] + parts["keys"][:-1]
    elif fault == "missing key":
        keys, batch = parts["keys"], parts["batch"]
        k = keys.index(draw(st.sampled_from(["f1", "f2"])))
        off = offsets_of(lengths)
        keep = np.r_[0:off[k * batch], off[(k + 1) * batch]:parts["values"].size]
        parts.update(keys=keys[:k] + keys[k + 1:], values=parts["values"][keep], weights=parts["weights"][keep])
        lengths = np.concatenate([lengths[:k * batch], lengths[(k + 1) * batch:]])
    elif fault == "no keys at all":
        parts.update(keys=[], values=np.zeros(0, np.int64), weights=np.zeros(0, np.float32), stride=None)
        lengths = np.zeros(0, np.int64)
    elif fault == "id too large":
        parts["values"][draw(st.sampled_from(_positions_read(parts)))] = draw(st.sampled_from([3, 4, 5, BIG]))
    elif fault == "negative id":
        parts["values"][draw(st.sampled_from(_positions_read(parts)))] = draw(st.sampled_from([-1, -BIG]))
    elif fault == "float ids":
        parts["values"] = parts["values"].astype(draw(st.sampled_from([np.float32, np.float64])))
    elif fault == "uint8 ids":
        parts["values"] = parts["values"].astype(np.uint8)
    elif fault == "2-D ids":
        parts["values"] = parts["values"].reshape(-1, 1)
    elif fault == "bool lengths":
        lengths = lengths.astype(bool)
        offsets, give = None, "lengths"
    elif fault == "float lengths":
        offsets = offsets_of(lengths)
        lengths = lengths.astype(np.float32)
        give = draw(st.sampled_from(["lengths", "both"]))
    elif fault == "weights too short":
        parts["weights"] = parts["weights"][:-1]
    elif fault == "weights too long":
        parts["weights"] = np.append(parts["weights"], np.float32(0.5))
    elif fault == "2-D weights":
        parts["weights"] = parts["weights"].reshape(-1, 1)
    elif fault == "float64 weights":
        parts["weights"] = parts["weights"].astype(np.float64)
    elif fault == "int32 parts":
        parts["values"], lengths = parts["values"].astype(np.int32), lengths.astype(np.int32)
    elif fault == "extra key with any ids" and "extra" not in parts["keys"] and parts["batch"]:
        extra = np.array(draw(st.lists(st.integers(-BIG, BIG), max_size=3)), np.int64)
        extra_lengths = np.zeros(parts["batch"], np.int64)
        extra_lengths[0] = extra.size
        parts.update(keys=parts["keys"] + ["extra"], values=np.concatenate([parts["values"], extra]),
                     weights=np.concatenate([parts["weights"], np.ones(extra.size, np.float32)]))
        lengths = np.concatenate([lengths, extra_lengths])
    if offsets is None and give in ("offsets", "both"):
        offsets = offsets_of(lengths.astype(np.int64))
    parts["lengths"] = lengths if give in ("lengths", "both") else None
    parts["offsets"] = offsets if give in ("offsets", "both") else None
    return parts


# --- the two packages side by side ------------------------------------------------------------------------------


def _configs(package):
    bag = package.EmbeddingBagConfig if package is refimpl else EmbeddingBagConfig
    seq = package.EmbeddingConfig if package is refimpl else EmbeddingConfig
    bags = [bag(rows, DIM, name=name, feature_names=list(f), pooling=pooling) for name, rows, f, pooling in TABLES]
    seqs = [seq(rows, DIM, name=name, feature_names=list(f)) for name, rows, f, _ in TABLES]
    return bags, seqs


def _modules():
    """{name: (accel module, refimpl module holding the same tables)}."""
    torch.manual_seed(0)
    a_bags, a_seqs = _configs(None)
    r_bags, r_seqs = _configs(refimpl)
    pairs = {
        "ebc": (EmbeddingBagCollection(a_bags), refimpl.EmbeddingBagCollection(r_bags)),
        "weighted ebc": (EmbeddingBagCollection(a_bags, is_weighted=True),
                         refimpl.EmbeddingBagCollection(r_bags, is_weighted=True)),
        "ec": (EmbeddingCollection(a_seqs), refimpl.EmbeddingCollection(r_seqs)),
        "fused ebc": (EmbeddingBagCollection(a_bags, optimizer="sgd", lr=0.0),
                      refimpl.EmbeddingBagCollection(r_bags)),
    }
    for accel_module, ref_module in pairs.values():
        ref_module.load_state_dict({k: v.double().numpy() for k, v in accel_module.state_dict().items()})
    return pairs


PAIRS = _modules()


def _tensor(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def accel_kjt(parts):
    return KeyedJaggedTensor(parts["keys"], _tensor(parts["values"]), weights=_tensor(parts["weights"]),
                             lengths=_tensor(parts["lengths"]), offsets=_tensor(parts["offsets"]), stride=parts["stride"])


def refimpl_kjt(parts):
    as_f64 = None if parts["weights"] is None else parts["weights"].astype(np.float64)
    return refimpl.KeyedJaggedTensor(parts["keys"], parts["values"], weights=as_f64, lengths=parts["lengths"],
                                     offsets=parts["offsets"], stride=parts["stride"])


def outcome(call):
    """("error", type, message) or ("value", float64 arrays)."""
    try:
        out = call()
    except ERRORS as exc:
        return "error", type(exc), str(exc)
    if isinstance(out, dict):
        return "value", {k: np.asarray(v.values().detach().double() if torch.is_tensor(v.values()) else v.values(),
                                       dtype=np.float64) for k, v in out.items()}
    values = out.values()
    return "value", np.asarray(values.detach().double() if torch.is_tensor(values) else values, dtype=np.float64)


def assert_same(got, want, what):
    assert got[0] == want[0], f"{what}: accel gave {got}, refimpl {want}"
    if got[0] == "error":
        assert got[1] is want[1], f"{what}: accel raised {got[1].__name__}: {got[2]}; refimpl {want[1].__name__}: {want[2]}"
        assert any(word in got[2] for word in NAMED), got[2]
        return
    if isinstance(want[1], dict):
        assert list(got[1]) == list(want[1])
        for key in want[1]:
            np.testing.assert_allclose(got[1][key], want[1][key], rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fault", FAULTS)
@given(data=st.data())
def test_kjt_constructor_agrees_with_refimpl(fault, data):
    parts = data.draw(faulty_parts(fault))
    got = outcome(lambda: accel_kjt(parts))
    want = outcome(lambda: refimpl_kjt(parts))
    assert_same(got, want, f"KeyedJaggedTensor with {fault}")


@pytest.mark.parametrize("fault", FAULTS)
@given(data=st.data())
def test_collections_agree_with_refimpl_on_malformed_kjts(fault, data):
    parts = data.draw(faulty_parts(fault))
    for name, (accel_module, ref_module) in PAIRS.items():
        want = outcome(lambda: ref_module(refimpl_kjt(parts)))
        got = outcome(lambda: accel_module(accel_kjt(parts)))
        assert_same(got, want, f"{name} with {fault}")


class _TorchRecLike:
    """TorchRec's KJT accessors over unvalidated parts: the collections must validate what they are handed."""

    def __init__(self, parts):
        self._parts = {k: _tensor(v) if isinstance(v, np.ndarray) else v for k, v in parts.items()}

    def keys(self):
        return list(self._parts["keys"])

    def values(self):
        return self._parts["values"]

    def lengths(self):
        lengths = self._parts["lengths"]
        return lengths if lengths is not None else torch.diff(self._parts["offsets"])

    def offsets(self):
        offsets = self._parts["offsets"]
        if offsets is not None:
            return offsets
        return torch.cat([torch.zeros(1, dtype=I64), torch.cumsum(self._parts["lengths"].to(I64), 0)])

    def weights_or_none(self):
        return self._parts["weights"]


@pytest.mark.parametrize("fault", [f for f in FAULTS if f not in (
    "neither lengths nor offsets", "bool lengths", "float lengths", "wrong stride", "duplicate keys")])
@given(data=st.data())
def test_objects_with_torchrecs_accessors_are_validated_too(fault, data):
    # The accessors hand over lengths and offsets both (one derived from the other), and no stride. Repeated
    # keys are left out: accel keeps them from such objects (TorchRec's permute makes them), refimpl does not.
    parts = data.draw(faulty_parts(fault))
    accel_module, ref_module = PAIRS["ebc"]
    got = outcome(lambda: accel_module(_TorchRecLike(parts)))
    want = outcome(lambda: ref_module(refimpl_kjt(dict(parts, stride=None))))
    assert_same(got, want, f"accessor object with {fault}")


def test_wrapped_lengths_are_rejected_before_any_kernel():
    # int64 sum of [2^62 + 1, 2^62, 2^62, 2^62 - 1] wraps to 2: two ids would "fit".
    lengths = torch.tensor([BIG + 1, BIG, BIG, BIG - 1])
    with pytest.raises(ValueError, match=r"lengths \(key 'f1', sample 0\) expected <= number of values \(2\)"):
        KeyedJaggedTensor(["f1", "f2"], torch.tensor([0, 1]), lengths=lengths)
    flags = av.jagged_content_flags(2, lengths, None)
    assert bool(torch.stack(flags).any())
