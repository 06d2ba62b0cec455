"""Fuzz: EBC / EC entry points with what the KJT fault suite (tests/accel/test_fuzz_embeddings.py) leaves out:
ids at the int64 extremes and the value 2^63 - 1, NaN and +-Inf weights, and parts handed over as
non-contiguous, strided or 0-stride tensors, through the forward and the backward of both packages.

An id outside a table raises IndexError naming the feature and table; anything else gives refimpl's pooled or
sequence embeddings elementwise (NaN where refimpl has NaN), and the weight gradients equal refimpl's.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import accel
import refimpl
from tests.fuzz.conftest import assert_clear_error, assert_same_values, outcome

ROWS, DIM = 4, 3
EXTREMES = (-(2**63), -(2**62), -1, ROWS, 2**31, 2**62, 2**63 - 2, 2**63 - 1)
SPECIAL_WEIGHTS = (np.nan, np.inf, -np.inf)
LAYOUTS = ("contiguous", "strided", "zero-stride", "transposed-back")


def _pair(kind, pooling, weighted):
    torch.manual_seed(0)
    if kind == "ec":
        a = accel.EmbeddingCollection([accel.EmbeddingConfig(ROWS, DIM, name="t", feature_names=["f", "g"])])
        r = refimpl.EmbeddingCollection([refimpl.EmbeddingConfig(ROWS, DIM, name="t", feature_names=["f", "g"])])
    else:
        a = accel.EmbeddingBagCollection([accel.EmbeddingBagConfig(
            ROWS, DIM, name="t", feature_names=["f", "g"], pooling=getattr(accel.PoolingType, pooling))],
            is_weighted=weighted)
        r = refimpl.EmbeddingBagCollection([refimpl.EmbeddingBagConfig(
            ROWS, DIM, name="t", feature_names=["f", "g"], pooling=getattr(refimpl.PoolingType, pooling))],
            is_weighted=weighted)
    a = a.double()
    r.load_state_dict({k: v.detach().numpy() for k, v in a.state_dict().items()})
    return a, r


PAIRS = {
    "ebc sum": _pair("ebc", "SUM", False),
    "ebc mean": _pair("ebc", "MEAN", False),
    "weighted ebc sum": _pair("ebc", "SUM", True),
    "weighted ebc mean": _pair("ebc", "MEAN", True),
    "ec": _pair("ec", None, False),
}


def _layout(a, layout):
    """A 1-D tensor with a's values: contiguous, every other element of a larger tensor, a 0-stride expand
    (for a constant array), or a copy round-tripped through a 2-D transpose."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if layout == "strided" and t.numel():
        wide = torch.zeros(2 * t.numel(), dtype=t.dtype)
        wide[::2] = t
        return wide[::2]
    if layout == "zero-stride" and t.numel() and bool((t == t[0]).all()):
        return t[:1].expand(t.numel())
    if layout == "transposed-back":
        return t.reshape(-1, 1).t().reshape(-1)
    return t


@st.composite
def inputs(draw):
    batch = draw(st.integers(0, 3))
    lengths = np.array(draw(st.lists(st.integers(0, 3), min_size=2 * batch, max_size=2 * batch)), dtype=np.int64)
    n = int(lengths.sum())
    ids = np.array(draw(st.lists(st.integers(0, ROWS - 1), min_size=n, max_size=n)), dtype=np.int64)
    if n and draw(st.booleans()):
        ids[draw(st.integers(0, n - 1))] = draw(st.sampled_from(EXTREMES))
    if draw(st.booleans()):
        ids[:] = ids[0] if n else 0  # constant ids: a 0-stride layout applies
    weights = np.array(draw(st.lists(st.sampled_from([0.5, -1.0, 2.0]), min_size=n, max_size=n)), dtype=np.float64)
    if n and draw(st.booleans()):
        weights[draw(st.integers(0, n - 1))] = draw(st.sampled_from(SPECIAL_WEIGHTS))
    return {"lengths": lengths, "ids": ids, "weights": weights,
            "layout": {k: draw(st.sampled_from(LAYOUTS)) for k in ("ids", "lengths", "weights")}}


def _accel_kjt(case, weighted):
    w = _layout(case["weights"].astype(np.float32), case["layout"]["weights"]) if weighted else None
    return accel.KeyedJaggedTensor(["f", "g"], _layout(case["ids"], case["layout"]["ids"]), weights=w,
                                   lengths=_layout(case["lengths"], case["layout"]["lengths"]))


def _refimpl_kjt(case, weighted):
    w = case["weights"].astype(np.float32).astype(np.float64) if weighted else None
    return refimpl.KeyedJaggedTensor(["f", "g"], case["ids"], weights=w, lengths=case["lengths"])


def _values(out):
    if isinstance(out, dict):
        return np.concatenate([np.asarray(_as_array(out[k].values())).reshape(-1, DIM) for k in out] or
                              [np.zeros((0, DIM))])
    return _as_array(out.values())


def _as_array(v):
    return v.detach().double().numpy() if torch.is_tensor(v) else np.asarray(v, dtype=np.float64)


@pytest.mark.parametrize("name", sorted(PAIRS))
@given(case=inputs())
def test_collections_on_extreme_ids_special_weights_and_layouts(name, case):
    a_module, r_module = PAIRS[name]
    weighted = name.startswith("weighted")
    got = outcome(lambda: a_module(_accel_kjt(case, weighted)))
    want = outcome(lambda: r_module(_refimpl_kjt(case, weighted)))
    out_of_range = bool(((case["ids"] < 0) | (case["ids"] >= ROWS)).any())
    what = f"{name} layouts {case['layout']}"
    if out_of_range:
        for result, package in ((got, "accel"), (want, "refimpl")):
            assert result[0] == "error" and result[1] is IndexError, f"{package} {what}: {result[:3]}"
            assert_clear_error(result, ("'t'",), f"{package} {what}")
            assert_clear_error(result, ("'f'", "'g'"), f"{package} {what}")
        return
    assert got[0] == want[0] == "value", f"{what}: accel {got[:3]}, refimpl {want[:3]}"
    assert_same_values(_values(got[1]), _values(want[1]), what, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(PAIRS))
@given(case=inputs(), special_grad=st.booleans())
def test_collection_backward_with_special_values(name, case, special_grad):
    # In-range ids; NaN/Inf weights in the forward and, when drawn, in the incoming gradient.
    a_module, r_module = PAIRS[name]
    weighted = name.startswith("weighted")
    case["ids"] = np.clip(case["ids"], 0, ROWS - 1)
    want_out = r_module(_refimpl_kjt(case, weighted))
    out = a_module(_accel_kjt(case, weighted))
    if isinstance(out, dict):
        grads = {k: np.linspace(-1, 1, want_out[k].values().size).reshape(want_out[k].values().shape)
                 for k in want_out}
        if special_grad and any(g.size for g in grads.values()):
            next(g for g in grads.values() if g.size).flat[0] = np.nan
        _, want = r_module.backward({k: g for k, g in grads.items()})
        a_module.zero_grad(set_to_none=True)
        torch.autograd.backward([out[k].values() for k in grads], [torch.from_numpy(grads[k]) for k in grads])
    else:
        g = np.linspace(-1, 1, want_out.values().size).reshape(want_out.values().shape)
        if special_grad and g.size:
            g.flat[0] = np.inf
        _, want = r_module.backward(g)
        a_module.zero_grad(set_to_none=True)
        out.values().backward(torch.from_numpy(g))
    for key, param in a_module.named_parameters():
        got = param.grad if param.grad is not None else torch.zeros_like(param)
        assert_same_values(got, want[key], f"{name} gradient of {key}", rtol=1e-6, atol=1e-7)
