"""python -m conformance: every registered property, refimpl versus accel (or TorchRec).

Prints one row per property (module, property, cases, max abs error, max ULP/relative error,
status), explains each failure (worst element, its index, value, reference, abs and ULP error,
the float32 reference's gap to float64 where there is one) with a one-line repro command, and
exits 1 if any property fails (2 for a usage error: an unknown module or record id, CUDA or
TorchRec unavailable). `--repro ID` reruns one record and prints everything about it; `--list`
prints the coverage matrix instead of running anything (exit 1 on a hole). Without a GPU,
`NUMBA_ENABLE_CUDASIM=1 python -m conformance --device cuda` runs accel's CUDA kernels on
Numba's simulator; its rows name the device "cuda (simulator)".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from conformance import adapters, report
from conformance.records import Record
from conformance.runner import FAIL, Context, Row, find, run, select, simulator_fallback


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m conformance", description=__doc__.split("\n\n")[0])
    p.add_argument("--module", help="only this module's properties (e.g. CrossNet)")
    p.add_argument("--property", dest="prop", help="only this property (e.g. forward_f32)")
    p.add_argument("--repro", metavar="ID",
                   help="rerun one record, by id ('CrossNet/forward') or short id, and print its detail")
    p.add_argument("--list", action="store_true",
                   help="print the coverage matrix (public item x kind x package/device) and exit")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="run accel on this device only (default: cpu, then cuda when available)")
    p.add_argument("--against", choices=("accel", "torchrec"), default="accel",
                   help="the package checked against refimpl (default accel)")
    p.add_argument("--golden", type=Path, help="check against the golden set in DIR instead of the committed one")
    p.add_argument("--write-golden", type=Path, metavar="DIR", help="write the golden set to DIR and exit")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="also write the rows (with --list: the coverage matrix) to FILE as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write the rows to FILE as JUnit XML")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress line on stderr (default: only when stderr is a terminal)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs and parameters (default 0)")
    return p


def _devices(requested: Optional[str]) -> List[str]:
    import torch

    if requested is not None:
        return [requested]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _list(args: argparse.Namespace) -> int:
    from conformance import coverage

    items = coverage.matrix()
    if args.module is not None:
        items = [i for i in items if i.name.lower() == args.module.lower()]
        if not items:
            names = ", ".join(coverage.public_items())
            print(f"error: --module expected a public name ({names}), got {args.module!r}", file=sys.stderr)
            return 2
    print(coverage.format_matrix(items, coverage.outside() if args.module is None else None))
    if args.json is not None:
        args.json.write_text(coverage.to_json(items), encoding="utf-8")
    return 1 if coverage.holes(items) or coverage.stale_exemptions(coverage.matrix()) else 0


def _usage_problem(args: argparse.Namespace) -> Optional[str]:
    """Why the run cannot start (printed as a usage error), or None."""
    from conformance.properties import modules

    if args.module is not None and args.module.lower() not in {m.lower() for m in modules()}:
        return f"--module expected one of {', '.join(modules())}, got {args.module!r}"
    if args.against == "torchrec":
        missing = adapters.torchrec_missing()
        if missing is not None:
            return (f"--against torchrec needs TorchRec, which does not import here ({missing}). "
                    "Install it with scripts/install-torchrec.sh.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available() and not simulator_fallback():
            return ("--device cuda requested, but torch.cuda.is_available() is False "
                    "(set NUMBA_ENABLE_CUDASIM=1 to run accel's CUDA kernels on Numba's simulator)")
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.write_golden is not None:
        from conformance.golden.generate import generate

        manifest = generate(args.write_golden)
        print(f"wrote {len(manifest['files'])} golden files and manifest.json to {args.write_golden}")
        return 0
    if args.list:
        return _list(args)

    from conformance.properties import RECORDS

    problem = _usage_problem(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    chosen: Optional[Record] = None
    if args.repro is not None:
        try:
            chosen = find(RECORDS, args.repro)
        except KeyError as exc:
            print(f"error: --repro: {exc.args[0]}", file=sys.stderr)
            return 2

    rows: List[Row] = []
    for device in _devices(args.device):
        ctx = Context.for_device(device, against=args.against, seed=args.seed)
        if args.golden is not None:
            ctx.golden_dir = args.golden.resolve()
        records = [chosen] if chosen is not None else select(RECORDS, args.module, args.prop, device)
        records = [r for r in records if r is not None and r in select(records, device=device)]
        progress = report.Progress(label=ctx.device_label) if report.progress_wanted(args.progress) else None
        rows += run(records, ctx, progress, diagnose=chosen is not None)
        if progress is not None:
            progress.close()
    if not rows:
        what = f"--repro {args.repro}" if chosen is not None else f"--module {args.module} --property {args.prop}"
        print(f"error: no property matches {what} on device {args.device or 'cpu'}", file=sys.stderr)
        return 2
    print(report.format_table(rows))
    if chosen is not None:
        for row in rows:
            print()
            print(report.format_detail(chosen, row))
    if args.json is not None:
        report.write_json(rows, args.json)
    if args.junit is not None:
        report.write_junit(rows, args.junit)
    return 1 if any(r.status == FAIL for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
