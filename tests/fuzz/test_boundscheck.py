"""NUMBA_BOUNDSCHECK=1 is effective: CI runs the whole suite with it, and a kernel built under it raises
IndexError on an out-of-range access instead of reading past the array (from a parallel kernel, as the cause
of a SystemError), even when an unchecked build of the
same function sits in Numba's disk cache from an earlier run (the cache key leaves the flag out).

Each probe runs in its own interpreter with a private NUMBA_CACHE_DIR: a first run without the flag fills the
cache, a second run with it makes deliberately out-of-range calls (reads only: a too-short parameter vector
or saved row statistic) and reports, per kernel, what happened.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = r"""
import json, sys
import numba
import numpy as np
from accel.kernels import _jagged, fm, mc_eviction, vector_cross

f32 = np.float32
rows, features = 3, 5
x = np.ones((rows, features), f32)


def fm_backward(short):
    # row_sum shorter than the rows: the kernel reads row_sum[b] past its end.
    fm._fm_backward_cpu(np.ones((rows, 1), f32), x, np.zeros(rows - short, f32), np.empty_like(x))


def vector_cross_forward(short):
    n = features - short
    vector_cross._vc_forward_cpu(x, x, np.ones(n, f32), np.zeros(n, f32), np.empty_like(x), np.empty(rows, f32), 1)


def first_bad_offset(short):
    # offsets[0] of an empty offsets array.
    _jagged._first_bad_offset(np.zeros(1 - short, np.int64), 0)


def unit_decay_scores(short):
    # counts shorter than last.
    mc_eviction._unit_decay_scores(True, 5, np.ones(4 - short, np.int64), np.zeros(4, np.int64),
                                   np.empty(4, np.float32))


CASES = {"fm backward": fm_backward, "vector_cross forward": vector_cross_forward,
         "_first_bad_offset": first_bad_offset, "_unit_decay_scores": unit_decay_scores}
report = {"boundscheck": bool(numba.config.BOUNDSCHECK)}
for name, case in CASES.items():
    if sys.argv[1] == "warm":
        try:
            case(0)
            report[name] = "ran"
        except AttributeError as exc:
            report[name] = "missing: " + str(exc)
        continue
    try:
        case(1)
        report[name] = "no error"
    except AttributeError as exc:
        report[name] = "missing: " + str(exc)
    except Exception as exc:
        # A parallel kernel hands its IndexError on as the cause of a SystemError.
        cause = exc if isinstance(exc, IndexError) else exc.__cause__
        report[name] = f"{type(cause).__name__}: {cause} (raised as {type(exc).__name__})"
print(json.dumps(report))
"""

# Two parallel kernels (prange over chunks of rows, prange over blocks of rows) and a serial one; each
# compilation of a parallel kernel costs seconds, so the probe keeps to these.
CPU_KERNELS = ("fm backward", "vector_cross forward", "_first_bad_offset", "_unit_decay_scores")

@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cache = tmp_path_factory.mktemp("numba-cache")
    reports = {}
    for mode, flag in (("warm", "0"), ("probe", "1")):
        env = dict(os.environ, NUMBA_BOUNDSCHECK=flag, NUMBA_CACHE_DIR=str(cache),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        run = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        reports[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    return reports


def test_ci_runs_the_suite_with_bounds_checks():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"NUMBA_BOUNDSCHECK=1 python -m pytest", ci), ci


def test_the_probe_runs_with_and_without_the_flag(probe):
    assert probe["warm"]["boundscheck"] is False
    assert probe["probe"]["boundscheck"] is True
    assert all(probe["warm"][name] == "ran" for name in CPU_KERNELS), probe["warm"]


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_cpu_kernels_raise_index_error_under_boundscheck(probe, kernel):
    assert probe["probe"][kernel].startswith("IndexError"), probe["probe"][kernel]
    assert "index is out of bounds" in probe["probe"][kernel]

