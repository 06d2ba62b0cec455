"""Matched pairs: construction per package, shared state, dtype handling and gradients."""

import numpy as np
import pytest
import torch

import accel
import refimpl
from conformance import adapters
from conformance.records import Act, Build

CROSS = Build("CrossNet", (4, 2), in_shape=(4,), label="N=4")


def test_module_class_follows_the_mirror_rule():
    assert adapters.module_class("refimpl", "CrossNet") is refimpl.CrossNet
    assert adapters.module_class("accel", "CrossNet") is accel.CrossNet
    assert adapters.module_class("accel", "Linear") is torch.nn.Linear
    assert adapters.module_class("refimpl", "Linear") is refimpl.Linear
    with pytest.raises(ValueError, match=r"package expected one of .* got 'numpy'"):
        adapters.module_class("numpy", "CrossNet")


def test_activation_resolves_per_package():
    from refimpl.modules.activation import sigmoid

    assert adapters.activation("refimpl", "sigmoid") is sigmoid
    assert adapters.activation("accel", "sigmoid") is torch.sigmoid


def test_torch_construction_is_seeded_and_leaves_the_global_stream_alone():
    before = torch.random.get_rng_state()
    a = adapters.construct(CROSS, "accel", seed=7)
    b = adapters.construct(CROSS, "accel", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.random.fork_rng():
        torch.manual_seed(7)
        direct = accel.CrossNet(4, 2)
    assert torch.equal(direct.kernels[0], a.kernels[0])


def test_refimpl_construction_takes_dtype_and_rng():
    m = adapters.construct(CROSS, "refimpl", seed=1, dtype=np.float32)
    assert m.dtype == np.float32 and m.state_dict()["kernels.0"].dtype == np.float32
    nested = adapters.construct(Build("DeepFM", (Build("Linear", (10, 3)),)), "refimpl")
    assert set(nested.state_dict()) == {"dense_module.weight", "dense_module.bias"}
    with_act = adapters.construct(Build("Perceptron", (3, 2), (("activation", Act("sigmoid")),)), "accel")
    assert with_act._activation_fn is torch.sigmoid


def test_exercise_replaces_only_constant_parameters():
    state = {"kernels.0": np.arange(4.0), "bias.0": np.zeros(4), "gain": np.ones(3), "empty": np.zeros(0)}
    out = adapters.exercise(state, seed=0)
    assert out["kernels.0"] is state["kernels.0"]
    assert np.all(out["bias.0"] != 0) and len(set(out["bias.0"])) == 4
    assert not np.allclose(out["gain"], 1) and out["empty"].shape == (0,)
    assert np.array_equal(out["bias.0"], adapters.exercise(state, seed=0)["bias.0"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_make_pair_holds_identical_parameters(dtype):
    pair = adapters.make_pair(CROSS, seed=0, dtype=dtype)
    torch_state = {k: v.detach().double().numpy() for k, v in pair.other.state_dict().items()}
    assert set(torch_state) == set(pair.state) == set(pair.ref.state_dict())
    for key, value in pair.state.items():
        assert np.array_equal(torch_state[key], value)
        assert np.array_equal(pair.ref.state_dict()[key].astype(np.float64), value)
        assert pair.ref.state_dict()[key].dtype == dtype
    assert pair.other.kernels[0].dtype == adapters.torch_dtype(dtype)
    assert np.all(pair.state["bias.0"] != 0)  # exercised, so a misplaced bias shows


def test_float32_pair_rounds_the_state_once():
    pair = adapters.make_pair(CROSS, seed=0, dtype=np.float32)
    for value in pair.state.values():
        assert np.array_equal(value.astype(np.float32).astype(np.float64), value)
    ref64 = pair.reference64()
    assert ref64.dtype == np.float64
    assert all(np.array_equal(ref64.state_dict()[k], v) for k, v in pair.state.items())


def test_outputs_and_gradients_are_named_alike():
    pair = adapters.make_pair(CROSS, seed=0)
    x = np.random.default_rng(0).standard_normal((3, 4))
    g = np.random.default_rng(1).standard_normal((3, 4))
    y_ref, ref = adapters.ref_gradients(pair.ref, x, g)
    y_got, got = adapters.torch_gradients(pair.other, x, g, np.float64)
    assert set(ref) == set(got) == {"grad input", "grad kernels.0", "grad kernels.1", "grad bias.0", "grad bias.1"}
    assert np.allclose(y_ref, y_got, rtol=1e-12, atol=0)
    assert np.allclose(ref["grad input"], got["grad input"], rtol=1e-12, atol=1e-14)


def test_list_inputs_get_indexed_gradient_names():
    pair = adapters.make_pair(Build("FactorizationMachine", in_shape=((2, 3), (4,))), seed=0)
    x = [np.ones((2, 2, 3)), np.ones((2, 4))]
    _, grads = adapters.torch_gradients(pair.other, x, np.ones((2, 1)), np.float64)
    assert set(grads) == {"grad input[0]", "grad input[1]"}
    # FM: dL/dx_j = g (S - x_j) with S = 10 (ten ones).
    assert np.array_equal(grads["grad input[0]"], np.full((2, 2, 3), 9.0))


def test_torchrec_missing_gives_a_reason_or_none():
    reason = adapters.torchrec_missing()
    try:
        import torchrec  # noqa: F401
    except Exception:
        assert isinstance(reason, str) and reason
    else:
        assert reason is None
