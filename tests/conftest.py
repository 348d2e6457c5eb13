"""Shared fixtures: sessions wired to the emulator (served by the refresher pytest plugin),
the emulator's ``/2/users/me`` URL, throw-away ``redis-server`` and PostgreSQL servers, and
what a test does when something it needs is missing here.

Something a test needs and this machine lacks (the ``redis-server`` binary, the PostgreSQL
server, SQLAlchemy, access to the package index) skips the test, except in CI
(``CI=true``), where it fails it: CI provides all of them (``.ci/run`` installs the Debian
packages ``redis-server`` and ``postgresql``).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from refresher import MemoryTokenStore, RefreshingSession, TokenStore
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
def shared_redis_server(redis_binary: str, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[RedisServer]:
    """One redis-server for the whole run, for tests that keep to keys (and ACL users) of
    their own; stopped at the end."""
    server = RedisServer(redis_binary, tmp_path_factory.mktemp("redis-shared"))
    server.start()
    yield server
    server.kill()


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


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(condition, what, timeout=15.0)``: poll ``condition`` every 5 ms until it
    holds; fail the test naming ``what`` after ``timeout`` seconds."""

    def wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.005)

    return wait
