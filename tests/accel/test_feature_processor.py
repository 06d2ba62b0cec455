"""accel.modules.feature_processor: position weights (semantics.md 8), vectors from TorchRec 1.8 runs."""

import numpy as np
import pytest
import torch

from accel.modules.feature_processor import (
    BaseFeatureProcessor,
    BaseGroupedFeatureProcessor,
    PositionWeightedModule,
    PositionWeightedProcessor,
    offsets_to_range_traceble,
    position_weighted_module_update_features,
)
from accel.sparse import JaggedTensor, KeyedJaggedTensor


def positions(lengths):
    """pos_j = j - offsets[b]: 0, 1, ... inside every bag."""
    return [j for n in lengths for j in range(n)]


# --- helpers ---------------------------------------------------------------------------------------------
def test_offsets_to_range_is_the_position_inside_each_bag():
    # semantics.md 8: [0, 2, 2, 5] with 5 values -> [0, 1, 0, 1, 2]
    out = offsets_to_range_traceble(torch.tensor([0, 2, 2, 5], dtype=torch.int32), torch.arange(5))
    assert out.tolist() == [0, 1, 0, 1, 2] and out.dtype == torch.int64
    # Offsets without the final entry: the last bag runs to numel(values).
    assert offsets_to_range_traceble(torch.tensor([0, 1]), torch.arange(4)).tolist() == [0, 0, 1, 2]
    assert offsets_to_range_traceble(torch.tensor([0]), torch.arange(0)).tolist() == []


def test_offsets_to_range_rejects_offsets_it_cannot_read():
    with pytest.raises(ValueError, match=r"offsets expected to start at 0 and not decrease up to numel\(values\) = 3, got \[1, 3\]"):
        offsets_to_range_traceble(torch.tensor([1, 3]), torch.arange(3))
    with pytest.raises(ValueError, match="got \\[0, 4\\]"):
        offsets_to_range_traceble(torch.tensor([0, 4]), torch.arange(3))


def test_update_features_mutates_and_returns_the_callers_dict():
    jt = JaggedTensor(torch.arange(2), lengths=torch.tensor([2]))
    features = {"a": jt}
    out = position_weighted_module_update_features(features, {"b": jt})
    assert out is features and list(features) == ["a", "b"]


def test_bases_are_modules_with_abstract_forward():
    assert issubclass(BaseFeatureProcessor, torch.nn.Module)
    assert issubclass(BaseGroupedFeatureProcessor, torch.nn.Module)
    assert getattr(BaseFeatureProcessor.forward, "__isabstractmethod__", False)
    assert getattr(BaseGroupedFeatureProcessor.forward, "__isabstractmethod__", False)


# --- PositionWeightedModule ------------------------------------------------------------------------------
def test_position_weighted_module_semantics_vector():
    # semantics.md 8.1: p_f1 = [10, 20, 30], f1 lengths [2, 0, 2] -> weights [10, 20, 10, 20]; f2 (p = [1, 1]) -> [1];
    # f3 has no position weights and keeps no weights.
    pwm = PositionWeightedModule({"f1": 3, "f2": 2})
    with torch.no_grad():
        pwm.position_weights["f1"].copy_(torch.tensor([10.0, 20.0, 30.0]))
    f3 = JaggedTensor(torch.tensor([7]), lengths=torch.tensor([1, 0, 0]))
    features = {
        "f1": JaggedTensor(torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([2, 0, 2])),
        "f2": JaggedTensor(torch.tensor([5]), lengths=torch.tensor([0, 1, 0]), weights=torch.tensor([9.0])),
        "f3": f3,
    }
    out = pwm(features)
    assert out is features  # TorchRec returns the caller's dict, updated (D16)
    assert out["f1"].weights().tolist() == [10.0, 20.0, 10.0, 20.0]
    assert out["f2"].weights().tolist() == [1.0]  # replaces the weights it had
    assert out["f3"] is f3 and f3.weights_or_none() is None
    assert out["f1"].values().tolist() == [1, 2, 3, 4] and out["f1"].lengths().tolist() == [2, 0, 2]


def test_position_weighted_module_parameters():
    pwm = PositionWeightedModule({"a": 4, "b": 0})
    state = pwm.state_dict()
    assert list(state) == ["position_weights.a", "position_weights.b"]
    assert state["position_weights.a"].tolist() == [1.0] * 4 and state["position_weights.b"].numel() == 0
    assert state["position_weights.a"].dtype == torch.float32
    with torch.no_grad():
        pwm.position_weights["a"].zero_()
    pwm.reset_parameters()
    assert pwm.position_weights["a"].tolist() == [1.0] * 4


def test_position_weighted_module_gradient_sums_over_positions():
    pwm = PositionWeightedModule({"f": 3})
    lengths = [3, 0, 1, 2]
    features = {"f": JaggedTensor(torch.arange(6), lengths=torch.tensor(lengths))}
    g = np.random.default_rng(0).standard_normal(6)
    (pwm(features)["f"].weights() * torch.tensor(g, dtype=torch.float32)).sum().backward()
    expected = np.zeros(3)
    np.add.at(expected, positions(lengths), g)
    np.testing.assert_allclose(pwm.position_weights["f"].grad.numpy(), expected, rtol=1e-6)


def test_position_weighted_module_errors():
    pwm = PositionWeightedModule({"f": 2})
    with pytest.raises(KeyError, match="expected key 'f'"):
        pwm({"g": JaggedTensor(torch.arange(1), lengths=torch.tensor([1]))})
    with pytest.raises(IndexError, match="feature 'f' \\(max length 2\\)"):
        pwm({"f": JaggedTensor(torch.arange(3), lengths=torch.tensor([3]))})
    with pytest.raises(ValueError, match=r"max_feature_lengths\['f'\] expected an int >= 0, got -1"):
        PositionWeightedModule({"f": -1})
    with pytest.raises(TypeError, match="max_feature_lengths expected a dict"):
        PositionWeightedModule([("f", 2)])


# --- PositionWeightedProcessor ---------------------------------------------------------------------------
def test_position_weighted_processor_drops_keys_without_weights():
    # semantics.md 8.2: keys F0, F1, F2, only F1 (length 4, p = [1, 2, 3, 4]) -> keys [F1], weights [1, 1, 1, 2, 3]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["F0", "F1", "F2"], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]),
        torch.tensor([2, 0, 1, 1, 1, 3, 2, 3, 0]),
    )
    pwp = PositionWeightedProcessor({"F1": 4})
    with torch.no_grad():
        pwp.position_weights["F1"].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    out = pwp(kjt)
    assert out.keys() == ["F1"] and out.stride() == 3
    assert out.weights().tolist() == [1.0, 1.0, 1.0, 2.0, 3.0]
    assert out.values().tolist() == [3, 4, 5, 6, 7] and out.lengths().tolist() == [1, 1, 3]


def test_position_weighted_processor_all_keys_and_no_keys():
    kjt = KeyedJaggedTensor(["a", "b"], torch.arange(5), lengths=torch.tensor([2, 0, 1, 2]))
    pwp = PositionWeightedProcessor({"a": 2, "b": 3})
    with torch.no_grad():
        pwp.position_weights["a"].copy_(torch.tensor([5.0, 6.0]))
        pwp.position_weights["b"].copy_(torch.tensor([7.0, 8.0, 9.0]))
    out = pwp(kjt)
    assert out.keys() == ["a", "b"] and out.weights().tolist() == [5.0, 6.0, 7.0, 7.0, 8.0]
    assert torch.equal(out.values(), kjt.values()) and torch.equal(out.lengths(), kjt.lengths())
    assert PositionWeightedProcessor({"z": 1})(kjt) is kjt


def test_position_weighted_processor_reads_incoming_weights_as_positions():
    kjt = KeyedJaggedTensor(["a"], torch.arange(3), lengths=torch.tensor([3]), weights=torch.tensor([2.0, 0.0, 1.0]))
    pwp = PositionWeightedProcessor({"a": 3})
    with torch.no_grad():
        pwp.position_weights["a"].copy_(torch.tensor([10.0, 20.0, 30.0]))
    assert pwp(kjt).weights().tolist() == [30.0, 10.0, 20.0]
    bad = KeyedJaggedTensor(["a"], torch.arange(1), lengths=torch.tensor([1]), weights=torch.tensor([3.0]))
    with pytest.raises(IndexError, match=r"feature 'a': positions \(the input's weights\) expected values in \[0, 3\), got 3"):
        pwp(bad)


def test_position_weighted_processor_errors_and_state():
    with pytest.raises(ValueError, match=r"max_feature_lengths\['a'\] expected an int >= 1, got 0"):
        PositionWeightedProcessor({"a": 0})
    pwp = PositionWeightedProcessor({"a": 2})
    assert list(pwp.state_dict()) == ["position_weights.a"] and list(pwp.named_buffers()) == []
    kjt = KeyedJaggedTensor(["a"], torch.arange(3), lengths=torch.tensor([3]))
    with pytest.raises(IndexError, match="feature 'a' \\(max length 2\\)"):
        pwp(kjt)


def test_position_weighted_processor_gradient():
    pwp = PositionWeightedProcessor({"a": 3, "b": 2})
    lengths = [3, 1, 2, 0]
    kjt = KeyedJaggedTensor(["a", "b"], torch.arange(6), lengths=torch.tensor(lengths))
    g = np.random.default_rng(1).standard_normal(6)
    (pwp(kjt).weights() * torch.tensor(g, dtype=torch.float32)).sum().backward()
    ga, gb = np.zeros(3), np.zeros(2)
    np.add.at(ga, positions(lengths[:2]), g[:4])
    np.add.at(gb, positions(lengths[2:]), g[4:])
    np.testing.assert_allclose(pwp.position_weights["a"].grad.numpy(), ga, rtol=1e-6)
    np.testing.assert_allclose(pwp.position_weights["b"].grad.numpy(), gb, rtol=1e-6)
