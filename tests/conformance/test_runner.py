"""The runner, and the harness tested as a harness: a wrong accel must make it fail, and say why."""

import math

import numpy as np
import pytest
import torch

import accel
from conformance import tolerances
from conformance.properties import RECORDS
from conformance.records import Record
from conformance.report import format_table
from conformance.runner import FAIL, PASS, SKIP, Context, Outcome, Row, run, run_record, select


def _record(record_id):
    matches = [r for r in RECORDS if r.id == record_id]
    assert len(matches) == 1, record_id
    return matches[0]


@pytest.fixture(scope="module")
def ctx():
    return Context()


def _one_ulp_up(forward):
    """A forward whose first output element is moved one ULP away from zero."""

    def perturbed(self, *args, **kwargs):
        y = forward(self, *args, **kwargs).clone()
        if y.numel():
            flat = y.view(-1)
            flat[0] = torch.nextafter(flat[0], torch.tensor(math.inf, dtype=y.dtype))
        return y

    return perturbed


def test_one_ulp_fails_where_the_tolerance_is_zero(monkeypatch, ctx):
    record = _record("CrossNet/num_layers_0_identity")
    assert record.tolerance is tolerances.EXACT
    assert run_record(record, ctx).status == PASS
    monkeypatch.setattr(accel.CrossNet, "forward", _one_ulp_up(accel.CrossNet.forward))
    row = run_record(record, ctx)
    assert row.status == FAIL
    assert row.max_err == 1.0 and row.unit == "ulp"
    # The explanation names the case, the element, both values, the ULPs and the way to rerun it.
    assert "[0, 0]" in row.detail and "1 ULP" in row.detail and "reference" in row.detail
    assert "abs error" in row.detail
    assert row.repro == "python -m conformance --repro CrossNet/num_layers_0_identity --device cpu"
    assert row.id == record.id and row.short_id == record.short_id
    assert row.worst["index"] == [0, 0] and row.worst["ulps"] == 1.0 and row.worst["err"] == 1.0
    assert row.worst["abs_err"] == abs(row.worst["got"] - row.worst["ref"]) > 0


def _documented_vector_cross(self, input):
    """The page's formula x_0 * (x_l . w_l + b_l) + x_l: the wrong bias placement (D3)."""
    x_0 = x_l = input
    for w_l, b_l in zip(self.kernels, self.bias):
        x_l = x_0 * (x_l @ w_l + b_l.view(-1)) + x_l
    return x_l


@pytest.mark.parametrize("record_id", ["VectorCrossNet/forward", "VectorCrossNet/autograd",
                                       "VectorCrossNet/golden_accel", "VectorCrossNet/zero_kernels",
                                       "VectorCrossNet/D3_bias_placement"])
def test_a_wrong_bias_placement_fails(monkeypatch, ctx, record_id):
    monkeypatch.setattr(accel.VectorCrossNet, "forward", _documented_vector_cross)
    row = run_record(_record(record_id), ctx)
    assert row.status == FAIL, row
    assert row.detail


def test_the_wrong_bias_placement_is_far_outside_the_float64_tolerance(monkeypatch, ctx):
    monkeypatch.setattr(accel.VectorCrossNet, "forward", _documented_vector_cross)
    row = run_record(_record("VectorCrossNet/forward"), ctx)
    assert row.unit == "rel" and row.max_err > 1e-3 > row.tolerance


def test_float32_computed_in_half_precision_fails(monkeypatch, ctx):
    original = accel.CrossNet.forward

    def half(self, input):
        return original(self, input).to(torch.float16).to(input.dtype)

    monkeypatch.setattr(accel.CrossNet, "forward", half)
    row = run_record(_record("CrossNet/forward_f32"), ctx)
    assert row.status == FAIL and row.unit == "ratio" and row.max_err > 100
    assert "as far from float64" in row.detail


def test_a_float32_failure_shows_the_float32_reference_gap(monkeypatch, ctx):
    original = accel.CrossNet.forward

    def off(self, input):  # 2^-12 relative: far outside float32's allowance, finite everywhere
        return original(self, input) * (1 + 2.0 ** -12)

    monkeypatch.setattr(accel.CrossNet, "forward", off)
    row = run_record(_record("CrossNet/forward_f32"), ctx)
    assert row.status == FAIL
    # refimpl-float32 at the worst element and its gap to the float64 reference, which the check
    # allowed for: |accel32 - ref64| / ratio is at least that gap.
    worst = row.worst
    assert worst["ref32"] is not None and "float32 reference" in row.detail
    assert worst["gap32"] == abs(worst["ref32"] - worst["ref"])
    assert worst["gap32"] <= worst["abs_err"] / worst["err"] * (1 + 1e-12)


def test_float32_reference_of_an_embedding_record(monkeypatch, ctx):
    import accel.modules.embedding_modules as em

    original = em.EmbeddingBagCollection.forward

    def coarse(self, features):
        out = original(self, features)
        return type(out)(out.keys(), out.length_per_key(), out.values().to(torch.float16).to(out.values().dtype))

    monkeypatch.setattr(em.EmbeddingBagCollection, "forward", coarse)
    row = run_record(_record("EmbeddingBagCollection/forward_f32"), ctx)
    assert row.status == FAIL and row.worst["ref32"] is not None
    assert 0 <= row.worst["gap32"] < row.worst["abs_err"]


def test_diagnose_adds_the_float32_reference_to_a_passing_row(ctx):
    record = _record("CrossNet/forward_f32")
    plain, diagnosed = run_record(record, ctx), run_record(record, ctx, diagnose=True)
    assert plain.status == diagnosed.status == PASS and plain.detail == diagnosed.detail == ""
    assert plain.worst["ref32"] is None
    assert diagnosed.worst["ref32"] is not None and diagnosed.worst["index"] == plain.worst["index"]


def test_a_check_that_crashes_is_a_failure_that_explains_itself(ctx):
    def crash(record, ctx):
        raise KeyError("state key 'bias.0' missing")

    record = Record("CrossNet", "crashes", "invariant", "none", (), crash, "a test record")
    row = run_record(record, ctx)
    assert row.status == FAIL
    assert "check raised KeyError" in row.detail and "bias.0" in row.detail and "test_runner.py" in row.detail


def test_torchrec_skips_float64_and_error_records_with_a_reason():
    ctx = Context(against="torchrec")
    forward = run_record(_record("CrossNet/forward"), ctx)
    errors = run_record(_record("CrossNet/bad_input"), ctx)
    assert forward.status == SKIP and "float32-only" in forward.detail
    assert errors.status == SKIP and "validation" in errors.detail
    assert "--against torchrec" in forward.repro


def test_repro_command_carries_the_context():
    from conformance.runner import GOLDEN_DIR, repro_command

    record = _record("LowRankMixtureCrossNet/forward[K=3]")
    assert repro_command(record, Context()) == (
        "python -m conformance --repro 'LowRankMixtureCrossNet/forward[K=3]' --device cpu")
    other = Context(against="torchrec", seed=7, golden_dir=GOLDEN_DIR.parent / "my golden")
    assert repro_command(record, other).endswith("--device cpu --against torchrec --seed 7 --golden "
                                                 f"'{GOLDEN_DIR.parent / 'my golden'}'")
    sim = Context(cuda_simulator=True)
    assert repro_command(record, sim).startswith("NUMBA_ENABLE_CUDASIM=1 python -m conformance --repro")
    assert "--device cuda" in repro_command(record, sim)


def test_find_by_id_module_case_and_short_id():
    from conformance.runner import find

    record = _record("VectorCrossNet/zero_kernels")
    assert find(RECORDS, "VectorCrossNet/zero_kernels") is record
    assert find(RECORDS, "vectorcrossnet/zero_kernels") is record
    assert find(RECORDS, record.short_id.upper()) is record
    with pytest.raises(KeyError, match=r"record id expected .* got 'VectorCrossNet/zero_kernel'.*close: "
                                       r"VectorCrossNet/zero_kernels"):
        find(RECORDS, "VectorCrossNet/zero_kernel")


def test_run_reports_progress_and_timing(ctx):
    records = select(RECORDS, "SwishLayerNorm", "forward")
    seen = []
    rows = run(records, ctx, progress=lambda i, n, r: seen.append((i, n, r.id)))
    assert seen == [(0, 1, "SwishLayerNorm/forward")]
    assert rows[0].seconds > 0


def test_refimpl_only_records_still_run_against_torchrec():
    # backward_fd never touches the package under test, so it runs (TorchRec is not imported).
    row = run_record(_record("CrossNet/backward_fd"), Context(against="torchrec"))
    assert row.status == PASS


def test_select_by_module_property_and_device():
    crossnet = select(RECORDS, module="crossnet")
    assert crossnet and {r.module for r in crossnet} == {"CrossNet"}
    assert [r.id for r in select(RECORDS, "CrossNet", "forward")] == ["CrossNet/forward"]
    on_cuda = select(RECORDS, "CrossNet", device="cuda")
    assert all("accel" in r.sides for r in on_cuda)
    assert "CrossNet/backward_fd" in {r.id for r in crossnet} - {r.id for r in on_cuda}


def test_outcome_reports_the_tolerance_that_bound_hardest():
    from conformance.compare import Errors

    errors = Errors()
    errors.add("a", "output", np.array([1.0]), np.array([1.0]), tolerances.forward64(10))
    errors.add("b", "output", np.array([1.0 + 1e-12]), np.array([1.0]), tolerances.forward64(1))
    outcome = Outcome.from_errors(errors, 2, tolerances.forward64(10))
    assert outcome.status == FAIL
    assert outcome.tolerance == tolerances.forward64(1).value
    assert "case 'b'" in outcome.detail


def test_format_table_lists_rows_failures_and_counts():
    rows = [
        Row("CrossNet", "forward", "forward", "cpu", "accel", 5, 1e-15, 2e-16, "rel", 1e-13, PASS),
        Row("CrossNet", "autograd", "autograd", "cpu", "accel", 5, 1.0, 0.5, "rel", 1e-13, FAIL,
            detail="case 'N=5/B=3', grad bias.0[0, 0]: got 1.0, reference 0.5", repro="python -m conformance ..."),
        Row("CrossNet", "forward", "forward", "cpu", "torchrec", 0, math.nan, math.nan, "", math.nan, SKIP),
    ]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["module", "property", "device", "cases"]
    assert "FAIL CrossNet/autograd [cpu]: case 'N=5/B=3'" in text
    assert "repro: python -m conformance ..." in text
    assert lines[-1] == "3 properties: 1 passed, 1 failed, 1 skipped"
    assert Row.as_dict(rows[2])["max_abs"] is None


def test_run_returns_one_row_per_record(ctx):
    records = select(RECORDS, "SwishLayerNorm")
    rows = run(records, ctx)
    assert [(r.module, r.property) for r in rows] == [(r.module, r.property) for r in records]
    assert all(r.status == PASS for r in rows)
