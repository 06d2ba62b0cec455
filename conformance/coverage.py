"""Coverage you can see: every public name under the mirror rule against the records that check it.

The public items are the names `from refimpl import X` and `from accel import X` resolve (the two
packages' `_EXPORTS` maps). For each item the matrix counts, per property kind, the records that
run on each (package, device) cell:
    refimpl/cpu     records with a refimpl side (refimpl runs on the CPU only)
    accel/cpu       records with an accel side
    accel/cuda      the same records on a CUDA pass (real device or Numba's simulator)
    torchrec/cpu    records that `--against torchrec` runs on TorchRec's own module (not skipped)
and lists the item's golden files. An item with neither a record nor a golden file is a hole,
unless `EXEMPTIONS` says why it cannot have one; an exemption for an item that has records, or
that is no longer public, is stale. Both are failures (tests/conformance/test_coverage.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from conformance.records import KINDS, Record

CELLS: Tuple[Tuple[str, str], ...] = (("refimpl", "cpu"), ("accel", "cpu"), ("accel", "cuda"), ("torchrec", "cpu"))


@dataclass(frozen=True)
class Exemption:
    """Why an item has no record of its own, and the items whose records exercise it (`via`)."""

    reason: str
    via: Tuple[str, ...] = ()


_CONFIG_VIA_EBC = ("EmbeddingBagCollection", "EmbeddingCollection")

EXEMPTIONS: Dict[str, Exemption] = {
    "JaggedTensor": Exemption(
        "sparse container: EmbeddingCollection and the MC collections return it, and their records compare its "
        "values, lengths and offsets; its own API is unit-tested (tests/*/test_sparse.py)",
        ("EmbeddingCollection", "ManagedCollisionCollection")),
    "KeyedJaggedTensor": Exemption(
        "sparse container: the input of every embedding and managed-collision record, built in each package; its "
        "validation and accessors are unit-tested (tests/*/test_sparse.py, tests/*/test_validate.py)",
        ("EmbeddingBagCollection", "EmbeddingCollection", "MCHManagedCollisionModule")),
    "KeyedTensor": Exemption(
        "sparse container: EmbeddingBagCollection's output, compared key by key in its records; its own API is "
        "unit-tested (tests/*/test_sparse.py)", ("EmbeddingBagCollection",)),
    "Linear": Exemption(
        "refimpl's counterpart of torch.nn.Linear, not a TorchRec name (the torch packages use torch.nn.Linear "
        "itself); it is DeepFM's dense_module in every DeepFM record", ("DeepFM",)),
    "DataType": Exemption("enum without behaviour; table configs carry it, and EmbeddingBagCollection/D31_bf16_storage "
                          "shows what its BF16 member does to storage",
                          _CONFIG_VIA_EBC),
    "PoolingType": Exemption("enum without behaviour; SUM and MEAN reach the numbers through the "
                             "EmbeddingBagCollection builds that use them", ("EmbeddingBagCollection",)),
    "ShardingType": Exemption("enum naming sharding plans for the TorchRec interop (tests/distributed); no "
                              "module of recspec computes with it"),
    "QuantConfig": Exemption("config dataclass for quantised tables; recspec's modules carry it and never compute "
                             "with it (tests/*/test_embedding_configs.py check its fields)"),
    "BaseEmbeddingConfig": Exemption("base dataclass of the table configs: its fields and defaults are those of "
                                     "EmbeddingBagConfig and EmbeddingConfig, built in every embedding record",
                                     _CONFIG_VIA_EBC),
    "EmbeddingTableConfig": Exemption("TorchRec's intermediate table-config base; its fields are those of the "
                                      "configs built in every embedding record", _CONFIG_VIA_EBC),
    "EmbeddingConfig": Exemption("config dataclass: every EmbeddingCollection record builds its tables from it in "
                                 "each package", ("EmbeddingCollection",)),
    "BaseFeatureProcessor": Exemption("abstract base (forward is abstract); its behaviour is "
                                      "PositionWeightedModule's", ("PositionWeightedModule",)),
    "BaseGroupedFeatureProcessor": Exemption("abstract base (forward is abstract); its behaviour is "
                                             "PositionWeightedProcessor's", ("PositionWeightedProcessor",)),
    "BaseManagedCollisionEmbeddingCollection": Exemption(
        "abstract base of the two MC embedding collections, whose records run its forward",
        ("ManagedCollisionEmbeddingBagCollection", "ManagedCollisionEmbeddingCollection")),
    "MCHEvictionPolicy": Exemption("abstract base of the eviction policies, each of which has records",
                                   ("LFU_EvictionPolicy", "LRU_EvictionPolicy", "DistanceLFU_EvictionPolicy")),
    "MCHEvictionPolicyMetadataInfo": Exemption(
        "named tuple describing a policy's metadata buffers; the buffers themselves are compared through the "
        "MCH's state_dict after every step of every stream", ("MCHManagedCollisionModule",)),
    "LazyModuleExtensionMixin": Exemption(
        "accel only (CONTRACT: lazy_extension has no refimpl counterpart): torch's lazy-initialisation plumbing with "
        "no numbers for refimpl to specify; unit-tested in tests/accel/test_lazy_extension.py"),
}


@dataclass
class Item:
    """One public name: the packages exporting it, its records' cells per kind, its golden files."""

    name: str
    packages: Tuple[str, ...]
    source: str  # the mirror-rule file ("crossnet", "sparse"), from the first exporting package
    cells: Dict[str, Dict[str, int]] = field(default_factory=dict)  # kind -> "package/device" -> records
    golden_files: List[str] = field(default_factory=list)
    exemption: Optional[Exemption] = None

    @property
    def records(self) -> int:
        return sum(max(c.values(), default=0) for c in self.cells.values())

    @property
    def covered(self) -> bool:
        return bool(self.cells) or bool(self.golden_files)

    @property
    def status(self) -> str:
        """"covered", "exempt", "HOLE" (no record, no exemption) or "STALE" (exempt yet covered)."""
        if self.covered:
            return "STALE" if self.exemption is not None else "covered"
        return "exempt" if self.exemption is not None else "HOLE"

    def as_dict(self) -> Dict[str, object]:
        return {"name": self.name, "packages": list(self.packages), "source": self.source, "status": self.status,
                "cells": self.cells, "golden_files": self.golden_files,
                "exemption": None if self.exemption is None else {"reason": self.exemption.reason,
                                                                  "via": list(self.exemption.via)}}


def public_items() -> Dict[str, Tuple[str, ...]]:
    """Every name `from refimpl import X` or `from accel import X` resolves, with its packages."""
    import accel
    import refimpl

    out: Dict[str, Tuple[str, ...]] = {}
    for package, exports in (("refimpl", refimpl._EXPORTS), ("accel", accel._EXPORTS)):
        for name in exports:
            out[name] = out.get(name, ()) + (package,)
    return out


def _source(name: str) -> str:
    import accel
    import refimpl

    path = refimpl._EXPORTS.get(name) or accel._EXPORTS[name]
    return path.rsplit(".", 1)[-1]


def _torchrec_runs(record: Record) -> bool:
    from conformance.runner import skip_reason

    class _Against:  # skip_reason reads only `against`; a full Context would load the ledger
        against = "torchrec"

    return "accel" in record.sides and skip_reason(record, _Against()) is None  # type: ignore[arg-type]


def cells_of(record: Record) -> List[str]:
    """The "package/device" cells a record runs in (see the module docstring)."""
    out = []
    if "refimpl" in record.sides:
        out.append("refimpl/cpu")
    if "accel" in record.sides:
        out += ["accel/cpu", "accel/cuda"]
        if _torchrec_runs(record):
            out.append("torchrec/cpu")
    return out


def matrix(records: Optional[Sequence[Record]] = None, golden: Optional[Sequence[object]] = None) -> List[Item]:
    """Every public item (in export order) with its cells, golden files and exemption."""
    if records is None or golden is None:
        from conformance.properties import GOLDEN, RECORDS

        records = RECORDS if records is None else records
        golden = GOLDEN if golden is None else golden
    items = {name: Item(name, packages, _source(name), exemption=EXEMPTIONS.get(name))
             for name, packages in public_items().items()}
    for r in records:
        item = items.get(r.module)
        if item is None:
            continue
        kind = item.cells.setdefault(r.kind, {})
        for cell in cells_of(r):
            kind[cell] = kind.get(cell, 0) + 1
    for build in golden:
        item = items.get(getattr(build, "module", ""))
        if item is not None:
            item.golden_files.append(f"{getattr(build, 'name')}.npz")
    for item in items.values():
        item.cells = {k: item.cells[k] for k in KINDS if k in item.cells}
    return list(items.values())


def outside(records: Optional[Sequence[Record]] = None) -> Dict[str, int]:
    """Record modules that are not public names (a module-level helper such as
    mc_embedding_modules.evict): counted, listed by --list, never a failure."""
    if records is None:
        from conformance.properties import RECORDS

        records = RECORDS
    public = public_items()
    out: Dict[str, int] = {}
    for r in records:
        if r.module not in public:
            out[r.module] = out.get(r.module, 0) + 1
    return out


def holes(items: Sequence[Item]) -> List[str]:
    return [i.name for i in items if i.status == "HOLE"]


def stale_exemptions(items: Sequence[Item]) -> List[str]:
    """Exemptions that no longer hold: the item now has records, is no longer public, or names
    in `via` an item that is not public or has no records itself."""
    by_name = {i.name: i for i in items}
    out = []
    for name, exemption in EXEMPTIONS.items():
        item = by_name.get(name)
        if item is None:
            out.append(f"{name}: exempt, but no longer a public name of refimpl or accel")
        elif item.covered:
            out.append(f"{name}: exempt, but it has records now ({item.records}) or golden files")
        for via in exemption.via:
            if via not in by_name or not by_name[via].covered:
                out.append(f"{name}: exempt via {via}, which has no records")
    return out


def format_matrix(items: Sequence[Item], others: Optional[Dict[str, int]] = None) -> str:
    """Text: one line per (item, kind) with record counts per package/device, the exempt items
    with their reasons, the records of non-public names (`others`, see `outside`), then the holes
    and stale exemptions (if any) and a summary."""
    heads = [f"{p}/{d}" for p, d in CELLS]
    rows: List[Tuple[str, ...]] = []
    for item in items:
        if not item.covered:
            continue
        for kind, counts in item.cells.items():
            rows.append((item.name, kind, *(str(counts.get(h, "-")) for h in heads)))
        if item.golden_files:
            rows.append((item.name, "golden files", ", ".join(item.golden_files)))
    header = ("item", "kind", *heads)
    widths = [max([len(header[i])] + [len(r[i]) for r in rows if len(r) == len(header) or i < 2])
              for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    previous = ""
    for r in rows:
        name = r[0] if r[0] != previous else ""
        previous = r[0]
        if len(r) == 3:  # golden files: one free-text cell across the package columns
            out.append("  ".join([name.ljust(widths[0]), r[1].ljust(widths[1]), r[2]]).rstrip())
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip((name,) + r[1:], widths)).rstrip())
    exempt = [i for i in items if i.status == "exempt"]
    if exempt:
        out.append("")
        out.append("exempt (no record of their own):")
        for i in exempt:
            via = f" [via {', '.join(i.exemption.via)}]" if i.exemption and i.exemption.via else ""
            out.append(f"  {i.name}: {i.exemption.reason if i.exemption else ''}{via}")
    if others:
        out.append("")
        out.append("records of names outside refimpl's and accel's exports: "
                   + ", ".join(f"{name} ({n})" for name, n in others.items()))
    problems = [f"HOLE {name}: no record and no golden file; add a record or a reasoned exemption in "
                f"conformance/coverage.py" for name in holes(items)]
    problems += [f"STALE {text}" for text in stale_exemptions(items)]
    if problems:
        out.append("")
        out += problems
    covered = sum(i.covered for i in items)
    out.append("")
    out.append(f"{len(items)} public items: {covered} with records, {len(exempt)} exempt, "
               f"{len(holes(items))} holes, {len(stale_exemptions(items))} stale exemptions")
    return "\n".join(out)


def to_json(items: Sequence[Item]) -> str:
    return json.dumps({"cells": [f"{p}/{d}" for p, d in CELLS], "items": [i.as_dict() for i in items],
                       "holes": holes(items), "stale_exemptions": stale_exemptions(items)}, indent=2) + "\n"
