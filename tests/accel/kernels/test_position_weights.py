"""accel.kernels.position_weights on the CPU: w_j = p[j - offsets[b]] and dp against NumPy loops, errors."""

import numpy as np
import pytest
import torch

from accel.kernels.position_weights import position_weighted


def reference(offsets, p):
    """w_j = p[position of j in its bag], bag by bag (float64)."""
    return np.array([p[j - offsets[b]] for b in range(len(offsets) - 1) for j in range(offsets[b], offsets[b + 1])])


def grad_reference(offsets, g, L):
    """dp[l] = sum of g over the values at position l."""
    dp = np.zeros(L)
    for b in range(len(offsets) - 1):
        for j in range(offsets[b], offsets[b + 1]):
            dp[j - offsets[b]] += g[j]
    return dp


def test_hand_traced_values():
    # p = [10, 20, 30], lengths [2, 0, 2] -> [10, 20, 10, 20] (semantics 8.1); lengths [2, 0, 3] -> 5 values.
    w = position_weighted(torch.tensor([0, 2, 2, 4]), torch.tensor([10.0, 20.0, 30.0]), 4)
    np.testing.assert_array_equal(w.numpy(), [10, 20, 10, 20])
    p = torch.tensor([10.0, 20.0, 30.0], requires_grad=True)
    position_weighted(torch.tensor([0, 2, 2, 5]), p, 5).backward(torch.arange(5.0))
    np.testing.assert_array_equal(p.grad.numpy(), [0 + 2, 1 + 3, 4])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_random_bags_forward_and_backward(seed, dtype):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 34, 40)
    lengths[::5] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    L = 40
    p = torch.tensor(rng.standard_normal(L), dtype=dtype, requires_grad=True)
    w = position_weighted(torch.tensor(offsets), p, int(offsets[-1]))
    assert w.dtype == dtype
    np.testing.assert_array_equal(w.detach().double().numpy(), reference(offsets, p.detach().double().numpy()))
    g = rng.standard_normal(int(offsets[-1]))
    w.backward(torch.tensor(g, dtype=dtype))
    want = grad_reference(offsets, torch.tensor(g, dtype=dtype).double().numpy(), L)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    np.testing.assert_allclose(p.grad.double().numpy(), want, rtol=tol, atol=tol * np.abs(want).max())


def test_empty_bags_and_no_values():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    w = position_weighted(torch.zeros(4, dtype=torch.int64), p, 0)
    assert w.shape == (0,)
    w.sum().backward()
    np.testing.assert_array_equal(p.grad.numpy(), [0, 0])
    assert position_weighted(torch.zeros(1, dtype=torch.int64), torch.zeros(0), 0).shape == (0,)


def test_gradcheck_and_opcheck():
    offsets = torch.tensor([0, 3, 3, 4, 6])
    p = torch.tensor(np.random.default_rng(2).standard_normal(3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: position_weighted(offsets, q, 6), (p,))
    torch.library.opcheck(torch.ops.recspec.position_weighted.default, (offsets, p.detach().float(), 6))
    torch.library.opcheck(torch.ops.recspec.position_weighted_backward.default, (torch.ones(6), offsets, 3))


def test_position_past_the_weights_is_an_index_error():
    with pytest.raises(IndexError, match=r"position 2 is out of range for 2 position weights \(a bag of length 3\)"):
        position_weighted(torch.tensor([0, 1, 4]), torch.ones(2), 4)
    with pytest.raises(IndexError, match="position 0 is out of range for 0 position weights"):
        position_weighted(torch.tensor([0, 1]), torch.ones(0), 1)


def test_argument_errors():
    with pytest.raises(ValueError, match="offsets must start at 0, never decrease and end at the number of ids 5"):
        position_weighted(torch.tensor([0, 2, 4]), torch.ones(3), 5)
    with pytest.raises(ValueError, match="got \\[1\\] at position 0"):
        position_weighted(torch.tensor([1, 2]), torch.ones(3), 2)
    with pytest.raises(TypeError, match="offsets must be int64, got torch.int32"):
        position_weighted(torch.tensor([0, 1], dtype=torch.int32), torch.ones(3), 1)
    with pytest.raises(ValueError, match=r"position_weight must be a 1-D tensor \(L,\), got shape \(3, 1\)"):
        position_weighted(torch.tensor([0, 1]), torch.ones(3, 1), 1)
    with pytest.raises(TypeError, match="position_weight must have a floating dtype"):
        position_weighted(torch.tensor([0, 1]), torch.ones(3, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="offsets must have B \\+ 1 >= 1 entries, got 0"):
        position_weighted(torch.zeros(0, dtype=torch.int64), torch.ones(3), 0)
    with pytest.raises(ValueError, match=r"grad must have one entry per value \(2\), got shape \(3,\)"):
        torch.ops.recspec.position_weighted_backward(torch.ones(3), torch.tensor([0, 2]), 3)
