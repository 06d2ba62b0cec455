"""A DLRM-style accel model, converted with accel.interop.to_torchrec and sharded by TorchRec's
DistributedModelParallel over two CPU processes (gloo on 127.0.0.1), trains like the unsharded
accel model: same outputs, same updated embedding rows, and checkpoints cross the boundary both ways.

The test starts the two ranks as subprocesses running this file (`python <this file> RANK ...`),
with a free port chosen at run time, and kills them after a bounded time. Each rank also runs
the single-process accel model on the whole batch (it is small) and writes both sides'
numbers to a file that the test compares. Skipped when TorchRec is not installed.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip(
    "torchrec.distributed", reason="TorchRec 1.8 is optional (scripts/install-torchrec.sh); this checks sharding it"
)

import accel  # noqa: E402
from accel.interop import gather_state_dict, sharder_fused_params, to_torchrec  # noqa: E402
from accel.modules.embedding_configs import EmbeddingBagConfig  # noqa: E402

WORLD_SIZE = 2
LOCAL_BATCH = 4
STEPS = 3
LR = 0.05
DENSE_IN = 5
# name, rows, dim, features, sharding. "f_item" is read by two tables (a shared feature);
# column-wise tables are 8 wide and split into two 4-wide shards, one per rank.
TABLES = [
    ("t_user", 12, 4, ["f_user"], "table_wise"),
    ("t_item", 10, 4, ["f_item", "f_hist"], "table_wise"),
    ("t_cat", 9, 8, ["f_item"], "column_wise"),
    ("t_ctx", 7, 8, ["f_ctx"], "column_wise"),
]
KEYS = ["f_user", "f_item", "f_hist", "f_ctx"]
ROWS_OF_KEY = {"f_user": 12, "f_item": 9, "f_hist": 10, "f_ctx": 7}  # ids below every reading table's rows
BUDGET_S = 150  # the whole two-process run; it takes about 25 s here


class DLRM(nn.Module):
    """out = over([c | fm]), c = CrossNet([bottom(x) | e]), fm = FM([bottom(x), e]), e = EBC(kjt) pooled."""

    def __init__(self) -> None:
        super().__init__()
        configs = [
            EmbeddingBagConfig(rows, dim, name=name, feature_names=list(features))
            for name, rows, dim, features, _ in TABLES
        ]
        self.sparse = accel.EmbeddingBagCollection(configs, optimizer="sgd", lr=LR)
        self.bottom = accel.MLP(DENSE_IN, [6, 4])
        width = 4 + sum(dim * len(features) for _, _, dim, features, _ in TABLES)
        self.fm = accel.FactorizationMachine()
        self.cross = accel.CrossNet(width, 2)
        self.over = accel.MLP(width + 1, [6, 1], activation_on_last=False)

    def forward(self, dense: torch.Tensor, features) -> torch.Tensor:
        bottom = self.bottom(dense)
        pooled = self.sparse(features).values()
        crossed = self.cross(torch.cat([bottom, pooled], dim=1))
        return self.over(torch.cat([crossed, self.fm([bottom, pooled])], dim=1))


def batches(seed: int) -> List[Dict[str, object]]:
    """STEPS global batches of WORLD_SIZE * LOCAL_BATCH samples: dense rows, per-key id lists (empty bags
    included), targets."""
    rng = np.random.default_rng(seed)
    n = WORLD_SIZE * LOCAL_BATCH
    out = []
    for _ in range(STEPS):
        bags = {}
        for key in KEYS:
            lengths = rng.integers(0, 4, size=n)
            lengths[rng.integers(0, n)] = 0
            bags[key] = [rng.integers(0, ROWS_OF_KEY[key], size=int(length)).tolist() for length in lengths]
        dense = torch.tensor(rng.standard_normal((n, DENSE_IN)), dtype=torch.float32)
        target = torch.tensor(rng.standard_normal((n, 1)), dtype=torch.float32)
        out.append({"dense": dense, "bags": bags, "target": target})
    return out


def kjt(bags: Dict[str, List[List[int]]], samples: slice) -> accel.KeyedJaggedTensor:
    """accel KJT of the given samples, keys in KEYS order."""
    lengths, values = [], []
    for key in KEYS:
        for bag in bags[key][samples]:
            lengths.append(len(bag))
            values.extend(bag)
    return accel.KeyedJaggedTensor(
        keys=list(KEYS),
        values=torch.tensor(values, dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int64),
    )


def dense_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Everything but the embedding tables (which the fused optimizer updates in the backward)."""
    return [p for name, p in model.named_parameters() if "embedding_bags" not in name]


# --- one rank -------------------------------------------------------------------------------------------


def run_rank(rank: int, port: int, out_dir: Path) -> None:
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    torch.manual_seed(0)
    reference = DLRM()  # the unsharded accel model, run on the whole batch in every rank
    initial = copy.deepcopy(reference.state_dict())

    # The structure only, on the meta device: the planner and DMP build the shards, and the accel
    # state goes in after sharding (load_state_dict copies each rank's shards out of whole tensors).
    structure = to_torchrec(reference, device="meta", drop_optimizer_state=True)
    sharder = EmbeddingBagCollectionSharder(fused_params=sharder_fused_params(reference))
    constraints = {name: ParameterConstraints(sharding_types=[kind], min_partition=4) for name, _, _, _, kind in TABLES}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=WORLD_SIZE, compute_device="cpu"), constraints=constraints
    )
    plan = planner.collective_plan(structure, [sharder], dist.GroupMember.WORLD)
    sharded = DistributedModelParallel(structure, device=torch.device("cpu"), plan=plan, sharders=[sharder])
    # accel -> sharded TorchRec (issue point 3, one way). DMP's load_state_dict renames the keys of the
    # dict it is given in place, hence the copy.
    sharded.load_state_dict(dict(initial))
    loaded = gather_state_dict(sharded)

    reference_sgd = torch.optim.SGD(dense_parameters(reference), lr=LR)
    sharded_sgd = torch.optim.SGD(dense_parameters(sharded), lr=LR)
    mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    outputs, expected = [], []
    for batch in batches(seed=11):
        want = reference(batch["dense"], kjt(batch["bags"], slice(None)))
        ((want - batch["target"]) ** 2).sum().backward()
        reference_sgd.step()
        reference_sgd.zero_grad()

        got = sharded(batch["dense"][mine], to_torchrec(kjt(batch["bags"], mine)))
        # The reference's loss is the sum over the whole batch. The sharded model averages over the
        # ranks instead: DDP averages the dense gradients, and TorchRec's all-to-all divides the
        # embedding gradients by the world size on the way back (comm_ops gradient division, on by
        # default) to match. Both then hold (sum over ranks) / WORLD_SIZE, so each rank's loss is
        # multiplied by WORLD_SIZE to make the update the reference's.
        (WORLD_SIZE * ((got - batch["target"][mine]) ** 2).sum()).backward()
        sharded_sgd.step()
        sharded_sgd.zero_grad()
        outputs.append(got.detach())
        expected.append(want.detach()[mine])

    trained = gather_state_dict(sharded)  # sharded -> whole tensors (issue point 3, the other way)
    back = DLRM()
    back.load_state_dict(trained)  # strict: exactly the accel model's keys
    final = batches(seed=12)[0]
    result = {
        "initial": initial,
        "loaded": loaded,
        "outputs": outputs,
        "expected": expected,
        "trained": trained,
        "reference": reference.state_dict(),
        "back_output": back(final["dense"], kjt(final["bags"], slice(None))).detach(),
        "reference_output": reference(final["dense"], kjt(final["bags"], slice(None))).detach(),
        "plan": _sharding_types(plan),
    }
    torch.save(result, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def _sharding_types(plan) -> Dict[str, tuple]:
    """table -> (sharding type, ranks holding its shards)."""
    return {
        name: (spec.sharding_type, sorted(spec.ranks))
        for module_plan in plan.plan.values()
        for name, spec in module_plan.items()
    }


# --- the test: start, bound and read the two ranks --------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(out_dir: Path) -> List[subprocess.Popen]:
    env = dict(os.environ)
    # One thread per rank on the small CI machine; gloo on the loopback interface.
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if "GLOO_SOCKET_IFNAME" not in env and "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    port = _free_port()
    procs = []
    for rank in range(WORLD_SIZE):
        log = open(out_dir / f"rank{rank}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, str(rank), str(port), str(out_dir)], env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    return procs


def _wait(procs: List[subprocess.Popen], out_dir: Path) -> None:
    deadline = time.monotonic() + BUDGET_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "\n".join(f"--- rank {r} ---\n" + (out_dir / f"rank{r}.log").read_text()[-3000:] for r in range(WORLD_SIZE))
    codes = [proc.returncode for proc in procs]
    assert codes == [0] * WORLD_SIZE, f"ranks exited with {codes} (killed after {BUDGET_S} s if negative)\n{logs}"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> List[dict]:
    out_dir = tmp_path_factory.mktemp("dmp")
    _wait(_start_ranks(out_dir), out_dir)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def test_plan_is_table_wise_and_column_wise_as_constrained(ranks):
    for result in ranks:
        assert {name: kind for name, (kind, _) in result["plan"].items()} == {t[0]: t[4] for t in TABLES}
        for name, (kind, holders) in result["plan"].items():
            # A column-wise table is split over both ranks; a table-wise one lives on one.
            assert len(holders) == (WORLD_SIZE if kind == "column_wise" else 1), (name, holders)


def test_accel_state_loads_into_the_sharded_model_unchanged(ranks):
    for result in ranks:
        # The same keys (DMP lists the dense ones first), the same tensors.
        assert sorted(result["loaded"]) == sorted(result["initial"])
        for key, value in result["initial"].items():
            assert torch.equal(result["loaded"][key], value), key


def test_sharded_outputs_match_the_accel_model_at_every_step(ranks):
    for rank, result in enumerate(ranks):
        assert len(result["outputs"]) == STEPS
        for step, (got, want) in enumerate(zip(result["outputs"], result["expected"])):
            # float32 on both sides; the sums run in other orders (all-to-all, GEMM blocking).
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"rank {rank}, step {step}")


def test_trained_rows_and_dense_weights_match_the_accel_model(ranks):
    for result in ranks:
        trained, reference, initial = result["trained"], result["reference"], result["initial"]
        assert sorted(trained) == sorted(reference)
        for key, value in reference.items():
            torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6, msg=key)
        # The steps moved every table (so the comparison above compared trained rows).
        for name, *_ in TABLES:
            key = f"sparse.embedding_bags.{name}.weight"
            assert not torch.equal(reference[key], initial[key]), key


def test_gathered_checkpoint_loads_into_accel_and_predicts_alike(ranks):
    for result in ranks:
        torch.testing.assert_close(result["back_output"], result["reference_output"], rtol=1e-5, atol=1e-5)
    # Every rank gathered the same whole tensors.
    for key, value in ranks[0]["trained"].items():
        assert torch.equal(ranks[1]["trained"][key], value), key


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
