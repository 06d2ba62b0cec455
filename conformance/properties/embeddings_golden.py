"""Golden vectors of the embedding modules: refimpl in float64 from NumPy seeds, and their checks.

`vectors(build, seed)` is what `conformance.golden.generate` writes for an embedding build:
    parameters   refimpl's initialisation from default_rng(seed), constant ones (position
                 weights) replaced by seeded noise (conformance.adapters.exercise)
    input        a KJT of B = 3 from default_rng([seed, 1]) (embeddings_cases.golden_batch):
                 `kjt.lengths`, `kjt.values` (int64), `kjt.stride` (one int64), `kjt.weights` when
                 weighted; its keys are the build's features in the order its tables name them
                 (embeddings_cases.features_of), so that every array is numeric
    grad_output  N(0, 1) per differentiable output, from default_rng([seed, 2]) in output order
and `output.<name>` (io.outputs' names: `out`, `values[f]`, `lengths[f]`, `indices[f]`,
`weights[f]`), `grad_output.<name>`, `state.<key>`, `grad.<key>` and `grad_weights` (weighted
lookups) of L = sum <output, grad_output>.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from conformance import adapters, tolerances
from conformance.checks import _compare_gradients, _golden
from conformance.compare import Errors
from conformance.golden import store
from conformance.properties import embeddings_cases as cases_mod
from conformance.properties import embeddings_io as io
from conformance.records import Build, Record
from conformance.runner import Context, Outcome

MODULES = io.EMBEDDING_MODULES + ("EmbeddingTower", "EmbeddingTowerCollection")


def vectors(build: Build, seed: int) -> Dict[str, np.ndarray]:
    """The arrays of one golden file (module docstring)."""
    module = io.construct(build, "refimpl", seed=seed, dtype=np.float64)
    module.load_state_dict(adapters.exercise(module.state_dict(), seed))
    b = cases_mod.golden_batch(build, np.random.default_rng([seed, 1]))
    _, first = io.run(module, build, b, "refimpl", np.float64)
    rng = np.random.default_rng([seed, 2])
    G = {k: rng.standard_normal(first[k].shape) for k in io.differentiable(first)}
    outputs, grads = io.ref_gradients(module, build, b, G)
    arrays: Dict[str, np.ndarray] = {
        "kjt.lengths": b.lengths,
        "kjt.values": b.values,
        "kjt.stride": np.array([b.stride], dtype=np.int64),
    }
    if b.weights is not None:
        arrays["kjt.weights"] = b.weights
    arrays.update({f"output.{k}": v for k, v in outputs.items()})
    arrays.update({f"grad_output.{k}": v for k, v in G.items()})
    arrays.update({f"state.{k}": np.asarray(v, dtype=np.float64) for k, v in module.state_dict().items()})
    for name, g in grads.items():
        arrays["grad_weights" if name == "grad weights" else f"grad.{name[len('grad '):]}"] = g
    return arrays


def stored(build: Build, arrays: Dict[str, np.ndarray]
           ) -> Tuple[io.Batch, Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """(the input batch, the cotangents, the expected outputs and gradients named as io names them)."""
    keys = tuple(cases_mod.features_of(build))
    b = io.Batch(keys, arrays["kjt.lengths"], arrays["kjt.values"], arrays.get("kjt.weights"),
                 int(arrays["kjt.stride"][0]))
    G = store.prefixed(arrays, "grad_output.")
    expected = {f"output.{k}": v for k, v in store.prefixed(arrays, "output.").items()}
    expected.update({f"grad {k}": v for k, v in store.prefixed(arrays, "grad.").items()})
    if "grad_weights" in arrays:
        expected["grad weights"] = arrays["grad_weights"]
    return b, G, expected


def _compare(errors: Errors, name: str, build: Build, outputs, grads, arrays, expected) -> None:
    fwd = tolerances.forward64(build.reduction)
    for k, v in store.prefixed(arrays, "output.").items():
        got = outputs.get(k)
        if got is None:
            errors.fail(name, f"output {k}", "missing", fwd)
            continue
        exact = not np.issubdtype(v.dtype, np.floating)
        errors.add(name, f"output {k}", got, v, tolerances.EXACT if exact else fwd)
    _compare_gradients(errors, name, grads, {k: v for k, v in expected.items() if k.startswith("grad ")},
                       tolerances.gradient64(build.reduction))


def check_golden_refimpl(record: Record, ctx: Context) -> Outcome:
    """refimpl, built from the manifest's constructor with the stored state, reproduces the stored
    outputs and gradients (float64)."""
    build, arrays, name = _golden(record, ctx)
    module = io.construct(build, "refimpl")
    module.load_state_dict(store.prefixed(arrays, "state."))
    b, G, expected = stored(build, arrays)
    outputs, grads = io.ref_gradients(module, build, b, G)
    errors = Errors()
    _compare(errors, name, build, outputs, grads, arrays, expected)
    return Outcome.from_errors(errors, 1, tolerances.forward64(build.reduction))


def check_golden_accel(record: Record, ctx: Context) -> Outcome:
    """The package under test, in float64 with the stored state, matches the stored outputs and
    gradients (autograd)."""
    build, arrays, name = _golden(record, ctx)
    module = io.construct(build, ctx.against).to(device=ctx.device, dtype=adapters.torch_dtype(np.float64))
    adapters.load_torch(module, store.prefixed(arrays, "state."))
    b, G, expected = stored(build, arrays)
    outputs, grads = io.torch_gradients(module, build, b, G, np.float64, ctx.device)
    errors = Errors()
    _compare(errors, name, build, outputs, grads, arrays, expected)
    return Outcome.from_errors(errors, 1, tolerances.forward64(build.reduction))
