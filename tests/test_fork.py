"""Fork after use: a child forked from a process that already used refresher (gunicorn
``--preload``, celery prefork, :mod:`multiprocessing` with fork) refreshes and saves on its
own, and its parent goes on, adopting the child's pair. No lock, hold or connection of the
parent's crosses the fork: a lock a parent thread held at the fork stays the parent's (the
child waits for it like any other process, and never frees it).

Real ``os.fork`` and a fork-context :class:`multiprocessing.pool.Pool`, real stores (JSON,
SQLite, PostgreSQL, Redis), real loopback HTTP. Children report through a pipe and leave
with ``os._exit``; every wait is bounded. The JSON cases run again under filelock 3.x
(installed from the package index into a temporary folder, for a pytest subprocess): the
test environment has filelock 4.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from refresher import (
    JSONTokenStore,
    LockLost,
    LockTimeout,
    RedisTokenStore,
    SQLTokenStore,
    TokenStore,
)

pytestmark = [
    pytest.mark.integration,  # forks, and starts servers
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns on any fork of a process with threads (the emulator serves in one).
    pytest.mark.filterwarnings("ignore:This process:DeprecationWarning"),
]

#: Seconds any wait may take: only for "did not hang", never a speed.
BOUND = 30.0
ACCOUNT = "default"  # make_session's account
STORES = ["json", "sqlite", "postgresql", "postgresql-engine", "redis"]


# -- a forked child, and the pipe to it -------------------------------------------------------

class End:
    """This process's end of a two-way pipe between a forked child and its parent."""

    def __init__(self, reading: int, writing: int, pid: int | None) -> None:
        self._reading, self._writing, self.pid = reading, writing, pid
        self._buffer = b""

    @property
    def in_child(self) -> bool:
        return self.pid is None

    def send(self, **message: Any) -> None:
        os.write(self._writing, json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float = BOUND) -> dict[str, Any]:
        """The next message; the child's traceback, raised, if it failed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reading], [], [], left)[0]:
                raise AssertionError(f"no word from the other process within {timeout} s")
            chunk = os.read(self._reading, 65536)
            if not chunk:
                raise AssertionError("the other process closed the pipe: it died")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        if "failed" in message:
            raise AssertionError("the child failed:\n" + message["failed"])
        return message

    def exit_in_child(self, error: BaseException | None = None) -> NoReturn:
        if error is not None:
            with contextlib.suppress(BaseException):
                self.send(failed="".join(traceback.format_exception(error)))
        os._exit(0)

    def reap(self, timeout: float = BOUND) -> None:
        """Wait for the child's exit (killed after ``timeout``: a hang is a failure)."""
        assert self.pid is not None
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"the child still ran after {timeout} s: it hangs")
            time.sleep(0.01)
        for fd in (self._reading, self._writing):
            os.close(fd)
        self.pid = -1
        assert os.waitstatus_to_exitcode(status) == 0


_children: list[End] = []


@pytest.fixture(autouse=True)
def _no_child_left() -> Iterator[None]:
    yield
    while _children:
        end = _children.pop()
        if end.pid is not None and end.pid > 0:
            with contextlib.suppress(OSError):
                os.kill(end.pid, signal.SIGKILL)
                os.waitpid(end.pid, 0)


def fork() -> End:
    """Fork here: each process gets its end of the pipe (``in_child`` tells which)."""
    to_parent = os.pipe()
    to_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_parent[0])
        os.close(to_child[1])
        return End(to_child[0], to_parent[1], None)
    os.close(to_parent[1])
    os.close(to_child[0])
    end = End(to_parent[0], to_child[1], pid)
    _children.append(end)
    return end


def child(work: Callable[[End], Any]) -> End:
    """Fork a child that runs ``work(its end)``, sends what it returns (``done``) and
    leaves with ``os._exit``; the parent's end."""
    end = fork()
    if end.in_child:
        try:
            end.send(done=work(end))
        except BaseException as error:
            end.exit_in_child(error)
        end.exit_in_child()
    return end


@contextlib.contextmanager
def held_by_another_thread(lock: Any, in_thread: Callable[..., Any]) -> Iterator[None]:
    """``lock`` held by another thread for the block: as at a fork that came while a
    parent thread was inside it."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            assert release.wait(BOUND)

    join = in_thread(hold)
    assert holding.wait(BOUND)
    try:
        yield
    finally:
        release.set()
        join()


# -- stores -----------------------------------------------------------------------------------

@dataclass
class Backend:
    store: TokenStore
    #: Which server connection this process talks through now (None: no server).
    connection: Callable[[], Any]


@pytest.fixture
def make_store(request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[Callable[[str], Backend]]:
    """``make_store(kind)``: a store of ``kind`` (one of STORES) on a throw-away backend;
    "postgresql-engine" is a store on an engine of the caller's, "redis" one on a client of
    the caller's."""
    made: list[TokenStore] = []

    def make(kind: str) -> Backend:
        backend = _backend(kind, request, tmp_path)
        made.append(backend.store)
        return backend

    yield make
    for store in made:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def _backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "json":
        return Backend(JSONTokenStore(tmp_path / "tokens.json"), lambda: None)
    if kind == "sqlite":
        request.getfixturevalue("sqlalchemy_installed")
        return Backend(SQLTokenStore(f"sqlite:///{tmp_path}/tokens.db"), lambda: None)
    if kind.startswith("postgresql"):
        import sqlalchemy

        url = request.getfixturevalue("postgres_url")
        engine = None
        if kind == "postgresql-engine":
            engine = sqlalchemy.create_engine(
                sqlalchemy.make_url(url).set(drivername="postgresql+psycopg"))
            request.addfinalizer(engine.dispose)
        store = SQLTokenStore(engine if engine is not None else url)

        def backend_pid() -> Any:
            with store.engine.connect() as connection:
                return connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()

        return Backend(store, backend_pid)
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        request.addfinalizer(client.close)
        return Backend(RedisTokenStore(client), client.client_id)
    raise AssertionError(kind)


# -- after use, a child refreshes and saves; the parent goes on -------------------------------

@pytest.mark.parametrize("kind", STORES)
def test_a_child_forked_after_use_refreshes_and_saves_and_its_parent_adopts_the_pair(
        kind, make_store, make_session, x_emulator, me_url) -> None:
    x, backend = x_emulator, make_store(kind)
    session = make_session(store=backend.store)
    api = me_url(x)
    assert session.get(api).status_code == 200
    session.refresh()  # the parent used the store's locks, pool and the token endpoint
    parents_connection = backend.connection()
    x.expire_access_token(session.token["access_token"])

    def in_the_child(end: End) -> dict[str, Any]:
        answer = session.get(api)  # 401: the child refreshes and saves
        return {"status": answer.status_code, "token": session.token,
                "connection": backend.connection()}

    end = child(in_the_child)
    done = end.receive()["done"]
    end.reap()
    assert done["status"] == 200
    assert backend.store.load(ACCOUNT) == done["token"]  # the child's pair is the stored one
    if parents_connection is not None:
        assert done["connection"] != parents_connection  # the child connected on its own
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (2, 0)

    # The parent's token was expired too: it adopts the child's pair, spends nothing.
    assert session.get(api).status_code == 200
    assert session.token["access_token"] == done["token"]["access_token"]
    assert x.stats.refreshes == 2
    assert (x.stats.reused_refresh_tokens, x.stats.invalid_refresh_tokens) == (0, 0)


_POOLED: dict[str, Any] = {}


def _request_in_a_pool_worker(_: int) -> dict[str, Any]:
    session, api = _POOLED["session"], _POOLED["api"]
    answer = session.get(api)
    return {"pid": os.getpid(), "status": answer.status_code,
            "access_token": session.token["access_token"]}


@pytest.mark.parametrize("kind", ["json", "sqlite", "redis"])
def test_multiprocessing_fork_pool_workers_share_one_refresh_and_the_parent_adopts_it(
        kind, make_store, make_session, x_emulator, me_url) -> None:
    """As celery prefork: workers forked from a parent that used the session; the first to
    meet the expired token refreshes, every other worker and the parent adopt its pair."""
    x, store = x_emulator, make_store(kind).store
    session = make_session(store=store)
    api = me_url(x)
    session.refresh()
    x.expire_access_token(session.token["access_token"])
    _POOLED.update(session=session, api=api)
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        answers = pool.map_async(_request_in_a_pool_worker, range(6), chunksize=1).get(BOUND)
    finally:
        pool.terminate()
        pool.join()
        _POOLED.clear()
    assert [a["status"] for a in answers] == [200] * 6
    assert {a["access_token"] for a in answers} == {store.load(ACCOUNT)["access_token"]}
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (2, 0)
    assert session.get(api).status_code == 200
    assert session.token == store.load(ACCOUNT)
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (2, 0)


# -- a fork while a lock is held --------------------------------------------------------------

def _lock_files_open(store: JSONTokenStore) -> list[str]:
    """The lock files of ``store`` this process has a descriptor on (Linux: /proc)."""
    ours = {str(store.lock_path), str(store.account_lock_path(ACCOUNT))}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") in ours:
                found.append(fd)
    return found


def test_a_fork_while_a_parent_thread_holds_the_json_account_and_file_locks(
        make_session, x_emulator, me_url, tmp_path, in_thread) -> None:
    """The child inherits no descriptor of the parent's locks, waits for them like any
    other process while the parent holds them, and refreshes once they are released."""
    x = x_emulator
    store = JSONTokenStore(tmp_path / "tokens.json")
    session = make_session(store=store)
    api = me_url(x)
    session.refresh()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock(ACCOUNT, timeout=BOUND), store._file_held(timeout=BOUND):
            holding.set()
            assert release.wait(BOUND)

    join = in_thread(hold)
    assert holding.wait(BOUND)
    x.expire_access_token(session.token["access_token"])

    def in_the_child(end: End) -> dict[str, Any]:
        inherited = _lock_files_open(store) if os.path.isdir("/proc/self/fd") else []
        try:
            with store.lock(ACCOUNT, timeout=0.3):
                blocked = False
        except LockTimeout:
            blocked = True
        end.send(blocked=blocked, inherited=inherited)
        end.receive()  # the parent released its locks
        answer = session.get(api)
        return {"status": answer.status_code, "token": session.token}

    end = child(in_the_child)
    assert end.receive() == {"blocked": True, "inherited": []}
    release.set()
    join()
    end.send(released=True)
    done = end.receive()["done"]
    end.reap()
    assert done["status"] == 200
    assert store.load(ACCOUNT) == done["token"]
    assert session.get(api).status_code == 200
    assert session.token == done["token"]
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (2, 0)


def _still_held_here(store: TokenStore, json_file_lock: bool) -> None:
    """Another thread of this process cannot take the account's lock (nor, for the JSON
    store, its file lock): they are still held."""
    with pytest.raises(LockTimeout), store.lock(ACCOUNT, timeout=0.3):
        pass
    if json_file_lock:
        assert isinstance(store, JSONTokenStore)
        with pytest.raises(LockTimeout), store._file_held(timeout=0.3):
            pass


@pytest.mark.parametrize("kind", ["json", "sqlite", "postgresql", "redis"])
def test_a_child_forked_inside_a_held_lock_holds_nothing_and_frees_nothing(
        kind, make_store, in_thread) -> None:
    """Forked inside ``with store.lock(...)`` (for JSON, inside the file lock too): the
    child does not hold the lock (verify_lock says so: nothing would be spent), leaving
    the block there releases nothing of the parent's, and once the parent released, the
    child takes the lock as any process would."""
    store = make_store(kind).store
    json_file_lock = kind == "json"
    end = None
    try:
        with contextlib.ExitStack() as held:
            held.enter_context(store.lock(ACCOUNT, timeout=BOUND))
            if json_file_lock:
                held.enter_context(store._file_held(timeout=BOUND))
            end = fork()
            if end.in_child:
                try:
                    store.verify_lock(ACCOUNT)
                    lost = False
                except LockLost:
                    lost = True
            else:
                assert end.receive() == {"lost": True}  # the child left the blocks
                in_thread(lambda: _still_held_here(store, json_file_lock))()
        if end.in_child:  # the child left the blocks without releasing anything
            end.send(lost=lost)
            end.receive()  # the parent released
            with store.lock(ACCOUNT, timeout=BOUND):
                store.verify_lock(ACCOUNT)
                store.save(ACCOUNT, {"access_token": "child's", "refresh_token": "r",
                                     "token_type": "bearer", "expires_in": 7200})
            end.send(done=True)
    except BaseException as error:
        if end is not None and end.in_child:
            end.exit_in_child(error)
        raise
    if end.in_child:
        end.exit_in_child()
    end.send(released=True)
    assert end.receive() == {"done": True}
    end.reap()
    assert store.load(ACCOUNT)["access_token"] == "child's"
    with store.lock(ACCOUNT, timeout=5):  # and nothing the child did keeps the lock
        store.verify_lock(ACCOUNT)


def test_a_child_forked_while_a_parent_thread_creates_the_sql_table_uses_the_store(
        make_store, in_thread) -> None:
    """A parent thread was creating the table (holding the store's guard for it) at the
    fork: the child creates it (or finds it) itself instead of waiting for ever."""
    store = make_store("sqlite").store
    token = {"access_token": "child's", "refresh_token": "r", "token_type": "bearer"}

    def in_the_child(end: End) -> Any:
        store.save(ACCOUNT, token)
        return store.load(ACCOUNT)

    with held_by_another_thread(store._table_guard, in_thread):
        end = child(in_the_child)
        assert end.receive()["done"] == token
    end.reap()
    assert store.load(ACCOUNT) == token


def test_a_child_never_takes_back_a_sql_lease_its_parent_could_not_release(
        postgres_server_factory) -> None:
    """A lease the parent could not give back (the database was away) is the parent's to
    take back at once under its old name; a forked child must wait for it like anyone."""
    server = postgres_server_factory()
    store = SQLTokenStore(server.url)
    try:
        with store.lock(ACCOUNT, timeout=BOUND):
            server.stop()  # giving the lease back fails: it stays in the row, live
        server.start()

        def in_the_child(end: End) -> str:
            try:
                with store.lock(ACCOUNT, timeout=0.5):
                    return "took the parent's lease"
            except LockTimeout:
                return "waited"

        end = child(in_the_child)
        assert end.receive()["done"] == "waited"
        end.reap()
        began = time.monotonic()
        with store.lock(ACCOUNT, timeout=BOUND):  # the parent takes its own back at once
            pass
        assert time.monotonic() - began < store.lock_ttl
    finally:
        store.close()


# -- the front ends' own state ----------------------------------------------------------------

class _PeerPort(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the client's port: which connection the request came on."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def peer_port_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PeerPort)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/port"
    server.shutdown()
    server.server_close()


def test_a_forked_child_never_sends_on_its_parents_connections(
        make_session, peer_port_url, in_thread) -> None:
    """The session's adapter gives the child pools of its own: a new connection (two
    processes on one keep-alive socket read each other's answers), and no pool lock a
    parent thread held at the fork. The parent keeps its connection."""
    session = make_session()
    first = session.get(peer_port_url).text
    assert session.get(peer_port_url).text == first  # kept alive and reused
    pools = session.get_adapter(peer_port_url).poolmanager.pools
    with held_by_another_thread(pools.lock, in_thread):
        end = child(lambda end: session.get(peer_port_url).text)
        childs = end.receive()["done"]
    end.reap()
    assert childs != first
    assert session.get(peer_port_url).text == first


def _httpx_get(front: Any, url: str) -> int:
    import httpx

    with httpx.Client(auth=front) as client:
        return client.get(url).status_code


def _httpx_async_get(front: Any, url: str) -> int:
    import httpx

    async def go() -> int:
        async with httpx.AsyncClient(auth=front) as client:
            return (await client.get(url)).status_code

    return asyncio.run(go())


def _aiohttp_get(front: Any, url: str) -> int:
    import aiohttp

    async def go() -> int:
        async with aiohttp.ClientSession(middlewares=[front]) as session:
            async with session.get(url) as response:
                return response.status

    return asyncio.run(go())


FRONT_ENDS = {"httpx": _httpx_get, "httpx-async": _httpx_async_get, "aiohttp": _aiohttp_get}


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_each_front_end_on_a_json_store_refreshes_in_a_forked_child(
        front_end, make_wired, x_emulator, me_url, tmp_path, in_thread) -> None:
    """httpx (sync and async) and aiohttp: the child, with a client of its own (a client is
    the caller's, bound to its loop), refreshes and saves through the front end its parent
    used, even when a parent thread was inside the front end's lock at the fork; the parent
    adopts the child's pair."""
    if front_end == "aiohttp":
        pytest.importorskip("aiohttp")
        from refresher.aiohttp import RefreshingMiddleware as front_class
    else:
        pytest.importorskip("httpx")
        from refresher.httpx import RefreshingAuth as front_class
    x, get, api = x_emulator, FRONT_ENDS[front_end], me_url(x_emulator)
    store = JSONTokenStore(tmp_path / "tokens.json")
    front = make_wired(front_class, store=store)
    assert get(front, api) == 200
    asyncio.run(front.tokens.refresh())  # the async path: a loop lock, a worker thread
    x.expire_access_token(front.token["access_token"])
    with held_by_another_thread(front.tokens._guard, in_thread):
        end = child(lambda end: {"status": get(front, api), "token": front.token})
        done = end.receive()["done"]
    end.reap()
    assert done["status"] == 200
    assert store.load(ACCOUNT) == done["token"]
    assert get(front, api) == 200
    assert front.token == done["token"]
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (2, 0)


# -- the JSON cases under filelock 3.x --------------------------------------------------------

#: filelock 3.x releases the JSON cases also run under: the oldest setup.cfg allows (no
#: singleton option, no fork handling), the last with a singleton cache but no fork handling
#: (it hands a child the inherited lock object), and the newest 3.x (it refuses one, as 4.x).
#: The default run takes the middle one (a child gets the parent's lock object, the case
#: refresher must catch itself); ``-m soak`` the other two.
FILELOCK_3 = [pytest.param("filelock>=3.12,<3.13", marks=pytest.mark.soak),
              "filelock>=3.25,<3.26",
              pytest.param("filelock>=3.26,<4", marks=pytest.mark.soak)]
_UNDER = "REFRESHER_TEST_FILELOCK"


@pytest.fixture(scope="session")
def filelock_3_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders holding a filelock 3.x, by requirement: installed on first use, kept for the
    session."""
    return {}


def _install(requirement: str, folders: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory,
             missing: Callable[[str], NoReturn]) -> Path:
    if requirement not in folders:
        folder = tmp_path_factory.mktemp("filelock3")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
             str(folder), requirement],
            capture_output=True, text=True, timeout=180,
        )
        if done.returncode != 0:
            missing(f"cannot install {requirement} from the package index: "
                    f"{done.stderr[-300:]}")
        folders[requirement] = folder
    return folders[requirement]


def test_json_runs_under_the_filelock_asked_for() -> None:
    """In the filelock 3.x runs: the filelock imported is the one installed for the run."""
    requirement = os.environ.get(_UNDER)
    if not requirement:
        pytest.skip(f"only in a run under filelock 3.x ({_UNDER} set)")
    import filelock

    assert filelock.__version__.startswith("3."), filelock.__version__
    assert Path(filelock.__file__).is_relative_to(os.environ["PYTHONPATH"].split(os.pathsep)[0])


@pytest.mark.parametrize("requirement", FILELOCK_3)
def test_the_json_fork_cases_pass_under_filelock_3(
        requirement, filelock_3_folders, tmp_path_factory, missing) -> None:
    if os.environ.get(_UNDER):
        pytest.skip("already a run under filelock 3.x")
    folder = _install(requirement, filelock_3_folders, tmp_path_factory, missing)
    env = dict(os.environ, **{_UNDER: requirement})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", __file__,
         "-k", "json and not under_filelock_3"],
        capture_output=True, text=True, timeout=300, env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], \
        run.stdout[-2000:]


# -- a fork while a background refresh holds the coordinator's locks ---------------------------

@pytest.mark.parametrize("kind", ["json", "sqlite", "redis"])
def test_a_child_forked_during_a_background_refresh_starts_free_and_adopts_the_parents_pair(
        kind, make_store, make_session, x_emulator_factory, me_url, wait_for) -> None:
    from refresher import RefreshPolicy

    x = x_emulator_factory(token_delay=1.5)
    backend = make_store(kind)
    # 100-second tokens with 8 s left: inside the leeway, outside its wait margin, so the
    # request goes out as it is and a background run refreshes.
    seed = dict(x.issue_token(), expires_in=100, expires_at=time.time() + 8)
    session = make_session(store=backend.store, token=seed, emulator=x,
                           policy=RefreshPolicy(lock_timeout=10.0))
    coordinator = session.coordinator
    assert session.get(me_url(x)).status_code == 200
    wait_for(lambda: x.stats.token_requests == 1, "the background refresh to reach X")
    assert coordinator._background.running  # it holds the thread lock and the store's lock

    def in_the_child(end: End) -> dict[str, Any]:
        phantom = coordinator._background.running
        # A refresh of the token the parent is replacing: the thread lock is free here; the
        # store's lock is the parent's until it has saved, and then its pair is adopted.
        token = coordinator.refresh(replacing=seed["access_token"])
        return {"phantom": phantom, "token": token}

    end = child(in_the_child)
    done = end.receive()["done"]
    end.reap()
    assert done["phantom"] is False
    assert coordinator.wait_for_background(BOUND)
    assert done["token"]["refresh_token"] == session.token["refresh_token"]
    assert backend.store.load(ACCOUNT)["refresh_token"] == session.token["refresh_token"]
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (1, 0)
