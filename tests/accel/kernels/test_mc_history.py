"""accel.kernels.mc_history (CPU): recording into the window, growing it, and the coalesce against NumPy's
unique with counts and a per-id maximum of the recorded iterations."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from accel.kernels import mc_history

ROOT = Path(__file__).resolve().parents[3]


def numpy_coalesce(h, hl):
    """u = unique(h), c_j = #{h == u_j}, la_j = max hl over h == u_j."""
    u, inverse, c = np.unique(h, return_inverse=True, return_counts=True)
    la = np.full(u.shape, np.iinfo(np.int64).min)
    np.maximum.at(la, inverse, hl)
    return u, c, la


WINDOWS = {
    "empty": np.array([], np.int64),
    "one": np.array([5], np.int64),
    "duplicates": np.array([3, 3, 3, 1, 3, 1], np.int64),
    "extremes": np.array([2**63 - 2, -(2**63), 0, -1, 2**63 - 2, -(2**63)], np.int64),
    "random_small": np.random.default_rng(0).integers(-40, 40, 500),
    "random_wide": np.random.default_rng(1).integers(-(2**62), 2**62, 3000),
    "zipf": (np.random.default_rng(2).zipf(1.3, 4000) * 2654435761) % 10**9,
}


@pytest.mark.parametrize("name", list(WINDOWS))
def test_coalesce_matches_numpy(name):
    h = WINDOWS[name].astype(np.int64)
    rng = np.random.default_rng(len(h))
    hl = rng.integers(0, 50, h.shape[0])  # not chronological: the maximum is taken, not the last entry
    u, c, la = mc_history.coalesce(torch.from_numpy(h), torch.from_numpy(hl))
    want = numpy_coalesce(h, hl)
    for got, ref in zip((u, c, la), want):
        np.testing.assert_array_equal(got.numpy(), ref)
    u2, c2, none = mc_history.coalesce(torch.from_numpy(h), None)
    assert none is None and torch.equal(u2, u) and torch.equal(c2, c)


def test_record_appends_ids_and_iterations():
    h = torch.zeros(8, dtype=torch.int64)
    hl = torch.zeros(8, dtype=torch.int64)
    p = mc_history.record(h, hl, 0, torch.tensor([4, 5]), 3)
    p = mc_history.record(h, hl, p, torch.tensor([], dtype=torch.int64), 4)
    p = mc_history.record(h, None, p, torch.tensor([6, 7, 8]), 5)
    assert p == 5
    assert h[:5].tolist() == [4, 5, 6, 7, 8]
    assert hl[:5].tolist() == [3, 3, 0, 0, 0]
    with pytest.raises(ValueError, match="record: window expected room for 9 entries, got 8"):
        mc_history.record(h, hl, 5, torch.arange(4), 6)


def test_grown_keeps_the_recorded_prefix():
    h = torch.arange(4)
    assert mc_history.grown(h, 4, 3) is h
    bigger = mc_history.grown(h, 3, 5)
    assert bigger.shape == (8,) and bigger[:3].tolist() == [0, 1, 2]
    assert mc_history.grown(h, 2, 20).shape == (20,)


def test_coalesce_rejects_mismatched_windows():
    with pytest.raises(TypeError, match="h and hl expected int64 tensors of one shape"):
        mc_history.coalesce(torch.arange(3), torch.arange(4))


@pytest.mark.slow
def test_history_under_boundscheck():
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "not boundscheck"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
