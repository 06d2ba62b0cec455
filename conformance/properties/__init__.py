"""The registered properties, one file per module family.

`RECORDS` is every record the runner knows; `GOLDEN` the constructions the golden generator
writes (one file each, named after the build's label).
"""

from __future__ import annotations

from typing import List

from conformance.properties import dense, embeddings, mc, page_discrepancies
from conformance.records import Build, Record

RECORDS: List[Record] = list(dense.RECORDS) + list(embeddings.RECORDS) + list(mc.RECORDS)
RECORDS += page_discrepancies.RECORDS
GOLDEN: List[Build] = list(dense.GOLDEN) + list(embeddings.GOLDEN)


def modules() -> List[str]:
    """The module names that have records, in registration order."""
    return list(dict.fromkeys(r.module for r in RECORDS))
