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

Across ``fork``: the lock objects are this process's own (a table per process, in place of
:mod:`filelock`'s singleton cache). filelock 4.x (and the newest 3.x) refuse a lock object
inherited across fork; older 3.x hand it to the child as it is, and unlocking it there
would free the parent's lock (an ``flock`` belongs to the open file description the two
processes share). So a child starts with a new, empty table; the descriptors its parent's
threads held are closed in the child *without* unlocking them, and a block that was
holding a lock when the process forked ends in the child without releasing it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._fork import PerProcess
from ..errors import LockLost, LockTimeout, TokenStoreError

if TYPE_CHECKING:  # imported with the first lock: `import refresher` need not load it
    import filelock

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


class _LockTable:
    """One process's lock objects, one per lock file, and the descriptors its threads hold.

    Made per process (:data:`_TABLES`): a forked child gets a new one on first use, and
    :meth:`abandon` deals with the one it inherited.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        # Weak, as filelock's own singleton cache: a lock nobody uses any more goes.
        self._locks: weakref.WeakValueDictionary[str, filelock.FileLock] = (
            weakref.WeakValueDictionary())
        # (thread, lock file) -> (descriptor, device, inode), for each outermost hold.
        self._held: dict[tuple[int, str], tuple[int, int, int]] = {}

    def lock_for(self, path: str) -> filelock.FileLock:
        import filelock

        with self._guard:
            lock = self._locks.get(path)
            if lock is None:
                lock = self._locks[path] = filelock.FileLock(path, mode=0o600)
            return lock

    def note_held(self, lock: filelock.FileLock) -> None:
        """Remember the descriptor this thread's hold of ``lock`` is on (and which file)."""
        fd = _held_descriptor(lock)
        if fd is None:
            return
        with suppress(OSError):
            found = os.fstat(fd)
            self._held[(threading.get_ident(), lock.lock_file)] = (
                fd, found.st_dev, found.st_ino)

    def note_released(self, lock: filelock.FileLock) -> None:
        self._held.pop((threading.get_ident(), lock.lock_file), None)

    def abandon(self) -> None:
        """In a forked child, for the table inherited from the parent: close the descriptors
        the parent's threads held, without unlocking them, and make the lock objects look
        unheld, so nothing (not even a finalizer) ever unlocks them here.

        Takes no lock (a parent thread may have held one at the fork). A descriptor is
        closed only if it still is the lock file it was (filelock 4.x closes its own first,
        and a number closed may have been reused since).
        """
        for fd, device, inode in list(self._held.values()):
            try:
                found = os.fstat(fd)
            except OSError:
                continue
            if (found.st_dev, found.st_ino) == (device, inode):
                with suppress(OSError):
                    os.close(fd)
        inherited = list(self._locks.values())
        for lock in inherited:
            context: Any = getattr(lock, "_context", None)  # this thread's view
            if getattr(context, "lock_file_fd", None) is not None:
                with suppress(AttributeError, TypeError):
                    context.lock_file_fd = None
                    context.lock_counter = 0
        _forget_held_in_filelock({id(lock) for lock in inherited})


def _forget_held_in_filelock(lock_ids: set[int]) -> None:
    """Remove the locks ``lock_ids`` from filelock's record of what this thread holds.

    filelock 3.25 and later 3.x refuse, as a self-deadlock, a wait for a lock file that
    record says this thread holds through another lock object; in a forked child the
    forking thread's entries are the parent's holds, and void. (4.x clears it in a child
    itself.) Looked up defensively, since it is not public API.
    """
    held = getattr(getattr(sys.modules.get("filelock._api"), "_registry", None), "held", None)
    if isinstance(held, dict):
        for path, owner in list(held.items()):
            if owner in lock_ids:
                held.pop(path, None)


_TABLES: PerProcess[_LockTable] = PerProcess(_LockTable, discard=_LockTable.abandon)


def os_lock(path: Path) -> filelock.FileLock:
    """This process's OS lock on the lock file ``path`` (created mode 0600 when missing).

    Every store object on the same path in this process shares one lock, re-entrant per
    thread, so a hook that saves through a second store object cannot deadlock against
    the first. A forked child gets lock objects of its own.
    """
    return _TABLES.get().lock_for(str(path))


@contextmanager
def held(lock: filelock.FileLock, lock_path: Path, where: str, timeout: float | None,
         requested: float | None = None) -> Iterator[bool]:
    """Hold ``lock`` for the block; the block is given whether this is the thread's
    outermost hold (a re-entrant one only counts, and checks nothing on disk).

    The outermost acquisition is on the file ``lock_path`` names now
    (:func:`acquire_current_lock_file`), within ``timeout`` seconds. A block that a
    ``fork`` splits ends in the child without releasing: the hold is the parent's.
    """
    outermost = not lock.is_locked  # per thread: filelock's holds are thread-local
    if outermost:
        acquire_current_lock_file(lock, lock_path, where, timeout, requested)
        _TABLES.get().note_held(lock)
    else:
        acquire_lock(lock, lock_path, where, timeout, requested)
    holder = os.getpid()
    try:
        yield outermost
    finally:
        if os.getpid() == holder:  # in a forked child, the lock is the parent's to release
            lock.release()
            if outermost:
                _TABLES.get().note_released(lock)


def acquire_lock(lock: filelock.FileLock, lock_path: Path, where: str,
                 timeout: float | None, requested: float | None = None) -> None:
    """``lock.acquire``, its failures turned into refresher's errors.

    ``where`` names the store in messages; ``requested`` is the timeout the caller asked
    for, for the message, when ``timeout`` is what is left of it.
    """
    import filelock  # loaded already: the lock is one of its

    if requested is None:
        requested = timeout
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout,
                     poll_interval=_LOCK_POLL_INTERVAL)
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
    fd = _held_descriptor(lock)
    if fd is None:
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


def _held_descriptor(lock: filelock.FileLock) -> int | None:
    """The descriptor of this thread's hold of ``lock``, if it holds it.

    filelock keeps it in its (per-thread) context: ``_context.lock_file_fd`` in filelock
    3.x and 4.x. Looked up defensively, since it is not public API.
    """
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    return fd if isinstance(fd, int) else None


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
