"""`python -m benchmarks.plots RUN.json [RUN.json ...]`: PNG plots of `python -m benchmarks dense --json` output.

Each cell is the lowest median of that (case, provider, measurement) over the runs given: outside load
only ever adds time, so the lowest median is the least disturbed one (the method of docs/benchmarks.md).
Writes `<prefix>-times.png` (fwd and fwd+bwd milliseconds per provider, one panel per case) and
`<prefix>-speedup.png` (anchor time over accel time per case), and with `--markdown FILE` the snippet
that the docs site shows on the benchmarks page. Needs matplotlib (the `docs` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

MEASURES = (("fwd_ms", "fwd"), ("fwd_bwd_ms", "fwd+bwd"))
# Cell key: (case, provider) -> {"fwd_ms": ms, "fwd_bwd_ms": ms, "role": ..., "device": ...}
Cells = Dict[Tuple[str, str], Dict[str, object]]


def load_run(path: Path) -> Dict[str, object]:
    """One sweep's JSON document, checked to be `python -m benchmarks dense --json` output."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    missing = [k for k in ("machine", "cases", "rows") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise ValueError(f"{path}: expected the JSON of `python -m benchmarks dense --json` with keys "
                         f"machine, cases, rows; missing {missing}")
    return doc


def best_medians(runs: Sequence[Dict[str, object]]) -> Tuple[List[Dict[str, object]], Cells]:
    """(cases in first-seen order, lowest median per (case, provider) and measurement over `runs`)."""
    cases: Dict[str, Dict[str, object]] = {}
    cells: Cells = {}
    for run in runs:
        for case in run["cases"]:
            cases.setdefault(case["name"], case)
        for row in run["rows"]:
            if row.get("status") != "ok":
                continue
            cell = cells.setdefault((row["case"], row["provider"]),
                                    {"role": row.get("role"), "device": row.get("device")})
            for key, _ in MEASURES:
                value = row.get(key)
                if value is not None and (cell.get(key) is None or value < cell[key]):
                    cell[key] = value
    return list(cases.values()), cells


def speedups(cells: Cells) -> List[Tuple[str, str, Optional[float], Optional[float]]]:
    """(case, accel provider, anchor/accel fwd, anchor/accel fwd+bwd), the anchor on the same device."""
    out = []
    for (case, provider), cell in cells.items():
        if cell["role"] != "accel":
            continue
        anchor = next((c for (k, _), c in cells.items()
                       if k == case and c["role"] == "anchor" and c["device"] == cell["device"]), None)
        ratios = [None if anchor is None or not anchor.get(key) or not cell.get(key) else anchor[key] / cell[key]
                  for key, _ in MEASURES]
        out.append((case, provider, *ratios))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def plot_times(cases: Sequence[Dict[str, object]], cells: Cells, path: Path, title: str) -> None:
    plt = _pyplot()
    ncols = min(4, len(cases))
    nrows = -(-len(cases) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        providers = [p for (c, p) in cells if c == case["name"]]
        for i, (key, label) in enumerate(MEASURES):
            values = [cells[(case["name"], p)].get(key) or 0.0 for p in providers]
            ax.barh([y + 0.4 * i for y in range(len(providers))], values, height=0.4, label=label)
        ax.set_yticks([y + 0.2 for y in range(len(providers))], providers, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(case["label"], fontsize=9)
        ax.set_xlabel("median ms (lower is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    for ax in list(axes.flat)[len(cases):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_speedup(rows: Sequence[Tuple[str, str, Optional[float], Optional[float]]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows)), 3.4))
    labels = [case if provider == "accel-cpu" else f"{case}\n{provider}" for case, provider, _, _ in rows]
    for i, (_, label) in enumerate(MEASURES):
        values = [r[2 + i] or 0.0 for r in rows]
        bars = ax.bar([x + 0.4 * i for x in range(len(rows))], values, width=0.4, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" if v else "n/a" for v in values], fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    top = max([v for r in rows for v in r[2:] if v] or [1.0])
    ax.set_ylim(top=2.0 * top)  # room for the bar labels under the title
    ax.set_xticks([x + 0.2 for x in range(len(rows))], labels, fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("anchor time / accel time\n(above 1: accel faster)", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown_snippet(paths: Sequence[Path], images: Sequence[Path], docs_dir: Path, title: str, command: str) -> str:
    """The plots section of the benchmarks page; links are relative to `docs_dir`."""
    def rel(p: Path) -> str:
        return Path(os.path.relpath(p.resolve(), docs_dir.resolve())).as_posix()

    inside = all(not rel(p).startswith("..") for p in paths)
    sources = ", ".join(f"[`{p.name}`]({rel(p)})" if inside else f"`{p.name}`" for p in paths)
    text = (f"{title}. Each bar is the lowest median of that provider and measurement over the runs "
            f"{sources} (`python -m benchmarks dense --json` output); regenerate with `{command}`.")
    lines = ["## Plots", "", text, ""]
    lines += [f"![{img.stem}]({rel(img)})" + "\n" for img in images]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files of `python -m benchmarks dense --json`")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder of the PNG files (docs/img)")
    parser.add_argument("--prefix", default="dense-cpu", help="file name prefix (dense-cpu)")
    parser.add_argument("--title", default=None, help="plot title (default: the runs' recspec revisions)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="also write the benchmarks page's plots section to FILE")
    parser.add_argument("--docs-dir", type=Path, default=Path("docs"), help="links in FILE are relative to it")
    args = parser.parse_args(argv)
    runs = [load_run(p) for p in args.runs]
    cases, cells = best_medians(runs)
    if not cells:
        raise ValueError(f"runs: expected at least one row with status 'ok', got none in {[str(p) for p in args.runs]}")
    revisions = sorted({str(r["machine"].get("recspec", "?")) for r in runs})
    batch = runs[0].get("settings", {}).get("batch", "?")
    title = args.title or f"Dense modules, batch {batch}, recspec {', '.join(revisions)}"
    args.out.mkdir(parents=True, exist_ok=True)
    images = [args.out / f"{args.prefix}-times.png", args.out / f"{args.prefix}-speedup.png"]
    plot_times(cases, cells, images[0], title)
    plot_speedup(speedups(cells), images[1], title)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m benchmarks.plots " + shlex.join([str(p) for p in args.runs] + [
            "--out", str(args.out), "--prefix", args.prefix, "--title", title, "--markdown", str(args.markdown)])
        snippet = markdown_snippet(args.runs, images, args.docs_dir, title, command)
        args.markdown.write_text(snippet, encoding="utf-8")
    print("wrote " + ", ".join(str(p) for p in images + ([args.markdown] if args.markdown else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
