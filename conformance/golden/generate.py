"""Write the golden vectors: refimpl in float64, from fixed NumPy seeds, never torch's RNG.

    python -m conformance.golden.generate [DIR]     (default: this directory)
    python -m conformance --write-golden DIR        (the same)

For the build with index i in `conformance.properties.GOLDEN` (its label names the file),
with seed = BASE_SEED + i:
    parameters  refimpl's initialisation drawn from numpy.random.default_rng(seed), then every
                constant parameter (zero biases, unit gains) replaced by value + N(0, 0.5^2)
                noise from default_rng([seed, crc32(key)]) (conformance.adapters.exercise)
    input       B = 3 rows, N(0, 1) from default_rng([seed, 1])
    grad_output N(0, 1) of the output's shape from default_rng([seed, 2])
and the output and gradients of L = sum(output * grad_output) from refimpl's forward and
analytic backward. The manifest (format `recspec-golden/1`, docs/golden_format.md) records the
schema, this script and its version, the seeds, NumPy's version and, per file, the module, its
constructor arguments (JSON: nested modules as {"module", "args", "kwargs"}, elementwise
activations as {"activation": name}), the layout (dense or jagged, with the KJT's keys), the
reduction length n that the float64 tolerances scale with, every array's role, dtype, shape and
meaning, and the sha256. Regenerating with the same NumPy and BLAS gives the same bytes.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from conformance import adapters, generators
from conformance.golden import store
from conformance.records import Build

BASE_SEED = 20261127
# Bumped whenever a change here (seeds, batch, draws, layout) changes the stored values.
GENERATOR_VERSION = 1
BATCH = 3
HERE = Path(__file__).resolve().parent


def vectors(build: Build, seed: int) -> Dict[str, np.ndarray]:
    """The arrays of one golden file (see the module docstring for what each holds; the embedding
    modules take a jagged input and have their own layout, conformance.properties.embeddings_golden)."""
    from conformance.properties import embeddings_golden

    if build.module in embeddings_golden.MODULES:
        return embeddings_golden.vectors(build, seed)
    module = adapters.construct(build, "refimpl", seed=seed, dtype=np.float64)
    state = adapters.exercise(module.state_dict(), seed)
    module.load_state_dict(state)
    x = generators.batch_input(build, (BATCH,), np.random.default_rng([seed, 1]))
    y = np.asarray(module(x))
    g = np.random.default_rng([seed, 2]).standard_normal(y.shape)
    y, grads = adapters.ref_gradients(module, x, g)
    arrays: Dict[str, np.ndarray] = {"output": y, "grad_output": g}
    arrays.update({f"state.{k}": np.asarray(v, dtype=np.float64) for k, v in module.state_dict().items()})
    if isinstance(x, list):
        arrays.update({f"input.{i}": a for i, a in enumerate(x)})
        arrays.update({f"grad_input.{i}": grads[f"grad input[{i}]"] for i in range(len(x))})
    else:
        arrays["input"] = x
        arrays["grad_input"] = grads["grad input"]
    arrays.update({f"grad.{k[len('grad '):]}": v for k, v in grads.items() if not k.startswith("grad input")})
    return arrays


def layout(build: Build) -> Dict[str, Any]:
    """{"layout": "dense"}, or for a jagged input {"layout": "jagged", "kjt_keys": [...]}: the
    KeyedJaggedTensor's keys in the order kjt.lengths stores them (strings stay out of the .npz)."""
    from conformance.properties import embeddings_cases, embeddings_golden

    if build.module not in embeddings_golden.MODULES:
        return {"layout": "dense"}
    return {"layout": "jagged", "kjt_keys": list(embeddings_cases.features_of(build))}


def generate(directory: Path, builds: Optional[List[Build]] = None) -> Dict[str, Any]:
    """Write one .npz per build and the manifest into `directory`; return the manifest."""
    from conformance.properties import GOLDEN

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Any] = {}
    for i, build in enumerate(GOLDEN if builds is None else builds):
        seed = BASE_SEED + i
        name = f"{build.name}.npz"
        arrays = vectors(build, seed)
        digest = store.write_npz(directory / name, arrays)
        files[name] = {
            "module": build.module,
            "constructor": build.describe(),
            **layout(build),
            "reduction": build.reduction,
            "dtype": "float64",
            "seed": seed,
            "sha256": digest,
            **store.describe(arrays),
        }
    manifest = {
        "schema": store.SCHEMA,
        "generator": {
            "script": "conformance/golden/generate.py",
            "version": GENERATOR_VERSION,
            "command": "python -m conformance.golden.generate conformance/golden",
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
        },
        "dtype": "float64",
        "seeds": f"file i uses seed {BASE_SEED} + i; input default_rng([seed, 1]), grad_output default_rng([seed, 2])",
        "files": files,
    }
    store.write_manifest(directory, manifest)
    return manifest


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else HERE
    manifest = generate(directory)
    print(f"wrote {len(manifest['files'])} golden files and {store.MANIFEST} to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
