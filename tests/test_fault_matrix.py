"""The fault matrix (issue 15): every fault against every store (JSON, SQLite, PostgreSQL,
Redis) and, where the fault goes through it, every front end (requests, httpx sync and
async, aiohttp). Each cell counts the pairs X granted that nothing holds afterwards (or an
account that can no longer refresh) and the refresh tokens sent again after X spent them;
only a kill -9 that falls while X answers or before the save ends may cost anything, and
then at most one reused token per lost pair.

The scenarios, the registry and the count are ``benchmarks/_matrix*.py`` (one function and
one registry line a fault); ``benchmarks/fault_matrix.py`` prints the same table for the
README. Cells run once, side by side (fork cells alone), when the first is reached; each
test reads its own. The table is written to ``fault_matrix.json`` in pytest's base temporary
folder and printed at the end (``pytest -s -n 0 tests/test_fault_matrix.py``). ``-m soak`` runs
the kill -9 cells many times each (``REFRESHER_SOAK_TRIALS``, default 25).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import _matrix  # noqa: E402
from _matrix_env import Servers  # noqa: E402

pytestmark = [
    pytest.mark.faults,
    pytest.mark.xdist_group("fault-matrix"),  # one worker takes every cell
    pytest.mark.integration,  # processes, forks, servers
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.timeout(900),  # the first cell's test runs them all; only "did not hang"
    # Python 3.12+ warns on any fork of a process with threads (the emulators serve in them).
    pytest.mark.filterwarnings("ignore:This process:DeprecationWarning"),
]

CELLS = _matrix.cells()


def in_default_run(cell: _matrix.Cell) -> bool:
    """Each fault on every store it applies to, through one front end a store, taken in
    turn (JSON through requests, SQLite through httpx, ...): every store and every front
    end meets every fault that goes through it. The other cells are ``-m soak``."""
    fronts = cell.fault.fronts
    return cell.front == fronts[_matrix.STORES.index(cell.store) % len(fronts)]


def _param(cell: _matrix.Cell) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason="a hole: " + cell.fault.hole)] \
        if cell.fault.hole else []
    if not in_default_run(cell):
        marks.append(pytest.mark.soak)
    return pytest.param(cell, id=cell.slug, marks=marks)


def _servers(request: pytest.FixtureRequest, cells: list[_matrix.Cell], folder: Path,
             notes: dict[str, str]) -> Servers:
    """The session's PostgreSQL and Redis servers, for the stores the cells use (a missing
    one leaves its cells to say so)."""
    servers = Servers(folder)
    kinds = {cell.store for cell in cells}
    if "postgresql" in kinds:
        try:
            postgres = request.getfixturevalue("postgres_server")
            servers.postgres_url = postgres.create_database("fault_matrix")
            request.addfinalizer(lambda: postgres.drop_database("fault_matrix"))
        except pytest.skip.Exception as exc:
            notes["postgresql"] = str(exc)
    if "redis" in kinds:
        try:
            servers.redis_url = request.getfixturevalue("shared_redis_server").url
        except pytest.skip.Exception as exc:
            notes["redis"] = str(exc)
    return servers


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, _matrix.Result]]:
    """The selected cells, run once per test run (whichever xdist worker asks first runs
    them, behind a file lock in pytest's temp folder that all workers share; the others
    read its results); their results by cell id."""
    from filelock import FileLock

    chosen = [item.callspec.params["cell"] for item in request.session.items
              if item.module is request.module and "cell" in getattr(
                  getattr(item, "callspec", None), "params", {})]
    shared = tmp_path_factory.getbasetemp().parent
    path = shared / "fault_matrix.json"
    with FileLock(str(shared / "fault_matrix.lock"), timeout=900):
        if path.is_file():
            results = [_matrix.Result(**{k: v for k, v in row.items() if k != "ok"})
                       for row in json.loads(path.read_text())]
        else:
            notes: dict[str, str] = {}
            servers = _servers(request, chosen, tmp_path_factory.mktemp("matrix"), notes)
            results = _matrix.run(chosen, servers)
            for result in results:
                if result.missing is not None and result.store in notes:
                    result.missing = notes[result.store]
            path.write_text(json.dumps([r.as_dict() for r in results], indent=1))
    yield {cell.id: result for cell, result in zip(chosen, results, strict=True)}
    print(f"\n\nfault matrix (lost pairs / reused refresh tokens), also in {path}:\n")
    print(_matrix.table(results))


@pytest.mark.parametrize("cell", [_param(cell) for cell in CELLS])
def test_cell(cell: _matrix.Cell, matrix: dict[str, _matrix.Result],
              missing: Callable[[str], NoReturn]) -> None:
    result = matrix[cell.id]
    if result.missing is not None:
        missing(result.missing)
    assert result.error is None, f"{cell.id}:\n{result.error}"
    assert result.ok, (f"{cell.id}: {result.lost} lost, {result.reused} reused; it may cost "
                       f"{result.allowed}; {result.facts}")


def test_a_cell_beyond_what_its_fault_may_cost_is_not_ok() -> None:
    physical, nothing = _matrix.PHYSICAL, _matrix.NOTHING
    assert _matrix.Result("f", "json", "requests", 0, 0, nothing).ok
    assert not _matrix.Result("f", "json", "requests", 1, 0, nothing).ok
    assert not _matrix.Result("f", "json", "requests", 0, 1, nothing).ok
    assert _matrix.Result("f", "json", "requests", 1, 1, physical).ok
    assert not _matrix.Result("f", "json", "requests", 1, 2, physical).ok
    assert not _matrix.Result("f", "json", "requests", None, None, physical).ok
    assert not _matrix.Result("f", "json", "requests", 0, 0, nothing, error="boom").ok


def test_every_fault_is_one_function_and_one_line() -> None:
    names = [fault.name for fault in _matrix.FAULTS]
    assert len(names) == len(set(names))
    for fault in _matrix.FAULTS:
        assert callable(fault.scenario) and fault.scenario.__doc__, fault.name
    assert {cell.store for cell in CELLS} == set(_matrix.STORES)


def test_the_table_has_a_row_per_fault_and_front_end_or_one_where_all_agree() -> None:
    agree = [_matrix.Result("a", store, front, 0, 0) for front in ("requests", "httpx")
             for store in ("json", "sqlite")]
    differ = [_matrix.Result("c", "json", "requests", 0, 0),
              _matrix.Result("c", "json", "httpx", 0, 1)]
    lines = _matrix.table(agree + differ, merge_fronts=True).splitlines()
    assert lines[1].split() == ["fault", "front", "end", *_matrix.STORES]
    assert lines[3].split() == ["a", "each", "of", "2", "0", "/", "0", "0", "/", "0", "-", "-"]
    assert lines[4].split()[:5] == ["c", "requests", "0", "/", "0"]
    assert lines[5].split()[:6] == ["c", "httpx", "0", "/", "1", "!"]
    assert len(_matrix.table(agree).splitlines()) == 3 + 2 + 1


def test_the_guarantees_page_shows_every_fault_and_store() -> None:
    """docs/explanation/guarantees.rst carries the script's table: a row for every fault of
    the registry (by its name), a column for every store, and a line saying what it is."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "explanation" / "guarantees.rst"
            ).read_text()
    table = page[page.index("\nfault  "):]
    assert table.split("\n", 2)[1].split() == ["fault", "front", "end", *_matrix.STORES]
    meanings = page[page.index("What each fault is"):]
    for fault in _matrix.FAULTS:
        assert f"\n{fault.name}  " in table, fault.name
        assert fault.name in meanings, fault.name


def test_the_script_runs_the_cells_asked_for() -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fault_matrix.py"
    done = subprocess.run([sys.executable, str(script), "--json", "--stores", "json",
                           "--faults", "lock file deleted"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [cell] = json.loads(done.stdout)["cells"]
    assert (cell["fault"], cell["store"], cell["ok"]) == ("lock file deleted", "json", True)
    assert (cell["lost"], cell["reused"]) == (0, 0)


@pytest.mark.soak
def test_kill_cells_soak(tmp_path: Path, missing: Callable[[str], NoReturn]) -> None:
    """The kill -9 cells, many times each: never more than the physical limit."""
    trials = int(os.environ.get("REFRESHER_SOAK_TRIALS", "25"))
    faults = [f for f in _matrix.FAULTS if f.allowed == _matrix.PHYSICAL]
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fault_matrix.py"
    done = subprocess.run(
        [sys.executable, str(script), "--json", "--soak", str(trials),
         "--faults", ",".join(f.name for f in faults)],
        capture_output=True, text=True, timeout=3600)
    cells = json.loads(done.stdout)["cells"]
    assert done.returncode == 0, json.dumps([c for c in cells if not c["ok"]], indent=1)
    assert all(c["lost"] is not None for c in cells if c["missing"] is None)
