"""Demonstrations of the managed-collision entries of the discrepancy ledger (D20-D30, D32, D35-D41).

Each check runs on refimpl and the package under test; against TorchRec it demonstrates
TorchRec's half (what TorchRec does that recspec does not), so a discrepancy record passes on
either side exactly while its ledger entry holds.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Dict, List, Sequence

import numpy as np

from conformance.properties import embeddings_io as eio
from conformance.properties import mc_io as io
from conformance.properties.embeddings_checks import outcome_of
from conformance.properties.embeddings_discrepancies import _raises
from conformance.properties.mc_checks import sides
from conformance.properties.mc_io import MAX, Policy, Table, Tables
from conformance.records import Record
from conformance.runner import Context, Outcome

LFU = Policy("LFU")


def _values(result: Dict[str, Any], key: str = "t") -> List[int]:
    return io.to_numpy(result[key].values()).tolist()


def _forward(module: Any, package: str, ids: Sequence[int], key: str = "t", **kwargs: Any) -> List[int]:
    return _values(module({key: io.jagged(package, ids, [len(ids)])}, **kwargs), key)


def _mch(package: str, zch_size: int = 4, **kwargs: Any) -> Any:
    return io.mc_modules(package).MCHManagedCollisionModule(
        zch_size=zch_size, device=io._device(package, "cpu"), eviction_policy=LFU.build(package),
        eviction_interval=kwargs.pop("eviction_interval", 1), **kwargs)


def _per_feature(kjt: Any) -> Dict[str, List[int]]:
    return {k: io.to_numpy(jt.values()).tolist() for k, jt in kjt.to_dict().items()}


def _run(package: str, fn: Any) -> Any:
    with io.running(package):
        return fn()


def check_d20(record: Record, ctx: Context) -> Outcome:
    """apply_mc_method_to_jt_dict(mc_module, method, features_dict) == getattr(mc_module, method)(features_dict)
    everywhere; the page's form (method, features_dict, table_to_features, managed_collisions) raises
    TypeError in TorchRec and gives the same result in refimpl and accel."""
    problems = []
    for package in sides(record, ctx):
        mod = io.mc_modules(package)

        def demo() -> None:
            m = _mch(package, 6)
            _forward(m, package, [1, 2, 2])
            jt = {"t": io.jagged(package, [2, 1, 7], [3])}
            direct = _values(m.remap(jt))
            got = _values(mod.apply_mc_method_to_jt_dict(m, "remap", jt))
            if got != direct:
                problems.append(f"{package}: apply(m, 'remap', d) gave {got}, m.remap(d) {direct}")
            page = lambda: mod.apply_mc_method_to_jt_dict("remap", jt, {"t": ["t"]}, {"t": m})  # noqa: E731
            if package == "torchrec":
                problem = _raises(page, TypeError, "positional")
                if problem:
                    problems.append(f"torchrec: the page's 4-argument form: {problem}")
            elif _values(page()) != direct:
                problems.append(f"{package}: the page's 4-argument form gave {_values(page())}, m.remap(d) {direct}")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def check_d21(record: Record, ctx: Context) -> Outcome:
    """ManagedCollisionModule(device, output_segments) constructs everywhere; the page's
    ManagedCollisionModule(device) raises TypeError (missing output_segments) in TorchRec and builds a
    module with no segments (all -1) in refimpl and accel."""
    problems = []
    for package in sides(record, ctx):
        cls = io.mc_modules(package).ManagedCollisionModule
        device = io._device(package, "cpu")
        try:
            cls(device, [0, 4])
        except Exception as exc:  # the failure is the finding
            problems.append(f"{package}: ManagedCollisionModule(device, [0, 4]) raised {type(exc).__name__}: {exc}")
        if package == "torchrec":
            problem = _raises(lambda: cls(device), TypeError, "output_segments")
            if problem:
                problems.append(f"torchrec: the page's ManagedCollisionModule(device): {problem}")
        else:
            try:
                segments = io.to_numpy(cls(device).state_dict()["_output_segments_tensor"])
                if (segments != -1).any():
                    problems.append(f"{package}: ManagedCollisionModule(device) segments {segments[:4]}, expected all -1")
            except Exception as exc:  # the failure is the finding
                problems.append(f"{package}: ManagedCollisionModule(device) raised {type(exc).__name__}: {exc}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d22(record: Record, ctx: Context) -> Outcome:
    """input_hash_size defaults to 2^63 - 1 (the page says 2^63)."""
    problems = []
    for package in sides(record, ctx):
        size = _mch(package).input_size()
        if size != 2**63 - 1:
            problems.append(f"{package}: default input_size() {size}, expected 2**63 - 1")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d23(record: Record, ctx: Context) -> Outcome:
    """Z=4, output_global_offset=10, ids 1..5 in one LFU round: outputs [10, 11, 12, 13, 13], i.e.
    [off, off + Z - 1] inclusive, off + Z - 1 the shared miss id (page: [off, off + Z - 1))."""
    problems = []
    for package in sides(record, ctx):
        got = _run(package, lambda: _forward(_mch(package, 4, output_global_offset=10), package, [1, 2, 3, 4, 5]))
        if got != [10, 11, 12, 13, 13]:
            problems.append(f"{package}: outputs {got}, expected [10, 11, 12, 13, 13]")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d24(record: Record, ctx: Context) -> Outcome:
    """mch_size and mch_hash_func are accepted and ignored: output_size() stays zch_size and the
    outputs equal those of a module built without them (the page: ids shifted into a residual range)."""
    problems = []
    for package in sides(record, ctx):
        def demo() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchRec logs a deprecation warning
                m = _mch(package, 4, mch_size=100, mch_hash_func=io.mod_hash)
            plain = _mch(package, 4)
            ids = [5, 1, 5, 9, 2, 7]
            got, want = _forward(m, package, ids), _forward(plain, package, ids)
            if m.output_size() != 4 or got != want:
                problems.append(f"{package}: output_size() {m.output_size()}, outputs {got}, without mch_size {want}")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def check_d25(record: Record, ctx: Context) -> Outcome:
    """rebuild_with_output_id_range((10, 13), output_segments=[10, 13]) gives an empty module with
    Z = 3 and offset 10, everywhere; forward takes mutate_miss_lengths (ignored). The page's
    rebuild_with_output_id_range((a, b)) raises TypeError in TorchRec; refimpl and accel default
    output_segments to [a, b]."""
    problems = []
    for package in sides(record, ctx):
        def demo() -> None:
            m = _mch(package, 5)
            _forward(m, package, [1, 2])
            r = m.rebuild_with_output_id_range((10, 13), [10, 13])
            got = _forward(r, package, [4, 4, 5, 6, 7], mutate_miss_lengths=False)
            slots = io.to_numpy(r.open_slots()).tolist()
            # ids 4 (twice), 5, 6, 7 into two free slots: 4 and 5 win, taking slots 0 and 1 (10, 11)
            if r.output_size() != 3 or slots != [0] or got != [10, 10, 11, 12, 12]:
                problems.append(f"{package}: rebuilt module: output_size {r.output_size()}, open slots {slots}, "
                                f"outputs {got} (expected 3, [0], [10, 10, 11, 12, 12])")
            if package == "torchrec":
                problem = _raises(lambda: m.rebuild_with_output_id_range((0, 2)), TypeError, "output_segments")
                if problem:
                    problems.append(f"torchrec: the page's rebuild form: {problem}")
            else:
                page = m.rebuild_with_output_id_range((10, 13))
                segments = io.to_numpy(page.state_dict()["_output_segments_tensor"])[:3].tolist()
                if page.output_size() != 3 or segments != [10, 13, -1]:
                    problems.append(f"{package}: the page's rebuild form: output_size {page.output_size()}, "
                                    f"segments {segments} (expected 3, [10, 13, -1])")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def check_d26(record: Record, ctx: Context) -> Outcome:
    """eviction_interval=1 is accepted; 0 raises: TorchRec an AssertionError whose message says
    "> 1", recspec a ValueError naming eviction_interval, the expected and the received value."""
    problems = []
    for package in sides(record, ctx):
        _mch(package, eviction_interval=1)
        if package == "torchrec":
            problem = _raises(lambda: _mch(package, eviction_interval=0), AssertionError, "> 1")
        else:
            problem = _raises(lambda: _mch(package, eviction_interval=0), ValueError, "eviction_interval")
        if problem:
            problems.append(f"{package}: {problem}")
    return outcome_of(problems, len(sides(record, ctx)))


PROBABILISTIC_IDS = 20000


def check_d27(record: Record, ctx: Context) -> Outcome:
    """probabilistic_threshold_filter at p = 0.01 passes an id seen 100 times with probability
    1 - 0.99^100 = 0.634 (the page: 60%): over 20000 such ids the pass rate is within 0.015 of
    0.634 (7 standard deviations; 0.60 is 10 away)."""
    problems = []
    want = 1 - 0.99**100
    for package in sides(record, ctx):
        f = io.Filter("probabilistic", 0.01).build(package, ctx.seed)
        counts = np.full(PROBABILISTIC_IDS, 100, dtype=np.int64)
        if package != "refimpl":
            import torch

            counts = torch.as_tensor(counts)
        mask, _ = _run(package, lambda: f(counts))
        rate = float(io.to_numpy(mask).astype(bool).mean())
        if abs(rate - want) > 0.015:
            problems.append(f"{package}: pass rate {rate:.4f}, expected {want:.4f} +- 0.015")
    return outcome_of(problems, len(sides(record, ctx)))


def _tables(order: Sequence[str] = ("t1", "t2")) -> Tables:
    return Tables((Table("t1", 5, ("f1", "f2")), Table("t2", 4, ("f3",))), module_order=tuple(order))


def check_d28(record: Record, ctx: Context) -> Outcome:
    """ManagedCollisionCollection takes embedding_configs (and need_preprocess); the page's
    parameter text `embedding_confgs` raises TypeError everywhere."""
    problems = []
    spec = _tables()
    for package in sides(record, ctx):
        cls = io.mc_modules(package).ManagedCollisionCollection
        cls(spec.modules(package), embedding_configs=spec.configs(package), need_preprocess=True)
        problem = _raises(lambda: cls(spec.modules(package), embedding_confgs=spec.configs(package)), TypeError,
                          "embedding_confgs")
        if problem:
            problems.append(f"{package}: {problem}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d29(record: Record, ctx: Context) -> Outcome:
    """ManagedCollisionEmbeddingBagCollection takes embedding_bag_collection and
    managed_collision_collection (a collection); the page's embedding_module= /
    managed_collision_modules= keywords raise TypeError everywhere."""
    problems = []
    spec = Tables((Table("t", 4, ("f",)),))
    for package in sides(record, ctx):
        wrapper = io.mc_embedding_modules(package).ManagedCollisionEmbeddingBagCollection

        def demo() -> None:
            configs = spec.configs(package)
            emb = _ebc(package, configs)
            mcc = spec.build(package, configs=configs)
            wrapper(embedding_bag_collection=emb, managed_collision_collection=mcc,
                    allow_in_place_embed_weight_update=False)
            problem = _raises(lambda: wrapper(embedding_module=emb, managed_collision_modules=mcc), TypeError,
                              "embedding_module")
            if problem:
                problems.append(f"{package}: {problem}")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def _ebc(package: str, configs: List[Any], bags: bool = True) -> Any:
    name = "EmbeddingBagCollection" if bags else "EmbeddingCollection"
    if package == "refimpl":
        import refimpl.modules.embedding_modules as em

        return getattr(em, name)(configs, rng=np.random.default_rng(0))
    return eio.adapters.module_class(package, name)(configs)


def check_d30(record: Record, ctx: Context) -> Outcome:
    """After a forward that admits ids 1 and 2 into an MC-EBC table, TorchRec's rows are unchanged
    (its evict is a no-op, and mc_embedding_modules.evict returns None); recspec re-initialises
    exactly the rows whose slot changed owner, inside the init bounds +-sqrt(1/rows), and keeps
    them with reinitialize_evicted_rows=False (TorchRec's behaviour, on request)."""
    from conformance.properties.mc_wrapped import _owner_changes

    problems = []
    spec = io.Wrapped(Tables((Table("t", 5, ("f",), dim=3),)))
    stream = io.Stream("D30", spec, (io.forward_kjt(eio.batch(["f"], [2, 1], [1, 2, 2])),))
    for package in sides(record, ctx):
        def demo() -> None:
            module = io.build(stream, package)
            before = io.state_of(module)
            io.observe(module, stream.steps[0], package)
            after = io.state_of(module)
            key = "_embedding_module.embedding_bags.t.weight"
            changed = np.nonzero(np.any(after[key] != before[key], axis=1))[0].tolist()
            owners = _owner_changes(before, after, "t")
            if package == "torchrec":
                result = io.mc_embedding_modules(package).evict({"t": None}, module._embedding_module)
                if changed or result is not None or not owners:
                    problems.append(f"torchrec: rows {changed} changed after admitting into slots {owners}; "
                                    f"evict() returned {result!r}")
                return
            if changed != owners or not owners or np.abs(after[key][owners]).max() > np.sqrt(1 / 5):
                problems.append(f"{package}: re-initialised rows {changed}, slots that changed owner {owners}")
            keep = io.wrapped(spec.tables, package, reinitialize_evicted_rows=False)
            kept = io.state_of(keep)[key]
            io.observe(keep, stream.steps[0], package)
            if not np.array_equal(io.state_of(keep)[key], kept):
                problems.append(f"{package}: reinitialize_evicted_rows=False still changed rows")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def check_d32(record: Record, ctx: Context) -> Outcome:
    """Output ids lie in [off, off + Z), not [0, max_output_id): with off = 10 every output id of
    a batch with hits and misses is >= 10 and < 14."""
    problems = []
    for package in sides(record, ctx):
        def demo() -> List[int]:
            m = _mch(package, 4, output_global_offset=10)
            return _forward(m, package, [3, 3, 8]) + _forward(m, package, [8, 9, 3, 1, 2])

        got = _run(package, demo)
        if min(got) < 10 or max(got) >= 14 or 13 not in got:
            problems.append(f"{package}: outputs {got}, expected all in [10, 14) with the miss id 13")
    return outcome_of(problems, len(sides(record, ctx)))


def _collection_run(package: str, spec: Tables, batches: Sequence[eio.Batch]) -> Any:
    with io.running(package):
        mcc = spec.build(package)
        outs = [_per_feature(mcc(eio.to_kjt(b, package, np.float32))) for b in batches]
        return outs, io.state_of(mcc)


def check_d35(record: Record, ctx: Context) -> Outcome:
    """A collection called with keys [f3, f1, f2] and then [f1, f2, f3]: recspec remaps each feature
    as if the keys came in one order (the second batch, permuted back, gives the same per-feature
    ids and state); TorchRec reuses the first call's cached permutation, so f1, f2, f3 swap ids."""
    problems = []
    spec = _tables()
    first = eio.batch(["f3", "f1", "f2"], [2, 1, 1], [7, 7, 10, 11])
    second = eio.batch(["f1", "f2", "f3"], [2, 1, 1], [10, 12, 12, 8])
    for package in sides(record, ctx):
        outs, state = _collection_run(package, spec, [first, second])
        ref_outs, ref_state = _collection_run(package, spec, [first, second.permuted([2, 0, 1])])
        same = outs == ref_outs and all(np.array_equal(state[k], ref_state[k]) for k in state)
        if same == (package == "torchrec"):
            problems.append(f"{package}: key order {'ignored' if same else 'changed the result'}: {outs[1]} vs "
                            f"{ref_outs[1]}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d36(record: Record, ctx: Context) -> Outcome:
    """A collection whose module dict lists t2 before t1 (configs t1, t2): recspec pairs modules and
    tables by name (same ids and state as the dict in config order); TorchRec pairs them by
    position, so f1 and f2's ids go into t2's module."""
    problems = []
    b = eio.batch(["f1", "f2", "f3"], [2, 1, 2], [1, 2, 3, 4, 4])
    for package in sides(record, ctx):
        outs, state = _collection_run(package, _tables(("t2", "t1")), [b])
        ref_outs, ref_state = _collection_run(package, _tables(), [b])
        same = outs == ref_outs and all(np.array_equal(state[k], ref_state[k]) for k in ref_state)
        if same == (package == "torchrec"):
            problems.append(f"{package}: module dict order {'ignored' if same else 'changed the result'}: "
                            f"{outs} vs {ref_outs}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d37(record: Record, ctx: Context) -> Outcome:
    """sem. 14 TV10: LFU, Z=10, I=2, batches [1, 2] then [3..7]: TorchRec's window holds
    int(2 * 2 * 1.25) = 5 ids, so 6 and 7 are dropped (raw [1..5]); recspec's grows (raw [1..7]).
    An empty first batch: TorchRec never records anything (open slots stay Z - 1); recspec learns."""
    problems = []
    for package in sides(record, ctx):
        def demo() -> Any:
            m = _mch(package, 10, eviction_interval=2)
            _forward(m, package, [1, 2])
            _forward(m, package, [3, 4, 5, 6, 7])
            raw = [int(x) for x in io.state_of(m)["_mch_sorted_raw_ids"] if x != MAX]
            empty = _mch(package, 5)
            _forward(empty, package, [])
            _forward(empty, package, [1, 2, 2])
            return raw, io.to_numpy(empty.open_slots()).tolist()

        raw, open_slots = _run(package, demo)
        want = ([1, 2, 3, 4, 5], [4]) if package == "torchrec" else ([1, 2, 3, 4, 5, 6, 7], [2])
        if (raw, open_slots) != want:
            problems.append(f"{package}: managed ids {raw}, open slots after an empty first batch {open_slots}; "
                            f"expected {want}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d38(record: Record, ctx: Context) -> Outcome:
    """An MC-EBC given equal copies of the configs (not the same objects): TorchRec raises
    AssertionError (its configs compare by init_fn identity); recspec accepts it, and the
    wrapper remaps as one built from the same config objects."""
    problems = []
    spec = Tables((Table("t", 5, ("f",), dim=2),))
    b = eio.batch(["f"], [2, 1], [3, 4, 4])
    for package in sides(record, ctx):
        wrapper = io.mc_embedding_modules(package).ManagedCollisionEmbeddingBagCollection

        def demo() -> None:
            emb = _ebc(package, spec.configs(package))
            build = lambda: wrapper(emb, spec.build(package), return_remapped_features=True)  # noqa: E731
            if package == "torchrec":
                problem = _raises(build, AssertionError)
                if problem:
                    problems.append(f"torchrec: equal configs: {problem}")
                return
            try:
                _, remapped = build()(eio.to_kjt(b, package, np.float32))
            except Exception as exc:  # the failure is the finding
                problems.append(f"{package}: equal configs raised {type(exc).__name__}: {exc}")
                return
            got = io.to_numpy(remapped.values()).tolist()
            if got != [3, 2, 2]:
                problems.append(f"{package}: remapped ids {got}, expected [3, 2, 2]")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def check_d39(record: Record, ctx: Context) -> Outcome:
    """Ids recspec refuses, with the state untouched, where TorchRec goes on: int32 ids (TorchRec:
    RuntimeError after profiling advanced the iteration), the reserved id 2^63 - 1 (TorchRec maps
    it to an empty slot's output id), and a hash outside [0, input_hash_size) (TorchRec stores it)."""
    problems = []
    for package in sides(record, ctx):
        def demo() -> None:
            m = _mch(package, 5)
            _forward(m, package, [1, 2])
            before = io.state_of(m)
            bad = {"t": io.jagged(package, [3, 3], [2], dtype="int32")}
            if package == "torchrec":
                problem = _raises(lambda: m(bad), RuntimeError)
                moved = io.state_of(m)["_current_iter_tensor"].tolist() != before["_current_iter_tensor"].tolist()
                if problem or not moved:
                    problems.append(f"torchrec: int32 ids: {problem or 'the iteration did not advance'}")
                if _forward(_mch(package, 5), package, [MAX]) != [0]:
                    problems.append("torchrec: the id 2**63 - 1 did not map to output 0 on an empty table")
                hashed = _mch(package, 5, input_hash_size=7, input_hash_func=io.shifted_hash)
                _forward(hashed, package, [3])
                if 10 not in io.state_of(hashed)["_mch_sorted_raw_ids"].tolist():
                    problems.append("torchrec: a hash of 3 to 10 >= input_hash_size 7 was not stored")
                return
            for label, call, exc, pattern in (
                    ("int32 ids", lambda: m(bad), TypeError, r"int64"),
                    ("id 2**63 - 1", lambda: _forward(m, package, [4, MAX]), ValueError,
                     r"2\*\*63 - 1|2\^63 - 1|9223372036854775807"),
                    ("hash out of range", lambda: _forward(_hash_module(package), package, [3]), ValueError,
                     r"input_hash")):
                problem = _raises_matching(call, exc, pattern)
                if problem:
                    problems.append(f"{package}: {label}: {problem}")
            changed = [k for k, v in io.state_of(m).items() if not np.array_equal(v, before[k])]
            if changed:
                problems.append(f"{package}: the refused calls changed {changed}")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def _raises_matching(call: Any, exception: type, pattern: str) -> str:
    """'' when call() raises `exception` with a message matching the regular expression `pattern`."""
    try:
        call()
    except exception as exc:
        return "" if re.search(pattern, str(exc)) else f"{type(exc).__name__}({exc}) does not match {pattern!r}"
    except Exception as exc:  # the wrong exception is the finding
        return f"raised {type(exc).__name__}({exc}), expected {exception.__name__}"
    return f"raised nothing, expected {exception.__name__}"


def _hash_module(package: str) -> Any:
    return _mch(package, 5, input_hash_size=7, input_hash_func=io.shifted_hash)


def check_d40(record: Record, ctx: Context) -> Outcome:
    """zch_size=1 (a table that is only the sentinel): TorchRec accepts it and maps every id to
    output 0; recspec raises ValueError naming zch_size (at least 2: one slot is the miss id)."""
    problems = []
    for package in sides(record, ctx):
        if package == "torchrec":
            got = _run(package, lambda: _forward(_mch(package, 1), package, [1, 2, 2]))
            if got != [0, 0, 0]:
                problems.append(f"torchrec: zch_size=1 outputs {got}, expected [0, 0, 0]")
            continue
        problem = _raises(lambda: _mch(package, 1), ValueError, "zch_size")
        if problem:
            problems.append(f"{package}: {problem}")
    return outcome_of(problems, len(sides(record, ctx)))


def check_d41(record: Record, ctx: Context) -> Outcome:
    """A feature the collection needs, missing after a good first call: TorchRec's cached
    permutation raises IndexError; recspec raises ValueError naming the feature (as on a first call)."""
    problems = []
    good = eio.batch(["f1", "f2", "f3"], [1, 1, 1], [1, 2, 3])
    missing = eio.batch(["f1", "f3"], [1, 1], [1, 3])
    for package in sides(record, ctx):
        def demo() -> None:
            mcc = _tables().build(package)
            mcc(eio.to_kjt(good, package, np.float32))
            call = lambda: mcc(eio.to_kjt(missing, package, np.float32))  # noqa: E731
            problem = _raises(call, IndexError) if package == "torchrec" else _raises(call, ValueError, "f2")
            if problem:
                problems.append(f"{package}: {problem}")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))


def check_d42(record: Record, ctx: Context) -> Outcome:
    """An eviction round over an empty window (I = 1, an empty batch) with the dynamic threshold
    filter: TorchRec's filter divides by the number of unique ids and raises ZeroDivisionError;
    recspec's round admits nothing (evict() returns an empty array, the table is unchanged)."""
    problems = []
    policy = Policy("LFU", filter=io.Filter("dynamic", 0.75))
    for package in sides(record, ctx):
        def demo() -> None:
            m = io.MCH(5, policy).build(package)
            _forward(m, package, [1, 1, 2])
            m.evict()
            before = io.state_of(m)["_mch_sorted_raw_ids"].tolist()
            if package == "torchrec":
                problem = _raises(lambda: _forward(m, package, []), ZeroDivisionError)
                if problem:
                    problems.append(f"torchrec: {problem}")
                return
            out = _forward(m, package, [])
            ev = m.evict()
            after = io.state_of(m)["_mch_sorted_raw_ids"].tolist()
            if out != [] or ev is None or io.to_numpy(ev).size or after != before:
                problems.append(f"{package}: outputs {out}, evict() {ev!r}, table {after} (before {before})")

        _run(package, demo)
    return outcome_of(problems, len(sides(record, ctx)))
