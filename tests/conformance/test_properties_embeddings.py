"""The embedding records as tests, plus checks of their harness (conformance.properties.embeddings*).

Ids are `module/property`, so `pytest -k "EmbeddingBagCollection/forward"` selects like
`--module/--property`.
"""

import numpy as np
import pytest
from hypothesis import given, settings

from conformance import generators, ledger
from conformance.properties import RECORDS, embeddings
from conformance.properties import embeddings_cases as cases_mod
from conformance.properties import embeddings_checks as ec
from conformance.properties import embeddings_io as io
from conformance.records import MAIN_KINDS, Build
from conformance.runner import FAIL, PASS, Context, run_record

TORCHREC_REASON = "TorchRec is optional; the float32 records also run against it when installed"


@pytest.fixture(scope="module")
def ctx():
    return Context()


@pytest.mark.parametrize("record", embeddings.RECORDS, ids=lambda r: r.id)
def test_record(record, ctx):
    row = run_record(record, ctx)
    assert row.status == PASS, f"{row.detail}\nrepro: {row.repro}"


def test_records_are_registered():
    ids = {r.id for r in RECORDS}
    assert {r.id for r in embeddings.RECORDS} <= ids


@pytest.mark.parametrize("module", ["EmbeddingBagCollection", "EmbeddingCollection", "PositionWeightedModule"])
@pytest.mark.parametrize("kind", MAIN_KINDS)
def test_main_embedding_classes_have_every_main_kind(module, kind):
    assert any(r.module == module and r.kind == kind for r in embeddings.RECORDS), f"no {kind} record for {module}"


@pytest.mark.parametrize("module", ["PositionWeightedProcessor", "EmbeddingTower", "EmbeddingTowerCollection"])
@pytest.mark.parametrize("kind", ["forward", "forward_f32", "backward_fd", "autograd"])
def test_other_embedding_classes_have_the_numeric_kinds(module, kind):
    assert any(r.module == module and r.kind == kind for r in embeddings.RECORDS), f"no {kind} record for {module}"


def test_every_embedding_golden_build_has_both_golden_records():
    files = {f"{b.name}.npz" for b in embeddings.GOLDEN}
    for prefix in ("golden_refimpl", "golden_accel"):
        referenced = {r.data[0] for r in embeddings.RECORDS if r.property.startswith(prefix)}
        assert files == referenced, prefix


def test_embedding_ledger_entries_have_their_records():
    entries = ledger.load()
    demonstrated = {r.discrepancy: r.id for r in embeddings.RECORDS if r.kind == "discrepancy"}
    for ident in ("D12", "D13", "D14", "D15", "D16", "D31", "D33", "D34"):
        assert ident in entries, ident
        assert demonstrated.get(ident) == entries[ident].property, ident


def test_generated_cases_include_empty_bags_and_batch_size_zero():
    build = embeddings._mixed
    named = dict(cases_mod.cases("jagged", build, 0))
    assert named["B=0"].stride == 0 and named["B=0"].values.size == 0
    for name, b in named.items():
        if b.stride > 1:  # every multi-sample case has empty bags
            assert (b.lengths == 0).any(), name
    tiles = named["bags of 31/32/33 ids"]
    assert tiles.lengths[:3].tolist() == [31, 32, 33]
    shuffled = named["keys reversed + unread key"]
    assert shuffled.keys == ("f2", "f1", "f0", cases_mod.EXTRA_KEY)
    # every id is valid in every table that reads its feature (f1 is in t0 (7 rows) and t1 (5 rows))
    for name, b in named.items():
        if "f1" in b.keys:
            assert (b.values[b.key_slice("f1")] < 5).all(), name


def test_batch_permutation_moves_bags_with_their_keys():
    b = io.batch(["a", "b"], [1, 2, 0, 3], [1, 2, 3, 4, 5, 6], weights=[1, 2, 3, 4, 5, 6])
    p = b.permuted([1, 0])
    assert p.keys == ("b", "a")
    assert p.lengths.tolist() == [0, 3, 1, 2]
    assert p.values.tolist() == [4, 5, 6, 1, 2, 3]
    assert p.weights.tolist() == [4, 5, 6, 1, 2, 3]
    assert b.bag("b", 1) == slice(3, 6) and p.bag("b", 1) == slice(0, 3)


def test_ebc_formula_by_hand():
    # semantics.md 7.2's deterministic vectors: W = arange(10).view(5, 2), lengths [2, 0, 1], ids [0, 1, 4]
    state = {"embedding_bags.t.weight": np.arange(10.0).reshape(5, 2)}
    mean = Build("EmbeddingBagCollection", ((io.table("EmbeddingBagConfig", "t", 5, 2, ("f",), pooling="MEAN"),),))
    plain = Build("EmbeddingBagCollection", ((io.table("EmbeddingBagConfig", "t", 5, 2, ("f",)),),))
    b = io.batch(["f"], [2, 0, 1], [0, 1, 4], weights=[0.5, 2.0, 3.0])
    assert ec.ebc_formula(mean, state, b, False).tolist() == [[1, 2], [0, 0], [8, 9]]
    assert ec.ebc_formula(plain, state, b, True).tolist() == [[4, 6.5], [0, 0], [24, 27]]


def _perturbed_run(monkeypatch, delta):
    original = ec._run

    def run(pair, package, build, b, ctx, dtype=None):
        keys, arrays = original(pair, package, build, b, ctx, dtype)
        if package != "refimpl":
            arrays = {k: (v + delta if np.issubdtype(v.dtype, np.floating) and v.size else v) for k, v in arrays.items()}
        return keys, arrays

    monkeypatch.setattr(ec, "_run", run)


def test_a_perturbed_output_fails_the_forward_record(monkeypatch, ctx):
    record = next(r for r in embeddings.RECORDS if r.id == "EmbeddingBagCollection/forward")
    _perturbed_run(monkeypatch, 1e-9)
    row = run_record(record, ctx)
    assert row.status == FAIL and "out" in row.detail


def test_a_perturbed_output_fails_the_float32_record(monkeypatch, ctx):
    record = next(r for r in embeddings.RECORDS if r.id == "EmbeddingCollection/forward_f32")
    _perturbed_run(monkeypatch, 1e-4)
    row = run_record(record, ctx)
    assert row.status == FAIL and "values[" in row.detail


def test_a_wrong_analytic_gradient_fails_the_finite_difference_record(monkeypatch, ctx):
    record = next(r for r in embeddings.RECORDS if r.id == "PositionWeightedModule/backward_fd")
    original = io.ref_gradients

    def scaled(*args, **kwargs):
        arrays, grads = original(*args, **kwargs)
        return arrays, {k: 1.01 * v for k, v in grads.items()}

    monkeypatch.setattr(io, "ref_gradients", scaled)
    row = run_record(record, ctx)
    assert row.status == FAIL and "grad position_weights" in row.detail


def test_an_error_record_fails_when_the_exception_differs(ctx):
    record = next(r for r in embeddings.RECORDS if r.id == "EmbeddingBagCollection/bad_input")
    wrong = ec.JaggedError("ids out of range as ValueError", embeddings._mixed, KeyError, r"f0", ("f0",),
                           io.batch(["f0", "f1", "f2"], [1, 0, 0], [7]))
    row = run_record(type(record)(**{**record.__dict__, "data": (wrong,)}), ctx)
    assert row.status == FAIL and "expected KeyError" in row.detail


@settings(max_examples=20, deadline=None)
@given(drawn=generators.jagged(num_keys=3, max_batch=4, max_length=3, num_embeddings=5, weighted=True))
def test_weighted_ebc_on_drawn_batches(drawn):
    # The pooled formula on Hypothesis-drawn KJTs (empty bags and B = 0 included), in both packages.
    build = Build("EmbeddingBagCollection", ((io.table("EmbeddingBagConfig", "t0", 5, 3, ("f0", "f1")),
                                              io.table("EmbeddingBagConfig", "t1", 6, 2, ("f2",), pooling="MEAN")),),
                  (("is_weighted", True),))
    B = len(drawn["lengths"]) // 3
    b = io.Batch(tuple(drawn["keys"]), drawn["lengths"], drawn["values"], drawn["weights"], B)
    pair = io.make_pair(build, seed=0)
    expected = ec.ebc_formula(build, pair.state, b, True)
    for package, module in (("refimpl", pair.ref), ("accel", pair.other)):
        keys, got = io.run(module, build, b, package, np.float64)
        assert keys == ["f0", "f1", "f2"]
        assert got["out"].shape == (B, 8)
        np.testing.assert_allclose(got["out"], expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("record", [r for r in embeddings.RECORDS if "float32" in r.dtypes and "accel" in r.sides
                                    and r.kind != "error"], ids=lambda r: r.id)
def test_float32_records_hold_for_torchrec(record):
    pytest.importorskip("torchrec", reason=TORCHREC_REASON)
    row = run_record(record, Context(against="torchrec"))
    assert row.status == PASS, f"{row.detail}\nrepro: {row.repro}"
