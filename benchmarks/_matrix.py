"""The fault matrix: every fault (one scenario function, one registry line) against every
store, and every front end where the fault goes through it; each cell counts lost pairs
and reused refresh tokens.

``FAULTS`` is the registry. :func:`cells` expands it, :func:`run` runs cells (fork cells
one at a time, the others side by side: they mostly wait on deadlines and leases), and
:func:`table` writes the results as an RST table. Used by ``tests/test_fault_matrix.py``
(the default test run) and ``benchmarks/fault_matrix.py`` (the table in README's
Guarantees).
"""

from __future__ import annotations

import concurrent.futures
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import _matrix_faults as inproc
import _matrix_procs as procs
from _matrix_env import FRONTS, STORES, Lab, Missing, Servers

from refresher.testing import DEFAULT_CLIENT_ID

#: What a cell may show: nothing lost and nothing reused; or, for a kill -9 that falls
#: while X answers or before the save ends, the physical limit: the pair dies with the
#: process, and at most one reused refresh token per lost pair.
NOTHING, PHYSICAL = "0 lost, 0 reused", "at most 1 reused per lost pair"


@dataclass(frozen=True)
class Fault:
    """One registry line: a fault's name, its scenario, where it applies, what it may cost.

    ``fronts``: the front ends it runs through (one, "requests", when the fault acts below
    them). ``exclusive``: runs with no other cell beside it (it forks).
    """

    name: str
    scenario: Callable[[Lab], None]
    stores: tuple[str, ...] = STORES
    fronts: tuple[str, ...] = ("requests",)
    allowed: str = NOTHING
    exclusive: bool = False
    emulator: dict[str, Any] = field(default_factory=dict)
    meaning: str = ""
    #: A hole found and not fixed yet: what it is. The cell shows what it costs today, and
    #: its test is an expected failure until the fix lands (then it fails: drop this).
    hole: str = ""


FAULTS: list[Fault] = [
    Fault("kill -9 in the token call", procs.kill_in_token_call, allowed=PHYSICAL),
    Fault("kill -9 in the save", procs.kill_in_save, allowed=PHYSICAL),
    Fault("trickle", inproc.trickle, fronts=FRONTS),
    Fault("late answer", inproc.late_answer, fronts=FRONTS),
    Fault("late answer, another process meanwhile", inproc.late_answer_other_process),
    Fault("store down", inproc.store_down, fronts=FRONTS),
    Fault("lock file deleted", inproc.lock_file_deleted, stores=("json",)),
    Fault("fork after use", procs.fork_after_use, fronts=FRONTS, exclusive=True),
    Fault("fork mid-refresh", procs.fork_mid_refresh, fronts=FRONTS, exclusive=True),
    Fault("slow resolver", inproc.slow_resolver),
    Fault("blocking hook", inproc.blocking_hook,
          meaning="JSON: its lock never lapses; the other process waits, then adopts"),
    Fault("clock step", procs.clock_step,
          meaning="JSON: a flock has no expiry; the stepped process waits for it"),
    Fault("SIGTERM in the token call", procs.sigterm_in_token_call),
    Fault("foreign-client refusal", procs.foreign_client_refusal,
          emulator={"clients": {DEFAULT_CLIENT_ID: None, procs.OTHER_CLIENT_ID: None}}),
]



@dataclass(frozen=True)
class Cell:
    fault: Fault
    store: str
    front: str

    @property
    def id(self) -> str:
        return f"{self.fault.name}|{self.store}|{self.front}"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.id.lower())


def cells(faults: Sequence[Fault] = FAULTS, stores: Sequence[str] = STORES) -> list[Cell]:
    """Every cell of ``faults``: each store it applies to, each front end it runs through."""
    return [Cell(fault, store, front) for fault in faults for store in fault.stores
            if store in stores for front in fault.fronts]


@dataclass
class Result:
    """One cell's outcome. ``ok`` says whether it is within what the fault may cost."""

    fault: str
    store: str
    front: str
    lost: int | None = None
    reused: int | None = None
    allowed: str = NOTHING
    error: str | None = None
    missing: str | None = None
    seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        if self.error is not None or self.lost is None or self.reused is None:
            return False
        if self.allowed == PHYSICAL:
            return self.reused <= self.lost
        return self.lost == 0 and self.reused == 0

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), ok=self.ok)


def run_cell(cell: Cell, servers: Servers) -> Result:
    """Run one cell: stage its fault, then count."""
    result = Result(cell.fault.name, cell.store, cell.front, allowed=cell.fault.allowed)
    started = time.monotonic()
    try:
        lab = Lab(cell.store, cell.front, servers, cell.slug, **cell.fault.emulator)
    except Missing as exc:
        result.missing = str(exc)
        return result
    except Exception:
        result.error = traceback.format_exc(limit=6)
        return result
    try:
        try:
            cell.fault.scenario(lab)
        except Exception:
            result.error = traceback.format_exc(limit=8)
        count = lab.count()
        result.lost, result.reused, result.facts = count.lost, count.reused, count.facts
    except Exception:
        result.error = (result.error or "") + traceback.format_exc(limit=8)
    finally:
        lab.close()
        result.seconds = round(time.monotonic() - started, 2)
    return result


def run(chosen: Sequence[Cell], servers: Servers, workers: int = 6,
        progress: Callable[[Result], None] | None = None) -> list[Result]:
    """Run ``chosen``: the exclusive cells first, one at a time, then the others side by
    side on ``workers`` threads; the results in the order of ``chosen``."""
    results: dict[str, Result] = {}

    def done(cell: Cell, result: Result) -> None:
        results[cell.id] = result
        if progress is not None:
            progress(result)

    inproc.SLOW_NAMES.install()
    try:
        for cell in chosen:
            if cell.fault.exclusive:
                done(cell, run_cell(cell, servers))
        shared = [cell for cell in chosen if not cell.fault.exclusive]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(run_cell, cell, servers): cell for cell in shared}
            for future in concurrent.futures.as_completed(futures):
                done(futures[future], future.result())
    finally:
        inproc.SLOW_NAMES.uninstall()
    return [results[cell.id] for cell in chosen]


# -- the table --------------------------------------------------------------------------------

def _shown(result: Result) -> str:
    if result.missing is not None:
        return "n/a"
    if result.lost is None:
        return "error"
    mark = "" if result.ok else " !"
    return f"{result.lost} / {result.reused}{mark}"


def table(results: Sequence[Result], merge_fronts: bool = False) -> str:
    """An RST table: a row per fault and front end, a column per store, each cell
    ``lost / reused`` (``!``: beyond what the fault may cost). ``merge_fronts``: one row
    for a fault whose every front end gave the same counts."""
    keys: list[tuple[str, str]] = []
    by_key: dict[tuple[str, str], dict[str, str]] = {}
    for result in results:
        key = (result.fault, result.front)
        if key not in by_key:
            keys.append(key)
            by_key[key] = {}
        by_key[key][result.store] = _shown(result)
    rows = [[fault, front] + [by_key[(fault, front)].get(s, "-") for s in STORES]
            for fault, front in keys]
    if merge_fronts:
        rows = _merged(rows)
    header = ["fault", "front end", *STORES]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([rule, line(header), rule, *map(line, rows), rule])


def _merged(rows: list[list[str]]) -> list[list[str]]:
    """Rows of one fault with the same counts on every front end, as one row."""
    merged: list[list[str]] = []
    for row in rows:
        same = [r for r in rows if r[0] == row[0]]
        if len(same) > 1 and all(r[2:] == row[2:] for r in same):
            if row is same[0]:
                merged.append([row[0], f"each of {len(same)}", *row[2:]])
        else:
            merged.append(row)
    return merged
