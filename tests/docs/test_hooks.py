"""docs/hooks.py: the refimpl source blocks and the benchmark plots insertion."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs hooks need mkdocs (pip install -e '.[test]')")
from mkdocs.exceptions import PluginError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _load_hooks():
    spec = importlib.util.spec_from_file_location("recspec_docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A repository holding pkg/mod.py with a decorated function and a class with a method."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        "import functools\n"
        "\n"
        "@functools.lru_cache\n"
        "def f(x):\n"
        '    """y = x"""\n'
        "    return x\n"
        "\n"
        "class C:\n"
        "    def m(self):\n"
        "        return 1\n"
    )
    monkeypatch.setattr(hooks, "REPO", tmp_path)
    return tmp_path


def test_source_of_matches_inspect_for_a_refimpl_function():
    from refimpl.modules import crossnet

    code, rel, first, last = hooks.source_of("refimpl.modules.crossnet.cross_layer")
    assert code + "\n" == inspect.getsource(crossnet.cross_layer)
    assert rel == "refimpl/modules/crossnet.py"
    assert (first, last - first + 1) == (inspect.getsourcelines(crossnet.cross_layer)[1], code.count("\n") + 1)


def test_source_of_a_method_keeps_its_indentation():
    from refimpl.modules.embedding_configs import BaseEmbeddingConfig

    code, _, _, _ = hooks.source_of("refimpl.modules.embedding_configs.BaseEmbeddingConfig.get_weight_init_max")
    assert code + "\n" == inspect.getsource(BaseEmbeddingConfig.get_weight_init_max)


def test_source_of_includes_decorators_and_finds_methods(fake_repo):
    code, rel, first, last = hooks.source_of("pkg.mod.f")
    assert code.splitlines() == ["@functools.lru_cache", "def f(x):", '    """y = x"""', "    return x"]
    assert (rel, first, last) == ("pkg/mod.py", 3, 6)
    code, _, first, last = hooks.source_of("pkg.mod.C.m")
    assert code.splitlines() == ["    def m(self):", "        return 1"]
    assert (first, last) == (9, 10)


def test_source_of_a_missing_name_stops_the_build(fake_repo):
    with pytest.raises(PluginError, match=r"'g' is not defined in pkg/mod.py \(from 'pkg.mod.g'\)"):
        hooks.source_of("pkg.mod.g")
    with pytest.raises(PluginError, match=r"'f.x' is not defined"):
        hooks.source_of("pkg.mod.f.x")  # a function's locals are not definitions a page can show


def test_source_of_outside_any_module_stops_the_build(fake_repo):
    with pytest.raises(PluginError, match=r"expected a dotted name inside a module of this repository, got 'nope.f'"):
        hooks.source_of("nope.f")


def test_expand_sources_replaces_the_directive_with_a_details_block(fake_repo):
    page = "Before\n\n<!-- refimpl: pkg.mod.f pkg.mod.C.m -->\n\nAfter <!-- other comment -->\n"
    out = hooks.expand_sources(page, "page.md")
    assert out.startswith("Before\n\n")
    assert out.endswith("\nAfter <!-- other comment -->\n")
    assert '???+ source "refimpl source: f (pkg/mod.py, lines 3-6)"' in out
    assert '???+ source "refimpl source: m (pkg/mod.py, lines 9-10)"' in out
    # The code sits inside the block: indented four spaces under a python fence.
    assert "    ```python\n    @functools.lru_cache\n    def f(x):\n" in out
    assert "refimpl:" not in out.replace("refimpl source", "")


def test_expand_sources_names_the_page_of_a_stale_name(fake_repo):
    with pytest.raises(PluginError, match=r"crossnet.md: refimpl source: 'gone' is not defined"):
        hooks.expand_sources("<!-- refimpl: pkg.mod.gone -->\n", "crossnet.md")


def test_insert_plots_at_the_marker_or_at_the_end(tmp_path, monkeypatch):
    snippet = tmp_path / "plots.md"
    snippet.write_text("## Plots\n\n![p](img/p.png)\n")
    monkeypatch.setattr(hooks, "PLOTS_SNIPPET", snippet)
    marked = hooks.insert_plots("# B\n\n<!-- benchmark-plots -->\n\n## GPU\n")
    assert marked == "# B\n\n## Plots\n\n![p](img/p.png)\n\n\n## GPU\n"
    assert hooks.insert_plots("# B\n\ntext\n") == "# B\n\ntext\n\n## Plots\n\n![p](img/p.png)\n"


def test_insert_plots_without_the_snippet_stops_the_build(tmp_path, monkeypatch):
    monkeypatch.setattr(hooks, "PLOTS_SNIPPET", tmp_path / "missing.md")
    monkeypatch.setattr(hooks, "REPO", tmp_path)
    with pytest.raises(PluginError, match=r"benchmarks.md: expected the plots snippet missing.md"):
        hooks.insert_plots("# B\n")
