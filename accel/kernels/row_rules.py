"""The optimizer rules of the fused embedding training step, per element and per table row (CPU and CUDA):

    sgd              W_t[r] <- W_t[r] - lr g_r
    adagrad          G_t[r] <- G_t[r] + g_r^2;  W_t[r] <- W_t[r] - lr g_r / (sqrt(G_t[r]) + eps)   (elementwise)
    rowwise_adagrad  G_t[r] <- G_t[r] + (1/D) sum_d g_r,d^2;  W_t[r] <- W_t[r] - lr g_r / (sqrt(G_t[r]) + eps)

FBGEMM's EXACT_* rules as refimpl.optim states them. `adagrad_element` and `rowwise_multiplier` are the per-element
maths shared by the CPU and CUDA kernels; `step_row` and `adagrad_row` update one CPU table row in place (16-bit
rows in float32, rounded back to nearest even). The rule codes also name the two non-optimizer passes of the
row-grouped backward: READ (rows only read) and WRITE (g_r stored as a dense gradient).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core.extending import overload

from accel.kernels import _jagged

# READ only reads the rows (for the per-sample weights' gradient); WRITE stores g_r into dense gradients.
READ, WRITE, SGD, ADAGRAD, ROWWISE_ADAGRAD = -1, 0, 1, 2, 3
RULES = {"sgd": SGD, "adagrad": ADAGRAD, "rowwise_adagrad": ROWWISE_ADAGRAD}


@njit(cache=True)
def adagrad_element(w, G, g, lr, eps):
    """(w - lr g / (sqrt(G + g^2) + eps), G + g^2)."""
    G = G + g * g
    return w - lr * g / (np.sqrt(G) + eps), G


@njit(cache=True)
def rowwise_multiplier(G_row, lr, eps):
    """lr / (sqrt(G_row) + eps), the step of every element of a row under row-wise Adagrad."""
    return lr / (np.sqrt(G_row) + eps)


def step_row(w, grad, lr, bf16):
    """w_d <- w_d - lr grad_d for every d, in place (w a table row: float, or 16-bit bits converted as in
    _jagged.add_row and rounded back to nearest even). In place rather than into another row: LLVM's run-time
    overlap check would find the two rows equal and take its scalar loop."""


def adagrad_row(w, G, grad, lr, eps, bf16):
    """(w_d, G_d) <- adagrad_element(w_d, G_d, grad_d, lr, eps) for every d, in place (rows as in step_row)."""


def _row_in_16_bits(w) -> bool:
    return isinstance(w, types.Array) and w.dtype == types.uint16


@overload(step_row, jit_options=_jagged.ROW_JIT, inline="always")
def _step_row_jit(w, grad, lr, bf16):
    if _row_in_16_bits(w):
        def impl(w, grad, lr, bf16):
            if bf16:
                for d in range(grad.shape[0]):
                    w[d] = _jagged.f32_to_bf16_bits(_jagged.bf16_bits_to_f32(w[d]) - lr * grad[d])
            else:
                for d in range(grad.shape[0]):
                    w[d] = _jagged.f32_to_f16_bits(_jagged.f16_bits_to_f32(w[d]) - lr * grad[d])
        return impl

    def impl(w, grad, lr, bf16):
        for d in range(grad.shape[0]):
            w[d] -= lr * grad[d]
    return impl


@overload(adagrad_row, jit_options=_jagged.ROW_JIT, inline="always")
def _adagrad_row_jit(w, G, grad, lr, eps, bf16):
    if _row_in_16_bits(w):
        def impl(w, G, grad, lr, eps, bf16):
            for d in range(grad.shape[0]):
                value = _jagged.bf16_bits_to_f32(w[d]) if bf16 else _jagged.f16_bits_to_f32(w[d])
                value, G[d] = adagrad_element(value, G[d], grad[d], lr, eps)
                w[d] = _jagged.f32_to_bf16_bits(value) if bf16 else _jagged.f32_to_f16_bits(value)
        return impl

    def impl(w, G, grad, lr, eps, bf16):
        for d in range(grad.shape[0]):
            w[d], G[d] = adagrad_element(w[d], G[d], grad[d], lr, eps)
    return impl
