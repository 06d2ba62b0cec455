"""Position weights of a jagged feature: w_j = p[j - offsets[b]] for value j of bag b (its 0-based position in
the bag), PositionWeightedModule's per-value weights.

Shapes: offsets int64 [B + 1] (offsets[0] = 0, offsets[B] = num_values), p [L] -> w [num_values] in p's dtype.
Backward: dp[l] = sum over the bags b with a value at position l of g[offsets[b] + l], bags in order.

Layers: kernels (CPU @njit; CUDA numba.cuda.jit), launchers (a position >= L is an IndexError raised before any
kernel runs), the torch binding `recspec::position_weighted` with its backward.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
from numba import prange
from torch import Tensor

from accel.kernels import _device, _jagged

# Bound by _cuda_kernels() on the first CUDA launch (the simulator swaps `cuda` for its fake module).
cuda = None
_block_sum = None

# Flat CUDA grid over the values: 256 threads a block, at most 4096 blocks (grid-stride beyond).
_FLAT_THREADS = 256
_FLAT_MAX_BLOCKS = 4096


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@_device.cpu_jit(parallel=True)
def _position_forward_cpu(offsets, p, out, chunks):
    # Chunks of bags, one per thread; a bag's weights are p's first `length` entries.
    B = offsets.shape[0] - 1
    for c in prange(chunks):
        for b in range(B * c // chunks, B * (c + 1) // chunks):
            start = offsets[b]
            w = out[start:offsets[b + 1]]
            for j in range(w.shape[0]):
                w[j] = p[j]


@_device.cpu_jit()
def _position_backward_cpu(offsets, g, dp):
    # One thread, bags in order: each dp[l] adds its terms in bag order whatever the thread count, and the pass
    # is a read of g (bandwidth-bound, a millisecond for a million values).
    for b in range(offsets.shape[0] - 1):
        start = offsets[b]
        gb = g[start:offsets[b + 1]]
        for j in range(gb.shape[0]):
            dp[j] += gb[j]


def _position_forward_cuda(offsets, p, out):
    # One thread per value in a grid-stride loop; its bag by bisection of the offsets.
    B = offsets.shape[0] - 1
    for j in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        lo, hi = 0, B
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if offsets[mid] <= j:
                lo = mid
            else:
                hi = mid
        out[j] = p[j - offsets[lo]]


def _position_backward_cuda(offsets, g, dp):
    # One block per position l, threads strided over the bags; the block sum adds the partials in a fixed tree.
    buf = cuda.shared.array(_device.MAX_THREADS_PER_ROW, dp.dtype)
    position = cuda.blockIdx.x
    if position >= dp.shape[0]:
        return
    part = dp.dtype.type(0)
    for b in range(cuda.threadIdx.x, offsets.shape[0] - 1, cuda.blockDim.x):
        j = offsets[b] + position
        if j < offsets[b + 1]:
            part += g[j]
    total = _block_sum(buf, part)
    if cuda.threadIdx.x == 0:
        dp[position] = total


@functools.cache
def _cuda_kernels() -> SimpleNamespace:
    """Compile-on-first-use CUDA kernels (real device or simulator, per NUMBA_ENABLE_CUDASIM)."""
    global cuda, _block_sum
    cuda = _device.cuda_module()
    _block_sum = _device.cuda_block_sum()
    return SimpleNamespace(
        forward=cuda.jit(cache=True)(_position_forward_cuda),
        backward=cuda.jit(cache=True)(_position_backward_cuda),
    )


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def launch_cuda_forward(offsets, p, out, stream=0) -> None:
    """CUDA forward on Numba device arrays; requires out.size > 0."""
    kernels = _cuda_kernels()
    blocks = min(math.ceil(out.shape[0] / _FLAT_THREADS), _FLAT_MAX_BLOCKS)
    kernels.forward[blocks, _FLAT_THREADS, stream](offsets, p, out)


def launch_cuda_backward(offsets, g, dp, stream=0) -> None:
    """CUDA backward on Numba device arrays; requires dp.size > 0 and at least one bag."""
    kernels = _cuda_kernels()
    # Grid: one block per position; block: the next power of two covering the bag count (32 to 256).
    kernels.backward[dp.shape[0], _device.threads_per_row(offsets.shape[0] - 1), stream](offsets, g, dp)


def _check(offsets: Tensor, position_weight: Tensor, num_values: int) -> None:
    _jagged.check_index("offsets", offsets, None)
    _device.check_tensor("position_weight", position_weight)
    _device.check_ndim("position_weight", position_weight, 1, "(L,)")
    _device.check_same_device("position_weight", position_weight, "offsets", offsets)
    _device.check_launchable("offsets", offsets)
    _jagged.check_count("num_values", num_values)
    if offsets.shape[0] == 0:
        raise ValueError("offsets must have B + 1 >= 1 entries, got 0")


def _check_positions(offsets: Tensor, num_values: int, L: int) -> None:
    # Offsets as for one key (batch of B bags), then the longest bag against L.
    _jagged.check_offsets(offsets, offsets.shape[0] - 1, num_values)
    if offsets.shape[0] > 1:
        longest = int((offsets[1:] - offsets[:-1]).max())
        if longest > L:
            raise IndexError(f"position_weight: position {longest - 1} is out of range for {L} position weights "
                             f"(a bag of length {longest})")


def position_forward(offsets: Tensor, position_weight: Tensor, num_values: int) -> Tensor:
    """w [num_values] in position_weight's dtype (module docstring); no autograd."""
    _check(offsets, position_weight, num_values)
    L = position_weight.shape[0]
    _check_positions(offsets, num_values, L)
    p = position_weight.detach().contiguous()
    out = torch.empty(num_values, dtype=p.dtype, device=p.device)
    if num_values == 0:
        return out
    if _device.is_cuda(out):
        with _device.cuda_launch(out.device) as stream:
            launch_cuda_forward(*map(_device.as_numba_array, (offsets, p, out)), stream=stream)
    else:
        B = offsets.shape[0] - 1
        _position_forward_cpu(offsets.numpy(), _kernel_view(p), _kernel_view(out), _device.cpu_kernel_chunks(B))
    return out


def position_backward(grad: Tensor, offsets: Tensor, num_positions: int) -> Tensor:
    """dp [num_positions] in grad's dtype (module docstring); 16-bit gradients are summed in float32."""
    _jagged.check_index("offsets", offsets, None)
    _device.check_tensor("grad", grad)
    _device.check_same_device("grad", grad, "offsets", offsets)
    values = int(offsets[-1]) if offsets.shape[0] else 0
    if tuple(grad.shape) != (values,):
        raise ValueError(f"grad must have one entry per value ({values}), got shape {tuple(grad.shape)}")
    g = grad.detach().to(_device.kernel_dtype(grad.dtype)).contiguous()
    dp = torch.zeros(num_positions, dtype=g.dtype, device=g.device)
    if num_positions > 0 and offsets.shape[0] > 1 and g.numel() > 0:
        if _device.is_cuda(g):
            with _device.cuda_launch(g.device) as stream:
                launch_cuda_backward(*map(_device.as_numba_array, (offsets, g, dp)), stream=stream)
        else:
            _position_backward_cpu(offsets.numpy(), g.numpy(), dp.numpy())
    return dp.to(grad.dtype)


def _kernel_view(t: Tensor) -> np.ndarray:
    # 16-bit floats travel as uint16 bits: the forward only copies them.
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype in (torch.float16, torch.bfloat16) else t.numpy()


# ---------------------------------------------------------------------------------------------------------
# Torch binding
# ---------------------------------------------------------------------------------------------------------


@torch.library.custom_op("recspec::position_weighted", mutates_args=())
def _position_weighted_op(offsets: Tensor, position_weight: Tensor, num_values: int) -> Tensor:
    return position_forward(offsets, position_weight, num_values)


@_position_weighted_op.register_fake
def _(offsets, position_weight, num_values):
    _check(offsets, position_weight, num_values)
    return position_weight.new_empty(num_values)


@torch.library.custom_op("recspec::position_weighted_backward", mutates_args=())
def _position_weighted_backward_op(grad: Tensor, offsets: Tensor, num_positions: int) -> Tensor:
    return position_backward(grad, offsets, num_positions)


@_position_weighted_backward_op.register_fake
def _(grad, offsets, num_positions):
    return grad.new_empty(num_positions)


def _setup_context(ctx, inputs, output) -> None:
    offsets, position_weight, _ = inputs
    ctx.save_for_backward(offsets)
    ctx.num_positions = position_weight.shape[0]
    ctx.dtype = position_weight.dtype


def _backward(ctx, grad):
    (offsets,) = ctx.saved_tensors
    return None, _position_weighted_backward_op(grad.to(ctx.dtype), offsets, ctx.num_positions), None


_position_weighted_op.register_autograd(_backward, setup_context=_setup_context)


def position_weighted(offsets: Tensor, position_weight: Tensor, num_values: int) -> Tensor:
    """w_j = position_weight[j - offsets[b]] for value j of bag b (module docstring).

    Shapes: offsets int64 [B + 1], position_weight [L] -> [num_values] in position_weight's dtype. A bag longer
    than L raises IndexError naming the position and L. Differentiable w.r.t. position_weight.
    """
    # Checked here too so that bad arguments get this module's errors, not the dispatcher's schema errors.
    _check(offsets, position_weight, num_values)
    return _position_weighted_op(offsets, position_weight, num_values)
