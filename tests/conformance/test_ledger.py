"""The discrepancy ledger: its content, its validation, and the runner's use of it."""

import json

import pytest

from conformance import ledger
from conformance.properties import RECORDS
from conformance.records import Record
from conformance.runner import FAIL, PASS, Context, Outcome, run_record

ENTRY = {"id": "D3", "item": "VectorCrossNet formula", "page": "x0 * (W x + b) + x", "torchrec": "x0 * (W x) + b + x",
         "recspec": "TorchRec's", "reason": "TorchRec's default", "property": "VectorCrossNet/D3_bias_placement"}


def test_the_ledger_loads_with_a_reason_per_entry():
    entries = ledger.load()
    assert {"D1", "D2", "D3", "D4", "D5", "D8", "D9", "D10", "D11"} <= set(entries)
    for entry in entries.values():
        for text in (entry.item, entry.page, entry.torchrec, entry.recspec, entry.reason):
            assert text.strip(), entry.id
        assert entry.expected is True


def test_each_entry_names_the_record_that_demonstrates_it():
    records = {r.id: r for r in RECORDS}
    for entry in ledger.load().values():
        assert entry.property in records, f"{entry.id}: no record {entry.property}"
        record = records[entry.property]
        assert record.kind == "discrepancy" and record.discrepancy == entry.id


def test_each_discrepancy_record_is_in_the_ledger():
    entries = ledger.load()
    for record in RECORDS:
        if record.kind == "discrepancy":
            assert record.discrepancy in entries and entries[record.discrepancy].property == record.id


def _data(*entries):
    return {"schema_version": ledger.SCHEMA_VERSION, "entries": list(entries)}


def test_parse_rejects_an_empty_reason():
    with pytest.raises(ValueError, match=r"entries\[0\] \(D3\) field 'reason' expected a non-empty string, got ' '"):
        ledger.parse(_data(dict(ENTRY, reason=" ")))


def test_parse_rejects_duplicates_unknown_fields_and_other_schemas():
    with pytest.raises(ValueError, match=r"id D3 appears twice"):
        ledger.parse(_data(ENTRY, ENTRY))
    with pytest.raises(ValueError, match=r"unknown fields \['severity'\]"):
        ledger.parse(_data(dict(ENTRY, severity="high")))
    with pytest.raises(ValueError, match=r"schema_version expected 1, got 2"):
        ledger.parse({"schema_version": 2, "entries": []})
    with pytest.raises(ValueError, match=r"'expected' must be true or false, got 'yes'"):
        ledger.parse(_data(dict(ENTRY, expected="yes")))


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_data(ENTRY)))
    assert ledger.load(path)["D3"].torchrec == "x0 * (W x) + b + x"


def _discrepancy_record(status):
    def check(record, ctx):
        return Outcome(status, 1, detail="module gave [[4, 6]], expected [[3, 4]]" if status == FAIL else "")

    return Record("VectorCrossNet", "D3_bias_placement", "discrepancy", "hand", (), check, "sem. 16 D3",
                  discrepancy="D3")


def test_an_expected_discrepancy_that_stops_reproducing_fails_loudly():
    ctx = Context(ledger=ledger.parse(_data(ENTRY)))
    assert run_record(_discrepancy_record(PASS), ctx).status == PASS
    row = run_record(_discrepancy_record(FAIL), ctx)
    assert row.status == FAIL
    assert "expected discrepancy D3 (VectorCrossNet formula) no longer reproduces" in row.detail
    assert "module gave [[4, 6]]" in row.detail and "discrepancies.json" in row.detail


def test_a_resolved_discrepancy_that_reproduces_again_fails():
    ctx = Context(ledger=ledger.parse(_data(dict(ENTRY, expected=False))))
    assert run_record(_discrepancy_record(FAIL), ctx).status == PASS
    row = run_record(_discrepancy_record(PASS), ctx)
    assert row.status == FAIL and "marked resolved" in row.detail


def test_a_discrepancy_missing_from_the_ledger_fails():
    row = run_record(_discrepancy_record(PASS), Context(ledger={}))
    assert row.status == FAIL and "does not list" in row.detail


def test_the_discrepancy_page_shows_the_current_ledger():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "discrepancies.md").read_text(encoding="utf-8")
    assert ledger.render_into(page, ledger.load()) == page, "run: python -m conformance.ledger docs/discrepancies.md"


def test_rendering_replaces_only_the_marked_block():
    entries = ledger.parse({"schema_version": ledger.SCHEMA_VERSION, "entries": [ENTRY]})
    page = f"intro\n{ledger.BEGIN_MARK}\nstale | table\n{ledger.END_MARK}\noutro\n"
    out = ledger.render_into(page, entries)
    assert out.startswith("intro\n") and out.endswith(f"{ledger.END_MARK}\noutro\n")
    assert "stale" not in out and "| D3 | VectorCrossNet formula |" in out
    with pytest.raises(ValueError, match="no ledger block"):
        ledger.render_into("no markers here", entries)
