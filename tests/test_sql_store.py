"""SQLTokenStore against SQLite (a file in the test's folder) and a real PostgreSQL server
(started by the tests): the rows, the leases, the fencing, the errors, and the
multi-process runs and faults of the "Many accounts" issue (processes stand for hosts:
they share nothing but the database URL)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import refresher
from refresher import (
    LockLost,
    LockTimeout,
    RefreshingSession,
    SQLTokenStore,
    StaleTokenError,
    TokenStoreError,
    open_store,
)
from refresher.stores.sql import DEFAULT_LOCK_TTL
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
from refresher.testing.net import free_port

ACCOUNT = "alice"
TOKEN = {"access_token": "at-1", "refresh_token": "rt-1", "token_type": "bearer",
         "expires_in": 7200, "expires_at": 2_000_000_000.0, "scope": "tweet.read"}


@pytest.fixture
def make_store(db_url: str) -> Iterator[Callable[..., SQLTokenStore]]:
    """``make_store(url=None, **options)``: an SQLTokenStore on the test's database."""
    made: list[SQLTokenStore] = []

    def make(url: str | None = None, **options: Any) -> SQLTokenStore:
        store = SQLTokenStore(url or db_url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def raw(db_url: str) -> Iterator[sa.Engine]:
    """A plain engine on the test's database, to look behind the store's back."""
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    yield engine
    engine.dispose()


def _rows(engine: sa.Engine, table: str = "refresher_tokens") -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608
        return {row["account"]: dict(row) for row in result.mappings()}


def _session(x: XEmulator, store: SQLTokenStore, token: Any = None,
             account: str = ACCOUNT, **kw: Any) -> RefreshingSession:
    return RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=account, token=token,
                             token_url=x.token_url, api_base_url=x.api_url, **kw)


# -- the lock's lifetime ---------------------------------------------------------------------

def test_the_default_lock_ttl_outlives_a_grant() -> None:
    assert DEFAULT_LOCK_TTL >= 20.0  # the token endpoint's 15 s deadline plus 5 s
    assert SQLTokenStore.__init__.__defaults__ is not None
    assert DEFAULT_LOCK_TTL in SQLTokenStore.__init__.__defaults__


# -- the rows --------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["sqlite", "postgresql", "postgresql+psycopg"])
def test_open_store_makes_a_sql_store_from_a_url(scheme, request, tmp_path) -> None:
    if scheme == "sqlite":
        request.getfixturevalue("sqlalchemy_installed")
        url = f"sqlite:///{tmp_path / 'tokens.db'}"
        server = f"sqlite:///{tmp_path / 'tokens.db'}"
    else:
        url = request.getfixturevalue("postgres_url").replace("postgresql", scheme, 1)
        server = "postgresql://" + url.partition("@")[2]
    store = open_store(url, table="app_tokens", lock_ttl=25)
    try:
        assert isinstance(store, SQLTokenStore)
        assert store.table == "app_tokens" and store.lock_ttl == 25
        assert repr(store) == f"SQLTokenStore('{server}', table='app_tokens')"
        with store.lock(ACCOUNT):
            store.save(ACCOUNT, TOKEN)
        again = open_store(url, table="app_tokens")
        assert again.load(ACCOUNT) == TOKEN
        again.close()
    finally:
        store.close()


def test_one_row_per_account_token_json_version_updated_at(make_store, raw) -> None:
    store = make_store()
    assert store.load(ACCOUNT) is None and store.accounts() == []
    with store.lock(ACCOUNT):
        store.save(ACCOUNT, TOKEN)
        row = _rows(raw)[ACCOUNT]
        assert row["lease_owner"] is not None and row["lease_until"] > time.time()
    row = _rows(raw)[ACCOUNT]
    assert json.loads(row["token"]) == TOKEN
    assert row["version"] == 1
    assert abs(row["updated_at"] - time.time()) < 60
    assert row["lease_owner"] is None and row["lease_until"] is None  # released
    assert store.load(ACCOUNT) is not store.load(ACCOUNT)  # a fresh copy each time
    store.save(ACCOUNT, dict(TOKEN, access_token="at-2"))
    assert store.version(ACCOUNT) == 2
    assert list(_rows(raw)) == [ACCOUNT]


def test_the_table_is_created_when_missing_and_tables_are_kept_apart(make_store,
                                                                     raw) -> None:
    mine, theirs = make_store(), make_store(table="other_app_tokens")
    mine.save("carol", TOKEN)
    theirs.save("zed", TOKEN)
    assert mine.accounts() == ["carol"] and theirs.accounts() == ["zed"]
    assert set(sa.inspect(raw).get_table_names()) == {"refresher_tokens",
                                                      "other_app_tokens"}
    assert make_store().accounts() == ["carol"]  # an existing table is used as it is


def test_a_lease_on_an_account_with_no_token_leaves_no_row(make_store, raw) -> None:
    store = make_store()
    with store.lock("newcomer"):
        assert "newcomer" in _rows(raw)  # the lease needs a row
        assert store.accounts() == []    # ... which is not an account
    assert _rows(raw) == {}


def test_metadata_sits_beside_the_token_and_delete_forgets_both(make_store) -> None:
    store = make_store()
    assert store.load_metadata(ACCOUNT) == {}
    store.save_metadata("dave", {"client_id": "c"})  # metadata alone is not an account
    store.save(ACCOUNT, TOKEN)
    store.save_metadata(ACCOUNT, {"client_id": "my-client", "token_url": "https://x"})
    metadata = store.load_metadata(ACCOUNT)
    assert metadata["client_id"] == "my-client"
    assert abs(metadata["updated_at"] - time.time()) < 60
    assert store.load(ACCOUNT) == TOKEN
    assert store.accounts() == [ACCOUNT]
    store.delete(ACCOUNT)
    store.delete("nobody")
    assert store.load(ACCOUNT) is None
    assert store.load_metadata(ACCOUNT) == {}
    assert store.accounts() == []


def test_delete_under_a_held_lease_keeps_the_lease(make_store, raw) -> None:
    store, other = make_store(), make_store()
    store.save(ACCOUNT, TOKEN)
    with store.lock(ACCOUNT):
        other.delete(ACCOUNT)
        assert store.load(ACCOUNT) is None
        with pytest.raises(LockTimeout):
            with other.lock(ACCOUNT, timeout=0):
                pass
        store.verify_lock(ACCOUNT)  # still ours
    assert _rows(raw) == {}


def test_a_corrupt_row_is_reported_and_left_untouched(make_store, raw) -> None:
    store = make_store()
    store.save(ACCOUNT, TOKEN)
    with raw.begin() as connection:
        connection.execute(sa.text("UPDATE refresher_tokens SET token = '{not json'"))
    with pytest.raises(TokenStoreError, match="not valid JSON") as caught:
        store.load(ACCOUNT)
    assert "'alice'" in str(caught.value) and "refresher_tokens" in str(caught.value)
    assert _rows(raw)[ACCOUNT]["token"] == "{not json"


# -- the lease -------------------------------------------------------------------------------

def test_lock_timeout_names_server_account_and_holder(make_store) -> None:
    holder, waiter = make_store(), make_store()
    with holder.lock(ACCOUNT):
        with pytest.raises(LockTimeout) as caught:
            with waiter.lock(ACCOUNT, timeout=0.2):
                pass
    message = str(caught.value)
    assert isinstance(caught.value, TokenStoreError)
    assert holder.server in message and "'alice'" in message
    assert f":{os.getpid()}:" in message  # the holder: host, pid, a random part
    with waiter.lock(ACCOUNT, timeout=0.2):  # released: had at once
        pass


def test_leases_are_per_account(make_store) -> None:
    store, other = make_store(), make_store()
    with store.lock("alice"):
        with other.lock("bob", timeout=0):
            other.save("bob", TOKEN)
        with pytest.raises(LockTimeout):
            with other.lock("alice", timeout=0):
                pass


def test_an_expired_lease_is_taken_over_and_its_former_holder_cannot_free_it(
        make_store, raw, caplog) -> None:
    slow, fast = make_store(lock_ttl=0.3), make_store()
    with slow.lock(ACCOUNT):
        time.sleep(0.5)                        # the lease expires under the slow holder
        later = fast.lock(ACCOUNT, timeout=1)
        later.__enter__()                      # ... and someone else takes it
        with pytest.raises(LockLost, match="not sent"):
            slow.verify_lock(ACCOUNT)          # the slow holder would not spend a token
    assert "taken over" in caplog.text
    assert _rows(raw)[ACCOUNT]["lease_owner"] is not None  # the successor's, left alone
    with pytest.raises(LockTimeout):
        with make_store().lock(ACCOUNT, timeout=0):
            pass
    fast.verify_lock(ACCOUNT)
    later.__exit__(None, None, None)
    assert ACCOUNT not in _rows(raw)


def test_verify_lock_renews_the_lease_to_a_full_lock_ttl(make_store, raw) -> None:
    store, other = make_store(lock_ttl=1.0), make_store()
    assert other.load(ACCOUNT) is None  # connected now, so its try below is one statement
    with store.lock(ACCOUNT):
        first = _rows(raw)[ACCOUNT]["lease_until"]
        time.sleep(0.7)
        store.verify_lock(ACCOUNT)
        renewed = _rows(raw)[ACCOUNT]["lease_until"]
        assert renewed - first >= 0.5
        # Past the first expiry (sleeps only run long), with 0.5 s of the renewed one left
        # for a busy machine to get to the next line.
        time.sleep(0.5)
        with pytest.raises(LockTimeout):
            with other.lock(ACCOUNT, timeout=0):
                pass
    with pytest.raises(LockLost):
        store.verify_lock(ACCOUNT)  # not held any more


def test_a_lapsed_lease_nobody_took_is_still_ours(make_store) -> None:
    store, other = make_store(lock_ttl=0.5), make_store()
    assert other.load(ACCOUNT) is None  # connected now, so its try below is one statement
    with store.lock(ACCOUNT):
        time.sleep(0.6)
        store.verify_lock(ACCOUNT)  # nobody else wrote their name: renewed, not lost
        with pytest.raises(LockTimeout):  # within the renewed 0.5 s, even on a busy machine
            with other.lock(ACCOUNT, timeout=0):
                pass


def test_the_lease_is_reentrant_within_a_thread_not_across_threads(make_store,
                                                                   in_thread) -> None:
    store = make_store()
    with store.lock(ACCOUNT, timeout=1):
        with store.lock(ACCOUNT, timeout=1):
            store.save(ACCOUNT, TOKEN)
        store.verify_lock(ACCOUNT)  # still held after the inner block

        def other_thread() -> None:
            with store.lock(ACCOUNT, timeout=0.1):  # same store object, another thread
                pass

        with pytest.raises(LockTimeout):
            in_thread(other_thread)()


# -- fencing ---------------------------------------------------------------------------------

def test_fencing_refuses_the_write_of_a_holder_whose_lease_lapsed(make_store) -> None:
    slow, fast = make_store(lock_ttl=0.3), make_store()
    slow.save(ACCOUNT, TOKEN)
    newer = dict(TOKEN, access_token="at-newer", refresh_token="rt-newer")
    older = dict(TOKEN, access_token="at-older", refresh_token="rt-older")
    with slow.lock(ACCOUNT):
        read = slow.load_versioned(ACCOUNT)   # version 1
        time.sleep(0.5)                       # the lease lapses while this holder is slow
        with fast.lock(ACCOUNT, timeout=1):
            fast.save_versioned(ACCOUNT, newer, fast.load_versioned(ACCOUNT).version)
        with pytest.raises(StaleTokenError) as caught:
            slow.save_versioned(ACCOUNT, older, read.version)
    assert fast.load(ACCOUNT) == newer         # the newer token stays
    assert fast.version(ACCOUNT) == 2
    message = str(caught.value)
    assert "newer token is kept" in message and "lock_ttl" in message
    assert "at-" not in message and "rt-" not in message


def test_a_holder_whose_lease_lapsed_still_saves_when_nobody_else_wrote(make_store) -> None:
    store = make_store(lock_ttl=0.3)
    store.save(ACCOUNT, TOKEN)
    granted = dict(TOKEN, access_token="at-2", refresh_token="rt-2")
    with store.lock(ACCOUNT):
        read = store.load_versioned(ACCOUNT)
        time.sleep(0.5)
        store.save_versioned(ACCOUNT, granted, read.version)  # the only live pair
    assert store.load(ACCOUNT) == granted


def test_save_and_load_keep_their_plain_meaning(make_store) -> None:
    store, other = make_store(), make_store()
    with store.lock(ACCOUNT):
        assert store.load(ACCOUNT) is None
        store.save(ACCOUNT, TOKEN)
        other.save(ACCOUNT, dict(TOKEN, access_token="at-3"))  # no lock: a plain write
        store.save(ACCOUNT, dict(TOKEN, access_token="at-4"))  # no version: a plain write
    assert store.load(ACCOUNT)["access_token"] == "at-4"
    assert store.version(ACCOUNT) == 3


def test_a_session_refuses_a_sql_lease_that_a_grant_could_outlive(x_emulator, make_store,
                                                                  caplog) -> None:
    store = make_store(lock_ttl=10)  # the token endpoint may take 15 s
    assert "lock_ttl=10 s is shorter" in caplog.text
    with pytest.raises(refresher.ConfigurationError, match=r"lock_ttl >= 20"):
        _session(x_emulator, store, x_emulator.issue_token())
    assert make_store().load(ACCOUNT) is None  # refused before anything was saved


class _PausingStore(SQLTokenStore):
    """A host that stalls (a GC pause, SIGSTOP) after reading the store under its lease."""

    pause = 0.0

    def load_versioned(self, account: str) -> Any:
        read = super().load_versioned(account)
        if self.pause and self._leases.holds(account):
            pause, self.pause = self.pause, 0.0
            time.sleep(pause)
        return read


def test_a_holder_whose_lease_lapsed_does_not_spend_the_refresh_token(
        x_emulator_factory, db_url, make_store, raw, me_url, in_thread, wait_for) -> None:
    """Host A stalls under its lease past lock_ttl; host B takes it and refreshes. A must
    not send the same refresh token: it notices before the token call, takes the lease
    again and adopts B's pair."""
    x = x_emulator_factory()
    seed = x.issue_token()
    stalled = _PausingStore(db_url)
    host_a = _session(x, stalled, seed)
    host_b = _session(x, make_store())
    stalled.lock_ttl = 0.4  # from now on its leases lapse quickly (the session checked 30 s)
    stalled.pause = 1.0
    x.expire_access_token(seed["access_token"])
    url = me_url(x)

    def lease() -> Any:
        return _rows(raw).get(ACCOUNT, {}).get("lease_owner")

    first = in_thread(lambda: host_a.get(url))
    wait_for(lambda: lease() is not None, "host A's lease")
    time.sleep(0.5)                            # host A's lease lapses
    assert host_b.get(url).status_code == 200  # B takes it over and refreshes
    assert first().status_code == 200          # A wakes, sees the loss, adopts B's pair
    assert x.stats.refreshes == 1
    assert x.stats.reused_refresh_tokens == 0
    assert host_a.token["access_token"] == host_b.token["access_token"]
    host_a.close()
    host_b.close()
    stalled.close()


# -- SQLite specifics ------------------------------------------------------------------------

def test_sqlite_is_a_private_file_in_wal_mode_with_a_busy_timeout(tmp_path,
                                                                  sqlalchemy_installed) -> None:
    path = tmp_path / "private" / "tokens.db"
    store = SQLTokenStore(f"sqlite:///{path}")
    store.save(ACCOUNT, TOKEN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def _hold_sqlite_write_lock(path: Any, until: threading.Event) -> threading.Thread:
    """Another writer: a plain sqlite3 connection holding the write lock until ``until``."""
    import sqlite3

    taken = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(str(path), isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            taken.set()
            until.wait(30)
            connection.execute("COMMIT")
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread


@contextlib.contextmanager
def _another_writer_for(path: Any, seconds: float) -> Iterator[list[str]]:
    """Another writer holds the write lock for ``seconds``; the block gets the list where
    "released" is appended when it lets go."""
    release, order = threading.Event(), []
    holder = _hold_sqlite_write_lock(path, release)
    timer = threading.Timer(seconds, lambda: (order.append("released"), release.set()))
    timer.start()
    try:
        yield order
    finally:
        release.set()
        timer.join()
        holder.join()


def test_a_sqlite_save_waits_for_another_writer_and_its_engine_keeps_its_busy_timeout(
        tmp_path, sqlalchemy_installed) -> None:
    path = tmp_path / "tokens.db"
    store = SQLTokenStore(f"sqlite:///{path}")
    store.save(ACCOUNT, TOKEN)  # the table and a pooled connection
    with _another_writer_for(path, seconds=0.3) as order:
        with store.lock(ACCOUNT, timeout=10):
            store.save(ACCOUNT, dict(TOKEN, access_token="at-2"))
        order.append("saved")
    assert order == ["released", "saved"]
    assert store.load(ACCOUNT)["access_token"] == "at-2"
    with store.engine.connect() as connection:  # the pool's connection, as the store left it
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    store.close()


def test_a_new_sqlite_file_opened_while_another_process_writes_to_it_waits(
        tmp_path, sqlalchemy_installed) -> None:
    """Switching a file to WAL meets another writer's lock with "database is locked" at once
    (SQLite skips its busy wait there): processes opening a new database together failed
    about one time in ten on their first connection. Now the switch waits for the lock."""
    path = tmp_path / "tokens.db"
    with _another_writer_for(path, seconds=0.3) as order:  # a new file: not in WAL mode yet
        store = SQLTokenStore(f"sqlite:///{path}")
        store.save(ACCOUNT, TOKEN)
        order.append("saved")
    assert order == ["released", "saved"]
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_a_sqlite_writer_held_past_the_busy_timeout_is_a_TokenStoreError(
        tmp_path, sqlalchemy_installed) -> None:
    path = tmp_path / "tokens.db"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    store = SQLTokenStore(engine)
    store.save(ACCOUNT, TOKEN)
    release = threading.Event()
    holder = _hold_sqlite_write_lock(path, release)
    try:  # the engine's own busy timeout (0.2 s) bounds the wait
        with pytest.raises(TokenStoreError, match="database is locked") as caught:
            store.save(ACCOUNT, dict(TOKEN, access_token="at-2"))
    finally:
        release.set()
        holder.join()
    assert f"sqlite:///{path}" in str(caught.value)
    assert store.load(ACCOUNT) == TOKEN
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 200
    store.close()
    engine.dispose()


def test_an_in_memory_sqlite_database_is_refused(sqlalchemy_installed) -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(refresher.ConfigurationError, match="MemoryTokenStore"):
            SQLTokenStore(url)


@pytest.mark.parametrize("url", ["postgresql+asyncpg://app:pw@127.0.0.1:1/tokens",
                                 "postgresql+psycopg_async://app:pw@127.0.0.1:1/tokens",
                                 "sqlite+aiosqlite:///tokens.db"])
def test_an_asyncio_driver_is_refused_saying_what_works(url, tmp_path, monkeypatch,
                                                        sqlalchemy_installed) -> None:
    """The store is synchronous: an asyncio driver could only fail, and the [sql] extra
    (psycopg 3) would not install it, so the error says what to write instead. Nothing is
    created, and no password is shown."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(refresher.ConfigurationError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "asyncio driver" in message and "pw" not in message
    assert "pip install" not in message
    if url.startswith("postgresql"):
        assert "use postgresql:// (or postgresql+psycopg://)" in message
    else:
        assert "use sqlite:///PATH" in message
    assert list(tmp_path.iterdir()) == []


def test_a_driver_no_extra_installs_is_named_and_no_extra_advised(sqlalchemy_installed,
                                                                 monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pg8000", None)  # as if it were not installed
    with pytest.raises(refresher.MissingStoreExtra) as caught:
        SQLTokenStore("postgresql+pg8000://app:pw@127.0.0.1:1/tokens")
    error = caught.value
    assert isinstance(error, ImportError) and isinstance(error, TokenStoreError)
    assert error.extra is None and error.name == "pg8000"
    assert "needs the database driver pg8000" in str(error)
    assert "does not install" in str(error) and "pip install" not in str(error)


def test_without_psycopg_postgresql_says_to_install_the_sql_extra(sqlalchemy_installed,
                                                                   monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(refresher.MissingStoreExtra) as caught:
        open_store("postgresql://app:pw@127.0.0.1:1/tokens")
    error = caught.value
    assert error.extra == "sql" and "pw" not in str(error)
    assert "needs the database driver psycopg 3: pip install -e '.[sql]'" in str(error)


def test_an_engine_of_your_own_is_used_as_is_and_left_open(tmp_path,
                                                           sqlalchemy_installed) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    store = SQLTokenStore(engine, table="tokens")
    with store.lock(ACCOUNT, timeout=1):
        store.save(ACCOUNT, TOKEN)
    assert store.load(ACCOUNT) == TOKEN and store.engine is engine
    store.close()
    with engine.connect() as connection:  # still usable: not the store's to dispose of
        assert connection.exec_driver_sql("SELECT count(*) FROM tokens").scalar() == 1
    with pytest.raises(TypeError):
        SQLTokenStore(engine, pool_size=3)
    engine.dispose()


# -- the database down, wrong, or restarted -------------------------------------------------

def test_unreachable_postgresql_is_a_TokenStoreError_naming_the_server_not_the_password(
        sqlalchemy_installed, all_logs) -> None:
    port = free_port()  # nothing listens there
    store = SQLTokenStore(f"postgresql://app:s3cret-pw@127.0.0.1:{port}/tokens")
    assert "s3cret-pw" not in repr(store)
    calls: dict[str, Callable[[], Any]] = {
        "load": lambda: store.load(ACCOUNT),
        "load_versioned": lambda: store.load_versioned(ACCOUNT),
        "save": lambda: store.save(ACCOUNT, TOKEN),
        "save_versioned": lambda: store.save_versioned(ACCOUNT, TOKEN, "1"),
        "accounts": store.accounts,
        "delete": lambda: store.delete(ACCOUNT),
        "load_metadata": lambda: store.load_metadata(ACCOUNT),
        "save_metadata": lambda: store.save_metadata(ACCOUNT, {"a": 1}),
        "lock": lambda: store.lock(ACCOUNT, timeout=1).__enter__(),
    }
    for name, call in calls.items():
        with pytest.raises(TokenStoreError) as caught:
            call()
        error = caught.value
        assert type(error) is TokenStoreError, name
        assert f"postgresql://127.0.0.1:{port}/tokens" in str(error), name
        assert "s3cret-pw" not in str(error), name
        assert error.__cause__ is None and error.__suppress_context__, name
    assert "s3cret-pw" not in all_logs.text
    store.close()


def test_a_wrong_password_is_a_TokenStoreError_without_the_password(postgres_server,
                                                                    postgres_url) -> None:
    database = postgres_url.rpartition("/")[2]
    right = postgres_server.create_user(f"app_{database}", "right-pw-123", database)
    wrong = right.replace("right-pw-123", "wrong-pw-456")
    with pytest.raises(TokenStoreError) as caught:
        SQLTokenStore(wrong).load(ACCOUNT)
    message = str(caught.value)
    assert "wrong-pw-456" not in message and "right-pw-123" not in message
    assert f"127.0.0.1:{postgres_server.port}/{database}" in message
    assert "password authentication failed" in message
    store = SQLTokenStore(right)
    store.save(ACCOUNT, TOKEN)
    assert store.load(ACCOUNT) == TOKEN
    store.close()


def test_a_bad_url_is_a_TokenStoreError_without_the_password(sqlalchemy_installed) -> None:
    with pytest.raises(TokenStoreError) as caught:
        SQLTokenStore("postgresql://app:pw-in-url@127.0.0.1:notaport/tokens")
    assert "pw-in-url" not in str(caught.value)
    assert "postgresql://127.0.0.1:notaport/tokens" in str(caught.value)


@pytest.mark.integration
def test_postgresql_stopped_during_a_refresh_the_granted_pair_is_written_back(
        x_emulator_factory, postgres_server_factory, me_url, in_thread, all_logs, wait_for) -> None:
    """PostgreSQL stops while a refresh is at X: the new pair cannot be saved, and the old
    refresh token is already spent. The session keeps the pair; requests needing the store
    fail with TokenStoreError (naming the server, never the password) while it is down;
    when it is back (with the old pair, and the lease the refresh could not release), the
    pair is written back at once."""
    server = postgres_server_factory()
    server.create_database("tokens")
    url = server.create_user("app", "s3cret-pw", "tokens")
    x = x_emulator_factory()
    store = SQLTokenStore(url)
    seed = x.issue_token()
    session = _session(x, store, seed)
    api = me_url(x)
    assert session.get(api).status_code == 200
    x.token_delay = 1.0
    x.expire_access_token(seed["access_token"])
    pending = in_thread(lambda: session.get(api))
    wait_for(lambda: x.stats.token_requests == 1, "the refresh to reach X")
    server.stop()
    with pytest.raises(TokenStoreError) as caught:
        pending()
    message = str(caught.value)
    assert f"postgresql://127.0.0.1:{server.port}/tokens" in message
    assert "s3cret-pw" not in message
    assert x.stats.refreshes == 1  # X granted a pair; only this process knows it
    granted = session.token
    assert granted["refresh_token"] != seed["refresh_token"]
    # While the database is down, each request first tries to save the pair, and fails.
    with pytest.raises(TokenStoreError):
        session.get(api)
    server.start()  # same port, same data: the spent pair, and the unreleased lease
    assert store.load(ACCOUNT)["refresh_token"] == seed["refresh_token"]
    began = time.monotonic()
    assert session.get(api).status_code == 200  # writes the pair back first
    assert time.monotonic() - began < 5  # its own leftover lease is taken back at once
    assert store.load(ACCOUNT)["refresh_token"] == granted["refresh_token"]
    # ... and that pair is the live one: the account goes on.
    x.token_delay = 0
    x.expire_access_token(granted["access_token"])
    assert session.get(api).status_code == 200
    assert x.stats.refreshes == 2
    assert x.stats.reused_refresh_tokens == 0
    assert x.stats.invalid_refresh_tokens == 0
    assert "s3cret-pw" not in all_logs.text
    session.close()
    store.close()


# -- many processes --------------------------------------------------------------------------

_INCREMENTS = """
import sys, time
from refresher import open_store
url, times, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = open_store(url)
while time.time() < start_at:
    time.sleep(0.001)
for _ in range(times):
    with store.lock("shared", timeout=30):
        value = store.load_metadata("counter").get("value", 0)  # read, wait, write: loses
        time.sleep(0.002)                                       # updates unless the lease
        store.save_metadata("counter", {"value": value + 1})    # really is exclusive
store.close()
"""


@pytest.mark.integration
def test_the_lease_is_exclusive_across_processes(db_url, make_store) -> None:
    processes, times = 3, 30  # the processes make the table, all at once
    start_at = str(time.time() + 2.0)
    workers = [subprocess.Popen([sys.executable, "-c", _INCREMENTS, db_url, str(times),
                                 start_at], stderr=subprocess.PIPE)
               for _ in range(processes)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.decode()
    assert make_store().load_metadata("counter")["value"] == processes * times


_HOLD_LOCK = """
import sys, time
from refresher import open_store
store = open_store(sys.argv[1], lock_ttl=float(sys.argv[2]))
with store.lock(sys.argv[3], timeout=10):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
def test_a_sigkilled_lease_holder_is_taken_over_after_lock_ttl(x_emulator, db_url,
                                                               make_store, raw,
                                                               me_url) -> None:
    lock_ttl = 2.5  # the dead holder's; this session's store keeps the default
    store = make_store()
    seed = x_emulator.issue_token()
    session = _session(x_emulator, store, seed, lock_timeout=15)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, db_url, str(lock_ttl),
                               ACCOUNT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        taken_at = time.time()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    killed_at = time.monotonic()
    # The dead holder's lease is still there, and lapses by itself.
    row = _rows(raw)[ACCOUNT]
    assert f":{holder.pid}:" in row["lease_owner"]
    assert 0 < row["lease_until"] - taken_at <= lock_ttl + 1
    with pytest.raises(LockTimeout):
        with store.lock(ACCOUNT, timeout=0):
            pass
    x_emulator.expire_access_token(seed["access_token"])
    response = session.get(me_url(x_emulator))  # 401, waits for the lease, refreshes
    took = time.monotonic() - killed_at
    print(f"lease of a SIGKILLed holder (lock_ttl={lock_ttl} s) taken over {took:.2f} s "
          "after the kill")
    assert response.status_code == 200
    assert took < lock_ttl + 5
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.reused_refresh_tokens == 0
    assert store.load(ACCOUNT)["access_token"] == session.token["access_token"]
    session.close()


@pytest.mark.integration
def test_4_processes_x_3_threads_share_one_sql_store_with_1_second_tokens(
        x_emulator_factory, db_url, workload) -> None:
    x = x_emulator_factory(access_ttl=1.0)  # the workers make the table, all at once
    print(db_url.partition(":")[0])
    workload.assert_coordinated(workload.run(x, db_url, processes=4, threads=3, seconds=3))


class _ConcurrentTokenEndpoint(XEmulator):
    """An emulator whose token endpoint holds each refresh until another is under way at
    the same time (for up to 5 s, half the client's read timeout): refreshes that queue
    one behind the other never overlap, and ``together`` stays False."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counting = threading.Lock()
        self._in_flight = 0
        self._met = threading.Event()
        self.together = False

    def _handle(self, request: Any) -> Any:
        if request.path != "/2/oauth2/token":
            return super()._handle(request)
        with self._counting:
            self._in_flight += 1
            if self._in_flight >= 2:
                self.together = True
                self._met.set()
        try:
            if not self._met.wait(5):
                self._met.set()  # alone for 5 s: let this one and the rest through
            return super()._handle(request)
        finally:
            with self._counting:
                self._in_flight -= 1


@pytest.mark.integration
def test_16_accounts_refresh_at_once_each_under_its_own_lease(make_store, me_url) -> None:
    x = _ConcurrentTokenEndpoint().start()
    try:
        sessions = []
        for n in range(16):
            seed = x.issue_token()
            sessions.append(_session(x, make_store(), seed, account=f"user{n}"))
            x.expire_access_token(seed["access_token"])
        url = me_url(x)
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda s=s: statuses.append(s.get(url).status_code))
                   for s in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert x.together  # two accounts' token calls were under way at once: not one lease
        assert statuses == [200] * 16
        assert x.stats.refreshes == 16 and x.stats.reused_refresh_tokens == 0
        for session in sessions:
            session.close()
    finally:
        x.stop()


@pytest.mark.integration
def test_postgresql_restarted_in_the_middle_of_a_multi_process_run(
        x_emulator_factory, postgres_server_factory, workload) -> None:
    """PostgreSQL goes away between two refreshes and comes back: requests that need the
    store fail with TokenStoreError naming the server (never the password) while it is
    down, every process recovers after, and no refresh token is spent twice."""
    server = postgres_server_factory()
    server.create_database("tokens")
    url = server.create_user("app", "s3cret-pw", "tokens")
    x = x_emulator_factory(access_ttl=2.0)
    peek = SQLTokenStore(url)

    def stored_expiry() -> float:
        return float(peek.load("shared")["expires_at"])

    def stop() -> None:
        peek.close()
        server.stop()

    outage = workload.outage(x, url, processes=3, threads=2, stored_expiry=stored_expiry,
                             stop=stop, start=server.start)
    errors = outage.users.errors()  # some requests needed the store while it was down
    assert errors and all(
        e.startswith(f"TokenStoreError: SQL token store at postgresql://127.0.0.1:"
                     f"{server.port}/tokens") for e in errors), errors[:5]
    assert not any("s3cret-pw" in e for e in errors)
    outage.assert_nothing_spent_twice(x)
    outage.assert_recovered()


def _use_in_child(store: SQLTokenStore, queue: Any) -> None:
    with store.lock("child", timeout=10):
        store.save("child", TOKEN)
    queue.put(store.load(ACCOUNT))


@pytest.mark.integration
def test_a_forked_child_uses_connections_of_its_own(make_store) -> None:
    import multiprocessing

    store = make_store()
    store.save(ACCOUNT, TOKEN)  # the parent's pool holds a connection now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_use_in_child, args=(store, queue))
    child.start()
    assert queue.get(timeout=30) == TOKEN
    child.join(30)
    assert child.exitcode == 0
    assert store.load("child") == TOKEN and store.load(ACCOUNT) == TOKEN  # parent unharmed
