"""Named inputs: hand-traceable cases first, then Hypothesis strategies.

A generator takes a `Build` (which knows its input shape) and a NumPy generator and returns
`Case`s: a name a person can trace ("B=0", "zeros", "large") and the forward's input (an array,
or a list of arrays for modules that take a list of embeddings). Everything is float64 and
seeded; a check casts to the dtype it runs in. Widths at tile boundaries (31, 32, 33) are
module constructions, so they are `Build`s in the records, each run on these cases.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from conformance.records import Build

# Large enough that a float32 square or cube stays far from overflow yet exposes any
# implementation that loses relative precision at scale (a fixed absolute epsilon, say).
LARGE = 1e3


@dataclass(frozen=True)
class Case:
    name: str
    x: Any  # np.ndarray, or a list of np.ndarray


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """A generator that depends only on the seed and the labels (record, build, case)."""
    return np.random.default_rng([seed] + [zlib.crc32(label.encode()) for label in labels])


def batch_input(build: Build, batch: Sequence[int], rng: np.random.Generator, fill: str = "normal",
                scale: float = 1.0) -> Any:
    """The forward input for leading dimensions `batch`: (*batch, *in_shape) per tensor."""
    shapes = build.in_shape if build.takes_list else (build.in_shape,)

    def one(shape: Tuple[int, ...]) -> np.ndarray:
        full = tuple(batch) + tuple(shape)
        if fill == "zeros":
            return np.zeros(full)
        return scale * rng.standard_normal(full)

    arrays = [one(tuple(s)) for s in shapes]
    return arrays if build.takes_list else arrays[0]


def dense(build: Build, rng: np.random.Generator) -> List[Case]:
    """B=0 (empty batch), B=1, B=3, all zeros, and inputs of magnitude LARGE."""
    return [
        Case("B=0", batch_input(build, (0,), rng)),
        Case("B=1", batch_input(build, (1,), rng)),
        Case("B=3", batch_input(build, (3,), rng)),
        Case("zeros", batch_input(build, (2,), rng, fill="zeros")),
        Case("large", batch_input(build, (2,), rng, scale=LARGE)),
    ]


def dense_smooth(build: Build, rng: np.random.Generator) -> List[Case]:
    """B=0, B=1, B=3 with N(0, 1) inputs: no exact zeros, so no ReLU input sits on its kink
    (central differences across a kink measure the average slope, not the derivative)."""
    return [
        Case("B=0", batch_input(build, (0,), rng)),
        Case("B=1", batch_input(build, (1,), rng)),
        Case("B=3", batch_input(build, (3,), rng)),
    ]


def dense_many(build: Build, rng: np.random.Generator) -> List[Case]:
    """B=0, B=1, B=64 N(0, 1) rows, zeros, and B=64 rows of magnitude LARGE: a float32 error
    comparison looks at maxima, which need a few dozen rows to stop depending on luck."""
    return [
        Case("B=0", batch_input(build, (0,), rng)),
        Case("B=1", batch_input(build, (1,), rng)),
        Case("B=64", batch_input(build, (64,), rng)),
        Case("zeros", batch_input(build, (2,), rng, fill="zeros")),
        Case("large", batch_input(build, (64,), rng, scale=LARGE)),
    ]


def leading_dims(build: Build, rng: np.random.Generator) -> List[Case]:
    """Inputs (*, N) with more than one leading dimension: (2, 3, ...) and (0, 3, ...)."""
    return [
        Case("(2,3,*)", batch_input(build, (2, 3), rng)),
        Case("(0,3,*)", batch_input(build, (0, 3), rng)),
        Case("(1,1,1,*)", batch_input(build, (1, 1, 1), rng)),
    ]


GENERATORS: Dict[str, Callable[[Build, np.random.Generator], List[Case]]] = {
    "dense": dense,
    "dense_smooth": dense_smooth,
    "dense_many": dense_many,
    "leading_dims": leading_dims,
}


def cases(name: str, build: Build, seed: int) -> List[Case]:
    """The cases of generator `name` for `build`, reproducible from `seed`."""
    if name not in GENERATORS:
        raise KeyError(f"generator: expected one of {sorted(GENERATORS)}, got {name!r}")
    return GENERATORS[name](build, rng_for(seed, name, build.name))


def cotangent(shape: Tuple[int, ...], seed: int, *labels: str) -> np.ndarray:
    """A fixed random dL/doutput, so that a gradient check covers every output element."""
    return rng_for(seed, "cotangent", *labels).standard_normal(shape)


def shape_of(x: Any) -> Any:
    return [a.shape for a in x] if isinstance(x, list) else x.shape


# --- Hypothesis strategies ---------------------------------------------------------------------
# Hypothesis is a test dependency, not a runtime one: `python -m conformance` needs only the
# named cases above, so the strategies exist only where Hypothesis is installed.
try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # pragma: no cover - exercised only without the test extra
    st = None

if st is not None:

    def _floats(max_magnitude: float) -> Any:
        return st.floats(-max_magnitude, max_magnitude, allow_nan=False, allow_infinity=False, width=64)

    @st.composite
    def dense_inputs(draw: Any, in_shape: Tuple[int, ...], max_batch: int = 4,
                     max_magnitude: float = 10.0) -> np.ndarray:
        """A float64 (B, *in_shape) array, B in [0, max_batch], finite entries."""
        batch = draw(st.integers(0, max_batch))
        return draw(hnp.arrays(np.float64, (batch,) + tuple(in_shape), elements=_floats(max_magnitude)))

    @st.composite
    def embedding_lists(draw: Any, max_tensors: int = 3, max_batch: int = 3, max_dim: int = 4,
                        max_magnitude: float = 10.0) -> List[np.ndarray]:
        """A list of 1..max_tensors float64 arrays (B, n_i, d_i) or (B, d_i) with one common B."""
        batch = draw(st.integers(0, max_batch))
        count = draw(st.integers(1, max_tensors))
        out = []
        for _ in range(count):
            tail = draw(st.lists(st.integers(1, max_dim), min_size=1, max_size=2))
            out.append(draw(hnp.arrays(np.float64, (batch, *tail), elements=_floats(max_magnitude))))
        return out

    @st.composite
    def jagged(draw: Any, num_keys: int = 2, max_batch: int = 4, max_length: int = 3,
               num_embeddings: int = 10, weighted: bool = False) -> Dict[str, Any]:
        """A keyed jagged batch as plain NumPy, key-major (TorchRec's KJT layout):
        keys, lengths (num_keys * B,), offsets (num_keys * B + 1,), values, weights or None.
        Zero lengths (empty bags) are always possible and B = 0 is drawn too."""
        batch = draw(st.integers(0, max_batch))
        lengths = np.array(
            draw(st.lists(st.integers(0, max_length), min_size=num_keys * batch, max_size=num_keys * batch)),
            dtype=np.int64,
        )
        total = int(lengths.sum())
        values = np.array(
            draw(st.lists(st.integers(0, num_embeddings - 1), min_size=total, max_size=total)), dtype=np.int64
        )
        weights = draw(hnp.arrays(np.float64, (total,), elements=_floats(1.0))) if weighted else None
        return {
            "keys": [f"f{i}" for i in range(num_keys)],
            "lengths": lengths,
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "values": values,
            "weights": weights,
        }
