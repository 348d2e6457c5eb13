"""The reference pages (docs/reference/) cover what they say they cover: every public name
on the API page, every exception on the exceptions page, every ``REFRESHER_*`` variable the
code reads on the environment page, every command on the command-line page.

The checks read the pages' sources (fast); one build of the site checks what came out:
the names in its ``objects.inv`` and the commands' help on the command-line page.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import refresher
import refresher.testing
from refresher.cli.parser import build_parser
from refresher.testing import contract

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import refresher_cli  # noqa: E402  (docs/_ext: the CLI page's directive)

_DIRECTIVE = re.compile(
    r"^\.\. (?:auto(?:class|function|exception|data|module)|py:(?:data|function|class|"
    r"exception)):: +([\w.]+)", re.MULTILINE)


def _documented(page: str) -> set[str]:
    """The dotted names ``page`` documents with a directive of its own (automodule: the
    module itself and the public names it lists, when given ``:members:``)."""
    text = (REFERENCE / page).read_text(encoding="utf-8")
    names = set(_DIRECTIVE.findall(text))
    for module in re.findall(r"^\.\. automodule:: +([\w.]+)\n((?:   .*\n)*)", text,
                             re.MULTILINE):
        name, options = module
        if ":members:" in options:
            imported = importlib.import_module(name)
            names |= {f"{name}.{member}" for member in getattr(imported, "__all__", ())}
            names |= {f"{name}.{member}" for member, value in vars(imported).items()
                      if not member.startswith("_") and callable(value)
                      and getattr(value, "__module__", None) == name}
    return names


def _is_exception(value: object) -> bool:
    return inspect.isclass(value) and issubclass(value, BaseException)


def test_every_public_name_is_on_the_api_page() -> None:
    """Each name of ``refresher.__all__`` is documented: the exceptions on the exceptions
    page (and named on the API page), everything else on the API page; so are the async
    front ends, the test helpers, the pytest fixtures and the store contract."""
    api, exceptions = _documented("api.rst"), _documented("exceptions.rst")
    api_text = (REFERENCE / "api.rst").read_text(encoding="utf-8")
    missing = []
    for name in refresher.__all__:
        if _is_exception(getattr(refresher, name)):
            if f"refresher.{name}" not in exceptions or f"`{name}`" not in api_text:
                missing.append(f"{name} (exceptions.rst, and named on api.rst)")
        elif f"refresher.{name}" not in api and name not in api:
            missing.append(name)
    front_ends = [importlib.import_module(f"refresher.{name}") for name in ("httpx", "aiohttp")]
    for module in (*front_ends, refresher.testing, contract):
        missing += [f"{module.__name__}.{name}" for name in module.__all__
                    if f"{module.__name__}.{name}" not in api]
    for fixture in ("x_emulator", "x_emulator_factory"):
        if f"refresher.testing.pytest_plugin.{fixture}" not in api:
            missing.append(fixture)
    assert missing == [], f"not documented in docs/reference/: {missing}"


def _public_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a public module of refresher (none of whose parts
    starts with ``_``), by dotted name. The command line's own two
    (:mod:`refresher.cli.common`) never leave it: ``main`` turns them into exit statuses."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(refresher.__path__, "refresher."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if info.name.startswith("refresher.cli"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional library's module: it defines no exception
            continue
        for name, value in vars(module).items():
            if (_is_exception(value) and not name.startswith("_")
                    and value.__module__ == module.__name__):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_is_on_the_exceptions_page() -> None:
    documented = _documented("exceptions.rst")
    text = (REFERENCE / "exceptions.rst").read_text(encoding="utf-8")
    exported = {f"refresher.{name}" for name in refresher.__all__
                if _is_exception(getattr(refresher, name))}
    exported |= {f"refresher.{name}" for name in refresher.errors.__all__}
    by_class = {value: name for name, value in _public_exceptions().items()}
    for name, value in _public_exceptions().items():
        short = f"refresher.{value.__name__}"
        exported.add(short if short in exported else name)
    missing = sorted(name for name in exported if name not in documented)
    assert missing == [], f"not on docs/reference/exceptions.rst: {missing}"
    for value in by_class:  # each in the hierarchy drawn at the top, and its base said
        assert re.search(rf"\b{value.__name__}\b", text.split("Which to catch")[0]), value


def test_every_refresher_variable_is_on_the_environment_page() -> None:
    read = set()
    for path in (ROOT / "refresher").rglob("*.py"):
        read |= set(re.findall(r"REFRESHER_[A-Z_]+", path.read_text(encoding="utf-8")))
    text = (REFERENCE / "environment.rst").read_text(encoding="utf-8")
    described = set(re.findall(r"^\.\. envvar:: (REFRESHER_[A-Z_]+)$", text, re.MULTILINE))
    assert read, "no REFRESHER_ variable found in refresher/"
    assert sorted(read - described) == [], "missing from docs/reference/environment.rst"
    assert sorted(described - read) == [], "described, but read nowhere in refresher/"


def _command_paths(parser: argparse.ArgumentParser,
                   path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the parser, found here independently of the
    directive that renders them."""
    paths = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*path, name))
    return paths


def test_the_cli_page_renders_every_command_from_the_parser() -> None:
    text = (REFERENCE / "cli.rst").read_text(encoding="utf-8")
    assert re.search(r"^\.\. refresher-cli::$", text, re.MULTILINE)
    rendered = dict(refresher_cli.commands(build_parser()))
    expected = _command_paths(build_parser())
    assert {"login", "status", "refresh", "logout", "emulator", "demo"} <= {
        p[0] for p in expected if p}
    assert ("key", "new") in expected and ("key", "rotate") in expected
    assert list(rendered) == expected
    for path, help_text in rendered.items():
        assert help_text.startswith(f"usage: {' '.join(('refresher', *path))} ")
        assert max(len(line) for line in help_text.splitlines()) <= refresher_cli.WIDTH


@pytest.mark.integration
@pytest.mark.xdist_group("docs-build")
def test_the_built_site_has_every_name_and_command(built_docs: Path) -> None:
    from sphinx.util.inventory import InventoryFile

    with open(built_docs / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    objects = {name for kind in inventory.values() for name in kind}
    names = [f"refresher.{name}" for name in refresher.__all__]
    names += ["refresher.httpx.RefreshingAuth", "refresher.aiohttp.RefreshingMiddleware",
              "refresher.testing.XEmulator", "refresher.testing.pytest_plugin.x_emulator",
              "refresher.testing.contract.TokenStoreContract"]
    names += sorted(set(re.findall(r"REFRESHER_[A-Z_]+",
                                   (REFERENCE / "environment.rst").read_text())))
    assert [name for name in names if name not in objects] == []
    for path in _command_paths(build_parser()):
        assert f"cli-{'-'.join(path)}" in objects or not path  # a :ref: label per command
    page = (built_docs / "reference" / "cli.html").read_text(encoding="utf-8")
    for path in _command_paths(build_parser()):
        assert f"usage: {' '.join(('refresher', *path))} " in page, path
