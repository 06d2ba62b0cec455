"""semantics.md section 14's test vectors (TV1-TV15), as data: each a stream and, per step, the
arrays TorchRec 1.8.0 showed after it (produced by TorchRec in a reference environment, not by
the implementation under test).

Expectation names follow mc_io.observe: "values[t]" (the remapped ids of JT t), "evict" (None:
evict() returned None), "state <buffer>" and "open_slots". M is the empty-slot sentinel 2^63 - 1.
TV10 (ids past TorchRec's fixed history window are dropped) is not here: recspec grows the
window instead, and the discrepancy record D37 runs TV10 on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
    forward_dict,
    forward_kjt,
)

M = MAX
RAW, MAP = "state _mch_sorted_raw_ids", "state _mch_remapped_ids_mapping"
COUNTS, LAST = "state _mch_counts", "state _mch_last_access_iter"
ITER, OPEN = "state _current_iter_tensor", "open_slots"
Expect = Dict[str, Optional[List[Any]]]


@dataclass(frozen=True, eq=False)
class Vector:
    name: str
    stream: Stream
    expected: Tuple[Expect, ...]  # one per step of the stream


UNCHECKED = "unchecked"  # an evict() result the vector does not state


def _row(ids: Sequence[int], out: Sequence[int], ev: Any, raw: Sequence[int] = (),
         map: Sequence[int] = (), counts: Sequence[int] = (), last: Sequence[int] = (),
         it: Optional[int] = None, open: Optional[int] = None) -> Tuple[Tuple[Step, Step], Tuple[Expect, Expect]]:
    """A forward on ids then evict(): the forward's output, then evict()'s result and the table."""
    after: Expect = {} if ev is UNCHECKED else {"evict": None if ev is None else list(ev)}
    for name, value in ((RAW, raw), (MAP, map), (COUNTS, counts), (LAST, last)):
        if value:
            after[name] = list(value)
    if it is not None:
        after[ITER] = [it]
    if open is not None:
        after[OPEN] = [open]
    return (forward(ids), EVICT), ({"values[t]": list(out)}, after)


def _vector(name: str, spec: MCH, rows: Sequence[Any], prefix: Sequence[Tuple[Step, Expect]] = (),
            suffix: Sequence[Tuple[Step, Expect]] = ()) -> Vector:
    steps: List[Step] = [s for s, _ in prefix]
    expected: List[Expect] = [e for _, e in prefix]
    for (s1, s2), (e1, e2) in rows:
        steps += [s1, s2]
        expected += [e1, e2]
    steps += [s for s, _ in suffix]
    expected += [e for _, e in suffix]
    return Vector(name, Stream(name, spec, tuple(steps)), tuple(expected))


B1, B2, B3, B4 = [10, 20, 20, 30], [40, 40, 40, 50], [10, 60, 60, 60, 60], [70, 80, 10, 10]
LFU, LRU, DLFU = Policy("LFU"), Policy("LRU"), Policy("DistanceLFU")

VECTORS: List[Vector] = [
    _vector("TV1 LFU, Z=5, I=1", MCH(5, LFU), [
        _row(B1, [2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], [1, 2, 1, 0, M], it=1, open=1),
        _row(B2, [0, 0, 0, 4], [0], [10, 20, 30, 40, M], [2, 1, 3, 0, 4], [1, 2, 1, 3, M], it=2, open=0),
        _row(B3, [2, 3, 3, 3, 3], [3], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [2, 2, 3, 4, M], it=3, open=0),
        _row(B4, [4, 4, 2, 2], [], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [4, 2, 3, 4, M], it=4, open=0)]),
    _vector("TV2 LFU, Z=5, I=2", MCH(5, LFU, interval=2), [
        _row(B1, [4, 4, 4, 4], None, [M, M, M, M, M], it=1, open=4),
        _row(B2, [0, 0, 0, 4], [0, 1, 2, 3], [10, 20, 30, 40, M], [2, 1, 3, 0, 4], [1, 2, 1, 3, M]),
        _row(B3, [2, 4, 4, 4, 4], None),
        _row(B4, [4, 4, 2, 2], [3], [10, 20, 40, 60, M], [2, 1, 0, 3, 4], [4, 2, 3, 4, M])]),
    _vector("TV3 LRU(1), Z=5, I=1", MCH(5, LRU), [
        _row(B1, [2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], last=[1, 1, 1, 0, 1]),
        _row(B2, [3, 3, 3, 0], [3, 0], [10, 20, 40, 50, M], [2, 1, 3, 0, 4], last=[1, 1, 2, 2, 2]),
        _row(B3, [2, 1, 1, 1, 1], [1], [10, 40, 50, 60, M], [2, 3, 0, 1, 4], last=[3, 2, 2, 3, 3]),
        _row(B4, [3, 0, 2, 2], [3, 0], [10, 60, 70, 80, M], [2, 1, 3, 0, 4], last=[4, 3, 4, 4, 4])]),
    _vector("TV4 LRU(1), Z=5, I=2", MCH(5, LRU, interval=2), [
        _row(B1, [4, 4, 4, 4], None),
        _row(B2, [0, 0, 0, 1], [0, 1, 2, 3], [10, 20, 40, 50, M], [3, 2, 0, 1, 4], last=[1, 1, 2, 2, 2]),
        _row(B3, [3, 4, 4, 4, 4], None),
        _row(B4, [0, 1, 3, 3], [0, 1, 2], [10, 60, 70, 80, M], [3, 2, 0, 1, 4], last=[4, 3, 4, 4, 4])]),
    _vector("TV5 DistanceLFU(1), Z=5, I=1", MCH(5, DLFU), [
        _row(B1, [2, 1, 1, 3], [1, 2, 3], [10, 20, 30, M, M], [2, 1, 3, 0, 4], [1, 2, 1, 0, M], [1, 1, 1, 0, 1]),
        _row(B2, [3, 3, 3, 0], [3, 0], [10, 20, 40, 50, M], [2, 1, 3, 0, 4], [1, 2, 3, 1, M], [1, 1, 2, 2, 2]),
        _row(B3, [2, 0, 0, 0, 0], [0], [10, 20, 40, 60, M], [2, 1, 3, 0, 4], [2, 2, 3, 4, M], [3, 1, 2, 3, 3]),
        _row(B4, [1, 4, 2, 2], [1], [10, 40, 60, 70, M], [2, 3, 0, 1, 4], [4, 3, 4, 1, M], [4, 2, 3, 4, 4])]),
    _vector("TV6 DistanceLFU(1), Z=5, I=2", MCH(5, DLFU, interval=2), [
        _row(B1, [4, 4, 4, 4], None),
        _row(B2, [0, 0, 0, 2], [0, 1, 2, 3], [10, 20, 40, 50, M], [3, 1, 0, 2, 4], [1, 2, 3, 1, M], [1, 1, 2, 2, 2]),
        _row(B3, [3, 4, 4, 4, 4], None),
        _row(B4, [2, 4, 3, 3], [1, 2], [10, 40, 60, 70, M], [3, 0, 1, 2, 4], [4, 3, 4, 1, M], [4, 2, 3, 4, 4])]),
]


def _tv7(policy: Policy, out: Sequence[int], ev: Sequence[int], raw: Sequence[int], map: Sequence[int],
         counts: Sequence[int] = (), last: Sequence[int] = ()) -> Vector:
    common = [_row([1, 1, 1, 1, 2, 3], [10, 10, 10, 10, 11, 12], [10, 11, 12]),
              _row([4, 4], [12, 12], [12]),
              _row([5, 5, 5], [11, 11, 11], [11], [1, 4, 5, M], [10, 12, 11, 13])]
    return _vector(f"TV7 {policy.describe()}, Z=4, I=1, off=10", MCH(4, policy, offset=10),
                   common + [_row([2, 6], out, ev, raw, map, counts, last)])


VECTORS += [
    _tv7(DLFU, [12, 13], [12], [1, 2, 5, M], [10, 12, 11, 13], [4, 1, 3, M], [1, 4, 3, 4]),
    _tv7(Policy("DistanceLFU", 2.0), [10, 12], [10, 12], [2, 5, 6, M], [10, 11, 12, 13], [1, 3, 1, M], [4, 3, 4, 4]),
    _tv7(Policy("LRU", 0.5), [12, 10], [12, 10], [2, 5, 6, M], [12, 11, 10, 13], last=[4, 3, 4, 4]),
    _tv7(Policy("LRU", 2.0), [12, 10], [12, 10], [2, 5, 6, M], [12, 11, 10, 13], last=[4, 3, 4, 4]),
    _vector("TV8 hashing x mod 7, off=100", MCH(5, LFU, offset=100, hash="mod", hash_size=7), [
        _row([3, 10, 17, 5], [102, 102, 102, 103], [102, 103], [3, 5, M, M, M], [102, 103, 100, 101, 104])],
        suffix=[(Step("remap", (("t", (3, 8), (2,)),)), {"values[t]": [102, 104]})]),  # remap does not hash
    _vector("TV9 eval", MCH(5, LFU), [], prefix=[
        (forward([1, 2]), {}), (EVAL, {}),
        (forward([3, 3, 3, 1]), {"values[t]": [4, 4, 4, 2], ITER: [1], RAW: [1, 2, M, M, M]}),
        (TRAIN, {}), (forward([3, 3, 3, 1]), {"values[t]": [1, 1, 1, 2], ITER: [2]})]),
    _vector("TV11 two features in one dict", MCH(10, LFU), [], prefix=[
        (forward_dict({"a": [1, 2], "b": [2, 3, 3]}), {"values[a]": [8, 6], "values[b]": [6, 7, 7]})]),
    _vector("TV12 pending union", MCH(4, LFU), [], prefix=[
        (forward([1]), {}), (forward([2]), {}), (EVICT, {"evict": [1, 2]}), (EVICT, {"evict": None})]),
    _vector("TV13 DistanceLFU + average threshold, Z=6", MCH(6, Policy("DistanceLFU", filter=Filter("average"))), [
        _row([1, 1, 1, 2, 3, 3], [4, 4, 4, 5, 5, 5], UNCHECKED, [1, M, M, M, M, M], counts=[3, 0, 0, 0, 0, M],
             last=[1, 0, 0, 0, 0, 1]),
        _row([1, 2, 2, 2, 2], [4, 3, 3, 3, 3], UNCHECKED, [1, 2, M, M, M, M], counts=[3, 4, 0, 0, 0, M],
             last=[1, 2, 0, 0, 0, 2])]),
]
# TV15: TorchRec's own tests (pre-seeded tables are loaded through load_state_dict).
_PRESET = ((RAW[6:], (4, 5, M, M, M)), (COUNTS[6:], (10, 1, 0, 0, 0)))


def _profile(name: str, spec: MCH, batches: Sequence[Sequence[int]], raw: Sequence[int],
             counts: Sequence[int] = (), last: Sequence[int] = (), preset: Any = (),
             opens: Sequence[Optional[int]] = ()) -> Vector:
    steps, expected = [], []
    for i, ids in enumerate(batches):
        steps.append(forward(ids))
        expected.append({OPEN: [opens[i]]} if i < len(opens) and opens[i] is not None else {})
    final = expected[-1]
    final[RAW] = list(raw)
    if counts:
        final[COUNTS] = list(counts)
    if last:
        final[LAST] = list(last)
    return Vector(name, Stream(name, spec, tuple(steps), preset=preset), tuple(expected))


VECTORS += [
    _profile("TV15 LFU, pre-seeded table", MCH(5, LFU), [[3, 4, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 10]],
             [4, 6, 7, 8, M], [11, 3, 3, 3, M], preset=_PRESET),
    _profile("TV15 LRU(1)", MCH(5, LRU), [[5, 6, 7], [3, 4, 5], [7, 8]], [3, 4, 7, 8, M],
             last=[2, 2, 3, 3, 3], opens=[1, 0]),
    _profile("TV15 DistanceLFU(1)", MCH(5, DLFU), [[5, 5, 5, 5, 5, 6], [3, 4], [7, 8]], [3, 5, 7, 8, M],
             [1, 5, 1, 1, M], [2, 1, 3, 3, 3]),
    _profile("TV15 DistanceLFU(10)", MCH(5, Policy("DistanceLFU", 10.0)), [[5, 5, 5, 5, 5, 6], [3, 4], [7, 8]],
             [3, 4, 7, 8, M], [1, 1, 1, 1, M], [2, 2, 3, 3, 3]),
    _profile("TV15 LFU + dynamic(0.75)", MCH(5, Policy("LFU", filter=Filter("dynamic", 0.75))),
             [[5] * 5 + [4] * 4 + [3] * 3 + [2] * 2 + [1]], [3, 4, 5, M, M], [3, 4, 5, 0, M]),
    _profile("TV15 LFU + average, pre-seeded table", MCH(5, Policy("LFU", filter=Filter("average"))),
             [[3, 4, 5, 6, 6, 6, 7, 8, 8, 9, 10]], [4, 5, 6, 8, M], [10, 1, 3, 2, M], preset=_PRESET),
]

# TV14: a ManagedCollisionCollection (extra key x dropped; output in config feature order).
_TV14_TABLES = Tables((Table("t1", 4, ("f1", "f2")), Table("t2", 3, ("f3",))))
_TV14_BATCH = eio.batch(["f3", "f1", "x", "f2"], [2, 0, 1, 1, 1, 1, 1, 0], [7, 7, 10, 11, 99, 10, 12],
                        weights=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
COLLECTION_VECTORS: List[Vector] = [
    Vector("TV14 ManagedCollisionCollection", Stream("TV14", _TV14_TABLES, (forward_kjt(_TV14_BATCH),)), ({
        "keys": ["f1", "f2", "f3"], "values": [0, 1, 2, 1, 1], "lengths": [1, 1, 1, 0, 2, 0],
        "weights": [0.3, 0.4, 0.7, 0.1, 0.2],
        "state _managed_collision_modules.t1._mch_sorted_raw_ids": [10, 11, 12, M],
        "state _managed_collision_modules.t2._mch_sorted_raw_ids": [7, M, M]},)),
]


# TV15's test_zch_ebc_ec_train: a ManagedCollisionEmbeddingBagCollection, Z=20, I=2, DistanceLFU.
def _zch_batch(f1: Sequence[int], f2: Sequence[int]) -> eio.Batch:
    return eio.batch(["f1", "f2", "f3"], [5, 5, 5, 5, 5, 5], list(f1) + list(f2) + list(range(1020, 1030)))


_ZCH = Tables((Table("t1", 20, ("f1", "f2"), dim=4),), DLFU, interval=2)
_F1, _F2, _F1B = list(range(1000, 1010)), list(range(1010, 1020)), list(range(2000, 2010))
WRAPPED_VECTORS: List[Vector] = [
    Vector("TV15 test_zch_ebc_ec_train (MC-EBC)", Stream("TV15 zch", Wrapped(_ZCH), (
        forward_kjt(_zch_batch(_F1, _F2)), forward_kjt(_zch_batch(_F1, _F2)),
        forward_kjt(_zch_batch(_F1B, _F2)), forward_kjt(_zch_batch(_F1B, _F2)))), (
        {"remapped keys": ["f1", "f2"], "remapped values": [19] * 20},
        {"remapped values": list(range(19)) + [19]},
        {"remapped values": [19] * 10 + list(range(10, 19)) + [19]},
        {"remapped values": list(range(1, 10)) + [19] + list(range(10, 19)) + [0]})),
]
