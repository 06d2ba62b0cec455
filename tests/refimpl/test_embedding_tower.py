"""refimpl.modules.embedding_tower: towers, their input routing and the chained backward (semantics.md 13)."""

import numpy as np
import pytest

from refimpl.base import Module
from refimpl.grad_check import central_difference_grad
from refimpl.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from refimpl.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from refimpl.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection, tower_input_params
from refimpl.sparse import KeyedJaggedTensor


class Project(Module):
    """y = kt.values() @ A: an interaction over pooled embeddings."""

    def __init__(self, n, k, seed):
        super().__init__()
        self.register_parameter("A", np.random.default_rng(seed).standard_normal((n, k)))

    def forward(self, kt):
        self.x = kt.values()
        return self.x @ self.parameter("A")

    def backward(self, g):
        return g @ self.parameter("A").T, {"A": self.x.T @ g}


class BagSums(Module):
    """y[b] = [sum of sample b's rows of each sequence embedding], no parameters."""

    def forward(self, jts):
        self.jts = jts
        return np.concatenate(
            [np.stack([rows.sum(axis=0) for rows in jt.to_dense()]) for jt in jts.values()], axis=1
        )

    def backward(self, g):
        grads, col = {}, 0
        for name, jt in self.jts.items():
            D = jt.values().shape[1]
            bag_of = np.repeat(np.arange(jt.lengths().shape[0]), jt.lengths())
            grads[name] = g[bag_of, col : col + D]
            col += D
        return grads, {}


def _ebc(weighted, name, seed):
    config = EmbeddingBagConfig(6, 2, name=name, feature_names=["f"])
    return EmbeddingBagCollection([config], is_weighted=weighted, rng=np.random.default_rng(seed))


def _ec(seed):
    return EmbeddingCollection([EmbeddingConfig(5, 2, name="s", feature_names=["g"])], rng=np.random.default_rng(seed))


def _features():
    return KeyedJaggedTensor(["f", "g"], np.array([1, 1, 4, 0, 2, 3]), lengths=np.array([2, 0, 1, 1, 0, 2]))


def _weighted(seed=9):
    return KeyedJaggedTensor(["f"], np.array([5, 0, 0]), weights=np.random.default_rng(seed).standard_normal(3),
                             lengths=np.array([1, 2, 0]))


def test_tower_input_params():
    assert tower_input_params(_ec(0)) == (True, False)
    assert tower_input_params(_ebc(False, "t", 0)) == (True, False)
    assert tower_input_params(_ebc(True, "t", 0)) == (False, True)
    assert tower_input_params(Project(2, 1, 0)) == (True, True)


def test_tower_forward_and_state_keys():
    ebc, inter = _ebc(False, "t", 0), Project(2, 3, 1)
    tower = EmbeddingTower(ebc, inter)
    kjt = _features()
    np.testing.assert_array_equal(tower(kjt), ebc(kjt).values() @ inter.parameter("A"))
    assert list(tower.state_dict()) == ["embedding.embedding_bags.t.weight", "interaction.A"]


def test_tower_backward_matches_central_differences():
    rng = np.random.default_rng(3)
    tower = EmbeddingTower(_ebc(True, "t", 0), Project(2, 3, 1))
    kjt = _weighted()
    g = rng.standard_normal(tower(kjt).shape)
    grad_w, grads = tower.backward(g)

    def loss(_):
        return float(np.sum(tower(kjt) * g))

    for key, p in tower.state_dict().items():
        np.testing.assert_allclose(grads[key], central_difference_grad(loss, p), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_w, central_difference_grad(loss, kjt.weights()), rtol=1e-6, atol=1e-8)


def _collection():
    return EmbeddingTowerCollection([
        EmbeddingTower(_ebc(False, "u", 0), Project(2, 1, 1)),
        EmbeddingTower(_ebc(True, "w", 2), Project(2, 2, 3)),
        EmbeddingTower(_ec(4), BagSums()),
    ])


def test_collection_routes_inputs_and_concatenates():
    towers = _collection()
    features, weighted = _features(), _weighted()
    out = towers(features, weighted)
    t0, t1, t2 = towers.towers
    expected = np.concatenate([t0(features), t1(weighted), t2(features)], axis=1)
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (3, 1 + 2 + 2)
    assert list(towers.state_dict())[:2] == ["towers.0.embedding.embedding_bags.u.weight", "towers.0.interaction.A"]
    assert "towers.2.embedding.embeddings.s.weight" in towers.state_dict()


def test_collection_backward_matches_central_differences():
    rng = np.random.default_rng(5)
    towers = _collection()
    features, weighted = _features(), _weighted()
    g = rng.standard_normal(towers(features, weighted).shape)
    (grad_features, grad_weighted), grads = towers.backward(g)
    assert grad_features is None  # ids have no gradient

    def loss(_):
        return float(np.sum(towers(features, weighted) * g))

    assert set(grads) == set(towers.state_dict())
    for key, p in towers.state_dict().items():
        np.testing.assert_allclose(grads[key], central_difference_grad(loss, p), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_weighted, central_difference_grad(loss, weighted.weights()), rtol=1e-6, atol=1e-8)


def test_collection_errors():
    towers = _collection()
    with pytest.raises(ValueError, match=r"towers\[1\] expected weighted_features, got None"):
        towers(_features())
    with pytest.raises(ValueError, match=r"towers\[0\] expected features, got None"):
        towers(None, _weighted())
    with pytest.raises(RuntimeError, match="call forward first"):
        _collection().backward(np.zeros((3, 5)))
    towers(_features(), _weighted())
    with pytest.raises(ValueError, match=r"grad_output expected shape \(B, 5\), got \(3, 4\)"):
        towers.backward(np.zeros((3, 4)))
    with pytest.raises(TypeError, match=r"towers\[0\] expected an EmbeddingTower, got Project"):
        EmbeddingTowerCollection([Project(2, 1, 0)])


def test_tower_taking_both_inputs():
    class Both(Module):
        """Pooled SUM of features' f and weighted_features' f, side by side."""

        def __init__(self):
            super().__init__()
            self.plain, self.weighted = _ebc(False, "p", 0), _ebc(True, "q", 1)

        def forward(self, features, weighted_features):
            return np.concatenate([self.plain(features).values(), self.weighted(weighted_features).values()], axis=1)

    tower = EmbeddingTower(Both(), lambda x: 2 * x)
    towers = EmbeddingTowerCollection([tower])
    features, weighted = _features(), _weighted()
    both = tower.embedding
    expected = 2 * np.concatenate([both.plain(features).values(), both.weighted(weighted).values()], axis=1)
    np.testing.assert_array_equal(towers(features, weighted), expected)
    with pytest.raises(TypeError, match="interaction expected a refimpl Module with backward, got function"):
        towers.backward(np.zeros((3, 4)))


def test_agrees_with_torchrec():
    torchrec = pytest.importorskip("torchrec", reason="TorchRec is an optional extra; the tests above stand without it")
    import torch
    from torchrec.modules.embedding_tower import EmbeddingTower as TTower
    from torchrec.modules.embedding_tower import EmbeddingTowerCollection as TTowers

    class TorchProject(torch.nn.Module):
        def __init__(self, n, k):
            super().__init__()
            self.A = torch.nn.Parameter(torch.randn(n, k))

        def forward(self, kt):
            return kt.values() @ self.A

    torch.manual_seed(0)
    theirs = TTowers([
        TTower(torchrec.EmbeddingBagCollection([torchrec.EmbeddingBagConfig(6, 2, name="u", feature_names=["f"])]),
               TorchProject(2, 1)),
        TTower(torchrec.EmbeddingBagCollection([torchrec.EmbeddingBagConfig(6, 2, name="w", feature_names=["f"])],
                                               is_weighted=True), TorchProject(2, 2)),
    ])
    mine = EmbeddingTowerCollection([
        EmbeddingTower(_ebc(False, "u", 0), Project(2, 1, 1)),
        EmbeddingTower(_ebc(True, "w", 2), Project(2, 2, 3)),
    ])
    mine.load_state_dict(theirs.state_dict())
    features = torchrec.KeyedJaggedTensor(keys=["f"], values=torch.tensor([1, 1, 4]), lengths=torch.tensor([2, 0, 1]))
    weighted = torchrec.KeyedJaggedTensor(keys=["f"], values=torch.tensor([5, 0, 0]), lengths=torch.tensor([1, 2, 0]),
                                          weights=torch.tensor([0.5, -1.0, 2.0]))
    np.testing.assert_allclose(mine(features, weighted), theirs(features, weighted).detach().numpy(), rtol=1e-5, atol=1e-6)
