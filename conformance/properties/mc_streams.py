"""Streams of managed-collision calls: named, hand-traceable ones first, then random ones.

A stream is one construction and a sequence of steps (forward, evict, train, eval; see mc_io).
The named streams each exercise one rule of sem. 11.3 (a policy, an interval, offsets, hashing,
negative ids, empty bags and batches, eval switches, pending evictions left unconsumed, filters);
COLLECTIONS and WRAPPED do the same for the collection and the MC embedding collections, and
GROWING_WINDOW, KEY_ORDER, MODULE_ORDER hold the streams where recspec deviates from TorchRec.
`compose` (an MCH) and `compose_collection` (a collection, or an MC embedding collection) draw a
random stream from two primitives, `pick(options)` and `integer(lo, hi)`, so that one definition
serves both Hypothesis (`streams()`, which shrinks a failure to a short stream) and seeded NumPy
(`random_stream(rng)`, where Hypothesis is not installed).

TorchRec sizes its history window from the first training batch (H = int(1.25 n I)) and drops
ids beyond it (ledger D37); recspec grows the window. `torchrec_fits` says whether a stream stays
inside TorchRec's window, so that it can run against TorchRec; `torchrec_safe=True` only draws
such streams (no batch larger than the first one; one key order for a collection).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from conformance.properties import embeddings_io as eio
from conformance.properties.mc_io import (
    EVAL,
    EVICT,
    MAX,
    MCH,
    TRAIN,
    Filter,
    Policy,
    Step,
    Stream,
    Table,
    Tables,
    Wrapped,
    forward,
    forward_kjt,
)

LFU, LRU, DLFU = Policy("LFU"), Policy("LRU"), Policy("DistanceLFU")


# --- named streams -----------------------------------------------------------------------------
def _tv_steps(evict: bool = True) -> Tuple[Step, ...]:
    """sem. 14's four batches, each followed by evict() when asked."""
    batches = ([10, 20, 20, 30], [40, 40, 40, 50], [10, 60, 60, 60, 60], [70, 80, 10, 10])
    out: List[Step] = []
    for ids in batches:
        out.append(forward(ids))
        if evict:
            out.append(EVICT)
    return tuple(out)


NAMED: Tuple[Stream, ...] = (
    Stream("LFU, I=1, evict after each batch", MCH(5, LFU), _tv_steps()),
    Stream("LFU, I=2", MCH(5, LFU, interval=2), _tv_steps()),
    Stream("LRU, I=1", MCH(5, LRU), _tv_steps()),
    Stream("LRU(0.5), I=3, evictions left pending", MCH(5, Policy("LRU", 0.5), interval=3),
           _tv_steps(evict=False) + _tv_steps(evict=False) + (EVICT, EVICT)),
    Stream("DistanceLFU, I=2", MCH(5, DLFU, interval=2), _tv_steps()),
    Stream("DistanceLFU(2), offset 10", MCH(4, Policy("DistanceLFU", 2.0), offset=10),
           (forward([1, 1, 1, 1, 2, 3]), EVICT, forward([4, 4]), EVICT, forward([5, 5, 5]), EVICT, forward([2, 6]),
            EVICT)),
    Stream("hashing x mod 7, negative ids, offset 100", MCH(5, LFU, offset=100, hash="mod", hash_size=7),
           (forward([3, 10, 17, 5]), EVICT, forward([-4, -11, 6, 13, 0]), EVICT, forward([-1, 20, 3]), EVICT)),
    Stream("negative raw ids, empty bags, two features", MCH(6, DLFU),
           (Step("forward", (("a", (-5, 7, -5), (2, 0, 1)), ("b", (7, -1000, 2), (0, 3)))), EVICT,
            Step("forward", (("a", (), (0, 0)), ("b", (-5, 3, 3, 3), (4,)))), EVICT,
            forward([-1000, 2, 2, 9], (1, 0, 3)), EVICT)),
    Stream("eval never changes the table", MCH(5, LFU),
           (forward([1, 2, 2, 5]), EVAL, forward([3, 3, 3, 1]), EVICT, TRAIN, forward([3, 3, 3, 1]), EVICT, EVAL,
            forward([4, 4, 3]), TRAIN, forward([4, 4, 5]), EVICT)),
    Stream("pending evictions union", MCH(4, LRU),
           (forward([1, 1]), forward([2]), EVICT, EVICT, forward([3, 4]), forward([5, 5]), forward([1]), EVICT)),
    Stream("empty batches after the first", MCH(6, LFU, interval=2),
           (forward([1, 2, 2, 3]), forward([]), EVICT, forward([], (0, 0)), forward([4, 4]), EVICT, forward([]),
            EVICT)),
    Stream("LFU + dynamic threshold 0.75", MCH(6, Policy("LFU", filter=Filter("dynamic", 0.75))),
           (forward([5] * 5 + [4] * 4 + [3] * 3 + [2] * 2 + [1]), EVICT, forward([1, 1, 1, 6, 6, 7]), EVICT)),
    Stream("DistanceLFU + average threshold", MCH(6, Policy("DistanceLFU", filter=Filter("average"))),
           (forward([1, 1, 1, 2, 3, 3]), EVICT, forward([1, 2, 2, 2, 2]), EVICT, forward([3, 3, 4, 4, 4, 2]),
            EVICT)),
    Stream("LRU + average threshold, I=2", MCH(5, Policy("LRU", filter=Filter("average")), interval=2),
           (forward([1, 1, 2, 3, 3, 3]), forward([4, 4, 1]), EVICT, forward([5, 5, 6]), forward([2, 2]), EVICT)),
    Stream("remap is a pure lookup", MCH(5, LFU),
           (forward([1, 2, 2]), Step("remap", (("t", (1, 2, 3), (3,)),)), EVICT,
            Step("remap", (("t", (3, 3), (2,)),)), forward([3]), EVICT)),
)

# recspec's deliberate deviation (D37): not run against TorchRec, which drops the extra ids.
GROWING_WINDOW: Tuple[Stream, ...] = (
    Stream("window grows past 1.25 n I (sem. 14 TV10)", MCH(10, LFU, interval=2),
           (forward([1, 2]), forward([3, 4, 5, 6, 7]), EVICT, forward([8]), forward([8, 9, 9, 9]), EVICT)),
    Stream("empty first batch", MCH(5, LRU), (forward([]), forward([1, 2, 2]), EVICT, forward([3]), EVICT)),
)


def kjt(keys: Sequence[str], bags: Sequence[Sequence[Sequence[int]]], weights: bool = False) -> Step:
    """A forward on a KJT: bags[k][b] are the ids of sample b of keys[k] (weights 0.5, 1.5, ... if asked)."""
    lengths = [len(bag) for per_key in bags for bag in per_key]
    values = [int(v) for per_key in bags for bag in per_key for v in bag]
    w = [0.5 + i for i in range(len(values))] if weights else None
    return forward_kjt(eio.batch(list(keys), lengths, values, weights=w))


_T3 = (Table("t1", 5, ("f1", "f2")), Table("t2", 4, ("f3",)))
_BAGS = (Table("t1", 6, ("f1", "f2"), dim=3), Table("t2", 4, ("f3",), dim=2))
_SEQS = (Table("t1", 6, ("f1", "f2"), dim=3), Table("t2", 4, ("f3",), dim=3))
COLLECTIONS: Tuple[Stream, ...] = (
    Stream("two tables, keys in another fixed order, an unread key, weights", Tables(_T3), (
        kjt(["f3", "f1", "x", "f2"], [[[7, 7, 9], []], [[10], [11, -2]], [[99], [10]], [[12], []]], weights=True),
        EVICT,
        kjt(["f3", "f1", "x", "f2"], [[[8], [9, 9]], [[10, 13], []], [[], []], [[13, 13], [-2]]], weights=True), EVICT,
        EVAL, kjt(["f3", "f1", "x", "f2"], [[[8], [7]], [[14], [10]], [[1], [2]], [[], [11]]]), TRAIN,
        kjt(["f3", "f1", "x", "f2"], [[[6, 6, 6], []], [[14, 14], [15]], [[], []], [[16], [10]]]), EVICT)),
    Stream("DistanceLFU, I=2, empty bags and an empty feature", Tables(_T3, DLFU, interval=2), (
        kjt(["f1", "f2", "f3"], [[[1, 2], [], [3]], [[4], [4], []], [[5, 5], [6], []]]),
        kjt(["f1", "f2", "f3"], [[[], [], []], [[1, 1], [7], []], [[5], [], [6, 6]]]), EVICT,
        kjt(["f1", "f2", "f3"], [[[8, 8], [], [9]], [[], [], [2]], [[]] * 3]),
        kjt(["f1", "f2", "f3"], [[[3], [8], []], [[9], [], [1]], [[7], [7], []]]), EVICT)),
)

# recspec's deliberate deviations (D35, D36): not run against TorchRec, which answers them wrongly.
KEY_ORDER: Tuple[Stream, ...] = (
    Stream("keys in a different order on every call", Tables(_T3), (
        kjt(["f3", "f1", "f2"], [[[7]], [[10, 11]], [[12]]]), EVICT,
        kjt(["f1", "f2", "f3"], [[[10]], [[13, 13]], [[8, 8]]]), EVICT,
        kjt(["f2", "f3", "x", "f1"], [[[12]], [[7, 9]], [[1]], [[14]]]), EVICT)),
    Stream("MC-EBC, keys in a different order on every call", Wrapped(Tables(_BAGS)), (
        kjt(["f1", "f2", "f3"], [[[1, 2], []], [[3], [1, 1]], [[5, 5], [6]]]),
        kjt(["f3", "f2", "f1"], [[[11], [11]], [[2, 2, 2], []], [[], [1]]]))),
)
MODULE_ORDER: Tuple[Stream, ...] = (
    Stream("module dict in the reverse order of the configs", Tables(_T3, module_order=("t2", "t1")), (
        kjt(["f1", "f2", "f3"], [[[1, 2]], [[3]], [[4, 4]]]), EVICT,
        kjt(["f1", "f2", "f3"], [[[5]], [[1, 1]], [[6]]]), EVICT)),
)

WRAPPED: Tuple[Stream, ...] = (
    Stream("MC-EBC, LFU, I=1", Wrapped(Tables(_BAGS)), (
        kjt(["f1", "f2", "f3"], [[[1, 2], []], [[3], [1, 1]], [[5, 5], [6]]]),
        kjt(["f1", "f2", "f3"], [[[7, 7, 7], [8]], [[], [9, 9]], [[6], [10, 10]]]),
        EVAL, kjt(["f1", "f2", "f3"], [[[1], [7]], [[8], []], [[5], [6]]]), TRAIN,
        kjt(["f1", "f2", "f3"], [[[], [1]], [[2, 2, 2], []], [[11], [11]]]))),
    Stream("MC-EC, DistanceLFU, I=2", Wrapped(Tables(_SEQS, DLFU, interval=2, kind="EmbeddingConfig")), (
        kjt(["f1", "f2", "f3"], [[[1, 2], [3]], [[4], []], [[5, 5], [6]]]),
        kjt(["f1", "f2", "f3"], [[[7], [8]], [[1, 1], [2]], [[6], []]]),
        kjt(["f1", "f2", "f3"], [[[9, 9], []], [[3], [3]], [[7, 7, 7], [8]]]),
        kjt(["f1", "f2", "f3"], [[[], [4]], [[9], [10]], [[5], [8]]]))),
)


LARGE_OPS = ("forward",) * 6 + ("evict", "train", "eval")


def large_streams(count: int, seed: int = 0) -> Tuple[Stream, ...]:
    """Seeded streams over tables of 20 to 600 slots: batches of up to 800 Zipf-distributed ids
    (a few hot ids, a long tail, negative ids) from a pool Z/2 to 4 Z wide, any policy and
    deterministic filter, I 1..4, offsets, eval switches and evict() calls. The first batch is
    the largest and no batch is empty, so that they also run against TorchRec (D37, D42)."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for k in range(count):
        Z = int(rng.integers(20, 601))
        policy = replace(POLICIES[int(rng.integers(len(POLICIES)))], filter=FILTERS[int(rng.integers(len(FILTERS)))])
        spec = MCH(Z, policy, interval=int(rng.integers(1, 5)), offset=int(rng.integers(0, 3)) * 1000)
        pool = int(rng.integers(Z // 2 + 2, 4 * Z))
        steps: List[Step] = []
        for j in range(int(rng.integers(6, 16))):
            op = "forward" if j == 0 else LARGE_OPS[int(rng.integers(len(LARGE_OPS)))]
            if op == "forward":
                n = 800 if j == 0 else int(rng.integers(1, 801))
                ids = (rng.zipf(1.2, n) - 1 + rng.integers(-3, 3, n)) % pool - 3
                steps.append(forward(ids.tolist(), lengths=_split(rng, n)))
            else:
                steps.append({"evict": EVICT, "train": TRAIN, "eval": EVAL}[op])
        out.append(Stream(f"large table {k} (Z={Z})", spec, tuple(steps)))
    return tuple(out)


def _split(rng: np.random.Generator, n: int) -> Tuple[int, ...]:
    """n ids in 1 to 8 bags, some of them empty."""
    cuts = np.sort(rng.integers(0, n + 1, int(rng.integers(0, 8))))
    return tuple(int(x) for x in np.diff(np.concatenate([[0], cuts, [n]])))


def torchrec_fits(steps: Sequence[Step], interval: int) -> bool:
    """Whether TorchRec records every id of `steps` (run on a module that has not yet profiled):
    its window holds H = int(n I 1.25) ids, n = the first training batch's size, and is emptied
    every I training forwards (sem. 11.3 profile steps 3-5)."""
    training, capacity, used, count = True, None, 0, 0
    for step in steps:
        if step.op in ("train", "eval"):
            training = step.op == "train"
        if step.op != "forward" or not training:
            continue
        n = len(step.ids())
        if capacity is None:
            capacity = int(n * interval * 1.25)
            if n == 0:
                return False
        used += n
        count += 1
        if used > capacity:
            return False
        if count % interval == 0:
            used = 0
    return True


# --- random streams ------------------------------------------------------------------------------
POLICIES = (LFU, LRU, DLFU, Policy("LRU", 0.5), Policy("DistanceLFU", 2.0))
FILTERS: Tuple[Optional[Filter], ...] = (None, None, Filter("dynamic", 0.75), Filter("average"))
OFFSETS = (0, 0, 7, 1000)
KEYS = ("a", "b")

Pick = Callable[[Sequence[Any]], Any]
Integer = Callable[[int, int], int]


def compose(pick: Pick, integer: Integer, *, torchrec_safe: bool = False, probabilistic: bool = False,
            policies: Sequence[Policy] = POLICIES, max_steps: int = 14) -> Stream:
    """A random stream: Z in 2..8, one of the policies and filters, I in 1..4, an offset, hashing
    (x mod s) or not, ids from a pool Z/2 to 2 Z wide with negative ids (so that tables fill and
    residents compete), a non-empty first batch, then forwards (one or two features, empty bags,
    empty batches), evict(), train() and eval().
    torchrec_safe: no batch is larger than the first, so that TorchRec's window never overflows;
    probabilistic: the probabilistic filter may be drawn (its draws differ between packages)."""
    filters = FILTERS + ((Filter("probabilistic", 0.3),) if probabilistic else ())
    Z = integer(2, 8)
    policy = replace(pick(policies), filter=pick(filters))
    hashing = integer(0, 2) == 0
    spec = MCH(Z, policy, interval=integer(1, 4), offset=pick(OFFSETS),
               hash="mod" if hashing else None, hash_size=integer(3, 12) if hashing else MAX)
    lo, hi = -3, integer(max(2, Z // 2), 2 * Z)
    first = integer(1, 8)
    # TorchRec's dynamic filter divides by the number of ids in the window (ledger D42)
    least = 1 if torchrec_safe and policy.filter is not None and policy.filter.kind == "dynamic" else 0
    steps = [_batch(pick, integer, lo, hi, first, exact=True)]
    for _ in range(integer(1, max_steps)):
        op = pick(("forward", "forward", "forward", "forward", "forward", "evict", "train", "eval"))
        if op == "forward":
            steps.append(_batch(pick, integer, lo, hi, first if torchrec_safe else 10, least=least))
        else:
            steps.append({"evict": EVICT, "train": TRAIN, "eval": EVAL}[op])
    return Stream("random", spec, tuple(steps))


def _batch(pick: Pick, integer: Integer, lo: int, hi: int, cap: int, exact: bool = False, least: int = 0) -> Step:
    """One forward: one or two features of 1..3 bags of up to 4 ids, at most `cap` ids (exactly cap if exact),
    the first bag at least `least` long."""
    keys = KEYS[:integer(1, 2)] if not exact else KEYS[:1]
    features = []
    room = cap
    for key in keys:
        bags = integer(1, 3)
        lengths = []
        for b in range(bags):
            low = least if key == keys[0] and b == 0 else 0
            n = room if exact and b == bags - 1 else integer(low, max(low, min(room, 4)))
            lengths.append(n)
            room -= n
        ids = tuple(integer(lo, hi) for _ in range(sum(lengths)))
        features.append((key, ids, tuple(lengths)))
    return Step("forward", tuple(features))


COLLECTION_LAYOUTS = (
    ((("t1", ("f1",)),), ("f1",)),
    ((("t1", ("f1", "f2")), ("t2", ("f3",))), ("f1", "f2", "f3")),
    ((("t1", ("f1",)), ("t2", ("f2", "f3"))), ("f1", "f2", "f3")),
)


def compose_collection(pick: Pick, integer: Integer, *, torchrec_safe: bool = False, max_steps: int = 8,
                       wrapper: str = "") -> Stream:
    """A random ManagedCollisionCollection stream: one or two tables (Z 2..6) over one to three
    features, one policy and interval, batches of B 1..3 samples with bags of 0..3 ids (weights
    on some), evict(), train() and eval(). Without torchrec_safe the keys come in any order, with
    an unread key now and then; with it, one key order throughout, B fixed and a first batch of
    full bags, so that TorchRec's cached order and fixed windows hold (ledger D35, D37).
    wrapper "EmbeddingBagConfig" / "EmbeddingConfig": the same stream through an MC embedding
    collection over tables of dimension 2 (bags) or 3."""
    layout, features = pick(COLLECTION_LAYOUTS)
    dim = 3 if wrapper == "EmbeddingConfig" else 2
    tables = tuple(Table(name, integer(2, 6), feats, dim) for name, feats in layout)
    spec = Tables(tables, replace(pick(POLICIES), filter=pick(FILTERS)), interval=integer(1, 4),
                  kind=wrapper or "EmbeddingBagConfig")
    lo, hi = -2, integer(2, 10)
    B = integer(1, 3)
    # TorchRec's dynamic filter divides by the number of ids in the window (ledger D42)
    least = 1 if torchrec_safe and spec.policy.filter is not None and spec.policy.filter.kind == "dynamic" else 0
    order = list(features)
    steps: List[Step] = []
    for i in range(integer(2, max_steps)):
        # the MC embedding collections consume evictions in their forward: they have no evict()
        ops = ("forward", "forward", "forward", "train", "eval") + (() if wrapper else ("evict",))
        op = "forward" if i == 0 else pick(ops)
        if op != "forward":
            steps.append({"evict": EVICT, "train": TRAIN, "eval": EVAL}[op])
            continue
        if not torchrec_safe:
            B = integer(1, 3)
            order = [order[j] for j in _permutation(pick, len(order))]
        keys = order + (["x"] if not torchrec_safe and integer(0, 3) == 0 else [])
        bags = [[[integer(lo, hi) for _ in range(3 if torchrec_safe and i == 0 else integer(least, 3))]
                 for _ in range(B)] for _ in keys]
        steps.append(kjt(keys, bags, weights=integer(0, 1) == 1))
    return Stream("random collection", Wrapped(spec) if wrapper else spec, tuple(steps))


def _permutation(pick: Pick, n: int) -> List[int]:
    rest, out = list(range(n)), []
    while rest:
        out.append(rest.pop(pick(range(len(rest)))))
    return out


def random_stream(rng: np.random.Generator, collection: bool = False, **kwargs: Any) -> Stream:
    """compose() (or compose_collection()) driven by a NumPy Generator."""
    make = compose_collection if collection else compose
    return make(lambda options: options[int(rng.integers(len(options)))],
                lambda a, b: int(rng.integers(a, b + 1)), **kwargs)


try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - Hypothesis is a test dependency
    st = None

if st is not None:

    @st.composite
    def streams(draw: Any, collection: bool = False, **kwargs: Any) -> Stream:
        """compose() (or compose_collection()) as a Hypothesis strategy (shrinks to fewer steps,
        smaller ids and tables)."""
        make = compose_collection if collection else compose
        return make(lambda options: draw(st.sampled_from(options)), lambda a, b: draw(st.integers(a, b)), **kwargs)

