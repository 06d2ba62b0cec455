"""Named cases and Hypothesis strategies."""

import numpy as np
import pytest
from hypothesis import find, given, settings

from conformance import generators
from conformance.records import Build

DENSE = Build("CrossNet", (5, 2), in_shape=(5,), label="N=5")
LIST = Build("FactorizationMachine", in_shape=((2, 3), (4,)), label="list")


def test_dense_cases_are_the_named_hand_traceable_ones():
    cases = generators.cases("dense", DENSE, seed=0)
    assert [c.name for c in cases] == ["B=0", "B=1", "B=3", "zeros", "large"]
    shapes = {c.name: c.x.shape for c in cases}
    assert shapes == {"B=0": (0, 5), "B=1": (1, 5), "B=3": (3, 5), "zeros": (2, 5), "large": (2, 5)}
    named = {c.name: c.x for c in cases}
    assert not named["zeros"].any()
    assert np.abs(named["large"]).max() > 100 * np.abs(named["B=3"]).max()


def test_list_inputs_share_the_batch_dimension():
    for case in generators.cases("dense", LIST, seed=0):
        assert isinstance(case.x, list) and len(case.x) == 2
        assert case.x[0].shape[1:] == (2, 3) and case.x[1].shape[1:] == (4,)
        assert case.x[0].shape[0] == case.x[1].shape[0]


def test_smooth_cases_avoid_exact_zeros():
    for case in generators.cases("dense_smooth", DENSE, seed=0):
        assert case.name in ("B=0", "B=1", "B=3")
        assert np.all(case.x != 0)


def test_many_row_cases_for_float32_statistics():
    names = {c.name: c.x.shape[0] for c in generators.cases("dense_many", DENSE, seed=0)}
    assert names["B=64"] == 64 and names["large"] == 64 and names["B=0"] == 0


def test_leading_dims_cases():
    shapes = [c.x.shape for c in generators.cases("leading_dims", DENSE, seed=0)]
    assert shapes == [(2, 3, 5), (0, 3, 5), (1, 1, 1, 5)]


def test_cases_are_reproducible_and_depend_on_the_seed():
    a = generators.cases("dense", DENSE, seed=3)
    b = generators.cases("dense", DENSE, seed=3)
    c = generators.cases("dense", DENSE, seed=4)
    assert all(np.array_equal(x.x, y.x) for x, y in zip(a, b))
    assert not np.array_equal(a[2].x, c[2].x)


def test_unknown_generator():
    with pytest.raises(KeyError, match=r"generator: expected one of .* got 'sparse'"):
        generators.cases("sparse", DENSE, seed=0)


def test_cotangent_is_seeded_per_label():
    g1 = generators.cotangent((3, 2), 0, "CrossNet/autograd", "N=5/B=3")
    assert g1.shape == (3, 2)
    assert np.array_equal(g1, generators.cotangent((3, 2), 0, "CrossNet/autograd", "N=5/B=3"))
    assert not np.array_equal(g1, generators.cotangent((3, 2), 0, "CrossNet/autograd", "N=5/B=1"))


@settings(max_examples=20, deadline=None)
@given(x=generators.dense_inputs((3, 4), max_batch=2, max_magnitude=5.0))
def test_dense_inputs_strategy(x):
    assert x.dtype == np.float64 and x.shape[1:] == (3, 4) and 0 <= x.shape[0] <= 2
    assert np.all(np.isfinite(x)) and np.abs(x).max(initial=0.0) <= 5.0


@settings(max_examples=20, deadline=None)
@given(e=generators.embedding_lists(max_tensors=3, max_batch=3, max_dim=4))
def test_embedding_lists_strategy(e):
    assert 1 <= len(e) <= 3
    assert len({a.shape[0] for a in e}) == 1
    assert all(a.ndim in (2, 3) for a in e)


@settings(max_examples=20, deadline=None)
@given(batch=generators.jagged(num_keys=2, max_batch=4, max_length=3, num_embeddings=10, weighted=True))
def test_jagged_strategy_is_a_valid_key_major_layout(batch):
    lengths, offsets, values = batch["lengths"], batch["offsets"], batch["values"]
    assert len(lengths) % 2 == 0 and (lengths >= 0).all()
    assert offsets[0] == 0 and offsets[-1] == len(values) and np.array_equal(np.diff(offsets), lengths)
    assert ((values >= 0) & (values < 10)).all()
    assert batch["weights"].shape == values.shape


def test_jagged_strategy_draws_empty_bags_and_empty_batches():
    # Empty bags next to non-empty ones, and a batch of zero rows, are both reachable.
    mixed = find(generators.jagged(max_batch=3), lambda b: (b["lengths"] == 0).any() and (b["lengths"] > 0).any())
    assert (mixed["lengths"] == 0).any()
    empty = find(generators.jagged(max_batch=3), lambda b: len(b["lengths"]) == 0)
    assert empty["values"].shape == (0,) and empty["offsets"].tolist() == [0]
