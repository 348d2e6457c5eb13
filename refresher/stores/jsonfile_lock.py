"""The JSON store's lock files: named, locked as they are at their path now, and checked
that they still are.

A store has two kinds of lock file (see :class:`~refresher.stores.jsonfile.JSONTokenStore`):
the file lock beside the store, and one lock per account in a sibling folder, named by
:func:`account_lock_name`. :func:`os_lock` is the process's lock on either, :func:`held`
holds one for a block.

:mod:`filelock` locks an inode. If a tmp cleaner deletes a lock file (or something replaces
it) while it is held, a newcomer creates a new one and locks that, and two processes "hold"
the lock. :func:`acquire_current_lock_file` makes sure a lock just won is on the file the
path names now; :func:`check_lock_file` tells, right before a refresh token is spent,
whether it still is. :func:`acquire_lock` turns :mod:`filelock`'s failures into refresher's
errors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from ..errors import LockLost, LockTimeout, TokenStoreError

__all__ = ["account_lock_name", "ensure_lock_folder", "os_lock", "held", "acquire_lock",
           "acquire_current_lock_file", "holds_current_lock_file", "check_lock_file",
           "check_write_lock"]

# The store's own logger: these warnings are about the store, and keep the logger name they
# have always had, so a logging setup for refresher.stores.jsonfile still covers them.
log = logging.getLogger("refresher.stores.jsonfile")

# Locks are polled; short polls keep the wait of the processes queued behind a refresh
# close to the refresh's own round trip.
_LOCK_POLL_INTERVAL = 0.002


def account_lock_name(account: str) -> str:
    """The file name of ``account``'s lock: the SHA-256 of its name, so that any string
    (slashes, dots, 10,000 characters, the empty one) makes a safe name of fixed length."""
    digest = hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()
    return digest + ".lock"


def ensure_lock_folder(folder: Path, where: str) -> None:
    """Create ``folder`` (the accounts' lock files) mode 0700, and the store's folder too
    when missing, unless it exists: one mkdir when it does. ``where`` names the store."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):  # the store's own folder is missing too
            try:
                folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                folder.mkdir(mode=0o700, exist_ok=True)
                return
            except OSError as again:
                exc = again
        raise TokenStoreError(
            f"cannot create the lock folder {folder} of token store {where}: {exc.strerror}"
        ) from None


def os_lock(path: Path) -> filelock.FileLock:
    """The process's OS lock on the lock file ``path`` (created mode 0600 when missing).

    ``is_singleton``: every store object on the same path in this process shares one
    lock, re-entrant per thread, so a hook that saves through a second store object
    cannot deadlock against the first.
    """
    return filelock.FileLock(str(path), mode=0o600, is_singleton=True,
                             poll_interval=_LOCK_POLL_INTERVAL)


@contextmanager
def held(lock: filelock.FileLock, lock_path: Path, where: str, timeout: float | None,
         requested: float | None = None) -> Iterator[bool]:
    """Hold ``lock`` for the block; the block is given whether this is the thread's
    outermost hold (a re-entrant one only counts, and checks nothing on disk).

    The outermost acquisition is on the file ``lock_path`` names now
    (:func:`acquire_current_lock_file`), within ``timeout`` seconds.
    """
    outermost = not lock.is_locked  # per thread: filelock's holds are thread-local
    if outermost:
        acquire_current_lock_file(lock, lock_path, where, timeout, requested)
    else:
        acquire_lock(lock, lock_path, where, timeout, requested)
    try:
        yield outermost
    finally:
        lock.release()


def acquire_lock(lock: filelock.FileLock, lock_path: Path, where: str,
                 timeout: float | None, requested: float | None = None) -> None:
    """``lock.acquire``, its failures turned into refresher's errors.

    ``where`` names the store in messages; ``requested`` is the timeout the caller asked
    for, for the message, when ``timeout`` is what is left of it.
    """
    if requested is None:
        requested = timeout
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout)
    except filelock.Timeout:
        raise LockTimeout(
            f"could not lock token store {where} within {requested} s "
            f"(lock file {lock_path}); another process is holding it"
        ) from None
    except OSError as exc:
        raise TokenStoreError(
            f"cannot lock token store {where} (lock file {lock_path}): {exc.strerror}"
        ) from None


def acquire_current_lock_file(lock: filelock.FileLock, lock_path: Path, where: str,
                              timeout: float | None, requested: float | None = None) -> None:
    """Acquire ``lock`` on the inode ``lock_path`` names *now*, within ``timeout`` seconds
    (``requested``: what the caller asked for, when ``timeout`` is what is left of it).

    A waiter can win the flock of a lock file that was deleted or replaced since it
    opened it (an orphan nobody else will ever open again): then it releases and locks
    the file now at the path.
    """
    if requested is None:
        requested = timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        acquire_lock(lock, lock_path, where, remaining, requested)
        try:
            current = holds_current_lock_file(lock, lock_path) is not False
        except BaseException:
            lock.release()
            raise
        if current:
            return
        lock.release()
        log.warning(
            "token store %s: the lock file %s was removed or replaced just as it was "
            "locked; locking the file now at that path instead", where, lock_path)
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeout(
                f"could not lock token store {where} within {requested} s: its lock "
                f"file {lock_path} kept being removed or replaced; keep the store out "
                "of folders that tmp cleaners sweep"
            )


def holds_current_lock_file(lock: filelock.FileLock, lock_path: Path) -> bool | None:
    """Whether ``lock_path`` still names the inode ``lock`` holds (this thread's hold).

    ``False`` when it was deleted or names another file; ``None`` when it cannot be told
    (not held, or a :mod:`filelock` that does not expose its descriptor).
    """
    # filelock keeps the held descriptor in its (per-thread) context: _context.lock_file_fd
    # in filelock 3.x and 4.x. Looked up defensively, since it is not public API.
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if not isinstance(fd, int):
        return None
    try:
        held = os.fstat(fd)
    except OSError:
        return None
    try:
        now = os.lstat(lock_path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return None
    return os.path.samestat(held, now)


def check_lock_file(lock: filelock.FileLock, lock_path: Path, where: str,
                    account: str) -> None:
    """Raise :class:`~refresher.LockLost` unless this thread holds ``lock`` on the lock
    file that ``lock_path`` names now (``account``: the one about to be refreshed)."""
    if not lock.is_locked:
        raise LockLost(
            f"token store {where}: this thread does not hold the lock (lock file "
            f"{lock_path}) that a refresh of account {account!r} needs; nothing was "
            "spent."
        )
    if holds_current_lock_file(lock, lock_path) is False:
        raise LockLost(
            f"token store {where}: its lock file {lock_path} was removed (or "
            "replaced) while this process held it, so another process may hold the lock "
            f"too; nothing was spent (account {account!r}'s refresh token was not sent). "
            "Keep the token store out of folders that tmp cleaners sweep (system temp "
            "folders)."
        )


def check_write_lock(lock: filelock.FileLock, lock_path: Path, where: str) -> None:
    """Raise :class:`~refresher.TokenStoreError` if the file lock this thread holds for a
    write is no longer on the file ``lock_path`` names: a tmp cleaner removed it, so another
    writer may hold a new one and be writing from a document that lacks this write (or this
    one from a document that lacks theirs). Called right before the rename."""
    if holds_current_lock_file(lock, lock_path) is False:
        raise TokenStoreError(
            f"token store {where}: its lock file {lock_path} was removed (or replaced) "
            "during a write, so another process may be writing too; nothing was written, "
            "the old file is intact. Keep the token store out of folders that tmp cleaners "
            "sweep (system temp folders)."
        )
