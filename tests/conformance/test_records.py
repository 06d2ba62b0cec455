"""Records and builds: validation, JSON round trip, and coverage of every module in scope."""

import pytest

from conformance import checks, tolerances
from conformance.properties import RECORDS
from conformance.records import KINDS, MAIN_KINDS, Act, Build, Record

# The dense modules of this round (CONTRACT "mirror rule" names), each with every main kind.
IN_SCOPE = ("SwishLayerNorm", "Perceptron", "MLP", "CrossNet", "LowRankCrossNet", "VectorCrossNet",
            "LowRankMixtureCrossNet", "FactorizationMachine", "DeepFM")


def _record(**overrides):
    fields = dict(module="CrossNet", property="p", kind="forward", generator="dense", builds=(),
                  check=checks.check_forward, spec="sem. 3.1")
    fields.update(overrides)
    return Record(**fields)


@pytest.mark.parametrize("module", IN_SCOPE)
@pytest.mark.parametrize("kind", MAIN_KINDS)
def test_every_module_in_scope_has_every_main_kind(module, kind):
    assert any(r.module == module and r.kind == kind for r in RECORDS), f"no {kind} record for {module}"


def test_mixture_cross_net_is_covered_with_one_and_several_experts():
    forwards = {r.property for r in RECORDS if r.module == "LowRankMixtureCrossNet" and r.kind == "forward"}
    assert {"forward[K=1]", "forward[K=3]"} <= forwards


def test_every_record_quotes_its_spec_and_uses_a_known_kind():
    for r in RECORDS:
        assert r.kind in KINDS
        assert len(r.spec) > 10, r.id
        assert r.tolerance is None or r.tolerance.reason, r.id


def test_the_required_discrepancies_have_records():
    ids = {r.discrepancy for r in RECORDS if r.kind == "discrepancy"}
    assert {"D1", "D2", "D3", "D4", "D5", "D8", "D9", "D10", "D11"} <= ids


def test_record_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match=r"CrossNet/p: kind expected one of .* got 'speed'"):
        _record(kind="speed")


def test_record_rejects_an_empty_spec():
    with pytest.raises(ValueError, match=r"spec expected the quoted text"):
        _record(spec="  ")


def test_record_rejects_a_tolerance_override_without_reason():
    with pytest.raises(ValueError, match=r"tolerance override expected a reason"):
        _record(tolerance=tolerances.Tolerance(1e-3, "rel", ""))


def test_record_requires_a_discrepancy_id_exactly_for_discrepancy_records():
    with pytest.raises(ValueError, match=r"discrepancy id expected exactly for kind 'discrepancy'"):
        _record(kind="discrepancy")
    with pytest.raises(ValueError, match=r"discrepancy id expected exactly for kind 'discrepancy'"):
        _record(discrepancy="D3")
    with pytest.raises(ValueError, match=r"discrepancy expected an id like 'D3', got 'd3'"):
        _record(kind="discrepancy", discrepancy="d3")


def test_record_rejects_unknown_sides_and_dtypes():
    with pytest.raises(ValueError, match=r"sides expected a subset of \('refimpl', 'accel'\), got \('torchrec',\)"):
        _record(sides=("torchrec",))
    with pytest.raises(ValueError, match=r"dtypes expected a subset of \('float32', 'float64'\), got \('float16',\)"):
        _record(dtypes=("float16",))


def test_build_description_round_trips_through_json():
    import json

    build = Build("DeepFM", (Build("MLP", (10, (4, 2)), (("activation", "sigmoid"),)),), in_shape=((2, 5),))
    nested = Build("LowRankMixtureCrossNet", (5, 2, 3, 2), (("activation", Act("sigmoid")),))
    for b in (build, nested):
        d = json.loads(json.dumps(b.describe()))
        back = Build.from_description(d)
        assert (back.module, back.args, back.kwargs) == (b.module, b.args, b.kwargs)
    assert nested.describe()["kwargs"] == {"activation": {"activation": "sigmoid"}}


def test_build_from_description_rejects_a_non_constructor():
    with pytest.raises(ValueError, match=r"expected a dict with 'module', got \[1, 2\]"):
        Build.from_description([1, 2])


def test_build_knows_list_inputs():
    assert Build("FactorizationMachine", in_shape=((2, 3), (4,))).takes_list
    assert not Build("CrossNet", (5, 2), in_shape=(5,)).takes_list
    assert Build("CrossNet", label="N=5").name == "N=5" and Build("CrossNet").name == "CrossNet"


def test_short_id_is_the_first_eight_hex_digits_of_the_ids_sha1():
    import hashlib

    from conformance.records import short_id

    expected = hashlib.sha1(b"CrossNet/forward").hexdigest()[:8]
    assert short_id("CrossNet/forward") == expected
    record = _record(property="forward")
    assert record.id == "CrossNet/forward"
    assert record.short_id == expected and len(expected) == 8 and int(expected, 16) >= 0


def test_registered_ids_and_short_ids_are_unique():
    ids = [r.id for r in RECORDS]
    shorts = [r.short_id for r in RECORDS]
    assert len(set(ids)) == len(ids) and len(set(shorts)) == len(shorts)
