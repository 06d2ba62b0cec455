"""refimpl.modules.feature_processor: positions in bags and learnt position weights (semantics.md 8)."""

import numpy as np
import pytest

from refimpl.grad_check import central_difference_grad
from refimpl.modules.feature_processor import (
    BaseFeatureProcessor,
    BaseGroupedFeatureProcessor,
    PositionWeightedModule,
    PositionWeightedProcessor,
    offsets_to_range_traceble,
    position_weighted_module_update_features,
    position_weights_backward,
)
from refimpl.sparse import JaggedTensor, KeyedJaggedTensor
from refimpl.validate import MissingKeyError


# --- offsets_to_range_traceble -------------------------------------------------------------------------
def test_offsets_to_range_vector():
    np.testing.assert_array_equal(offsets_to_range_traceble(np.array([0, 2, 2, 5]), np.arange(5)), [0, 1, 0, 1, 2])


def test_offsets_without_the_final_entry_run_to_the_end():
    # FBGEMM's convention: the last segment ends at numel(values).
    np.testing.assert_array_equal(offsets_to_range_traceble(np.array([0, 2]), np.arange(5)), [0, 1, 0, 1, 2])


def test_offsets_to_range_empty_cases():
    assert offsets_to_range_traceble(np.array([0]), np.empty(0)).shape == (0,)
    assert offsets_to_range_traceble(np.empty(0, np.int64), np.empty(0)).dtype == np.int64
    np.testing.assert_array_equal(offsets_to_range_traceble(np.array([0, 0, 0, 3]), np.arange(3)), [0, 1, 2])


def test_offsets_to_range_errors():
    with pytest.raises(ValueError, match=r"offsets expected offsets\[0\] == 0, got 1"):
        offsets_to_range_traceble(np.array([1, 3]), np.arange(3))
    with pytest.raises(ValueError, match=r"offsets expected non-decreasing entries, got offsets\[2\] = 1 < offsets\[1\] = 2"):
        offsets_to_range_traceble(np.array([0, 2, 1]), np.arange(3))
    with pytest.raises(ValueError, match=r"offsets expected offsets\[-1\] <= numel\(values\) = 3, got 4"):
        offsets_to_range_traceble(np.array([0, 4]), np.arange(3))
    with pytest.raises(ValueError, match="offsets expected at least one entry for 2 values, got none"):
        offsets_to_range_traceble(np.empty(0, np.int64), np.arange(2))
    with pytest.raises(TypeError, match="offsets expected an integer dtype, got float64"):
        offsets_to_range_traceble(np.array([0.0, 1.0]), np.arange(1))


# --- PositionWeightedModule -----------------------------------------------------------------------------
def _features():
    return {
        "f1": JaggedTensor(np.array([1, 2, 3, 4]), lengths=np.array([2, 0, 2])),
        "f2": JaggedTensor(np.array([7]), weights=np.array([5.0]), lengths=np.array([0, 1, 0])),
        "f3": JaggedTensor(np.array([9]), lengths=np.array([1, 0, 0])),
    }


def _pwm():
    pwm = PositionWeightedModule({"f1": 3, "f2": 2})
    pwm.load_state_dict({"position_weights.f1": np.array([10.0, 20.0, 30.0]), "position_weights.f2": np.ones(2)})
    return pwm


def test_position_weighted_module_vector_and_same_dict():
    features = _features()
    out = _pwm()(features)
    assert out is features  # TorchRec returns (and mutates) the caller's dict
    np.testing.assert_array_equal(out["f1"].weights(), [10, 20, 10, 20])
    np.testing.assert_array_equal(out["f1"].values(), [1, 2, 3, 4])
    np.testing.assert_array_equal(out["f1"].lengths(), [2, 0, 2])
    np.testing.assert_array_equal(out["f2"].weights(), [1.0])  # existing weights are replaced
    assert out["f3"].weights_or_none() is None


def test_position_weighted_module_state_and_reset():
    pwm = PositionWeightedModule({"a": 3, "b": 0})
    state = pwm.state_dict()
    assert list(state) == ["position_weights.a", "position_weights.b"]
    np.testing.assert_array_equal(state["position_weights.a"], np.ones(3))
    assert state["position_weights.b"].shape == (0,)
    pwm.load_state_dict({"position_weights.a": np.zeros(3), "position_weights.b": np.zeros(0)})
    pwm.reset_parameters()
    np.testing.assert_array_equal(pwm.state_dict()["position_weights.a"], 1.0)


def test_position_weighted_module_errors():
    with pytest.raises(MissingKeyError, match=r"features expected key 'f2' \(a position-weighted feature\)"):
        _pwm()({"f1": _features()["f1"]})
    too_long = {"f1": JaggedTensor(np.arange(4), lengths=np.array([4])), "f2": _features()["f2"]}
    with pytest.raises(IndexError, match=r"feature 'f1': positions expected values in \[0, 3\) .* got position 3 at value 3 of the feature"):
        _pwm()(too_long)
    with pytest.raises(ValueError, match=r"max_feature_lengths\['x'\] expected an int >= 0, got -1"):
        PositionWeightedModule({"x": -1})
    with pytest.raises(TypeError, match="features expected a dict feature -> JaggedTensor, got list"):
        _pwm()([1])


def test_position_weighted_module_backward():
    rng = np.random.default_rng(0)
    pwm = _pwm()
    out = pwm(_features())
    g = {"f1": rng.standard_normal(4), "f2": rng.standard_normal(1)}
    grad_inputs, grads = pwm.backward(g)
    assert grad_inputs is None

    def loss(_):
        result = pwm(_features())
        return float(sum(np.sum(result[f].weights() * g[f]) for f in g))

    for key, p in pwm.state_dict().items():
        np.testing.assert_allclose(grads[key], central_difference_grad(loss, p), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grads["position_weights.f1"], [g["f1"][0] + g["f1"][2], g["f1"][1] + g["f1"][3], 0])
    assert out["f1"].weights().shape == (4,)
    with pytest.raises(ValueError, match=r"grad_output\['f1'\] expected shape \(4,\), got \(3,\)"):
        pwm.backward({"f1": np.zeros(3)})


def test_position_weights_backward_formula():
    np.testing.assert_array_equal(position_weights_backward(np.array([1.0, 2.0, 4.0]), np.array([0, 2, 0]), 3), [5, 0, 2])


def test_update_features_returns_the_same_dict():
    d = {"a": 1, "b": 2}
    assert position_weighted_module_update_features(d, {"b": 3}) is d and d == {"a": 1, "b": 3}


def test_base_processors_are_instantiable_without_forward():
    with pytest.raises(NotImplementedError, match="must define forward"):
        BaseFeatureProcessor()({})
    with pytest.raises(NotImplementedError, match="must define forward"):
        BaseGroupedFeatureProcessor()(None)


# --- PositionWeightedProcessor --------------------------------------------------------------------------
def _page_kjt(weights=None):
    return KeyedJaggedTensor.from_lengths_sync(
        ["F0", "F1", "F2"], np.array([0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]),
        np.array([2, 0, 1, 1, 1, 3, 2, 3, 0]), weights=weights,
    )


def test_processor_drops_other_keys_vector():
    pwp = PositionWeightedProcessor({"F1": 4})
    pwp.load_state_dict({"position_weights.F1": np.array([1.0, 2.0, 3.0, 4.0])})
    out = pwp(_page_kjt())
    assert out.keys() == ["F1"]
    np.testing.assert_array_equal(out.values(), [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(out.lengths(), [1, 1, 3])
    np.testing.assert_array_equal(out.weights(), [1, 1, 1, 2, 3])


def test_processor_all_keys_keeps_layout_and_no_key_returns_input():
    pwp = PositionWeightedProcessor({"F0": 3, "F1": 3, "F2": 3})
    pwp.load_state_dict({f"position_weights.F{i}": np.array([1.0, 10.0, 100.0]) * (i + 1) for i in range(3)})
    kjt = _page_kjt()
    out = pwp(kjt)
    assert out.keys() == kjt.keys() and out.stride() == 3
    np.testing.assert_array_equal(out.lengths(), kjt.lengths())
    np.testing.assert_array_equal(out.weights(), [1, 10, 1, 2, 2, 2, 20, 200, 3, 30, 3, 30, 300])
    assert PositionWeightedProcessor({"other": 2})(kjt) is kjt


def test_processor_reads_incoming_weights_as_positions():
    pwp = PositionWeightedProcessor({"F1": 4})
    pwp.load_state_dict({"position_weights.F1": np.array([1.0, 2.0, 3.0, 4.0])})
    positions = np.array([0, 0, 0, 3, 2.9, 1, 0, 0, 0, 0, 0, 0, 0], dtype=np.float64)
    out = pwp(_page_kjt(weights=positions))
    np.testing.assert_array_equal(out.weights(), [4, 3, 2, 1, 1])  # 2.9 truncates to 2


def test_processor_errors():
    with pytest.raises(ValueError, match=r"max_feature_lengths\['F1'\] expected an int >= 1, got 0"):
        PositionWeightedProcessor({"F1": 0})
    with pytest.raises(IndexError, match=r"feature 'F1': positions expected values in \[0, 2\).*got position 2 at value 4 of the feature"):
        PositionWeightedProcessor({"F1": 2})(_page_kjt())


def test_processor_backward_and_state():
    rng = np.random.default_rng(1)
    pwp = PositionWeightedProcessor({"F1": 4, "F2": 3})
    assert list(pwp.state_dict()) == ["position_weights.F1", "position_weights.F2"]
    kjt = _page_kjt()
    out = pwp(kjt)
    g = rng.standard_normal(out.weights().shape)
    _, grads = pwp.backward(g)

    def loss(_):
        return float(np.sum(pwp(kjt).weights() * g))

    for key, p in pwp.state_dict().items():
        np.testing.assert_allclose(grads[key], central_difference_grad(loss, p), rtol=1e-7, atol=1e-9)


# --- against TorchRec -----------------------------------------------------------------------------------
def test_agrees_with_torchrec():
    pytest.importorskip("torchrec", reason="TorchRec is an optional extra; the tests above stand without it")
    import torch
    from torchrec.modules import feature_processor as tfp
    from torchrec.sparse.jagged_tensor import JaggedTensor as TJT
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor as TKJT

    p = torch.tensor([0.5, 1.5, 2.5, 3.5])
    theirs = tfp.PositionWeightedModule({"f": 4})
    theirs.load_state_dict({"position_weights.f": p})
    mine = PositionWeightedModule({"f": 4})
    mine.load_state_dict(theirs.state_dict())
    jt_t = TJT(values=torch.tensor([5, 6, 7, 8, 9]), lengths=torch.tensor([3, 0, 2]))
    out_t = theirs({"f": jt_t})["f"].weights()
    out_m = mine({"f": jt_t})["f"].weights()  # refimpl reads TorchRec's JaggedTensor through its accessors
    np.testing.assert_allclose(out_m, out_t.detach().numpy(), rtol=1e-7)

    proc_t = tfp.PositionWeightedProcessor({"F1": 4})
    proc_t.load_state_dict({"position_weights.F1": p})
    proc_m = PositionWeightedProcessor({"F1": 4})
    proc_m.load_state_dict(proc_t.state_dict())
    kjt = TKJT.from_lengths_sync(
        ["F0", "F1", "F2"], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]),
        torch.tensor([2, 0, 1, 1, 1, 3, 2, 3, 0]),
    )
    res_t, res_m = proc_t(kjt), proc_m(kjt)
    assert res_m.keys() == res_t.keys()
    np.testing.assert_allclose(res_m.weights(), res_t.weights().detach().numpy(), rtol=1e-7)
    np.testing.assert_array_equal(res_m.lengths(), res_t.lengths().numpy())
