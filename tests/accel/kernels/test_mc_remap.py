"""accel.kernels.mc_remap (CPU): the remap against NumPy's searchsorted formula, the id-range check, and the
launcher's argument checks. The bounds-checked run repeats the formula test under NUMBA_BOUNDSCHECK=1."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from accel.kernels import mc_remap

MAX = np.iinfo(np.int64).max
ROOT = Path(__file__).resolve().parents[3]


def numpy_remap(raw, mapping, values, miss):
    """out_j = map[pos_j] if raw[pos_j] == v_j else miss, pos_j = searchsorted_left(raw[:Z-1], v_j)."""
    pos = np.searchsorted(raw[:-1], values, side="left")
    return np.where(raw[pos] == values, mapping[pos], miss)


def random_table(rng, Z, filled):
    raw = np.full(Z, MAX, np.int64)
    raw[:filled] = np.sort(rng.choice(np.arange(-50, 200), filled, replace=False))
    return raw, rng.permutation(Z).astype(np.int64) + 7


# n >= 2048 takes the sorted, galloping path; smaller batches are searched id by id.
@pytest.mark.parametrize("Z,filled,n", [(1, 0, 5), (2, 1, 0), (5, 3, 17), (64, 63, 300), (64, 10, 1),
                                        (64, 63, 5000), (200, 150, 2048), (3, 0, 3000)])
def test_remap_matches_the_searchsorted_formula(Z, filled, n):
    rng = np.random.default_rng(Z * 100 + n)
    raw, mapping = random_table(rng, Z, filled)
    values = np.concatenate([rng.integers(-60, 210, n), raw[:filled][: n // 3]]).astype(np.int64)
    miss = 7 + Z - 1
    got = mc_remap.remap_ids(torch.from_numpy(raw), torch.from_numpy(mapping), torch.from_numpy(values), miss)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), numpy_remap(raw, mapping, values, miss))


def test_sorted_path_over_the_whole_id_range():
    rng = np.random.default_rng(4)
    raw = np.sort(rng.integers(-(2**63), 2**63 - 1, 99, dtype=np.int64))
    raw = np.append(raw, MAX)
    mapping = np.arange(100, dtype=np.int64)
    values = np.concatenate([rng.choice(raw[:-1], 2000), rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64),
                             [-(2**63), MAX - 1]]).astype(np.int64)
    got = mc_remap.remap_ids(torch.from_numpy(raw), torch.from_numpy(mapping), torch.from_numpy(values), 99)
    np.testing.assert_array_equal(got.numpy(), numpy_remap(raw, mapping, values, 99))


def test_ids_beyond_the_last_managed_slot_compare_with_the_sentinel_slot():
    raw = torch.tensor([3, 9, MAX])
    mapping = torch.tensor([20, 21, 22])
    got = mc_remap.remap_ids(raw, mapping, torch.tensor([10, MAX, 9, -(2**63)]), 99)
    # 10 and -2^63 miss; MAX lands on the sentinel slot and equals it (why callers reject MAX first).
    assert got.tolist() == [99, 22, 21, 99]


def test_first_outside():
    v = torch.tensor([0, 5, -3, 9, 12])
    assert mc_remap.first_outside(v, -3, 13) == -1
    assert mc_remap.first_outside(v, 0, 10) == 2
    assert mc_remap.first_outside(v, -5, 12) == 4
    assert mc_remap.first_outside(v[:0], 0, 1) == -1
    assert mc_remap.first_outside(torch.tensor([1, MAX]), -(2**63), MAX) == 1


@pytest.mark.parametrize("args,err,pattern", [
    ((torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)),
     TypeError, "raw expected dtype torch.int64, got torch.int32"),
    ((torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64)),
     ValueError, r"values expected a 1-D tensor, got shape \(2, 2\)"),
    ((torch.zeros(3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)),
     ValueError, "raw and mapping expected the same length Z >= 1, got 3 and 4"),
    ((torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)),
     ValueError, "got 0 and 0"),
])
def test_launcher_checks(args, err, pattern):
    with pytest.raises(err, match=pattern):
        mc_remap.remap_ids(*args, 0)


@pytest.mark.slow
def test_remap_under_boundscheck():
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "formula or sentinel or first_outside or whole_id_range"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
