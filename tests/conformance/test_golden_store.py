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
    assert manifest["schema_version"] == 1 and manifest["generator"] == "conformance/golden/generate.py"
    assert manifest["numpy_version"] and manifest["dtype"] == "float64"
    assert {entry["module"] for entry in manifest["files"].values()} == IN_SCOPE | JAGGED
    for name, entry in manifest["files"].items():
        path = GOLDEN_DIR / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        with np.load(path, allow_pickle=False) as arrays:
            assert {k: list(arrays[k].shape) for k in arrays.files} == entry["shapes"]
            if entry["module"] in JAGGED:
                assert all(arrays[k].dtype in (np.float64, np.int64) for k in arrays.files)
                assert any(k.startswith("output.") for k in arrays.files), name
                assert any(k.startswith("grad_output.") for k in arrays.files), name
            else:
                assert all(arrays[k].dtype == np.float64 for k in arrays.files)
                assert "output" in arrays.files and "grad_output" in arrays.files
        assert isinstance(entry["seed"], int) and entry["constructor"]["module"] == entry["module"]


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


def test_read_manifest_rejects_another_schema(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 9, "files": {}}))
    with pytest.raises(ValueError, match=r"schema_version expected 1, got 9"):
        store.read_manifest(tmp_path)
