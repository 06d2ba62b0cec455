"""Golden files: plain .npz + manifest, readable without recspec, deterministic bytes."""

import hashlib
import json

import numpy as np
import pytest

from conformance.golden import store
from conformance.properties import GOLDEN
from conformance.runner import GOLDEN_DIR

IN_SCOPE = {"SwishLayerNorm", "Perceptron", "MLP", "CrossNet", "LowRankCrossNet", "VectorCrossNet",
            "LowRankMixtureCrossNet", "FactorizationMachine", "DeepFM"}
# Jagged inputs: int64 ids, lengths and stride next to the float64 arrays, outputs named output.<name>
# (conformance.properties.embeddings_golden).
JAGGED = {"EmbeddingBagCollection", "EmbeddingCollection", "PositionWeightedModule"}


def test_committed_files_load_without_recspec_and_match_the_manifest():
    # Plain json + numpy, as a user without this library would read them.
    manifest = json.loads((GOLDEN_DIR / "manifest.json").read_text())
    assert manifest["schema"] == "recspec-golden/1" and manifest["dtype"] == "float64"
    assert manifest["generator"]["script"] == "conformance/golden/generate.py"
    assert manifest["generator"]["version"] == 1 and manifest["generator"]["numpy_version"]
    assert {entry["module"] for entry in manifest["files"].values()} == IN_SCOPE | JAGGED
    for name, entry in manifest["files"].items():
        path = GOLDEN_DIR / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        with np.load(path, allow_pickle=False) as arrays:
            described = entry["arrays"]
            assert set(arrays.files) == set(described), name
            for key in arrays.files:
                assert arrays[key].dtype.kind in "biuf", (name, key)
                assert list(arrays[key].shape) == described[key]["shape"], (name, key)
                assert arrays[key].dtype.name == described[key]["dtype"], (name, key)
            listed = entry["inputs"] + entry["outputs"] + entry["grad_outputs"] + entry["gradients"]
            listed += [f"state.{k}" for k in entry["state_keys"]]
            assert sorted(listed) == sorted(arrays.files), name
            if entry["module"] in JAGGED:
                assert entry["layout"] == "jagged" and entry["kjt_keys"], name
                assert all(arrays[k].dtype in (np.float64, np.int64) for k in arrays.files)
                assert arrays["kjt.lengths"].size == len(entry["kjt_keys"]) * int(arrays["kjt.stride"][0])
                assert any(k.startswith("output.") for k in arrays.files), name
                assert any(k.startswith("grad_output.") for k in arrays.files), name
            else:
                assert entry["layout"] == "dense" and "kjt_keys" not in entry
                assert all(arrays[k].dtype == np.float64 for k in arrays.files)
                assert "output" in arrays.files and "grad_output" in arrays.files
        assert isinstance(entry["seed"], int) and entry["constructor"]["module"] == entry["module"]
        assert entry["dtype"] == "float64"


def test_both_mixture_variants_are_golden():
    manifest = store.read_manifest(GOLDEN_DIR)
    mixtures = [e["constructor"]["args"][2] for e in manifest["files"].values()
                if e["module"] == "LowRankMixtureCrossNet"]
    assert sorted(mixtures) == [1, 3]
    assert len(manifest["files"]) == len(GOLDEN)


def test_write_npz_is_deterministic_and_round_trips(tmp_path):
    arrays = {"b": np.arange(6.0).reshape(2, 3), "a": np.zeros((0, 4)), "state.kernels.0": np.eye(2)}
    first = store.write_npz(tmp_path / "x.npz", arrays)
    second = store.write_npz(tmp_path / "y.npz", dict(reversed(list(arrays.items()))))
    assert first == second == store.sha256(tmp_path / "x.npz")
    back = store.read_npz(tmp_path / "x.npz")
    assert set(back) == set(arrays) and all(np.array_equal(back[k], v) for k, v in arrays.items())


def test_inputs_and_gradients_of_single_and_list_inputs():
    single = {"input": np.ones((3, 2)), "grad_input": np.zeros((3, 2)), "grad.bias.0": np.ones(2)}
    assert store.inputs_of(single).shape == (3, 2)
    assert set(store.input_gradients_of(single)) == {"grad input"}
    listed = {"input.0": np.ones((3, 2)), "input.1": np.ones((3, 4)), "grad_input.0": np.ones((3, 2)),
              "grad_input.1": np.ones((3, 4))}
    assert [a.shape for a in store.inputs_of(listed)] == [(3, 2), (3, 4)]
    assert set(store.input_gradients_of(listed)) == {"grad input[0]", "grad input[1]"}
    assert store.prefixed({"state.bias.0": 1, "grad.bias.0": 2}, "state.") == {"bias.0": 1}


@pytest.mark.parametrize("manifest, got", [
    ({"schema": "recspec-golden/2", "files": {}}, "'recspec-golden/2'"),
    ({"schema_version": 1, "files": {}}, "None"),
    ([], "'list'"),
])
def test_read_manifest_rejects_another_schema(tmp_path, manifest, got):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"schema expected 'recspec-golden/1', got {got}"):
        store.read_manifest(tmp_path)


def test_object_arrays_are_neither_written_nor_read(tmp_path):
    with pytest.raises(store.GoldenFormatError, match=r"array 'output' expected a numeric dtype.*got object"):
        store.write_npz(tmp_path / "bad.npz", {"output": np.array([{"a": 1}], dtype=object)})
    # An archive written by another tool with a pickled array: np.load refuses, and so do we.
    np.savez(tmp_path / "pickled.npz", output=np.array([None, 1.0], dtype=object))
    with pytest.raises(store.GoldenFormatError, match=r"expected numeric arrays only"):
        store.read_npz(tmp_path / "pickled.npz")
    np.savez(tmp_path / "text.npz", output=np.array(["a", "b"]))
    with pytest.raises(store.GoldenFormatError, match=r"array 'output' expected a numeric dtype.*got <U1"):
        store.read_npz(tmp_path / "text.npz")


def test_describe_names_every_array_and_its_role():
    arrays = {"input.0": np.ones((3, 2)), "input.1": np.ones((3, 4)), "state.bias.0": np.ones(2),
              "output": np.ones((3, 1)), "grad_output": np.ones((3, 1)), "grad_input.1": np.ones((3, 4)),
              "grad.bias.0": np.ones(2), "kjt.stride": np.array([3])}
    d = store.describe(arrays)
    assert d["inputs"] == ["input.0", "input.1", "kjt.stride"] and d["state_keys"] == ["bias.0"]
    assert d["outputs"] == ["output"] and d["grad_outputs"] == ["grad_output"]
    assert d["gradients"] == ["grad.bias.0", "grad_input.1"]
    assert d["arrays"]["state.bias.0"] == {"role": "state", "dtype": "float64", "shape": [2],
                                           "description": "state_dict entry 'bias.0', loaded before the forward"}
    assert d["arrays"]["input.1"]["description"] == "the forward's input 1 of a list of tensors (batch first)"
    assert d["arrays"]["kjt.stride"]["dtype"] == "int64"
    with pytest.raises(ValueError, match=r"golden archive key 'weights': expected one of the prefixes"):
        store.describe({"weights": np.ones(2)})
