"""The coverage meta test: every public name under the mirror rule has a record, a golden file or a
reasoned, current exemption; and the matrix counts what the runner actually runs."""

import json

import pytest

from conformance import coverage
from conformance.properties import GOLDEN, RECORDS
from conformance.records import Build, Record
from conformance.runner import Context, select, skip_reason


@pytest.fixture(scope="module")
def items():
    return coverage.matrix()


def test_every_public_item_has_a_record_a_golden_file_or_an_exemption(items):
    # Reads the registry as it is now: a newly exported name (a managed-collision class, say)
    # fails here until it has a record, rather than being exempted by default.
    assert coverage.holes(items) == [], (
        "public names with no record and no golden file (add a record in conformance/properties, or a reasoned "
        "exemption in conformance/coverage.py if it truly cannot have one)")


def test_no_exemption_is_stale(items):
    assert coverage.stale_exemptions(items) == []


def test_items_are_exactly_the_two_packages_exports(items):
    import accel
    import refimpl

    assert {i.name for i in items} == set(refimpl._EXPORTS) | set(accel._EXPORTS)
    by_name = {i.name: i for i in items}
    assert by_name["Linear"].packages == ("refimpl",)
    assert by_name["LazyModuleExtensionMixin"].packages == ("accel",)
    assert by_name["CrossNet"].packages == ("refimpl", "accel") and by_name["CrossNet"].source == "crossnet"


def test_every_exemption_has_a_reason():
    for name, exemption in coverage.EXEMPTIONS.items():
        assert len(exemption.reason) > 30, name


def test_managed_collision_names_are_not_exempted_for_lack_of_records():
    # MC modules and functions must be covered by records; only their abstract base, the policies'
    # metadata tuple and the MC embedding collections' base may be exempt.
    import refimpl

    mc = {n for n, path in refimpl._EXPORTS.items() if ".mc_" in path}
    assert mc & set(coverage.EXEMPTIONS) <= {"MCHEvictionPolicy", "MCHEvictionPolicyMetadataInfo",
                                              "BaseManagedCollisionEmbeddingCollection"}


def test_cells_count_what_the_runner_runs(items):
    crossnet = {i.name: i for i in items}["CrossNet"]
    records = select(RECORDS, "CrossNet")
    torchrec = Context(against="torchrec")
    for kind, cells in crossnet.cells.items():
        mine = [r for r in records if r.kind == kind]
        assert cells.get("refimpl/cpu", 0) == sum("refimpl" in r.sides for r in mine)
        assert cells.get("accel/cpu", 0) == sum("accel" in r.sides for r in mine)
        assert cells.get("accel/cuda", 0) == len(select(mine, device="cuda"))
        assert cells.get("torchrec/cpu", 0) == sum("accel" in r.sides and skip_reason(r, torchrec) is None
                                                   for r in mine)
    # backward_fd checks refimpl alone; forward runs on accel too, but not on TorchRec (float64).
    assert crossnet.cells["backward_fd"] == {"refimpl/cpu": 1}
    assert "torchrec/cpu" not in crossnet.cells["forward"] and crossnet.cells["forward_f32"]["torchrec/cpu"] == 1
    assert crossnet.golden_files == ["CrossNet.npz"]


def test_a_name_without_records_is_a_hole_and_an_exemption_with_records_is_stale():
    check = RECORDS[0].check
    only = Record("CrossNet", "p", "invariant", "none", (), check, "a test record")
    items = coverage.matrix([only], [])
    assert "VectorCrossNet" in coverage.holes(items) and "CrossNet" not in coverage.holes(items)
    exempt_with_records = Record("QuantConfig", "p", "invariant", "none", (), check, "a test record")
    stale = coverage.stale_exemptions(coverage.matrix([only, exempt_with_records], []))
    assert any(s.startswith("QuantConfig: exempt, but it has records now") for s in stale)
    # Exemptions whose `via` items lost their records are stale as well.
    assert any(s.startswith("Linear: exempt via DeepFM, which has no records") for s in stale)


def test_a_golden_file_alone_covers_an_item():
    items = coverage.matrix([], [Build("VectorCrossNet", (4, 2), label="VectorCrossNet")])
    assert "VectorCrossNet" not in coverage.holes(items)
    assert {i.name: i for i in items}["VectorCrossNet"].golden_files == ["VectorCrossNet.npz"]


def test_an_exemption_for_a_name_that_is_gone_is_stale(monkeypatch):
    monkeypatch.setitem(coverage.EXEMPTIONS, "Transformer", coverage.Exemption("no longer exported, for the test"))
    assert "Transformer: exempt, but no longer a public name of refimpl or accel" in coverage.stale_exemptions(
        coverage.matrix())


def test_matrix_text_and_json(items):
    text = coverage.format_matrix(items)
    lines = text.splitlines()
    assert lines[0].split() == ["item", "kind", "refimpl/cpu", "accel/cpu", "accel/cuda", "torchrec/cpu"]
    vector = next(line for line in lines if line.startswith("VectorCrossNet "))
    assert vector.split()[1] in ("forward", "forward_f32") and "golden files  VectorCrossNet.npz" in text
    assert lines[-1] == (f"{len(items)} public items: {sum(i.covered for i in items)} with records, "
                         f"{len(coverage.EXEMPTIONS)} exempt, 0 holes, 0 stale exemptions")
    data = json.loads(coverage.to_json(items))
    assert data["cells"] == ["refimpl/cpu", "accel/cpu", "accel/cuda", "torchrec/cpu"]
    entry = next(i for i in data["items"] if i["name"] == "PoolingType")
    assert entry["status"] == "exempt" and entry["exemption"]["via"] == ["EmbeddingBagCollection"]


def test_golden_builds_are_counted_per_module():
    counted = {i.name: len(i.golden_files) for i in coverage.matrix()}
    for build in GOLDEN:
        assert counted[build.module] >= 1


def test_records_of_non_public_names_are_listed_not_counted():
    check = RECORDS[0].check
    helper = Record("evict_helper", "p", "invariant", "none", (), check, "a test record")
    assert coverage.outside([helper, RECORDS[0]]) == {"evict_helper": 1}
    assert "evict_helper" not in {i.name for i in coverage.matrix([helper], [])}
    text = coverage.format_matrix(coverage.matrix([helper], []), {"evict_helper": 1})
    assert "records of names outside refimpl's and accel's exports: evict_helper (1)" in text
