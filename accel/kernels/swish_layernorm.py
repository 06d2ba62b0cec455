"""Fused SwishLayerNorm: y = x * sigmoid((x - mu) / sqrt(var + eps) * gamma + beta), per row of D features.

mu and var are the row's mean and biased variance. Backward, with xhat = (x - mu) rstd, s = sigmoid(xhat
gamma + beta), dz = g x s (1 - s) and dxhat = dz gamma:
    dx = g s + rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
    dgamma = sum_rows dz xhat,   dbeta = sum_rows dz.

Three layers, in this order: kernels (CPU @njit over rows, CUDA numba.cuda.jit), launchers and the torch
binding (`recspec::swish_layernorm`). The statistics use two passes (the mean, then the sum of squared
deviations) rather than Welford's update: as stable for the variance, no division per element, the CUDA
block merges plain sums instead of (count, mean, M2) triples, and the second pass re-reads a row still in
cache. The forward returns mean and rstd per row, which the backward reuses.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Tuple

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from accel.kernels import _device
from accel.kernels._device import MAX_THREADS_PER_ROW

# Bound by _cuda_kernels() on the first CUDA launch, so CPU users never import numba.cuda; the kernels read
# them as module globals (the simulator swaps `cuda` for its per-thread fake module).
cuda = None
_block_sum = None

# Backward grid on CUDA: at most 512 blocks (about four per SM on a 132-SM H100/H200, enough to keep memory
# busy); each owns one row of the (blocks, D) partial buffers, so stage two sums at most 512 x D numbers.
_MAX_PARTIAL_BLOCKS = 512


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _sigmoid(z, one):
    """sigmoid(z) = 1 / (1 + e^-z), evaluated on the side where the exponential cannot overflow (CUDA)."""
    if z >= 0:
        return one / (one + math.exp(-z))
    e = math.exp(z)
    return e / (one + e)


@njit(cache=True)
def _rstd(sq_dev_sum, n, eps, one):
    """rstd = 1 / sqrt(sum (x - mu)^2 / D + eps)."""
    return one / math.sqrt(sq_dev_sum / n + eps)


@njit(cache=True)
def _swish_ln_value(v, mean, rstd, gamma, beta, one):
    """y = x sigmoid((x - mu) rstd gamma + beta)."""
    return v * _sigmoid((v - mean) * rstd * gamma + beta, one)


@njit(cache=True)
def _swish_ln_grads_at(g, v, s, one):
    """(dz, g s) at s = sigmoid(xhat gamma + beta): dz = g x s (1 - s), and the direct term g s of dx."""
    return g * v * s * (one - s), g * s


@njit(cache=True)
def _swish_ln_grads(g, v, mean, rstd, gamma, beta, one):
    """(xhat, dz, g s): xhat = (x - mu) rstd, then _swish_ln_grads_at."""
    xhat = (v - mean) * rstd
    dz, direct = _swish_ln_grads_at(g, v, _sigmoid(xhat * gamma + beta, one), one)
    return xhat, dz, direct


@njit(cache=True)
def _swish_ln_input_grad(direct, dxhat, xhat, rstd, mean_dxhat, mean_dxhat_xhat):
    """dx = g s + rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))."""
    return direct + rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)


# The CPU kernels share the formulas above except the sigmoid: the CUDA one calls the GPU's exp, the CPU one
# is _device.sigmoid_vec, which LLVM can vectorise. Each kernel takes chunks of rows, one per thread, with
# per-thread scratch rows for what a later sweep of the same row reuses; a row (2 KiB at D = 512 in float32)
# stays in L1 between sweeps, so x and g are read from memory once. Row sums are _device's: vectorised, in a
# fixed order.


@_device.cpu_jit(parallel=True)
def _swish_ln_forward_cpu(x, gamma, beta, eps, y, mean, rstd, chunks):
    # Sweeps of row r: the sum, x - mu into `dev` and the sum of its squares, then the output from `dev`.
    rows, features = x.shape
    one = x.dtype.type(1)
    n = x.dtype.type(features)
    eps_t = x.dtype.type(eps)
    for c in prange(chunks):
        dev = np.empty(features, x.dtype)
        acc = np.empty(_device.CPU_SUM_LANES, x.dtype)
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            row, out = x[r], y[r]
            mu = _device.row_sum(row, acc) / n
            for d in range(features):
                dev[d] = row[d] - mu
            # _rstd's formula under the CPU's error model: a zero variance with eps = 0 gives inf (and nan
            # outputs, as torch does) instead of a ZeroDivisionError inside the parallel region.
            rs = one / math.sqrt(_device.row_dot(dev, dev, acc) / n + eps_t)
            for d in range(features):
                out[d] = row[d] * _device.sigmoid_vec(dev[d] * rs * gamma[d] + beta[d])
            mean[r] = mu
            rstd[r] = rs


@_device.cpu_jit(parallel=True)
def _swish_ln_backward_cpu(g, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, chunks):
    # Per row: one sweep computes xhat, s, dz and dxhat = dz gamma into scratch rows (the sigmoid once per
    # element), one fixed-order sweep gives mean(dxhat) and mean(dxhat xhat), and a last sweep writes dx and
    # adds into chunk c's own partial rows of dgamma and dbeta (no sharing between threads). The partials are
    # then added in chunk order, so dgamma and dbeta do not depend on which thread ran which chunk.
    rows, features = x.shape
    one = x.dtype.type(1)
    n = x.dtype.type(features)
    partial = np.empty((chunks, 2, features), x.dtype)
    for c in prange(chunks):
        xhat = np.empty(features, x.dtype)
        dz = np.empty(features, x.dtype)
        dxhat = np.empty(features, x.dtype)
        direct = np.empty(features, x.dtype)
        acc = np.empty(_device.CPU_SUM_LANES, x.dtype)
        dgamma_c, dbeta_c = partial[c, 0], partial[c, 1]
        for d in range(features):
            dgamma_c[d] = 0
            dbeta_c[d] = 0
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            # g holds one row when the gradient is broadcast along the rows (_device.grad_rows).
            g_r, x_r, dx_r = g[r if g.shape[0] > 1 else 0], x[r], dx[r]
            mu = mean[r]
            rs = rstd[r]
            for d in range(features):
                h = (x_r[d] - mu) * rs
                dz_d, direct[d] = _swish_ln_grads_at(g_r[d], x_r[d], _device.sigmoid_vec(h * gamma[d] + beta[d]), one)
                xhat[d] = h
                dz[d] = dz_d
                dxhat[d] = dz_d * gamma[d]
            mean_dxhat = _device.row_sum(dxhat, acc) / n
            mean_dxhat_xhat = _device.row_dot(dxhat, xhat, acc) / n
            for d in range(features):
                dx_r[d] = _swish_ln_input_grad(direct[d], dxhat[d], xhat[d], rs, mean_dxhat, mean_dxhat_xhat)
                dgamma_c[d] += dz[d] * xhat[d]
                dbeta_c[d] += dz[d]
    # Explicit loops: an array expression here would be one more parallel region.
    for d in range(features):
        dgamma[d] = partial[0, 0, d]
        dbeta[d] = partial[0, 1, d]
    for c in range(1, chunks):
        dgamma_c, dbeta_c = partial[c, 0], partial[c, 1]
        for d in range(features):
            dgamma[d] += dgamma_c[d]
            dbeta[d] += dbeta_c[d]


def _swish_ln_forward_cuda(x, gamma, beta, eps, y, mean, rstd):
    # One thread block per row, threads strided over the row's D features: two block reductions (sum, then
    # squared deviations) and a third sweep that writes the output.
    buf = cuda.shared.array(MAX_THREADS_PER_ROW, x.dtype)
    r = cuda.blockIdx.x
    if r >= x.shape[0]:
        return
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    one = x.dtype.type(1)
    n = x.dtype.type(x.shape[1])
    total = x.dtype.type(0)
    for d in range(tid, x.shape[1], step):
        total += x[r, d]
    mu = _block_sum(buf, total) / n
    sq_dev = x.dtype.type(0)
    for d in range(tid, x.shape[1], step):
        dev = x[r, d] - mu
        sq_dev += dev * dev
    rs = _rstd(_block_sum(buf, sq_dev), n, x.dtype.type(eps), one)
    for d in range(tid, x.shape[1], step):
        y[r, d] = _swish_ln_value(x[r, d], mu, rs, gamma[d], beta[d], one)
    if tid == 0:
        mean[r] = mu
        rstd[r] = rs


def _swish_ln_backward_cuda(g, x, gamma, beta, mean, rstd, dx, dgamma_part, dbeta_part):
    # Stage one of a two-stage column reduction: block k takes rows k, k + G, k + 2G, ... (G = gridDim.x),
    # threads strided over the D features. Thread t alone touches columns t, t + blockDim, ... of row k of
    # the zeroed partial buffers, so its += needs no atomics; the launcher sums the G partial rows (stage
    # two). Chosen over atomics for run-to-run identical dgamma/dbeta and no contention on D addresses.
    buf_a = cuda.shared.array(MAX_THREADS_PER_ROW, x.dtype)
    buf_b = cuda.shared.array(MAX_THREADS_PER_ROW, x.dtype)
    k = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    one = x.dtype.type(1)
    n = x.dtype.type(x.shape[1])
    for r in range(k, x.shape[0], cuda.gridDim.x):
        mu = mean[r]
        rs = rstd[r]
        sum_dxhat = x.dtype.type(0)
        sum_dxhat_xhat = x.dtype.type(0)
        for d in range(tid, x.shape[1], step):
            xhat, dz, _ = _swish_ln_grads(g[r, d], x[r, d], mu, rs, gamma[d], beta[d], one)
            sum_dxhat += dz * gamma[d]
            sum_dxhat_xhat += dz * gamma[d] * xhat
        mean_dxhat = _block_sum(buf_a, sum_dxhat) / n
        mean_dxhat_xhat = _block_sum(buf_b, sum_dxhat_xhat) / n
        for d in range(tid, x.shape[1], step):
            xhat, dz, direct = _swish_ln_grads(g[r, d], x[r, d], mu, rs, gamma[d], beta[d], one)
            dx[r, d] = _swish_ln_input_grad(direct, dz * gamma[d], xhat, rs, mean_dxhat, mean_dxhat_xhat)
            dgamma_part[k, d] += dz * xhat
            dbeta_part[k, d] += dz


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _block_sum
    cuda = _device.cuda_module()
    _block_sum = _device.cuda_block_sum()
    return SimpleNamespace(
        forward=cuda.jit(cache=True)(_swish_ln_forward_cuda),
        backward=cuda.jit(cache=True)(_swish_ln_backward_cuda),
    )


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def cuda_partial_blocks(rows: int) -> int:
    """Blocks of the CUDA backward, i.e. rows of its (blocks, D) partial buffers."""
    return min(rows, _MAX_PARTIAL_BLOCKS)


def _launch_cuda_forward(x, gamma, beta, eps, y, mean, rstd, stream=0) -> None:
    """CUDA forward on Numba device arrays: x (R, D), gamma, beta (D,) -> y (R, D), mean, rstd (R,); R, D > 0."""
    kernels = _cuda_kernels()
    # Grid: one block per row; block: the next power of two covering the row (see threads_per_row).
    kernels.forward[x.shape[0], _device.threads_per_row(x.shape[1]), stream](x, gamma, beta, eps, y, mean, rstd)


def _launch_cuda_backward(g, x, gamma, beta, mean, rstd, dx, dgamma_part, dbeta_part, stream=0) -> None:
    """Stage one of the CUDA backward on Numba device arrays; R, D > 0.

    dgamma_part and dbeta_part are zeroed (cuda_partial_blocks(R), D) buffers; their column sums are dgamma
    and dbeta.
    """
    kernels = _cuda_kernels()
    blocks = dgamma_part.shape[0]
    threads = _device.threads_per_row(x.shape[1])
    kernels.backward[blocks, threads, stream](g, x, gamma, beta, mean, rstd, dx, dgamma_part, dbeta_part)


def _check_inputs(x: Tensor, weight: Tensor, bias: Tensor) -> None:
    _device.check_tensor("x", x)
    _device.check_tensor("weight", weight)
    _device.check_tensor("bias", bias)
    if weight.dim() < 1 or weight.numel() == 0:
        raise ValueError(
            f"weight must have at least one dimension and one element (normalized_shape), "
            f"got shape {tuple(weight.shape)}"
        )
    shape = tuple(weight.shape)
    if tuple(bias.shape) != shape:
        raise ValueError(f"bias must have weight's shape {shape}, got {tuple(bias.shape)}")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"x must end in normalized_shape {shape}, got shape {tuple(x.shape)}")
    _device.check_same_device("weight", weight, "x", x)
    _device.check_same_device("bias", bias, "x", x)
    _device.check_same_dtype("bias", bias, "weight", weight)
    # Same rule as torch's LayerNorm: parameters in x's dtype, or float32 parameters for half inputs.
    upcast = _device.kernel_dtype(x.dtype) != x.dtype
    if weight.dtype != x.dtype and not (upcast and weight.dtype == torch.float32):
        raise TypeError(f"weight must have x's dtype {x.dtype}{' (or float32)' if upcast else ''}, got {weight.dtype}")


def _check_eps(eps: object) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")


def _check_stats(name: str, t: Tensor, rows: int, x: Tensor) -> None:
    _device.check_tensor(name, t)
    if tuple(t.shape) != (rows,):
        raise ValueError(f"{name} must have shape (rows,) = ({rows},), got {tuple(t.shape)}")
    _device.check_same_device(name, t, "x", x)


def _check_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor) -> None:
    _check_inputs(x, weight, bias)
    _device.check_tensor("grad", grad)
    if grad.shape != x.shape:
        raise ValueError(f"grad must have x's shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    _device.check_same_device("grad", grad, "x", x)
    rows = x.numel() // weight.numel()
    _check_stats("mean", mean, rows, x)
    _check_stats("rstd", rstd, rows, x)


def _flat(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.detach().to(dtype).contiguous().view(-1)


def swish_layernorm_forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """y = x sigmoid(LN(x) gamma + beta) with the per-row mean and rstd saved for the backward.

    Shapes: x (..., *normalized_shape), weight, bias normalized_shape -> y like x (x's dtype), mean and
    rstd (rows,) in the kernel dtype, rows = x.numel() / weight.numel().
    """
    _check_inputs(x, weight, bias)
    _check_eps(eps)
    _device.check_launchable("x", x)
    dtype = _device.kernel_dtype(x.dtype)
    rows_x = _flat(x, dtype).view(-1, weight.numel())
    gamma, beta = _flat(weight, dtype), _flat(bias, dtype)
    rows = rows_x.shape[0]
    y = torch.empty_like(rows_x)
    mean = torch.empty((rows,), dtype=dtype, device=x.device)
    rstd = torch.empty((rows,), dtype=dtype, device=x.device)
    if rows > 0:
        if _device.is_cuda(x):
            with _device.cuda_launch(x.device) as stream:
                x_a, g_a, b_a, y_a, mu_a, rs_a = map(_device.as_numba_array, (rows_x, gamma, beta, y, mean, rstd))
                _launch_cuda_forward(x_a, g_a, b_a, float(eps), y_a, mu_a, rs_a, stream=stream)
        else:
            _swish_ln_forward_cpu(rows_x.numpy(), gamma.numpy(), beta.numpy(), float(eps), y.numpy(), mean.numpy(),
                                  rstd.numpy(), _device.cpu_kernel_chunks(rows))
    return y.view(x.shape).to(x.dtype), mean, rstd


def swish_layernorm_backward(
    grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dgamma, dbeta) of y = x sigmoid(LN(x) gamma + beta) given dy = grad and the saved mean, rstd.

    Shapes: grad, x (..., *normalized_shape); weight, bias, dgamma, dbeta normalized_shape (weight's dtype);
    mean, rstd (rows,); dx like x.
    """
    _check_backward(grad, x, weight, bias, mean, rstd)
    _device.check_launchable("x", x)
    dtype = _device.kernel_dtype(x.dtype)
    features = weight.numel()
    rows_x = _flat(x, dtype).view(-1, features)
    gamma, beta, mu, rs = (_flat(t, dtype) for t in (weight, bias, mean, rstd))
    rows = rows_x.shape[0]
    dx = torch.empty_like(rows_x)
    if _device.is_cuda(x):
        rows_g = _flat(grad, dtype).view(-1, features)
        # Stage one adds into per-block partial rows, zeroed here; stage two sums them over blocks.
        partial_rows = cuda_partial_blocks(rows)
        dgamma_part = torch.zeros((partial_rows, features), dtype=dtype, device=x.device)
        dbeta_part = torch.zeros((partial_rows, features), dtype=dtype, device=x.device)
        if rows > 0:
            tensors = (rows_g, rows_x, gamma, beta, mu, rs, dx, dgamma_part, dbeta_part)
            with _device.cuda_launch(x.device) as stream:
                _launch_cuda_backward(*map(_device.as_numba_array, tensors), stream=stream)
        dgamma, dbeta = dgamma_part.sum(0), dbeta_part.sum(0)
    else:
        rows_g = _device.grad_rows(grad, weight.dim(), dtype)
        dgamma = torch.zeros((features,), dtype=dtype)
        dbeta = torch.zeros((features,), dtype=dtype)
        if rows > 0:
            tensors = (rows_g, rows_x, gamma, beta, mu, rs, dx, dgamma, dbeta)
            _swish_ln_backward_cpu(*(t.numpy() for t in tensors), _device.cpu_kernel_chunks(rows))
    dgamma = dgamma.view(weight.shape).to(weight.dtype)
    dbeta = dbeta.view(weight.shape).to(weight.dtype)
    return dx.view(x.shape).to(x.dtype), dgamma, dbeta


# ---------------------------------------------------------------------------------------------------------
# Torch binding
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("recspec::swish_layernorm", mutates_args=())
def _swish_layernorm_op(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    return swish_layernorm_forward(x, weight, bias, eps)


@_swish_layernorm_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    _check_inputs(x, weight, bias)
    rows = x.numel() // weight.numel()
    dtype = _device.kernel_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty((rows,), dtype=dtype), x.new_empty((rows,), dtype=dtype)


@torch.library.custom_op("recspec::swish_layernorm_backward", mutates_args=())
def _swish_layernorm_backward_op(
    grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    return swish_layernorm_backward(grad, x, weight, bias, mean, rstd)


@_swish_layernorm_backward_op.register_fake
def _(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor):
    _check_backward(grad, x, weight, bias, mean, rstd)
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    # mean and rstd are saved for the backward, not outputs users differentiate through.
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = _swish_layernorm_backward_op(grad_y, x, weight, bias, mean, rstd)
    return dx, dweight, dbias, None


_swish_layernorm_op.register_autograd(_backward, setup_context=_setup_context)


def swish_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """y = x * sigmoid((x - mu) / sqrt(var + eps) * gamma + beta), LayerNorm over normalized_shape = weight.shape.

    mu and var (biased) are taken over the trailing weight.dim() dimensions of x. Shapes: x (...,
    *normalized_shape), weight and bias normalized_shape -> like x, in x's dtype. float32/float64 run
    natively, accumulating in that dtype; float16/bfloat16 x (with parameters in x's dtype or float32) is
    computed in float32 and the result cast back. CPU or CUDA by x's device. Differentiable in x, weight
    and bias through the `recspec::swish_layernorm_backward` kernel.
    """
    # Checked here too so that a non-tensor gets this module's TypeError, not the dispatcher's schema error.
    _check_inputs(x, weight, bias)
    _check_eps(eps)
    return _swish_layernorm_op(x, weight, bias, float(eps))[0]
