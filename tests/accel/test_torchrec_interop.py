"""accel's dense modules against TorchRec 1.8 itself: same seed, same parameters; state dicts load both ways.

Skipped when TorchRec is not installed (it is optional: scripts/install-torchrec.sh installs it).
"""

import pytest
import torch

import accel

torchrec_modules = pytest.importorskip(
    "torchrec.modules", reason="TorchRec 1.8 is optional (scripts/install-torchrec.sh); these are interop checks"
)
from torchrec.modules import activation, crossnet, deepfm, mlp  # noqa: E402

# (TorchRec class, accel class, constructor args, kwargs, input shape after the batch dimension)
CASES = [
    (activation.SwishLayerNorm, accel.SwishLayerNorm, ([3, 4],), {}, (3, 4)),
    (mlp.Perceptron, accel.Perceptron, (6, 5), {}, (6,)),
    (mlp.Perceptron, accel.Perceptron, (6, 5), {"bias": False, "activation": torch.sigmoid}, (6,)),
    (mlp.MLP, accel.MLP, (6, [5, 4, 1]), {}, (6,)),
    (mlp.MLP, accel.MLP, (6, [5, 3]), {"activation": "swish_layernorm"}, (6,)),
    (mlp.MLP, accel.MLP, (6, [5, 3]), {"activation": torch.nn.ReLU, "activation_on_last": False}, (6,)),
    (crossnet.CrossNet, accel.CrossNet, (6, 3), {}, (6,)),
    (crossnet.LowRankCrossNet, accel.LowRankCrossNet, (6, 3, 2), {}, (6,)),
    (crossnet.VectorCrossNet, accel.VectorCrossNet, (6, 3), {}, (6,)),
    (crossnet.LowRankMixtureCrossNet, accel.LowRankMixtureCrossNet, (6, 2), {}, (6,)),
    (crossnet.LowRankMixtureCrossNet, accel.LowRankMixtureCrossNet, (6, 2, 4, 3), {}, (6,)),
    (crossnet.LowRankMixtureCrossNet, accel.LowRankMixtureCrossNet, (6, 2, 3, 2), {"activation": torch.sigmoid}, (6,)),
]
IDS = [f"{c[1].__name__}{c[2]}{sorted(c[3])}" for c in CASES]


def _build(cls, args, kwargs, seed):
    torch.manual_seed(seed)
    return cls(*args, **kwargs)


@pytest.mark.parametrize("theirs_cls, ours_cls, args, kwargs, shape", CASES, ids=IDS)
def test_same_seed_builds_bit_identical_parameters(theirs_cls, ours_cls, args, kwargs, shape):
    theirs = _build(theirs_cls, args, kwargs, seed=7)
    ours = _build(ours_cls, args, kwargs, seed=7)
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert list(ours_state) == list(theirs_state)
    for key, value in theirs_state.items():
        assert ours_state[key].dtype == value.dtype and ours_state[key].shape == value.shape, key
        assert torch.equal(ours_state[key], value), key


@pytest.mark.parametrize("theirs_cls, ours_cls, args, kwargs, shape", CASES, ids=IDS)
def test_state_dicts_load_both_ways_and_outputs_agree(theirs_cls, ours_cls, args, kwargs, shape):
    theirs = _build(theirs_cls, args, kwargs, seed=1)
    ours = _build(ours_cls, args, kwargs, seed=2)
    # Non-zero biases so that a misplaced bias term would show.
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(3))
    # float32 against float32: both compute the same formula, in different orders.
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)

    back = _build(theirs_cls, args, kwargs, seed=4)
    back.load_state_dict(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_factorization_machine_and_deepfm_match_torchrec():
    gen = torch.Generator().manual_seed(5)
    embeddings = [torch.randn(4, 2, 3, generator=gen), torch.randn(4, 5, generator=gen)]
    torch.testing.assert_close(
        accel.FactorizationMachine()(embeddings), deepfm.FactorizationMachine()(embeddings), rtol=1e-5, atol=1e-5
    )
    dense = torch.nn.Linear(11, 2)
    theirs, ours = deepfm.DeepFM(dense), accel.DeepFM(dense)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["dense_module.weight", "dense_module.bias"]
    torch.testing.assert_close(ours(embeddings), theirs(embeddings))
