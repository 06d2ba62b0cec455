"""The registry as tests: every record of conformance.properties.dense, run by the runner.

Ids are `module/property`, so `pytest -k "CrossNet/forward"` selects like `--module/--property`.
"""

import numpy as np
import pytest
from hypothesis import given, settings

from conformance import adapters, generators
from conformance.properties import dense
from conformance.records import Build
from conformance.runner import PASS, Context, run_record


@pytest.fixture(scope="module")
def ctx():
    return Context()


@pytest.mark.parametrize("record", dense.RECORDS, ids=lambda r: r.id)
def test_record(record, ctx):
    row = run_record(record, ctx)
    assert row.status == PASS, f"{row.detail}\nrepro: {row.repro}"


def test_every_golden_build_has_both_golden_records():
    files = {f"{b.name}.npz" for b in dense.GOLDEN}
    referenced = {r.data[0] for r in dense.RECORDS if r.property.startswith("golden_")}
    assert files == referenced


@settings(max_examples=15, deadline=None)
@given(x=generators.dense_inputs((5,), max_batch=4, max_magnitude=10.0))
def test_crossnet_forward_on_drawn_inputs(x):
    # The float64 forward property on Hypothesis-drawn inputs (any batch size, B = 0 included).
    build = Build("CrossNet", (5, 2), in_shape=(5,), reduction=10)
    pair = adapters.make_pair(build, seed=0)
    ref = adapters.run_ref(pair.ref, x, np.float64)
    got = adapters.run_torch(pair.other, x, np.float64)
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1.0)
    assert got.shape == ref.shape == x.shape
    assert np.abs(got - ref).max(initial=0.0) <= 16 * 10 * np.finfo(np.float64).eps * scale


@settings(max_examples=15, deadline=None)
@given(embeddings=generators.embedding_lists(max_tensors=3, max_batch=3, max_dim=4))
def test_fm_pairwise_on_drawn_embedding_lists(embeddings):
    # FM over every scalar pair (sem. 4, D8) on drawn lists of 2-D and 3-D embeddings, B = 0 included.
    build = Build("FactorizationMachine", in_shape=tuple(e.shape[1:] for e in embeddings))
    pair = adapters.make_pair(build, seed=0)
    flat = np.concatenate([e.reshape(e.shape[0], int(np.prod(e.shape[1:]))) for e in embeddings], axis=1)
    expected = np.array([[sum(row[j] * row[k] for j in range(len(row)) for k in range(j + 1, len(row)))]
                         for row in flat]).reshape(flat.shape[0], 1)
    scale = max(float((np.abs(flat).sum(axis=1) ** 2).max(initial=0.0)), 1.0)
    for got in (adapters.run_ref(pair.ref, embeddings, np.float64),
                adapters.run_torch(pair.other, embeddings, np.float64)):
        assert got.shape == expected.shape
        assert np.abs(got - expected).max(initial=0.0) <= 64 * flat.shape[1] * np.finfo(np.float64).eps * scale
