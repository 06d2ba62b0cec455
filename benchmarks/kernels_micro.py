"""Micro-timings of accel's three elementwise CPU kernels next to torch, interleaved so that ratios survive load.

`python -m benchmarks.kernels_micro [--reps N] [--only swish,fm,vector]`. fp32, batch 4096, the dense sweep's
shapes (SwishLayerNorm(512), FactorizationMachine on [4096, 26, 64], VectorCrossNet(512, 3 layers)). Per
family it prints median and 25th-percentile milliseconds of:
- the bare Numba kernels on preallocated arrays (forward and backward, one layer),
- accel's module, forward under no_grad and forward + `out.sum().backward()`,
- the same maths in torch: the dense sweep's TorchRec transcription (benchmarks.anchors) and, for
  VectorCrossNet, the plain-torch form x0 * (xl @ w) + b + xl,
with each repetition running every provider once in turn, so a burst of load from other processes hits all of
them. The machine is shared: read the ratios, and rerun when the load average printed is high.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List

import numba
import numpy as np
import torch
from torch import nn

from accel.kernels import _device, fm, swish_layernorm as sln, vector_cross as vc
from accel.modules.activation import SwishLayerNorm
from accel.modules.crossnet import VectorCrossNet
from accel.modules.deepfm import FactorizationMachine
from benchmarks import anchors

BATCH = 4096
FEATURES = 512
FIELDS, DIM = 26, 64
LAYERS = 3


class PlainVectorCross(nn.Module):
    """x_{l+1} = x_0 (x_l . w_l) + b_l + x_l with one matrix-vector product per layer (no batched matmul)."""

    def __init__(self, n: int, layers: int) -> None:
        super().__init__()
        self.w = nn.ParameterList(nn.Parameter(torch.randn(n, 1) / n ** 0.5) for _ in range(layers))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(n)) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        xl = x0
        for w, b in zip(self.w, self.b):
            xl = x0 * (xl @ w) + b + xl
        return xl


def interleaved(fns: Dict[str, Callable[[], object]], reps: int) -> Dict[str, List[float]]:
    """Milliseconds of each fn over `reps` rounds, every round calling each fn once; two warm-up rounds."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(1e3 * (time.perf_counter() - start))
    return samples


def module_calls(module: nn.Module, inputs: List[torch.Tensor], list_input: bool) -> Dict[str, Callable]:
    """Forward under no_grad, and forward + out.sum().backward() with the gradients cleared first."""
    leaves = [t.clone().requires_grad_(True) for t in inputs]

    def call(args):
        return module(args) if list_input else module(args[0])

    def forward():
        with torch.no_grad():
            return call(inputs)

    def forward_backward():
        for t in leaves + list(module.parameters()):
            t.grad = None
        call(leaves).sum().backward()

    return {"fwd": forward, "fwd+bwd": forward_backward}


def swish_kernels(rng: np.random.Generator) -> Dict[str, Callable]:
    x = rng.standard_normal((BATCH, FEATURES)).astype(np.float32)
    gamma, beta = np.ones(FEATURES, np.float32), np.zeros(FEATURES, np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    mean, rstd = np.empty(BATCH, np.float32), np.empty(BATCH, np.float32)
    dgamma, dbeta = np.empty(FEATURES, np.float32), np.empty(FEATURES, np.float32)
    chunks = _device.cpu_kernel_chunks(BATCH)
    return {
        "kernel fwd": lambda: sln._swish_ln_forward_cpu(x, gamma, beta, 1e-5, y, mean, rstd, chunks),
        "kernel bwd": lambda: sln._swish_ln_backward_cpu(x, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, chunks),
    }


def fm_kernels(rng: np.random.Generator) -> Dict[str, Callable]:
    x = rng.standard_normal((BATCH, FIELDS * DIM)).astype(np.float32)
    out, row_sum, dx = np.empty((BATCH, 1), np.float32), np.empty(BATCH, np.float32), np.empty_like(x)
    g = np.ones((BATCH, 1), np.float32)
    chunks = _device.cpu_kernel_chunks(BATCH)
    return {
        "kernel fwd": lambda: fm._fm_forward_cpu(x, out, row_sum, chunks),
        "kernel bwd": lambda: fm._fm_backward_cpu(g, x, row_sum, dx),
    }


def vector_kernels(rng: np.random.Generator) -> Dict[str, Callable]:
    x = rng.standard_normal((BATCH, FEATURES)).astype(np.float32)
    w = (rng.standard_normal(FEATURES) / FEATURES ** 0.5).astype(np.float32)
    b = np.zeros(FEATURES, np.float32)
    out, dx0, dxl, dot = np.empty_like(x), np.empty_like(x), np.empty_like(x), np.empty(BATCH, np.float32)
    dw, db = np.empty(FEATURES, np.float32), np.empty(FEATURES, np.float32)
    chunks = _device.cpu_kernel_chunks(BATCH)
    return {
        "kernel fwd (1 layer)": lambda: vc._vc_forward_cpu(x, x, w, b, out, dot, chunks),
        "kernel bwd (1 layer)": lambda: vc._vc_backward_cpu(x, x, x, w, dot, dx0, dxl, dw, db, chunks),
    }


def family(name: str, rng: np.random.Generator) -> Dict[str, Callable]:
    """Every provider of one family, keyed "<provider> <fwd|fwd+bwd>" (plus the bare kernels)."""
    if name == "swish":
        inputs, list_input = [torch.from_numpy(rng.standard_normal((BATCH, FEATURES)).astype(np.float32))], False
        modules = {"accel": SwishLayerNorm(FEATURES), "torchrec-form": anchors.SwishLayerNorm(FEATURES)}
        fns = swish_kernels(rng)
    elif name == "fm":
        inputs, list_input = [torch.from_numpy(rng.standard_normal((BATCH, FIELDS, DIM)).astype(np.float32))], True
        modules = {"accel": FactorizationMachine(), "torchrec-form": anchors.FactorizationMachine()}
        fns = fm_kernels(rng)
    else:
        inputs, list_input = [torch.from_numpy(rng.standard_normal((BATCH, FEATURES)).astype(np.float32))], False
        modules = {
            "accel": VectorCrossNet(FEATURES, LAYERS),
            "torchrec-form": anchors.VectorCrossNet(FEATURES, LAYERS),
            "torch x0*(xl@w)+b+xl": PlainVectorCross(FEATURES, LAYERS),
        }
        fns = vector_kernels(rng)
    for provider, module in modules.items():
        for kind, fn in module_calls(module, inputs, list_input).items():
            fns[f"{provider} {kind}"] = fn
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels_micro")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--only", default="swish,fm,vector")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; numba {numba.get_num_threads()} threads "
          f"({numba.config.THREADING_LAYER} layer), torch {torch.get_num_threads()} threads; "
          f"median (25th percentile) ms over {args.reps} interleaved rounds")
    for name in args.only.split(","):
        samples = interleaved(family(name, rng), args.reps)
        median = {k: statistics.median(v) for k, v in samples.items()}
        for label, values in samples.items():
            print(f"{name:7s} {label:32s} {median[label]:8.3f} ({sorted(values)[len(values) // 4]:7.3f})")
        for kind in ("fwd", "fwd+bwd"):
            ratios = [f"{p.rsplit(' ', 1)[0]}/accel {median[p] / median[f'accel {kind}']:.2f}x"
                      for p in median if p.endswith(f" {kind}") and not p.startswith(("accel", "kernel"))]
            print(f"{name:7s} {kind:8s} " + ", ".join(ratios))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
