"""conformance.check: recspec's records on implementations written here, right and subtly wrong."""

import json
import shutil

import numpy as np
import pytest
import torch

import conformance
from conformance import api
from conformance.golden import store
from conformance.runner import FAIL, GOLDEN_DIR, PASS, SKIP

DENSE = ["SwishLayerNorm", "Perceptron", "MLP", "CrossNet", "LowRankCrossNet", "VectorCrossNet",
         "LowRankMixtureCrossNet", "FactorizationMachine", "DeepFM"]
JAGGED = ["EmbeddingBagCollection", "EmbeddingCollection", "PositionWeightedModule", "PositionWeightedProcessor"]


# --- implementations written from the formulas, in NumPy -------------------------------------------
def _layers(params, prefix="kernels."):
    return sorted(int(k[len(prefix):]) for k in params if k.startswith(prefix))


def crossnet(params, x):
    """x_{l+1} = x_0 * (W_l x_l + b_l) + x_l."""
    x0 = xl = x
    for l in _layers(params):
        xl = x0 * (xl @ params[f"kernels.{l}"].T + params[f"bias.{l}"].reshape(-1)) + xl
    return xl


def vector_crossnet(params, x):
    """TorchRec's: x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l."""
    x0 = xl = x
    for l in _layers(params):
        xl = x0 * (xl @ params[f"kernels.{l}"]) + params[f"bias.{l}"].reshape(-1) + xl
    return xl


def vector_crossnet_bias_inside(params, x):
    """The page's formula, bias inside the product: not what TorchRec (and so recspec) computes."""
    x0 = xl = x
    for l in _layers(params):
        xl = x0 * (xl @ params[f"kernels.{l}"] + params[f"bias.{l}"].reshape(-1)) + xl
    return xl


def perceptron(params, x, config):
    """activation(x W^T + b), the activation read from the constructor's JSON."""
    y = x @ params["_linear.weight"].T + params.get("_linear.bias", 0.0)
    activation = config["kwargs"].get("activation", {"activation": "relu"})["activation"]
    return 1 / (1 + np.exp(-y)) if activation == "sigmoid" else np.maximum(y, 0)


def factorization_machine(params, xs):
    """0.5 ((sum_i v_i)^2 - sum_i v_i^2) over the flattened embeddings, one column."""
    flat = np.concatenate([x.reshape(x.shape[0], int(np.prod(x.shape[1:]))) for x in xs], axis=1)
    return 0.5 * (flat.sum(1, keepdims=True) ** 2 - (flat ** 2).sum(1, keepdims=True))


# --- the same in torch, with its own parameter names -----------------------------------------------
class TorchVectorCrossNet(torch.nn.Module):
    def __init__(self, in_features, num_layers, bias_inside=False):
        super().__init__()
        self.w = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(in_features, 1)) for _ in range(num_layers))
        self.b = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(in_features, 1)) for _ in range(num_layers))
        self.bias_inside = bias_inside

    def forward(self, x):
        x0 = xl = x
        for w, b in zip(self.w, self.b):
            xl = x0 * (xl @ w + b.squeeze(1)) + xl if self.bias_inside else x0 * (xl @ w) + b.squeeze(1) + xl
        return xl


VECTOR_KEYS = api.Adapter(keys=lambda k: k.replace("kernels.", "w.").replace("bias.", "b."))


def _row(result, prop):
    return next(r for r in result.rows if r.property == prop)


# --- correct implementations pass ------------------------------------------------------------------
def test_numpy_crossnet_passes_forward_and_golden():
    result = conformance.check(module="CrossNet", impl=crossnet)
    assert result.ok, result.report()
    assert {r.property: r.status for r in result.rows} == {"forward": PASS, "autograd": SKIP, "golden[CrossNet]": PASS}
    forward = _row(result, "forward")
    assert forward.cases == 20 and forward.max_err <= forward.tolerance and forward.against == "crossnet"
    assert "plain callable has no autograd" in _row(result, "autograd").detail


def test_torch_class_with_its_own_keys_passes_forward_autograd_and_golden():
    result = conformance.check(module="VectorCrossNet", impl=TorchVectorCrossNet, adapter=VECTOR_KEYS)
    assert result.ok, result.report()
    assert [r.status for r in result.rows] == [PASS, PASS, PASS]
    assert _row(result, "autograd").cases == 20


def test_numpy_callable_gets_the_constructor_as_config():
    result = conformance.check(module="Perceptron", impl=perceptron, properties=["forward", "golden"])
    # The golden Perceptron is a sigmoid one; the forward builds mix relu, sigmoid and bias=False.
    assert result.ok, result.report()
    assert [r.property for r in result.rows] == ["forward", "forward_leading_dims", "golden[Perceptron]"]


def test_list_inputs_reach_a_numpy_callable():
    result = conformance.check(module="FactorizationMachine", impl=factorization_machine,
                               properties=["forward", "golden"])
    assert result.ok, result.report()


def test_float32_implementation_is_held_to_the_float32_rule():
    def crossnet32(params, x):
        assert x.dtype == np.float32 and all(p.dtype == np.float32 for p in params.values())
        return crossnet(params, x)

    result = conformance.check(module="CrossNet", impl=crossnet32, dtype="float32")
    assert [(r.property, r.status) for r in result.rows] == [("forward_f32", PASS)]
    assert result.rows[0].unit == "ratio" and result.rows[0].max_err <= 4


# --- subtly wrong implementations fail, naming the worst element -----------------------------------
def test_bias_inside_the_product_fails_with_the_worst_element():
    result = conformance.check(module="VectorCrossNet", impl=vector_crossnet_bias_inside)
    assert not result.ok
    forward = _row(result, "forward")
    assert forward.status == FAIL and forward.max_err > 1e-3
    # The worst element: its case, array, index, value and reference.
    assert "case 'N=" in forward.detail and "output[" in forward.detail
    assert "got " in forward.detail and "reference " in forward.detail and "ULP" in forward.detail
    assert _row(result, "golden[VectorCrossNet]").status == FAIL
    assert "conformance.check(module='VectorCrossNet', impl=vector_crossnet_bias_inside" in forward.repro
    assert "FAIL VectorCrossNet/forward" in result.report()


def test_the_correct_vector_crossnet_passes_where_the_misplaced_bias_fails():
    # The control for the test above: same harness, TorchRec's bias placement.
    assert conformance.check(module="VectorCrossNet", impl=vector_crossnet, properties=["forward"]).ok


def test_misplaced_bias_in_torch_fails_forward_and_autograd():
    wrong = api.factory(lambda n, layers: TorchVectorCrossNet(n, layers, bias_inside=True))
    result = conformance.check(module="VectorCrossNet", impl=wrong, adapter=VECTOR_KEYS,
                               properties=["forward", "autograd"])
    assert [r.status for r in result.rows] == [FAIL, FAIL]
    assert result.rows[0].against == "<lambda>"


def test_mean_instead_of_sum_fails():
    def fm_mean(params, xs):  # averages the pairwise products instead of summing them
        n = sum(int(np.prod(x.shape[1:])) for x in xs)
        return factorization_machine(params, xs) / n

    result = conformance.check(module="FactorizationMachine", impl=fm_mean, properties=["forward"])
    assert result.rows[0].status == FAIL and "output[" in result.rows[0].detail


def test_one_ulp_in_float64_fails_and_float32_rounding_fails_the_float32_rule():
    def nudged(params, x):
        y = crossnet(params, x)
        return y + 1e-9 * np.abs(y).max(initial=0.0)

    assert _row(conformance.check(module="CrossNet", impl=nudged, properties=["forward"]), "forward").status == FAIL

    def half(params, x):  # float16 arithmetic: far more error than a float32 result may have
        p16 = {k: v.astype(np.float16) for k, v in params.items()}
        with np.errstate(over="ignore", invalid="ignore"):  # the "large" case overflows float16
            return crossnet(p16, x.astype(np.float16)).astype(np.float32)

    row = conformance.check(module="CrossNet", impl=half, dtype=np.float32).rows[0]
    assert row.status == FAIL and row.max_err > 4 and "ratio" in row.unit


# --- adapters: layout, parameter containers, array libraries ---------------------------------------
class Wrapped:
    """An array type of another library: only __array__ connects it to NumPy."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


def test_adapter_maps_layout_parameter_containers_and_array_types():
    def feature_major(packed, xt):  # inputs (N, B), parameters as stacked (L, N, N), (L, N)
        W, b = packed
        x = np.asarray(xt).T
        x0 = xl = x
        for l in range(W.shape[0]):
            xl = x0 * (xl @ W[l].T + b[l]) + xl
        return Wrapped(xl.T)

    adapter = api.Adapter(
        params=lambda p: (np.stack([p[f"kernels.{l}"] for l in _layers(p)]),
                          np.stack([p[f"bias.{l}"].reshape(-1) for l in _layers(p)])),
        inputs=lambda x: Wrapped(x.T),
        outputs=lambda y: np.asarray(y).T,
    )
    result = conformance.check(module="CrossNet", impl=feature_major, adapter=adapter, properties=["forward", "golden"])
    assert result.ok, result.report()


def test_keys_mapped_to_none_are_not_passed_on():
    seen = []

    def no_bias(params, x):
        seen.append(sorted(params))
        return crossnet({**params, **{f"bias.{l}": np.zeros(1) for l in _layers(params)}}, x)

    result = conformance.check(module="CrossNet", impl=no_bias, properties=["golden"],
                               adapter=api.Adapter(keys=lambda k: None if k.startswith("bias.") else k))
    assert seen and all(not any(k.startswith("bias.") for k in keys) for keys in seen)
    assert result.rows[0].status == FAIL  # the golden state has non-zero biases


def test_module_instance_runs_only_the_constructions_it_fits():
    import accel

    instance = accel.CrossNet(5, 2)
    before = {k: v.clone() for k, v in instance.state_dict().items()}
    result = conformance.check(module="CrossNet", impl=instance)
    assert result.ok, result.report()
    forward = _row(result, "forward")
    assert forward.cases == 5 and "N=32" in forward.detail  # N=31/32/33 builds do not fit N=5
    assert _row(result, "golden[CrossNet]").status == PASS
    assert all(torch.equal(before[k], v) for k, v in instance.state_dict().items())  # a copy ran

    other = conformance.check(module="CrossNet", impl=accel.CrossNet(7, 1), properties=["golden"])
    assert other.rows[0].status == SKIP and not other.ok
    assert "fits none" in other.rows[0].detail and "lacks ['bias.1', 'kernels.1']" in other.rows[0].detail


def test_wrong_state_keys_fail_with_what_is_missing():
    result = conformance.check(module="VectorCrossNet", impl=TorchVectorCrossNet, properties=["golden"])
    row = result.rows[0]
    assert row.status == FAIL and "lacks ['bias.0', 'bias.1'" in row.detail and "Adapter(keys=" in row.detail


def test_an_implementation_that_raises_is_a_failing_case():
    def broken(params, x):
        if x.shape[0] == 0:
            raise RuntimeError("empty batch")
        return crossnet(params, x)

    row = conformance.check(module="CrossNet", impl=broken, properties=["forward"]).rows[0]
    assert row.status == FAIL and "the implementation raised RuntimeError: empty batch" in row.detail
    assert "B=0" in row.detail


# --- choosing what runs ----------------------------------------------------------------------------
def test_properties_select_kinds_and_single_properties():
    import accel

    result = conformance.check(module="MLP", impl=accel.MLP, properties=["forward_leading_dims", "golden[MLP]"])
    assert [r.property for r in result.rows] == ["forward_leading_dims", "golden[MLP]"] and result.ok
    mixture = conformance.check(module="lowrankmixturecrossnet", impl=accel.LowRankMixtureCrossNet,
                                properties=["golden"])
    assert [r.property for r in mixture.rows] == ["golden[LowRankMixtureCrossNet_K1]",
                                                 "golden[LowRankMixtureCrossNet_K3]"]
    assert mixture.module == "LowRankMixtureCrossNet" and mixture.ok


def test_golden_rows_skip_under_float32():
    result = conformance.check(module="CrossNet", impl=crossnet, properties=["golden"], dtype="float32")
    assert result.rows[0].status == SKIP and "float64" in result.rows[0].detail and not result.ok


def test_modules_lists_the_dense_and_jagged_modules():
    assert api.modules() == DENSE + JAGGED


# --- bad arguments ---------------------------------------------------------------------------------
def test_unknown_module_lists_the_valid_names():
    valid = r"\['SwishLayerNorm', .*'DeepFM', .*'PositionWeightedProcessor'\]"
    with pytest.raises(ValueError, match=rf"module: expected one of {valid}, got 'CrossNett'"):
        conformance.check(module="CrossNett", impl=crossnet)
    with pytest.raises(ValueError, match=rf"module: expected one of {valid}, got 'EmbeddingTower'"):
        conformance.check(module="EmbeddingTower", impl=crossnet)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"properties": ["forwardd"]}, ValueError, r"properties: expected kinds from .* got \['forwardd'\]"),
    ({"properties": "forward"}, TypeError, r"properties: expected a list of names, got the string 'forward'"),
    ({"dtype": "float16"}, ValueError, r"dtype: expected float32 or float64, got 'float16'"),
    ({"adapter": {"keys": {}}}, TypeError, r"adapter: expected a conformance.Adapter, got dict"),
    ({"impl": 3}, TypeError, r"impl: expected a torch nn.Module class or instance.*got int"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        conformance.check(**{"module": "CrossNet", "impl": crossnet, **kwargs})


def test_torch_dtype_is_accepted():
    assert conformance.check(module="CrossNet", impl=crossnet, properties=["forward_f32"], dtype=torch.float32).ok


def test_golden_dir_is_checked_before_use(tmp_path):
    golden = tmp_path / "golden"
    shutil.copytree(GOLDEN_DIR, golden)
    arrays = store.read_npz(golden / "CrossNet.npz")
    arrays["output"] = arrays["output"] + 1.0
    store.write_npz(golden / "CrossNet.npz", arrays)
    row = conformance.check(module="CrossNet", impl=crossnet, properties=["golden"], golden_dir=golden, seed=3).rows[0]
    assert row.status == FAIL and "sha256 expected" in row.detail
    assert row.repro.endswith(f"dtype='float64', seed=3, golden_dir={str(golden)!r})")
    manifest = json.loads((golden / "manifest.json").read_text())
    manifest["schema"] = "recspec-golden/2"
    (golden / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"schema expected 'recspec-golden/1', got 'recspec-golden/2'"):
        conformance.check(module="CrossNet", impl=crossnet, golden_dir=golden)


def test_torchrec_crossnet_passes_in_float32():
    torchrec = pytest.importorskip("torchrec", reason="TorchRec is the oracle where installed; CI runs without it")
    result = conformance.check(module="CrossNet", impl=torchrec.modules.crossnet.CrossNet, dtype="float32")
    assert result.ok, result.report()


# --- jagged inputs: an EmbeddingBagCollection in NumPy --------------------------------------------
def embedding_bag_collection(params, kjt, config, pooling=None):
    """out[b, slot] = sum_j w_j W_t[i_j] over bag b of the slot's feature (SUM), or that over the bag's
    length (MEAN); zeros for an empty bag; slots in table, then feature order."""
    keys, B = kjt["keys"], kjt["stride"]
    offsets = np.concatenate([[0], np.cumsum(kjt["lengths"])])
    weighted = config["kwargs"].get("is_weighted", False)
    columns = []
    for table in config["args"][0]:
        W = params[f"embedding_bags.{table['kwargs']['name']}.weight"]
        mode = pooling or table["kwargs"].get("pooling", "SUM")
        for feature in table["kwargs"]["feature_names"]:
            k = keys.index(feature)
            pooled = np.zeros((B, W.shape[1]))
            for b in range(B):
                bag = slice(offsets[k * B + b], offsets[k * B + b + 1])
                rows = W[kjt["values"][bag]]
                if weighted:
                    rows = rows * kjt["weights"][bag][:, None]
                pooled[b] = rows.sum(axis=0)
                if mode == "MEAN" and len(rows):
                    pooled[b] /= len(rows)
            columns.append(pooled)
    return {"out": np.concatenate(columns, axis=1)}


def test_numpy_embedding_bag_collection_passes_forward_and_golden():
    result = conformance.check(module="EmbeddingBagCollection", impl=embedding_bag_collection)
    assert result.ok, result.report()
    assert [r.property for r in result.rows] == ["forward", "golden[EmbeddingBagCollection]",
                                                 "golden[EmbeddingBagCollection_weighted]"]
    assert result.rows[0].cases == 20


def test_mean_pooling_everywhere_fails():
    def mean_everywhere(params, kjt, config):
        return embedding_bag_collection(params, kjt, config, pooling="MEAN")

    result = conformance.check(module="EmbeddingBagCollection", impl=mean_everywhere)
    forward = result.rows[0]
    assert forward.status == FAIL and "out[" in forward.detail and "got " in forward.detail
    assert [r.status for r in result.rows[1:]] == [FAIL, FAIL]


def test_jagged_output_names_are_checked():
    def misnamed(params, kjt, config):
        return {"pooled": embedding_bag_collection(params, kjt, config)["out"]}

    row = conformance.check(module="EmbeddingBagCollection", impl=misnamed, properties=["golden"]).rows[0]
    assert row.status == FAIL and "missing from the implementation's outputs (expected ['out'])" in row.detail

    row = conformance.check(module="EmbeddingBagCollection", impl=lambda p, k: np.zeros(3),
                            properties=["forward"]).rows[0]
    assert row.status == FAIL and "output: expected a dict of named arrays" in row.detail


def test_torch_embedding_modules_get_a_kjt_and_their_gradients_are_checked():
    import accel

    result = conformance.check(module="EmbeddingBagCollection", impl=accel.EmbeddingBagCollection,
                               properties=["golden[EmbeddingBagCollection_weighted]"])
    assert result.ok, result.report()

    class Halved(accel.PositionWeightedModule):  # position weights read at half their value
        def forward(self, features):
            out = super().forward(features)
            return {k: jt if jt.weights_or_none() is None else
                    type(jt)(values=jt.values(), weights=0.5 * jt.weights(), lengths=jt.lengths())
                    for k, jt in out.items()}

    rows = conformance.check(module="PositionWeightedModule", impl=Halved).rows
    assert [r.status for r in rows] == [FAIL, FAIL] and "weights[f" in rows[0].detail


def test_float32_embedding_bag_collection_is_held_to_the_float32_rule():
    def ebc32(params, kjt, config):
        assert all(p.dtype == np.float32 for p in params.values())
        return embedding_bag_collection(params, kjt, config)

    result = conformance.check(module="EmbeddingBagCollection", impl=ebc32, dtype="float32")
    assert [(r.property, r.status, r.unit) for r in result.rows] == [("forward_f32", PASS, "ratio")]

    def ebc16(params, kjt, config):  # tables stored in float16: far more error than float32 allows
        return embedding_bag_collection({k: v.astype(np.float16) for k, v in params.items()}, kjt, config)

    row = conformance.check(module="EmbeddingBagCollection", impl=ebc16, dtype="float32").rows[0]
    assert row.status == FAIL and row.max_err > 4 and "out[" in row.detail


def test_torch_embedding_modules_in_float32():
    import accel

    for name in JAGGED:
        result = conformance.check(module=name, impl=getattr(accel, name), dtype=torch.float32)
        assert result.ok and [r.property for r in result.rows] == ["forward_f32"], result.report()


def test_the_package_exports_the_api_lazily():
    import subprocess
    import sys

    code = ("import sys, conformance; names = sorted(n for n in dir(conformance) if not n.startswith('_')); "
            "print(names, 'torch' in sys.modules, conformance.check is conformance.api.check)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    names, torch_loaded, same = done.stdout.rsplit(" ", 2)
    assert all(n in names for n in ("'Adapter'", "'Result'", "'check'", "'factory'"))
    assert (torch_loaded, same.strip()) == ("False", "True")
    with pytest.raises(AttributeError, match=r"module 'conformance' has no attribute 'chek'"):
        conformance.chek  # noqa: B018 (the attribute access is the test)
