"""accel.interop: to_torchrec / from_torchrec round trips for every class with a counterpart, whole
models, the refusals, sharder_fused_params, and the ImportError without TorchRec.

Tests that need TorchRec skip without it (scripts/install-torchrec.sh installs it); the
ImportError tests run either way.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import accel
from accel import interop
from accel.interop import from_torchrec, sharder_fused_params, to_torchrec
from accel.modules import embedding_configs as C
from accel.modules import embedding_modules as E
from accel.modules import embedding_tower, feature_processor


@pytest.fixture
def trec():
    return pytest.importorskip(
        "torchrec.modules", reason="TorchRec 1.8 is optional (scripts/install-torchrec.sh); these are interop checks"
    )


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Equal key for key (order, dtype, shape, values), and no tensor shared."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key
        assert sa[key].numel() == 0 or sa[key].data_ptr() != sb[key].data_ptr(), key


def perturbed(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial values everywhere (zero biases and unit norms would hide a misplaced term)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
    return module


def kjt(keys, rows, seed, batch=4, weighted=False):
    """accel KJT with an empty bag per key at least, ids < rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, size=len(keys) * batch)
    lengths[::batch] = 0
    n = int(lengths.sum())
    return accel.KeyedJaggedTensor(
        keys=list(keys),
        values=torch.tensor(rng.integers(0, rows, size=n), dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int64),
        weights=torch.tensor(rng.uniform(0.5, 2.0, size=n), dtype=torch.float32) if weighted else None,
    )


# --- dense modules -------------------------------------------------------------------------------------

DENSE = [
    ("SwishLayerNorm", lambda: accel.SwishLayerNorm([3, 4]), (3, 4)),
    ("Perceptron", lambda: accel.Perceptron(6, 5, activation=torch.sigmoid), (6,)),
    ("Perceptron-float64-nobias", lambda: accel.Perceptron(6, 5, bias=False, dtype=torch.float64), (6,)),
    ("MLP", lambda: accel.MLP(6, [5, 4, 2]), (6,)),
    ("MLP-swish", lambda: accel.MLP(6, [5, 3], activation="swish_layernorm"), (6,)),
    ("MLP-identity-last", lambda: accel.MLP(6, [5, 3], activation=nn.ReLU, activation_on_last=False), (6,)),
    ("CrossNet", lambda: accel.CrossNet(6, 3), (6,)),
    ("LowRankCrossNet", lambda: accel.LowRankCrossNet(6, 3, 2), (6,)),
    ("VectorCrossNet", lambda: accel.VectorCrossNet(6, 3), (6,)),
    ("LowRankMixtureCrossNet", lambda: accel.LowRankMixtureCrossNet(6, 2, 4, 3, activation=torch.sigmoid), (6,)),
    ("LowRankMixtureCrossNet-1expert", lambda: accel.LowRankMixtureCrossNet(6, 2), (6,)),
]


@pytest.mark.parametrize("name, build, shape", DENSE, ids=[d[0] for d in DENSE])
def test_dense_round_trip_keeps_state_and_outputs(trec, name, build, shape):
    torch.manual_seed(0)
    ours = perturbed(build(), seed=1)
    rng_before = torch.random.get_rng_state()
    theirs = to_torchrec(ours)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # conversion draws nothing
    assert type(theirs).__module__.startswith("torchrec.modules.")
    assert type(theirs).__name__ == type(ours).__name__
    assert_same_state(ours, theirs)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2)).to(next(ours.parameters()).dtype)
    # Same formula in both libraries, summed in other orders: float32 rounding apart.
    torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-6)

    back = from_torchrec(theirs)
    assert type(back) is type(ours)
    assert_same_state(back, theirs)
    assert torch.equal(back(x), ours(x))  # the same accel code on the same state


def test_mlp_activations_convert_with_their_layers(trec):
    torch.manual_seed(0)
    ours = accel.MLP(6, [5, 3], activation="swish_layernorm")
    theirs = to_torchrec(ours)
    for layer in theirs._mlp:
        assert type(layer) is trec.mlp.Perceptron
        assert type(layer._activation_fn) is trec.activation.SwishLayerNorm
    shared = accel.SwishLayerNorm(4)
    one_instance = accel.MLP(4, [4, 4], activation=shared)  # one module used by every layer
    converted = to_torchrec(one_instance)
    assert converted._mlp[0]._activation_fn is converted._mlp[1]._activation_fn


def test_factorization_machine_and_deepfm_round_trip(trec):
    gen = torch.Generator().manual_seed(5)
    embeddings = [torch.randn(4, 2, 3, generator=gen), torch.randn(4, 5, generator=gen)]
    flat = torch.cat([e.flatten(1) for e in embeddings], dim=1).double()
    # sum_{j<k} flat_j flat_k, written out in float64
    expected = ((flat.sum(1) ** 2 - (flat**2).sum(1)) / 2).unsqueeze(1)
    fm = to_torchrec(accel.FactorizationMachine())
    assert type(fm) is trec.deepfm.FactorizationMachine
    torch.testing.assert_close(fm(embeddings).double(), expected, rtol=1e-5, atol=1e-5)
    torch.manual_seed(1)
    ours = accel.DeepFM(accel.MLP(11, [3, 2]))
    theirs = to_torchrec(ours)
    assert type(theirs) is trec.deepfm.DeepFM and type(theirs.dense_module) is trec.mlp.MLP
    assert_same_state(ours, theirs)
    torch.testing.assert_close(theirs(embeddings), ours(embeddings), rtol=1e-5, atol=1e-6)
    back = from_torchrec(theirs)
    assert type(back.dense_module) is accel.MLP
    assert torch.equal(back(embeddings), ours(embeddings))


# --- embedding collections -----------------------------------------------------------------------------


def bag_configs():
    def init_half(weight):
        with torch.no_grad():
            weight.fill_(0.5)

    return [
        C.EmbeddingBagConfig(7, 3, name="t1", feature_names=["f1", "f2"], weight_init_max=0.3, weight_init_min=-0.1),
        C.EmbeddingBagConfig(5, 4, name="t2", feature_names=["f1"], pooling=C.PoolingType.MEAN),
        C.EmbeddingBagConfig(6, 2, name="t3", feature_names=["f3"], data_type=C.DataType.FP16),
        C.EmbeddingBagConfig(4, 2, name="t4", feature_names=["f3"], init_fn=init_half),
    ]


def test_ebc_configs_carry_across_both_ways(trec):
    ours = E.EmbeddingBagCollection(bag_configs())
    theirs = to_torchrec(ours)
    assert type(theirs) is trec.embedding_modules.EmbeddingBagCollection
    fields = ["name", "num_embeddings", "embedding_dim", "feature_names", "weight_init_max", "weight_init_min"]
    for mine, other in zip(ours.embedding_bag_configs(), theirs.embedding_bag_configs()):
        assert type(other) is trec.embedding_configs.EmbeddingBagConfig
        assert [getattr(other, f) for f in fields] == [getattr(mine, f) for f in fields]
        if mine.init_fn is not None:
            assert other.init_fn is mine.init_fn
        else:  # TorchRec spells the default U(min, max) out; recspec leaves it None (D12)
            assert other.init_fn.keywords == {"a": mine.get_weight_init_min(), "b": mine.get_weight_init_max()}
        assert other.pooling.value == mine.pooling.value and other.data_type.value == mine.data_type.value
        assert other.feature_names is not mine.feature_names  # a copy: sharding may not edit ours
    back = from_torchrec(theirs)
    for mine, again in zip(ours.embedding_bag_configs(), back.embedding_bag_configs()):
        assert type(again) is C.EmbeddingBagConfig and again == mine


@pytest.mark.parametrize("weighted", [False, True])
def test_ebc_round_trip_keeps_state_and_outputs(trec, weighted):
    # TorchRec has no weighted MEAN, and wants float16 weights for a float16 table.
    unweighted_only = {"t2", "t3"}
    configs = [c for c in bag_configs() if not (weighted and c.name in unweighted_only)]
    torch.manual_seed(3)
    ours = E.EmbeddingBagCollection(configs, is_weighted=weighted)
    theirs = to_torchrec(ours)
    assert theirs.is_weighted() == weighted
    assert_same_state(ours, theirs)
    assert weighted or theirs.embedding_bags["t3"].weight.dtype == torch.float16
    features = kjt(["f3", "f2", "f1"], rows=4, seed=4, weighted=weighted)
    want, got = ours(features), theirs(to_torchrec(features))
    assert got.keys() == want.keys()
    # The float16 table accumulates in float16 in TorchRec, in float32 here.
    torch.testing.assert_close(got.values(), want.values(), rtol=2e-3, atol=2e-3)
    back = from_torchrec(theirs)
    assert type(back) is E.EmbeddingBagCollection and back.is_weighted() == weighted
    assert_same_state(back, ours)
    assert torch.equal(back(features).values(), want.values())


@pytest.mark.parametrize("need_indices", [False, True])
def test_ec_round_trip_keeps_state_and_outputs(trec, need_indices):
    configs = [
        C.EmbeddingConfig(6, 3, name="a", feature_names=["x", "y"]),
        C.EmbeddingConfig(4, 3, name="b", feature_names=["x"], data_type=C.DataType.FP16),
    ]
    torch.manual_seed(4)
    ours = E.EmbeddingCollection(configs, need_indices=need_indices)
    theirs = to_torchrec(ours)
    assert type(theirs) is trec.embedding_modules.EmbeddingCollection and theirs.need_indices() == need_indices
    assert_same_state(ours, theirs)
    features = kjt(["y", "x"], rows=4, seed=5)
    want, got = ours(features), theirs(to_torchrec(features))
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name].values(), want[name].values())  # row reads, no arithmetic
        assert torch.equal(got[name].lengths(), want[name].lengths())
    back = from_torchrec(theirs)
    assert type(back) is E.EmbeddingCollection and back.need_indices() == need_indices
    assert_same_state(back, ours)


# --- feature processors and towers ---------------------------------------------------------------------


def test_position_weighted_modules_round_trip(trec):
    for cls, other in (
        (feature_processor.PositionWeightedModule, trec.feature_processor.PositionWeightedModule),
        (feature_processor.PositionWeightedProcessor, trec.feature_processor.PositionWeightedProcessor),
    ):
        ours = perturbed(cls({"f1": 3, "f2": 2}), seed=6)
        theirs = to_torchrec(ours)
        assert type(theirs) is other and theirs.max_feature_lengths == {"f1": 3, "f2": 2}
        assert_same_state(ours, theirs)
        back = from_torchrec(theirs)
        assert type(back) is cls
        assert_same_state(back, ours)
    features = kjt(["f1", "f0"], rows=5, seed=7)
    processor = perturbed(feature_processor.PositionWeightedProcessor({"f1": 3}), seed=8)
    want, got = processor(features), to_torchrec(processor)(to_torchrec(features))
    assert got.keys() == want.keys() and torch.equal(got.weights(), want.weights())


def test_towers_round_trip_with_their_modules(trec):
    torch.manual_seed(9)
    ebc = E.EmbeddingBagCollection([C.EmbeddingBagConfig(5, 2, name="t", feature_names=["f"])])
    ours = embedding_tower.EmbeddingTowerCollection([embedding_tower.EmbeddingTower(ebc, Values())])
    theirs = to_torchrec(ours)
    assert type(theirs) is trec.embedding_tower.EmbeddingTowerCollection
    tower = theirs.towers[0]
    assert type(tower) is trec.embedding_tower.EmbeddingTower
    assert type(tower.embedding) is trec.embedding_modules.EmbeddingBagCollection
    assert type(tower.interaction) is Values and tower.interaction is not ours.towers[0].interaction
    assert_same_state(ours, theirs)
    features = kjt(["f"], rows=5, seed=10)
    torch.testing.assert_close(theirs(to_torchrec(features)), ours(features), rtol=1e-6, atol=1e-7)
    back = from_torchrec(theirs)
    assert type(back.towers[0].embedding) is E.EmbeddingBagCollection
    assert torch.equal(back(features), ours(features))


class Values(nn.Module):
    """KeyedTensor -> its values."""

    def forward(self, kt):
        return kt.values()


# --- whole models --------------------------------------------------------------------------------------


class Model(nn.Module):
    """A user's model: accel modules, a plain torch layer, a shared module and a tied parameter."""

    def __init__(self):
        super().__init__()
        self.ebc = E.EmbeddingBagCollection([C.EmbeddingBagConfig(6, 4, name="t", feature_names=["f"])])
        self.mlp = accel.MLP(4, [4])
        self.norm = accel.SwishLayerNorm(4)
        self.blocks = nn.ModuleList([self.norm, nn.Linear(4, 4)])  # self.norm reached twice
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.ebc.embedding_bags["t"].weight  # tied to the table

    def forward(self, features):
        x = self.norm(self.mlp(self.ebc(features).values()))
        return self.head(self.blocks[1](x))


def test_model_converts_as_a_copy_with_every_convertible_submodule_replaced(trec):
    torch.manual_seed(11)
    ours = perturbed(Model(), seed=12)
    theirs = to_torchrec(ours)
    assert type(theirs) is Model and theirs is not ours
    assert type(theirs.ebc) is trec.embedding_modules.EmbeddingBagCollection
    assert type(theirs.mlp) is trec.mlp.MLP and type(theirs.norm) is trec.activation.SwishLayerNorm
    assert type(ours.ebc) is E.EmbeddingBagCollection and type(ours.mlp) is accel.MLP  # source untouched
    assert theirs.blocks[0] is theirs.norm  # shared stays shared
    assert theirs.head.weight is theirs.ebc.embedding_bags["t"].weight  # tied stays tied
    assert theirs.blocks[1] is not ours.blocks[1]
    assert_same_state(ours, theirs)
    features = kjt(["f"], rows=6, seed=13)
    torch.testing.assert_close(theirs(to_torchrec(features)), ours(features), rtol=1e-5, atol=1e-6)
    back = from_torchrec(theirs)
    assert type(back.ebc) is E.EmbeddingBagCollection and type(back.norm) is accel.SwishLayerNorm
    assert back.head.weight is back.ebc.embedding_bags["t"].weight
    assert_same_state(back, ours)
    assert torch.equal(back(features), ours(features))


def test_meta_device_gives_the_structure_only(trec):
    torch.manual_seed(14)
    ours = perturbed(Model(), seed=15)
    structure = to_torchrec(ours, device="meta")
    assert list(structure.state_dict()) == list(ours.state_dict())
    assert all(t.device.type == "meta" for t in structure.state_dict().values())
    assert structure.ebc.device.type == "meta"  # the collection records it, as DMP expects
    assert all(t.device.type == "cpu" for t in ours.state_dict().values())


def test_subclasses_are_copied_not_converted(trec):
    class MyCrossNet(accel.CrossNet):
        pass

    torch.manual_seed(16)
    ours = MyCrossNet(4, 1)
    copied = to_torchrec(ours)
    assert type(copied) is MyCrossNet and copied is not ours
    assert_same_state(ours, copied)


# --- refusals ------------------------------------------------------------------------------------------


def test_bf16_tables_are_refused_both_ways(trec):
    bf16 = [C.EmbeddingBagConfig(4, 2, name="t_bf16", feature_names=["f"], data_type=C.DataType.BF16)]
    with pytest.raises(ValueError, match=r"to_torchrec: EmbeddingBagCollection table 't_bf16': data_type .* got BF16"):
        to_torchrec(E.EmbeddingBagCollection(bf16))
    seq = [C.EmbeddingConfig(4, 2, name="s_bf16", feature_names=["f"], data_type=C.DataType.BF16)]
    with pytest.raises(ValueError, match=r"to_torchrec: EmbeddingCollection table 's_bf16'.*FP16 or FP32"):
        to_torchrec(E.EmbeddingCollection(seq))
    configs = trec.embedding_configs
    theirs = trec.embedding_modules.EmbeddingBagCollection(
        [configs.EmbeddingBagConfig(4, 2, name="t_bf16", feature_names=["f"], data_type=configs.DataType.BF16)]
    )
    with pytest.raises(ValueError, match=r"from_torchrec: EmbeddingBagCollection table 't_bf16'.*float16 in TorchRec"):
        from_torchrec(theirs)


def test_weighted_mean_is_refused(trec):
    configs = [C.EmbeddingBagConfig(4, 2, name="t_mean", feature_names=["f"], pooling=C.PoolingType.MEAN)]
    with pytest.raises(ValueError, match=r"table 't_mean': pooling expected SUM in a weighted collection .* got MEAN"):
        to_torchrec(nn.Sequential(E.EmbeddingBagCollection(configs, is_weighted=True)))


@pytest.mark.parametrize(
    "optimizer, says",
    [("adagrad", r"momentum1\) of tables \['t'\] would be discarded"), ("sgd", "SGD keeps no state")],
)
def test_fused_optimizer_mode_is_refused_unless_dropped(trec, optimizer, says):
    configs = [C.EmbeddingBagConfig(4, 2, name="t", feature_names=["f"])]
    ours = E.EmbeddingBagCollection(configs, optimizer=optimizer, lr=0.5)
    with pytest.raises(ValueError, match=rf"optimizer expected None .* got fused '{optimizer}' \(lr=0.5.*{says}"):
        to_torchrec(ours)
    theirs = to_torchrec(ours, drop_optimizer_state=True)
    assert_same_state(ours, theirs)
    back = from_torchrec(theirs)
    assert back.optimizer_state() == {} and back._fused is None


def test_sharder_fused_params_carry_the_rule(trec):
    emb_optim = pytest.importorskip("fbgemm_gpu.split_embedding_configs", reason="FBGEMM comes with TorchRec")
    configs = [C.EmbeddingBagConfig(4, 2, name="t", feature_names=["f"])]
    model = nn.Sequential(E.EmbeddingBagCollection(configs, optimizer="sgd", lr=0.25), nn.Linear(2, 1))
    assert sharder_fused_params(model) == {"optimizer": emb_optim.EmbOptimType.EXACT_SGD, "learning_rate": 0.25}
    rowwise = E.EmbeddingBagCollection(configs, optimizer="rowwise_adagrad", lr=0.5, eps=1e-6)
    assert sharder_fused_params(rowwise) == {
        "optimizer": emb_optim.EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.5, "eps": 1e-6,
    }
    with pytest.raises(ValueError, match=r"sharder_fused_params: module expected .* got none in fused mode"):
        sharder_fused_params(E.EmbeddingBagCollection(configs))


def test_other_objects_are_type_errors(trec):
    with pytest.raises(TypeError, match=r"to_torchrec: obj expected an accel module .* got str"):
        to_torchrec("model")
    with pytest.raises(TypeError, match=r"from_torchrec: obj expected a TorchRec module .* got int"):
        from_torchrec(3)
    features = kjt(["a"], rows=3, seed=20)
    with pytest.raises(ValueError, match=r"to_torchrec: device expected None for a KeyedJaggedTensor .* got 'meta'"):
        to_torchrec(features, device="meta")


# --- sparse types and configs --------------------------------------------------------------------------


def test_sparse_types_share_memory_both_ways(trec):
    from torchrec.sparse import jagged_tensor as tj

    ours = kjt(["a", "b"], rows=5, seed=17, weighted=True)
    theirs = to_torchrec(ours)
    assert type(theirs) is tj.KeyedJaggedTensor and theirs.keys() == ["a", "b"]
    assert theirs.values().data_ptr() == ours.values().data_ptr()
    assert theirs.weights().data_ptr() == ours.weights().data_ptr()
    back = from_torchrec(theirs)
    assert type(back) is accel.KeyedJaggedTensor and back.values().data_ptr() == ours.values().data_ptr()
    empty_bags = accel.JaggedTensor(values=torch.arange(3.0), lengths=torch.tensor([0, 3, 0]))
    jt = to_torchrec(empty_bags)
    assert type(jt) is tj.JaggedTensor and jt.values().data_ptr() == empty_bags.values().data_ptr()
    assert torch.equal(from_torchrec(jt).lengths(), torch.tensor([0, 3, 0]))
    kt = accel.KeyedTensor(["x", "y"], [2, 1], torch.randn(4, 3, generator=torch.Generator().manual_seed(18)))
    converted = to_torchrec(kt)
    assert type(converted) is tj.KeyedTensor and converted.values().data_ptr() == kt.values().data_ptr()
    assert from_torchrec(converted).length_per_key() == [2, 1]


def test_configs_convert_alone(trec):
    config = C.EmbeddingConfig(5, 2, name="s", feature_names=["x"], data_type=C.DataType.FP16)
    theirs = to_torchrec(config)
    assert type(theirs) is trec.embedding_configs.EmbeddingConfig and theirs.data_type.value == "FP16"
    assert from_torchrec([theirs]) == [config]


# --- without TorchRec ----------------------------------------------------------------------------------


@pytest.fixture
def no_torchrec(monkeypatch):
    """Every torchrec and fbgemm_gpu import fails, as on a machine without them."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchrec", "fbgemm_gpu")] + ["torchrec", "fbgemm_gpu"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_torchrec_is_an_import_error_naming_the_recipe(no_torchrec):
    torch.manual_seed(19)
    with pytest.raises(ImportError, match=r"to_torchrec needs TorchRec.*scripts/install-torchrec.sh"):
        to_torchrec(accel.CrossNet(4, 1))
    with pytest.raises(ImportError, match=r"from_torchrec needs TorchRec.*scripts/install-torchrec.sh"):
        from_torchrec(nn.Linear(2, 2))
    configs = [C.EmbeddingBagConfig(4, 2, name="t", feature_names=["f"])]
    with pytest.raises(ImportError, match=r"sharder_fused_params needs TorchRec.*scripts/install-torchrec.sh"):
        sharder_fused_params(E.EmbeddingBagCollection(configs, optimizer="sgd"))


def test_interop_imports_without_torchrec():
    code = (
        "import sys; sys.modules['torchrec'] = None; sys.modules['fbgemm_gpu'] = None\n"
        "import accel.interop\n"
        "print(sorted(accel.interop.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "from_torchrec" in done.stdout and "to_torchrec" in done.stdout
    assert interop.__all__ == ["from_torchrec", "gather_state_dict", "sharder_fused_params", "to_torchrec"]
