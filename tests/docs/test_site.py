"""The docs site builds with `mkdocs build --strict`, every page is in the nav, no link is broken,
maths reaches MathJax, and the formula pages carry refimpl's source."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

pytest.importorskip("mkdocs", reason="the docs site needs mkdocs (pip install -e '.[test]' installs it)")
pytest.importorskip("pymdownx", reason="the docs site needs pymdown-extensions (pip install -e '.[test]')")
import yaml  # noqa: E402  (a dependency of mkdocs)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
FORMULA_PAGES = ("sparse", "activation", "crossnet", "deepfm", "mlp", "embeddings", "managed_collision", "utils")
LINK = re.compile(r'(?:href|src)="([^"]*)"')
CODE = re.compile(r"<pre\b.*?</pre>|<code\b.*?</code>", re.DOTALL)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out, done.stderr


def _nav_files(entries):
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from _nav_files(value)
        else:
            yield value


def test_build_is_clean(site):
    _, log = site
    assert "WARNING" not in log and "ERROR" not in log, log


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = list(_nav_files(config["nav"]))
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md"))
    assert sorted(set(nav)) == pages
    assert len(nav) == len(set(nav)), "a page is listed twice"


def test_no_link_is_broken(site):
    out, _ = site
    broken = []
    for html in out.rglob("*.html"):
        for target in LINK.findall(html.read_text(encoding="utf-8")):
            if re.match(r"^([a-z]+:|//|#|$)", target):
                continue  # external, protocol-relative or same-page
            local = unquote(target.split("#")[0].split("?")[0])
            # 404.html links from the site root: it is served at any depth.
            path = (out / local.lstrip("/") if local.startswith("/") else html.parent / local).resolve()
            if path.is_dir():
                path = path / "index.html"
            if not path.is_file():
                broken.append(f"{html.relative_to(out)} -> {target}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", ["index"] + list(FORMULA_PAGES) + ["scaling_out"])
def test_maths_is_handed_to_mathjax(site, page):
    out, _ = site
    html = (out / ("index.html" if page == "index" else f"{page}/index.html")).read_text(encoding="utf-8")
    assert 'class="arithmatex"' in html
    prose = CODE.sub("", html)
    # Display maths that Markdown did not take as a block would reach the reader as raw $$ ... $$.
    assert "$$" not in prose


@pytest.mark.parametrize("page", FORMULA_PAGES)
def test_maths_is_well_formed_for_mathjax(site, page):
    out, _ = site
    html = (out / page / "index.html").read_text(encoding="utf-8")
    formulas = re.findall(r'class="arithmatex">(.*?)</(?:span|div)>', html, re.DOTALL)
    assert formulas
    for tex in formulas:
        depth = 0
        for ch in re.sub(r"\\[{}]", "", tex):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, tex
        assert depth == 0, tex
        # MathJax sets \text{...} verbatim (no textmacros package): a macro inside would show as typed.
        assert not re.search(r"\\text\{[^}]*\\", tex), tex


@pytest.mark.parametrize("page", FORMULA_PAGES)
def test_formula_pages_show_refimpl_source(site, page):
    out, _ = site
    html = (out / page / "index.html").read_text(encoding="utf-8")
    blocks = re.findall(r'<details class="source".*?<code class="language-python">(.*?)</code>', html, re.DOTALL)
    assert blocks, f"{page}: no refimpl source block"
    assert all(re.match(r"\s*(@|def |class )", b) for b in blocks), page


def test_benchmarks_page_shows_the_plots(site):
    out, _ = site
    html = (out / "benchmarks" / "index.html").read_text(encoding="utf-8")
    images = re.findall(r'<img alt="[^"]*" src="\.\./img/([^"]+\.png)"', html)
    assert images and all((out / "img" / name).is_file() for name in images)


def test_ledger_and_report_pages_are_built(site):
    out, _ = site
    assert "D3" in (out / "discrepancies" / "index.html").read_text(encoding="utf-8")
    report = (out / "conformance_report" / "index.html").read_text(encoding="utf-8")
    assert "Every property" in report and "CrossNet" in report
