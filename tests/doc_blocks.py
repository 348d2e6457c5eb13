"""The documentation's code blocks, for the tests that run them as printed.

A page is ``README.rst`` or a file under ``docs/``, named from the project root
(``"docs/howto/redis.rst"``). A test takes a block with :func:`doc_block` (the first block
after a piece of the page's text) or every runnable block of a page with
:func:`page_blocks`, and runs it. ``tests/test_docs.py`` reads the tests' source and fails
when a runnable block is taken by no test, so every command and code block in the docs runs
somewhere, as printed. Calls must name the page and the text as string literals, so that
check can resolve them without running anything.

Runnable blocks are ``.. code-block::`` (or ``.. code::``) in one of :data:`RUNNABLE`;
``::`` literal blocks and ``text``/``ini``/``json``... blocks show output or data, and are
not run. A page whose code no test runs says :data:`UNTESTED` near its top.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The languages of blocks that are commands or code, and so must be run by a test.
RUNNABLE = frozenset({"python", "pycon", "sh", "bash", "console", "shell"})

#: What a page whose code no test runs says in its first lines.
UNTESTED = "No test runs the code on this page"

_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)(?:\.\. (?:code-block|code|sourcecode)::[ \t]*(?P<lang>\w*)"
    r"|(?P<literal>.*::))[ \t]*\n"
    r"(?P<options>(?:(?P=indent)[ \t]+:[\w-]+:.*\n)*)"
    r"\n"
    r"(?P<body>(?:(?:(?P=indent)[ \t]+.*)?\n)+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Block:
    """One code or literal block of a page."""

    page: str
    #: Where the block's header line (``.. code-block:: sh``, ``Run::``) ends in the page.
    offset: int
    #: The language (``python``, ``sh``...), ``""`` for a ``::`` literal block.
    language: str
    #: The block's text, dedented, ending with one newline.
    text: str

    @property
    def runnable(self) -> bool:
        return self.language in RUNNABLE

    @property
    def line(self) -> int:
        return page_text(self.page).count("\n", 0, self.offset) + 1


def page_text(page: str) -> str:
    """The text of ``page`` (``"README.rst"``, ``"docs/howto/redis.rst"``)."""
    return (ROOT / page).read_text(encoding="utf-8")


def blocks(page: str) -> list[Block]:
    """Every code and literal block of ``page``, in order."""
    text = page_text(page)
    found = []
    for match in _BLOCK.finditer(text):
        if match["literal"] is not None and match["literal"].lstrip().startswith(".. "):
            continue  # another directive ending in "::" (".. note::"), not a literal block
        body = textwrap.dedent(match["body"]).strip("\n") + "\n"
        language = match["lang"] if match["literal"] is None else ""
        header_end = text.index("\n", match.start())
        found.append(Block(page, header_end, language or "", body))
    return found


def doc_block(page: str, after: str) -> str:
    """The text of the first block of ``page`` after the text ``after``, as printed
    (dedented)."""
    return find_block(page, after).text


def find_block(page: str, after: str) -> Block:
    """The first block of ``page`` that starts after the text ``after``."""
    text = page_text(page)
    start = text.find(after)
    if start < 0:
        raise LookupError(f"{page} does not say {after!r}")
    start += len(after)
    for block in blocks(page):
        if block.offset >= start:
            return block
    raise LookupError(f"{page} has no block after {after!r}")


def page_blocks(page: str) -> list[str]:
    """The text of every runnable block of ``page``, in order."""
    return [block.text for block in blocks(page) if block.runnable]


def pages() -> list[str]:
    """README.rst and every page of the docs site."""
    docs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.rst")
                  if "_build" not in p.parts)
    return ["README.rst", *docs]
