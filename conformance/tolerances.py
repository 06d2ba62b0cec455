"""The tolerance table: one rule per dtype and kind of comparison, each with its reason.

Errors are measured normwise, per case and per compared array:
    rel = max_i |got_i - ref_i| / max_i |ref_i|
so that a cancelling element (an FM output near zero, a ReLU output of 0) is judged against the
scale of the whole output, as rounding errors are. Units:
    "rel"    the normwise relative error above
    "ulp"    elementwise error in units in the last place of the reference (exact cases)
    "ratio"  an error over its allowance: accel-float32's error over the error a correct float32
             result may have (checks.check_forward_f32), or |got - expected| / (atol + rtol |expected|)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Tolerance:
    """Pass iff error <= value, in `unit` (see the module docstring)."""

    value: float
    unit: str
    reason: str

    def __post_init__(self) -> None:
        if self.unit not in ("rel", "ulp", "ratio"):
            raise ValueError(f"Tolerance unit expected 'rel', 'ulp' or 'ratio', got {self.unit!r}")
        if not self.value >= 0:
            raise ValueError(f"Tolerance value expected >= 0, got {self.value}")


# float64 forward: a sum of n products is within n*eps*sum|a_i b_i| of exact (Higham, Thm 3.1),
# and refimpl (NumPy) and accel (torch) sum in different orders, so they may differ by twice that.
# Random-sign inputs make sum|a_i b_i| up to about sqrt(n) times |sum a_i b_i|, and stacked
# layers add their errors; 16 n eps covers both for the small depths used here.
FORWARD64_FACTOR = 16

# float64 gradients: a parameter gradient also sums over the batch, the chain rule runs every
# layer twice (forward values, backward products), and a softmax backward p (g - sum p g)
# cancels when one gate dominates (seen: 1.3 x the forward allowance times four on saturated
# gates): eight times the forward allowance.
GRADIENT64_FACTOR = 8 * FORWARD64_FACTOR

# float32: FlashAttention's rule. The float64 result is the truth; accel-float32 may be at most
# K32 times as far from it as a correct float32 result is (see conformance.checks.check_forward_f32:
# refimpl-float32's own error, or the spread from one more rounding of the operands where an
# output is ill-conditioned, with a floor of FLOOR32_ULPS ulps of the output's scale).
# FlashAttention uses 2 on tensors of millions of elements, where the largest error is a stable
# statistic; our cases hold tens to thousands of elements, and the largest ratio between two
# correct BLAS-based float32 implementations reached 2.3 over 24 seeds, so K32 = 4.
K32 = 4.0
FLOOR32_ULPS = 2.0

# Where an output is ill-conditioned (conformance.conditioning measures how far it moves when
# every operand moves by n eps), a correct implementation's error is of that size too; the float64
# tolerances are raised to this multiple of the measured spread where that is larger.
CONDITIONING_FACTOR = 2.0

# Central differences with step h = 1e-6 (refimpl.grad_check's default): truncation h^2 f'''/6
# is about 1e-13, rounding eps |L| / h about 2e-10 |L|; with |L| <= 1e3 for the small random
# cases used (inputs N(0, 1)) the difference is within 2e-7 of the true gradient.
FD_REL = 1e-6
FD_STEP = 1e-6

# TorchRec's own tests compare its outputs with rtol = atol = 1e-4 (float32, 20 stacked layers).
TORCHREC_TEST_REL = 1e-4


def forward64(n: int) -> Tolerance:
    """float64 forward, refimpl vs accel, reduction length n."""
    return Tolerance(
        FORWARD64_FACTOR * max(n, 1) * EPS64,
        "rel",
        f"float64: {FORWARD64_FACTOR} x n x eps with n = {n} (summation order differs; "
        "Higham's n eps bound, cancellation and stacked layers)",
    )


def gradient64(n: int) -> Tolerance:
    """float64 gradients, accel autograd vs refimpl backward, reduction length n."""
    return Tolerance(
        GRADIENT64_FACTOR * max(n, 1) * EPS64,
        "rel",
        f"float64 gradients: {GRADIENT64_FACTOR} x n x eps with n = {n} (batch sums and the "
        "backward chain on top of the forward's error)",
    )


def forward32(k: float = K32, reason: str = "") -> Tolerance:
    """float32 forward: accel's error at most k x a correct float32 result's, both vs float64."""
    return Tolerance(
        k,
        "ratio",
        reason or (f"float32: accel's error vs float64 at most {k:g} x refimpl-float32's own error "
                   f"(or the operands' rounding spread; floor {FLOOR32_ULPS:g} ulp), FlashAttention's rule"),
    )


def finite_difference() -> Tolerance:
    return Tolerance(
        FD_REL,
        "rel",
        f"central differences, step {FD_STEP:g}: truncation and rounding stay below {FD_REL:g}",
    )


EXACT = Tolerance(
    0.0,
    "ulp",
    "hand-traceable case: every intermediate is a small integer or an exact binary fraction, "
    "so any rounding is a bug",
)

TORCHREC_TEST_VALUES = Tolerance(
    TORCHREC_TEST_REL,
    "rel",
    "TorchRec's own tests: its printed float32 values, compared with rtol = atol = 1e-4",
)


def floor32() -> float:
    """The normwise float32 error a ratio is never measured against less than."""
    return FLOOR32_ULPS * EPS32
