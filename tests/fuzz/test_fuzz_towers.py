"""Fuzz: EmbeddingTower and EmbeddingTowerCollection in refimpl and accel, fed the malformed KeyedJaggedTensors
of the embedding fuzz suite (tests/accel/test_fuzz_embeddings.py: negative, huge or wrapping lengths, offsets
not monotone, ids out of range or of the wrong dtype, weights of the wrong length, missing keys, ...).

A tower hands its input to its embedding collection and the collection routes each tower's input by what its
embedding module takes, so a fault must surface as the collection's clear error (naming the argument,
feature or table) whichever tower meets it, or the towers' outputs must equal refimpl's.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import accel
import refimpl
from tests.accel.test_fuzz_embeddings import FAULTS, NAMED, _configs, accel_kjt, faulty_parts, refimpl_kjt
from tests.fuzz.conftest import assert_clear_error, assert_same_values, outcome


def _pooled(kt):
    return kt.values()


def _towers():
    """(accel collection, refimpl collection): an unweighted and a weighted EBC tower, the same tables."""
    torch.manual_seed(0)
    a_bags, _ = _configs(None)
    r_bags, _ = _configs(refimpl)
    a_plain, a_weighted = accel.EmbeddingBagCollection(a_bags), accel.EmbeddingBagCollection(a_bags, is_weighted=True)
    r_plain = refimpl.EmbeddingBagCollection(r_bags)
    r_weighted = refimpl.EmbeddingBagCollection(r_bags, is_weighted=True)
    for a, r in ((a_plain, r_plain), (a_weighted, r_weighted)):
        r.load_state_dict({k: v.double().numpy() for k, v in a.state_dict().items()})
    a_towers = [accel.EmbeddingTower(a_plain, _pooled), accel.EmbeddingTower(a_weighted, _pooled)]
    r_towers = [refimpl.EmbeddingTower(r_plain, _pooled), refimpl.EmbeddingTower(r_weighted, _pooled)]
    return (a_towers, accel.EmbeddingTowerCollection(a_towers)), (r_towers, refimpl.EmbeddingTowerCollection(r_towers))


(A_TOWERS, A_COLLECTION), (R_TOWERS, R_COLLECTION) = _towers()


def compare(got, want, what):
    if want[0] == "error" or got[0] == "error":
        assert want[0] == got[0] == "error", f"{what}: accel {got[:2]}, refimpl {want[:2]}"
        assert got[1] is want[1], f"{what}: accel raised {got[1].__name__}: {got[2]}; refimpl {want[1].__name__}"
        assert_clear_error(got, NAMED, f"accel {what}")
        assert_clear_error(want, NAMED, f"refimpl {what}")
        return
    assert_same_values(got[1], want[1], what, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fault", FAULTS)
@given(data=st.data())
def test_tower_collection_on_malformed_kjts(fault, data):
    parts = data.draw(faulty_parts(fault))
    # The same KJT as features and as weighted_features: each tower takes one of them.
    got = outcome(lambda: A_COLLECTION(accel_kjt(parts), accel_kjt(parts)))
    want = outcome(lambda: R_COLLECTION(refimpl_kjt(parts), refimpl_kjt(parts)))
    compare(got, want, f"EmbeddingTowerCollection with {fault}")


@pytest.mark.parametrize("fault", ["none", "negative length", "offsets going down", "id too large", "missing key"])
@given(data=st.data())
def test_single_towers_on_malformed_kjts(fault, data):
    parts = data.draw(faulty_parts(fault))
    for i, (a_tower, r_tower) in enumerate(zip(A_TOWERS, R_TOWERS)):
        got = outcome(lambda: a_tower(accel_kjt(parts)))
        want = outcome(lambda: r_tower(refimpl_kjt(parts)))
        compare(got, want, f"towers[{i}] with {fault}")


@pytest.mark.parametrize("package", [accel, refimpl], ids=["accel", "refimpl"])
def test_a_tower_missing_its_input_names_it(package):
    collection = A_COLLECTION if package is accel else R_COLLECTION
    kjt = package.KeyedJaggedTensor(["f1", "f2"], np.array([0, 1]) if package is refimpl else torch.tensor([0, 1]),
                                    lengths=np.array([1, 1]) if package is refimpl else torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"towers\[1\].*weighted_features, got None"):
        collection(kjt, None)
