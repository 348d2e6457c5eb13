"""Every docstring example in the refresher package runs, and shows what it says.

Examples that cannot run here (a browser, X itself, a file in the user's home) are marked
``# doctest: +SKIP``; every other one must pass. One test per module, so a failure names
the module; pytest's own options are left alone (no ``--doctest-modules`` needed).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import refresher

# Modules whose import needs an optional dependency, and that dependency.
OPTIONAL = {"refresher.stores.redis": "redis", "refresher.httpx": "httpx",
            "refresher.aiohttp": "aiohttp", "refresher.stores.sql": "sqlalchemy",
            "refresher.stores.sql_lease": "sqlalchemy",
            "refresher.stores.sql_connection": "sqlalchemy"}


def _modules() -> list[str]:
    found = ["refresher"]
    found += [info.name for info in pkgutil.walk_packages(refresher.__path__, "refresher.")]
    return sorted(found)


MODULES = _modules()


def test_every_module_is_collected() -> None:
    for name in ("refresher.login", "refresher.loopback", "refresher.settings",
                 "refresher.cli", "refresher.cli.parser", "refresher.testing.serve"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_the_docstrings_pass(name: str) -> None:
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
