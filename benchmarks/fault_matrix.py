"""The fault matrix: every fault of issue 15 against every store and front end, as a table.

Each cell stages one fault (a kill -9 in the token call or the save, a trickling or late
answer, the store down during the save, a lock file deleted, a fork after use or during a
background refresh, a resolver that hangs, a hook that blocks past its lease, a wall clock
that stepped) against one store (a JSON file, SQLite, PostgreSQL, Redis) and, where the
fault goes through it, one front end (requests, httpx sync and async, aiohttp), then
counts what it cost: *lost* pairs (X granted them and nothing holds them, or the account
can no longer refresh) and *reused* refresh tokens (X's count). The same scenarios run in
``tests/test_fault_matrix.py``; this script prints the table README's Guarantees carries.

    python benchmarks/fault_matrix.py                  # every cell, an RST table
    python benchmarks/fault_matrix.py --soak 20        # kill -9 cells repeated 20 times
    python benchmarks/fault_matrix.py --faults "store down,late answer" --stores json --json

It starts its own PostgreSQL and redis-server when their binaries are installed (the cells
of a missing one show ``n/a``). It exits 1 when a cell is outside what its fault may cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _matrix  # noqa: E402
from _matrix_env import STORES, Servers  # noqa: E402


@contextlib.contextmanager
def servers(folder: Path, stores: list[str]) -> Iterator[Servers]:
    """PostgreSQL and Redis servers of this run's own, when installed and wanted."""
    found = Servers(folder)
    with contextlib.ExitStack() as stack:
        if "postgresql" in stores:
            with contextlib.suppress(Exception):
                from refresher.testing.postgres_server import PostgresServer

                postgres = stack.enter_context(PostgresServer())
                found.postgres_url = postgres.create_database("matrix")
        if "redis" in stores:
            with contextlib.suppress(Exception):
                from refresher.testing.redis_server import RedisServer

                found.redis_url = stack.enter_context(RedisServer(workdir=folder)).url
        yield found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fault matrix (each fault against "
                                     "each store and front end) and print lost pairs and "
                                     "reused refresh tokens per cell.")
    parser.add_argument("--faults", help="comma-separated fault names (default: all)")
    parser.add_argument("--stores", default=",".join(STORES),
                        help="comma-separated stores (default: all four)")
    parser.add_argument("--soak", type=int, default=1, metavar="N",
                        help="run the kill -9 cells N times each (default 1)")
    parser.add_argument("--workers", type=int, default=6,
                        help="cells run side by side (default 6)")
    parser.add_argument("--per-front-end", action="store_true",
                        help="a row per front end even where all gave the same counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of RST")
    args = parser.parse_args(argv)
    faults = _matrix.FAULTS
    if args.faults:
        wanted = {name.strip() for name in args.faults.split(",")}
        unknown = wanted - {f.name for f in faults}
        if unknown:
            parser.error(f"unknown faults {sorted(unknown)}; known: "
                         f"{', '.join(f.name for f in faults)}")
        faults = [f for f in faults if f.name in wanted]
    stores = [s.strip() for s in args.stores.split(",")]
    chosen = _matrix.cells(faults, stores)
    kills = [c for c in chosen if c.fault.allowed == _matrix.PHYSICAL]
    chosen += kills * (args.soak - 1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="refresher-matrix-") as folder, \
            servers(Path(folder), stores) as found:
        results = _matrix.run(chosen, found, workers=args.workers, progress=_progress)
    merged = _merge(results)
    if args.json:
        print(json.dumps({"seconds": round(time.monotonic() - started, 1),
                          "cells": [r.as_dict() for r in merged]}, indent=1))
    else:
        print(_matrix.table(merged, merge_fronts=not args.per_front_end))
        print(f"\n{len(merged)} cells, {time.monotonic() - started:.0f} s; each cell: lost "
              "pairs / reused refresh tokens ('!': more than the fault may cost)")
    return 0 if all(r.ok or r.missing for r in merged) else 1


def _merge(results: list[_matrix.Result]) -> list[_matrix.Result]:
    """Repeated cells (``--soak``) added up into one."""
    merged: dict[tuple[str, str, str], _matrix.Result] = {}
    for result in results:
        key = (result.fault, result.store, result.front)
        if key not in merged:
            merged[key] = result
            continue
        into = merged[key]
        if result.lost is None or into.lost is None:
            into.error = into.error or result.error or "a trial did not count"
            continue
        into.lost += result.lost
        into.reused = (into.reused or 0) + (result.reused or 0)
        into.error = into.error or result.error
        into.seconds += result.seconds
    return list(merged.values())


def _progress(result: Any) -> None:
    state = "ok" if result.ok else ("n/a" if result.missing else "NOT OK")
    print(f"  {result.fault} | {result.store} | {result.front}: {result.lost} lost, "
          f"{result.reused} reused, {result.seconds:.1f} s, {state}", file=sys.stderr)
    if result.error:
        print("    " + result.error.strip().replace("\n", "\n    ")[-1500:], file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
