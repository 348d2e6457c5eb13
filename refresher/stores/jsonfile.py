"""JSONTokenStore: many accounts in one JSON file, shared by processes on one machine."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from ..errors import StaleTokenError, TokenStoreError
from ..token import Token
from .base import TokenStore, Versioned, content_version, overrides
from .jsonfile_leftovers import TEMP_SUFFIX, recover_leftovers, temp_prefix
from .jsonfile_lock import acquire_current_lock_file, acquire_lock, check_lock_file

__all__ = ["JSONTokenStore"]

# The store's logger: jsonfile_leftovers and jsonfile_lock log under this name too.
log = logging.getLogger(__name__)

_FORMAT = "refresher/1"
# The lock is polled; short polls keep the wait of the processes queued behind a refresh
# close to the refresh's own round trip.
_LOCK_POLL_INTERVAL = 0.002


class JSONTokenStore(TokenStore):
    """One JSON file holding many accounts, guarded by an OS file lock at ``path + ".lock"``
    (``path`` with symlinks resolved).

    Writes are atomic: a temporary file in the same folder is written, fsynced and moved
    over the old one with :func:`os.replace`, so a process killed at any moment leaves the
    old file or the new one, never a torn one. Files are created mode 0600 (the folder,
    when refresher has to create it, 0700). A file that is not refresher's JSON raises
    :class:`~refresher.TokenStoreError` naming it, and is never overwritten.

    The lock is :mod:`filelock`'s OS lock: a process that dies holding it releases it. It
    covers the whole file, so refreshes of different accounts in one file take turns.

    A writer killed mid-write (``kill -9``, power loss) can leave its temporary file,
    ``.{name}.*.tmp``, beside the store. Since writers only write under the lock, whoever
    next takes the lock (outermost acquisition) treats every such file as a leftover: one
    that is a complete refresher document holding, for an account, an entry newer than the
    stored one (by ``updated_at``) or an account the store lacks, with a refresh token, is
    adopted (that entry is written into the store, with a warning naming the file), since it
    may be the only copy of a pair the dead writer had already been granted; then every
    leftover is removed. When the store itself is corrupt, leftovers are kept for a person.

    The lock file must stay where it is while held: :mod:`filelock` locks an inode, so if a
    tmp cleaner deletes (or something replaces) the lock file, a newcomer creates a new one
    and locks that, and two processes "hold" the lock. Two checks narrow this: on each
    outermost acquisition the store checks that the lock path still names the inode it
    locked (if not, it releases and locks the current file, within the same timeout); and
    :meth:`verify_lock`, which the coordinator calls right before it spends a refresh token,
    raises :class:`~refresher.LockLost` (nothing spent) when the lock file was removed or
    replaced while held. What remains unprotected: from the moment the file is removed until
    the holder's next check, the holder and a newcomer each hold a lock on a different
    inode, so writes of theirs that need no refresh token (saves, metadata) can interleave.
    Keep the store out of folders that tmp cleaners sweep (``/tmp``, ``/var/tmp``).

    A ``path`` that is a symlink stays one: the store works on the link's target (resolved
    once, when the store is made), writes its temporary files beside the target and locks
    ``target + ".lock"``, so a program using the link and one using the real path share
    the file and the lock. Messages name the path as given.

    >>> store = JSONTokenStore("~/.config/refresher/tokens.json")  # doctest: +SKIP
    >>> session = RefreshingSession("my-client-id", store=store, account="alice")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: The path as the user gave it (absolute): what messages and ``repr`` name.
        self.path = Path(os.path.expanduser(os.fspath(path))).absolute()
        #: Where the file really is, symlinks resolved (a dangling link resolves to where its
        #: target will be). Reads, writes, temp files and the lock all use this path, so a
        #: program using the link and one using the real path share one file and one lock.
        self.real_path = Path(os.path.realpath(self.path))
        self.lock_path = Path(str(self.real_path) + ".lock")
        self._file_lock: filelock.FileLock | None = None

    def __repr__(self) -> str:
        return f"JSONTokenStore({str(self.path)!r})"

    @property
    def _where(self) -> str:
        """The store's path for messages: as given, plus where it really is when that differs."""
        if self.real_path == self.path:
            return str(self.path)
        return f"{self.path} (really {self.real_path})"

    # -- reading -------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        """The whole document; an empty one when the file does not exist yet."""
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
        return JSONTokenStore.load_versioned(self, account).token

    def load_versioned(self, account: str) -> Versioned:
        """The account's token and its version: a counter every save bumps."""
        if overrides(self, "load", JSONTokenStore) or overrides(self, "save", JSONTokenStore):
            return TokenStore.load_versioned(self, account)  # a subclass's load/save rule
        entry = self._read()["accounts"].get(account)
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
            name for name, entry in self._read()["accounts"].items() if "token" in entry
        )

    def load_metadata(self, account: str) -> dict[str, Any]:
        entry = self._read()["accounts"].get(account) or {}
        metadata = entry.get("metadata") or {}
        result = dict(metadata) if isinstance(metadata, dict) else {}
        if "updated_at" in entry:
            result.setdefault("updated_at", entry["updated_at"])
        return result

    # -- writing -------------------------------------------------------------------------

    def save(self, account: str, token: Token) -> None:
        JSONTokenStore.save_versioned(self, account, token)

    def save_versioned(self, account: str, token: Token,
                       expected_version: str | None = None) -> str:
        """Store ``token``, refusing with :class:`~refresher.StaleTokenError` when the
        account's version is no longer ``expected_version`` (checked under the file lock)."""
        if overrides(self, "load", JSONTokenStore) or overrides(self, "save", JSONTokenStore):
            return TokenStore.save_versioned(self, account, token, expected_version)
        with self._held():
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
        with self._held():
            document = self._read()
            document["accounts"].setdefault(account, {})["metadata"] = dict(metadata)
            self._write(document)

    def delete(self, account: str) -> None:
        with self._held():
            document = self._read()
            if document["accounts"].pop(account, None) is not None:
                self._write(document)

    def _write(self, document: dict[str, Any]) -> None:
        document["format"] = _FORMAT
        data = json.dumps(document, indent=2, sort_keys=True).encode("utf-8")
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
            os.replace(tmp, self.real_path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
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
        if self._file_lock is None:
            self._ensure_folder()
            # is_singleton: every store object on this path in this process shares one
            # re-entrant lock, so a hook that saves through a second store cannot deadlock.
            self._file_lock = filelock.FileLock(
                str(self.lock_path), mode=0o600, is_singleton=True,
                poll_interval=_LOCK_POLL_INTERVAL,
            )
        return self._file_lock

    @contextmanager
    def _held(self, timeout: float | None = None) -> Iterator[None]:
        lock = self._lock_object()
        outermost = not lock.is_locked  # per thread: filelock's holds are thread-local
        if outermost:
            acquire_current_lock_file(lock, self.lock_path, self._where, timeout)
        else:
            acquire_lock(lock, self.lock_path, self._where, timeout)  # re-entrant: only counts
        try:
            if outermost:
                recover_leftovers(self.real_path, self._where, document_format=_FORMAT,
                                  read=self._read, write=self._write)
            yield
        finally:
            lock.release()

    def lock(self, account: str, timeout: float | None = None) -> Any:
        return self._held(timeout)

    def verify_lock(self, account: str) -> None:
        """Raise :class:`~refresher.LockLost` unless this thread holds the lock on the lock
        file that ``lock_path`` names now.

        A lock file deleted (by a tmp cleaner) or replaced while held no longer keeps others
        out: the next process creates a new one and locks it. The refresh token must not be
        spent then, since that process may be spending it too.
        """
        check_lock_file(self._lock_object(), self.lock_path, self._where, account)


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
