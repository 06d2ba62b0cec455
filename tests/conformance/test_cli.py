"""python -m conformance: the table, the exit status and every flag."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conformance import adapters
from conformance.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_one_module_with_json(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "conformance", "--module", "CrossNet", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header[:4] == ["module", "property", "device", "cases"] and header[-1] == "status"
    rows = json.loads(out.read_text())
    assert rows and {r["module"] for r in rows} == {"CrossNet"}
    assert {"forward", "forward_f32", "backward_fd", "autograd", "golden_refimpl", "golden_accel"} <= {
        r["property"] for r in rows}
    assert all(r["status"] == "PASS" for r in rows)
    assert set(rows[0]) >= {"module", "property", "cases", "max_abs", "max_err", "unit", "status", "repro", "id",
                            "short_id", "worst"}
    forward = next(r for r in rows if r["property"] == "forward")
    assert forward["id"] == "CrossNet/forward" and len(forward["short_id"]) == 8
    assert set(forward["worst"]) >= {"case", "array", "index", "got", "ref", "abs_err", "ulps", "err"}
    # No progress line leaks into the table when stderr is not a terminal.
    assert "[1/" not in proc.stdout and "[1/" not in proc.stderr


def test_property_filter_and_failure_exit_status(monkeypatch, capsys):
    import accel

    assert main(["--module", "VectorCrossNet", "--property", "forward", "--device", "cpu"]) == 0
    assert "1 properties: 1 passed" in capsys.readouterr().out

    def wrong(self, input):  # the page's bias placement (D3)
        x_l = input
        for w, b in zip(self.kernels, self.bias):
            x_l = input * (x_l @ w + b.view(-1)) + x_l
        return x_l

    monkeypatch.setattr(accel.VectorCrossNet, "forward", wrong)
    assert main(["--module", "VectorCrossNet", "--property", "forward"]) == 1
    out = capsys.readouterr().out
    assert "FAIL VectorCrossNet/forward [cpu]" in out
    assert "repro: python -m conformance --repro VectorCrossNet/forward --device cpu" in out


def test_unknown_module_is_a_usage_error(capsys):
    assert main(["--module", "Transformer"]) == 2
    err = capsys.readouterr().err
    assert "--module expected one of" in err and "CrossNet" in err and "'Transformer'" in err


def test_unknown_property_is_a_usage_error(capsys):
    assert main(["--module", "CrossNet", "--property", "speed"]) == 2
    assert "no property matches" in capsys.readouterr().err


def test_against_torchrec_without_torchrec_exits_with_a_clear_message(monkeypatch, capsys):
    monkeypatch.setattr(adapters, "torchrec_missing", lambda: "ModuleNotFoundError: No module named 'torchrec'")
    assert main(["--against", "torchrec", "--module", "CrossNet"]) == 2
    err = capsys.readouterr().err
    assert "--against torchrec needs TorchRec" in err and "scripts/install-torchrec.sh" in err


def test_against_torchrec_runs_float32_records_or_explains(capsys):
    # Both outcomes are the contract: with TorchRec installed its float32 records pass and the
    # float64 ones are skipped with a reason; without it the command refuses clearly.
    status = main(["--against", "torchrec", "--module", "VectorCrossNet"])
    captured = capsys.readouterr()
    if adapters.torchrec_missing() is None:
        assert status == 0, captured.out
        assert "D3_bias_placement" in captured.out and "SKIP x" in captured.out and "float32-only" in captured.out
    else:
        assert status == 2 and "needs TorchRec" in captured.err


def test_cuda_unavailable_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", "cuda", "--module", "CrossNet"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_default_devices_follow_cuda_availability(monkeypatch):
    from conformance.__main__ import _devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _devices(None) == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _devices(None) == ["cpu", "cuda"] and _devices("cpu") == ["cpu"]


def test_write_golden_then_check_against_it(tmp_path, capsys):
    assert main(["--write-golden", str(tmp_path)]) == 0
    assert (tmp_path / "manifest.json").exists()
    capsys.readouterr()
    assert main(["--module", "DeepFM", "--golden", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "golden_accel" in out and "FAIL" not in out


def test_golden_dir_without_manifest_fails_the_golden_records(tmp_path, capsys):
    assert main(["--module", "MLP", "--property", "golden_refimpl", "--golden", str(tmp_path)]) == 1
    assert "manifest.json" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--against", "jax"]])
def test_bad_choices_exit_through_argparse(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def _wrong_vector_cross(monkeypatch):
    import accel

    def wrong(self, input):  # the page's bias placement (D3)
        x_l = input
        for w, b in zip(self.kernels, self.bias):
            x_l = input * (x_l @ w + b.view(-1)) + x_l
        return x_l

    monkeypatch.setattr(accel.VectorCrossNet, "forward", wrong)


def test_repro_reruns_one_record_and_prints_its_worst_element(monkeypatch, capsys):
    from conformance.properties import RECORDS

    _wrong_vector_cross(monkeypatch)
    assert main(["--repro", "VectorCrossNet/forward", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "1 properties: 0 passed, 1 failed" in out
    short = next(r.short_id for r in RECORDS if r.id == "VectorCrossNet/forward")
    assert f"record     VectorCrossNet/forward  (short id {short})" in out
    for label in ("case", "index", "value", "reference", "abs error", "ULP error", "error"):
        assert f"\n  {label} " in out, label
    assert "repro      python -m conformance --repro VectorCrossNet/forward --device cpu" in out
    # The short id reruns the same record.
    assert main(["--repro", short]) == 1
    assert "record     VectorCrossNet/forward" in capsys.readouterr().out


def test_repro_of_a_float32_record_prints_the_float32_reference_gap(capsys):
    assert main(["--repro", "Perceptron/forward_f32", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "float32 reference" in out and "float32 vs float64 gap" in out
    assert "--repro Perceptron/forward_f32 --device cpu --seed 3" in out


def test_repro_of_an_unknown_id_is_a_usage_error(capsys):
    assert main(["--repro", "CrossNet/forwrd"]) == 2
    err = capsys.readouterr().err
    assert "--repro: record id expected" in err and "'CrossNet/forwrd'" in err and "CrossNet/forward" in err


def test_junit_has_one_testcase_per_row_with_failures_explained(monkeypatch, tmp_path, capsys):
    import xml.etree.ElementTree as ET

    _wrong_vector_cross(monkeypatch)
    path = tmp_path / "junit.xml"
    json_path = tmp_path / "rows.json"
    assert main(["--module", "VectorCrossNet", "--device", "cpu", "--junit", str(path), "--json", str(json_path)]) == 1
    rows = json.loads(json_path.read_text())
    root = ET.parse(path).getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(rows) and root.get("tests") == str(len(rows))
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == sum(r["status"] == "FAIL" for r in rows) == int(root.get("failures")) > 0
    forward = next(c for c in cases if c.get("name") == "forward [cpu]")
    text = forward.find("failure").text
    assert "worst element" in text and "abs_err" in text and "repro: python -m conformance --repro" in text
    assert capsys.readouterr().err == ""


def test_progress_goes_to_stderr_only(capsys):
    assert main(["--module", "SwishLayerNorm", "--property", "forward", "--progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["[1/1] cpu SwishLayerNorm/forward"]
    assert "[1/1]" not in captured.out
    assert main(["--module", "SwishLayerNorm", "--property", "forward", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_progress_rewrites_one_line_on_a_terminal():
    import io

    from conformance.properties import RECORDS
    from conformance.report import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(stream, label="cpu")
    progress(0, 12, RECORDS[0])
    progress(11, 12, RECORDS[1])
    progress.close()
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r") == 4  # two updates, then a blank-out and a return
    assert f"[ 1/12] cpu {RECORDS[0].id}" in text and text.endswith("\r")


def test_list_prints_the_coverage_matrix(tmp_path, capsys):
    path = tmp_path / "coverage.json"
    assert main(["--list", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["item", "kind", "refimpl/cpu", "accel/cpu", "accel/cuda", "torchrec/cpu"]
    assert "0 holes, 0 stale exemptions" in out.splitlines()[-1]
    assert "exempt (no record of their own):" in out and "KeyedJaggedTensor:" in out
    data = json.loads(path.read_text())
    assert data["holes"] == [] and {i["name"] for i in data["items"]} >= {"CrossNet", "KeyedJaggedTensor"}


def test_list_one_module_and_a_hole_exits_1(monkeypatch, capsys):
    from conformance import coverage

    assert main(["--list", "--module", "crossnet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("CrossNet ") and "1 public items: 1 with records" in lines[-1]
    monkeypatch.delitem(coverage.EXEMPTIONS, "QuantConfig")
    assert main(["--list"]) == 1
    assert "HOLE QuantConfig" in capsys.readouterr().out
    assert main(["--list", "--module", "Transformer"]) == 2
    assert "--module expected a public name" in capsys.readouterr().err
