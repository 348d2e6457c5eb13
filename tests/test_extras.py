"""The optional dependencies (extras): ``import refresher`` imports none of them, and
without one, using what needs it raises an error that names the extra to install.

Each check runs in a fresh interpreter, so that nothing this test process imported counts.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # spawns processes

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Extra:
    """An extra: the library it installs, and how refresher meets it."""

    library: str
    #: Python that names refresher's class for the library without using it ("" for none).
    name_alone: str
    #: Python that needs the library (``import`` of the front end), or "" when naming
    #: refresher's class is all there is short of using it.
    needs_it: str
    #: Python that uses the library (the ``open_store`` URL is in ``sys.argv[1]``).
    use: str
    #: What that raises when the library is missing (an ImportError either way).
    raises: str
    #: The extra that installs it: the message says to run ``pip install -e '.[EXTRA]'``
    #: (a checkout) or ``pip install 'refresher-VERSION-py3-none-any.whl[EXTRA]'`` (a wheel).
    extra: str


EXTRAS = [
    Extra("redis", "assert refresher.RedisTokenStore.__name__ == 'RedisTokenStore'", "",
          "refresher.open_store('redis://127.0.0.1:6379/0')", "refresher.TokenStoreError",
          "redis"),
    Extra("sqlalchemy", "assert refresher.SQLTokenStore.__name__ == 'SQLTokenStore'", "",
          "refresher.open_store(sys.argv[1])", "refresher.TokenStoreError", "sql"),
    Extra("cryptography",
          "assert refresher.EncryptedTokenStore.__name__ == 'EncryptedTokenStore'", "",
          "refresher.open_store(sys.argv[1], key=refresher.new_key())",
          "refresher.TokenStoreError", "crypto"),
    Extra("keyring", "", "", "refresher.open_store(sys.argv[1], key='keyring:tokens')",
          "refresher.ConfigurationError", "keyring"),
    Extra("httpx", "", "import refresher.httpx", "import refresher.httpx", "ImportError",
          "httpx"),
    Extra("aiohttp", "", "import refresher.aiohttp", "import refresher.aiohttp", "ImportError",
          "aiohttp"),
]
IDS = [extra.library for extra in EXTRAS]


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("extra", EXTRAS, ids=IDS)
def test_importing_refresher_does_not_import_the_library(extra: Extra) -> None:
    lib = extra.library
    lines = ["import sys, refresher",
             f"assert {lib!r} not in sys.modules, 'import refresher imported {lib}'"]
    if extra.name_alone:
        lines += [extra.name_alone,
                  f"assert {lib!r} not in sys.modules, 'the class alone imported {lib}'"]
    lines += ["from refresher import *  # noqa",
              f"assert {lib!r} not in sys.modules, 'from refresher import * imported {lib}'"]
    if extra.needs_it:
        lines += [extra.needs_it, f"assert {lib!r} in sys.modules"]
    done = _python("\n".join([*lines, "print('ok')", ""]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("extra", EXTRAS, ids=IDS)
def test_without_the_library_the_error_says_which_extra_to_install(extra: Extra,
                                                                   tmp_path: Path) -> None:
    """The error is a public class (refresher.MissingExtra, an ImportError), and its message
    names the extra in the one spelling, quoted for every shell: from a checkout or from
    a built wheel, never as if refresher were on the package index."""
    code = ("import sys\n"
            f"sys.modules[{extra.library!r}] = None  # as if it were not installed\n"
            "import refresher\n"
            "from refresher import *  # noqa\n"
            "try:\n"
            f"    {extra.use}\n"
            f"except {extra.raises} as exc:\n"
            "    assert isinstance(exc, ImportError)\n"
            "    assert isinstance(exc, refresher.MissingExtra), type(exc)\n"
            "    kind = type(exc)\n"
            "    assert kind.__module__ == 'refresher.errors', kind\n"
            "    assert getattr(refresher, kind.__name__) is kind, kind\n"
            f"    assert exc.extra == {extra.extra!r} and exc.name == {extra.library!r}\n"
            "    print(exc)\n")
    done = _python(code, f"sqlite:///{tmp_path / 't.db'}")
    assert done.returncode == 0, done.stderr
    from refresher import __version__
    assert f"pip install -e '.[{extra.extra}]'" in done.stdout
    assert (f"pip install 'refresher-{__version__}-py3-none-any.whl[{extra.extra}]'"
            in done.stdout)
    assert f"refresher[{extra.extra}]" not in done.stdout.replace(
        f"refresher-{__version__}-py3-none-any.whl", "")
    assert "_Missing" not in done.stdout + done.stderr


def test_dir_and_help_list_every_public_name_and_import_no_library() -> None:
    """``dir(refresher)`` (a notebook's completion) and ``help(refresher)`` show the names
    loaded on first use too, and neither imports an optional library."""
    libraries = sorted(extra.library for extra in EXTRAS)
    code = ("import pydoc, sys, refresher\n"
            "missing = set(refresher.__all__) - set(dir(refresher))\n"
            "assert not missing, missing\n"
            "text = pydoc.plain(pydoc.render_doc(refresher))\n"
            "for name in ('LoginFlow', 'AuthorizationLink', 'SQLTokenStore', 'RedisTokenStore',\n"
            "             'EncryptedTokenStore'):\n"
            "    assert f'class {name}(' in text, name\n"
            "assert 'new_key()' in text\n"
            f"imported = [lib for lib in {libraries!r} if lib in sys.modules]\n"
            "assert not imported, imported\n"
            "print('ok')\n")
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
