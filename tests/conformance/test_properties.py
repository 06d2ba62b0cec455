"""conformance.properties: the registry's ids and module list."""

from conformance.properties import GOLDEN, RECORDS, modules


def test_record_ids_are_unique():
    ids = [r.id for r in RECORDS]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_modules_lists_each_module_once_in_registration_order():
    names = modules()
    assert names[0] == RECORDS[0].module
    assert len(names) == len(set(names)) == len({r.module for r in RECORDS})


def test_golden_files_have_unique_names():
    names = [b.name for b in GOLDEN]
    assert len(names) == len(set(names))
