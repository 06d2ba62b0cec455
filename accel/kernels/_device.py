"""Launch plumbing shared by accel's kernel families: where a tensor lives, zero-copy views, the CUDA stream,
and the CPU numerics (compile options, a vectorisable sigmoid, fixed-order row sums) the @njit kernels use.

Kernels run in float32 or float64; float16/bfloat16 inputs are upcast to float32 by the launchers and the
results cast back (`kernel_dtype`). `numba.cuda` is imported on the first CUDA launch only (`cuda_module`),
so CPU users never pay for it.

`simulated_cuda()` runs the CUDA launch path on a machine without a GPU: under Numba's simulator
(NUMBA_ENABLE_CUDASIM=1) and inside the `with` block, CPU tensors count as CUDA tensors (`is_cuda`) and are
handed to the CUDA kernels as zero-copy simulator arrays, so each launcher, kernel and torch binding runs as it
would on a device, with the kernels' writes landing in the torch tensors.
"""

from __future__ import annotations

import contextvars
import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import numba
import numpy as np
import torch
from numba import njit, types
from numba.core.extending import overload

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Half-precision inputs run through the float32 kernel: Numba has no bfloat16 arithmetic on the CPU, and
# float32 accumulation is what torch's own half-precision reductions use.
_UPCAST = {torch.float16: torch.float32, torch.bfloat16: torch.float32}

# Row kernels on CUDA: one thread block per row, threads strided over the row. 256 threads (8 warps) keep
# enough loads in flight on a long row; the block-reduction buffer is sized for that maximum at compile time.
MAX_THREADS_PER_ROW = 256
# One warp: fewer threads would leave lanes of the warp idle anyway.
MIN_THREADS_PER_ROW = 32

# numba.cuda once cuda_module() has run. Device functions below read it as a module global because the
# simulator swaps exactly such globals for its per-thread fake module while a kernel runs.
cuda = None


@dataclass
class SimulatedLaunches:
    """What a `simulated_cuda()` block launched: `count` CUDA launch contexts entered (`cuda_launch`)."""

    count: int = 0


# The open simulated_cuda() block of this thread (and of tasks started from it), or None. A context variable
# rather than a module flag: another thread's CPU kernels are never rerouted by it.
_SIMULATED: contextvars.ContextVar[Optional[SimulatedLaunches]] = contextvars.ContextVar(
    "recspec_simulated_cuda", default=None)


@contextmanager
def simulated_cuda() -> Iterator[SimulatedLaunches]:
    """Within the block, CPU tensors take the CUDA launch path on Numba's simulator; yields the launch count.

    RuntimeError unless the simulator is on (NUMBA_ENABLE_CUDASIM=1 before numba is imported): without it the
    path would need a real device. Blocks nest, an inner block's launches counting in the outer one too.
    autograd runs the backward of CPU tensors on the calling thread, so a backward called inside the block is
    simulated as well.
    """
    if not numba.config.ENABLE_CUDASIM:
        raise RuntimeError("simulated_cuda() needs Numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 before "
                           "numba is imported, got NUMBA_ENABLE_CUDASIM unset or 0")
    outer = _SIMULATED.get()
    launches = SimulatedLaunches()
    token = _SIMULATED.set(launches)
    try:
        yield launches
    finally:
        _SIMULATED.reset(token)
        if outer is not None:
            outer.count += launches.count


def simulating() -> bool:
    """True inside a simulated_cuda() block."""
    return _SIMULATED.get() is not None


def is_cuda_device(device: torch.device) -> bool:
    """True when kernels for tensors on `device` launch through numba.cuda: a CUDA device, or the CPU inside
    a simulated_cuda() block."""
    return device.type == "cuda" or (device.type == "cpu" and simulating())


def is_cuda(t: torch.Tensor) -> bool:
    """True when t's kernel launch goes through numba.cuda (see is_cuda_device)."""
    return is_cuda_device(t.device)


def cuda_backend() -> str:
    """"simulator" when Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1), "device" otherwise."""
    return "simulator" if numba.config.ENABLE_CUDASIM else "device"


@functools.cache
def cuda_module():
    """numba.cuda, imported on first use and bound to this module's global `cuda`."""
    global cuda
    from numba import cuda as numba_cuda

    cuda = numba_cuda
    return numba_cuda


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for float16/bfloat16, the dtype itself otherwise."""
    return _UPCAST.get(dtype, dtype)


def as_numba_array(t: torch.Tensor):
    """Zero-copy Numba view of a contiguous tensor: a NumPy array on CPU, a device array on CUDA, a simulator
    array over the tensor's memory on the CPU inside simulated_cuda()."""
    if t.device.type == "cuda":
        # No sync on the array's stream: kernels are queued on torch's current stream (torch_stream), which
        # already orders them after whatever produced t.
        return cuda_module().as_cuda_array(t.detach(), sync=False)
    if simulating():
        # The simulator would copy a plain NumPy argument in and back out around each launch; its own array
        # type wraps the view itself, so kernels read and write the tensor's memory directly.
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(t.detach().numpy())
    return t.detach().numpy()


def torch_stream(device: torch.device):
    """torch's current stream on `device`, as a Numba stream, so kernels queue behind torch's own work."""
    numba_cuda = cuda_module()
    handle = torch.cuda.current_stream(device).cuda_stream
    # Handle 0 is the legacy default stream; Numba names it separately from external streams.
    return numba_cuda.external_stream(handle) if handle else numba_cuda.legacy_default_stream()


@contextmanager
def cuda_launch(device: torch.device) -> Iterator[object]:
    """Make `device` Numba's current GPU and yield torch's current stream there for the launch (inside
    simulated_cuda() with a CPU device: the simulator's one GPU and stream 0, counted in the block's launches)."""
    numba_cuda = cuda_module()
    launches = _SIMULATED.get()
    if device.type == "cpu" and launches is not None:
        launches.count += 1
        # The simulator runs every launch synchronously and ignores the stream argument.
        with numba_cuda.gpus[0]:
            yield 0
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    with numba_cuda.gpus[index]:
        yield torch_stream(device)


def grad_rows(grad: torch.Tensor, row_dims: int, dtype: torch.dtype) -> torch.Tensor:
    """grad as contiguous kernel rows (R, C) over its trailing `row_dims` dimensions, or as the one row
    (1, C) that every row repeats when grad is broadcast along the leading dimensions (all their strides 0,
    as `out.sum().backward()` gives): the CPU kernels then read row 0 for every row, and nothing is
    materialised R times."""
    lead = grad.dim() - row_dims
    if lead > 0 and grad.numel() > 0 and all(grad.stride(i) == 0 for i in range(lead)):
        grad = grad[(0,) * lead].unsqueeze(0)
        lead = 1
    rows, columns = math.prod(grad.shape[:lead]), math.prod(grad.shape[lead:])
    return grad.detach().to(dtype).contiguous().view(rows, columns)


def threads_per_row(row_length: int) -> int:
    """Block size for a one-block-per-row kernel: the next power of two >= row_length, in [32, 256]."""
    threads = MIN_THREADS_PER_ROW
    while threads < row_length and threads < MAX_THREADS_PER_ROW:
        threads *= 2
    return threads


def _block_sum(buf, value):
    # Tree reduction over the block; blockDim.x is a power of two and buf holds at least blockDim.x entries.
    tid = cuda.threadIdx.x
    buf[tid] = value
    # Every thread's partial must be in shared memory before any thread reads its partner's.
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        # This level's sums must be complete before the next level reads them.
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    # All threads must have read the total before a later call overwrites buf.
    cuda.syncthreads()
    return total


@functools.cache
def cuda_block_sum():
    """Device function block_sum(buf, value) -> sum of `value` over the thread block (every thread gets it).

    Kernels that call it are cached on disk keyed by their own file: after editing `_block_sum`, clear
    accel/kernels/__pycache__ so they recompile.
    """
    return cuda_module().jit(device=True, cache=True)(_block_sum)


def check_tensor(name: str, t: object) -> None:
    """TypeError unless t is a tensor of a floating dtype the kernels accept."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {t.dtype}"
        )


def check_ndim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    """ValueError unless t has `ndim` dimensions; `layout` names them, e.g. "(B, N)"."""
    if t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor {layout}, got shape {tuple(t.shape)}")


def check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """ValueError unless t is on ref's device."""
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def check_same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """TypeError unless t has ref's dtype."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {t.dtype}")


def check_launchable(name: str, t: torch.Tensor) -> None:
    """ValueError unless t is on a device with a kernel (cpu or cuda)."""
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a cpu or cuda device, got {t.device}")


# ---------------------------------------------------------------------------------------------------------
# CPU numerics
# ---------------------------------------------------------------------------------------------------------

# Options of every CPU kernel and helper. fastmath allows FMA contraction, a reciprocal for a division and
# ignoring the sign of zero, but never "reassoc": LLVM then keeps each sum in the order the code writes it, so results are bitwise the same
# run to run (the row sums below get their vector width from a fixed lane order instead; per-row results
# do not even depend on the thread count, column sums over rows add one partial per thread in a fixed
# order). error_model="numpy" makes x / 0 give inf or nan instead of raising: the ZeroDivisionError branch
# of the default model keeps LLVM from vectorising any loop that divides.
CPU_FASTMATH = {"nsz": True, "arcp": True, "contract": True}
CPU_ERROR_MODEL = "numpy"

# Lanes of the fixed-order row sums: 256 partial sums (1 KiB of float32 scratch, in L1) give the vectoriser
# long inner loops; rows shorter than that use the widest power of two that fits.
CPU_SUM_LANES = 256
# The fewest lanes: rows shorter than this are added left to right, and the fold's last 16 lanes are added
# by straight-line code.
_LAST_LANES = 16


def cpu_jit(**options):
    """numba.njit with the CPU kernels' options (disk cache, CPU_FASTMATH, CPU_ERROR_MODEL) plus `options`.

    No disk cache under NUMBA_BOUNDSCHECK=1: Numba's cache key leaves the flag out, so a bounds-checked build
    would be loaded by every later run (several times slower: the checks stop vectorisation), and a checked
    run would load unchecked code from an earlier run.
    """
    return njit(cache=not numba.config.BOUNDSCHECK, fastmath=dict(CPU_FASTMATH), error_model=CPU_ERROR_MODEL,
                **options)


def cpu_helper():
    """cpu_jit for the row sums: inlined into the calling kernel by Numba itself. LLVM inlines the small
    scalar helpers (the sigmoid) on its own but not these, and an outlined call taking arrays costs an atomic
    reference-count increment and decrement per array argument, several times per row (inlined, the kernels
    measured 10-20% faster).

    Numba's disk cache keys a kernel by its own file only: after editing a helper here, clear
    accel/kernels/__pycache__ so that the kernels in the other files recompile against it.
    """
    return cpu_jit(inline="always")


def cpu_kernel_chunks(rows: int) -> int:
    """Chunks of rows for a CPU kernel: one per Numba thread, so each chunk's scratch and partial row are
    allocated and zeroed once per call, by the thread that uses them. Passed to the kernels as an argument:
    numba.get_num_threads() inside a kernel would make it uncacheable."""
    return min(rows, numba.get_num_threads())


def sigmoid_vec(z):
    """sigmoid(z) = 1 / (1 + e^-z). Jitted code gets a branch-free float32 version LLVM can vectorise (Numba
    has no vector exp without SVML, which pip's llvmlite lacks); float64 uses libm's exp."""
    # Plain Python raises on exp overflow: evaluate on the side where it cannot overflow.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _sigmoid_float32(z):
    # e^t, t = -z clamped to [lo, hi], by Cody-Waite reduction t = n ln2 + r, |r| <= ln2 / 2 (ln2 split in a
    # part exact in float32 and a correction), and e^r by the degree-7 minimax polynomial of Cephes' expf;
    # 2^n from exponent bits. Relative error of the result below 2e-7.
    f32 = np.float32
    hi = f32(88.37626)  # n <= 127, the largest float32 exponent: sigmoid(-hi) = 4e-39, sigmoid(z < -hi) less
    lo = f32(-87.33654)  # e^lo = FLT_MIN: sigmoid(z > -lo) rounds to 1
    # Written so that nan fails both comparisons and flows through to the result.
    t = -z
    t = hi if t > hi else t
    t = lo if t < lo else t
    n = np.floor(t * f32(1.4426950408889634) + f32(0.5))
    r = t - n * f32(0.693359375) + n * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    e = (p * r * r + r + f32(1)) * np.int32((np.int32(n) + 127) << 23).view(np.float32)
    return f32(1) / (f32(1) + e)


@overload(sigmoid_vec, jit_options={"fastmath": dict(CPU_FASTMATH), "error_model": CPU_ERROR_MODEL})
def _sigmoid_vec_jit(z):
    if isinstance(z, types.Float) and z.bitwidth == 32:
        return _sigmoid_float32
    if isinstance(z, types.Float):
        # IEEE makes the plain form safe: e^-z overflows to inf for z << 0 and the quotient is 0.
        return lambda z: 1.0 / (1.0 + math.exp(-z))
    return None


@cpu_helper()
def _lanes(n, capacity):
    # Power-of-two lane count: capacity, halved while it exceeds n (never below _LAST_LANES).
    w = capacity
    while w > n and w > _LAST_LANES:
        w //= 2
    return w


@cpu_helper()
def _fold(acc, w):
    # Pairwise halving of acc[:w] (w a power of two >= 16), k + h into k for h = w/2, ..., 1: vector loops down
    # to 16 lanes, then the last four levels written out as scalar adds (a loop that short runs scalar).
    h = w // 2
    while h >= _LAST_LANES:
        upper = acc[h:2 * h]
        for k in range(h):
            acc[k] += upper[k]
        h //= 2
    a0, a1, a2, a3 = acc[0] + acc[8], acc[1] + acc[9], acc[2] + acc[10], acc[3] + acc[11]
    a4, a5, a6, a7 = acc[4] + acc[12], acc[5] + acc[13], acc[6] + acc[14], acc[7] + acc[15]
    return ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))


@cpu_helper()
def row_sum(a, acc):
    """sum_j a_j in a fixed order: lane k of w adds a_k, a_{k+w}, a_{k+2w}, ... (then the n mod w tail
    a_{qw+k}); the lanes are then folded pairwise, k + h into k for h = w/2, w/4, ..., 1.

    Shapes: a (n,), acc (>= 16,) scratch of a's dtype, w = _lanes(n, acc.size). Rows shorter than 16 are
    added left to right. The order is fixed by n alone, so the result is reproducible bit for bit.
    """
    n = a.shape[0]
    w = _lanes(n, acc.shape[0])
    total = a.dtype.type(0)
    if n < w:
        for j in range(n):
            total += a[j]
        return total
    # Slices rather than a[base + k]: a computed index may be negative as far as Numba knows, and the
    # wrap-around select it adds turns the loads into gathers.
    first = a[:w]
    for k in range(w):
        acc[k] = first[k]
    blocks = n // w
    for b in range(1, blocks):
        block = a[b * w:(b + 1) * w]
        for k in range(w):
            acc[k] += block[k]
    tail = a[blocks * w:]
    for k in range(tail.shape[0]):
        acc[k] += tail[k]
    return _fold(acc, w)


@cpu_helper()
def row_dot(a, b, acc):
    """sum_j a_j b_j in row_sum's fixed order (each term a_j b_j, fused into the add where the CPU has FMA).

    Shapes: a, b (n,), acc (>= 16,) scratch of a's dtype.
    """
    n = a.shape[0]
    w = _lanes(n, acc.shape[0])
    total = a.dtype.type(0)
    if n < w:
        for j in range(n):
            total += a[j] * b[j]
        return total
    first_a, first_b = a[:w], b[:w]
    for k in range(w):
        acc[k] = first_a[k] * first_b[k]
    blocks = n // w
    for i in range(1, blocks):
        block_a, block_b = a[i * w:(i + 1) * w], b[i * w:(i + 1) * w]
        for k in range(w):
            acc[k] += block_a[k] * block_b[k]
    tail_a, tail_b = a[blocks * w:], b[blocks * w:]
    for k in range(tail_a.shape[0]):
        acc[k] += tail_a[k] * tail_b[k]
    return _fold(acc, w)

