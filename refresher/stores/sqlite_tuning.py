"""SQLite's side of the SQL store: the file made private, the connection's pragmas, and
the waits for another writer's lock.

- The file is created mode 0600 (SQLite gives its WAL the same mode), its folder 0700.
- Each connection gets a busy timeout of :data:`SQLITE_BUSY_TIMEOUT`, WAL mode (readers
  never wait for a writer; the switch is tried again while another connection holds the
  lock, since SQLite answers it "database is locked" at once) and ``synchronous=FULL``.
- The store's transactions cut SQLite's own busy wait to a few milliseconds
  (:func:`short_busy_waits`) and try again themselves (:func:`busy`): SQLite's waits grow to
  100 ms each and oversleep a lock that is held for a millisecond.

Python's own :mod:`sqlite3` only: nothing here imports SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["SQLITE_BUSY_TIMEOUT", "BUSY_RETRY", "busy", "on_connect", "prepare_file",
           "short_busy_waits"]

#: Seconds a SQLite writer waits for another's transaction before "database is locked".
SQLITE_BUSY_TIMEOUT = 10.0
# SQLite's own wait for another writer sleeps 1, 2, 5, 10... then 100 ms at a time, and
# oversleeps a lock held a millisecond: 16 processes taking their leases at once queued for
# several times their work. In the store's transactions SQLite waits this long at most
# (milliseconds)...
_SQLITE_BUSY_SLICE_MS = 5
# ...then the store tries again after this many seconds, within the busy timeout.
BUSY_RETRY = 0.0005
_SQLITE_BUSY = 5  # SQLite's result code (its extended codes keep it in their low byte)


def prepare_file(path: str) -> None:
    """Create the database file mode 0600 (SQLite gives its WAL the same mode), and its
    folder 0700, when missing: a token database is as secret as a token file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def on_connect(dbapi_connection: Any, _record: Any) -> None:
    """SQLAlchemy's ``connect`` event for refresher's own SQLite engines: the pragmas."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, tried again while another connection holds the lock,
    within :data:`SQLITE_BUSY_TIMEOUT`: SQLite answers a journal-mode change that meets
    another connection's lock with "database is locked" at once, without its busy wait,
    so processes opening a new database file together failed on their first connection."""
    give_up = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _sqlite_busy(exc) or time.monotonic() >= give_up:
                raise
        time.sleep(BUSY_RETRY)


@contextlib.contextmanager
def short_busy_waits(connection: sqlalchemy.Connection) -> Iterator[float]:
    """For the block, SQLite's own wait for another writer's lock cut to
    :data:`_SQLITE_BUSY_SLICE_MS`, on the connection's SQLite handle; the block gets the
    seconds the connection would have waited (its busy timeout: 10 s on refresher's
    engines, the caller's choice on theirs), which is set back after it."""
    handle = connection.connection.dbapi_connection
    if handle is None:  # pragma: no cover (a connection just checked out has its handle)
        yield 0.0
        return
    before = int(handle.execute("PRAGMA busy_timeout").fetchone()[0])
    handle.execute(f"PRAGMA busy_timeout = {min(before, _SQLITE_BUSY_SLICE_MS)}")
    try:
        yield before / 1000
    finally:
        with contextlib.suppress(sqlite3.Error):  # a broken handle: the pool drops it
            handle.execute(f"PRAGMA busy_timeout = {before}")


def busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked": another writer holds the lock."""
    original = getattr(exc, "orig", None)
    return isinstance(original, sqlite3.OperationalError) and _sqlite_busy(original)


def _sqlite_busy(error: sqlite3.OperationalError) -> bool:
    """Whether the driver's ``error`` is SQLite's SQLITE_BUSY (any of its extended codes)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and later
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return "database is locked" in str(error)
