"""benchmarks/embedding_micro.py on the tiny config: every provider agrees with a NumPy pooling of the same
inputs, the printed table is complete and the training providers step. No timing is asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

# `benchmarks` lives in the repository root but is not part of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import embedding_micro as em


def numpy_pooling(x: em.Inputs) -> np.ndarray:
    """out[b, t D:(t + 1) D] = sum of table t's rows over bag b of feature t (float64)."""
    B = x.grad.shape[0]
    o = x.offsets.numpy()
    ids = x.ids.numpy()
    return np.concatenate([
        np.stack([w.double().numpy()[ids[o[t * B + b]:o[t * B + b + 1]]].sum(axis=0) for b in range(B)])
        for t, w in enumerate(x.weights)
    ], axis=1)


def test_inputs_have_empty_bags_and_torch_owned_tables():
    x = em.make_inputs(em.CONFIGS["tiny"])
    assert (x.lengths == 0).any()
    assert int(x.offsets[-1]) == x.ids.numel() and x.ids.max() < em.CONFIGS["tiny"].rows
    assert x.gbytes == pytest.approx(x.ids.numel() * 16 * 4 / 1e9)


def test_forward_providers_agree_with_numpy():
    x = em.make_inputs(em.CONFIGS["tiny"])
    want = numpy_pooling(x)
    found = em.providers(x, "forward", skip=("fbgemm",))
    assert {"accel", "torch.embedding_bag"} <= set(found)
    for name, run in found.items():
        np.testing.assert_allclose(run().detach().numpy(), want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_training_providers_run_on_clones_of_the_tables():
    x = em.make_inputs(em.CONFIGS["tiny"])
    before = numpy_pooling(x)
    for run in em.providers(x, "train", skip=("fbgemm", "torchrec")).values():
        run()
    # The benchmark steps clones of the tables: the inputs are untouched.
    np.testing.assert_array_equal(numpy_pooling(x), before)


def test_main_prints_a_row_per_provider(capsys):
    assert em.main(["--config", "tiny", "--quick", "--only", "forward", "--skip", "fbgemm,torchrec"]) == 0
    out = capsys.readouterr().out
    assert "tiny forward:" in out and "others' CPU use" in out
    for name in ("accel", "torch.embedding_bag"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert float(re.search(r"([0-9.]+) ms", line).group(1)) > 0
