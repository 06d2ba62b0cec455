"""The sweep as text (one table per case, then the targets) and as JSON."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

from benchmarks.cases import Case
from benchmarks.sweep import Row

COLUMNS = ("provider", "fwd ms", "fwd+bwd ms", "fwd {u}", "fwd+bwd {u}",
           "anchor/x fwd", "anchor/x fwd+bwd", "reps", "rel err", "load", "others")


def _num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _err(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def case_table(case: Case, rows: Sequence[Row]) -> List[str]:
    unit = case.work.unit
    header = [c.format(u=unit) for c in COLUMNS]
    lines = [f"### {case.label}", "", f"Work model ({unit}): {case.work.formula}.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.provider} | {r.status}: {r.note} |" + " |" * (len(header) - 2))
            continue
        cells = [r.provider, _num(r.fwd_ms, 3), _num(r.fwd_bwd_ms, 3), _num(r.fwd_rate, 1),
                 _num(r.fwd_bwd_rate, 1), _num(r.speedup_fwd), _num(r.speedup_fwd_bwd),
                 str(r.reps), _err(r.rel_err), _num(r.load_1min, 1),
                 "-" if r.others_busy is None else f"{100 * r.others_busy:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def text_report(
    machine: Dict[str, object], settings: Dict[str, object], cases: Sequence[Case],
    rows: Sequence[Row], verdicts: Sequence[Dict[str, object]],
) -> str:
    lines = ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines.append("")
    for case in cases:
        lines += case_table(case, [r for r in rows if r.case == case.name]) + [""]
    lines += ["## Targets (fwd+bwd)", "", "| case | device | target | against | value | verdict |",
              "|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['case']} | {v['device']} | {v['target']} | {v['against']} | "
                     f"{v['value']:.2f}x | {v['verdict']} |")
    return "\n".join(lines) + "\n"


def write_json(
    path: str, machine: Dict[str, object], settings: Dict[str, object], cases: Sequence[Case],
    rows: Sequence[Row], verdicts: Sequence[Dict[str, object]],
) -> None:
    doc = {
        "machine": machine,
        "settings": settings,
        "cases": [dict(name=c.name, label=c.label, unit=c.work.unit, work_fwd=c.work.fwd,
                       work_fwd_bwd=c.work.fwd_bwd, work_formula=c.work.formula,
                       target=c.target.text) for c in cases],
        "rows": [r.as_dict() for r in rows],
        "targets": list(verdicts),
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
