"""FM interaction over all scalars of a row: out_b = 1/2((sum_j x_bj)^2 - sum_j x_bj^2) = sum_{j<k} x_bj x_bk.

Backward: dx_bj = g_b (S_b - x_bj), with S_b = sum_j x_bj.

Three layers, in this order: kernels (CPU @njit over rows, CUDA numba.cuda.jit), launchers (validate,
allocate, pick the device) and the torch binding (`recspec::fm_interaction` with fake and autograd).

The forward returns S_b next to the output and the backward reuses it rather than recomputing it: saving B
numbers removes the only reduction from the backward, which becomes one elementwise pass (on CUDA a flat
grid with no block reduction and no syncthreads).
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

# Flat elementwise CUDA grid: 256 threads per block; at most 4096 blocks (about 30 per SM on a 132-SM
# H100/H200, enough to saturate memory), beyond which each thread strides over several elements.
_FLAT_THREADS = 256
_FLAT_MAX_BLOCKS = 4096


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _fm_accumulate(s, q, v):
    """(S, Q) <- (S + x, Q + x^2): one scalar into the row's sum and sum of squares."""
    return s + v, q + v * v


@njit(cache=True)
def _fm_output(s, q, half):
    """out = 1/2 (S^2 - Q); `half` carries the row's dtype so that float32 stays float32."""
    return half * (s * s - q)


@njit(cache=True)
def _fm_grad(g, s, v):
    """dx = g (S - x)."""
    return g * (s - v)


@_device.cpu_jit(parallel=True)
def _fm_forward_cpu(x, out, row_sum, chunks):
    # Chunks of rows, one per thread, each with the lanes of the fixed-order sums as scratch. Per row S, then
    # Q from the row still in L1 (6.5 KiB at M = 1664 in float32): x is read from memory once.
    rows = x.shape[0]
    half = x.dtype.type(0.5)
    for c in prange(chunks):
        acc = np.empty(_device.CPU_SUM_LANES, x.dtype)
        for b in range(c * rows // chunks, (c + 1) * rows // chunks):
            row = x[b]
            s = _device.row_sum(row, acc)
            out[b, 0] = _fm_output(s, _device.row_dot(row, row, acc), half)
            row_sum[b] = s


# Rows per prange iteration of the backward: Numba bounds-checks (NUMBA_BOUNDSCHECK=1) no access indexed by a
# prange variable itself (numba#4600), so the rows are walked by an inner loop; 64 rows keep the iterations
# many enough to balance the threads.
_BACKWARD_BLOCK = 64


@_device.cpu_jit(parallel=True)
def _fm_backward_cpu(g, x, row_sum, dx):
    # Blocks of rows, one block per prange iteration; elementwise given the saved row sum.
    rows = x.shape[0]
    for block in prange((rows + _BACKWARD_BLOCK - 1) // _BACKWARD_BLOCK):
        for b in range(block * _BACKWARD_BLOCK, min(rows, (block + 1) * _BACKWARD_BLOCK)):
            gb = g[b, 0]
            s = row_sum[b]
            x_b, dx_b = x[b], dx[b]
            for j in range(x.shape[1]):
                dx_b[j] = _fm_grad(gb, s, x_b[j])


def _fm_forward_cuda(x, out, row_sum):
    # One thread block per row, threads strided over the row's M scalars; each thread keeps partial (S, Q)
    # in registers and the block adds them up in shared memory.
    s_buf = cuda.shared.array(MAX_THREADS_PER_ROW, x.dtype)
    q_buf = cuda.shared.array(MAX_THREADS_PER_ROW, x.dtype)
    b = cuda.blockIdx.x
    if b >= x.shape[0]:
        return
    tid = cuda.threadIdx.x
    s = x.dtype.type(0)
    q = x.dtype.type(0)
    for j in range(tid, x.shape[1], cuda.blockDim.x):
        s, q = _fm_accumulate(s, q, x[b, j])
    s = _block_sum(s_buf, s)
    q = _block_sum(q_buf, q)
    if tid == 0:
        out[b, 0] = _fm_output(s, q, x.dtype.type(0.5))
        row_sum[b] = s


def _fm_backward_cuda(g, x, row_sum, dx):
    # One thread per element of x in a grid-stride loop over the flattened (B, M) index: with S saved
    # there is nothing left to reduce, so rows need not map to blocks.
    n_cols = x.shape[1]
    for k in range(cuda.grid(1), x.shape[0] * n_cols, cuda.gridsize(1)):
        b = k // n_cols
        j = k - b * n_cols
        dx[b, j] = _fm_grad(g[b, 0], row_sum[b], x[b, j])


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _block_sum
    cuda = _device.cuda_module()
    _block_sum = _device.cuda_block_sum()
    return SimpleNamespace(
        forward=cuda.jit(cache=True)(_fm_forward_cuda),
        backward=cuda.jit(cache=True)(_fm_backward_cuda),
    )


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def _launch_cuda_forward(x, out, row_sum, stream=0) -> None:
    """CUDA forward on Numba device arrays: x (B, M) -> out (B, 1), row_sum (B,); requires B, M > 0."""
    kernels = _cuda_kernels()
    # Grid: one block per row; block: the next power of two covering the row (see threads_per_row).
    kernels.forward[x.shape[0], _device.threads_per_row(x.shape[1]), stream](x, out, row_sum)


def _launch_cuda_backward(g, x, row_sum, dx, stream=0) -> None:
    """CUDA backward on Numba device arrays: g (B, 1), x (B, M), row_sum (B,) -> dx (B, M); requires B, M > 0."""
    kernels = _cuda_kernels()
    blocks = min(math.ceil(x.shape[0] * x.shape[1] / _FLAT_THREADS), _FLAT_MAX_BLOCKS)
    kernels.backward[blocks, _FLAT_THREADS, stream](g, x, row_sum, dx)


def _check_flat(flat: Tensor) -> None:
    _device.check_tensor("flat", flat)
    _device.check_ndim("flat", flat, 2, "(B, M)")


def _check_backward(grad: Tensor, flat: Tensor, row_sum: Tensor) -> None:
    _check_flat(flat)
    _device.check_tensor("grad", grad)
    _device.check_tensor("row_sum", row_sum)
    rows = flat.shape[0]
    if tuple(grad.shape) != (rows, 1):
        raise ValueError(f"grad must have shape (B, 1) = ({rows}, 1), got {tuple(grad.shape)}")
    if tuple(row_sum.shape) != (rows,):
        raise ValueError(f"row_sum must have shape (B,) = ({rows},), got {tuple(row_sum.shape)}")
    _device.check_same_device("grad", grad, "flat", flat)
    _device.check_same_device("row_sum", row_sum, "flat", flat)


def fm_forward(flat: Tensor) -> Tuple[Tensor, Tensor]:
    """out = 1/2((sum_j x_j)^2 - sum_j x_j^2) per row, plus the row sums S for the backward.

    Shapes: flat (B, M) -> out (B, 1) in flat's dtype, S (B,) in the kernel dtype (float32 for half inputs).
    """
    _check_flat(flat)
    _device.check_launchable("flat", flat)
    dtype = _device.kernel_dtype(flat.dtype)
    x = flat.detach().to(dtype).contiguous()
    out = torch.zeros((x.shape[0], 1), dtype=dtype, device=x.device)
    row_sum = torch.zeros((x.shape[0],), dtype=dtype, device=x.device)
    # An empty row has S = Q = 0, which the zeros above already hold; no launch for an empty tensor.
    if x.numel() > 0:
        if _device.is_cuda(x):
            with _device.cuda_launch(x.device) as stream:
                _launch_cuda_forward(*map(_device.as_numba_array, (x, out, row_sum)), stream=stream)
        else:
            _fm_forward_cpu(x.numpy(), out.numpy(), row_sum.numpy(), _device.cpu_kernel_chunks(x.shape[0]))
    return out.to(flat.dtype), row_sum


def fm_backward(grad: Tensor, flat: Tensor, row_sum: Tensor) -> Tensor:
    """dx_bj = g_b (S_b - x_bj). Shapes: grad (B, 1), flat (B, M), row_sum (B,) -> dx (B, M) in flat's dtype."""
    _check_backward(grad, flat, row_sum)
    _device.check_launchable("flat", flat)
    dtype = _device.kernel_dtype(flat.dtype)
    x = flat.detach().to(dtype).contiguous()
    g = grad.detach().to(dtype).contiguous()
    s = row_sum.detach().to(dtype).contiguous()
    dx = torch.empty_like(x)
    if x.numel() > 0:
        if _device.is_cuda(x):
            with _device.cuda_launch(x.device) as stream:
                _launch_cuda_backward(*map(_device.as_numba_array, (g, x, s, dx)), stream=stream)
        else:
            _fm_backward_cpu(g.numpy(), x.numpy(), s.numpy(), dx.numpy())
    return dx.to(flat.dtype)


# ---------------------------------------------------------------------------------------------------------
# Torch binding
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("recspec::fm_interaction", mutates_args=())
def _fm_interaction_op(flat: Tensor) -> Tuple[Tensor, Tensor]:
    return fm_forward(flat)


@_fm_interaction_op.register_fake
def _(flat: Tensor) -> Tuple[Tensor, Tensor]:
    _check_flat(flat)
    rows = flat.shape[0]
    return flat.new_empty((rows, 1)), flat.new_empty((rows,), dtype=_device.kernel_dtype(flat.dtype))


@torch.library.custom_op("recspec::fm_interaction_backward", mutates_args=())
def _fm_interaction_backward_op(grad: Tensor, flat: Tensor, row_sum: Tensor) -> Tensor:
    return fm_backward(grad, flat, row_sum)


@_fm_interaction_backward_op.register_fake
def _(grad: Tensor, flat: Tensor, row_sum: Tensor) -> Tensor:
    _check_backward(grad, flat, row_sum)
    return torch.empty_like(flat)


def _setup_context(ctx, inputs, output) -> None:
    (flat,) = inputs
    _, row_sum = output
    ctx.save_for_backward(flat, row_sum)
    # S is saved for the backward, not an output users differentiate through.
    ctx.mark_non_differentiable(row_sum)


def _backward(ctx, grad_out, _grad_row_sum):
    flat, row_sum = ctx.saved_tensors
    return _fm_interaction_backward_op(grad_out, flat, row_sum)


_fm_interaction_op.register_autograd(_backward, setup_context=_setup_context)


def fm_interaction(flat: Tensor) -> Tensor:
    """out_b = 1/2((sum_j x_bj)^2 - sum_j x_bj^2), i.e. sum_{j<k} x_bj x_bk over every scalar of the row.

    Shapes: flat (B, M) -> (B, 1), in flat's dtype. float32/float64 run natively (accumulating in that
    dtype); float16/bfloat16 are computed in float32 and the result cast back. CPU or CUDA by flat's device.
    Differentiable: the backward is the `recspec::fm_interaction_backward` kernel.
    """
    # Checked here too so that a non-tensor gets this module's TypeError, not the dispatcher's schema error.
    _check_flat(flat)
    return _fm_interaction_op(flat)[0]
