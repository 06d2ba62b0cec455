"""CPU kernels of accel.kernels.fm against float64 NumPy formulas: forward, backward, binding, errors."""

import numpy as np
import pytest
import torch

from accel.kernels.fm import fm_interaction

EPS = {torch.float32: np.finfo(np.float32).eps, torch.float64: np.finfo(np.float64).eps}


def pairwise_reference(x):
    """sum_{j<k} x_j x_k per row, from the explicit pair products (float64)."""
    x = np.asarray(x, dtype=np.float64)
    pairs = x[:, :, None] * x[:, None, :]
    upper = np.triu(np.ones((x.shape[1], x.shape[1]), dtype=bool), k=1)
    return (pairs * upper).sum(axis=(1, 2))[:, None]


def pairwise_grad_reference(x, g):
    """d/dx_j of g * sum_{j<k} x_j x_k = g * sum_{k != j} x_k (float64)."""
    x = np.asarray(x, dtype=np.float64)
    others = np.ones((x.shape[1], x.shape[1])) - np.eye(x.shape[1])
    return np.asarray(g, dtype=np.float64) * (x @ others)


def tolerance(x, dtype):
    # The sum-then-square form cancels: its rounding error scales with (sum_j |x_j|)^2, not with the result.
    scale = float(np.max(np.abs(np.asarray(x, dtype=np.float64)).sum(axis=1) ** 2, initial=1.0))
    return 8 * EPS[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 32), (4, 31), (5, 33), (3, 2), (3, 1664)])
def test_forward_matches_pairwise_sum(dtype, rows, cols):
    rng = np.random.default_rng(rows * 100 + cols)
    x = rng.standard_normal((rows, cols))
    out = fm_interaction(torch.tensor(x, dtype=dtype))
    assert out.shape == (rows, 1) and out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), pairwise_reference(x), rtol=0, atol=tolerance(x, dtype))


def test_hand_traceable_values():
    # Row [1, 1]: one pair, 1 * 1 (TorchRec's all-scalars FM, not the per-dimension paper FM, which gives 0).
    # Row [1, 2, 3]: 1*2 + 1*3 + 2*3 = 11.
    out = fm_interaction(torch.tensor([[1.0, 1.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64))
    np.testing.assert_array_equal(out.numpy(), [[1.0], [11.0]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_batch_and_empty_rows(dtype):
    assert fm_interaction(torch.zeros((0, 7), dtype=dtype)).shape == (0, 1)
    np.testing.assert_array_equal(fm_interaction(torch.zeros((3, 0), dtype=dtype)).numpy(), np.zeros((3, 1)))


def test_row_sums_output_of_the_op():
    x = torch.tensor(np.random.default_rng(1).standard_normal((4, 9)))
    out, row_sum = torch.ops.recspec.fm_interaction(x)
    np.testing.assert_allclose(row_sum.numpy(), x.numpy().sum(axis=1), rtol=1e-14, atol=1e-14)
    assert not row_sum.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols", [(1, 32), (4, 31), (3, 33), (2, 600)])
def test_backward_matches_pair_derivative(dtype, rows, cols):
    rng = np.random.default_rng(7 + rows + cols)
    x_np = rng.standard_normal((rows, cols))
    g_np = rng.standard_normal((rows, 1))
    x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    fm_interaction(x).backward(torch.tensor(g_np, dtype=dtype))
    atol = 8 * EPS[dtype] * float(np.abs(x_np).sum(axis=1).max() * np.abs(g_np).max())
    np.testing.assert_allclose(x.grad.numpy(), pairwise_grad_reference(x_np, g_np), rtol=0, atol=atol)


def test_results_are_bitwise_identical_run_to_run():
    x_np = np.random.default_rng(8).standard_normal((64, 1000))
    runs = []
    for _ in range(2):
        x = torch.tensor(x_np, dtype=torch.float32, requires_grad=True)
        out = fm_interaction(x)
        out.backward(torch.ones_like(out))
        runs.append((out.detach().numpy().copy(), x.grad.numpy().copy()))
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


def test_backward_of_empty_batch():
    x = torch.zeros((0, 5), dtype=torch.float64, requires_grad=True)
    fm_interaction(x).sum().backward()
    assert x.grad.shape == (0, 5)


def test_non_contiguous_input():
    base = np.random.default_rng(3).standard_normal((6, 4))
    x = torch.tensor(base).t()  # (4, 6), column-major view
    np.testing.assert_allclose(fm_interaction(x).numpy(), pairwise_reference(base.T), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    x = torch.tensor(np.random.default_rng(4).standard_normal((3, 10)), dtype=dtype)
    out = fm_interaction(x)
    assert out.dtype == dtype
    # The result equals the float32 kernel's, rounded once to the half dtype.
    expected = pairwise_reference(x.float().numpy())
    np.testing.assert_allclose(out.float().numpy(), expected, rtol=1e-2, atol=1e-2)
    x.requires_grad_(True)
    fm_interaction(x).sum().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(
        x.grad.float().numpy(), pairwise_grad_reference(x.detach().float().numpy(), np.ones((3, 1))),
        rtol=1e-2, atol=2e-2,
    )


def test_gradcheck_float64():
    x = torch.tensor(np.random.default_rng(5).standard_normal((3, 5)), requires_grad=True)
    assert torch.autograd.gradcheck(fm_interaction, (x,))


def test_opcheck_forward_and_backward():
    x = torch.tensor(np.random.default_rng(6).standard_normal((3, 5)), dtype=torch.float32)
    torch.library.opcheck(torch.ops.recspec.fm_interaction.default, (x,))
    torch.library.opcheck(
        torch.ops.recspec.fm_interaction_backward.default, (torch.ones(3, 1), x, x.sum(dim=1))
    )


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"flat must be a 2-D tensor \(B, M\), got shape \(4,\)"):
        fm_interaction(torch.zeros(4))
    with pytest.raises(ValueError, match=r"flat must be a 2-D tensor \(B, M\), got shape \(2, 3, 4\)"):
        fm_interaction(torch.zeros(2, 3, 4))


def test_rejects_integer_dtype_and_non_tensor():
    with pytest.raises(TypeError, match=r"flat must have a floating dtype .* got torch.int64"):
        fm_interaction(torch.zeros((2, 3), dtype=torch.int64))
    with pytest.raises(TypeError, match="flat must be a torch.Tensor, got list"):
        fm_interaction([[1.0, 2.0]])


def test_backward_rejects_mismatched_shapes_and_devices():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"grad must have shape \(B, 1\) = \(3, 1\), got \(3, 4\)"):
        torch.ops.recspec.fm_interaction_backward(torch.zeros(3, 4), x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"row_sum must have shape \(B,\) = \(3,\), got \(2,\)"):
        torch.ops.recspec.fm_interaction_backward(torch.zeros(3, 1), x, torch.zeros(2))
    with pytest.raises(ValueError, match="grad must be on flat's device cpu, got meta"):
        torch.ops.recspec.fm_interaction_backward(torch.zeros(3, 1, device="meta"), x, torch.zeros(3))
