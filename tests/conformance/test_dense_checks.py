"""The dense modules' own checks: their formulas, and that each check can fail."""

import numpy as np
import pytest

import accel
from conformance.properties import RECORDS
from conformance.properties import dense_checks as dc
from conformance.runner import FAIL, PASS, Context, run_record


def _record(record_id):
    return next(r for r in RECORDS if r.id == record_id)


def test_fm_pairwise_formula_by_hand():
    # [1, 2, 3] and [4]: pairs 1*2 + 1*3 + 1*4 + 2*3 + 2*4 + 3*4 = 35.
    x = [np.array([[1.0, 2.0, 3.0]]), np.array([[4.0]])]
    assert dc.fm_pairwise(x, {}).tolist() == [[35.0]]
    assert dc.fm_pairwise([np.zeros((0, 3))], {}).shape == (0, 1)


def test_zero_kernel_formulas_by_hand():
    state = {"kernels.0": np.zeros((2, 2)), "bias.0": np.array([[1.0], [2.0]]), "bias.1": np.array([[0.5], [0.0]])}
    x = np.array([[2.0, 3.0]])
    assert dc.zero_kernel_cross(x, state).tolist() == [[5.0, 9.0]]  # x (1 + 1.5, 1 + 2)
    assert dc.zero_kernel_vector_cross(x, state).tolist() == [[3.5, 5.0]]  # x + (1.5, 2)
    edited = dc.zero_kernels(("kernels.",))({"kernels.0": np.ones(2), "bias.0": np.ones(2)})
    assert edited["kernels.0"].tolist() == [0.0, 0.0] and edited["bias.0"].tolist() == [1.0, 1.0]


def test_deepfm_linear_formula_by_hand():
    state = {"dense_module.weight": np.array([[1.0, 0.0, 2.0]]), "dense_module.bias": np.array([0.5])}
    x = [np.array([[[1.0, 1.0]]]), np.array([[3.0]])]
    assert dc.deepfm_linear(x, state).tolist() == [[7.5]]


def test_d3_and_d8_demonstrations_by_hand():
    assert dc.vector_cross_d3_documented()[1] is True
    assert dc.fm_d8_fieldwise()[1] is True
    build, state = dc.vector_cross_d3_state()
    assert build.args == (2, 1) and state["bias.0"].tolist() == [[1.0], [1.0]]


def test_state_dict_check_catches_a_wrong_shape(monkeypatch):
    original = accel.LowRankCrossNet.__init__

    def bias_as_column(self, *args, **kwargs):
        import torch

        original(self, *args, **kwargs)
        self.bias = torch.nn.ParameterList([torch.nn.Parameter(b.detach().view(-1, 1)) for b in self.bias])

    monkeypatch.setattr(accel.LowRankCrossNet, "__init__", bias_as_column)
    row = run_record(_record("LowRankCrossNet/D5_state_shapes"), Context())
    assert row.status == FAIL and "('bias.0', (4, 1), 'float32')" in row.detail


def test_mlp_composition_check_catches_a_skipped_layer(monkeypatch):
    monkeypatch.setattr(accel.MLP, "forward", lambda self, x: self._mlp[1](self._mlp[0](x)) * 1.5)
    assert run_record(_record("MLP/composed_perceptrons"), Context()).status == FAIL


def test_one_expert_check_catches_gates_that_do_not_sum_to_one(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "softmax", lambda z, dim: torch.exp(z))
    row = run_record(_record("LowRankMixtureCrossNet/one_expert"), Context())
    assert row.status == FAIL


def test_swish_bound_check_catches_an_amplifying_activation(monkeypatch):
    monkeypatch.setattr(accel.SwishLayerNorm, "forward", lambda self, x: 1.0001 * x)
    row = run_record(_record("SwishLayerNorm/bounded"), Context())
    assert row.status == FAIL and "accel:" in row.detail


@pytest.mark.parametrize("record_id", ["Perceptron/D9_output_shape", "MLP/D10_unknown_activation",
                                       "CrossNet/D4_input_shape", "SwishLayerNorm/D11_input_dims_name"])
def test_discrepancy_demonstrations_pass(record_id):
    assert run_record(_record(record_id), Context()).status == PASS


def test_d10_fails_loudly_if_accel_accepted_unknown_strings_like_torchrec(monkeypatch):
    original = accel.MLP.__init__

    def lenient(self, in_size, layer_sizes, bias=True, activation="relu", *args, **kwargs):
        original(self, in_size, layer_sizes, bias, "relu" if activation == "tanh" else activation, *args, **kwargs)

    monkeypatch.setattr(accel.MLP, "__init__", lenient)
    row = run_record(_record("MLP/D10_unknown_activation"), Context())
    assert row.status == FAIL and "no longer reproduces" in row.detail and "raised nothing" in row.detail
