"""Rendering rows: the text table, one record's detail, JSON and JUnit XML, and a progress line.

Everything here reads `runner.Row`s and writes text; nothing runs a record.
"""

from __future__ import annotations

import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Optional, Sequence, TextIO

from conformance.records import Record
from conformance.runner import FAIL, PASS, SKIP, Row


def _fmt(value: Optional[float], unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = "inf" if math.isinf(value) else f"{value:.3g}"
    return f"{text} {unit}".strip()


def format_table(rows: Sequence[Row]) -> str:
    """Aligned text: one line per row, then each failure's explanation and repro command."""
    header = ("module", "property", "device", "cases", "max abs err", "max ULP/rel err", "tolerance", "status")
    lines = [
        (r.module, r.property, r.device, str(r.cases), _fmt(r.max_abs), _fmt(r.max_err, r.unit),
         _fmt(r.tolerance, r.unit), r.status)
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    for r in rows:
        if r.status == FAIL:
            out.append("")
            out.append(f"FAIL {r.id or r.module + '/' + r.property} [{r.device}]: {r.detail}")
            out.append(f"  repro: {r.repro}")
    reasons: Dict[str, int] = {}
    for r in rows:
        if r.status == SKIP:
            reasons[r.detail] = reasons.get(r.detail, 0) + 1
    if reasons:
        out.append("")
        out += [f"SKIP x{n}: {reason}" for reason, n in reasons.items()]
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, SKIP)}
    out.append("")
    out.append(f"{len(rows)} properties: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
    return "\n".join(out)


_WORST_FIELDS = (("case", "case"), ("array", "array"), ("index", "index"), ("got", "value"),
                 ("ref", "reference"), ("abs_err", "abs error"), ("ulps", "ULP error"),
                 ("ref32", "float32 reference"), ("gap32", "float32 vs float64 gap"))


def format_detail(record: Record, row: Row) -> str:
    """Everything about one run of one record: what it checks, how, and its worst element
    (shown whether it passed or not, so a near miss is visible too)."""
    tol = _fmt(row.tolerance, row.unit)
    out = [
        f"record     {record.id}  (short id {record.short_id})",
        f"kind       {record.kind}; inputs: {record.generator}",
        f"spec       {record.spec}",
        f"device     {row.device}, package under test {row.against}",
        f"status     {row.status}: {row.cases} cases, max abs err {_fmt(row.max_abs)}, "
        f"max err {_fmt(row.max_err, row.unit)}, tolerance {tol}",
    ]
    if record.discrepancy:
        out.append(f"ledger     {record.discrepancy}")
    if row.worst is not None:
        out.append("worst element:")
        for key, label in _WORST_FIELDS:
            value = row.worst.get(key)
            if value is not None and value != "":
                out.append(f"  {label:<24}{value!r}" if isinstance(value, float) else f"  {label:<24}{value}")
        out.append(f"  {'error':<24}{row.worst['err']} {row.worst['unit']} "
                   f"(tolerance {row.worst['tolerance']:.3g}: {row.worst['reason']})")
        if row.worst.get("note"):
            out.append(f"  {'note':<24}{row.worst['note']}")
    if row.detail:
        out.append(f"detail     {row.detail}")
    out.append(f"repro      {row.repro}")
    return "\n".join(out)


def write_json(rows: Sequence[Row], path: Path) -> None:
    path.write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n", encoding="utf-8")


def junit_xml(rows: Sequence[Row]) -> str:
    """JUnit XML: one testsuite per device, one testcase per row; a failure carries the detail,
    the worst element and the repro command, a skip its reason."""
    root = ET.Element("testsuites", name="conformance", tests=str(len(rows)),
                      failures=str(sum(r.status == FAIL for r in rows)),
                      skipped=str(sum(r.status == SKIP for r in rows)),
                      time=f"{sum(r.seconds for r in rows):.3f}")
    for device in dict.fromkeys(r.device for r in rows):
        mine = [r for r in rows if r.device == device]
        suite = ET.SubElement(root, "testsuite", name=f"conformance [{device}]", tests=str(len(mine)),
                              failures=str(sum(r.status == FAIL for r in mine)), errors="0",
                              skipped=str(sum(r.status == SKIP for r in mine)),
                              time=f"{sum(r.seconds for r in mine):.3f}")
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{r.module}",
                                 name=f"{r.property} [{device}]",
                                 time=f"{r.seconds:.3f}")
            props = ET.SubElement(case, "properties")
            for name, value in (("id", r.id), ("short_id", r.short_id), ("kind", r.kind), ("against", r.against),
                                ("max_err", _fmt(r.max_err, r.unit)), ("tolerance", _fmt(r.tolerance, r.unit))):
                ET.SubElement(props, "property", name=name, value=value)
            if r.status == FAIL:
                failure = ET.SubElement(case, "failure", message=r.detail.splitlines()[0] if r.detail else "FAIL",
                                        type="ConformanceFailure")
                body = [r.detail]
                if r.worst is not None:
                    body.append("worst element: " + json.dumps(r.worst))
                body.append(f"repro: {r.repro}")
                failure.text = "\n".join(body)
            elif r.status == SKIP:
                ET.SubElement(case, "skipped", message=r.detail)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(rows: Sequence[Row], path: Path) -> None:
    path.write_text(junit_xml(rows), encoding="utf-8")


class Progress:
    """`[ 37/220] cpu CrossNet/forward` on `stream` (stderr): rewritten in place on a terminal,
    one line per record otherwise (a CI log keeps every line)."""

    def __init__(self, stream: Optional[TextIO] = None, label: str = "") -> None:
        self.stream = sys.stderr if stream is None else stream
        self.label = label
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    def __call__(self, i: int, n: int, record: Record) -> None:
        digits = len(str(n))
        text = f"[{i + 1:>{digits}}/{n}] {self.label} {record.id}".replace("  ", " ")
        if self.tty:
            pad = max(self._width - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Clear the terminal line, so that the table starts on a clean screen."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0


def progress_wanted(flag: Optional[bool], stream: Optional[TextIO] = None) -> bool:
    """--progress / --no-progress, or by default only when `stream` (stderr) is a terminal."""
    if flag is not None:
        return flag
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())

