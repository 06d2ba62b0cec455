"""Fuzz: the dense modules' entry points (SwishLayerNorm, the four cross nets, Perceptron, MLP, FM, DeepFM) in
refimpl and accel, fed malformed inputs.

Each input is drawn with one or more faults: a wrong number of dimensions or a wrong feature width, an empty
batch, a dtype other than the module's (int, bool, float16, float32, complex), NaN and +-Inf planted among
ordinary values, and (accel) a non-contiguous, strided or 0-stride layout. The rule for both packages: a
ValueError / IndexError / TypeError naming the argument, or a value. refimpl computes in its own dtype, so a
real dtype is cast and gives a value (a complex one must raise: the cast would drop the imaginary part);
accel computes in its parameters' dtype and refuses any other with a TypeError. Where both give a value,
accel's equals refimpl's elementwise, NaN where refimpl has NaN, and so do the gradients of a backward with
NaN/Inf in the incoming gradient.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import accel
import refimpl
from tests.fuzz.conftest import LAYOUTS, assert_clear_error, assert_same_values, outcome, with_layout

N = 3
DTYPES = ("float64", "float32", "float16", "int64", "bool", "complex128")
SHAPES = ("(B, N)", "(N,)", "()", "(2, B, N)", "(B, N - 1)", "(B, N + 1)")
SPECIALS = (np.nan, np.inf, -np.inf)


def _pair(name, *args, **kwargs):
    """(accel module in float64, refimpl module holding the same parameters)."""
    torch.manual_seed(0)
    a = getattr(accel, name)(*args, **kwargs).double()
    r = getattr(refimpl, name)(*args, **kwargs)
    r.load_state_dict({k: v.detach().numpy() for k, v in a.state_dict().items()})
    return a, r


# name -> (accel module, refimpl module, input shapes it takes: "any" leading dims or exactly 2-D)
MODULES = {
    "SwishLayerNorm": (*_pair("SwishLayerNorm", N), "any"),
    "CrossNet": (*_pair("CrossNet", N, 2), "2-D"),
    "LowRankCrossNet": (*_pair("LowRankCrossNet", N, 2, 2), "any"),
    "VectorCrossNet": (*_pair("VectorCrossNet", N, 2), "2-D"),
    "LowRankMixtureCrossNet": (*_pair("LowRankMixtureCrossNet", N, 2, 2, 2), "2-D"),
    "Perceptron": (*_pair("Perceptron", N, 2), "any"),
    "MLP": (*_pair("MLP", N, [2, 2]), "any"),
}


def _shape(spec, batch):
    return {"(B, N)": (batch, N), "(N,)": (N,), "()": (), "(2, B, N)": (2, batch, N),
            "(B, N - 1)": (batch, N - 1), "(B, N + 1)": (batch, N + 1)}[spec]


@st.composite
def dense_arrays(draw, shape):
    """Values in [-2, 2] (exact in float16) with NaN / +-Inf planted at drawn positions, in float64."""
    size = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(st.integers(-8, 8), min_size=size, max_size=size))
    a = np.array(values, dtype=np.float64).reshape(shape) / 4
    if size and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 2))):
            a.flat[draw(st.integers(0, size - 1))] = draw(st.sampled_from(SPECIALS))
    return a


def cast(a, dtype):
    if dtype == "complex128":
        return a.astype(np.complex128) + 0.5j
    if dtype in ("int64", "bool"):
        return np.nan_to_num(a, nan=0, posinf=1, neginf=-1).astype(dtype)
    return a.astype(dtype)


@st.composite
def dense_cases(draw, any_leading):
    spec = draw(st.sampled_from(SHAPES))
    shape = _shape(spec, draw(st.integers(0, 3)))
    dtype = draw(st.sampled_from(DTYPES))
    a = cast(draw(dense_arrays(shape)), dtype)
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "zero-stride" and a.ndim:
        a = np.repeat(a[:1], a.shape[0], axis=0)
    well_shaped = spec in ("(B, N)", "(N,)", "(2, B, N)") if any_leading else spec == "(B, N)"
    return {"array": a, "dtype": dtype, "layout": layout, "well_shaped": well_shaped, "spec": spec}


def check_entry_point(accel_call, refimpl_call, case, what, names, accepted=("float64",)):
    """The fuzz rule for one input, as the module docstring states it; `accepted`: the dtypes accel computes in."""
    want = outcome(refimpl_call)
    got = outcome(accel_call)
    if not case["well_shaped"] or case["dtype"] == "complex128":
        assert_clear_error(want, names, f"refimpl {what}")
    if want[0] == "error":
        assert_clear_error(want, names, f"refimpl {what}")
    if got[0] == "error":
        assert_clear_error(got, names, f"accel {what}")
        # accel may refuse what refimpl casts (a dtype other than its parameters'), nothing else.
        assert want[0] == "error" or (got[1] is TypeError and case["dtype"] not in accepted), (
            f"accel {what} raised {got[1].__name__}: {got[2]}; refimpl gave a value")
    else:
        assert want[0] == "value", f"accel {what} gave a value; refimpl raised {want[1].__name__}: {want[2]}"
        assert case["dtype"] in accepted, f"accel {what} accepted dtype {case['dtype']} silently"
        # float32 (FM only): both sum in float32, in different orders.
        tolerance = {"rtol": 1e-5, "atol": 1e-6} if case["dtype"] == "float32" else {}
        assert_same_values(got[1], want[1], f"{what}", **tolerance)


@pytest.mark.parametrize("name", sorted(MODULES))
@given(data=st.data())
def test_dense_forward_on_malformed_input(name, data):
    a_module, r_module, leading = MODULES[name]
    case = data.draw(dense_cases(leading == "any"))
    a = case["array"]
    check_entry_point(lambda: a_module(with_layout(a, case["layout"])), lambda: r_module(a), case,
                      f"{name}({case['spec']}, {case['dtype']}, {case['layout']})", ("input",))


# Modules whose backward goes through a ReLU: torch's ReLU backward selects (0 where z <= 0) while refimpl
# multiplies by the derivative, so a NaN gradient meeting a zero derivative is 0 in accel (and in TorchRec) and
# NaN in refimpl. Their gradients are fuzzed with finite values only; the others with NaN/Inf too.
SELECTING_BACKWARD = ("LowRankMixtureCrossNet", "MLP", "Perceptron")


@pytest.mark.parametrize("name", sorted(MODULES))
@given(data=st.data())
def test_dense_backward_with_nan_and_inf_gradients(name, data):
    # A valid float64 input of any batch size (empty included), an incoming gradient with NaN/Inf planted and
    # in any layout: accel's autograd gradients equal refimpl's analytic ones, NaN for NaN.
    a_module, r_module, _ = MODULES[name]
    batch = data.draw(st.integers(0, 3))
    x = data.draw(dense_arrays((batch, N)))
    y = r_module(x)
    g = data.draw(dense_arrays(y.shape))
    if name in SELECTING_BACKWARD:
        x, g = np.nan_to_num(x, nan=0.5, posinf=2, neginf=-2), np.nan_to_num(g, nan=0.5, posinf=2, neginf=-2)
        y = r_module(x)
    layout = data.draw(st.sampled_from(LAYOUTS))
    if layout == "zero-stride" and batch:
        g = np.repeat(g[:1], batch, axis=0)
    want_x, want_params = r_module.backward(g)
    a_module.zero_grad(set_to_none=True)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    a_module(x_t).backward(with_layout(g, layout))
    assert_same_values(x_t.grad, want_x, f"{name} input gradient ({layout})")
    for key, param in a_module.named_parameters():
        got = param.grad if param.grad is not None else torch.zeros_like(param)
        assert_same_values(got, want_params[key], f"{name} gradient of {key} ({layout})")


# --- FactorizationMachine and DeepFM: a list of embeddings -----------------------------------------------------

FM_PAIR = (accel.FactorizationMachine(), refimpl.FactorizationMachine())
DEEPFM_PAIR = tuple(package.DeepFM(dense) for package, dense in zip((accel, refimpl), _pair("MLP", 2 * N, [2])))
LIST_FAULTS = ("none", "empty list", "not a list", "1-D member", "0-D member", "batch sizes differ", "None member")


@st.composite
def embedding_lists(draw):
    """A list of two embeddings (B, 2, N/2...) whose flattened width is 2N, with one list fault planted."""
    batch = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(DTYPES))
    first = cast(draw(dense_arrays((batch, 2, N))), dtype)
    second = cast(draw(dense_arrays((batch, N))), dtype)
    fault = draw(st.sampled_from(LIST_FAULTS))
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "zero-stride" and batch:
        first, second = np.repeat(first[:1], batch, axis=0), np.repeat(second[:1], batch, axis=0)
    members = [first, second]
    if fault == "empty list":
        members = []
    elif fault == "1-D member":
        members[1] = second.reshape(-1)
    elif fault == "0-D member":
        members[1] = second.reshape(-1)[:1].reshape(()) if second.size else np.float64(1.0)
    elif fault == "batch sizes differ":
        members[1] = np.concatenate([second, second[:1]]) if batch else cast(np.ones((1, N)), dtype)
    elif fault == "None member":
        members[1] = None
    return {"members": members, "dtype": dtype, "layout": layout, "fault": fault,
            "well_shaped": fault == "none", "not_a_list": fault == "not a list"}


def _as_tensors(case):
    out = [None if m is None else with_layout(np.asarray(m), case["layout"]) for m in case["members"]]
    return out[0] if case["not_a_list"] else out


def _as_arrays(case):
    return case["members"][0] if case["not_a_list"] else case["members"]


@pytest.mark.parametrize("name", ["FactorizationMachine", "DeepFM"])
@given(data=st.data())
def test_embedding_list_modules_on_malformed_lists(name, data):
    a_module, r_module = FM_PAIR if name == "FactorizationMachine" else DEEPFM_PAIR
    case = data.draw(embedding_lists())
    what = f"{name}({case['fault']}, {case['dtype']}, {case['layout']})"
    # FM has no parameters: it computes in the embeddings' dtype, float32 or float64.
    accepted = ("float64", "float32") if name == "FactorizationMachine" else ("float64",)
    check_entry_point(lambda: a_module(_as_tensors(case)), lambda: r_module(_as_arrays(case)), case, what,
                      ("embeddings", "input"), accepted)


@given(data=st.data())
def test_fm_backward_with_nan_and_inf(data):
    # The fused FM kernel's backward against refimpl's analytic one: NaN/Inf in the input and in the gradient.
    batch = data.draw(st.integers(0, 3))
    x = data.draw(dense_arrays((batch, 2, N)))
    g = data.draw(dense_arrays((batch, 1)))
    a_module, r_module = FM_PAIR
    want_y = r_module([x])
    (want_x,), _ = r_module.backward(g)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    y = a_module([x_t])
    y.backward(torch.from_numpy(g))
    assert_same_values(y, want_y, "FactorizationMachine output")
    assert_same_values(x_t.grad, want_x, "FactorizationMachine input gradient")


def test_complex_input_is_refused_by_refimpl_not_truncated():
    # The cast to the module's dtype would keep the real part only: a silent wrong answer.
    x = np.ones((2, N)) + 1j
    for name, (_, r_module, _) in MODULES.items():
        with pytest.raises(TypeError, match=r"input.*complex"):
            r_module(x)
    with pytest.raises(TypeError, match=r"embeddings\[0\].*complex"):
        refimpl.FactorizationMachine()([x])


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@given(data=st.data())
def test_swish_layernorm_half_input_with_float32_parameters(half, data):
    # accel's half-precision rule (TorchRec's LayerNorm): float32 parameters, half input and output, float32
    # maths inside. refimpl in float32 on the same (half-exact) input, rounded to the half type, is the reference:
    # NaN and infinities where it has them, finite values within one half-precision rounding.
    a_module, r_module = accel.SwishLayerNorm(N), refimpl.SwishLayerNorm(N, dtype=np.float32)
    x = data.draw(dense_arrays((data.draw(st.integers(0, 3)), N)))
    x_half = torch.from_numpy(x.astype(np.float32)).to(half)
    got = a_module(x_half)
    assert got.dtype == half
    want = torch.from_numpy(np.asarray(r_module(x_half.float().numpy()), dtype=np.float32)).to(half)
    eps = torch.finfo(half).eps
    assert_same_values(got.detach(), want, f"SwishLayerNorm {half}", rtol=eps, atol=eps)
