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
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from refresher import MemoryTokenStore, RefreshingSession, RefreshPolicy, TokenStore
from refresher.demo.workload import WorkerReport, WorkloadSpec, run_workers, summarize
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
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

    def run_with_outage(self, x: XEmulator, store: str, *, processes: int, threads: int,
                        seconds: float, stored_expiry: Callable[[], float],
                        stop: Callable[[], None], start: Callable[[], None],
                        down_for: float = 2.0) -> Outage:
        """Run workers, and take the store away (``stop``) for ``down_for`` seconds in the
        middle of a pair's life, then bring it back (``start``).

        The outage starts once the second pair is stored (every process has had a token
        lifetime to start and take it), 0.45 of a lifetime before that pair expires: clear
        of its refresh (in the last 0.1), and 0.45 of a lifetime after the previous pair
        ran out (so a process that sent anything since holds the current one). It outlasts
        the pair, so requests need the store while it is down.
        """
        timeline: list[tuple[float, int, int]] = []
        outcome: dict[str, Any] = {}
        spec = self.spec(x, store, threads=threads, seconds=seconds)

        def run() -> None:
            try:
                outcome["reports"] = run_workers(
                    spec, processes, seed=x.issue_token(), progress_interval=0.25,
                    progress=lambda done, bad, _: timeline.append((time.time(), done, bad)))
            except BaseException as exc:  # raised in the test's thread below
                outcome["error"] = exc

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        _wait(lambda: x.stats.refreshes >= 2, "the second pair", 60)
        while True:
            expires_at = stored_expiry()
            target = expires_at - 0.45 * x.access_ttl
            if target > time.time() + 0.01:
                break
            time.sleep(0.05)
        time.sleep(target - time.time())
        stop()
        down_at = time.time()
        time.sleep(down_for)
        start()
        up_at = time.time()
        runner.join(seconds + 90)
        assert not runner.is_alive(), "the workers still run: they hang"
        if "error" in outcome:
            raise outcome["error"]
        reports: list[WorkerReport] = outcome["reports"]
        result = self.summary(reports, x, seconds=seconds)
        print(f"down {up_at - down_at:.1f} s")
        return Outage(result, reports, timeline, expires_at - x.access_ttl, down_at, up_at)


@dataclasses.dataclass
class Outage:
    """What :meth:`Workload.run_with_outage` saw: the summary, each process's report, the
    progress (time, requests, failed) every 0.25 s, and when the pair stored at the outage
    was granted, the store went down and came back."""

    result: dict[str, Any]
    reports: list[WorkerReport]
    timeline: list[tuple[float, int, int]]
    granted_at: float
    down_at: float
    up_at: float

    def assert_nothing_spent_twice(self, x: XEmulator) -> None:
        """No refresh token reused or refused. (Were one reused, the message says which
        processes sent no request between the pair's grant and the outage: a process
        starved that long still held the previous pair when the store came back.)"""
        took_part = [any(self.granted_at < began < self.down_at for began, _ in r.latencies)
                     for r in self.reports]
        assert self.result["reused_refresh_tokens"] == 0, (self.result, took_part)
        assert x.stats.invalid_refresh_tokens == 0, (self.result, took_part)

    def assert_recovered(self, grace: float = 1.0) -> None:
        """From ``grace`` seconds after the store came back to the end, no request failed,
        and every process sent requests."""
        after = [sample for sample in self.timeline if sample[0] >= self.up_at + grace]
        assert after, ("the run ended before the store had been back for "
                       f"{grace} s", self.timeline)
        since, _, failed_then = after[0]
        assert self.result["failed"] == failed_then, (after, self.result["errors"])
        for i, report in enumerate(self.reports):
            assert any(began >= since for began, _ in report.latencies), \
                f"process {i} sent no request after the store came back"


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
