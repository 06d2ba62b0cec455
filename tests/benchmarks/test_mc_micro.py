"""benchmarks/mc_micro.py on the tiny config: the id stream has the promised shape, accel and TorchRec emit the
same remapped ids step after step for every policy, and the printed table is complete. No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# `benchmarks` lives in the repository root but is not part of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import mc_micro as mm  # noqa: E402

TINY = mm.CONFIGS["tiny"]


def test_batches_are_seeded_zipf_ids_in_the_id_space():
    a, b = mm.make_batches(TINY, 3, seed=1), mm.make_batches(TINY, 3, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ids = torch.cat(a).numpy()
    assert ids.shape == (3 * TINY.batch,) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < TINY.id_space
    # Zipf: the most frequent id (rank 0, scattered to 0) carries a large share; many ids appear once.
    values, counts = np.unique(ids, return_counts=True)
    assert values[np.argmax(counts)] == 0 and counts.max() > 0.05 * ids.size
    assert (counts == 1).sum() > 0.2 * values.size


@pytest.mark.parametrize("policy", mm.POLICIES)
@pytest.mark.parametrize("interval", [1, 3])
def test_accel_and_torchrec_remap_alike(policy, interval):
    pytest.importorskip("torchrec", reason="TorchRec is the benchmark's reference provider")
    batches = mm.make_batches(TINY, 12, seed=2)
    streams = {name: mm.Stream(m, jagged, batches) for name, (m, jagged) in mm.modules(TINY, policy, interval).items()}
    assert set(streams) == {"accel", "torchrec"}
    mm.warm_up(streams, 4, interval)
    for _ in range(8):
        assert torch.equal(streams["accel"].step(), streams["torchrec"].step())
    assert torch.equal(streams["accel"].module._mch_sorted_raw_ids, streams["torchrec"].module._mch_sorted_raw_ids)


def test_main_prints_every_case(capsys):
    pytest.importorskip("torchrec", reason="TorchRec is the benchmark's reference provider")
    assert mm.main(["--config", "tiny", "--quick", "--policies", "LFU,LRU", "--intervals", "2"]) == 0
    out = capsys.readouterr().out
    for head in ("tiny train LFU interval 2", "tiny train LRU interval 2", "tiny eval remap"):
        line = next(line for line in out.splitlines() if line.startswith(head))
        assert "remapped ids agree: True" in line
    assert out.count("x torchrec") >= 4 and "numpy searchsorted" in out


def test_soak_checks_the_invariants(capsys):
    assert mm.main(["--config", "tiny", "--soak", "5000", "--intervals", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("invariants: all hold") == 3


def test_invariants_catch_a_broken_table():
    m, _ = mm.modules(TINY, "LFU", 1, anchors=False)["accel"]
    assert mm.invariants(m) == []
    state = m.state_dict()
    state["_mch_remapped_ids_mapping"] = torch.zeros(TINY.zch_size, dtype=torch.int64)
    m.load_state_dict(state)
    assert "output ids not a permutation of [off, off + Z)" in mm.invariants(m)
