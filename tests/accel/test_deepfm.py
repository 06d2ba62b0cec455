"""accel.modules.deepfm: flatten order, TorchRec's FM formula and seed-0 vector, DeepFM state, gradients, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from accel.modules.deepfm import DeepFM, FactorizationMachine, flatten_embeddings


def fm_pairwise_np(flat):
    """sum_{j<k} flat_j flat_k per row, as an explicit double loop (semantics.md 4, D8)."""
    B, M = flat.shape
    out = np.zeros((B, 1))
    for j in range(M):
        for k in range(j + 1, M):
            out[:, 0] += flat[:, j] * flat[:, k]
    return out


def flat_np(embeddings):
    return np.concatenate([e.reshape(e.shape[0], int(np.prod(e.shape[1:]))) for e in embeddings], axis=1)


def test_flatten_is_row_major_in_list_order():
    a = torch.arange(12.0).reshape(2, 2, 3)
    b = torch.arange(100.0, 108.0).reshape(2, 4, 1)
    flat = flatten_embeddings([a, b])
    assert flat.tolist() == [[0, 1, 2, 3, 4, 5, 100, 101, 102, 103], [6, 7, 8, 9, 10, 11, 104, 105, 106, 107]]


def test_single_two_dimensional_tensor_is_not_copied():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert flatten_embeddings([x]) is x


def test_fm_torchrec_seed0_vector():
    torch.manual_seed(0)
    embeddings = [torch.randn(3, 2, 64), torch.randn(3, 2, 32), torch.randn(3, 3, 100), torch.randn(3, 5, 120)]
    out = FactorizationMachine()(embeddings)
    torch.testing.assert_close(out, torch.tensor([[-577.5231], [752.7272], [-509.1023]]), rtol=1e-4, atol=1e-4)


def test_fm_counts_products_inside_one_embedding():
    # D8: a single embedding [1, 1] gives 1 (the paper's per-dimension FM gives 0).
    assert FactorizationMachine()([torch.tensor([[[1.0, 1.0]]])]).tolist() == [[1.0]]


@pytest.mark.parametrize(
    "shapes",
    [[(4, 2, 3), (4, 5)], [(0, 2, 3), (0, 1, 1)], [(3, 1)], [(2, 3)], [(2, 0, 4), (2, 3)], [(5, 2, 2, 2)]],
)
def test_fm_float64_matches_pairwise_formula(shapes):
    rng = np.random.default_rng(0)
    embeddings = [rng.standard_normal(s) for s in shapes]
    out = FactorizationMachine()([torch.from_numpy(e) for e in embeddings])
    assert out.shape == (shapes[0][0], 1) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), fm_pairwise_np(flat_np(embeddings)), rtol=1e-11, atol=1e-11)


@settings(deadline=None)
@given(
    batch=st.integers(0, 4),
    widths=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_fm_float32_close_to_formula(batch, widths, seed):
    rng = np.random.default_rng(seed)
    embeddings = [rng.standard_normal((batch, n, d)).astype(np.float32) for n, d in widths]
    out = FactorizationMachine()([torch.from_numpy(e) for e in embeddings])
    assert out.dtype == torch.float32
    expected = fm_pairwise_np(flat_np([e.astype(np.float64) for e in embeddings]))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_fm_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    fm = FactorizationMachine()
    assert torch.autograd.gradcheck(lambda a, b: fm([a, b]), (a, b))


def test_fm_gradient_formula():
    # d/dflat_j sum_{k<l} flat_k flat_l = sum_k flat_k - flat_j
    x = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64, requires_grad=True)
    FactorizationMachine()([x]).sum().backward()
    assert x.grad.tolist() == [[6.0, 5.0, 3.0]]


def test_fm_has_no_state():
    assert list(FactorizationMachine().state_dict()) == []


# --- DeepFM ---------------------------------------------------------------------------------------------
def test_deepfm_state_dict_is_the_dense_module_under_its_name():
    dense = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 1))
    assert list(DeepFM(dense).state_dict()) == [
        "dense_module.0.weight",
        "dense_module.0.bias",
        "dense_module.2.weight",
        "dense_module.2.bias",
    ]


@pytest.mark.parametrize("batch", [0, 3])
def test_deepfm_forward_is_dense_module_of_flat(batch):
    dense = nn.Linear(10, 2, dtype=torch.float64)
    rng = np.random.default_rng(2)
    embeddings = [rng.standard_normal((batch, 2, 3)), rng.standard_normal((batch, 4))]
    out = DeepFM(dense)([torch.from_numpy(e) for e in embeddings]).detach().numpy()
    W, b = dense.weight.detach().numpy(), dense.bias.detach().numpy()
    np.testing.assert_allclose(out, flat_np(embeddings) @ W.T + b, rtol=1e-12, atol=1e-12)


def test_deepfm_gradients_reach_embeddings_and_dense_module():
    dense = nn.Linear(5, 1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 1, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: DeepFM(dense)([a, b]), (a, b))


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [FactorizationMachine(), DeepFM(nn.Identity())])
def test_bad_embeddings(module):
    with pytest.raises(ValueError, match="embeddings must hold at least one tensor"):
        module([])
    with pytest.raises(ValueError, match=r"embeddings\[1\] has batch size 2, expected 3"):
        module([torch.zeros(3, 2), torch.zeros(2, 2)])
    with pytest.raises(ValueError, match=r"embeddings\[0\] must be at least 2-D .* got shape \(3,\)"):
        module([torch.zeros(3)])
    with pytest.raises(TypeError, match="embeddings must be a list of tensors, got Tensor"):
        module(torch.zeros(3, 2))
    with pytest.raises(TypeError, match=r"embeddings\[0\] must be a torch.Tensor, got list"):
        module([[1.0, 2.0]])


def test_fm_rejects_integer_embeddings():
    with pytest.raises(TypeError, match="embeddings must be float32 or float64 tensors, got dtype torch.int64"):
        FactorizationMachine()([torch.ones(2, 3, dtype=torch.int64)])


def test_deepfm_rejects_a_non_module():
    with pytest.raises(TypeError, match="dense_module must be an nn.Module, got function"):
        DeepFM(lambda x: x)
