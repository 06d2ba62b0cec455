"""The harness tested as a harness: a deliberately wrong accel (or refimpl) must fail the run, and no
float tolerance may be wider than the signal it guards.

Perturbations go through monkeypatching of the public objects the records use (module classes,
their forward/evict, the adapters' state loading); no package file is edited. Wrong bias placement
(VectorCrossNet, the page's D3 formula) and half-precision float32 are in test_runner.py.
"""

import math

import numpy as np
import pytest
import torch

import accel
from conformance import adapters
from conformance.__main__ import main
from conformance.properties import RECORDS, embeddings_io, mc
from conformance.runner import FAIL, PASS, Context, run_record

MC_MODULES = {r.module for r in mc.RECORDS}

# Comparisons of a package against a reference in floating point (invariants compare each package
# with itself: a parameter change moves both sides of their identity, so they are not listed here).
FLOAT_KINDS = ("forward", "forward_f32", "autograd", "golden")
FLOAT_RECORDS = [r for r in RECORDS if r.module not in MC_MODULES and r.kind in FLOAT_KINDS and "accel" in r.sides]
REFIMPL_RECORDS = [r for r in RECORDS if r.module not in MC_MODULES and r.sides == ("refimpl",)
                   and r.kind in ("backward_fd", "golden")]

# Records that do not read the state the adapters load, so a parameter perturbation cannot reach
# them; the output perturbation (test_a_1pct_output_error_fails...) covers them instead.
NO_LOADED_PARAMETERS = {
    "FactorizationMachine": "FactorizationMachine has no parameters",
    "torchrec_test_values": "TorchRec's test builds its module under torch.manual_seed(0) and keeps those parameters",
}

# A signal must clear its tolerance by this factor: a perturbation that only just fails would let a
# slightly smaller real error through.
MARGIN = 10.0
ONE_PERCENT = 1.01


@pytest.fixture(scope="module")
def ctx():
    return Context()


def _record(record_id):
    matches = [r for r in RECORDS if r.id == record_id]
    assert len(matches) == 1, record_id
    return matches[0]


def _uses_loaded_parameters(record):
    return record.module not in NO_LOADED_PARAMETERS and record.property not in NO_LOADED_PARAMETERS


def _float_scaled(value, factor):
    array = np.asarray(value)
    return array * factor if np.issubdtype(array.dtype, np.floating) else value


def _one_percent_off(result):
    """A result (array, or dict of arrays) with every float entry 1% larger; ids stay as they are."""
    if isinstance(result, dict):
        return {k: _float_scaled(v, ONE_PERCENT) for k, v in result.items()}
    return _float_scaled(result, ONE_PERCENT)


# --- 1 ULP where the tolerance is zero --------------------------------------------------------------
EXACT_RECORDS = [r for r in RECORDS if r.tolerance is not None and r.tolerance.value == 0 and r.builds]


def test_there_are_exact_float_records():
    assert {r.module for r in EXACT_RECORDS} >= {"CrossNet", "LowRankCrossNet", "VectorCrossNet",
                                                  "LowRankMixtureCrossNet", "MLP"}


@pytest.mark.parametrize("record", EXACT_RECORDS, ids=lambda r: r.id)
def test_one_ulp_fails_every_exact_record(monkeypatch, ctx, record):
    cls = getattr(accel, record.module)
    forward = cls.forward

    def one_ulp_up(self, *args, **kwargs):
        y = forward(self, *args, **kwargs).clone()
        if y.numel():
            flat = y.view(-1)
            flat[-1] = torch.nextafter(flat[-1], torch.tensor(math.inf, dtype=y.dtype))
        return y

    assert run_record(record, ctx).status == PASS
    monkeypatch.setattr(cls, "forward", one_ulp_up)
    row = run_record(record, ctx)
    assert row.status == FAIL and row.max_err == 1.0 and row.unit == "ulp"
    assert "1 ULP" in row.detail and row.worst["ulps"] == 1.0


# --- managed collision: ids are exact -------------------------------------------------------------
def _perturb_mch_forward(monkeypatch, change):
    """accel's MCH forward with `change(values) -> values` applied to its first non-empty feature."""
    cls = accel.MCHManagedCollisionModule
    forward = cls.forward

    def perturbed(self, features, *args, **kwargs):
        out = dict(forward(self, features, *args, **kwargs))
        for key, jt in out.items():
            if jt.values().numel():
                out[key] = accel.JaggedTensor(change(jt.values().clone()), lengths=jt.lengths())
                break
        return out

    monkeypatch.setattr(cls, "forward", perturbed)


def test_an_id_off_by_one_fails_the_stream_record(monkeypatch, ctx):
    record = _record("MCHManagedCollisionModule/forward")

    def off_by_one(values):
        values[-1] += 1
        return values

    _perturb_mch_forward(monkeypatch, off_by_one)
    row = run_record(record, ctx)
    assert row.status == FAIL and "step" in row.detail and "values" in row.detail


def _swap_two_ids(values):
    """The first two different output ids of a batch trade places (two ids get each other's slot)."""
    distinct = torch.nonzero(values != values[0]).flatten()
    if distinct.numel():
        j = int(distinct[0])
        values[0], values[j] = values[j].clone(), values[0].clone()
    return values


@pytest.mark.parametrize("record_id", ["MCHManagedCollisionModule/forward", "LFU_EvictionPolicy/forward",
                                       "MCHManagedCollisionModule/outputs_in_range",
                                       "MCHManagedCollisionModule/sem14_vectors"])
def test_swapped_remapped_ids_fail(monkeypatch, ctx, record_id):
    _perturb_mch_forward(monkeypatch, _swap_two_ids)
    row = run_record(_record(record_id), ctx)
    assert row.status == FAIL, row.detail
    assert "accel" in row.detail or "values" in row.detail


@pytest.mark.parametrize("record_id", ["MCHManagedCollisionModule/forward", "LRU_EvictionPolicy/forward",
                                       "MCHManagedCollisionModule/sem14_vectors"])
def test_a_swapped_eviction_fails(monkeypatch, ctx, record_id):
    # evict() names a neighbouring slot instead of the one whose owner changed.
    cls = accel.MCHManagedCollisionModule
    evict = cls.evict
    calls = []

    def swapped(self):
        ids = evict(self)
        if ids is not None and ids.numel():
            ids = ids.clone()
            neighbour = ids[0] + 1 if not bool((ids == ids[0] + 1).any()) else ids[0] - 1
            ids[0] = neighbour
            calls.append(ids)
        return ids

    monkeypatch.setattr(cls, "evict", swapped)
    row = run_record(_record(record_id), ctx)
    assert calls, "the record never saw an eviction, so it cannot test one"
    assert row.status == FAIL and "evict" in row.detail


def test_a_perturbed_run_exits_1_with_a_repro_line(monkeypatch, capsys):
    _perturb_mch_forward(monkeypatch, _swap_two_ids)
    assert main(["--module", "MCHManagedCollisionModule", "--property", "forward"]) == 1
    out = capsys.readouterr().out
    assert "FAIL MCHManagedCollisionModule/forward [cpu]" in out
    assert "repro: python -m conformance --repro MCHManagedCollisionModule/forward --device cpu" in out


# --- tolerances are not vacuous ---------------------------------------------------------------------
def test_the_float_record_sets_are_not_empty():
    assert len(FLOAT_RECORDS) > 50 and len(REFIMPL_RECORDS) > 20
    assert {r.kind for r in FLOAT_RECORDS} == set(FLOAT_KINDS)


@pytest.mark.slow
@pytest.mark.parametrize("record", [r for r in FLOAT_RECORDS if _uses_loaded_parameters(r)], ids=lambda r: r.id)
def test_a_1pct_parameter_error_fails_every_float_record(monkeypatch, ctx, record):
    """Every floating parameter the package under test holds is 1% off (refimpl keeps the true
    ones): the record fails, by at least MARGIN times its tolerance."""
    load = adapters.load_torch

    def perturbed(module, state):
        load(module, {k: _float_scaled(v, ONE_PERCENT) for k, v in state.items()})

    monkeypatch.setattr(adapters, "load_torch", perturbed)
    row = run_record(record, ctx)
    assert row.status == FAIL, row
    assert row.max_err >= MARGIN * row.tolerance, (row.max_err, row.tolerance, row.unit)


def _scaled_torch_outputs(monkeypatch):
    """The package under test's outputs (and autograd gradients) 1% off, as the checks read them."""
    run_torch, torch_gradients, run = adapters.run_torch, adapters.torch_gradients, embeddings_io.run
    io_gradients = embeddings_io.torch_gradients
    scaled = _one_percent_off
    monkeypatch.setattr(adapters, "run_torch", lambda *a, **k: scaled(run_torch(*a, **k)))
    monkeypatch.setattr(adapters, "torch_gradients", lambda *a, **k: tuple(map(scaled, torch_gradients(*a, **k))))

    def io_run(module, build, b, package, *a, **k):
        keys, arrays = run(module, build, b, package, *a, **k)
        return keys, (arrays if package == "refimpl" else scaled(arrays))

    monkeypatch.setattr(embeddings_io, "run", io_run)
    monkeypatch.setattr(embeddings_io, "torch_gradients", lambda *a, **k: tuple(map(scaled, io_gradients(*a, **k))))


@pytest.mark.parametrize("record", [r for r in FLOAT_RECORDS if not _uses_loaded_parameters(r)], ids=lambda r: r.id)
def test_a_1pct_output_error_fails_the_records_without_loaded_parameters(monkeypatch, ctx, record):
    _scaled_torch_outputs(monkeypatch)
    row = run_record(record, ctx)
    assert row.status == FAIL, row
    assert row.max_err >= MARGIN * row.tolerance, (row.max_err, row.tolerance, row.unit)


def test_torchrec_test_values_never_load_the_adapters_state(monkeypatch, ctx):
    # Why those records are in NO_LOADED_PARAMETERS rather than the parameter test.
    record = _record("CrossNet/torchrec_test_values")
    load_calls = []
    monkeypatch.setattr(adapters, "load_torch", lambda module, state: load_calls.append(module))
    assert run_record(record, ctx).status == PASS and load_calls == []


@pytest.mark.slow
@pytest.mark.parametrize("record", REFIMPL_RECORDS, ids=lambda r: r.id)
def test_a_1pct_error_in_refimpl_fails_its_own_records(monkeypatch, ctx, record):
    """refimpl's outputs and analytic gradients 1% off, as the refimpl-only checks read them:
    backward_fd (analytic vs central differences) and golden_refimpl (the stored vectors) fail."""
    for module in (adapters, embeddings_io):
        original = module.ref_gradients

        def scaled(*args, _original=original, **kwargs):
            y, grads = _original(*args, **kwargs)
            return _one_percent_off(y), _one_percent_off(grads)

        monkeypatch.setattr(module, "ref_gradients", scaled)
    row = run_record(record, ctx)
    assert row.status == FAIL, row
    assert row.max_err >= MARGIN * row.tolerance, (row.max_err, row.tolerance, row.unit)
