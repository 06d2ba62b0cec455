"""Fused VectorCrossNet layer: x_{l+1} = x_0 * (x_l . w)[:, None] + b + x_l (bias outside the product).

This is TorchRec's code form, not the documentation's x_0 * (x_l . w + b) + x_l. Backward, with
s_b = x_l,b . w and ds_b = sum_n g_bn x_0,bn:
    dx_0 = g s,   dx_l = g + ds w,   dw = sum_b ds_b x_l,b,   db = sum_b g_b.

Three layers, in this order: kernels (CPU @njit over rows, CUDA numba.cuda.jit), launchers and the torch
binding (`recspec::vector_cross_layer`). The forward returns s per row, which the backward reuses for dx_0
instead of recomputing the dot product. When x_0 and x_l are one tensor (VectorCrossNet's first layer) the
backward returns dx_0 + dx_l as one gradient (`recspec::vector_cross_first_layer_backward`).
"""

from __future__ import annotations

import functools
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
# busy); each owns one row of the (blocks, N) partial buffers, so stage two sums at most 512 x N numbers.
_MAX_PARTIAL_BLOCKS = 512


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _vc_output(x0, s, b, xl):
    """x_{l+1} = x_0 s + b + x_l, summed in TorchRec's order."""
    return x0 * s + b + xl


@njit(cache=True)
def _vc_input_grads(g, s, ds, w):
    """(dx_0, dx_l) = (g s, g + ds w)."""
    return g * s, g + ds * w


@_device.cpu_jit(parallel=True)
def _vc_forward_cpu(x0, xl, w, b, out, dot, chunks):
    # Chunks of rows, one per thread, each with the lanes of the fixed-order dot product as scratch. Per row
    # s = x_l . w, then the output sweep over x_l (still in L1) and x_0: each input is read from memory once.
    rows, features = x0.shape
    for c in prange(chunks):
        acc = np.empty(_device.CPU_SUM_LANES, x0.dtype)
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            x0_r, xl_r, out_r = x0[r], xl[r], out[r]
            s = _device.row_dot(xl_r, w, acc)
            for n in range(features):
                out_r[n] = _vc_output(x0_r[n], s, b[n], xl_r[n])
            dot[r] = s


@_device.cpu_jit(parallel=True)
def _vc_backward_cpu(g, x0, xl, w, dot, dx0, dxl, dw, db, chunks):
    # Per row ds = g . x_0 in a fixed order, then one sweep writes dx_0 and dx_l and adds into chunk c's own
    # partial rows of dw and db (no sharing between threads) while g and x_0 are still in L1. The partials
    # are then added in chunk order, so dw and db do not depend on which thread ran which chunk.
    rows, features = x0.shape
    partial = np.empty((chunks, 2, features), x0.dtype)
    for c in prange(chunks):
        acc = np.empty(_device.CPU_SUM_LANES, x0.dtype)
        dw_c, db_c = partial[c, 0], partial[c, 1]
        for n in range(features):
            dw_c[n] = 0
            db_c[n] = 0
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            # g holds one row when the gradient is broadcast along the rows (_device.grad_rows).
            g_r, xl_r, dx0_r, dxl_r = g[r if g.shape[0] > 1 else 0], xl[r], dx0[r], dxl[r]
            ds = _device.row_dot(g_r, x0[r], acc)
            s = dot[r]
            for n in range(features):
                dx0_r[n], dxl_r[n] = _vc_input_grads(g_r[n], s, ds, w[n])
                dw_c[n] += ds * xl_r[n]
                db_c[n] += g_r[n]
    # Explicit loops: an array expression here would be one more parallel region.
    for n in range(features):
        dw[n] = partial[0, 0, n]
        db[n] = partial[0, 1, n]
    for c in range(1, chunks):
        dw_c, db_c = partial[c, 0], partial[c, 1]
        for n in range(features):
            dw[n] += dw_c[n]
            db[n] += db_c[n]


@_device.cpu_jit(parallel=True)
def _vc_first_backward_cpu(g, x, w, dot, dx, dw, db, chunks):
    # The first layer, x_l = x_0 = x: dx = dx_0 + dx_l written in one sweep, where autograd would add two
    # (B, N) gradients. Otherwise _vc_backward_cpu's structure with x as both inputs (g may be one row).
    rows, features = x.shape
    partial = np.empty((chunks, 2, features), x.dtype)
    for c in prange(chunks):
        acc = np.empty(_device.CPU_SUM_LANES, x.dtype)
        dw_c, db_c = partial[c, 0], partial[c, 1]
        for n in range(features):
            dw_c[n] = 0
            db_c[n] = 0
        for r in range(c * rows // chunks, (c + 1) * rows // chunks):
            g_r, x_r, dx_r = g[r if g.shape[0] > 1 else 0], x[r], dx[r]
            ds = _device.row_dot(g_r, x_r, acc)
            s = dot[r]
            for n in range(features):
                dx0_n, dxl_n = _vc_input_grads(g_r[n], s, ds, w[n])
                dx_r[n] = dx0_n + dxl_n
                dw_c[n] += ds * x_r[n]
                db_c[n] += g_r[n]
    for n in range(features):
        dw[n] = partial[0, 0, n]
        db[n] = partial[0, 1, n]
    for c in range(1, chunks):
        dw_c, db_c = partial[c, 0], partial[c, 1]
        for n in range(features):
            dw[n] += dw_c[n]
            db[n] += db_c[n]


def _vc_forward_cuda(x0, xl, w, b, out, dot):
    # One thread block per row, threads strided over the row's N features: a block reduction for s, then
    # every thread writes its features of the output.
    buf = cuda.shared.array(MAX_THREADS_PER_ROW, x0.dtype)
    r = cuda.blockIdx.x
    if r >= x0.shape[0]:
        return
    tid = cuda.threadIdx.x
    s = x0.dtype.type(0)
    for n in range(tid, x0.shape[1], cuda.blockDim.x):
        s += xl[r, n] * w[n]
    s = _block_sum(buf, s)
    for n in range(tid, x0.shape[1], cuda.blockDim.x):
        out[r, n] = _vc_output(x0[r, n], s, b[n], xl[r, n])
    if tid == 0:
        dot[r] = s


def _vc_backward_cuda(g, x0, xl, w, dot, dx0, dxl, dw_part, db_part):
    # Stage one of a two-stage column reduction: block k takes rows k, k + G, k + 2G, ... (G = gridDim.x),
    # threads strided over the N features. Thread t alone touches columns t, t + blockDim, ... of row k of
    # the zeroed partial buffers, so its += needs no atomics; the launcher sums the G partial rows (stage
    # two). Chosen over atomics for run-to-run identical dw/db and no contention on N addresses.
    buf = cuda.shared.array(MAX_THREADS_PER_ROW, x0.dtype)
    k = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    for r in range(k, x0.shape[0], cuda.gridDim.x):
        ds = x0.dtype.type(0)
        for n in range(tid, x0.shape[1], step):
            ds += g[r, n] * x0[r, n]
        ds = _block_sum(buf, ds)
        s = dot[r]
        for n in range(tid, x0.shape[1], step):
            dx0[r, n], dxl[r, n] = _vc_input_grads(g[r, n], s, ds, w[n])
            dw_part[k, n] += ds * xl[r, n]
            db_part[k, n] += g[r, n]


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _block_sum
    cuda = _device.cuda_module()
    _block_sum = _device.cuda_block_sum()
    return SimpleNamespace(
        forward=cuda.jit(cache=True)(_vc_forward_cuda),
        backward=cuda.jit(cache=True)(_vc_backward_cuda),
    )


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def cuda_partial_blocks(rows: int) -> int:
    """Blocks of the CUDA backward, i.e. rows of its (blocks, N) partial buffers."""
    return min(rows, _MAX_PARTIAL_BLOCKS)


def _launch_cuda_forward(x0, xl, w, b, out, dot, stream=0) -> None:
    """CUDA forward on Numba device arrays: x0, xl (B, N), w, b (N,) -> out (B, N), dot (B,); B, N > 0."""
    kernels = _cuda_kernels()
    # Grid: one block per row; block: the next power of two covering the row (see threads_per_row).
    kernels.forward[x0.shape[0], _device.threads_per_row(x0.shape[1]), stream](x0, xl, w, b, out, dot)


def _launch_cuda_backward(g, x0, xl, w, dot, dx0, dxl, dw_part, db_part, stream=0) -> None:
    """Stage one of the CUDA backward on Numba device arrays; B, N > 0.

    dw_part and db_part are zeroed (cuda_partial_blocks(B), N) buffers; their column sums are dw and db.
    """
    kernels = _cuda_kernels()
    blocks = dw_part.shape[0]
    threads = _device.threads_per_row(x0.shape[1])
    kernels.backward[blocks, threads, stream](g, x0, xl, w, dot, dx0, dxl, dw_part, db_part)


def _check_inputs(x0: Tensor, xl: Tensor, w: Tensor, b: Tensor) -> None:
    for name, t in (("x0", x0), ("xl", xl), ("w", w), ("b", b)):
        _device.check_tensor(name, t)
    _device.check_ndim("x0", x0, 2, "(B, N)")
    if xl.shape != x0.shape:
        raise ValueError(f"xl must have x0's shape {tuple(x0.shape)}, got {tuple(xl.shape)}")
    features = x0.shape[1]
    for name, t in (("w", w), ("b", b)):
        if tuple(t.shape) != (features,):
            raise ValueError(f"{name} must have shape (N,) = ({features},), got {tuple(t.shape)}")
    for name, t in (("xl", xl), ("w", w), ("b", b)):
        _device.check_same_device(name, t, "x0", x0)
        _device.check_same_dtype(name, t, "x0", x0)


def _check_backward(grad: Tensor, x0: Tensor, xl: Tensor, w: Tensor, b: Tensor, dot: Tensor) -> None:
    _check_inputs(x0, xl, w, b)
    _device.check_tensor("grad", grad)
    _device.check_tensor("dot", dot)
    if grad.shape != x0.shape:
        raise ValueError(f"grad must have x0's shape {tuple(x0.shape)}, got {tuple(grad.shape)}")
    if tuple(dot.shape) != (x0.shape[0],):
        raise ValueError(f"dot must have shape (B,) = ({x0.shape[0]},), got {tuple(dot.shape)}")
    _device.check_same_device("grad", grad, "x0", x0)
    _device.check_same_device("dot", dot, "x0", x0)


def _prepare(dtype: torch.dtype, *tensors: Tensor):
    return [t.detach().to(dtype).contiguous() for t in tensors]


def vector_cross_forward(x0: Tensor, xl: Tensor, w: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """x_{l+1} = x_0 (x_l . w) + b + x_l, plus s = x_l . w per row for the backward.

    Shapes: x0, xl (B, N), w, b (N,) -> out (B, N) in x0's dtype, s (B,) in the kernel dtype.
    """
    _check_inputs(x0, xl, w, b)
    _device.check_launchable("x0", x0)
    dtype = _device.kernel_dtype(x0.dtype)
    x0_k, xl_k, w_k, b_k = _prepare(dtype, x0, xl, w, b)
    out = torch.empty_like(x0_k)
    # An empty row (N = 0) has s = 0, which the zeros already hold; no launch for an empty tensor.
    dot = torch.zeros((x0.shape[0],), dtype=dtype, device=x0.device)
    if x0.numel() > 0:
        tensors = (x0_k, xl_k, w_k, b_k, out, dot)
        if _device.is_cuda(x0):
            with _device.cuda_launch(x0.device) as stream:
                _launch_cuda_forward(*map(_device.as_numba_array, tensors), stream=stream)
        else:
            _vc_forward_cpu(*(t.numpy() for t in tensors), _device.cpu_kernel_chunks(x0.shape[0]))
    return out.to(x0.dtype), dot


def vector_cross_backward(
    grad: Tensor, x0: Tensor, xl: Tensor, w: Tensor, b: Tensor, dot: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx_0, dx_l, dw, db) = (g s, g + ds w, sum_b ds_b x_l,b, sum_b g_b), ds_b = sum_n g_bn x_0,bn.

    Shapes: grad, x0, xl (B, N); w, b (N,); dot (B,) -> dx0, dxl (B, N), dw, db (N,), in x0's dtype.
    """
    _check_backward(grad, x0, xl, w, b, dot)
    _device.check_launchable("x0", x0)
    dtype = _device.kernel_dtype(x0.dtype)
    x0_k, xl_k, w_k, dot_k = _prepare(dtype, x0, xl, w, dot)
    rows, features = x0_k.shape
    dx0 = torch.empty_like(x0_k)
    dxl = torch.empty_like(x0_k)
    if _device.is_cuda(x0):
        (g_k,) = _prepare(dtype, grad)
        # Stage one adds into per-block partial rows, zeroed here; stage two sums them over blocks.
        partial_rows = cuda_partial_blocks(rows)
        dw_part = torch.zeros((partial_rows, features), dtype=dtype, device=x0.device)
        db_part = torch.zeros((partial_rows, features), dtype=dtype, device=x0.device)
        if x0.numel() > 0:
            tensors = (g_k, x0_k, xl_k, w_k, dot_k, dx0, dxl, dw_part, db_part)
            with _device.cuda_launch(x0.device) as stream:
                _launch_cuda_backward(*map(_device.as_numba_array, tensors), stream=stream)
        dw, db = dw_part.sum(0), db_part.sum(0)
    else:
        g_k = _device.grad_rows(grad, 1, dtype)
        dw = torch.zeros((features,), dtype=dtype)
        db = torch.zeros((features,), dtype=dtype)
        if x0.numel() > 0:
            tensors = (g_k, x0_k, xl_k, w_k, dot_k, dx0, dxl, dw, db)
            _vc_backward_cpu(*(t.numpy() for t in tensors), _device.cpu_kernel_chunks(rows))
    return tuple(t.to(x0.dtype) for t in (dx0, dxl, dw, db))


def vector_cross_first_backward(
    grad: Tensor, x0: Tensor, w: Tensor, b: Tensor, dot: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx_0, dw, db) of the first layer x_1 = x_0 (x_0 . w) + b + x_0, where x_l is x_0 itself: the gradient
    is dx_0 + dx_l = g s + g + ds w, and dw, db are vector_cross_backward's.

    Shapes: grad, x0 (B, N); w, b (N,); dot (B,) -> dx0 (B, N), dw, db (N,), in x0's dtype.
    """
    _check_backward(grad, x0, x0, w, b, dot)
    _device.check_launchable("x0", x0)
    if _device.is_cuda(x0):
        # The CUDA kernel writes the two gradients; their sum is one more elementwise pass.
        dx0, dxl, dw, db = vector_cross_backward(grad, x0, x0, w, b, dot)
        return dx0 + dxl, dw, db
    dtype = _device.kernel_dtype(x0.dtype)
    x0_k, w_k, dot_k = _prepare(dtype, x0, w, dot)
    rows, features = x0_k.shape
    g_k = _device.grad_rows(grad, 1, dtype)
    dx0 = torch.empty_like(x0_k)
    dw = torch.zeros((features,), dtype=dtype)
    db = torch.zeros((features,), dtype=dtype)
    if x0.numel() > 0:
        tensors = (g_k, x0_k, w_k, dot_k, dx0, dw, db)
        _vc_first_backward_cpu(*(t.numpy() for t in tensors), _device.cpu_kernel_chunks(rows))
    return tuple(t.to(x0.dtype) for t in (dx0, dw, db))


# ---------------------------------------------------------------------------------------------------------
# Torch binding
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("recspec::vector_cross_layer", mutates_args=())
def _vector_cross_op(x0: Tensor, xl: Tensor, w: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    return vector_cross_forward(x0, xl, w, b)


@_vector_cross_op.register_fake
def _(x0: Tensor, xl: Tensor, w: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    _check_inputs(x0, xl, w, b)
    return torch.empty_like(x0), x0.new_empty((x0.shape[0],), dtype=_device.kernel_dtype(x0.dtype))


@torch.library.custom_op("recspec::vector_cross_layer_backward", mutates_args=())
def _vector_cross_backward_op(
    grad: Tensor, x0: Tensor, xl: Tensor, w: Tensor, b: Tensor, dot: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return vector_cross_backward(grad, x0, xl, w, b, dot)


@_vector_cross_backward_op.register_fake
def _(grad: Tensor, x0: Tensor, xl: Tensor, w: Tensor, b: Tensor, dot: Tensor):
    _check_backward(grad, x0, xl, w, b, dot)
    return torch.empty_like(x0), torch.empty_like(x0), torch.empty_like(w), torch.empty_like(b)


@torch.library.custom_op("recspec::vector_cross_first_layer_backward", mutates_args=())
def _vector_cross_first_backward_op(
    grad: Tensor, x0: Tensor, w: Tensor, b: Tensor, dot: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    return vector_cross_first_backward(grad, x0, w, b, dot)


@_vector_cross_first_backward_op.register_fake
def _(grad: Tensor, x0: Tensor, w: Tensor, b: Tensor, dot: Tensor):
    _check_backward(grad, x0, x0, w, b, dot)
    return torch.empty_like(x0), torch.empty_like(w), torch.empty_like(b)


def _setup_context(ctx, inputs, output) -> None:
    x0, xl, w, b = inputs
    _, dot = output
    # The same tensor as x_0 and x_l (VectorCrossNet's first layer): one gradient for both, see _backward.
    ctx.first_layer = x0 is xl
    ctx.save_for_backward(x0, xl, w, b, dot)
    # s is saved for the backward, not an output users differentiate through.
    ctx.mark_non_differentiable(dot)


def _backward(ctx, grad_out, _grad_dot):
    x0, xl, w, b, dot = ctx.saved_tensors
    if ctx.first_layer:
        # dx_0 + dx_l as one tensor on the x_0 edge and nothing on the x_l edge: autograd adds the two edges
        # into the same tensor anyway, and this saves writing a second (B, N) gradient and that addition.
        dx, dw, db = _vector_cross_first_backward_op(grad_out, x0, w, b, dot)
        return dx, None, dw, db
    return _vector_cross_backward_op(grad_out, x0, xl, w, b, dot)


_vector_cross_op.register_autograd(_backward, setup_context=_setup_context)


def vector_cross_layer(x0: Tensor, xl: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x_{l+1} = x_0 * (x_l . w)[:, None] + b + x_l: one VectorCrossNet layer in TorchRec's code form.

    Shapes: x0, xl (B, N); w, b (N,) (a TorchRec kernel or bias of shape (N, 1) viewed as (N,)) -> (B, N).
    All four share one dtype and device. float32/float64 run natively, accumulating in that dtype;
    float16/bfloat16 are computed in float32 and the result cast back. Differentiable in every argument
    through the `recspec::vector_cross_layer_backward` kernel, or `recspec::vector_cross_first_layer_backward`
    when x0 and xl are the same tensor.
    """
    # Checked here too so that a non-tensor gets this module's TypeError, not the dispatcher's schema error.
    _check_inputs(x0, xl, w, b)
    return _vector_cross_op(x0, xl, w, b)[0]
