"""Shared pieces of the embedding kernels: how a list of tables reaches a kernel, 16-bit rows, prefetch, the
split of (slot, bag) work over threads, and the launchers' checks.

Tables reach a kernel as two tuples of 2-D arrays indexed at run time, `wide` (float32, or float64 for the
float64 tables gradcheck uses) and `half` (float16 and bfloat16 tables, both viewed as uint16 bits), plus two
small arrays: `table_format[t]` (WIDE, F16, BF16) and `table_index[t]` (position in its tuple). Each tuple is
padded to a power of two (at least 4) with a 1x1 dummy, so a collection of 26 tables compiles the kernels for
32 and a later one of 30 reuses them; a kernel has one compiled version per (wide length, half length) pair,
all cached on disk. Choosing the table costs nothing visible: the kernels index a tuple once per (slot, chunk)
or per run of one table's rows, never per row (each index of a tuple of arrays costs reference counting), and
a call unboxes 32 arrays in about 10 us; the whole launch, validation and torch's op dispatch included, costs
about 0.27 ms against a 10 ms lookup on dlrm-small (26 float32 tables of 100k x 64, batch 2048). The
alternatives: one flat buffer would copy every table per call (the module owns separate parameters), raw
addresses need an intrinsic per dtype that Numba's CUDA simulator cannot run, and one launch per table costs S
launches on a GPU. The same tuples go to the CUDA kernels (numba-cuda passes tuples of device arrays as kernel
arguments, about 72 bytes per table and tuple: the fused Adagrad step's four tuples fit the 32 KB parameter
space of CUDA 12.1+ on Volta and later up to about 110 tables), so CPU and CUDA index tables alike.

16-bit rows are converted to float32 in registers by integer operations (f16_bits_to_f32, bf16_bits_to_f32):
Numba has no float16 arithmetic on the CPU, and bfloat16 is the upper half of a float32. Results go back to
16 bits rounded to nearest even (f32_to_f16_bits, f32_to_bf16_bits), as torch's own casts do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

from accel.kernels import _device

WIDE, F16, BF16 = 0, 1, 2
TABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_FORMAT = {torch.float32: WIDE, torch.float64: WIDE, torch.float16: F16, torch.bfloat16: BF16}

# Rows fetched ahead of the one being added: a random row is a DRAM miss (~100 ns) and a row takes a few ns of
# work, so many rows must be in flight. Prefetches go to L2 only (prefetcht1): L2 tracks many more outstanding
# misses than L1's few fill buffers, which prefetcht0 would occupy. Measured on dlrm-small, one thread, ns per
# row (CPU time): no prefetch ~47, prefetcht0 8 ahead 34, prefetcht1 8 ahead 27, 12 ahead 25, 16 ahead 24.3,
# 24 ahead 24.5 (TorchRec's EBC: 34); prefetching only 2 of a row's 4 lines: 37.
PREFETCH_AHEAD = 16
_LINE = 64


# ---------------------------------------------------------------------------------------------------------
# 16-bit rows (CPU and CUDA)
# ---------------------------------------------------------------------------------------------------------


# Numba types uint32 op uint32 as a 64-bit integer, so every step is wrapped back into np.uint32: the bit
# patterns must be 32 bits wide to be viewed as float32 (and .view needs the np.uint32(...) call itself).


@njit(cache=True)
def f16_bits_to_f32(h):
    """float32 value of IEEE binary16 bits h: the exponent and mantissa moved up by 13 bits and rescaled by
    2^112 (exact for normal and subnormal halves); infinities and NaNs keep an all-ones exponent. Branch-free,
    so the CPU loops over a row vectorise."""
    u = np.uint32(np.uint32(h) & np.uint32(0xFFFF))
    sign = np.uint32(np.uint32(u & np.uint32(0x8000)) << np.uint32(16))
    shifted = np.uint32(np.uint32(u & np.uint32(0x7FFF)) << np.uint32(13))
    scaled = np.float32(np.uint32(shifted).view(np.float32) * np.float32(5.192296858534828e33))  # 2^112
    special = np.uint32(shifted | np.uint32(0x7F800000))
    bits = special if shifted >= np.uint32(0x0F800000) else np.float32(scaled).view(np.uint32)
    return np.uint32(bits | sign).view(np.float32)


@njit(cache=True)
def bf16_bits_to_f32(h):
    """float32 value of bfloat16 bits h: they are the upper 16 bits of that float32."""
    return np.uint32(np.uint32(np.uint32(h) & np.uint32(0xFFFF)) << np.uint32(16)).view(np.float32)


@njit(cache=True)
def f32_to_bf16_bits(x):
    """bfloat16 bits of float32 x, rounded to nearest even; NaN stays a (quiet) NaN."""
    u = np.float32(x).view(np.uint32)
    if np.uint32(u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16(np.uint32(u >> np.uint32(16)) | np.uint32(0x40))
    rounded = np.uint32(np.uint32(u + np.uint32(0x7FFF)) + np.uint32(np.uint32(u >> np.uint32(16)) & np.uint32(1)))
    return np.uint16(rounded >> np.uint32(16))


@njit(cache=True)
def f32_to_f16_bits(x):
    """IEEE binary16 bits of float32 x, rounded to nearest even (overflow to infinity, gradual underflow), in
    integer arithmetic only so that no fast-math flag can change the rounding."""
    u = np.float32(x).view(np.uint32)
    sign = np.uint32(np.uint32(u >> np.uint32(16)) & np.uint32(0x8000))
    a = np.uint32(u & np.uint32(0x7FFFFFFF))
    if a > np.uint32(0x7F800000):
        return np.uint16(sign | np.uint32(0x7E00))
    if a >= np.uint32(0x477FF000):  # 65520 and above round to infinity
        return np.uint16(sign | np.uint32(0x7C00))
    if a >= np.uint32(0x38800000):  # normal half: rebias the exponent by 127 - 15, round the 13 dropped bits
        rounded = np.uint32(np.uint32(a + np.uint32(0x0FFF)) + np.uint32(np.uint32(a >> np.uint32(13)) & np.uint32(1)))
        return np.uint16(sign | np.uint32(np.uint32(rounded >> np.uint32(13)) - np.uint32(112 << 10)))
    if a <= np.uint32(0x33000000):  # at most half the smallest subnormal 2^-24: ties go to the even zero
        return np.uint16(sign)
    # Subnormal half: x = m 2^(e - 150) with the implicit bit in m, i.e. m 2^(e - 126) units of 2^-24.
    shift = np.uint32(np.uint32(126) - np.uint32(a >> np.uint32(23)))
    m = np.uint32(np.uint32(a & np.uint32(0x7FFFFF)) | np.uint32(0x800000))
    q = np.uint32(m >> shift)
    rest = np.uint32(m & np.uint32(np.uint32(np.uint32(1) << shift) - np.uint32(1)))
    half = np.uint32(np.uint32(1) << np.uint32(shift - np.uint32(1)))
    if rest > half or (rest == half and np.uint32(q & np.uint32(1)) == np.uint32(1)):
        q = np.uint32(q + np.uint32(1))
    return np.uint16(sign | q)


def row_value(wide, half, fmt, i, row, d):
    """Element (row, d) of table i of its tuple (format fmt) as a float: a CUDA device function once the kernel
    modules bind it with numba.cuda.jit(device=True), plain Python under the simulator."""
    if fmt == WIDE:
        return wide[i][row, d]
    if fmt == BF16:
        return bf16_bits_to_f32(half[i][row, d])
    return f16_bits_to_f32(half[i][row, d])


# ---------------------------------------------------------------------------------------------------------
# Row helpers of the CPU kernels (inlined; generic over the table's element type). Numba's disk cache keys a
# kernel by its own file only: after editing a helper here, clear accel/kernels/__pycache__ so that the kernels
# in the other files recompile against it.
# ---------------------------------------------------------------------------------------------------------


def add_row(o, r, w, bf16):
    """o_d += w * float(r_d) for every d; r a table row (float, or uint16 bits read as bfloat16 when bf16 is
    true and binary16 otherwise)."""


def add_two_rows(o, r0, r1, w0, w1, bf16):
    """o_d += (w0 float(r0_d) + w1 float(r1_d)) for every d (rows as in add_row): two ids per pass over o."""


def load_row(r, dst, bf16):
    """dst_d = float(r_d) for every d (row bits converted as in add_row)."""


def store_row(src, r, bf16):
    """r_d = src_d for every d, rounded to nearest even into 16-bit rows."""


# Inlined into the calling kernel at Numba's level: an outlined call taking arrays costs an atomic reference
# count increment and decrement per array, per row.
ROW_JIT = {"fastmath": dict(_device.CPU_FASTMATH), "error_model": _device.CPU_ERROR_MODEL}


def _is_half(r) -> bool:
    return isinstance(r, types.Array) and r.dtype == types.uint16


@overload(add_row, jit_options=ROW_JIT, inline="always")
def _add_row_jit(o, r, w, bf16):
    if _is_half(r):
        def impl(o, r, w, bf16):
            if bf16:
                for d in range(o.shape[0]):
                    o[d] += w * bf16_bits_to_f32(r[d])
            else:
                for d in range(o.shape[0]):
                    o[d] += w * f16_bits_to_f32(r[d])
        return impl

    def impl(o, r, w, bf16):
        for d in range(o.shape[0]):
            o[d] += w * r[d]
    return impl


@overload(add_two_rows, jit_options=ROW_JIT, inline="always")
def _add_two_rows_jit(o, r0, r1, w0, w1, bf16):
    if _is_half(r0):
        def impl(o, r0, r1, w0, w1, bf16):
            if bf16:
                for d in range(o.shape[0]):
                    o[d] += w0 * bf16_bits_to_f32(r0[d]) + w1 * bf16_bits_to_f32(r1[d])
            else:
                for d in range(o.shape[0]):
                    o[d] += w0 * f16_bits_to_f32(r0[d]) + w1 * f16_bits_to_f32(r1[d])
        return impl

    def impl(o, r0, r1, w0, w1, bf16):
        for d in range(o.shape[0]):
            o[d] += w0 * r0[d] + w1 * r1[d]
    return impl


@overload(load_row, jit_options=ROW_JIT, inline="always")
def _load_row_jit(r, dst, bf16):
    if _is_half(r):
        def impl(r, dst, bf16):
            if bf16:
                for d in range(dst.shape[0]):
                    dst[d] = bf16_bits_to_f32(r[d])
            else:
                for d in range(dst.shape[0]):
                    dst[d] = f16_bits_to_f32(r[d])
        return impl

    def impl(r, dst, bf16):
        for d in range(dst.shape[0]):
            dst[d] = r[d]
    return impl


@overload(store_row, jit_options=ROW_JIT, inline="always")
def _store_row_jit(src, r, bf16):
    if _is_half(r):
        def impl(src, r, bf16):
            if bf16:
                for d in range(src.shape[0]):
                    r[d] = f32_to_bf16_bits(src[d])
            else:
                for d in range(src.shape[0]):
                    r[d] = f32_to_f16_bits(src[d])
        return impl

    def impl(src, r, bf16):
        for d in range(src.shape[0]):
            r[d] = src[d]
    return impl


@intrinsic
def _prefetch(typingctx, arr, byte_offset):
    """llvm.prefetch of the cache line at arr.data + byte_offset for reading, into L2 (locality 2: prefetcht1 on
    x86). A hint: it never faults, whatever the address."""
    if not isinstance(arr, types.Array) or not isinstance(byte_offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        offset = context.cast(builder, args[1], signature.args[1], types.intp)
        i8p = ir.IntType(8).as_pointer()
        address = builder.gep(builder.bitcast(data, i8p), [offset])
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [address, i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, byte_offset), codegen


@_device.cpu_helper()
def prefetch_row(tab, row):
    """Prefetch every cache line of row `row` of the C-contiguous 2-D table `tab`."""
    row_bytes = tab.shape[1] * tab.itemsize
    prefetch_bytes(tab, row * row_bytes, row_bytes)


@_device.cpu_helper()
def prefetch_bytes(arr, start, size):
    """Prefetch every cache line of bytes [start, start + size) of the C-contiguous array `arr`."""
    for line in range(0, size, _LINE):
        _prefetch(arr, start + line)
    if size % _LINE:
        _prefetch(arr, start + size - 1)


# ---------------------------------------------------------------------------------------------------------
# Work split (CPU)
# ---------------------------------------------------------------------------------------------------------

# Cost of a bag beyond its ids, in ids: zeroing and storing its output row is about one row's work.
_BAG_COST = 1


@_device.cpu_helper()
def _first_bag_at(offsets, base, B, target):
    # Smallest b in [0, B] with (offsets[base + b] - offsets[base]) + _BAG_COST b >= target (monotone in b).
    lo, hi = 0, B
    while lo < hi:
        mid = (lo + hi) // 2
        if offsets[base + mid] - offsets[base] + _BAG_COST * mid >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


@_device.cpu_helper()
def work_bounds(offsets, slot_key, slot_cost, B, chunks):
    """bounds (chunks + 1, S): chunk c owns bags [bounds[c, s], bounds[c + 1, s]) of every slot s.

    The (slot, bag) items, slot after slot, are laid on a line where bag b of slot s takes
    (length + _BAG_COST) * slot_cost[s] units (slot_cost = the row width D, so a chunk's share is in elements
    read, not in bags); chunk c owns the bags starting in [c T / chunks, (c + 1) T / chunks) of the total T.
    """
    S = slot_key.shape[0]
    bounds = np.empty((chunks + 1, S), np.int64)
    start = np.empty(S + 1, np.int64)
    start[0] = 0
    for s in range(S):
        k = slot_key[s]
        ids = offsets[(k + 1) * B] - offsets[k * B]
        start[s + 1] = start[s] + (ids + _BAG_COST * B) * max(slot_cost[s], 1)
    for c in range(chunks + 1):
        lo = start[S] * c // chunks
        for s in range(S):
            if c == chunks or lo <= start[s]:
                bounds[c, s] = B if c == chunks else 0
            elif lo > start[s + 1]:
                bounds[c, s] = B
            else:
                cost = max(slot_cost[s], 1)
                target = (lo - start[s] + cost - 1) // cost
                bounds[c, s] = _first_bag_at(offsets, slot_key[s] * B, B, target)
    return bounds



# ---------------------------------------------------------------------------------------------------------
# Tables as kernel arguments
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableArgs:
    """A list of tables as the kernels take it (see the module docstring); `dims` and `rows` stay on the host."""

    wide: tuple
    half: tuple
    table_format: object
    table_index: object
    dims: np.ndarray
    rows: np.ndarray
    acc_dtype: torch.dtype


# Shortest tuple: collections of up to 4 tables in any mix of dtypes share one compiled kernel version.
_MIN_TUPLE = 4


def padded(arrays: List[object], dummy: object) -> tuple:
    # Power-of-two length, at least _MIN_TUPLE: few distinct tuple types, so few compiled kernel versions.
    size = max(_MIN_TUPLE, 1 << max(len(arrays) - 1, 0).bit_length())
    return tuple(arrays) + (dummy,) * (size - len(arrays))


def numba_view(t: torch.Tensor):
    """Zero-copy Numba view of a contiguous tensor; 16-bit floats as uint16 bits."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return _device.as_numba_array(t.view(torch.int16)).view(np.uint16)
    return _device.as_numba_array(t)


def index_array(values: np.ndarray, device: torch.device):
    """int64 host values as a kernel argument on `device` (a NumPy array on CPU, a device array on CUDA)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    if _device.is_cuda_device(device):
        return _device.as_numba_array(torch.from_numpy(values).to(device))
    return values


def dummy_table(dtype: torch.dtype, device: torch.device):
    """The 1x1 zero table that pads the tuples (made once per dtype, device and launch path; never read by a
    kernel)."""
    return _dummy_table(dtype, device, _device.is_cuda_device(device))


@functools.lru_cache(maxsize=None)
def _dummy_table(dtype: torch.dtype, device: torch.device, cuda_path: bool):
    # cuda_path in the key: inside simulated_cuda() a CPU table is a simulator array, which CPU kernels reject.
    return numba_view(torch.zeros((1, 1), dtype=dtype, device=device))


def table_args(tables: Sequence[torch.Tensor], acc_dtype: torch.dtype, device: torch.device) -> TableArgs:
    """TableArgs of contiguous tables (`check_tables` first)."""
    wide, half, fmt, index = [], [], [], []
    for w in tables:
        group = half if w.dtype in (torch.float16, torch.bfloat16) else wide
        fmt.append(_FORMAT[w.dtype])
        index.append(len(group))
        group.append(numba_view(w))
    dummy_wide = dummy_table(acc_dtype, device)
    dummy_half = dummy_table(torch.float16, device)
    return TableArgs(
        wide=padded(wide, dummy_wide),
        half=padded(half, dummy_half),
        table_format=index_array(np.array(fmt, np.int64), device),
        table_index=index_array(np.array(index, np.int64), device),
        dims=np.array([w.shape[1] for w in tables], np.int64),
        rows=np.array([w.shape[0] for w in tables], np.int64),
        acc_dtype=acc_dtype,
    )


# ---------------------------------------------------------------------------------------------------------
# Launcher checks
# ---------------------------------------------------------------------------------------------------------


def check_tables(name: str, tables: object) -> Tuple[torch.dtype, torch.device]:
    """(accumulation dtype, device) of a list of 2-D tables: float32 for float32/float16/bfloat16 tables,
    float64 when every table is float64; TypeError/ValueError naming the table otherwise."""
    if not isinstance(tables, (list, tuple)):
        raise TypeError(f"{name} must be a list of 2-D tables, got {type(tables).__name__}")
    for t, w in enumerate(tables):
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"{name}[{t}] must be a torch.Tensor, got {type(w).__name__}")
        if w.dtype not in TABLE_DTYPES:
            raise TypeError(f"{name}[{t}] must be float32, float16, bfloat16 or float64, got {w.dtype}")
        if w.dim() != 2:
            raise ValueError(f"{name}[{t}] must be a 2-D table (rows, D), got shape {tuple(w.shape)}")
        if w.device != tables[0].device:
            raise ValueError(f"{name}[{t}] must be on {name}[0]'s device {tables[0].device}, got {w.device}")
        # Meta tables have shapes but no data: only the custom ops' fake kernels see them.
        if w.device.type != "meta":
            _device.check_launchable(f"{name}[{t}]", w)
    dtypes = [w.dtype for w in tables]
    if torch.float64 in dtypes and any(d != torch.float64 for d in dtypes):
        raise TypeError(f"{name}: float64 tables cannot be mixed with other dtypes, got {dtypes}")
    acc = torch.float64 if torch.float64 in dtypes else torch.float32
    return acc, (tables[0].device if tables else torch.device("cpu"))


def check_index(name: str, t: object, device: Optional[torch.device]) -> None:
    """TypeError/ValueError unless t is a 1-D int64 tensor (on `device` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on the tables' device {device}, got {t.device}")


def check_count(name: str, value: object) -> int:
    """TypeError/ValueError unless value is an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


@_device.cpu_jit()
def _first_bad_offset(offsets, num_values):
    # First position breaking offsets[0] = 0, offsets[i] <= offsets[i + 1], offsets[-1] = num_values; else -1.
    if offsets[0] != 0:
        return 0
    for i in range(offsets.shape[0] - 1):
        if offsets[i + 1] < offsets[i]:
            return i + 1
    return -1 if offsets[offsets.shape[0] - 1] == num_values else offsets.shape[0] - 1


def check_offsets(offsets: torch.Tensor, batch_size: int, num_values: int) -> int:
    """F, the number of keys, of global KJT offsets [F B + 1] over `num_values` ids; ValueError naming the first
    offset that breaks 0 = offsets[0] <= ... <= offsets[-1] = num_values (kernels then never read outside the
    ids)."""
    n = offsets.shape[0]
    if n == 0 or (batch_size == 0 and n != 1) or (batch_size > 0 and (n - 1) % batch_size):
        raise ValueError(f"offsets must have F * batch_size + 1 entries (batch_size = {batch_size}), got {n}")
    if offsets.device.type == "cuda":
        bad = torch.cat([offsets[:1] != 0, offsets[1:] < offsets[:-1], offsets[-1:] != num_values])
        first = int(bad.nonzero()[0, 0]) if bool(bad.any()) else -1
        first = min(first, n - 1)
    else:
        first = _first_bad_offset(offsets.numpy(), num_values)
    if first >= 0:
        got = offsets[max(first - 1, 0):first + 1].tolist()
        raise ValueError(
            f"offsets must start at 0, never decrease and end at the number of ids {num_values}; "
            f"got {got} at position {first}"
        )
    return (n - 1) // batch_size if batch_size else 0


def host_slots(name: str, t: object, size: Optional[int], bound: int, what: str) -> np.ndarray:
    """Host int64 copy of a slot tensor [S] with values in [0, bound) (`what` names the bound)."""
    check_index(name, t, None)
    if size is not None and t.shape[0] != size:
        raise ValueError(f"{name} must have one entry per slot ({size}), got {t.shape[0]}")
    values = t.detach().cpu().numpy()
    bad = np.flatnonzero((values < 0) | (values >= bound))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] must be in [0, {bound}) ({what}), got {values[bad[0]]}")
    return values


def key_ranges(offsets_host: np.ndarray, slot_key: np.ndarray, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(first id of each slot's key, ids per slot) from host offsets."""
    first = offsets_host[slot_key * batch_size]
    return first, offsets_host[(slot_key + 1) * batch_size] - first

