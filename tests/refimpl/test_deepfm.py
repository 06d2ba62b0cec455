"""refimpl.modules.deepfm: flattening, TorchRec's FM, the paper's FM, DeepFM."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl.grad_check import check_module_gradients
from refimpl.modules.deepfm import (
    DeepFM,
    FactorizationMachine,
    factorization_machine,
    factorization_machine_fieldwise,
    factorization_machine_pairwise,
    flatten_embeddings,
    flatten_embeddings_backward,
)
from refimpl.modules.mlp import MLP
from refimpl.nn import Linear


def _pairs(flat):
    """sum_{j<k} x_j x_k per row, by explicit Python loops."""
    out = np.zeros((flat.shape[0], 1))
    for b, row in enumerate(flat):
        out[b, 0] = sum(row[j] * row[k] for j in range(len(row)) for k in range(j + 1, len(row)))
    return out


def _embeddings(rng, B=3):
    # The (B, 0) entry is an embedding with no scalars: it must contribute nothing.
    return [rng.standard_normal((B, 2, 3)), rng.standard_normal((B, 4, 1)), np.zeros((B, 0))]


def test_flatten_order_and_widths():
    a = np.arange(12.0).reshape(2, 2, 3)
    b = 100 + np.arange(8.0).reshape(2, 4, 1)
    flat = flatten_embeddings([a, b])
    assert flat.shape == (2, 10)
    np.testing.assert_array_equal(flat[1], [6, 7, 8, 9, 10, 11, 104, 105, 106, 107])


def test_flatten_backward_splits_back():
    shapes = [(2, 2, 3), (2, 4, 1), (2, 0)]
    grads = flatten_embeddings_backward(np.arange(20.0).reshape(2, 10), shapes)
    assert [g.shape for g in grads] == shapes
    np.testing.assert_array_equal(grads[1][1, :, 0], [16, 17, 18, 19])


def test_flatten_errors():
    with pytest.raises(ValueError, match=r"embeddings: expected a non-empty list of arrays, got \[\]"):
        flatten_embeddings([])
    with pytest.raises(ValueError, match=r"embeddings\[1\]: expected batch size 3 \(.*\), got 2"):
        flatten_embeddings([np.zeros((3, 2)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"embeddings\[0\]: expected .* at least 2 dims, got shape \(3,\)"):
        flatten_embeddings([np.zeros(3)])
    with pytest.raises(TypeError, match="embeddings: expected a list of arrays, got ndarray"):
        flatten_embeddings(np.zeros((3, 2)))


def test_fm_hand_example_and_paper_fm():
    x = [np.array([[[1.0, 1.0]]])]
    np.testing.assert_array_equal(FactorizationMachine()(x), [[1.0]])
    np.testing.assert_array_equal(factorization_machine_fieldwise(x), [[0.0]])


def test_fm_matches_pairwise_loops():
    rng = np.random.default_rng(0)
    flat = flatten_embeddings(_embeddings(rng))
    np.testing.assert_allclose(factorization_machine(flat), _pairs(flat), rtol=1e-12)
    np.testing.assert_allclose(factorization_machine_pairwise(flat), _pairs(flat), rtol=1e-12)


@settings(deadline=None)
@given(
    B=st.integers(0, 3),
    widths=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_fm_identity_holds_for_any_layout(B, widths, seed):
    rng = np.random.default_rng(seed)
    E = [rng.standard_normal((B, w)) for w in widths]
    y = FactorizationMachine()(E)
    assert y.shape == (B, 1)
    np.testing.assert_allclose(y, _pairs(np.concatenate(E, axis=1)), rtol=1e-10, atol=1e-12)


def test_fieldwise_fm_matches_field_dot_products():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 1, 3))
    v = np.concatenate([a, b], axis=1)  # fields f = 0, 1, 2
    expected = sum(np.sum(v[:, f] * v[:, g], axis=1) for f in range(3) for g in range(f + 1, 3))
    np.testing.assert_allclose(factorization_machine_fieldwise([a, b]), expected[:, None], rtol=1e-12)
    np.testing.assert_allclose(factorization_machine_fieldwise(v), expected[:, None], rtol=1e-12)


def test_fieldwise_fm_needs_equal_dims():
    with pytest.raises(ValueError, match=r"embeddings_3d\[1\]: expected shape \(2, F, 3\) .* got \(2, 1, 4\)"):
        factorization_machine_fieldwise([np.zeros((2, 2, 3)), np.zeros((2, 1, 4))])
    with pytest.raises(ValueError, match=r"embeddings_3d\[0\]: expected shape \(B, F, D\), got shape \(2, 3\)"):
        factorization_machine_fieldwise([np.zeros((2, 3))])


def test_fm_dtype_follows_input():
    x = [np.ones((2, 3), dtype=np.float32)]
    y = FactorizationMachine()(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[3.0], [3.0]])
    assert FactorizationMachine(dtype=np.float64)(x).dtype == np.float64


def test_fm_empty_batch_and_no_state():
    fm = FactorizationMachine()
    assert fm.state_dict() == {}
    assert fm([np.zeros((0, 2, 2))]).shape == (0, 1)
    grads, params = fm.backward(np.zeros((0, 1)))
    assert grads[0].shape == (0, 2, 2) and params == {}


def test_fm_backward_formula():
    fm = FactorizationMachine()
    fm([np.array([[1.0, 2.0, 4.0]])])
    grads, _ = fm.backward(np.array([[0.5]]))
    np.testing.assert_array_equal(grads[0], [[0.5 * 6, 0.5 * 5, 0.5 * 3]])  # g (S - x_j), S = 7


def test_fm_gradients_match_central_differences():
    rng = np.random.default_rng(2)
    check_module_gradients(FactorizationMachine(), _embeddings(rng, B=2), rng=rng)


def test_deepfm_with_linear_matches_formula_and_keys():
    rng = np.random.default_rng(3)
    dense = Linear(10, 2, rng=rng)
    model = DeepFM(dense_module=dense)
    sd = model.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {"dense_module.weight": (2, 10), "dense_module.bias": (2,)}
    E = _embeddings(rng)
    flat = np.concatenate([e.reshape(3, -1) for e in E], axis=1)
    np.testing.assert_allclose(model(E), flat @ sd["dense_module.weight"].T + sd["dense_module.bias"], rtol=1e-13)


def test_deepfm_gradients_with_linear():
    rng = np.random.default_rng(4)
    check_module_gradients(DeepFM(Linear(10, 2, rng=rng)), _embeddings(rng, B=2), rng=rng)


def test_deepfm_gradients_with_mlp():
    rng = np.random.default_rng(5)
    model = DeepFM(MLP(10, [4, 3], activation="sigmoid", rng=rng))
    assert "dense_module._mlp.1._linear.bias" in model.state_dict()
    check_module_gradients(model, _embeddings(rng, B=2), rng=rng)


def test_deepfm_rejects_non_module():
    with pytest.raises(TypeError, match="dense_module expected a refimpl Module, got function"):
        DeepFM(lambda x: x)
