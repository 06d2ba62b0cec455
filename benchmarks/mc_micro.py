"""Managed collision on CPU: accel's MCHManagedCollisionModule against TorchRec's, in one process.

`python -m benchmarks.mc_micro [--config issue|tiny] [--only train,eval] [--policies LFU,LRU,DistanceLFU]
[--intervals 1,100] [--quick]`; `python -m benchmarks.mc_micro --soak 10000000 [--intervals 1]` runs accel alone
over 10^7 ids per policy and checks the table invariants at the end.

Config "issue" (issue 4): zch_size 1,000,000, batches of 65,536 ids drawn from a Zipf(1.1) law over 10^9 ids
(rank r ~ Zipf(1.1) truncated to 10^9, scattered over the id space by the bijection r * 2654435761 mod 10^9),
seeded. "tiny": zch_size 1000, 512 ids a batch over 10^5 ids (the smoke test's config).

train: a training forward (profile + remap, and the eviction rounds it triggers) followed by evict(), as the
MC embedding collections run it, on a stream of distinct batches; one timed call is eviction_interval
consecutive steps (so exactly one round), reported per step. Both modules are first warmed on the same
stream until the table is full (accel runs the warm-up, TorchRec's module loads accel's state dict), and the
remapped ids of the first step after it are checked to agree.
eval: one eval-mode forward (pure remap) of a batch against the warmed table, and NumPy's searchsorted of the
same ids over the same sorted table (the bare search, no gather). Providers of a case are timed in
interleaved rounds after an idle pause (benchmarks.timing); times are medians.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from accel.modules import mc_modules as amc
from accel.sparse import JaggedTensor
from benchmarks import machine
from benchmarks.timing import FULL, QUICK, Timed, TimingPlan, median_times

POLICIES = ("LFU", "LRU", "DistanceLFU")
# An odd multiplier with no factor 5: a bijection of [0, 10^k), so distinct ranks stay distinct ids.
_SCATTER = 2654435761


@dataclass(frozen=True)
class Config:
    name: str
    zch_size: int
    batch: int
    id_space: int
    zipf: float
    warm_steps: int  # training steps (at interval 1) that fill the table before timing


CONFIGS = {
    "issue": Config("issue", 1_000_000, 65_536, 10**9, 1.1, 160),
    "tiny": Config("tiny", 1000, 512, 10**5, 1.1, 8),
}


def make_batches(cfg: Config, count: int, seed: int = 0) -> List[torch.Tensor]:
    """`count` batches of cfg.batch int64 ids: Zipf(cfg.zipf) ranks below id_space, scattered."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ranks = np.empty(0, np.int64)
        while ranks.size < cfg.batch:
            draw = rng.zipf(cfg.zipf, cfg.batch)
            ranks = np.concatenate([ranks, draw[draw <= cfg.id_space].astype(np.int64) - 1])
        out.append(torch.from_numpy((ranks[: cfg.batch] * _SCATTER) % cfg.id_space))
    return out


def _policy(module, name: str):
    return {"LFU": module.LFU_EvictionPolicy, "LRU": module.LRU_EvictionPolicy,
            "DistanceLFU": module.DistanceLFU_EvictionPolicy}[name]()


def _torchrec():
    try:
        from torchrec.modules import mc_modules
        from torchrec.sparse.jagged_tensor import JaggedTensor as TorchRecJT
    except Exception:  # noqa: BLE001 -- TorchRec is an optional anchor
        return None
    return mc_modules, TorchRecJT


class Stream:
    """A module fed batch after batch of a fixed pool (cycled): forward, then evict() as the MC collections do."""

    def __init__(self, module: torch.nn.Module, jagged: Callable, batches: Sequence[torch.Tensor]) -> None:
        self.module, self.jagged, self.batches, self.k = module, jagged, batches, 0

    def step(self) -> torch.Tensor:
        ids = self.batches[self.k % len(self.batches)]
        self.k += 1
        out = self.module({"t": self.jagged(ids, lengths=torch.tensor([ids.numel()]))})["t"].values()
        self.module.evict()
        return out

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()


def modules(cfg: Config, policy: str, interval: int, anchors: bool = True) -> Dict[str, Stream]:
    """Fresh accel (and TorchRec, when installed and `anchors`) modules of the case, not yet fed."""
    made = {"accel": (amc, JaggedTensor)}
    anchor = _torchrec() if anchors else None
    if anchor is not None:
        made["torchrec"] = anchor
    out = {}
    for name, (module, jagged) in made.items():
        mch = module.MCHManagedCollisionModule(zch_size=cfg.zch_size, device=torch.device("cpu"),
                                               eviction_policy=_policy(module, policy), eviction_interval=interval)
        out[name] = (mch, jagged)
    return out


def warm_up(streams: Dict[str, Stream], steps: int, interval: int) -> None:
    """Fill the table: accel runs `steps` steps (rounded to whole windows) and every other module loads its
    state dict (TorchRec's loads unchanged), so all start the timed stream from the same full table."""
    first = streams["accel"]
    first.steps(max(steps // interval, 1) * interval)
    for s in streams.values():
        if s is not first:
            s.module.load_state_dict(first.module.state_dict())
            s.k = first.k


def train_case(cfg: Config, policy: str, interval: int, plan: TimingPlan, seed: int = 0) -> List[str]:
    batches = make_batches(cfg, max(2 * interval, cfg.warm_steps), seed)
    streams = {name: Stream(m, jagged, batches) for name, (m, jagged) in modules(cfg, policy, interval).items()}
    warm_up(streams, cfg.warm_steps, interval)
    outs = {name: s.step() for name, s in streams.items()}
    agree = all(torch.equal(outs["accel"], o) for o in outs.values())
    for s in streams.values():
        s.steps(interval - 1)  # back to a round boundary
    names = list(streams)
    times = median_times([Timed(lambda s=streams[n]: s.steps(interval)) for n in names], plan)
    per_step = {n: t.median_ms / interval for n, t in zip(names, times)}
    open_slots = int(streams["accel"].module.open_slots())
    lines = [f"{cfg.name} train {policy} interval {interval}: Z {cfg.zch_size}, {cfg.batch} ids a step, "
             f"open slots {open_slots}, remapped ids agree: {agree}, others' CPU use {machine.others_busy(0.5):.2f}"]
    for name, t in zip(names, times):
        ratio = f"  {per_step['torchrec'] / per_step[name]:6.2f}x torchrec" if "torchrec" in per_step else ""
        lines.append(f"  {name:10s} {per_step[name]:9.2f} ms/step{ratio}  ({t.reps} reps of {interval} steps)")
    return lines


def eval_case(cfg: Config, plan: TimingPlan, seed: int = 0) -> List[str]:
    batches = make_batches(cfg, cfg.warm_steps + 1, seed)
    found = modules(cfg, "LFU", 1)
    warm_up({name: Stream(m, jagged, batches[:-1]) for name, (m, jagged) in found.items()}, cfg.warm_steps, 1)
    for m, _ in found.values():
        m.eval()
    ids = batches[-1]
    lengths = torch.tensor([ids.numel()])
    raw = found["accel"][0]._mch_sorted_raw_ids.numpy().copy()
    ids_np = ids.numpy()
    runs: Dict[str, Callable[[], object]] = {
        name: (lambda m=m, jagged=jagged: m({"t": jagged(ids, lengths=lengths)})["t"].values())
        for name, (m, jagged) in found.items()
    }
    runs["numpy searchsorted"] = lambda: np.searchsorted(raw[:-1], ids_np)
    outs = {name: run() for name, run in runs.items() if name != "numpy searchsorted"}
    agree = all(torch.equal(outs["accel"], o) for o in outs.values())
    names = list(runs)
    times = {n: t.median_ms for n, t in zip(names, median_times([Timed(runs[n]) for n in names], plan))}
    lines = [f"{cfg.name} eval remap: Z {cfg.zch_size}, {ids.numel()} ids, remapped ids agree: {agree}, "
             f"others' CPU use {machine.others_busy(0.5):.2f}"]
    for name in names:
        vs = [f"{times[ref] / times[name]:6.2f}x {ref}" for ref in ("torchrec", "numpy searchsorted")
              if ref in times and ref != name]
        lines.append(f"  {name:20s} {times[name]:9.3f} ms  " + "  ".join(vs))
    return lines


def invariants(m: torch.nn.Module) -> List[str]:
    """The MCH table invariants of issue 4 that fail (empty when all hold): raw ids sorted, no real id twice,
    at most Z - 1 ids managed with the sentinel slot last, output ids a permutation of [off, off + Z) with the
    miss id off + Z - 1 kept by the sentinel."""
    raw = m._mch_sorted_raw_ids.cpu().numpy()
    mapping = m._mch_remapped_ids_mapping.cpu().numpy()
    Z, off, empty = raw.shape[0], m._output_global_offset, np.iinfo(np.int64).max
    real = raw[raw != empty]
    failed = []
    if np.any(np.diff(raw) < 0):
        failed.append("raw ids not sorted")
    if np.unique(real).shape[0] != real.shape[0]:
        failed.append("a real id held twice")
    if real.shape[0] > Z - 1 or raw[-1] != empty:
        failed.append("more than Z - 1 ids managed")
    if not np.array_equal(np.sort(mapping), np.arange(off, off + Z)):
        failed.append("output ids not a permutation of [off, off + Z)")
    if mapping[-1] != off + Z - 1:
        failed.append("the miss id left the sentinel slot")
    return failed


def soak(cfg: Config, total_ids: int, interval: int, seed: int = 0) -> List[str]:
    """accel alone over `total_ids` ids (training steps of cfg.batch ids, every policy), every output id
    checked to lie in [off, off + Z) and the invariants checked at the end; one line per policy with its time."""
    steps = -(-total_ids // cfg.batch)
    batches = make_batches(cfg, min(steps, 64), seed)
    lines = [f"{cfg.name} soak: {steps * cfg.batch} ids a policy, interval {interval}"]
    for policy in POLICIES:
        m, jagged = modules(cfg, policy, interval, anchors=False)["accel"]
        stream = Stream(m, jagged, batches)
        outside = 0
        start = time.perf_counter()
        for _ in range(steps):
            out = stream.step()
            outside += int(((out < 0) | (out >= cfg.zch_size)).sum())
        elapsed = time.perf_counter() - start
        failed = invariants(m) + ([f"{outside} output ids outside [0, Z)"] if outside else [])
        lines.append(f"  {policy:12s} {elapsed:8.1f} s, open slots {int(m.open_slots())}, invariants: "
                     + ("all hold" if not failed else "FAILED: " + "; ".join(failed)))
    return lines


def _plan(quick: bool, interval: int) -> TimingPlan:
    if quick:
        return QUICK
    if interval > 1:
        # One call is a whole window of steps (seconds for TorchRec): fewer, longer samples.
        return TimingPlan(warmup=1, reps=5, min_reps=3, budget_s=30.0, rounds=5, pause_s=0.25)
    return FULL


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mc_micro")
    parser.add_argument("--config", default="issue", choices=sorted(CONFIGS))
    parser.add_argument("--only", default="train,eval", help="comma list of train, eval")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--intervals", default="1,100")
    parser.add_argument("--quick", action="store_true", help="1 warm-up call and 3 timed calls")
    parser.add_argument("--soak", type=int, default=0, metavar="IDS",
                        help="instead of timing: run accel over this many ids per policy and check the invariants")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                        help="before each case, wait up to this long for other programs to idle")
    args = parser.parse_args(argv)
    cfg = CONFIGS[args.config]
    print(f"cpu: {machine.cpu_model()}, torch threads {torch.get_num_threads()}, "
          f"revision {machine.source_revision()}")
    if args.soak:
        for line in soak(cfg, args.soak, int(args.intervals.split(",")[0])):
            print(line, flush=True)
        return 0
    cases = []
    if "train" in args.only.split(","):
        cases += [(p, int(i)) for i in args.intervals.split(",") for p in args.policies.split(",")]
    if "eval" in args.only.split(","):
        cases.append(None)
    for case in cases:
        if args.quiet_wait:
            machine.wait_until_quiet(args.quiet_wait)
        start = time.perf_counter()
        lines = eval_case(cfg, _plan(args.quick, 1)) if case is None else train_case(
            cfg, case[0], case[1], _plan(args.quick, case[1]))
        for line in lines:
            print(line, flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
