"""Conditioning: how far an output moves when its operands are rounded once more.

Where an output is ill-conditioned (a sigmoid or softmax at large arguments, a sum that
cancels), every correct implementation's rounding error is amplified, and a fixed n eps
tolerance would fail correct code. The checks measure that amplification instead of guessing
it: refimpl runs in float64 with every input and parameter multiplied by (1 + rel u),
u ~ U(-1, 1), for DRAWS seeded draws, and the largest movement of each output or gradient is
its spread. A backward-stable implementation's result is the exact result for operands moved
by about n eps, so with rel = n eps the spread is the error such an implementation may have.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from conformance import adapters
from conformance.compare import normwise
from conformance.records import Build

DRAWS = 2


def perturb(x: Any, rng: np.random.Generator, rel: float) -> Any:
    """x * (1 + rel u), u ~ U(-1, 1) per element (an array, or a list of arrays), in float64."""
    if isinstance(x, list):
        return [perturb(a, rng, rel) for a in x]
    x = np.asarray(x, dtype=np.float64)
    return x * (1 + rel * rng.uniform(-1.0, 1.0, x.shape))


class Spread:
    """DRAWS float64 refimpl modules holding `state` with perturbed parameters."""

    def __init__(self, build: Build, state: Dict[str, np.ndarray], rel: float, rng: np.random.Generator) -> None:
        self.rel = rel
        self.rng = rng
        self.modules = []
        for _ in range(DRAWS):
            module = adapters.construct(build, "refimpl", dtype=np.float64)
            module.load_state_dict({k: perturb(v, rng, rel) for k, v in state.items()})
            self.modules.append(module)

    def outputs(self, x: Any) -> List[np.ndarray]:
        """Each module's output on its own perturbation of x."""
        return [adapters.run_ref(m, perturb(x, self.rng, self.rel), np.float64) for m in self.modules]

    def gradients(self, x: Any, grad_output: np.ndarray) -> List[Tuple[np.ndarray, Dict[str, np.ndarray]]]:
        """Each module's (output, gradients) on its own perturbation of x (see adapters.ref_gradients)."""
        return [adapters.ref_gradients(m, perturb(x, self.rng, self.rel), grad_output) for m in self.modules]


def spread(reference: np.ndarray, moved: List[np.ndarray], scale: float = None) -> float:
    """The largest normwise movement of `reference` among `moved` (scale as in compare.normwise)."""
    return max((normwise(np.asarray(m), reference, scale) for m in moved), default=0.0)
