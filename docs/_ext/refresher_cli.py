"""A Sphinx directive that writes the ``refresher`` command line's reference from its own
argument parser (:func:`refresher.cli.parser.build_parser`), so the page cannot drift from
the program.

``.. refresher-cli::`` renders ``refresher --help`` and then, for every command and
sub-command (``key new``...), a section titled with the command, labelled
``cli-<command>`` (``:ref:`cli-login```, ``:ref:`cli-key-rotate```), holding its
``--help`` as argparse formats it, at a fixed width so the page does not depend on the
terminal that built it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: The width the help is formatted at (argparse otherwise reads the terminal's).
WIDTH = 88


def commands(parser: argparse.ArgumentParser,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every command of ``parser``, depth first: its words after ``refresher`` (``()`` for
    the program itself, ``("key", "new")``...) and its ``--help`` at :data:`WIDTH`."""
    parser.formatter_class = _fixed_width  # type: ignore[assignment]
    yield path, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def _fixed_width(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=WIDTH)


def label(path: tuple[str, ...]) -> str:
    """The reference label of a command's section: ``cli-login``, ``cli-key-new``."""
    return "-".join(("cli", *path)) if path else "cli-refresher"


class RefresherCli(SphinxDirective):
    """``.. refresher-cli::``: the program's help, then a section per command."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from refresher.cli.parser import build_parser

        lines: list[str] = []
        for path, text in commands(build_parser()):
            if path:
                title = "``refresher " + " ".join(path) + "``"
                lines += [f".. _{label(path)}:", "", title, "-" * len(title), ""]
            else:
                lines += [f".. _{label(path)}:", ""]
            lines += [".. code-block:: text", ""]
            lines += ["    " + line if line else "" for line in text.rstrip().splitlines()]
            lines.append("")
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="refresher-cli"),
                                 container)
        return list(container.children)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("refresher-cli", RefresherCli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
