"""python -m conformance: every registered property, refimpl versus accel (or TorchRec).

Prints one row per property (module, property, cases, max abs error, max ULP/relative error,
status), explains each failure with a repro command, and exits 1 if any property fails
(2 for a usage error: an unknown module, CUDA or TorchRec unavailable). Without a GPU,
`NUMBA_ENABLE_CUDASIM=1 python -m conformance --device cuda` runs accel's CUDA kernels on
Numba's simulator; its rows name the device "cuda (simulator)".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from conformance import adapters
from conformance.runner import FAIL, Context, Row, format_table, run, select, simulator_fallback


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m conformance", description=__doc__.split("\n\n")[0])
    p.add_argument("--module", help="only this module's properties (e.g. CrossNet)")
    p.add_argument("--property", dest="prop", help="only this property (e.g. forward_f32)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="run accel on this device only (default: cpu, then cuda when available)")
    p.add_argument("--against", choices=("accel", "torchrec"), default="accel",
                   help="the package checked against refimpl (default accel)")
    p.add_argument("--golden", type=Path, help="check against the golden set in DIR instead of the committed one")
    p.add_argument("--write-golden", type=Path, metavar="DIR", help="write the golden set to DIR and exit")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the rows to FILE as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs and parameters (default 0)")
    return p


def _devices(requested: Optional[str]) -> List[str]:
    import torch

    if requested is not None:
        return [requested]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.write_golden is not None:
        from conformance.golden.generate import generate

        manifest = generate(args.write_golden)
        print(f"wrote {len(manifest['files'])} golden files and manifest.json to {args.write_golden}")
        return 0

    from conformance.properties import RECORDS, modules

    if args.module is not None and args.module.lower() not in {m.lower() for m in modules()}:
        print(f"error: --module expected one of {', '.join(modules())}, got {args.module!r}", file=sys.stderr)
        return 2
    if args.against == "torchrec":
        missing = adapters.torchrec_missing()
        if missing is not None:
            print(f"error: --against torchrec needs TorchRec, which does not import here ({missing}). "
                  "Install it with scripts/install-torchrec.sh.", file=sys.stderr)
            return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available() and not simulator_fallback():
            print("error: --device cuda requested, but torch.cuda.is_available() is False "
                  "(set NUMBA_ENABLE_CUDASIM=1 to run accel's CUDA kernels on Numba's simulator)", file=sys.stderr)
            return 2

    rows: List[Row] = []
    for device in _devices(args.device):
        ctx = Context.for_device(device, against=args.against, seed=args.seed)
        if args.golden is not None:
            ctx.golden_dir = args.golden.resolve()
        records = select(RECORDS, args.module, args.prop, device)
        rows += run(records, ctx)
    if not rows:
        print(f"error: no property matches --module {args.module} --property {args.prop}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.status == FAIL for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
