"""The documentation site: it builds with warnings as errors, and every command and code
block in it is run by some test, as printed (see ``tests/doc_blocks.py``)."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
from doc_blocks import (
    ROOT,
    UNTESTED,
    Block,
    blocks,
    doc_block,
    find_block,
    page_text,
    pages,
)

TESTS = Path(__file__).resolve().parent


def _taken_blocks() -> tuple[set[Block], list[str]]:
    """The blocks the tests take (``doc_block``/``find_block``/``page_blocks`` calls with
    literal arguments), and the calls that could not be resolved."""
    taken: set[Block] = set()
    problems: list[str] = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name == "doc_blocks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name not in ("doc_block", "find_block", "page_blocks"):
                continue
            where = f"{path.name}:{node.lineno}"
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if not args or any(not isinstance(a, str) for a in args):
                if path.name == "test_docs.py":
                    continue  # this module's own harness calls
                problems.append(f"{where}: {name}() needs string literals")
                continue
            try:
                if name == "page_blocks":
                    taken.update(b for b in blocks(args[0]) if b.runnable)
                else:
                    taken.add(find_block(args[0], args[1]))
            except (LookupError, OSError) as exc:
                problems.append(f"{where}: {exc}")
    return taken, problems


def _checked_pages() -> list[str]:
    return pages()  # README.rst and every page of the site


def test_every_runnable_block_is_run_by_a_test() -> None:
    taken, problems = _taken_blocks()
    assert not problems, "\n".join(problems)
    missing = []
    for page in _checked_pages():
        if UNTESTED in "\n".join(page_text(page).splitlines()[:12]):
            continue
        missing += [f"{b.page}:{b.line} ({b.language})" for b in blocks(page)
                    if b.runnable and b not in taken]
    assert not missing, ("runnable blocks no test runs (take them with doc_block(page, "
                         "after) in a test, or say so at the page's top):\n"
                         + "\n".join(missing))


def test_the_harness_finds_blocks_of_every_kind() -> None:
    """doc_block finds code blocks, ``::`` literal blocks after a paragraph, and skips
    directives that merely end in ``::``."""
    found = {b.language for p in pages() for b in blocks(p)}
    assert {"python", "sh"} <= found, found
    assert "" in found  # "::" literal blocks (output) are found, and not runnable


@pytest.mark.xdist_group("docs-build")
def test_the_docs_build_with_warnings_as_errors(built_docs: Path) -> None:
    """The build command docs/development.rst prints (``-W``: warnings are errors) builds
    the site (the ``built_docs`` fixture runs it); its install line names the docs extra."""
    install, build = doc_block("docs/development.rst", "from a fresh virtual environment:"
                               ).splitlines()
    assert "pip install -q -e '.[docs]'" in install
    assert "docs =" in (ROOT / "setup.cfg").read_text()
    command = shlex.split(build)
    assert command[:3] == [".venv/bin/python", "-m", "sphinx"] and "-W" in command
    assert (built_docs / "index.html").is_file()
