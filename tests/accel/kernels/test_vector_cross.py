"""CPU kernels of accel.kernels.vector_cross against float64 NumPy formulas: forward, backward, binding, errors."""

import numpy as np
import pytest
import torch

from accel.kernels.vector_cross import vector_cross_layer

EPS = {torch.float32: np.finfo(np.float32).eps, torch.float64: np.finfo(np.float64).eps}


def forward_reference(x0, xl, w, b):
    """x_{l+1} = x_0 (x_l . w) + b + x_l: TorchRec's code form, bias outside the product (float64)."""
    x0, xl, w, b = (np.asarray(a, dtype=np.float64) for a in (x0, xl, w, b))
    return x0 * (xl @ w)[:, None] + b + xl


def backward_reference(x0, xl, w, g):
    """(dx_0, dx_l, dw, db) of sum(g * x_{l+1}), written from the chain rule (float64)."""
    x0, xl, w, g = (np.asarray(a, dtype=np.float64) for a in (x0, xl, w, g))
    s = xl @ w
    ds = (g * x0).sum(axis=1)
    return g * s[:, None], g + np.outer(ds, w), xl.T @ ds, g.sum(axis=0)


def make(rows, cols, seed):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape) for shape in ((rows, cols), (rows, cols), (cols,), (cols,), (rows, cols)))


def tolerance(dtype, cols, scale):
    # One dot product of length N per row: error about N ulps of the magnitude of its terms.
    return 4 * EPS[dtype] * max(cols, 1) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 32), (4, 31), (3, 33), (6, 5), (3, 600)])
def test_forward_matches_formula(dtype, rows, cols):
    x0, xl, w, b, _ = make(rows, cols, rows * 10 + cols)
    out = vector_cross_layer(*(torch.tensor(a, dtype=dtype) for a in (x0, xl, w, b)))
    assert out.shape == (rows, cols) and out.dtype == dtype
    expected = forward_reference(x0, xl, w, b)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=tolerance(dtype, cols, np.abs(expected).max()))


def test_bias_outside_the_product():
    # TorchRec's code form: W = 0, b = 1, x = [[2, 3]] gives [[3, 4]] (the page's formula would give [[4, 6]]).
    x = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    out = vector_cross_layer(x, x, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    np.testing.assert_array_equal(out.numpy(), [[3.0, 4.0]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_batch_and_empty_rows(dtype):
    w = torch.ones(4, dtype=dtype, requires_grad=True)
    b = torch.ones(4, dtype=dtype, requires_grad=True)
    x = torch.zeros((0, 4), dtype=dtype, requires_grad=True)
    out = vector_cross_layer(x, x, w, b)
    assert out.shape == (0, 4)
    out.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros(4))
    np.testing.assert_array_equal(b.grad.numpy(), np.zeros(4))
    empty_rows = torch.zeros((3, 0), dtype=dtype)
    assert vector_cross_layer(empty_rows, empty_rows, torch.zeros(0, dtype=dtype), torch.zeros(0, dtype=dtype)).shape \
        == (3, 0)


def test_dot_output_of_the_op():
    x0, xl, w, b, _ = make(4, 7, 1)
    _, dot = torch.ops.recspec.vector_cross_layer(*(torch.tensor(a) for a in (x0, xl, w, b)))
    np.testing.assert_allclose(dot.numpy(), xl @ w, rtol=1e-13, atol=1e-13)
    assert not dot.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols", [(1, 32), (9, 31), (3, 33), (5, 600)])
def test_backward_matches_chain_rule(dtype, rows, cols):
    x0_np, xl_np, w_np, b_np, g_np = make(rows, cols, 50 + rows + cols)
    x0, xl, w, b = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x0_np, xl_np, w_np, b_np))
    vector_cross_layer(x0, xl, w, b).backward(torch.tensor(g_np, dtype=dtype))
    for got, want in zip((x0.grad, xl.grad, w.grad, b.grad), backward_reference(x0_np, xl_np, w_np, g_np)):
        # dw and db also sum over the rows.
        atol = tolerance(dtype, cols + rows, np.abs(want).max() + 1.0)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=atol)


def test_backward_with_a_gradient_broadcast_along_the_rows():
    x0_np, xl_np, w_np, b_np, g_np = make(6, 300, 64)
    x0, xl, w, b = (torch.tensor(a, requires_grad=True) for a in (x0_np, xl_np, w_np, b_np))
    vector_cross_layer(x0, xl, w, b).backward(torch.tensor(g_np[0]).expand(6, 300))
    want = backward_reference(x0_np, xl_np, w_np, np.broadcast_to(g_np[0], (6, 300)))
    for got, expected in zip((x0.grad, xl.grad, w.grad, b.grad), want):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_results_are_bitwise_identical_run_to_run():
    x0_np, xl_np, w_np, b_np, g_np = make(64, 700, 62)
    runs = []
    for _ in range(2):
        x0, xl, w, b = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x0_np, xl_np, w_np, b_np))
        out = vector_cross_layer(x0, xl, w, b)
        out.backward(torch.tensor(g_np, dtype=torch.float32))
        runs.append([t.detach().numpy().copy() for t in (out, x0.grad, xl.grad, w.grad, b.grad)])
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


def test_same_tensor_as_x0_and_xl():
    # The first layer passes x0 as both arguments: both gradient paths must add up.
    x_np, _, w_np, b_np, g_np = make(3, 5, 61)
    x = torch.tensor(x_np, requires_grad=True)
    vector_cross_layer(x, x, torch.tensor(w_np), torch.tensor(b_np)).backward(torch.tensor(g_np))
    dx0, dxl, _, _ = backward_reference(x_np, x_np, w_np, g_np)
    np.testing.assert_allclose(x.grad.numpy(), dx0 + dxl, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("broadcast", [False, True])
def test_first_layer_gradients(dtype, broadcast):
    # x0 is xl: the fused first-layer backward gives dx_0 + dx_l and the parameter gradients.
    x_np, _, w_np, b_np, g_np = make(7, 300, 63)
    if broadcast:
        g_np = np.broadcast_to(g_np[0], g_np.shape)
    x, w, b = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x_np, w_np, b_np))
    grad = torch.tensor(g_np[0], dtype=dtype).expand(7, 300) if broadcast else torch.tensor(g_np, dtype=dtype)
    vector_cross_layer(x, x, w, b).backward(grad)
    dx0, dxl, dw, db = backward_reference(x_np, x_np, w_np, g_np)
    for got, want in ((x.grad, dx0 + dxl), (w.grad, dw), (b.grad, db)):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=tolerance(dtype, 307, np.abs(want).max() + 1.0))


def test_first_layer_backward_op_matches_the_two_input_backward():
    x, _, w, b, g = (torch.tensor(a) for a in make(5, 40, 65))
    _, dot = torch.ops.recspec.vector_cross_layer(x, x, w, b)
    dx, dw, db = torch.ops.recspec.vector_cross_first_layer_backward(g, x, w, b, dot)
    dx0, dxl, dw2, db2 = torch.ops.recspec.vector_cross_layer_backward(g, x, x, w, b, dot)
    np.testing.assert_allclose(dx.numpy(), (dx0 + dxl).numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dw.numpy(), dw2.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(db.numpy(), db2.numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    x0, xl, w, b, _ = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in make(3, 8, 71))
    out = vector_cross_layer(x0, xl, w, b)
    assert out.dtype == dtype
    expected = forward_reference(*(t.detach().float().numpy() for t in (x0, xl, w, b)))
    np.testing.assert_allclose(out.detach().float().numpy(), expected, rtol=1e-2, atol=3e-2)
    out.sum().backward()
    assert {t.grad.dtype for t in (x0, xl, w, b)} == {dtype}
    np.testing.assert_allclose(b.grad.float().numpy(), np.full(8, 3.0))


def test_gradcheck_float64():
    args = tuple(torch.tensor(a, requires_grad=True) for a in make(3, 4, 81)[:4])
    assert torch.autograd.gradcheck(vector_cross_layer, args)
    x, _, w, b = args
    assert torch.autograd.gradcheck(lambda x, w, b: vector_cross_layer(x, x, w, b), (x, w, b))


def test_opcheck_forward_and_backward():
    x0, xl, w, b, g = (torch.tensor(a, dtype=torch.float32) for a in make(4, 5, 91))
    torch.library.opcheck(torch.ops.recspec.vector_cross_layer.default, (x0, xl, w, b))
    _, dot = torch.ops.recspec.vector_cross_layer(x0, xl, w, b)
    torch.library.opcheck(torch.ops.recspec.vector_cross_layer_backward.default, (g, x0, xl, w, b, dot))
    _, dot0 = torch.ops.recspec.vector_cross_layer(x0, x0, w, b)
    torch.library.opcheck(torch.ops.recspec.vector_cross_first_layer_backward.default, (g, x0, w, b, dot0))


def test_rejects_wrong_rank_and_shapes():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"x0 must be a 2-D tensor \(B, N\), got shape \(2, 3, 4\)"):
        vector_cross_layer(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"xl must have x0's shape \(2, 4\), got \(3, 4\)"):
        vector_cross_layer(x, torch.zeros(3, 4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"w must have shape \(N,\) = \(4,\), got \(4, 1\)"):
        vector_cross_layer(x, x, torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match=r"b must have shape \(N,\) = \(4,\), got \(5,\)"):
        vector_cross_layer(x, x, torch.zeros(4), torch.zeros(5))


def test_rejects_bad_dtypes():
    x = torch.zeros(2, 4)
    with pytest.raises(TypeError, match="x0 must have a floating dtype .* got torch.int32"):
        vector_cross_layer(torch.zeros((2, 4), dtype=torch.int32), x, torch.zeros(4), torch.zeros(4))
    # As TorchRec: float64 input with float32 parameters is refused.
    with pytest.raises(TypeError, match="w must have x0's dtype torch.float64, got torch.float32"):
        xd = torch.zeros((2, 4), dtype=torch.float64)
        vector_cross_layer(xd, xd, torch.zeros(4), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got float"):
        vector_cross_layer(x, x, torch.zeros(4), 0.0)


def test_rejects_device_mismatch():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="w must be on x0's device cpu, got meta"):
        vector_cross_layer(x, x, torch.zeros(4, device="meta"), torch.zeros(4))
