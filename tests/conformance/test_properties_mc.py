"""The managed-collision records as tests, plus checks of their harness (conformance.properties.mc*).

Ids are `module/property`, so `pytest -k "MCHManagedCollisionModule/forward"` selects like
`--module/--property`. The TorchRec-backed tests skip without TorchRec.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given

from conformance import ledger
from conformance.properties import RECORDS, mc
from conformance.properties import mc_checks as mk
from conformance.properties import mc_invariants as mi
from conformance.properties import mc_io as io
from conformance.properties import mc_streams as ms
from conformance.properties import mc_vectors as mv
from conformance.properties import mc_wrapped as mw
from conformance.properties.mc_io import EVAL, EVICT, MAX, MCH, TRAIN, Policy, Stream, forward
from conformance.runner import FAIL, PASS, SKIP, Context, run_record

TORCHREC_REASON = "TorchRec 1.8 is optional; with it the MC records also run against TorchRec itself"
MC_CLASSES = ("MCHManagedCollisionModule", "LFU_EvictionPolicy", "LRU_EvictionPolicy", "DistanceLFU_EvictionPolicy",
              "ManagedCollisionCollection", "ManagedCollisionEmbeddingBagCollection",
              "ManagedCollisionEmbeddingCollection", "dynamic_threshold_filter", "average_threshold_filter",
              "probabilistic_threshold_filter", "ManagedCollisionModule", "apply_mc_method_to_jt_dict", "evict")


@pytest.fixture(scope="module")
def ctx():
    return Context()


def _record(record_id):
    return next(r for r in mc.RECORDS if r.id == record_id)


@pytest.mark.parametrize("record", mc.RECORDS, ids=lambda r: r.id)
def test_record(record, ctx):
    row = run_record(record, ctx)
    assert row.status == PASS, f"{row.detail}\nrepro: {row.repro}"


def test_records_are_registered_and_cover_every_class():
    ids = {r.id for r in RECORDS}
    assert {r.id for r in mc.RECORDS} <= ids
    assert {r.module for r in mc.RECORDS} == set(MC_CLASSES)


@pytest.mark.parametrize("kind", ["forward", "invariant", "error", "golden", "discrepancy"])
def test_mch_has_every_kind(kind):
    assert any(r.module == "MCHManagedCollisionModule" and r.kind == kind for r in mc.RECORDS)


def test_every_mc_record_can_run_against_torchrec_unless_it_is_an_error_record():
    # ids are int64: float32 in dtypes keeps the runner from skipping them as float64-only
    assert all("float32" in r.dtypes for r in mc.RECORDS)


def test_mc_ledger_entries_have_their_records():
    entries = ledger.load()
    demonstrated = {r.discrepancy: r.id for r in mc.RECORDS if r.kind == "discrepancy"}
    for n in (20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 32, 35, 36, 37, 38, 39, 40, 41, 42):
        ident = f"D{n}"
        assert ident in entries, ident
        assert demonstrated.get(ident) == entries[ident].property, ident


def test_the_vectors_cover_sem14_except_tv10():
    names = {v.name.split()[0] for v in mv.VECTORS + mv.COLLECTION_VECTORS + mv.WRAPPED_VECTORS}
    assert names == {f"TV{i}" for i in range(1, 16)} - {"TV10"}
    for v in mv.VECTORS:
        assert len(v.expected) == len(v.stream.steps), v.name


def test_named_streams_have_empty_bags_negative_ids_and_every_policy():
    lengths = [n for s in ms.NAMED for step in s.steps for _, _, ls in step.features for n in ls]
    ids = [i for s in ms.NAMED for step in s.steps for i in step.ids().tolist()]
    assert 0 in lengths and min(ids) < 0
    assert {s.module.policy.name for s in ms.NAMED} == {"LFU", "LRU", "DistanceLFU"}
    assert {s.module.interval for s in ms.NAMED} >= {1, 2, 3}
    assert any(s.module.hash is not None for s in ms.NAMED) and any(s.module.offset for s in ms.NAMED)


# --- the harness ---------------------------------------------------------------------------------
def test_lookup_by_hand():
    raw = np.array([-5, 3, 10, MAX, MAX], dtype=np.int64)
    mapping = np.array([12, 10, 13, 11, 14], dtype=np.int64)
    got = mi.lookup(raw, mapping, np.array([3, -5, 4, 10, 11], dtype=np.int64), 14)
    assert got.tolist() == [10, 12, 14, 13, 14]


def _state(raw, mapping):
    return {"_mch_sorted_raw_ids": np.array(raw, dtype=np.int64),
            "_mch_remapped_ids_mapping": np.array(mapping, dtype=np.int64)}


@pytest.mark.parametrize("raw, mapping, words", [
    ([3, 1, MAX, MAX], [0, 1, 2, 3], "not sorted"),
    ([1, 1, MAX, MAX], [0, 1, 2, 3], "duplicate"),
    ([1, 2, 3, 4], [0, 1, 2, 3], "at most Z - 1"),
    ([1, 2, MAX, MAX], [0, 1, 3, 2], "permutation"),
    ([1, 2, MAX, MAX], [0, 1, 2, 2], "permutation"),
])
def test_table_problem_detects_a_broken_table(raw, mapping, words):
    assert words in mi.table_problem(_state(raw, mapping), MCH(4), None)


def test_table_problem_accepts_a_good_table_and_checks_open_slots():
    good = _state([-1, 7, MAX, MAX], [12, 10, 11, 13])
    assert mi.table_problem(good, MCH(4, offset=10), np.array([1])) == ""
    assert "open_slots" in mi.table_problem(good, MCH(4, offset=10), np.array([2]))


def test_lfu_problem_detects_an_eviction_for_an_equal_count():
    before = {1: (0, {"counts": 3}), 2: (1, {"counts": 1})}
    fair = {1: (0, {"counts": 3}), 5: (1, {"counts": 2})}
    assert mi.lfu_problem(before, fair, [5, 5], filtered=False) == ""
    tie = {1: (0, {"counts": 3}), 5: (1, {"counts": 1})}
    assert "evicted resident 2" in mi.lfu_problem(before, tie, [5], filtered=False)
    wrong_count = {1: (0, {"counts": 3}), 5: (1, {"counts": 7})}
    assert "admitted id 5 has count 7" in mi.lfu_problem(before, wrong_count, [5, 5], filtered=False)


def test_read_rows_tells_which_rows_a_lookup_read():
    before, after = {"embeddings": np.array([[1.0, 2.0]])}, {"embeddings": np.array([[5.0, 2.0]])}
    assert mw._read_rows({"embeddings": np.array([[5.0, 2.0]])}, before, after, 1) == "after"
    assert mw._read_rows({"embeddings": np.array([[1.0, 2.0]])}, before, after, 1) == "before"
    assert mw._read_rows({"embeddings": np.array([[1.0, 2.0]])}, before, before, 1) == "either"
    assert mw._read_rows({"embeddings": np.array([[3.0, 2.0]])}, before, after, 1) is None


def test_save_points_follow_the_interval_and_skip_eval():
    stream = Stream("s", MCH(4, interval=2), (forward([1]), forward([2]), EVAL, forward([3]), TRAIN, forward([4]),
                                              forward([5]), EVICT, forward([6])))
    # training forwards: steps 0, 1, 5, 6, 8; rounds after the 2nd and 4th
    assert mi.save_points(stream) == [1, 6]


def test_torchrec_fits():
    assert ms.torchrec_fits(ms.GROWING_WINDOW[0].steps, 2) is False  # TV10: 7 ids into a window of 5
    assert ms.torchrec_fits(ms.GROWING_WINDOW[1].steps, 1) is False  # an empty first batch
    assert ms.torchrec_fits((forward([1, 2, 3]), EVAL, forward([1, 2, 3, 4, 5]), TRAIN, forward([4, 5])), 1)
    assert all(mk.fits_torchrec(s) for s in ms.NAMED + ms.COLLECTIONS + ms.WRAPPED)


def test_large_streams_are_large_reproducible_and_fit_torchrec():
    streams = ms.large_streams(4)
    assert [s.describe() for s in streams] == [s.describe() for s in ms.large_streams(4)]
    assert all(s.module.zch_size >= 20 and len(s.steps[0].ids()) == 800 for s in streams)
    assert all(mk.fits_torchrec(s) for s in streams)
    assert any(n == 0 for s in streams for step in s.steps for _, _, ls in step.features for n in ls)


def test_random_streams_are_reproducible_and_varied():
    a = [ms.random_stream(np.random.default_rng(7)).describe() for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    streams = [ms.random_stream(rng) for _ in range(40)]
    assert all(len(s.steps[0].ids()) > 0 for s in streams)
    ops = {step.op for s in streams for step in s.steps}
    assert ops == {"forward", "evict", "train", "eval"}
    assert any(step.op == "forward" and len(step.ids()) == 0 for s in streams for step in s.steps)
    assert {s.module.policy.name for s in streams} == {"LFU", "LRU", "DistanceLFU"}
    assert {s.module.interval for s in streams} == {1, 2, 3, 4}
    assert any(s.module.hash for s in streams) and any(s.module.policy.filter for s in streams)


@given(stream=ms.streams(torchrec_safe=True))
def test_torchrec_safe_streams_fit_torchrec_window(stream):
    assert ms.torchrec_fits(stream.steps, stream.module.interval)


@given(stream=ms.streams(collection=True, torchrec_safe=True))
def test_torchrec_safe_collection_streams_keep_one_key_order_and_fit(stream):
    orders = {step.batch.keys for step in stream.steps if step.batch is not None}
    assert len(orders) == 1 and "x" not in next(iter(orders))
    assert mk.fits_torchrec(stream)


def test_random_collection_streams_vary_the_key_order():
    rng = np.random.default_rng(1)
    orders = {step.batch.keys for _ in range(30) for step in ms.random_stream(rng, collection=True).steps
              if step.batch is not None}
    assert len(orders) > 3 and any("x" in keys for keys in orders)


def test_a_failing_property_reports_a_shrunk_stream(ctx):
    def problem(stream):
        return "too many ids" if any(len(s.ids()) > 2 for s in stream.steps) else ""

    runs, found = mk.for_random_streams(20, ctx, "shrink", problem)
    assert runs >= 1 and found.startswith("too many ids (stream: random [")
    # shrunk: a first batch of exactly three ids, then as few steps as a stream has
    assert found.count("forward(") <= 2 and ": [" in found


def _perturbed(monkeypatch, package):
    original = io.observe

    def observe(module, step, pkg, device="cpu"):
        out = original(module, step, pkg, device)
        if pkg == package:
            out = {k: (v + 1 if v is not None and k.startswith("values[") and v.size else v) for k, v in out.items()}
        return out

    monkeypatch.setattr(io, "observe", observe)


def test_a_perturbed_remap_fails_the_stream_record(monkeypatch, ctx):
    _perturbed(monkeypatch, "accel")
    row = run_record(_record("LFU_EvictionPolicy/forward"), ctx)
    assert row.status == FAIL and "values[t]" in row.detail


def test_a_perturbed_remap_fails_the_invariant_record(monkeypatch, ctx):
    _perturbed(monkeypatch, "refimpl")
    row = run_record(_record("MCHManagedCollisionModule/outputs_in_range"), ctx)
    assert row.status == FAIL and "refimpl" in row.detail and "(stream: random" in row.detail


def test_a_wrong_vector_fails(ctx):
    record = _record("LFU_EvictionPolicy/sem14_vectors")
    vector = record.data[0]
    wrong = dataclasses.replace(vector, expected=({"values[t]": [2, 1, 1, 4]},) + vector.expected[1:])
    row = run_record(dataclasses.replace(record, data=(wrong,)), ctx)
    assert row.status == FAIL and "TorchRec 1.8 gave [2, 1, 1, 4]" in row.detail


def test_an_error_record_fails_when_nothing_is_raised(ctx):
    record = _record("MCHManagedCollisionModule/bad_input")
    ok = mk.MCError("a valid batch", Stream("", MCH(5), ()), forward([1, 2]), ValueError, "x")
    row = run_record(dataclasses.replace(record, data=(ok,)), ctx)
    assert row.status == FAIL and "raised nothing" in row.detail


def test_out_of_range_accepts_index_or_value_error_naming_the_table():
    case = mk.MCError("evict", Stream("", MCH(4), ()), None, mw._OutOfRange, r"'t'[\s\S]*6")

    def raising(exc):
        def call():
            raise exc

        return call

    assert mw._raised(raising(IndexError("table 't': id 6")), case) == ""
    assert mw._raised(raising(ValueError("table 't': id 6")), case) == ""
    assert "expected IndexError" in mw._raised(raising(KeyError("t 6")), case)
    assert "does not match" in mw._raised(raising(ValueError("id 6")), case)
    assert "raised nothing" in mw._raised(lambda: None, case)


def test_deviation_streams_skip_against_torchrec_with_a_reason():
    record = _record("MCHManagedCollisionModule/forward[growing window]")
    outcome = mk.check_deviation_streams(record, Context(against="torchrec"))
    assert outcome.status == SKIP and "D37" in outcome.detail


# --- against TorchRec 1.8 itself -------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchrec_ctx():
    pytest.importorskip("torchrec", reason=TORCHREC_REASON)
    return Context(against="torchrec")


@pytest.mark.parametrize("record", [r for r in mc.RECORDS if r.kind != "error"], ids=lambda r: r.id)
def test_record_against_torchrec(record, torchrec_ctx):
    row = run_record(record, torchrec_ctx)
    assert row.status == PASS or (row.status == SKIP and "on purpose" in row.detail), (
        f"{row.status}: {row.detail}\nrepro: {row.repro}")


def test_torchrec_reproduces_the_vectors_as_written(torchrec_ctx):
    for vector in mv.VECTORS + mv.COLLECTION_VECTORS + mv.WRAPPED_VECTORS:
        assert mk.vector_problem(vector, "torchrec", torchrec_ctx) == "", vector.name


def test_torchrec_drops_ids_where_recspec_grows_the_window(torchrec_ctx):
    # the deviation streams do differ on TorchRec: the ledger's D37 is real
    stream = ms.GROWING_WINDOW[0]
    assert "step 1 forward({t: [3, 4, 5, 6, 7]}): open_slots is [4]" in mk.agreement_problem(stream, torchrec_ctx)


def test_lfu_invariants_hold_in_torchrec(torchrec_ctx):
    # the invariant checkers hold TorchRec itself to the same rules (on streams that fit its window)
    @given(stream=ms.streams(torchrec_safe=True, policies=(Policy("LFU"),)))
    def run(stream):
        assert mi.invariant_problem(stream, "torchrec", torchrec_ctx) == ""

    run()


def test_the_lfu_record_sees_residents_evicted(monkeypatch, ctx):
    # not vacuous: some rounds of its streams replace a resident by a candidate with a higher count
    seen = []
    original = mi.lfu_problem

    def spy(before, after, window, filtered):
        seen.append(bool(set(before) - set(after)) and bool(set(after) - set(before)))
        return original(before, after, window, filtered)

    monkeypatch.setattr(mi, "lfu_problem", spy)
    row = run_record(_record("MCHManagedCollisionModule/lfu_never_evicts_for_lower_count"), ctx)
    assert row.status == PASS and sum(seen) >= 3


def test_the_state_dict_record_has_save_points(monkeypatch, ctx):
    points = []
    original = mi.checkpoint_problem

    def spy(stream, package, ctx):
        points.append(len(mi.save_points(stream)))
        return original(stream, package, ctx)

    monkeypatch.setattr(mi, "checkpoint_problem", spy)
    row = run_record(_record("MCHManagedCollisionModule/state_dict_continues"), ctx)
    assert row.status == PASS and sum(points) >= 8


def test_the_reinit_check_catches_torchrecs_no_op_evict(torchrec_ctx):
    # TorchRec keeps the old rows: held to recspec's rule (D30), its MC-EBC stream fails
    problem = mw.wrapped_problem(ms.WRAPPED[0], torchrec_ctx, check_reinit=True)
    assert "torchrec re-initialised rows [] of t1" in problem


# --- on device cuda: a real GPU, or Numba's simulator ------------------------------------------------
# The named-stream, vector and bad-input records (the random-stream ones repeat the same kernels at
# simulator speed); the MC embedding collections also launch the lookup kernels.
CUDA_RECORDS = [r for r in mc.RECORDS if r.kind in ("forward", "golden", "error")
                and not r.generator.startswith("random streams") and "accel" in r.sides]


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("record", CUDA_RECORDS, ids=lambda r: r.id)
def test_record_on_cuda(record):
    import numba
    import torch

    from accel.kernels._device import cuda_backend, simulated_cuda

    simulator = bool(numba.config.ENABLE_CUDASIM)
    if not simulator and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device seen by torch, or NUMBA_ENABLE_CUDASIM=1 for Numba's simulator")
    ctx = Context.for_device("cuda")
    if simulator:
        with simulated_cuda() as launches:
            row = run_record(record, ctx)
        uses_kernels = record.module.endswith(("Module", "Policy", "Collection")) and record.kind != "error"
        assert launches.count > 0 or not uses_kernels, f"{record.id}: no CUDA launch under simulated_cuda()"
    else:
        row = run_record(record, ctx)
    assert cuda_backend() == ("simulator" if simulator else "device")
    assert row.status == PASS, f"{row.detail}\nrepro: {row.repro}"
