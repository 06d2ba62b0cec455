"""MkDocs hooks: refimpl's source beside its formula, and the benchmark plots on the benchmarks page.

A line `<!-- refimpl: refimpl.modules.crossnet.cross_layer refimpl.modules.crossnet.cross_layer_backward -->`
in a page becomes a collapsible block holding the source of those functions (or classes, or
`Class.method`), cut from the repository's files at build time, so the page always shows the code
that runs. The names are found with `ast`, without importing anything; a name that no longer exists
stops the build with an error naming the page and the name.

The benchmarks page gets the snippet `docs/reference/benchmark_plots.md` (written by
`python -m benchmarks.plots`) where it has the line `<!-- benchmark-plots -->`, or at its end
when it has none.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import List, Optional, Tuple

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRECTIVE = re.compile(r"^<!--\s*refimpl:\s*(?P<names>[\w.\s]+?)\s*-->\s*$", re.MULTILINE)
PLOTS_DIRECTIVE = "<!-- benchmark-plots -->"
PLOTS_SNIPPET = REPO / "docs" / "reference" / "benchmark_plots.md"
PLOTS_PAGE = "benchmarks.md"


def _module_file(dotted: str) -> Tuple[Path, List[str]]:
    """The longest importable prefix of `dotted` as a file under the repository, and the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        path = REPO.joinpath(*parts[:cut]).with_suffix(".py")
        if path.is_file():
            return path, parts[cut:]
    raise PluginError(f"refimpl source: expected a dotted name inside a module of this repository, got {dotted!r}")


def _find(body: List[ast.stmt], qualname: List[str]) -> Optional[ast.AST]:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == qualname[0]:
            if len(qualname) == 1:
                return node
            return _find(node.body, qualname[1:]) if isinstance(node, ast.ClassDef) else None
    return None


def source_of(dotted: str) -> Tuple[str, str, int, int]:
    """(source text, path relative to the repository, first line, last line) of a def or class."""
    path, qualname = _module_file(dotted)
    text = path.read_text(encoding="utf-8")
    node = _find(ast.parse(text).body, qualname)
    if node is None:
        raise PluginError(f"refimpl source: {'.'.join(qualname)!r} is not defined in {path.relative_to(REPO)} "
                          f"(from {dotted!r})")
    # Decorators belong to the definition a reader sees.
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines = text.splitlines()[first - 1:node.end_lineno]
    return "\n".join(lines), str(path.relative_to(REPO)), first, node.end_lineno


def source_block(dotted: str) -> str:
    """A collapsible block (pymdownx.details) with the definition's source as Python."""
    code, rel, first, last = source_of(dotted)
    indented = "\n".join(("    " + line) if line else "" for line in code.splitlines())
    title = f"refimpl source: {dotted.rsplit('.', 1)[-1]} ({rel}, lines {first}-{last})"
    return f'???+ source "{title}"\n    ```python\n{indented}\n    ```\n'


def expand_sources(markdown: str, page_name: str) -> str:
    def replace(match: re.Match) -> str:
        names = match.group("names").split()
        try:
            return "\n".join(source_block(name) for name in names)
        except PluginError as exc:
            raise PluginError(f"{page_name}: {exc}") from None

    return SOURCE_DIRECTIVE.sub(replace, markdown)


def insert_plots(markdown: str) -> str:
    if not PLOTS_SNIPPET.is_file():
        raise PluginError(f"{PLOTS_PAGE}: expected the plots snippet {PLOTS_SNIPPET.relative_to(REPO)} "
                          "(python -m benchmarks.plots writes it), found none")
    snippet = PLOTS_SNIPPET.read_text(encoding="utf-8").strip() + "\n"
    if PLOTS_DIRECTIVE in markdown:
        return markdown.replace(PLOTS_DIRECTIVE, snippet)
    return markdown.rstrip("\n") + "\n\n" + snippet


def on_page_markdown(markdown: str, page, config, files) -> str:
    name = page.file.src_uri
    markdown = expand_sources(markdown, name)
    if name == PLOTS_PAGE:
        markdown = insert_plots(markdown)
    return markdown
