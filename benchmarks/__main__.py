"""`python -m benchmarks dense [--quick] [--tiny] [--json FILE] ...`; exits 1 if a provider failed."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import List, Optional

import numba
import torch

from benchmarks import machine, report
from benchmarks.cases import Dims, dense_cases
from benchmarks.providers import GemmProvider, RefimplProvider, accel_provider, anchor_provider
from benchmarks.sweep import evaluate_targets, run_case
from benchmarks.timing import FULL, QUICK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="sweep", required=True)
    dense = sub.add_parser("dense", help="cross nets, FM, DeepFM, SwishLayerNorm, MLP")
    dense.add_argument("--quick", action="store_true", help="1 warm-up call and 3 timed calls")
    dense.add_argument("--tiny", action="store_true", help="tiny shapes (smoke test)")
    dense.add_argument("--batch", type=int, default=None, help="batch size (4096; 8 with --tiny)")
    dense.add_argument("--reps", type=int, default=None, help="timed calls per measurement")
    dense.add_argument("--devices", default=None,
                       help="comma list of cpu, cuda (default: cpu, plus cuda when available)")
    dense.add_argument("--anchor", default="auto", choices=("auto", "torchrec", "transcription"))
    dense.add_argument("--cases", default=None, help="comma list of case names (default: all)")
    dense.add_argument("--no-refimpl", action="store_true", help="skip the NumPy provider")
    dense.add_argument("--threads", type=int, default=None,
                       help="torch and Numba threads (default: theirs); set OPENBLAS_NUM_THREADS "
                            "in the environment for refimpl's NumPy")
    dense.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                       help="before each case, wait up to this long for other programs to idle")
    dense.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    return parser


def _providers(devices: List[str], anchor: str, refimpl: bool) -> list:
    providers: list = []
    for device in devices:
        providers.append(anchor_provider(device, anchor))
        if device == "cpu" and refimpl:
            providers.append(RefimplProvider())
        providers += [accel_provider(device), GemmProvider(device)]
    return providers


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    batch = args.batch if args.batch is not None else (8 if args.tiny else 4096)
    if batch < 1:
        raise ValueError(f"--batch: expected a positive batch size, got {batch}")
    dims = Dims.tiny(batch) if args.tiny else Dims(batch=batch)
    cases = dense_cases(dims)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise ValueError(f"--cases: expected names from {[c.name for c in cases]}, got {unknown}")
        cases = [c for c in cases if c.name in wanted]
    devices = args.devices.split(",") if args.devices else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise ValueError("--devices: cuda requested, but torch.cuda.is_available() is False")
    if args.threads is not None:
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"--threads: expected 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        if args.reps < 1:
            raise ValueError(f"--reps: expected a positive number of timed calls, got {args.reps}")
        plan = dataclasses.replace(plan, reps=args.reps, min_reps=min(plan.min_reps, args.reps))

    info = machine.describe()
    settings = dict(
        batch=batch, dtype="float32", shapes="tiny" if args.tiny else "full", devices=devices,
        warmup_calls=plan.warmup, max_timed_calls=plan.reps, min_timed_calls=plan.min_reps,
        budget_s_per_measurement=plan.budget_s, rounds=plan.rounds, pause_s_before_block=plan.pause_s,
        forward="under torch.no_grad()",
        forward_backward="out.backward(ones) (the gradient of out.sum(), made once), inputs and "
                         "parameters require grad; refimpl: forward then backward(ones)",
        load_column="1-minute load average after the case; the sweep itself adds up to torch_threads",
        others_column="CPU share other programs used in a probe just before the case",
        quiet_wait_s=args.quiet_wait,
    )
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    started = time.time()
    providers = _providers(devices, args.anchor, not args.no_refimpl)
    rows = []
    for case in cases:
        rows += run_case(case, providers, plan, log, args.quiet_wait)
    info["load_average_after"] = machine.describe()["load_average"]
    settings["wall_s"] = round(time.time() - started, 1)
    verdicts = evaluate_targets(cases, rows)
    print(report.text_report(info, settings, cases, rows, verdicts))
    if args.json:
        report.write_json(args.json, info, settings, cases, rows, verdicts)
    return 1 if any(r.status == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
