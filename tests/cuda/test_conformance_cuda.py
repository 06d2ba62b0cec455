"""The conformance records of every dense and embedding class with an accel side, on device cuda: a real GPU, or
Numba's simulator.

Under the simulator (NUMBA_ENABLE_CUDASIM=1, no GPU) `Context.for_device("cuda")` keeps the tensors on the CPU
and runs each check inside accel's `simulated_cuda()` block, so accel's modules launch their CUDA kernels; the
tests assert that they did (launch counts, and the kernel objects are the simulator's). The simulator runs every
CUDA thread in Python, so the named cases are cut down to a few samples each (`small_cases`): every case keeps
its name and its edge (B=0, empty bags, all zeros, large values, bags of 31/32/33 ids), only the long batches
are shortened, and each class runs its first forward and autograd record there (SIMULATOR_KINDS); on a real GPU
every record runs.
"""

import numpy as np
import pytest

from accel.kernels import fm, pooled_lookup, position_weights, sequence_lookup, sparse_optim, swish_layernorm
from accel.kernels import vector_cross
from conformance import generators
from conformance.properties import dense, embeddings, embeddings_cases
from conformance.properties.embeddings_io import Batch
from conformance.runner import FAIL, PASS, SIMULATOR_LABEL, SKIP, Context, run_record

pytestmark = [pytest.mark.cuda, pytest.mark.slow]

# Samples kept per case: enough for an empty bag next to full ones, and for the float32 error comparisons to
# see more than one element.
DENSE_ROWS = 2
JAGGED_SAMPLES = 4

# The kernel families each class launches on its forward or backward; classes not listed (the cross nets,
# Perceptron, DeepFM's concatenation and dense module) run on torch ops only.
FAMILIES = {
    "FactorizationMachine": (fm,),
    "MLP": (swish_layernorm,),  # its swish_layernorm layers
    "VectorCrossNet": (vector_cross,),
    "SwishLayerNorm": (swish_layernorm,),
    "EmbeddingBagCollection": (pooled_lookup, sparse_optim),
    "EmbeddingCollection": (sequence_lookup,),
    "PositionWeightedModule": (position_weights,),
    "PositionWeightedProcessor": (position_weights,),
    "EmbeddingTower": (pooled_lookup,),
    "EmbeddingTowerCollection": (pooled_lookup,),
}

# The dense and embedding families; the managed-collision family is checked by its own tests.
RECORDS = [r for r in list(dense.RECORDS) + list(embeddings.RECORDS) if "accel" in r.sides]

# Under the simulator every CUDA thread runs in Python, so the suite runs there, per class, the first forward
# (float64) and the first autograd record: each kernel's forward and backward compared with refimpl. The other
# records launch the same kernels on more cases, or none (errors are raised before any launch); they run on a
# real GPU, and on the simulator with `NUMBA_ENABLE_CUDASIM=1 python -m conformance --device cuda`.
SIMULATOR_KINDS = ("forward", "autograd")


def _simulator_records(module):
    first = {}
    for r in RECORDS:
        if r.module == module and r.kind in SIMULATOR_KINDS:
            first.setdefault(r.kind, r)
    return list(first.values())
ACCEL_MODULES = list(dict.fromkeys(r.module for r in RECORDS))


def _shorter(x, rows):
    if isinstance(x, list):
        return [a[:rows] for a in x]
    return x[:rows]


def _first_samples(b: Batch, samples: int) -> Batch:
    """b restricted to its first `samples` samples of every key (KJT layout kept: key-major bags)."""
    if b.stride <= samples:
        return b
    offsets = b.offsets
    lengths, keep = [], []
    for k in range(len(b.keys)):
        lo, hi = k * b.stride, k * b.stride + samples
        lengths.append(b.lengths[lo:hi])
        keep.append(np.arange(offsets[lo], offsets[hi]))
    keep = np.concatenate(keep).astype(np.int64)
    weights = None if b.weights is None else b.weights[keep]
    return Batch(b.keys, np.concatenate(lengths), b.values[keep], weights, samples)


@pytest.fixture
def small_cases(monkeypatch):
    """The named dense and jagged generators with their batches cut to DENSE_ROWS / JAGGED_SAMPLES."""
    for name, make in list(generators.GENERATORS.items()):
        def dense(build, rng, make=make):
            return [generators.Case(c.name, _shorter(c.x, DENSE_ROWS)) for c in make(build, rng)]
        monkeypatch.setitem(generators.GENERATORS, name, dense)
    for name, make in list(embeddings_cases.GENERATORS.items()):
        def jagged(build, rng, make=make):
            return [(label, _first_samples(b, JAGGED_SAMPLES)) for label, b in make(build, rng)]
        monkeypatch.setitem(embeddings_cases.GENERATORS, name, jagged)


def test_first_samples_keeps_the_kjt_layout():
    b = Batch(("a", "b"), np.array([2, 0, 1, 1, 3, 0]), np.arange(7), np.arange(7.0), 3)
    cut = _first_samples(b, 2)
    assert cut.stride == 2
    np.testing.assert_array_equal(cut.lengths, [2, 0, 1, 3])
    # a's bags are ids 0-1 and (empty); b's are id 3 and ids 4-6.
    np.testing.assert_array_equal(cut.values, [0, 1, 3, 4, 5, 6])
    np.testing.assert_array_equal(cut.weights, [0.0, 1.0, 3.0, 4.0, 5.0, 6.0])
    assert _first_samples(b, 3) is b


@pytest.mark.parametrize("module", ACCEL_MODULES)
def test_records_pass_on_cuda(module, backend, ran_on, small_cases):
    ctx = Context.for_device("cuda")
    assert ctx.device_label == (SIMULATOR_LABEL if backend == "simulator" else "cuda")
    if backend == "simulator":
        records = _simulator_records(module)
        if not records:
            pytest.skip(f"{module} has no forward or autograd record (configuration and discrepancy records only)")
    else:
        records = [r for r in RECORDS if r.module == module]
    launches = 0
    rows = []
    for record in records:
        if backend == "simulator":
            from accel.kernels._device import simulated_cuda

            with simulated_cuda() as outer:
                row = run_record(record, ctx)
            launches += outer.count
        else:
            row = run_record(record, ctx)
        rows.append(row)
        assert row.device == ctx.device_label
    failed = [f"{r.property}: {r.detail}" for r in rows if r.status == FAIL]
    assert not failed, "\n".join(failed)
    assert sum(r.status == PASS for r in rows) > 0
    skipped = [f"{r.property}: {r.detail}" for r in rows if r.status == SKIP]
    assert not skipped, "\n".join(skipped)
    for family in FAMILIES.get(module, ()):
        ran_on(family._cuda_kernels())
    if backend == "simulator" and module in FAMILIES:
        assert launches > 0, f"{module}: no CUDA launch under simulated_cuda()"


def test_every_kernel_family_is_claimed_by_a_class():
    # A class that starts launching a new family must name it in FAMILIES to be checked.
    assert set(FAMILIES) <= set(ACCEL_MODULES)


def test_cli_runs_device_cuda_and_names_the_backend(backend, capsys):
    from conformance.__main__ import main

    assert main(["--device", "cuda", "--module", "PositionWeightedModule", "--property", "forward"]) == 0
    out = capsys.readouterr().out
    label = SIMULATOR_LABEL if backend == "simulator" else "cuda"
    row = next(line for line in out.splitlines() if line.startswith("PositionWeightedModule"))
    assert row.split()[:2] == ["PositionWeightedModule", "forward"] and f" {label} " in row
    assert "1 properties: 1 passed, 0 failed, 0 skipped" in out


def test_simulator_rows_repeat_with_the_simulator_switched_on(backend):
    record = next(r for r in RECORDS if r.id == "PositionWeightedModule/forward")
    row = run_record(record, Context.for_device("cuda"))
    prefix = "NUMBA_ENABLE_CUDASIM=1 " if backend == "simulator" else ""
    assert row.repro.startswith(f"{prefix}python -m conformance ")
    assert "PositionWeightedModule" in row.repro and row.repro.endswith(" --device cuda")


def test_a_simulator_context_keeps_its_tensors_on_the_cpu():
    with pytest.raises(ValueError, match="device must be 'cpu', got 'cuda'"):
        Context(device="cuda", cuda_simulator=True)
