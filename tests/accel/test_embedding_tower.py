"""accel.modules.embedding_tower: towers route their inputs as TorchRec's do (semantics.md 13)."""

import numpy as np
import pytest
import torch
from torch import nn

from accel.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from accel.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from accel.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection, tower_input_params
from accel.sparse import KeyedJaggedTensor


class PooledSum(nn.Module):
    """KeyedTensor -> its values (B, sum D)."""

    def forward(self, kt):
        return kt.values()


class SequenceSum(nn.Module):
    """dict of JaggedTensor -> per-sample sum of the rows of every name, side by side (B, D * names)."""

    def forward(self, jts):
        outs = []
        for jt in jts.values():
            bag = torch.repeat_interleave(torch.arange(jt.lengths().numel()), jt.lengths())
            outs.append(torch.zeros(jt.lengths().numel(), jt.values().shape[1]).index_add(0, bag, jt.values()))
        return torch.cat(outs, dim=1)


class Both(nn.Module):
    """(features, weighted_features) -> per-sample id counts of each, as a (B, 2) tensor."""

    def forward(self, pair):
        features, weighted_features = pair
        b = features.stride()
        return torch.stack([features.lengths().view(-1, b).sum(0), weighted_features.lengths().view(-1, b).sum(0)], 1).float()


def make(seed=0):
    torch.manual_seed(seed)
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(6, 2, name="t", feature_names=["f"])])
    webc = EmbeddingBagCollection([EmbeddingBagConfig(6, 3, name="w", feature_names=["g"])], is_weighted=True)
    ec = EmbeddingCollection([EmbeddingConfig(6, 2, name="s", feature_names=["f"])])
    return ebc, webc, ec


def test_tower_input_params():
    ebc, webc, ec = make()
    assert tower_input_params(ebc) == (True, False)
    assert tower_input_params(webc) == (False, True)
    assert tower_input_params(ec) == (True, False)
    assert tower_input_params(nn.Linear(2, 2)) == (True, True)


def test_tower_is_interaction_of_embedding():
    ebc, _, _ = make()
    tower = EmbeddingTower(ebc, PooledSum())
    kjt = KeyedJaggedTensor(["f"], torch.tensor([1, 2, 5]), lengths=torch.tensor([2, 0, 1]))
    W = ebc.state_dict()["embedding_bags.t.weight"].double().numpy()
    expected = np.stack([W[1] + W[2], np.zeros(2), W[5]])
    np.testing.assert_allclose(tower(kjt).detach().numpy(), expected, rtol=1e-6)
    assert list(tower.state_dict()) == ["embedding.embedding_bags.t.weight"]
    # A plain callable interaction works, as in TorchRec; a non-callable is refused.
    assert torch.equal(EmbeddingTower(ebc, lambda kt: kt.values() * 2)(kjt), 2 * tower(kjt))
    with pytest.raises(TypeError, match="interaction_module expected an nn.Module or callable, got int"):
        EmbeddingTower(ebc, 3)


def test_collection_routes_features_and_concatenates():
    ebc, webc, ec = make()
    towers = [EmbeddingTower(ebc, PooledSum()), EmbeddingTower(webc, PooledSum()),
              EmbeddingTower(ec, SequenceSum()), EmbeddingTower(_Pair(), Both())]
    collection = EmbeddingTowerCollection(towers)
    features = KeyedJaggedTensor(["f"], torch.tensor([0, 3, 3]), lengths=torch.tensor([1, 2]))
    weighted = KeyedJaggedTensor(["g"], torch.tensor([4, 1]), lengths=torch.tensor([0, 2]), weights=torch.tensor([2.0, 0.5]))
    out = collection(features, weighted)
    assert tuple(out.shape) == (2, 2 + 3 + 2 + 2)
    Wt = ebc.state_dict()["embedding_bags.t.weight"].double().numpy()
    Ww = webc.state_dict()["embedding_bags.w.weight"].double().numpy()
    Ws = ec.state_dict()["embeddings.s.weight"].double().numpy()
    expected = np.hstack([
        np.stack([Wt[0], 2 * Wt[3]]),
        np.stack([np.zeros(3), 2.0 * Ww[4] + 0.5 * Ww[1]]),
        np.stack([Ws[0], 2 * Ws[3]]),
        np.array([[1.0, 0.0], [2.0, 2.0]]),
    ])
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-6)
    assert list(collection.state_dict())[:2] == ["towers.0.embedding.embedding_bags.t.weight", "towers.1.embedding.embedding_bags.w.weight"]


class _Pair(nn.Module):
    """Passes both KJTs on, so that the interaction sees (features, weighted_features)."""

    def forward(self, features, weighted_features):
        return features, weighted_features


def test_collection_errors_on_a_missing_argument():
    ebc, webc, _ = make()
    collection = EmbeddingTowerCollection([EmbeddingTower(ebc, PooledSum()), EmbeddingTower(webc, PooledSum())])
    features = KeyedJaggedTensor(["f"], torch.tensor([0]), lengths=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"towers\[1\] \(EmbeddingBagCollection\) expected weighted_features, got None"):
        collection(features)
    with pytest.raises(ValueError, match="towers expected at least one tower"):
        EmbeddingTowerCollection([])(features)
    with pytest.raises(TypeError, match=r"towers\[0\] expected an EmbeddingTower"):
        EmbeddingTowerCollection([nn.Linear(2, 2)])
