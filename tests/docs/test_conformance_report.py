"""docs/conformance_report.py: the report page rendered from `python -m conformance --json` rows."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("recspec_conformance_report",
                                                  REPO / "docs" / "conformance_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load()


def _row(module, prop, status, device="cpu", **extra):
    row = {"module": module, "property": prop, "kind": "forward", "device": device, "against": "accel",
           "cases": 3, "max_abs": 1.5e-16, "max_err": 0.5, "unit": "ulp", "tolerance": 4.0, "status": status,
           "detail": "", "repro": f"python -m conformance --module {module} --property '{prop}' --device {device}"}
    row.update(extra)
    return row


ROWS = [
    _row("CrossNet", "forward", "PASS"),
    _row("CrossNet", "forward", "PASS", device="cuda (simulator)"),
    _row("MLP", "golden", "FAIL", detail="worst element [2, 1]: 1.0 vs 1.5 | off by *half*"),
    _row("MLP", "D10_unknown_activation", "SKIP", max_abs=None, max_err=None, unit="", tolerance=None),
]


def test_render_counts_statuses_and_modules():
    page = report.render([{"name": "cpu.json", "date": "2026-01-01 00:00 UTC", "rows": ROWS}], "abc1234")
    assert "**2 PASS, 1 FAIL, 1 SKIP** of 4 properties." in page
    assert "| CrossNet | cpu, cuda (simulator) | 2 | 0 | 0 |" in page
    assert "| MLP | cpu | 0 | 1 | 1 |" in page
    assert "| `cpu.json` | 2026-01-01 00:00 UTC | 4 |" in page
    assert "recspec revision `abc1234`." in page


def test_render_lists_each_failure_with_its_repro_and_escapes_markdown():
    page = report.render([{"name": "r.json", "date": "d", "rows": ROWS}])
    assert ("- **MLP / golden** (cpu): worst element \\[2, 1\\]: 1.0 vs 1.5 \\| off by \\*half\\*\n"
            "  Repro: `python -m conformance --module MLP --property 'golden' --device cpu`") in page
    assert "revision" not in page


def test_render_rows_show_errors_with_their_unit_and_dashes_for_none():
    page = report.render([{"name": "r.json", "date": "d", "rows": ROWS}])
    assert "| CrossNet | forward | forward | cpu | accel | 3 | 1.5e-16 | 0.5 ulp | 4 ulp | PASS |" in page
    assert "| MLP | D10\\_unknown\\_activation | forward | cpu | accel | 3 | - | - | - | SKIP |" in page


def test_render_shows_the_worst_element_and_the_run_time_when_the_rows_have_them():
    worst = {"case": "tiny/0", "array": "out", "index": [2, 1], "got": 1.0, "ref": 1.5, "ulps": 4.0,
             "ref32": None, "note": ""}
    rows = [_row("MLP", "forward", "FAIL", worst=worst, seconds=1.25), _row("MLP", "golden", "PASS", seconds=2.0)]
    page = report.render([{"name": "r.json", "date": "d", "rows": rows}])
    assert "  Worst element: case tiny/0; array out; index \\[2, 1\\]; got 1; ref 1.5; ulps 4.\n" in page
    assert "**1 PASS, 1 FAIL** of 2 properties in 3 s." in page


def test_render_without_failures_says_none():
    page = report.render([{"name": "r.json", "date": "d", "rows": ROWS[:1]}])
    assert "## Failures\n\nNone.\n" in page


def test_load_rows_rejects_other_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match=r"bad\.json: expected a JSON list of rows .* got dict"):
        report.load_rows(path)
    path.write_text(json.dumps([{"module": "CrossNet", "status": "PASS"}]))
    with pytest.raises(ValueError, match=r"row 0: expected the keys .* missing \['property', 'device'\]"):
        report.load_rows(path)


def test_main_writes_the_page_from_several_runs(tmp_path):
    cpu, cuda = tmp_path / "cpu.json", tmp_path / "cuda.json"
    cpu.write_text(json.dumps(ROWS[:1] + ROWS[2:]))
    cuda.write_text(json.dumps(ROWS[1:2]))
    out = tmp_path / "page.md"
    assert report.main([str(cpu), str(cuda), "-o", str(out), "--revision", "r1"]) == 0
    page = out.read_text()
    assert page.startswith("# Conformance report of the latest run\n")
    assert "| `cpu.json` |" in page and "| `cuda.json` |" in page
    assert "**2 PASS, 1 FAIL, 1 SKIP** of 4 properties." in page


def test_committed_report_totals_match_its_rows():
    page = (REPO / "docs" / "conformance_report.md").read_text()
    assert page.startswith("# Conformance report of the latest run\n")
    total = int(re.search(r"\*\* of (\d+) properties(?: in [^.]*)?\.", page).group(1))
    table = page.split("## Every property", 1)[1].strip().splitlines()[2:]
    assert len(table) == total
