"""Shared fixtures: sessions wired to the emulator (served by the refresher pytest plugin),
the emulator's ``/2/users/me`` URL, throw-away ``redis-server`` and PostgreSQL servers, and
what a test does when something it needs is missing here.

Something a test needs and this machine lacks (the ``redis-server`` binary, the PostgreSQL
server, SQLAlchemy, access to the package index) skips the test, except in CI
(``CI=true``), where it fails it: CI provides all of them (``.ci/run`` installs the Debian
packages ``redis-server`` and ``postgresql``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from doc_blocks import doc_block
from fakes import FakeEndpoint

from refresher import MemoryTokenStore, RefreshingSession, RefreshPolicy, TokenStore
from refresher.demo.workload import WorkerReport, WorkloadSpec, run_workers, summarize
from refresher.testing import DEFAULT_CLIENT_ID, FakeClock, XEmulator
from refresher.testing.postgres_server import PostgresServer, find_bin_dir
from refresher.testing.redis_server import RedisServer


def _missing(message: str) -> NoReturn:
    """Skip the test: ``message`` says what is missing; in CI, where it must not be, fail it."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(message + " — and CI=true, where it must be", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def missing() -> Callable[[str], NoReturn]:
    """``missing(message)``: skip the test (fail it in CI), ``message`` saying what is missing."""
    return _missing


@pytest.fixture(scope="session")
def me_url() -> Callable[[XEmulator], str]:
    """``me_url(x)``: the URL of emulator ``x``'s ``/2/users/me``."""

    def url(x: XEmulator) -> str:
        return x.api_url + "/2/users/me"

    return url


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The path of ``redis-server``; skip (fail in CI) when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server is not installed (Debian/Ubuntu: apt-get install "
                 "redis-server); the Redis store tests need a real server")
    return binary


@pytest.fixture
def redis_server_factory(redis_binary: str, tmp_path_factory: pytest.TempPathFactory
                         ) -> Iterator[Callable[..., RedisServer]]:
    """``make(*extra_args)``: a started RedisServer (loopback, a free port, no persistence),
    with extra ``redis-server`` arguments (for example ``"--requirepass", "pw"``); all are
    stopped after the test."""
    servers: list[RedisServer] = []

    def make(*extra_args: str) -> RedisServer:
        server = RedisServer(redis_binary, tmp_path_factory.mktemp("redis"), extra_args)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A started redis-server on 127.0.0.1 and a free port, no persistence."""
    return redis_server_factory()


@pytest.fixture(scope="session")
def shared_redis_server(redis_binary: str, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[RedisServer]:
    """One redis-server for the whole run, for tests that keep to keys (and ACL users) of
    their own; stopped at the end."""
    server = RedisServer(redis_binary, tmp_path_factory.mktemp("redis-shared"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built by the command docs/development.rst prints (``-W``: warnings are
    errors), with this interpreter, into a temporary folder: once per test run, whichever
    xdist worker asks first (the others wait for it on a file lock)."""
    try:
        import furo  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("sphinx and furo are not installed (pip install -e '.[docs]')")
    from filelock import FileLock

    build = doc_block("docs/development.rst", "from a fresh virtual environment:"
                      ).splitlines()[1]
    shared = tmp_path_factory.getbasetemp().parent  # one folder for all the workers
    out = shared / "docs-html"
    with FileLock(str(shared / "docs-html.lock"), timeout=600):
        if not (out / "index.html").is_file():
            command = [sys.executable, *shlex.split(build)[1:-1], str(out)]
            result = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent,
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def sqlalchemy_installed() -> None:
    """Skip the test (fail it in CI) when SQLAlchemy or psycopg, the ``[sql]`` extra, is
    missing."""
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        _missing(f"{exc.name} is not installed (pip install -e '.[test]'); the SQL store "
                 "tests need SQLAlchemy and psycopg")


@pytest.fixture(scope="session")
def postgres_bin_dir(sqlalchemy_installed: None) -> Path:
    """The folder of the PostgreSQL server binaries; skip (fail in CI) when there are none."""
    found = find_bin_dir()
    if found is None:
        _missing("the PostgreSQL server is not installed (Debian/Ubuntu: apt-get install "
                 "postgresql); the SQL store's PostgreSQL tests need a real server")
    return found


@pytest.fixture(scope="session")
def postgres_server(postgres_bin_dir: Path) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run, on 127.0.0.1 and a free port; each test
    takes a database of its own from it (``postgres_url``). Stopped, and its folder removed,
    at the end."""
    server = PostgresServer(postgres_bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the shared server (the superuser, trusted);
    dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty database: a SQLite file, or a new PostgreSQL database (the SQL
    store's tests run once on each)."""
    if request.param == "sqlite":
        request.getfixturevalue("sqlalchemy_installed")
        return f"sqlite:///{tmp_path / 'tokens.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def postgres_server_factory(postgres_bin_dir: Path) -> Iterator[Callable[[], PostgresServer]]:
    """``make()``: a started PostgreSQL server of the test's own, to stop and start at will
    (a cluster of its own: about a second); all are stopped and removed after the test."""
    servers: list[PostgresServer] = []

    def make() -> PostgresServer:
        server = PostgresServer(postgres_bin_dir)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()
        server.cleanup()


@pytest.fixture
def make_wired(x_emulator: XEmulator) -> Iterator[Callable[..., Any]]:
    """``make_wired(cls, store=None, token="fresh", emulator=None, **kw)``: a
    ``RefreshingSession``, ``RefreshingAuth`` or ``RefreshingMiddleware`` (``cls``).

    Wired to ``x_emulator`` (or the given emulator), seeded with a fresh emulator token
    unless ``token`` is given, a memory store unless ``store`` is; closed after the test.
    """
    made: list[Any] = []

    def make(cls: Any, store: TokenStore | None = None, token: Any = "fresh",
             emulator: XEmulator | None = None, **kw: Any) -> Any:
        x = emulator or x_emulator
        if isinstance(token, str) and token == "fresh":
            token = x.issue_token()
        kw.setdefault("client_id", DEFAULT_CLIENT_ID)
        kw.setdefault("token_url", x.token_url)
        kw.setdefault("api_url", x.api_url)
        front = cls(store=store if store is not None else MemoryTokenStore(), token=token, **kw)
        made.append(front)
        return front

    yield make
    for front in made:
        front.close()


@pytest.fixture
def make_session(make_wired: Callable[..., Any]) -> Callable[..., RefreshingSession]:
    """``make_session(store=None, token="fresh", emulator=None, **kw)``: a
    RefreshingSession from :func:`make_wired`."""
    return functools.partial(make_wired, RefreshingSession)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record from every logger, at DEBUG (to prove no secret is ever logged)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run the ``refresher`` command as a process (the ``cli`` fixture) are
    integration tests, like those marked so by hand: ``-m "not integration"`` is the fast
    loop."""
    for item in items:
        if "cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def in_thread() -> Callable[[Callable[[], Any]], Callable[..., Any]]:
    """``join = in_thread(call)`` runs ``call`` in a daemon thread; ``join(timeout=30)``
    returns what it returned or raises what it raised, and fails the test if it still runs
    (a hang is a failure, not a stuck suite)."""

    def start(call: Callable[[], Any]) -> Callable[..., Any]:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = call()
            except BaseException as exc:  # handed to join()
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def join(timeout: float = 30.0) -> Any:
            thread.join(timeout)
            assert not thread.is_alive(), f"still running after {timeout} s: it hangs"
            if "error" in outcome:
                raise outcome["error"]
            return outcome["value"]

        return join

    return start


def _wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(condition, what, timeout=15.0)``: poll ``condition`` every 5 ms until it
    holds; fail the test naming ``what`` after ``timeout`` seconds."""
    return _wait


class Workload:
    """Worker processes sharing one account through a store (``refresher.demo.workload``),
    and what a run of them must show, whatever the load on the machine."""

    @staticmethod
    def spec(x: XEmulator, store: str, *, threads: int, seconds: float,
             **fields: Any) -> WorkloadSpec:
        """Threads calling emulator ``x``'s ``/2/users/me`` through ``store`` for
        ``seconds``, each request's start and length recorded."""
        return WorkloadSpec(store=store, account="shared", client_id=DEFAULT_CLIENT_ID,
                            token_url=x.token_url, api_url=x.api_url, threads=threads,
                            seconds=seconds, collect_latencies=True, **fields)

    def run(self, x: XEmulator, store: str, *, processes: int, threads: int,
            seconds: float, **fields: Any) -> dict[str, Any]:
        """Run ``processes`` workers to the end, seeded with a token that has expired by
        the time they start (so every one of them needs the first refresh); the summary."""
        spec = self.spec(x, store, threads=threads, seconds=seconds, **fields)
        reports = run_workers(spec, processes, seed=x.issue_token())
        return self.summary(reports, x, seconds=seconds)

    @staticmethod
    def summary(reports: list[WorkerReport], x: XEmulator, *,
                seconds: float) -> dict[str, Any]:
        """``summarize``'s numbers, plus the requests of each process, the seconds from the
        first request's start to the last one's end (``active_seconds``: on a loaded
        machine workers start late and stall, so this is the span that counts), and the
        first errors. Printed, for the figures."""
        result = summarize(reports, x.stats.as_dict(), processes=len(reports),
                           seconds=seconds, access_ttl=x.access_ttl)
        samples = [sample for report in reports for sample in report.latencies]
        first = min((began for began, _ in samples), default=0.0)
        last = max((began + took for began, took in samples), default=0.0)
        result.update(requests_per_process=[report.requests for report in reports],
                      active_seconds=round(max(0.0, last - first), 3),
                      access_ttl=x.access_ttl,
                      errors=[e for report in reports for e in report.errors][:5])
        print(result)
        return result

    @staticmethod
    def assert_coordinated(result: dict[str, Any]) -> None:
        """No failed request, no refresh token spent twice, every process took part, and
        never more refreshes than one store-coordinated refresh per lifetime allows.

        Refreshes go one at a time through the store, each when the stored token has
        reached its last ``leeway_max_fraction`` of life (or a sibling's is adopted): so
        they are at least (1 - that fraction) of a lifetime apart, however slow the
        machine. Over the span in which requests ran, that is at most span / (0.9 ttl),
        plus the first (the seed has expired) and one a last request set off in the
        background. Processes that do not share the pair refresh once each per lifetime:
        several times this bound. Fewer refreshes prove nothing wrong (a starved machine
        sends fewer requests), so there is no lower bound beyond the first one.
        """
        assert result["failed"] == 0, result["errors"]
        assert result["reused_refresh_tokens"] == 0, result
        assert all(n > 0 for n in result["requests_per_process"]), result
        apart = (1 - RefreshPolicy().leeway_max_fraction) * result["access_ttl"]
        assert 1 <= result["refreshes"] <= result["active_seconds"] / apart + 2, result

    def outage(self, x: XEmulator, store: str, *, processes: int, threads: int,
               stored_expiry: Callable[[], float], stop: Callable[[], None],
               start: Callable[[], None]) -> Outage:
        """Worker processes using the account through ``store``; the store taken away
        (``stop``) in the middle of a pair's life and brought back (``start``).

        Each step waits for what it needs instead of a clock: the store goes down once
        every process has had a request through since the previous pair ran out (so each
        holds the current pair), 0.45 of a lifetime before that pair expires (clear of its
        refresh, in the last 0.1); it stays down until every process has had a request
        refused for want of it (the pair ran out meanwhile); the workers end once every
        process has had requests through again, with a refresh after the restart.
        """
        RefreshingSession(DEFAULT_CLIENT_ID, store=store, account="shared",
                          token=x.issue_token(), token_url=x.token_url,
                          api_url=x.api_url).close()  # the first pair
        ttl = x.access_ttl
        users = StoreUsers(x, store, processes, threads)
        try:
            users.wait(lambda: all(users.through_since(i, 0.0) for i in users.indexes),
                       "a request through in every process")
            while True:  # a pair in mid-life that every process holds
                expires_at = stored_expiry()
                target = expires_at - 0.45 * ttl
                users.wait(lambda: time.time() >= target or all(
                    users.through_since(i, expires_at - 0.9 * ttl) for i in users.indexes),
                    "requests through with the current pair")
                if time.time() < target:
                    break
                users.wait(lambda: stored_expiry() != expires_at, "the next pair")
            time.sleep(max(0.0, target - time.time()))
            stop()
            down_at = time.time()
            users.wait(lambda: all(users.refused_since(i, down_at) for i in users.indexes),
                       "a request refused in every process while the store is down")
            start()
            up_at = time.time()
            users.wait(lambda: all(users.through_since(i, up_at) for i in users.indexes),
                       "a request through in every process after the restart")
            refreshed = x.stats.refreshes
            again = time.time()
            users.wait(lambda: x.stats.refreshes > refreshed and all(
                users.through_since(i, again) for i in users.indexes), "the next refresh")
        finally:
            users.stop()
        print(f"down {up_at - down_at:.1f} s", users.summary())
        return Outage(users, expires_at - ttl, down_at, up_at)


class StoreUsers:
    """Worker processes calling ``/2/users/me`` through one store, each in ``threads``
    threads, until stopped; what each saw, as (time the request began, error or None)."""

    _SCRIPT = """
import json, sys, threading, time
from refresher import RefreshingSession, open_store
store, token_url, api_url, client_id, threads = sys.argv[1:6]
session = RefreshingSession(client_id, store=open_store(store), account="shared",
                            token_url=token_url, api_url=api_url)
url, stop, lock, last = api_url + "/2/users/me", threading.Event(), threading.Lock(), [0.0]

def loop():
    while not stop.is_set():
        began = time.time()
        try:
            answer = session.get(url, timeout=30)
            error = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        with lock:  # every refusal, and a request through every 20 ms
            if error is not None or began - last[0] >= 0.02:
                last[0] = max(last[0], began)
                print(json.dumps([began, error]), flush=True)

loops = [threading.Thread(target=loop) for _ in range(int(threads))]
for thread in loops:
    thread.start()
sys.stdin.read()  # until the test closes it
stop.set()
for thread in loops:
    thread.join()
session.close()
"""

    def __init__(self, x: XEmulator, store: str, processes: int, threads: int) -> None:
        self.indexes = range(processes)
        self.seen: list[list[tuple[float, str | None]]] = [[] for _ in self.indexes]
        # A file, not a pipe: warnings logged while the store is down must never block.
        self._stderr = [tempfile.TemporaryFile("w+") for _ in self.indexes]
        self.processes = [subprocess.Popen(
            [sys.executable, "-c", self._SCRIPT, store, x.token_url, x.api_url,
             DEFAULT_CLIENT_ID, str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr[i], text=True)
            for i in self.indexes]
        self._readers = [threading.Thread(target=self._read, args=(i,), daemon=True)
                         for i in self.indexes]
        for reader in self._readers:
            reader.start()

    def _read(self, i: int) -> None:
        stdout = self.processes[i].stdout
        assert stdout is not None
        for line in stdout:
            began, error = json.loads(line)
            self.seen[i].append((began, error))

    def through_since(self, i: int, moment: float) -> bool:
        """Whether process ``i`` had a request through that began at ``moment`` or later."""
        return any(error is None and began >= moment for began, error in self.seen[i])

    def refused_since(self, i: int, moment: float) -> bool:
        """Whether process ``i`` had a request refused that began at ``moment`` or later."""
        return any(error is not None and began >= moment for began, error in self.seen[i])

    def errors(self) -> list[str]:
        """Every refusal's error, in every process."""
        return [error for seen in self.seen for _, error in seen if error is not None]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Wait for ``condition``; fail naming ``what`` (and what a process said, if one
        ended) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            ended = [i for i in self.indexes if self.processes[i].poll() is not None]
            if ended or time.monotonic() > deadline:
                said = self._said(ended[0]) if ended else ""
                raise AssertionError(f"timed out waiting for {what}; {self.summary()} {said}")
            time.sleep(0.01)

    def _said(self, i: int) -> str:
        self._stderr[i].seek(0)
        return self._stderr[i].read()[-3000:]

    def stop(self) -> None:
        """Let the workers end, and check that they ended well."""
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for i, process in enumerate(self.processes):
            try:
                process.wait(30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            self._readers[i].join(10)
            said = self._said(i)
            self._stderr[i].close()
            assert process.returncode == 0, said

    def summary(self) -> dict[str, Any]:
        """Lines seen and refusals, per process; the first errors."""
        return {"lines": [len(seen) for seen in self.seen],
                "refused": [sum(e is not None for _, e in seen) for seen in self.seen],
                "errors": self.errors()[:3]}


@dataclasses.dataclass
class Outage:
    """What :meth:`Workload.outage` saw: the workers, and when the pair stored at the outage
    was granted, the store went down and came back."""

    users: StoreUsers
    granted_at: float
    down_at: float
    up_at: float

    def assert_nothing_spent_twice(self, x: XEmulator) -> None:
        """No refresh token reused or refused at X."""
        assert x.stats.reused_refresh_tokens == 0, self.users.summary()
        assert x.stats.invalid_refresh_tokens == 0, self.users.summary()

    def assert_recovered(self) -> None:
        """Once a process had a request through after the store came back, none of its
        requests failed."""
        for i in self.users.indexes:
            back = min(began for began, error in self.users.seen[i]
                       if error is None and began >= self.up_at)
            late = [(began - self.up_at, error) for began, error in self.users.seen[i]
                    if error is not None and began > back]
            assert late == [], f"process {i} failed after it was through again: {late[:3]}"


@pytest.fixture
def workload() -> Workload:
    """Run worker processes that share one account, and check what they must show
    (:class:`Workload`)."""
    return Workload()


class Heartbeat:
    """A task that ticks every 20 ms on the event loop, and beside it a thread that ticks
    every 20 ms too (the control): a loop held by a blocking call stops ticking while the
    thread goes on; a machine too busy to run either stalls both alike."""

    def __init__(self) -> None:
        self.loop_ticks: list[float] = []
        self.control_ticks: list[float] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Heartbeat]:
        """Both tick while the block runs (and once more as it ends)."""
        stop = threading.Event()

        def control() -> None:
            while True:
                self.control_ticks.append(time.monotonic())
                if stop.wait(0.02):
                    self.control_ticks.append(time.monotonic())
                    return

        async def beat() -> None:
            while True:
                self.loop_ticks.append(time.monotonic())
                if stop.is_set():
                    return
                await asyncio.sleep(0.02)

        thread = threading.Thread(target=control, daemon=True)
        thread.start()
        task = asyncio.create_task(beat())
        try:
            yield self
        finally:
            stop.set()
            await task
            thread.join(5)

    @staticmethod
    def largest_gap(ticks: list[float]) -> float:
        """The longest time between two ticks (infinite with fewer than two)."""
        return max((b - a for a, b in zip(ticks, ticks[1:])), default=float("inf"))

    def loop_stall(self) -> float:
        """How much longer the loop's largest gap was than the control's: what the loop
        itself was held for, not the machine."""
        return self.largest_gap(self.loop_ticks) - self.largest_gap(self.control_ticks)


@pytest.fixture
def heartbeat() -> Heartbeat:
    """A :class:`Heartbeat`: ``async with heartbeat.running(): ...``, then
    ``heartbeat.loop_stall()``."""
    return Heartbeat()


@pytest.fixture(autouse=True)
def _no_key_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A REFRESHER_KEY in the developer's shell would encrypt every store the tests open:
    the tests that want one set it themselves."""
    monkeypatch.delenv("REFRESHER_KEY", raising=False)


# -- a fake token endpoint on a fake clock (tests/fakes.py), for the unit tests -----------

@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def endpoint(clock: FakeClock) -> FakeEndpoint:
    return FakeEndpoint(clock)
