"""Many accounts in one store: what a load, a save and a refresh cost at 10 to 10,000
accounts, and whether refreshes of different accounts run side by side.

For each store (a JSON file, SQLite, PostgreSQL on a throw-away server, Redis on a
throw-away server; a store that cannot run here is a row saying ``skipped: <reason>``) and
each size in ``--sizes``, the store is filled (written directly, in bulk: the store API
would take minutes at 10,000 accounts), then, through the store API:

- ``load ms``: ``store.load(account)`` of a random account, the median of ``--samples``;
- ``save ms``: what a refresh does to the store, the median of ``--samples``::

      with store.lock(a):
          version = store.load_versioned(a).version
          store.save_versioned(a, token, version)

- ``refresh ms``: one coordinated refresh (``session.coordinator.refresh()``) of one
  account against the bundled X emulator answering at once, the median of ``--refreshes``;
- ``one @200``: the same against a token endpoint that takes ``--token-delay`` seconds
  (default 0.2) to answer;
- ``threads ms``: ``--parallel`` (default 16) different accounts refreshed at once by as
  many threads of one process (one store object, one session per account) against that
  slow endpoint: the wall time from the first start to the last end, the median of
  ``--rounds``; ``procs ms``: the same by as many processes, each refreshing its own
  account. ``x``: that time over ``one @200``. The target is 3x or less: refreshes of
  different accounts should overlap, not queue behind one lock.

Every refresh runs in worker processes (spawned once, ``--parallel`` of them), so the
emulator in this process never shares an interpreter lock with a client. Everything runs on
127.0.0.1.

    python benchmarks/accounts.py                           # 4 stores x 10 / 1,000 / 10,000
    python benchmarks/accounts.py --stores json,sqlite --sizes 10,1000 --json
    python benchmarks/accounts.py --quick                   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    emit,
    median,
    postgres_unavailable,
    progress,
    redis_unavailable,
    sql_unavailable,
)

from refresher.stores import TokenStore, open_store  # noqa: E402
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator  # noqa: E402

STORES = ("json", "sqlite", "postgres", "redis")
LABELS = {"json": "json file", "sqlite": "sqlite", "postgres": "postgresql", "redis": "redis"}
JOB_TIMEOUT = 180.0   # seconds any one job of a worker may take before the pool is dropped
START_DELAY = 0.05    # seconds between "go" and the synchronised start of a round

Token = dict[str, Any]


# -- the worker processes -------------------------------------------------------------------


def _session(store: TokenStore, account: str, job: dict[str, Any]) -> Any:
    from refresher import RefreshingSession

    return RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=account,
                             token_url=job["token_url"], api_url=job["api_url"])


def _refresh(session: Any) -> tuple[float, float, str | None]:
    """One coordinated refresh: (start, end, error) in wall-clock seconds."""
    began = time.time()
    try:
        session.coordinator.refresh()
        error = None
    except Exception as exc:  # counted, not fatal: the row reports it
        error = f"{type(exc).__name__}: {exc}"
    return began, time.time(), error


def _sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def _job_sequential(job: dict[str, Any], conn: Any) -> dict[str, Any]:
    """``count`` refreshes of one account, one after the other (after one untimed)."""
    store = open_store(job["location"])
    session = _session(store, job["account"], job)
    try:
        _refresh(session)  # connect, import, create: not timed
        spans = [_refresh(session) for _ in range(job["count"])]
    finally:
        session.close()
        store.close()
    return {"seconds": [end - start for start, end, _ in spans],
            "errors": [error for _, _, error in spans if error]}


def _job_threads(job: dict[str, Any], conn: Any) -> dict[str, Any]:
    """One store object, a session per account, every account refreshed at once by its own
    thread; ``rounds`` timed rounds after an untimed one."""
    import threading

    store = open_store(job["location"])
    sessions = [_session(store, account, job) for account in job["accounts"]]
    walls: list[float] = []
    errors: list[str] = []
    try:
        for round_number in range(job["rounds"] + 1):
            start_at = time.time() + START_DELAY
            spans: list[tuple[float, float, str | None]] = []

            def run(session: Any, start_at: float = start_at,
                    spans: list[tuple[float, float, str | None]] = spans) -> None:
                _sleep_until(start_at)
                spans.append(_refresh(session))

            threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(JOB_TIMEOUT)
            errors += [error for _, _, error in spans if error]
            if round_number > 0 and spans:
                walls.append(max(e for _, e, _ in spans) - min(s for s, _, _ in spans))
    finally:
        for session in sessions:
            session.close()
        store.close()
    return {"walls": walls, "errors": errors}


def _job_process(job: dict[str, Any], conn: Any) -> dict[str, Any]:
    """One account in this process, refreshed at each ``("go", start_at)`` from the parent."""
    store = open_store(job["location"])
    session = _session(store, job["account"], job)
    spans = []
    try:
        conn.send(("ready", None))
        while True:
            command, start_at = conn.recv()
            if command != "go":
                break
            _sleep_until(start_at)
            spans.append(_refresh(session))
            conn.send(("span", spans[-1]))
    finally:
        session.close()
        store.close()
    return {"spans": spans}


JOBS: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
    "sequential": _job_sequential, "threads": _job_threads, "process": _job_process,
}


def _worker_main(conn: Any) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(("done", JOBS[job["kind"]](job, conn)))
        except BaseException:  # the parent must hear of it, whatever it was
            conn.send(("error", traceback.format_exc(limit=6)))


class WorkerPool:
    """``size`` spawned processes that run jobs sent over a pipe each."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.workers: list[tuple[Any, Any]] = []

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for _ in range(self.size):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child,), daemon=True)
            process.start()
            child.close()
            self.workers.append((process, parent))

    def stop(self) -> None:
        for _, conn in self.workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process, conn in self.workers:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
            conn.close()
        self.workers = []

    def restart(self) -> None:
        """After a worker broke or hung: new processes for the next row."""
        self.stop()
        self.start()

    def receive(self, index: int, expected: str) -> Any:
        conn = self.workers[index][1]
        if not conn.poll(JOB_TIMEOUT):
            raise RuntimeError(f"worker {index} did not answer within {JOB_TIMEOUT:g} s")
        kind, value = conn.recv()
        if kind == "error":
            raise RuntimeError(f"worker {index} failed:\n{value}")
        if kind != expected:
            raise RuntimeError(f"worker {index} sent {kind!r}, expected {expected!r}")
        return value

    def run(self, index: int, job: dict[str, Any]) -> dict[str, Any]:
        self.workers[index][1].send(job)
        result: dict[str, Any] = self.receive(index, "done")
        return result

    def processes_round_trip(self, job: dict[str, Any], accounts: list[str],
                             rounds: int) -> dict[str, Any]:
        """Each of ``accounts`` refreshed by its own worker, all at once, ``rounds`` timed
        rounds after an untimed one; the wall time of each round."""
        used = range(len(accounts))
        for i in used:
            self.workers[i][1].send(dict(job, kind="process", account=accounts[i]))
        for i in used:
            self.receive(i, "ready")
        walls, errors = [], []
        for round_number in range(rounds + 1):
            start_at = time.time() + START_DELAY + 0.002 * len(accounts)
            for i in used:
                self.workers[i][1].send(("go", start_at))
            spans = [self.receive(i, "span") for i in used]
            errors += [error for _, _, error in spans if error]
            if round_number > 0:
                walls.append(max(e for _, e, _ in spans) - min(s for s, _, _ in spans))
        for i in used:
            self.workers[i][1].send(("stop", None))
        for i in used:
            self.receive(i, "done")
        return {"walls": walls, "errors": errors}


# -- the stores -----------------------------------------------------------------------------


def fake_token(index: int) -> Token:
    """A token shaped (and sized) like the emulator's, for the accounts nobody refreshes."""
    stamp = f"{index:08d}"
    return {"token_type": "bearer", "expires_in": 7200, "expires_at": time.time() + 7200,
            "scope": "tweet.read users.read offline.access",
            "access_token": ("at" + stamp) * 8, "refresh_token": ("rt" + stamp) * 8}


class Backend:
    """Where one kind of store lives for the run, and how it is filled in bulk.

    ``fill(store, location, tokens)`` writes the first account through the store API, then
    every other one as a copy of what that wrote (a JSON entry, a Redis hash, a SQL row),
    so the layout is the store's own, whatever version of it.
    """

    def __init__(self, name: str, folder: str) -> None:
        self.name = name
        self.label = LABELS[name]
        self.folder = folder
        self._server: Any = None

    def unavailable(self) -> str | None:
        if self.name == "sqlite":
            return sql_unavailable()
        if self.name == "postgres":
            return postgres_unavailable()
        if self.name == "redis":
            return redis_unavailable()
        return None

    def __enter__(self) -> Backend:
        if self.name == "postgres":
            from refresher.testing.postgres_server import PostgresServer

            self._server = PostgresServer().start()
        elif self.name == "redis":
            from refresher.testing.redis_server import RedisServer

            self._server = RedisServer().start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.stop()
            if hasattr(self._server, "cleanup"):
                self._server.cleanup()
            self._server = None

    def location(self, size: int) -> str:
        if self.name == "json":
            return os.path.join(self.folder, f"tokens-{size}.json")
        if self.name == "sqlite":
            return "sqlite:///" + os.path.join(self.folder, f"tokens-{size}.db")
        if self.name == "postgres":
            return str(self._server.create_database(f"tokens_{size}"))
        self._flush_redis()
        return str(self._server.url)

    def _flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self._server.url)
        try:
            client.flushdb()
        finally:
            client.close()

    def fill(self, store: TokenStore, location: str, tokens: dict[str, Token]) -> None:
        names = list(tokens)
        first = names[0]
        with store.lock(first):
            store.save(first, tokens[first])
        rest = {name: tokens[name] for name in names[1:]}
        if rest:
            getattr(self, "_fill_" + ("sql" if self.name in ("sqlite", "postgres")
                                      else self.name))(store, location, first, rest)

    def _fill_json(self, store: Any, location: str, first: str, rest: dict[str, Token]) -> None:
        with open(location, encoding="utf-8") as handle:
            document = json.load(handle)
        template = document["accounts"][first]
        for name, token in rest.items():
            document["accounts"][name] = dict(template, token=token)
        temporary = location + ".bulk"
        with open(os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w",
                  encoding="utf-8") as handle:
            json.dump(document, handle, sort_keys=True, separators=(",", ":"))
        os.replace(temporary, location)

    def _fill_redis(self, store: Any, location: str, first: str,
                    rest: dict[str, Token]) -> None:
        import redis

        client = redis.Redis.from_url(location)
        try:
            template = client.hgetall(store.prefix + first)
            pipe = client.pipeline(transaction=False)
            for count, (name, token) in enumerate(rest.items(), 1):
                fields = dict(template)
                fields[b"token"] = json.dumps(token, sort_keys=True).encode()
                pipe.hset(store.prefix + name, mapping=fields)
                if count % 1000 == 0:
                    pipe.execute()
            pipe.execute()
        finally:
            client.close()

    def _fill_sql(self, store: Any, location: str, first: str, rest: dict[str, Token]) -> None:
        import sqlalchemy as sa

        table = sa.Table(store.table, sa.MetaData(), autoload_with=store.engine)
        with store.engine.begin() as connection:
            row = connection.execute(
                sa.select(table).where(table.c.account == first)).mappings().one()
            template = dict(row)
            rows = [dict(template, account=name, token=json.dumps(token, sort_keys=True))
                    for name, token in rest.items()]
            for start in range(0, len(rows), 1000):
                connection.execute(table.insert(), rows[start:start + 1000])


# -- one row --------------------------------------------------------------------------------


def account_names(size: int) -> list[str]:
    return [f"user{i:05d}" for i in range(size)]


def measure_store(store: TokenStore, names: list[str], samples: int,
                  rng: random.Random) -> tuple[list[float], list[float]]:
    """Load and save times (seconds) of random accounts through the store API, interleaved."""
    loads, saves = [], []
    for _ in range(samples):
        account = rng.choice(names)
        began = time.perf_counter()
        store.load(account)
        loads.append(time.perf_counter() - began)
        account = rng.choice(names)
        began = time.perf_counter()
        with store.lock(account):
            token, version = store.load_versioned(account)
            assert token is not None
            # The token read is written back (a live one must stay live): the same work as
            # saving a new pair of the same size.
            store.save_versioned(account, token, version)
        saves.append(time.perf_counter() - began)
    return loads, saves


def run_row(backend: Backend, size: int, x: XEmulator, pool: WorkerPool,
            args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(size)
    names = account_names(size)
    parallel = min(args.parallel, size)
    # The refreshed accounts, spread over the store; they get live emulator tokens.
    live = [names[(i * size) // parallel] for i in range(parallel)]
    tokens = {name: fake_token(i) for i, name in enumerate(names)}
    for name in live:
        tokens[name] = x.issue_token()
    location = backend.location(size)
    label = f"{backend.label} x {size}"
    progress(f"{label}: filling")
    store = open_store(location)
    try:
        began = time.perf_counter()
        backend.fill(store, location, tokens)
        fill_seconds = time.perf_counter() - began
        if len(store.accounts()) != size:
            raise RuntimeError(f"the store holds {len(store.accounts())} accounts, not {size}")
        progress(f"{label}: filled in {fill_seconds:.1f} s; load and save")
        loads, saves = measure_store(store, names, args.samples, rng)
    finally:
        store.close()

    job = {"location": location, "token_url": x.token_url, "api_url": x.api_url}
    x.reset_stats()
    x.token_delay = 0.0
    progress(f"{label}: {args.refreshes} refreshes, one at a time")
    sequential = pool.run(0, dict(job, kind="sequential", account=live[0],
                                  count=args.refreshes))
    x.token_delay = args.token_delay
    progress(f"{label}: one refresh at a time, token endpoint taking "
             f"{args.token_delay * 1000:g} ms")
    single = pool.run(0, dict(job, kind="sequential", account=live[0], count=args.rounds))
    progress(f"{label}: {parallel} accounts at once, {parallel} threads x {args.rounds} rounds")
    threads = pool.run(0, dict(job, kind="threads", accounts=live, rounds=args.rounds))
    progress(f"{label}: {parallel} accounts at once, {parallel} processes x "
             f"{args.rounds} rounds")
    processes = pool.processes_round_trip(job, live, args.rounds)
    x.token_delay = 0.0
    stats = x.stats.as_dict()

    one = median(single["seconds"])
    threads_wall, processes_wall = median(threads["walls"]), median(processes["walls"])
    threads_ratio, processes_ratio = threads_wall / one, processes_wall / one
    errors = (sequential["errors"] + single["errors"] + threads["errors"]
              + processes["errors"])
    return {
        "store": backend.label,
        "accounts": size,
        "load_ms": median(loads) * 1000,
        "save_ms": median(saves) * 1000,
        "refresh_ms": median(sequential["seconds"]) * 1000,
        "one_slow_refresh_ms": one * 1000,
        "parallel": parallel,
        "threads_ms": threads_wall * 1000,
        "threads_ratio": threads_ratio,
        "processes_ms": processes_wall * 1000,
        "processes_ratio": processes_ratio,
        "target_met": (threads_ratio <= args.target and processes_ratio <= args.target
                       and not errors and stats["reused_refresh_tokens"] == 0),
        "fill_seconds": fill_seconds,
        "refreshes_at_emulator": stats["refreshes"],
        "reused_refresh_tokens": stats["reused_refresh_tokens"],
        "errors": errors[:5],
        "failed_refreshes": len(errors),
        "samples_ms": {
            "load": [s * 1000 for s in loads], "save": [s * 1000 for s in saves],
            "refresh": [s * 1000 for s in sequential["seconds"]],
            "one_slow_refresh": [s * 1000 for s in single["seconds"]],
            "threads": [s * 1000 for s in threads["walls"]],
            "processes": [s * 1000 for s in processes["walls"]],
        },
    }


# -- the whole run --------------------------------------------------------------------------


COLUMNS = [
    ("store", "store"), ("accounts", "accounts"), ("load_ms", "load ms"),
    ("save_ms", "save ms"), ("refresh_ms", "refresh ms"), ("one_slow_refresh_ms", "one @{}"),
    ("parallel", "N"), ("threads_ms", "N threads ms"), ("threads_ratio", "threads x"),
    ("processes_ms", "N procs ms"), ("processes_ratio", "procs x"), ("verdict", "<= {}x"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load, save and refresh costs of each store (JSON file, SQLite, "
        "PostgreSQL, Redis) holding 10 to 10,000 accounts, and whether refreshes of "
        "different accounts by threads or by processes run side by side.",
    )
    parser.add_argument("--stores", default=",".join(STORES),
                        help="rows to run, comma-separated: json, sqlite, postgres, redis "
                        "(default all)")
    parser.add_argument("--sizes", default=None,
                        help="accounts per store, comma-separated (default 10,1000,10000)")
    parser.add_argument("--samples", type=int, default=None,
                        help="loads and saves timed per row (default 20)")
    parser.add_argument("--refreshes", type=int, default=None,
                        help="one-at-a-time refreshes timed per row (default 10)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="accounts refreshed at once, by as many threads and as many "
                        "processes (default 16; fewer when a store has fewer accounts)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds of parallel refreshes, after one untimed "
                        "(default 5)")
    parser.add_argument("--token-delay", type=float, default=None,
                        help="seconds the token endpoint takes in the parallel test "
                        "(default 0.2)")
    parser.add_argument("--target", type=float, default=3.0,
                        help="the most a parallel round may take, in single refreshes "
                        "(default 5)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="start no row after this many seconds (default 900)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 10 accounts, 4 at once, 50 ms token endpoint, "
                        "few samples (flags given explicitly still win)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    quick = {"sizes": "10", "samples": 3, "refreshes": 3, "parallel": 4, "rounds": 1,
             "token_delay": 0.05}
    full = {"sizes": "10,1000,10000", "samples": 20, "refreshes": 10, "parallel": 16,
            "rounds": 5, "token_delay": 0.2}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.size_list = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: not a list of numbers: {args.sizes!r}")
    args.store_list = [name.strip() for name in args.stores.split(",") if name.strip()]
    unknown = set(args.store_list) - set(STORES)
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")
    if (min(args.size_list, default=0) < 1 or min(args.samples, args.refreshes,
                                                   args.parallel, args.rounds) < 1
            or args.token_delay < 0):
        parser.error("sizes, samples, refreshes, parallel and rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="refresher-accounts-") as folder, \
            XEmulator(host="127.0.0.1", port=0) as x, \
            WorkerPool(args.parallel) as pool:
        for name in args.store_list:
            label = LABELS[name]
            why = Backend(name, folder).unavailable()
            if why is not None:
                skipped.append({"store": label, "accounts": None, "skipped": why})
                progress(f"{label}: skipped: {why}")
                continue
            try:
                with Backend(name, folder) as backend:
                    for size in args.size_list:
                        if time.monotonic() - started > args.max_seconds:
                            why = f"time limit (--max-seconds {args.max_seconds:g})"
                            skipped.append({"store": label, "accounts": size, "skipped": why})
                            continue
                        try:
                            results.append(run_row(backend, size, x, pool, args))
                        except Exception as exc:
                            why = f"failed: {type(exc).__name__}: {str(exc)[-300:]}"
                            skipped.append({"store": label, "accounts": size, "skipped": why})
                            progress(f"{label} x {size}: {why}")
                            pool.restart()
            except Exception as exc:  # the server did not start
                why = f"{type(exc).__name__}: {str(exc)[-300:]}"
                skipped.append({"store": label, "accounts": None, "skipped": why})
                progress(f"{label}: skipped: {why}")
    report(args, results, skipped, time.monotonic() - started)
    return 0


def report(args: argparse.Namespace, results: list[dict[str, Any]],
           skipped: list[dict[str, Any]], seconds: float) -> None:
    delay = f"{args.token_delay * 1000:g}"
    titles = [title.format(delay if key == "one_slow_refresh_ms" else f"{args.target:g}")
              for key, title in COLUMNS]
    rows: list[list[Any]] = []
    order = {LABELS[name]: i for i, name in enumerate(STORES)}
    entries = [(order[r["store"]], r["accounts"] or 0, r) for r in results + skipped]
    for _, _, entry in sorted(entries, key=lambda item: (item[0], item[1])):
        if "skipped" in entry:
            rows.append([entry["store"], entry["accounts"], f"skipped: {entry['skipped']}"])
            continue
        entry["verdict"] = "met" if entry["target_met"] else "NOT met"
        rows.append([entry[key] for key, _ in COLUMNS])
    notes = [
        "load ms: store.load() of a random account; save ms: lock, load_versioned, "
        f"save_versioned (what a refresh does); medians of {args.samples}.",
        "refresh ms: one coordinated refresh against the emulator answering at once, median "
        f"of {args.refreshes}; one @{delay}: the same with the token endpoint taking "
        f"{delay} ms, median of {args.rounds}.",
        f"N threads / N procs: N different accounts (N = {args.parallel}, or the store's size "
        f"if smaller) refreshed at once with the {delay} ms endpoint, by N threads of one "
        "process (one store object) / by N processes; wall time from the first start to the "
        f"last end, median of {args.rounds} rounds. x: over one @{delay}.",
        f"Target: N at once within {args.target:g}x one refresh, by threads and by "
        "processes, no failed refresh, no reused refresh token.",
    ]
    for entry in results:
        where = f"{entry['store']} x {entry['accounts']}"
        if entry["failed_refreshes"] or entry["reused_refresh_tokens"]:
            notes.append(f"{where}: {entry['failed_refreshes']} failed refreshes, "
                         f"{entry['reused_refresh_tokens']} reused refresh tokens.")
        for error in entry["errors"]:
            notes.append(f"  {where} error: {error.strip().splitlines()[-1][:160]}")
    notes.append(f"Total {seconds:.0f} s.")
    emit(args.json, "accounts: many accounts in one store", titles, rows, notes,
         extra={"results": results, "skipped": skipped, "total_seconds": seconds})


if __name__ == "__main__":
    sys.exit(main())
