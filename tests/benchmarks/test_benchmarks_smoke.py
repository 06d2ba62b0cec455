"""The dense benchmark harness: a quick sweep on tiny shapes produces a complete table, the
anchors compute TorchRec's formulas, and the timer, work models and target verdicts are right.
No timing is asserted."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# `benchmarks` lives in the repository root but is not part of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import anchors, machine
from benchmarks.__main__ import main
from benchmarks.cases import Dims, dense_cases
from benchmarks.providers import anchor_provider
from benchmarks.sweep import Row, evaluate_targets
from benchmarks.timing import Timed, TimingPlan, median_time, median_times

PROVIDERS = ("transcription-cpu", "refimpl-f32", "accel-cpu", "gemm-cpu")


# --- the sweep end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "dense.json"
    # The transcription anchor, whether or not TorchRec is installed, so that it is what the
    # other providers' outputs are checked against here.
    code = main(["dense", "--quick", "--tiny", "--anchor", "transcription", "--json", str(path)])
    return code, json.loads(path.read_text())


def test_quick_sweep_exits_zero_and_names_the_machine(quick_sweep):
    code, doc = quick_sweep
    assert code == 0, [r for r in doc["rows"] if r["status"] == "error"]
    assert doc["machine"]["torch"] == torch.__version__
    assert doc["machine"]["logical_cpus"] >= 1 and doc["machine"]["cpu"]
    assert doc["settings"]["shapes"] == "tiny" and doc["settings"]["batch"] == 8


def test_quick_sweep_has_a_row_per_case_and_provider_with_positive_times(quick_sweep):
    _, doc = quick_sweep
    cases = [c.name for c in dense_cases(Dims.tiny())]
    assert [c["name"] for c in doc["cases"]] == cases
    for case in cases:
        rows = {r["provider"]: r for r in doc["rows"] if r["case"] == case}
        assert sorted(rows) == sorted(PROVIDERS), case
        for name in PROVIDERS[:3]:
            row = rows[name]
            assert row["status"] == "ok", (case, name, row["note"])
            assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0, (case, name)
            assert row["fwd_rate"] > 0 and row["reps"] >= 2, (case, name)
        assert rows["accel-cpu"]["others_busy"] is None or 0 <= rows["accel-cpu"]["others_busy"] <= 1
        # The anchor's ratio to itself is 1 by construction.
        assert rows["transcription-cpu"]["speedup_fwd_bwd"] == pytest.approx(1.0)


def test_quick_sweep_outputs_agree_with_the_anchor(quick_sweep):
    # float32 on tiny shapes: a few ULPs of the output's scale; a wrong formula is O(1).
    _, doc = quick_sweep
    for row in doc["rows"]:
        if row["role"] in ("refimpl", "accel"):
            assert row["rel_err"] < 1e-5, (row["case"], row["provider"], row["rel_err"])


def test_quick_sweep_gemm_reference_only_for_gemm_shaped_cases(quick_sweep):
    _, doc = quick_sweep
    gemm = {r["case"]: r["status"] for r in doc["rows"] if r["provider"] == "gemm-cpu"}
    assert gemm == {
        "CrossNet": "ok", "LowRankCrossNet": "ok", "LowRankMixtureCrossNet": "ok",
        "VectorCrossNet": "ok", "FactorizationMachine": "n/a", "SwishLayerNorm": "n/a",
        "MLP": "ok", "DeepFM": "n/a",
    }


def test_quick_sweep_has_one_target_verdict_per_case(quick_sweep):
    _, doc = quick_sweep
    assert [t["case"] for t in doc["targets"]] == [c["name"] for c in doc["cases"]]
    assert {t["against"] for t in doc["targets"]} == {"transcription-cpu", "gemm-cpu"}


def test_cli_rejects_unknown_case_and_bad_batch():
    with pytest.raises(ValueError, match=r"--cases: expected names from .* got \['Nope'\]"):
        main(["dense", "--tiny", "--cases", "Nope"])
    with pytest.raises(ValueError, match="--batch: expected a positive batch size, got 0"):
        main(["dense", "--tiny", "--batch", "0"])
    with pytest.raises(ValueError, match="--reps: expected a positive number of timed calls, got 0"):
        main(["dense", "--tiny", "--reps", "0"])
    with pytest.raises(ValueError, match=r"--threads: expected 1\.\.\d+, got 0"):
        main(["dense", "--tiny", "--threads", "0"])


def test_anchor_provider_rejects_unknown_choice():
    with pytest.raises(ValueError, match="anchor: expected 'auto', 'torchrec' or 'transcription', got 'x'"):
        anchor_provider("cpu", "x")


# --- the anchors compute TorchRec's formulas (float64 NumPy written here) ------------------------


def _randomise(module: torch.nn.Module, seed: int) -> dict:
    """Random parameters, biases included (they start at zero), as float64 NumPy."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    module.double()
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _run(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


X = np.random.default_rng(7).standard_normal((5, 6))


def test_crossnet_anchor_formula():
    m = anchors.CrossNet(6, 2)
    p = _randomise(m, 0)
    x_0 = x_l = X
    for l in range(2):
        x_l = x_0 * (x_l @ p[f"kernels.{l}"].T + p[f"bias.{l}"][:, 0]) + x_l
    np.testing.assert_allclose(_run(m, X), x_l, rtol=1e-12, atol=1e-12)


def test_low_rank_crossnet_anchor_formula():
    m = anchors.LowRankCrossNet(6, 2, low_rank=3)
    p = _randomise(m, 1)
    assert p["bias.0"].shape == (6,) and p["W_kernels.0"].shape == (6, 3)
    x_0 = x_l = X
    for l in range(2):
        x_l = x_0 * ((x_l @ p[f"V_kernels.{l}"].T) @ p[f"W_kernels.{l}"].T + p[f"bias.{l}"]) + x_l
    np.testing.assert_allclose(_run(m, X), x_l, rtol=1e-12, atol=1e-12)


def test_vector_crossnet_anchor_puts_the_bias_outside_the_product():
    m = anchors.VectorCrossNet(6, 2)
    p = _randomise(m, 2)
    x_0 = x_l = X
    for l in range(2):
        s = x_l @ p[f"kernels.{l}"]  # (B, 1)
        x_l = x_0 * s + p[f"bias.{l}"][:, 0] + x_l
    np.testing.assert_allclose(_run(m, X), x_l, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("experts", [1, 3])
def test_low_rank_mixture_crossnet_anchor_formula(experts):
    m = anchors.LowRankMixtureCrossNet(6, 2, num_experts=experts, low_rank=2)
    p = _randomise(m, 3)
    assert ("gates.0.weight" in p) == (experts > 1)
    relu = lambda z: np.maximum(z, 0.0)
    x_0 = x_l = X
    for l in range(2):
        e = [
            x_0 * (relu(relu(x_l @ p[f"V_kernels.{l}"][i].T) @ p[f"C_kernels.{l}"][i].T)
                   @ p[f"U_kernels.{l}"][i].T + p[f"bias.{l}"][:, 0])
            for i in range(experts)
        ]
        if experts == 1:
            x_l = e[0] + x_l
        else:
            z = np.stack([x_l @ p[f"gates.{i}.weight"][0] for i in range(experts)], 1)
            w = np.exp(z - z.max(1, keepdims=True))
            w /= w.sum(1, keepdims=True)
            x_l = sum(w[:, i : i + 1] * e[i] for i in range(experts)) + x_l
    np.testing.assert_allclose(_run(m, X), x_l, rtol=1e-12, atol=1e-12)


def test_factorization_machine_anchor_sums_over_all_flattened_scalars():
    e = [np.random.default_rng(8).standard_normal((4, 2, 3)), np.random.default_rng(9).standard_normal((4, 5))]
    flat = np.concatenate([a.reshape(4, -1) for a in e], 1)
    pairs = sum(flat[:, j] * flat[:, k] for j in range(11) for k in range(j + 1, 11))
    out = anchors.FactorizationMachine()([torch.from_numpy(a) for a in e]).numpy()
    np.testing.assert_allclose(out, pairs[:, None], rtol=1e-12, atol=1e-12)
    # Paper's fieldwise FM on [[[1, 1]]] is 0; TorchRec's all-scalar FM is 1.
    assert anchors.FactorizationMachine()([torch.ones(1, 1, 2)]).item() == 1.0


def test_deepfm_anchor_applies_dense_module_to_the_row_major_concat():
    linear = torch.nn.Linear(11, 2).double()
    p = _randomise(linear, 4)
    e = [np.random.default_rng(10).standard_normal((4, 2, 3)), np.random.default_rng(11).standard_normal((4, 5))]
    flat = np.concatenate([a.reshape(4, -1) for a in e], 1)
    out = anchors.DeepFM(linear)([torch.from_numpy(a) for a in e]).detach().numpy()
    np.testing.assert_allclose(out, flat @ p["weight"].T + p["bias"], rtol=1e-12, atol=1e-12)


def test_swish_layer_norm_anchor_formula():
    m = anchors.SwishLayerNorm(6)
    p = _randomise(m, 5)
    mu = X.mean(1, keepdims=True)
    var = X.var(1, keepdims=True)  # biased, as LayerNorm
    ln = (X - mu) / np.sqrt(var + 1e-5) * p["norm.0.weight"] + p["norm.0.bias"]
    np.testing.assert_allclose(_run(m, X), X / (1 + np.exp(-ln)), rtol=1e-12, atol=1e-12)


def test_mlp_anchor_is_linear_then_relu_per_layer():
    m = anchors.MLP(6, [4, 3])
    p = _randomise(m, 6)
    assert list(p) == ["_mlp.0._linear.weight", "_mlp.0._linear.bias",
                       "_mlp.1._linear.weight", "_mlp.1._linear.bias"]
    h = X
    for i in range(2):
        h = np.maximum(h @ p[f"_mlp.{i}._linear.weight"].T + p[f"_mlp.{i}._linear.bias"], 0.0)
    np.testing.assert_allclose(_run(m, X), h, rtol=1e-12, atol=1e-12)


# --- timer, work models, verdicts -----------------------------------------------------------------


def test_median_time_warms_up_untimed_and_stops_at_the_budget():
    calls, setups = [], []
    plan = TimingPlan(warmup=2, reps=10, min_reps=3, budget_s=0.0)
    t = median_time(lambda: calls.append(1), plan, setup=lambda: setups.append(1))
    # Budget 0 is spent after the first timed call, so it stops at min_reps.
    assert t.reps == 3 and len(calls) == 5 and len(setups) == 5
    assert t.median_ms >= 0.0
    t = median_time(lambda: None, TimingPlan(warmup=0, reps=4, min_reps=1, budget_s=1e9))
    assert t.reps == 4


def test_median_times_runs_items_in_rounds_of_blocks():
    calls = []
    items = [Timed(lambda: calls.append("a")), Timed(lambda: calls.append("b"))]
    plan = TimingPlan(warmup=1, reps=4, min_reps=1, budget_s=1e9, rounds=2, pause_s=0.0)
    a, b = median_times(items, plan)
    # Warm-up of each item, then per round and item one untimed settling call and a block of 2.
    assert calls == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 2
    assert (a.reps, b.reps) == (4, 4)


def test_others_busy_is_a_fraction_of_the_machine():
    busy = machine.others_busy(0.05)
    assert busy is None or 0.0 <= busy <= 1.0
    # A threshold never met and no time to wait: one probe (1 s), then back with its value.
    start = time.monotonic()
    last = machine.wait_until_quiet(0.0, threshold=-1.0)
    assert time.monotonic() - start < 10.0
    assert last is None or 0.0 <= last <= 1.0


def test_work_models_count_the_written_formulas():
    d = Dims(batch=4096)
    cases = {c.name: c for c in dense_cases(d)}
    assert cases["CrossNet"].work.fwd == 3 * 2 * 4096 * 512 * 512
    assert cases["CrossNet"].work.fwd_bwd == 3 * cases["CrossNet"].work.fwd
    assert cases["LowRankCrossNet"].work.fwd == 3 * 2 * (2 * 4096 * 512 * 64)
    # Mixture, per layer: gates N->K, V N->K*r, C K x (r->r), U K*r->N.
    per_layer = 2 * 4096 * (512 * 4 + 512 * 256 + 4 * 64 * 64 + 256 * 512)
    assert cases["LowRankMixtureCrossNet"].work.fwd == 3 * per_layer
    assert cases["MLP"].work.fwd == 2 * 4096 * (512 * 512 + 512 * 256 + 256 * 1)
    assert cases["FactorizationMachine"].work.fwd == (4096 * 26 * 64 + 4096) * 4
    assert cases["SwishLayerNorm"].work.fwd_bwd == 5 * 4096 * 512 * 4
    assert cases["FactorizationMachine"].input_shapes == ((4096, 26, 64),)


def _row(case, provider, role, fwd_bwd_ms):
    return Row(case, provider, role, "cpu", "ok", fwd_ms=1.0, fwd_bwd_ms=fwd_bwd_ms)


def test_target_verdicts_compare_in_the_right_direction():
    cases = {c.name: c for c in dense_cases(Dims.tiny())}
    rows = [
        _row("CrossNet", "anchor", "anchor", 100.0), _row("CrossNet", "gemm", "gemm", 10.0),
        _row("CrossNet", "accel", "accel", 10.5),  # 1.05x the GEMM: within 1.1x
        _row("FactorizationMachine", "anchor", "anchor", 10.0),
        _row("FactorizationMachine", "accel", "accel", 4.0),  # 2.5x: short of 3x
        _row("MLP", "anchor", "anchor", 10.0),
        _row("MLP", "accel", "accel", 10.2),  # 0.98x: a miss inside the noise band
    ]
    v = evaluate_targets([cases["CrossNet"], cases["FactorizationMachine"], cases["MLP"]], rows)
    assert [(x["case"], x["met"], x["verdict"]) for x in v] == [
        ("CrossNet", True, "met"), ("FactorizationMachine", False, "missed"),
        ("MLP", False, "missed, within noise"),
    ]
    assert v[0]["value"] == pytest.approx(1.05) and v[1]["value"] == pytest.approx(2.5)
