"""Runs tests/cuda under Numba's CUDA simulator, so the CUDA kernels are exercised on machines without a GPU.

The simulator must be switched on before numba is imported, hence the subprocess; tests/cuda/conftest.py
prints the backend that actually ran, which this test checks.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cuda, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_cuda_folder_passes_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/cuda", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert "recspec cuda backend: simulator" in proc.stdout, report
    assert "device" not in re.search(r"recspec cuda backend: (.*)", proc.stdout).group(1), report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) > 0, report
    assert not re.search(r"\d+ (failed|errors?)", proc.stdout), report
