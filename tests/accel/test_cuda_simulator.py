"""Runs tests/cuda under Numba's CUDA simulator, so the CUDA kernels are exercised on machines without a GPU.

The simulator must be switched on before numba is imported, hence the subprocess; tests/cuda/conftest.py
prints the backend that actually ran, which this test checks. The simulator runs every CUDA thread in Python
on one core, so tests/conftest.py starts the subprocess as soon as collection ends (`start_simulator_run`):
it runs on the second core beside the rest of the suite, and this test waits for its result.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cuda, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1800
_RUN = {}


def start_simulator_run() -> None:
    """Start `pytest tests/cuda` under NUMBA_ENABLE_CUDASIM=1 in the background (once)."""
    if "proc" in _RUN:
        return
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    log = tempfile.TemporaryFile(mode="w+")
    _RUN["log"] = log
    _RUN["proc"] = subprocess.Popen(
        [sys.executable, "-m", "pytest", "tests/cuda", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )


def stop_simulator_run() -> None:
    """Kill a background run the session no longer waits for (an interrupted or failing-fast session)."""
    proc = _RUN.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    log = _RUN.get("log")
    if log is not None and not log.closed:
        log.close()


def test_cuda_folder_passes_under_the_simulator():
    start_simulator_run()
    proc = _RUN["proc"]
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_simulator_run()
        pytest.fail(f"tests/cuda under the simulator took over {TIMEOUT_S} s")
    _RUN["log"].seek(0)
    output = _RUN["log"].read()
    report = output[-6000:]
    assert proc.returncode == 0, report
    assert "recspec cuda backend: simulator" in output, report
    assert "device" not in re.search(r"recspec cuda backend: (.*)", output).group(1), report
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, report
    assert not re.search(r"\d+ (failed|errors?)", output), report
