"""The golden generator: refimpl float64 from NumPy seeds; the committed set reproduces."""

import json
import shutil

import numpy as np
import pytest

from conformance.golden import generate, store
from conformance.properties import RECORDS
from conformance.runner import FAIL, GOLDEN_DIR, PASS, Context, run_record


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden")
    generate.generate(directory)
    return directory


def test_regenerating_reproduces_the_committed_arrays(regenerated):
    committed = store.read_manifest(GOLDEN_DIR)["files"]
    fresh = store.read_manifest(regenerated)["files"]
    assert set(committed) == set(fresh)
    for name in committed:
        old, new = store.read_npz(GOLDEN_DIR / name), store.read_npz(regenerated / name)
        assert set(old) == set(new)
        for key in old:
            # Same NumPy, same formulas: equal up to a BLAS that may reorder sums.
            np.testing.assert_allclose(new[key], old[key], rtol=1e-13, atol=1e-13, err_msg=f"{name}:{key}")


def test_manifest_records_seeds_and_versions(regenerated):
    manifest = json.loads((regenerated / "manifest.json").read_text())
    seeds = [entry["seed"] for entry in manifest["files"].values()]
    assert seeds == list(range(generate.BASE_SEED, generate.BASE_SEED + len(seeds)))
    assert manifest["schema"] == store.SCHEMA == "recspec-golden/1"
    assert manifest["generator"]["numpy_version"] == np.__version__
    assert manifest["generator"]["version"] == generate.GENERATOR_VERSION


def test_regenerated_manifest_equals_the_committed_one_but_for_versions(regenerated):
    # The committed manifest is what this generator writes: same descriptions, same sha256.
    committed = json.loads((GOLDEN_DIR / "manifest.json").read_text())
    fresh = json.loads((regenerated / "manifest.json").read_text())
    for manifest in (committed, fresh):
        del manifest["generator"]["numpy_version"], manifest["generator"]["python_version"]
        for entry in manifest["files"].values():
            del entry["sha256"]  # bytes may differ where another BLAS reorders sums
    assert fresh == committed


def test_layout_names_the_jagged_inputs_keys():
    from conformance.properties import GOLDEN

    by_module = {b.module: b for b in GOLDEN}
    assert generate.layout(by_module["CrossNet"]) == {"layout": "dense"}
    jagged = generate.layout(by_module["EmbeddingBagCollection"])
    assert jagged["layout"] == "jagged" and jagged["kjt_keys"] and all(isinstance(k, str) for k in jagged["kjt_keys"])


def test_vectors_hold_consistent_gradients():
    from conformance.properties import GOLDEN

    build = next(b for b in GOLDEN if b.module == "FactorizationMachine")
    arrays = generate.vectors(build, seed=1)
    xs = store.inputs_of(arrays)
    flat = np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=1)
    # FM: y = sum_{j<k} x_j x_k, dL/dx_j = g (S - x_j).
    expected = 0.5 * (flat.sum(1) ** 2 - (flat ** 2).sum(1))
    assert np.allclose(arrays["output"][:, 0], expected, rtol=1e-13)
    grad_flat = arrays["grad_output"] * (flat.sum(1, keepdims=True) - flat)
    assert np.allclose(arrays["grad_input.0"].reshape(3, -1), grad_flat[:, : xs[0][0].size], rtol=1e-13)


def test_golden_records_check_the_directory_given(regenerated, tmp_path):
    record = next(r for r in RECORDS if r.id == "CrossNet/golden_accel")
    assert run_record(record, Context(golden_dir=regenerated)).status == PASS
    tampered = tmp_path / "golden"
    shutil.copytree(regenerated, tampered)
    arrays = store.read_npz(tampered / "CrossNet.npz")
    arrays["output"] = arrays["output"] + 1e-9
    store.write_npz(tampered / "CrossNet.npz", arrays)
    row = run_record(record, Context(golden_dir=tampered))
    assert row.status == FAIL and "sha256 expected" in row.detail
    manifest = store.read_manifest(tampered)
    manifest["files"]["CrossNet.npz"]["sha256"] = store.sha256(tampered / "CrossNet.npz")
    store.write_manifest(tampered, manifest)
    row = run_record(record, Context(golden_dir=tampered))
    assert row.status == FAIL and "case 'CrossNet.npz', output" in row.detail


def test_main_writes_to_the_directory_given(tmp_path, capsys):
    assert generate.main([str(tmp_path)]) == 0
    assert (tmp_path / "manifest.json").exists() and (tmp_path / "CrossNet.npz").exists()
    assert "wrote" in capsys.readouterr().out
