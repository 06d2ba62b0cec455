"""The known-discrepancy ledger: where the documentation page, TorchRec 1.8 and recspec differ.

`discrepancies.json` holds one entry per discrepancy (semantics.md section 16 numbering) with
the page's claim, TorchRec's behaviour, recspec's behaviour, the reason for recspec's choice
and the record (`Module/property`) that demonstrates it. The runner reads it: a discrepancy
record passes while its entry's expectation holds, so an expected discrepancy that stops
reproducing fails loudly instead of going stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, Optional

LEDGER_PATH = Path(__file__).resolve().parent / "discrepancies.json"

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Entry:
    id: str
    item: str
    page: str  # what the documentation page says
    torchrec: str  # what TorchRec 1.8 does
    recspec: str  # what refimpl and accel do
    reason: str  # why recspec does that
    property: str  # the demonstrating record, "Module/property"
    expected: bool = True  # the discrepancy reproduces (False: marked resolved)


_TEXT_FIELDS = ("id", "item", "page", "torchrec", "recspec", "reason", "property")


def parse(data: object) -> Dict[str, Entry]:
    """Entries by id, validated: every text field non-empty, ids unique."""
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"discrepancy ledger: schema_version expected {SCHEMA_VERSION}, got {got!r}")
    entries: Dict[str, Entry] = {}
    known = {f.name for f in fields(Entry)}
    for i, raw in enumerate(data.get("entries", [])):
        if not isinstance(raw, dict):
            raise ValueError(f"discrepancy ledger: entries[{i}] expected an object, got {type(raw).__name__}")
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"discrepancy ledger: entries[{i}] has unknown fields {sorted(unknown)}")
        for name in _TEXT_FIELDS:
            value = raw.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"discrepancy ledger: entries[{i}] ({raw.get('id', '?')}) field '{name}' "
                    f"expected a non-empty string, got {value!r}"
                )
        expected = raw.get("expected", True)
        if not isinstance(expected, bool):
            raise ValueError(f"discrepancy ledger: {raw['id']} 'expected' must be true or false, got {expected!r}")
        if raw["id"] in entries:
            raise ValueError(f"discrepancy ledger: id {raw['id']} appears twice")
        entries[raw["id"]] = Entry(**raw)
    return entries


def load(path: Optional[Path] = None) -> Dict[str, Entry]:
    with open(path or LEDGER_PATH, encoding="utf-8") as f:
        return parse(json.load(f))
