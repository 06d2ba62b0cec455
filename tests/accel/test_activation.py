"""accel.modules.activation.SwishLayerNorm: TorchRec's state, the float64 formula, gradients, bad input."""

import numpy as np
import pytest
import torch

from accel.modules.activation import SwishLayerNorm


def swish_layernorm_np(x, gamma, beta, eps=1e-5):
    """y = x * sigmoid((x - mean) / sqrt(var + eps) * gamma + beta) over the trailing gamma.ndim axes."""
    axes = tuple(range(x.ndim - gamma.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    z = (x - mean) / np.sqrt(var + eps) * gamma + beta
    return x / (1 + np.exp(-z))


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module


@pytest.mark.parametrize("dims, shape", [(4, (4,)), ([3, 4], (3, 4)), (torch.Size([2, 3]), (2, 3))])
def test_state_dict_matches_torchrec(dims, shape):
    state = SwishLayerNorm(dims).state_dict()
    assert list(state) == ["norm.0.weight", "norm.0.bias"]
    assert state["norm.0.weight"].shape == shape and state["norm.0.weight"].dtype == torch.float32
    assert torch.equal(state["norm.0.weight"], torch.ones(shape))
    assert torch.equal(state["norm.0.bias"], torch.zeros(shape))


def test_construction_draws_no_random_numbers():
    torch.manual_seed(0)
    SwishLayerNorm([3, 4])
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))


def test_dtype_and_device_arguments():
    m = SwishLayerNorm(4, device="cpu", dtype=torch.float64)
    assert m.norm[0].weight.dtype == torch.float64 and m.norm[0].weight.device.type == "cpu"


def test_loads_a_torchrec_state_dict_unchanged():
    source = randomize(SwishLayerNorm([2, 3]), 0)
    target = SwishLayerNorm([2, 3])
    target.load_state_dict(source.state_dict(), strict=True)
    assert torch.equal(target.norm[0].weight, source.norm[0].weight)


@pytest.mark.parametrize("dims, shape", [(5, (4, 5)), ([3, 4], (2, 3, 4)), (4, (2, 3, 4)), (3, (0, 3))])
def test_float64_forward_matches_formula(dims, shape):
    m = randomize(SwishLayerNorm(dims).double(), seed=1)
    x = np.random.default_rng(2).standard_normal(shape)
    out = m(torch.from_numpy(x))
    assert out.shape == shape and out.dtype == torch.float64
    gamma = m.norm[0].weight.detach().numpy()
    beta = m.norm[0].bias.detach().numpy()
    np.testing.assert_allclose(out.detach().numpy(), swish_layernorm_np(x, gamma, beta), rtol=1e-12, atol=1e-12)


def test_float32_forward_close_to_formula():
    m = randomize(SwishLayerNorm([3, 4]), seed=3)
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    out = m(torch.from_numpy(x))
    assert out.dtype == torch.float32
    gamma = m.norm[0].weight.detach().double().numpy()
    beta = m.norm[0].bias.detach().double().numpy()
    np.testing.assert_allclose(out.detach().numpy(), swish_layernorm_np(x.astype(np.float64), gamma, beta), rtol=1e-5, atol=1e-5)


def test_default_parameters_give_x_times_sigmoid_of_standardised_x():
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    z = (x - 2.0) / np.sqrt(2.0 / 3.0 + 1e-5)
    torch.testing.assert_close(SwishLayerNorm(3).double()(x), x * torch.sigmoid(z), rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    m = randomize(SwishLayerNorm([2, 3]).double(), seed=5)
    x = torch.randn(2, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    w = m.norm[0].weight.detach().clone().requires_grad_()
    b = m.norm[0].bias.detach().clone().requires_grad_()

    def f(x, w, b):
        return torch.func.functional_call(m, {"norm.0.weight": w, "norm.0.bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("shape", [(2, 5), (2, 4, 3), (4,)])
def test_trailing_dimensions_must_match(shape):
    with pytest.raises(ValueError, match=r"input_dims=\[3, 4\], got shape"):
        SwishLayerNorm([3, 4])(torch.zeros(shape))


def test_dtype_mismatch_is_a_type_error():
    with pytest.raises(TypeError, match=r"input has dtype torch.float64, expected torch.float32"):
        SwishLayerNorm(3)(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"input has dtype torch.int64, expected torch.float32"):
        SwishLayerNorm(3)(torch.zeros(2, 3, dtype=torch.int64))


def test_non_tensor_input_rejected():
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        SwishLayerNorm(2)([[1.0, 2.0]])


@pytest.mark.parametrize("dims", [0, [], [3, 0], [2.0]])
def test_invalid_input_dims(dims):
    with pytest.raises(ValueError, match="input_dims must be a positive int or a non-empty list"):
        SwishLayerNorm(dims)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_input_with_float32_parameters_keeps_its_dtype(half):
    # TorchRec accepts half-precision input to its float32 module (torch's LayerNorm rule).
    x = torch.linspace(-3, 3, 24).reshape(4, 6).to(half)
    m = SwishLayerNorm(6)
    y = m(x)
    assert y.dtype == half
    x64 = x.double()
    xhat = (x64 - x64.mean(-1, keepdim=True)) / torch.sqrt(x64.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = x64 * torch.sigmoid(xhat)
    # One rounding of the output to the half format: 2^-8 relative for bfloat16, 2^-11 for float16.
    tol = 2.0**-7 if half == torch.bfloat16 else 2.0**-10
    assert torch.allclose(y.double(), expected, rtol=tol, atol=tol)
