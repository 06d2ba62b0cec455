"""Launch plumbing shared by accel's kernel families: where a tensor lives, zero-copy views, the CUDA stream.

Kernels run in float32 or float64; float16/bfloat16 inputs are upcast to float32 by the launchers and the
results cast back (`kernel_dtype`). `numba.cuda` is imported on the first CUDA launch only (`cuda_module`),
so CPU users never pay for it.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import numba
import torch

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


def is_cuda(t: torch.Tensor) -> bool:
    """True when t lives on a CUDA device (the kernel launch goes through numba.cuda)."""
    return t.device.type == "cuda"


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
    """Zero-copy Numba view of a contiguous tensor: a NumPy array on CPU, a device array on CUDA."""
    if is_cuda(t):
        # No sync on the array's stream: kernels are queued on torch's current stream (torch_stream), which
        # already orders them after whatever produced t.
        return cuda_module().as_cuda_array(t.detach(), sync=False)
    return t.detach().numpy()


def torch_stream(device: torch.device):
    """torch's current stream on `device`, as a Numba stream, so kernels queue behind torch's own work."""
    numba_cuda = cuda_module()
    handle = torch.cuda.current_stream(device).cuda_stream
    # Handle 0 is the legacy default stream; Numba names it separately from external streams.
    return numba_cuda.external_stream(handle) if handle else numba_cuda.legacy_default_stream()


@contextmanager
def cuda_launch(device: torch.device) -> Iterator[object]:
    """Make `device` Numba's current GPU and yield torch's current stream there for the launch."""
    numba_cuda = cuda_module()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with numba_cuda.gpus[index]:
        yield torch_stream(device)


def threads_per_row(row_length: int) -> int:
    """Block size for a one-block-per-row kernel: the next power of two >= row_length, in [32, 256]."""
    threads = MIN_THREADS_PER_ROW
    while threads < row_length and threads < MAX_THREADS_PER_ROW:
        threads *= 2
    return threads


def cpu_row_chunks(rows: int) -> int:
    """Chunks of rows for a CPU column reduction: one per Numba thread, each owning one partial row."""
    return min(rows, numba.get_num_threads())


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
