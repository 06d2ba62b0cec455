"""The page's remaining ledger records (D6, D7, D17, D18, D19) as tests, and checks that each one
fails once its discrepancy stops holding (conformance.properties.page_discrepancies)."""

import types

import numpy as np
import pytest

import accel.modules.deepfm
import accel.modules.lazy_extension
import accel.modules.mlp
import accel.modules.utils
import refimpl.modules.utils
from conformance import ledger
from conformance.properties import RECORDS
from conformance.properties import page_discrepancies as pd
from conformance.runner import FAIL, PASS, Context, run_record

TORCHREC_REASON = "TorchRec is optional; the page's discrepancy records also run against it when installed"
IDENTS = ("D6", "D7", "D17", "D18", "D19")
BY_IDENT = {r.discrepancy: r for r in pd.RECORDS}


@pytest.fixture(scope="module")
def ctx():
    return Context()


@pytest.mark.parametrize("record", pd.RECORDS, ids=lambda r: r.id)
def test_record(record, ctx):
    row = run_record(record, ctx)
    assert row.status == PASS, f"{row.detail}\nrepro: {row.repro}"


@pytest.mark.parametrize("record", pd.RECORDS, ids=lambda r: r.id)
def test_record_against_torchrec(record):
    pytest.importorskip("torchrec", reason=TORCHREC_REASON)
    row = run_record(record, Context(against="torchrec"))
    assert row.status == PASS and row.cases > 0, f"{row.detail}\nrepro: {row.repro}"


def test_each_entry_has_its_registered_record():
    entries = ledger.load()
    registered = {r.id for r in RECORDS}
    assert sorted(BY_IDENT, key=lambda i: int(i[1:])) == list(IDENTS)
    for ident in IDENTS:
        assert entries[ident].property == BY_IDENT[ident].id and BY_IDENT[ident].id in registered
        assert entries[ident].expected is True


def test_every_page_item_of_semantics_16_is_in_the_ledger():
    # semantics.md section 16 numbers the page-versus-TorchRec items D1 to D32.
    assert {f"D{i}" for i in range(1, 33)} <= set(ledger.load())


def test_lazy_apply_runs_on_the_package_under_test_only():
    assert BY_IDENT["D17"].sides == ("accel",)


def test_d7_stack_widths_by_hand():
    assert 1 * 32 + 5 * 64 + 3 * 32 == pd.STACK_DIM32_WIDTH == 448
    assert sum(n * d for n, d in pd.STACK_PRINTED) == 400


def test_d19_page_forms_are_prefixes_of_torchrec_signatures():
    assert pd.TORCHREC_CJT[: len(pd.PAGE_CJT)] == pd.PAGE_CJT
    assert [n for n, _ in pd.TORCHREC_CJT[len(pd.PAGE_CJT):]] == ["seq_vbe_ctx", "use_gather_select"]
    assert pd.TORCHREC_CJT_INFERENCE[len(pd.PAGE_CJT_INFERENCE):] == (("remove_padding", False),)


def test_d19_expected_split_includes_an_empty_bag():
    rows, lengths = pd._EXPECTED["x"]
    assert lengths == [2, 0] and np.array_equal(rows, np.arange(4.0).reshape(2, 2))
    assert pd._EXPECTED["y"][1] == [1, 3] and pd._EXPECTED["y"][0].shape == (4, 2)


# --- each record fails once its discrepancy stops holding -------------------------------------------
def _fails(record, ctx, *needles):
    row = run_record(record, ctx)
    assert row.status == FAIL
    assert "no longer reproduces" in row.detail
    for needle in needles:
        assert needle in row.detail, row.detail


def test_d6_fails_when_a_lazy_mlp_appears(monkeypatch, ctx):
    monkeypatch.setattr(accel.modules.mlp, "LazyMLP", object, raising=False)
    _fails(BY_IDENT["D6"], ctx, "accel: mlp has LazyMLP: True")


def test_d6_fails_when_an_fb_package_imports(monkeypatch, ctx):
    monkeypatch.setitem(__import__("sys").modules, "refimpl.fb.modules.deepfm", types.ModuleType("fb"))
    _fails(BY_IDENT["D6"], ctx, "refimpl: import refimpl.fb.modules.deepfm: raised nothing")


def test_d7_fails_on_a_perturbed_fm_output(monkeypatch, ctx):
    forward = accel.modules.deepfm.FactorizationMachine.forward
    monkeypatch.setattr(accel.modules.deepfm.FactorizationMachine, "forward",
                        lambda self, embeddings: forward(self, embeddings) * (1 + 1e-9))
    _fails(BY_IDENT["D7"], ctx, "accel:FactorizationMachine")


def test_d17_fails_when_fn_runs_after_every_forward(monkeypatch, ctx):
    def every_forward(module, fn):
        module.register_forward_hook(lambda m, args, out: m.apply(fn))
        return module

    monkeypatch.setattr(accel.modules.lazy_extension, "lazy_apply", every_forward)
    _fails(BY_IDENT["D17"], ctx, "calls ['Linear', 'Linear']")


def test_d18_fails_when_a_page_name_appears(monkeypatch, ctx):
    monkeypatch.setattr(refimpl.modules.utils, "register_custom_op", lambda module, dims: None, raising=False)
    _fails(BY_IDENT["D18"], ctx, "refimpl.modules.utils.register_custom_op: raised nothing")


def test_d19_fails_on_the_page_signature(monkeypatch, ctx):
    def page_form(embeddings, lengths, values, embedding_names, need_indices=False,
                  features_to_permute_indices=None, reverse_indices=None):
        return {}

    monkeypatch.setattr(accel.modules.utils, "construct_jagged_tensors_inference", page_form)
    _fails(BY_IDENT["D19"], ctx, "accel: page_form((", "remove_padding=True on 2 padding rows raised TypeError")


def test_d19_fails_when_use_gather_select_changes_the_rows(monkeypatch, ctx):
    original = refimpl.modules.utils.construct_jagged_tensors

    def reversed_when_gathering(*args, use_gather_select=False, **kwargs):
        out = original(*args, **kwargs)
        if use_gather_select:
            for jt in out.values():
                jt.values()[:] = jt.values()[::-1].copy()
        return out

    monkeypatch.setattr(refimpl.modules.utils, "construct_jagged_tensors",
                        _with_signature(reversed_when_gathering, original))
    _fails(BY_IDENT["D19"], ctx, "refimpl: use_gather_select=True gave")


def _with_signature(fn, like):
    """fn carrying like's signature, so that only its behaviour differs."""
    fn.__signature__ = __import__("inspect").signature(like)
    return fn
