"""Named jagged inputs for the embedding modules: hand-traceable cases first, each a `Batch`.

A build's features and their id ranges come from its tables (a feature shared by two tables
draws ids valid in both); position-weighted modules read their features' maximum lengths, and
their bags never exceed them. Every generator includes empty bags; "jagged" also has a batch of
size 0, a feature empty for the whole batch, duplicate ids, the largest valid id, bags of 31, 32
and 33 ids (tile boundaries of the kernels) and the keys in reverse order plus a key no table reads.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from conformance import generators
from conformance.properties.embeddings_io import Batch, feature_rows
from conformance.records import Build

# A key that no table reads, with ids no table has: extra keys are ignored, never validated.
EXTRA_KEY = "unread"
EXTRA_ID = 10**6

Case = Tuple[str, Batch]


def features_of(build: Build) -> Dict[str, Tuple[int, int]]:
    """feature -> (id range, longest bag allowed), in the order the build first names them."""
    module = build.module
    if module in ("EmbeddingTower",):
        return features_of(build.args[0])
    if module == "EmbeddingTowerCollection":
        out: Dict[str, Tuple[int, int]] = {}
        for tower in build.args[0]:
            for f, (rows, longest) in features_of(tower).items():
                old = out.get(f, (rows, longest))
                out[f] = (min(old[0], rows), min(old[1], longest))
        return out
    if module in ("PositionWeightedModule", "PositionWeightedProcessor"):
        return {f: (10, length) for f, length in build.args[0]}
    return {f: (rows, 1 << 30) for f, rows in feature_rows(build).items()}


def weighted(build: Build) -> bool:
    """Whether the build's inputs carry per-id weights (a weighted EBC, directly or in a tower)."""
    if build.module == "EmbeddingBagCollection":
        return bool(dict(build.kwargs).get("is_weighted", False))
    if build.module == "EmbeddingTower":
        return weighted(build.args[0])
    if build.module == "EmbeddingTowerCollection":
        return any(weighted(t) for t in build.args[0])
    return False


def _make(features: Dict[str, Tuple[int, int]], keys: List[str], lengths: Dict[str, List[int]],
          rng: np.random.Generator, with_weights: bool, ids: Optional[Dict[str, List[int]]] = None) -> Batch:
    B = len(next(iter(lengths.values()))) if lengths else 0
    all_lengths, all_ids = [], []
    for key in keys:
        L = [min(n, features[key][1]) if key in features else n for n in lengths[key]]
        all_lengths += L
        rows = features[key][0] if key in features else EXTRA_ID + 1
        drawn = list(ids[key]) if ids and key in ids else rng.integers(0, rows, sum(L)).tolist()
        if key == EXTRA_KEY:
            drawn = [EXTRA_ID] * sum(L)
        all_ids += drawn[: sum(L)]
    n = len(all_ids)
    w = rng.standard_normal(n) if with_weights else None
    return Batch(tuple(keys), np.asarray(all_lengths, dtype=np.int64), np.asarray(all_ids, dtype=np.int64), w, B)


def jagged(build: Build, rng: np.random.Generator) -> List[Case]:
    """B=0; B=1 with one id per bag; B=4 with empty bags, a feature empty for the whole batch,
    duplicate ids and the largest id; bags of 31/32/33 ids; reversed keys plus an unread key."""
    features = features_of(build)
    keys = list(features)
    w = weighted(build)
    cases = [("B=0", _make(features, keys, {k: [] for k in keys}, rng, w))]
    cases.append(("B=1 one id", _make(features, keys, {k: [1] for k in keys}, rng, w)))
    lengths = {k: [2, 0, 1, 3] for k in keys}
    lengths[keys[-1]] = [0, 0, 0, 0]  # a feature empty for the whole batch
    ids = {k: [features[k][0] - 1, features[k][0] - 1, 0, 0, min(1, features[k][0] - 1), 0] for k in keys}
    cases.append(("B=4 empty bags, duplicates, max id", _make(features, keys, lengths, rng, w, ids)))
    tiles = {k: [1, 0, 2] for k in keys}
    tiles[keys[0]] = [31, 32, 33]
    cases.append(("bags of 31/32/33 ids", _make(features, keys, tiles, rng, w)))
    shuffled = list(reversed(keys)) + [EXTRA_KEY]
    cases.append(("keys reversed + unread key",
                  _make(features, shuffled, {k: [1, 2, 0] for k in shuffled}, rng, w)))
    return cases


def jagged_small(build: Build, rng: np.random.Generator) -> List[Case]:
    """B=0 and B=3 with an empty bag and a duplicate id: small enough for central differences."""
    features = features_of(build)
    keys = list(features)
    w = weighted(build)
    lengths = {k: [2, 0, 3] for k in keys}
    ids = {k: [0, min(2, features[k][0] - 1), 1, 1, features[k][0] - 1] for k in keys}
    return [("B=0", _make(features, keys, {k: [] for k in keys}, rng, w)),
            ("B=3 empty bag, duplicate", _make(features, keys, lengths, rng, w, ids))]


def jagged_many(build: Build, rng: np.random.Generator) -> List[Case]:
    """B=0 and B=64 with lengths uniform in 0..8 (about one bag in nine empty), and bags of
    31/32/33 ids: enough elements for a float32 error comparison to stop depending on luck."""
    features = features_of(build)
    keys = list(features)
    w = weighted(build)
    many = {k: rng.integers(0, 9, 64).tolist() for k in keys}
    tiles = {k: [31, 32, 33] for k in keys}
    return [("B=0", _make(features, keys, {k: [] for k in keys}, rng, w)),
            ("B=64", _make(features, keys, many, rng, w)),
            ("bags of 31/32/33 ids", _make(features, keys, tiles, rng, w))]


GENERATORS: Dict[str, Callable[[Build, np.random.Generator], List[Case]]] = {
    "jagged": jagged,
    "jagged_small": jagged_small,
    "jagged_many": jagged_many,
}


def cases(name: str, build: Build, seed: int) -> List[Case]:
    """The cases of generator `name` for `build`, reproducible from `seed`."""
    if name not in GENERATORS:
        raise KeyError(f"embedding generator: expected one of {sorted(GENERATORS)}, got {name!r}")
    return GENERATORS[name](build, generators.rng_for(seed, name, build.name))


def golden_batch(build: Build, rng: np.random.Generator) -> Batch:
    """The golden files' input: B = 3, lengths in 0..3 with bag 1 of every feature empty."""
    features = features_of(build)
    keys = list(features)
    lengths = {k: [int(rng.integers(1, 4)), 0, int(rng.integers(0, 4))] for k in keys}
    return _make(features, keys, lengths, rng, weighted(build))
