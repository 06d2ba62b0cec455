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
    assert set(rows[0]) >= {"module", "property", "cases", "max_abs", "max_err", "unit", "status", "repro"}


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
    assert "FAIL VectorCrossNet/forward [cpu]" in out and "repro: python -m conformance --module VectorCrossNet" in out


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
