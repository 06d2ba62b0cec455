"""Embedding lookups on CPU: accel's table-batched kernels against torch's embedding_bag, TorchRec's
EmbeddingBagCollection and FBGEMM's fused CPU op (the last two when installed), in one process.

`python -m benchmarks.embedding_micro [--config dlrm-small|wide|tiny] [--only forward,train] [--quick]`

Configs (issue 3): "dlrm-small" = 26 float32 tables of 100k x 64, batch 2048, bag lengths uniform in 0..20
(empty bags included); "wide" = 8 tables of 1M x 128, batch 4096, 32 ids a bag (about 4 GB of tables, and as
much again for each provider holding its own copy). SUM pooling, ids uniform over the rows, seeded.

Forward: median ms (no grad) and GB/s of rows read, the traffic model being ids x D x 4 bytes (the output and
the ids are under 10% of it). Training step: forward, backward of sum(out * G) with a fixed G, and the
optimizer update: accel's fused SGD / row-wise Adagrad (touched rows only), TorchRec's EBC with dense
gradients and torch.optim.SGD (zero_grad with set_to_none), FBGEMM's SplitTableBatchedEmbeddingBagsCodegen
with EXACT_SGD / EXACT_ROWWISE_ADAGRAD. Providers of a case are timed in interleaved rounds after an idle
pause (benchmarks.timing), so that outside load hits them alike.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from accel.kernels import pooled_lookup as pl
from benchmarks import machine
from benchmarks.timing import FULL, QUICK, Timed, TimingPlan, median_times

LR = 0.01
EPS = 1e-8


@dataclass(frozen=True)
class Config:
    name: str
    tables: int
    rows: int
    dim: int
    batch: int
    max_len: int
    fixed_len: bool


CONFIGS = {
    "dlrm-small": Config("dlrm-small", 26, 100_000, 64, 2048, 20, False),
    "wide": Config("wide", 8, 1_000_000, 128, 4096, 32, True),
    "tiny": Config("tiny", 3, 1000, 16, 64, 5, False),
}


@dataclass
class Inputs:
    weights: List[torch.Tensor]
    ids: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    slot_key: torch.Tensor
    slot_table: torch.Tensor
    slot_column: torch.Tensor
    grad: torch.Tensor

    @property
    def gbytes(self) -> float:
        return self.ids.numel() * self.weights[0].shape[1] * 4 / 1e9


def make_inputs(cfg: Config, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    T, B = cfg.tables, cfg.batch
    # Tables in torch's own allocations, as a module's parameters are (NumPy's would get transparent huge pages,
    # which measured slower here).
    weights = [torch.empty(cfg.rows, cfg.dim).copy_(torch.from_numpy(rng.uniform(-0.01, 0.01, (cfg.rows, cfg.dim))))
               for _ in range(T)]
    lengths = np.full(T * B, cfg.max_len) if cfg.fixed_len else rng.integers(0, cfg.max_len + 1, T * B)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, cfg.rows, int(offsets[-1]))
    arange = torch.arange(T, dtype=torch.int64)
    return Inputs(
        weights, torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(lengths), arange, arange,
        arange * cfg.dim, torch.from_numpy(rng.standard_normal((B, T * cfg.dim)).astype(np.float32)),
    )


# ---------------------------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------------------------


def accel_forward(x: Inputs) -> Callable[[], object]:
    total = sum(w.shape[1] for w in x.weights)
    B = x.grad.shape[0]

    def run():
        with torch.no_grad():
            return pl.pooled_lookup(x.weights, x.ids, x.offsets, x.slot_key, x.slot_table, x.slot_column, total, B,
                                    None, pl.SUM)

    return run


def torch_forward(x: Inputs) -> Callable[[], object]:
    B = x.grad.shape[0]
    o = x.offsets

    def run():
        with torch.no_grad():
            outs = []
            for t, w in enumerate(x.weights):
                first, last = int(o[t * B]), int(o[(t + 1) * B])
                outs.append(F.embedding_bag(x.ids[first:last], w, o[t * B:(t + 1) * B + 1] - first, mode="sum",
                                            include_last_offset=True))
            return torch.cat(outs, dim=1)

    return run


def _torchrec_ebc(x: Inputs):
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    T = len(x.weights)
    configs = [EmbeddingBagConfig(num_embeddings=w.shape[0], embedding_dim=w.shape[1], name=f"t{t}",
                                  feature_names=[f"f{t}"]) for t, w in enumerate(x.weights)]
    ebc = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    ebc = ebc.to_empty(device="cpu")
    with torch.no_grad():
        for t, w in enumerate(x.weights):
            ebc.embedding_bags[f"t{t}"].weight.copy_(w)
    kjt = KeyedJaggedTensor(keys=[f"f{t}" for t in range(T)], values=x.ids, lengths=x.lengths)
    return ebc, kjt


def torchrec_forward(x: Inputs) -> Callable[[], object]:
    ebc, kjt = _torchrec_ebc(x)

    def run():
        with torch.no_grad():
            return ebc(kjt).values()

    return run


def torchrec_train(x: Inputs) -> Callable[[], object]:
    ebc, kjt = _torchrec_ebc(x)
    opt = torch.optim.SGD(ebc.parameters(), lr=LR)

    def run():
        opt.zero_grad(set_to_none=True)
        (ebc(kjt).values() * x.grad).sum().backward()
        opt.step()

    return run


def accel_train(x: Inputs, rule: str) -> Callable[[], object]:
    tables = [w.clone() for w in x.weights]
    total = sum(w.shape[1] for w in tables)
    B = x.grad.shape[0]
    state = {"sgd": [], "adagrad": [torch.zeros_like(w) for w in tables],
             "rowwise_adagrad": [torch.zeros(w.shape[0]) for w in tables]}[rule]

    def run():
        out = pl.pooled_lookup_fused(tables, x.ids, x.offsets, x.slot_key, x.slot_table, x.slot_column, total, B,
                                     None, pl.SUM, rule, LR, EPS, state)
        (out * x.grad).sum().backward()

    return run


def _fbgemm_tbe(x: Inputs, rule: str):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    optimizer = {"sgd": EmbOptimType.EXACT_SGD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}[rule]
    specs = [(w.shape[0], w.shape[1], EmbeddingLocation.HOST, ComputeDevice.CPU) for w in x.weights]
    tbe = SplitTableBatchedEmbeddingBagsCodegen(specs, optimizer=optimizer, learning_rate=LR, eps=EPS)
    with torch.no_grad():
        for t, w in enumerate(x.weights):
            tbe.split_embedding_weights()[t].copy_(w)
    return tbe


def fbgemm_forward(x: Inputs) -> Callable[[], object]:
    tbe = _fbgemm_tbe(x, "sgd")

    def run():
        with torch.no_grad():
            return tbe(x.ids, x.offsets)

    return run


def fbgemm_train(x: Inputs, rule: str) -> Callable[[], object]:
    tbe = _fbgemm_tbe(x, rule)

    def run():
        (tbe(x.ids, x.offsets) * x.grad).sum().backward()

    return run


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 -- an optional anchor that fails to import is simply absent
        return False


def providers(x: Inputs, what: str, skip: Sequence[str] = ()) -> Dict[str, Callable[[], object]]:
    """The timed callables of a case, built lazily so that skipped ones never allocate their copy of the tables."""
    if what == "forward":
        makers = {"accel": lambda: accel_forward(x), "torch.embedding_bag": lambda: torch_forward(x)}
        if _has("torchrec"):
            makers["torchrec EBC"] = lambda: torchrec_forward(x)
        if _has("fbgemm_gpu"):
            makers["fbgemm TBE"] = lambda: fbgemm_forward(x)
    else:
        makers = {"accel fused sgd": lambda: accel_train(x, "sgd"),
                  "accel fused rowwise_adagrad": lambda: accel_train(x, "rowwise_adagrad")}
        if _has("torchrec"):
            makers["torchrec EBC + SGD"] = lambda: torchrec_train(x)
        if _has("fbgemm_gpu"):
            makers["fbgemm TBE exact sgd"] = lambda: fbgemm_train(x, "sgd")
            makers["fbgemm TBE rowwise_adagrad"] = lambda: fbgemm_train(x, "rowwise_adagrad")
    return {name: make() for name, make in makers.items() if not any(name.startswith(s) for s in skip)}


def run_case(cfg: Config, what: str, plan: TimingPlan, skip: Sequence[str] = ()) -> List[str]:
    x = make_inputs(cfg)
    found = providers(x, what, skip)
    names = list(found)
    times = median_times([Timed(found[n]) for n in names], plan)
    ref = {"forward": "torchrec EBC", "train": "torchrec EBC + SGD"}[what]
    ref_ms = next((t.median_ms for n, t in zip(names, times) if n == ref), None)
    header = (f"{cfg.name} {what}: {x.ids.numel()} ids, {x.gbytes * 1e3:.0f} MB of rows, "
              f"others' CPU use {machine.others_busy(0.5):.2f}")
    lines = [header]
    for name, t in zip(names, times):
        rate = f"{x.gbytes / (t.median_ms / 1e3):6.2f} GB/s" if what == "forward" else ""
        ratio = f"  {ref_ms / t.median_ms:5.2f}x {ref}" if ref_ms else ""
        lines.append(f"  {name:28s} {t.median_ms:9.2f} ms {rate}{ratio}  ({t.reps} reps)")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedding_micro")
    parser.add_argument("--config", default="dlrm-small", choices=sorted(CONFIGS))
    parser.add_argument("--only", default="forward,train", help="comma list of forward, train")
    parser.add_argument("--quick", action="store_true", help="1 warm-up call and 3 timed calls")
    parser.add_argument("--skip", default="", help="comma list of provider name prefixes not to run "
                        "(each provider holds its own copy of the tables: 4 GB on 'wide')")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                        help="before each case, wait up to this long for other programs to idle")
    args = parser.parse_args(argv)
    cfg = CONFIGS[args.config]
    print(f"cpu: {machine.cpu_model()}, torch threads {torch.get_num_threads()}, "
          f"revision {machine.source_revision()}")
    for what in args.only.split(","):
        if args.quiet_wait:
            machine.wait_until_quiet(args.quiet_wait)
        start = time.perf_counter()
        skip = [s for s in args.skip.split(",") if s]
        for line in run_case(cfg, what, QUICK if args.quick else FULL, skip):
            print(line, flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
