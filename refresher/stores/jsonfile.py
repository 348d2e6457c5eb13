"""JSONTokenStore: many accounts in one JSON file, shared by processes on one machine."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._fork import register
from ..errors import StaleTokenError, TokenStoreError
from ..token import Token
from .base import TokenStore, Versioned, content_version
from .jsonfile_leftovers import TEMP_SUFFIX, find_leftovers, recover_leftovers, temp_prefix
from .jsonfile_lock import (
    account_lock_name,
    check_lock_file,
    check_write_lock,
    ensure_lock_folder,
    held,
    os_lock,
)
from .reserved import is_reserved

if TYPE_CHECKING:  # filelock is imported with the first lock (see jsonfile_lock)
    import filelock

__all__ = ["JSONTokenStore"]

# The store's logger: jsonfile_leftovers and jsonfile_lock log under this name too.
log = logging.getLogger(__name__)

_FORMAT = "refresher/1"


class JSONTokenStore(TokenStore):
    """One JSON file holding many accounts, shared by the processes of one machine, with a
    lock per account: refreshes of different accounts run side by side.

    Two kinds of lock live beside the file (``real_path``: ``path``, symlinks resolved),
    both :mod:`filelock` OS locks (a process that dies holding one releases it), both
    re-entrant within a thread; the order is always account lock, then file lock:

    - ``lock(account)``, the account's refresh lock: its own file in the folder
      ``real_path + ".locks"`` (mode 0700), named by the SHA-256 of the account name (any
      string is a safe name), mode 0600. The coordinator holds it across the token call;
      it keeps out whoever refreshes the *same* account, and nobody else.
    - The file lock, ``real_path + ".lock"``: every save, metadata write and delete holds
      it for its read-modify-write only (one parse, one compact dump, fsync, rename).

    Reads take no lock (a rename is atomic): a refresh parses the file twice, under its
    account's lock to decide, and inside the save's file lock for the compare-and-set.
    The file is compact JSON with sorted keys; indented files of older versions read too.

    Writes are atomic: a temporary file in the same folder is written, fsynced and moved
    over the old one with :func:`os.replace`, so a process killed at any moment leaves the
    old file or the new one, never a torn one. Files are created mode 0600 (the folder,
    when refresher has to create it, 0700). A file that is not refresher's JSON raises
    :class:`~refresher.TokenStoreError` naming it, and is never overwritten.

    A writer killed mid-write (``kill -9``, power loss) can leave its temporary file,
    ``.{name}.*.tmp``, beside the store. Since writers only write under the file lock,
    whoever next takes it (outermost acquisition) treats every such file as a leftover: one
    that is a complete refresher document holding, for an account, an entry newer than the
    stored one (by ``updated_at``) or an account the store lacks, with a refresh token, is
    adopted (that entry is written into the store, with a warning naming the file), since it
    may be the only copy of a pair the dead writer had already been granted; then every
    leftover is removed. ``lock(account)`` looks for temporary files (one listdir) and, if
    it sees one, takes the file lock to deal with it before it returns, so what is read
    under an account's lock is never older than a leftover. When the store itself is
    corrupt, leftovers are kept for a person.

    Lock files must stay where they are while held: :mod:`filelock` locks an inode, so if a
    tmp cleaner deletes (or something replaces) one, a newcomer creates a new one and locks
    that, and two processes "hold" the lock. Each outermost acquisition checks that the
    path still names the inode it locked (if not, it locks the current file, within the
    same timeout); :meth:`verify_lock`, which the coordinator calls right before it spends a
    refresh token, raises :class:`~refresher.LockLost` (nothing spent) when the account's
    lock file was removed or replaced while held; and a write refuses to rename
    (:class:`~refresher.TokenStoreError`, nothing written) when the file lock's file was.
    Keep the store out of folders that tmp cleaners sweep (``/tmp``, ``/var/tmp``).

    A child forked from a process that used the store (gunicorn ``--preload``, celery
    prefork, :mod:`multiprocessing`) uses it as a process of its own: new lock objects, no
    hold of its parent's (a lock a parent thread held at the fork stays the parent's, and
    the child waits for it like any other process), nothing of its parent's unlocked.

    Account lock files are never removed, not even by :meth:`delete` (another process may
    hold one, or be opening it): one empty file per account ever locked. Remove the
    ``.locks`` folder by hand only while no process uses the store.

    A ``path`` that is a symlink stays one: the store works on the link's target (resolved
    once, when the store is made), and keeps its temporary files and locks beside the
    target, so a program using the link and one using the real path share the file and the
    locks. Messages name the path as given.

    >>> store = JSONTokenStore("~/.config/refresher/tokens.json")  # doctest: +SKIP
    >>> session = RefreshingSession("my-client-id", store=store, account="alice")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: The path as the user gave it, made absolute; messages and ``repr`` name it.
        self.path = Path(os.path.expanduser(os.fspath(path))).absolute()
        #: Where the file really is, symlinks resolved (a dangling link resolves to where its
        #: target will be). Reads, writes, temp files and the locks all use this path, so a
        #: program using the link and one using the real path share one file and its locks.
        self.real_path = Path(os.path.realpath(self.path))
        #: The file lock's path; the lock is held for each read-modify-write of the file,
        #: never across a refresh.
        self.lock_path = Path(str(self.real_path) + ".lock")
        #: The folder of the per-account refresh locks (see :meth:`account_lock_path`).
        self.locks_folder = Path(str(self.real_path) + ".locks")
        self._file_lock: filelock.FileLock | None = None
        self._thread = _ThreadState()
        register(self)  # a forked child starts with no lock object and no hold of its parent's

    def _after_fork_in_child(self) -> None:
        self._file_lock = None
        self._thread = _ThreadState()

    def __repr__(self) -> str:
        return f"JSONTokenStore({str(self.path)!r})"

    @property
    def _where(self) -> str:
        """The store's path for messages: as given, plus where it really is when that differs."""
        if self.real_path == self.path:
            return str(self.path)
        return f"{self.path} (really {self.real_path})"

    def account_lock_path(self, account: str) -> Path:
        """The file that ``lock(account)`` locks."""
        return self.locks_folder / account_lock_name(account)

    # -- reading -------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        """The whole document (one parse); an empty one when the file does not exist yet."""
        self._thread.last_read = None  # any other call ends the load_versioned snapshot
        try:
            with open(self.real_path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return {"format": _FORMAT, "accounts": {}}
        except OSError as exc:
            raise TokenStoreError(
                f"cannot read token store {self._where}: {exc.strerror}"
            ) from None
        if not text.strip():
            raise TokenStoreError(
                f"token store {self._where} is empty; it was left untouched. Delete it, or "
                "restore it from a backup, then log in again."
            )
        try:
            document = json.loads(text)
        except ValueError:
            raise TokenStoreError(
                f"token store {self._where} is not valid JSON; it was left untouched. "
                "Move it aside and log in again, or restore it from a backup."
            ) from None
        accounts = document.get("accounts") if isinstance(document, dict) else None
        if not isinstance(accounts, dict) or not all(
            isinstance(entry, dict) for entry in accounts.values()
        ):
            raise TokenStoreError(
                f"token store {self._where} is JSON but not a refresher token store "
                '(expected {"accounts": {...}}); it was left untouched.'
            )
        return dict(document)

    def load(self, account: str) -> Token | None:
        return self._load_versioned(account).token

    def _load_versioned(self, account: str) -> Versioned:
        """The account's token and its version: a counter every save bumps."""
        entry = self._read()["accounts"].get(account)
        if account in self._thread.holds:
            # Under the account's lock nobody else changes the account, so the metadata
            # read with this token is current: needs_login(account, token), which the
            # coordinator calls next, answers from this parse instead of a second one.
            self._thread.last_read = (account, entry)
        if entry is None:
            return Versioned(None, None)
        token = entry.get("token")
        if not isinstance(token, dict):
            raise TokenStoreError(
                f"token store {self._where}: account {account!r} has no token object; "
                "log in again for that account."
            )
        return Versioned(token, _entry_version(entry))

    def accounts(self) -> list[str]:
        return sorted(
            name for name, entry in self._read()["accounts"].items()
            if "token" in entry and not is_reserved(name)
        )

    def load_metadata(self, account: str) -> dict[str, Any]:
        """What was recorded beside the token; after :meth:`load_versioned` of the same
        account under its lock (as a refresh reads its refusals and any answer pending), from
        that same parse until the next read or write of the file or the lock's release."""
        last_read = self._thread.last_read
        if last_read is not None and last_read[0] == account:
            entry = last_read[1] or {}
        else:
            entry = self._read()["accounts"].get(account) or {}
        metadata = entry.get("metadata") or {}
        result = dict(metadata) if isinstance(metadata, dict) else {}
        if "updated_at" in entry:
            result.setdefault("updated_at", entry["updated_at"])
        return result

    # -- writing -------------------------------------------------------------------------

    def save(self, account: str, token: Token) -> None:
        self._save_versioned(account, token, None)

    def _save_versioned(self, account: str, token: Token, expected_version: str | None) -> str:
        """Store ``token``, refusing with :class:`~refresher.StaleTokenError` when the
        account's version is no longer ``expected_version`` (checked under the file lock)."""
        with self._file_held():
            document = self._read()
            entry = document["accounts"].setdefault(account, {})
            stored = entry.get("token")
            if (expected_version is not None and isinstance(stored, dict)
                    and _entry_version(entry) != expected_version and stored != dict(token)):
                raise StaleTokenError(
                    f"account {account!r} in token store {self._where} was saved by someone "
                    "else since it was read; the newer token is kept"
                )
            entry["token"] = dict(token)
            entry["updated_at"] = time.time()
            entry["version"] = _counter(entry) + 1
            self._write(document)
            return str(entry["version"])

    def save_metadata(self, account: str, metadata: dict[str, Any]) -> None:
        with self._file_held():
            document = self._read()
            document["accounts"].setdefault(account, {})["metadata"] = dict(metadata)
            self._write(document)

    def delete(self, account: str) -> None:
        with self._file_held():
            document = self._read()
            if document["accounts"].pop(account, None) is not None:
                self._write(document)

    def _write(self, document: dict[str, Any]) -> None:
        """Replace the file with ``document``, atomically. Call under the file lock."""
        document["format"] = _FORMAT
        # Compact: the C encoder (an indent forces the pure-Python one, 3x slower), and a
        # quarter smaller. sort_keys costs ~10 % more: the same document, the same bytes.
        data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")
        folder = self.real_path.parent
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(self.real_path),
                                       suffix=TEMP_SUFFIX)
        except OSError as exc:
            raise TokenStoreError(
                f"cannot write token store {self._where}: {exc.strerror}"
            ) from None
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp made it mode 0600
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # Another writer may hold a new lock file if ours was removed: don't rename then.
            check_write_lock(self._lock_object(), self.lock_path, self._where)
            os.replace(tmp, self.real_path)
        except (OSError, TokenStoreError) as exc:
            with suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, TokenStoreError):
                raise
            raise TokenStoreError(
                f"cannot write token store {self._where}: {exc.strerror}; the old file is intact"
            ) from None
        _fsync_folder(folder)

    # -- locking -------------------------------------------------------------------------

    def _ensure_folder(self) -> None:
        folder = self.real_path.parent
        if not folder.exists():
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise TokenStoreError(
                    f"cannot create the folder of token store {self._where}: {exc.strerror}"
                ) from None

    def _lock_object(self) -> filelock.FileLock:
        """The file lock (see the class docstring), shared by every store on this path."""
        if self._file_lock is None:
            self._ensure_folder()
            self._file_lock = os_lock(self.lock_path)
        return self._file_lock

    @contextmanager
    def _file_held(self, timeout: float | None = None,
                   requested: float | None = None) -> Iterator[None]:
        """The file lock, for a read-modify-write; its outermost acquisition adopts (or
        removes) what writers that died left. Never take an account lock inside it."""
        with held(self._lock_object(), self.lock_path, self._where, timeout,
                  requested) as outermost:
            if outermost:
                recover_leftovers(self.real_path, self._where, document_format=_FORMAT,
                                  read=self._read, write=self._write)
            yield

    @contextmanager
    def lock(self, account: str, timeout: float | None = None) -> Iterator[None]:
        """Hold ``account``'s refresh lock (not the file lock: other accounts go on).

        Raises :class:`~refresher.LockTimeout` when it is not had within ``timeout``
        seconds (``None``: wait for ever). Re-entrant within a thread. Code that holds two
        accounts' locks at once must take them in the same order everywhere.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        ensure_lock_folder(self.locks_folder, self._where)
        lock_path = self.account_lock_path(account)
        lock = os_lock(lock_path)
        with held(lock, lock_path, f"{self._where} (account {account!r})",
                  timeout) as outermost:
            if not outermost:
                yield
                return
            if find_leftovers(self.real_path):  # a live writer's temp file, or a dead one's
                log.debug("token store %s: a temporary file beside it; taking the file lock "
                          "to adopt what it holds before account %r is read", self._where,
                          account)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                with self._file_held(remaining, requested=timeout):
                    pass  # adopted what the dead left, before anyone reads under this lock
            self._thread.holds[account] = lock
            try:
                yield
            finally:
                self._thread.holds.pop(account, None)  # gone already in a forked child
                self._thread.last_read = None

    def verify_lock(self, account: str) -> None:
        """Raise :class:`~refresher.LockLost` unless this thread holds ``account``'s lock on
        the lock file that :meth:`account_lock_path` names now.

        A lock file deleted (by a tmp cleaner) or replaced while held no longer keeps others
        out: the next process creates a new one and locks it. The refresh token must not be
        spent then, since that process may be spending it too.
        """
        lock_path = self.account_lock_path(account)
        lock = self._thread.holds.get(account) or os_lock(lock_path)
        check_lock_file(lock, lock_path, self._where, account)


class _ThreadState(threading.local):
    """What one thread did through one store object."""

    def __init__(self) -> None:
        #: The locks of the accounts this thread locked (outermost) through this store.
        self.holds: dict[str, filelock.FileLock] = {}
        #: (account, its entry or None) of the last load_versioned under the account's
        #: lock, until the next read of any kind; see load_metadata.
        self.last_read: tuple[str, dict[str, Any] | None] | None = None


def _counter(entry: dict[str, Any]) -> int:
    version = entry.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def _entry_version(entry: dict[str, Any]) -> str:
    """An entry's version: its save counter, or (files written before counters) a digest."""
    if "version" in entry:
        return str(_counter(entry))
    return content_version(entry.get("token") or {})


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
