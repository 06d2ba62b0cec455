"""benchmarks.plots: lowest medians over runs, anchor/accel ratios, and (with matplotlib) the PNG files
and the benchmarks page's snippet. Inputs are small hand-written sweep documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# `benchmarks` lives in the repository root but is not part of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.plots import best_medians, load_run, markdown_snippet, speedups

CASES = [
    {"name": "CrossNet", "label": "CrossNet(8, 1 layer)"},
    {"name": "FactorizationMachine", "label": "FactorizationMachine on [8, 2, 3]"},
]


def _row(case, provider, role, fwd, fwd_bwd, status="ok", device="cpu"):
    return {"case": case, "provider": provider, "role": role, "device": device, "status": status,
            "note": "", "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}


def _run(rows, cases=CASES, revision="abc1234"):
    return {"machine": {"recspec": revision}, "settings": {"batch": 8}, "cases": cases, "rows": rows, "targets": []}


RUN_1 = _run([
    _row("CrossNet", "torchrec-cpu", "anchor", 10.0, 30.0),
    _row("CrossNet", "accel-cpu", "accel", 8.0, 20.0),
    _row("CrossNet", "gemm-cpu", "gemm", 7.0, 18.0),
    _row("FactorizationMachine", "torchrec-cpu", "anchor", 4.0, 12.0),
    _row("FactorizationMachine", "accel-cpu", "accel", 1.0, 6.0),
    _row("FactorizationMachine", "gemm-cpu", "gemm", None, None, status="n/a"),
])
# A second, partly disturbed run of CrossNet only: some cells lower, some higher.
RUN_2 = _run([
    _row("CrossNet", "torchrec-cpu", "anchor", 12.0, 24.0),
    _row("CrossNet", "accel-cpu", "accel", 5.0, 25.0),
    _row("CrossNet", "gemm-cpu", "gemm", 9.0, 1.0, status="error"),
], cases=CASES[:1], revision="def5678")


def test_best_medians_takes_the_lowest_median_per_cell_over_runs():
    cases, cells = best_medians([RUN_1, RUN_2])
    assert [c["name"] for c in cases] == ["CrossNet", "FactorizationMachine"]
    assert cells[("CrossNet", "torchrec-cpu")]["fwd_ms"] == 10.0
    assert cells[("CrossNet", "torchrec-cpu")]["fwd_bwd_ms"] == 24.0
    assert cells[("CrossNet", "accel-cpu")]["fwd_ms"] == 5.0
    assert cells[("CrossNet", "accel-cpu")]["fwd_bwd_ms"] == 20.0


def test_best_medians_ignores_rows_that_did_not_run():
    _, cells = best_medians([RUN_1, RUN_2])
    assert ("FactorizationMachine", "gemm-cpu") not in cells
    # RUN_2's failed gemm row (fwd+bwd 1.0) must not win over RUN_1's 18.0.
    assert cells[("CrossNet", "gemm-cpu")]["fwd_bwd_ms"] == 18.0


def test_speedups_divide_the_anchor_by_accel_on_the_same_device():
    _, cells = best_medians([RUN_1, RUN_2])
    ratios = {(case, provider): (fwd, fwd_bwd) for case, provider, fwd, fwd_bwd in speedups(cells)}
    assert set(ratios) == {("CrossNet", "accel-cpu"), ("FactorizationMachine", "accel-cpu")}
    assert ratios[("CrossNet", "accel-cpu")] == pytest.approx((10.0 / 5.0, 24.0 / 20.0))
    assert ratios[("FactorizationMachine", "accel-cpu")] == pytest.approx((4.0, 2.0))


def test_speedups_without_an_anchor_on_that_device_are_none():
    run = _run([_row("CrossNet", "accel-cuda", "accel", 1.0, 2.0, device="cuda"),
                _row("CrossNet", "torchrec-cpu", "anchor", 10.0, 30.0)], cases=CASES[:1])
    _, cells = best_medians([run])
    assert speedups(cells) == [("CrossNet", "accel-cuda", None, None)]


def test_load_run_rejects_other_json(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"module": "CrossNet"}]))
    with pytest.raises(ValueError, match=r"rows\.json: expected the JSON of `python -m benchmarks dense --json`"):
        load_run(path)
    path.write_text(json.dumps({"machine": {}, "cases": []}))
    with pytest.raises(ValueError, match=r"missing \['rows'\]"):
        load_run(path)


def test_markdown_snippet_links_relative_to_the_docs_folder(tmp_path):
    docs = tmp_path / "docs"
    runs = [docs / "reference" / "data" / "a.json"]
    images = [docs / "img" / "dense-times.png"]
    text = markdown_snippet(runs, images, docs, "Title", "python -m benchmarks.plots a.json")
    assert "[`a.json`](reference/data/a.json)" in text
    assert "![dense-times](img/dense-times.png)" in text
    assert "`python -m benchmarks.plots a.json`" in text


def test_markdown_snippet_names_runs_outside_the_docs_folder_without_a_link(tmp_path):
    text = markdown_snippet([tmp_path / "elsewhere.json"], [tmp_path / "docs" / "img" / "p.png"],
                            tmp_path / "docs", "Title", "cmd")
    assert "`elsewhere.json`" in text
    assert "](../" not in text


def test_main_writes_two_pngs_and_the_snippet(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (pip install -e '.[docs]')")
    from benchmarks.plots import main

    runs = []
    for i, run in enumerate((RUN_1, RUN_2)):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(run))
        runs.append(str(path))
    snippet = tmp_path / "snippet.md"
    assert main(runs + ["--out", str(tmp_path / "img"), "--prefix", "t", "--markdown", str(snippet),
                        "--docs-dir", str(tmp_path)]) == 0
    for name in ("t-times.png", "t-speedup.png"):
        data = (tmp_path / "img" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 1000, name
    text = snippet.read_text()
    assert "![t-times](img/t-times.png)" in text and "![t-speedup](img/t-speedup.png)" in text
    # The default title names the revisions of every run.
    assert "recspec abc1234, def5678" in text


def test_main_rejects_runs_without_a_measurement(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(_run([_row("CrossNet", "gemm-cpu", "gemm", None, None, status="n/a")])))
    from benchmarks.plots import main

    with pytest.raises(ValueError, match="runs: expected at least one row with status 'ok', got none"):
        main([str(path), "--out", str(tmp_path)])
