"""The SQL store's refresh lock: a lease written in the account's row.

Two columns of the row hold it: ``lease_owner`` (who: host, process id and a random part,
new for every acquisition, so two threads or two store objects never pass for each other)
and ``lease_until`` (epoch seconds, on the database's clock: see
:class:`~refresher.stores.sql_connection.Database`). Nothing stays open in the database
while a lease is held (no transaction, no row lock, no connection), so a holder that dies
(``kill -9``, a lost host) costs the others ``lock_ttl`` seconds at most, and a holder
that hangs cannot block a database.

- **Taking** it is one conditional UPDATE::

      UPDATE refresher_tokens SET lease_owner = :me, lease_until = now + :ttl
      WHERE account = :a AND (lease_owner IS NULL OR lease_until < now OR lease_owner = :me)

  or, for an account that has no row yet, an INSERT that does nothing when the row is
  there; retried every few milliseconds (5 ms, doubling up to 25 ms) until ``timeout``,
  then :class:`~refresher.LockTimeout`, naming the holder.
- **Checking** it, right before a refresh token is sent, renews it to a full ``lock_ttl``
  in the same statement: ``UPDATE ... SET lease_until = now + :ttl WHERE account = :a AND
  lease_owner = :me``. No row means someone else took the lease since (or it was
  released): :class:`~refresher.LockLost`, and nothing is sent. A lease that ran past
  ``lease_until`` while nobody took it is still ours, and renewing it is safe: any other
  taker would have written its own name.
- **Releasing** it clears the two columns only where ``lease_owner = :me``: a holder whose
  lease lapsed and was taken over does not free its successor's. A lease that could not be
  released (the database went away meanwhile) lapses after ``lock_ttl`` for the others;
  the store object that held it takes it back at once under the same name (the ``OR
  lease_owner = :me`` above), so a pair kept in memory is written back as soon as the
  database returns.

The lease is re-entrant within a thread, for one store object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._fork import register
from ..errors import LockLost, LockTimeout, TokenStoreError
from .sql_connection import Database, import_sqlalchemy

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["Leases"]

log = logging.getLogger(__name__)

# Waiters retry the conditional UPDATE: first soon (a refresh is a few ms), then less often.
_FIRST_POLL = 0.005
_MAX_POLL = 0.025
_HOST = socket.gethostname()[:48]


@dataclass
class _Hold:
    """A lease this thread holds: whose name it is written under, and the nesting depth."""

    owner: str
    depth: int = 1


class Leases:
    """Per-account leases in ``table`` (columns ``account``, ``lease_owner``,
    ``lease_until``, ``token``, ``meta``), each living ``lock_ttl`` seconds unless renewed."""

    def __init__(self, db: Database, table: sqlalchemy.Table, lock_ttl: float) -> None:
        sa = import_sqlalchemy()
        self._db = db
        self.table_name = table.name
        self.lock_ttl = lock_ttl
        self._local = threading.local()
        # Leases this object could not give back (the database was away): account -> owner.
        # Its next holder of the account takes the lease under that name, at once, instead
        # of waiting lock_ttl for its own leftover.
        self._unreleased: dict[str, str] = {}
        self._unreleased_guard = threading.Lock()
        register(self)  # a forked child holds no lease of its parent's
        c = table.c
        now = db.now
        me, account = sa.bindparam("me", type_=sa.String), sa.bindparam("a", type_=sa.String)
        until = now + sa.bindparam("ttl", type_=sa.Double)
        self._take = table.update().where(
            c.account == account,
            sa.or_(c.lease_owner.is_(None), c.lease_until < now, c.lease_owner == me),
        ).values(lease_owner=me, lease_until=until)
        self._take_new = db.insert_new(table, {"account": account, "version": 0,
                                               "lease_owner": me, "lease_until": until})
        self._renew = table.update().where(
            c.account == account, c.lease_owner == me).values(lease_until=until)
        self._release = table.update().where(
            c.account == account, c.lease_owner == me).values(lease_owner=None,
                                                               lease_until=None)
        # A row that only ever held a lease (an account with no token yet) goes with it.
        self._prune = table.delete().where(
            c.account == account, c.token.is_(None), c.meta.is_(None),
            c.lease_owner.is_(None))
        self._holder = sa.select(c.lease_owner, c.lease_until - now).where(
            c.account == account)

    def _after_fork_in_child(self) -> None:
        # The parent's holds and unreleased leases are the parent's (their owner names
        # embed its pid): a child that took one back under the same name would share it.
        self._local = threading.local()
        self._unreleased = {}
        self._unreleased_guard = threading.Lock()

    def _holds(self) -> dict[str, _Hold]:
        holds: dict[str, _Hold] | None = getattr(self._local, "holds", None)
        if holds is None:
            holds = self._local.holds = {}
        return holds

    def holds(self, account: str) -> bool:
        """Whether this thread holds the account's lease (as far as it knows)."""
        return account in self._holds()

    # -- taking --------------------------------------------------------------------------

    @contextlib.contextmanager
    def held(self, account: str, timeout: float | None) -> Iterator[None]:
        """The account's lease, for the block; :class:`~refresher.LockTimeout` when it is
        not had within ``timeout`` seconds (``None``: no limit)."""
        holds = self._holds()
        hold = holds.get(account)
        if hold is not None:  # this thread holds it already
            hold.depth += 1
            try:
                yield
            finally:
                hold.depth -= 1
            return
        with self._unreleased_guard:
            leftover = self._unreleased.pop(account, None)
        owner = leftover or f"{_HOST}:{os.getpid()}:{secrets.token_hex(6)}"
        try:
            self._wait_for(account, owner, timeout)
        except TokenStoreError:
            if leftover is not None:  # still ours to take back next time
                self._leftover(account, owner)
            raise
        holds[account] = _Hold(owner)
        holder = os.getpid()
        try:
            yield
        finally:
            del holds[account]
            if os.getpid() == holder:  # in a forked child, the lease is the parent's to give back
                self._give_back(account, owner)

    def _wait_for(self, account: str, owner: str, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        delay = _FIRST_POLL
        while not self._try_take(account, owner):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise LockTimeout(self._timeout_message(account, timeout))
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, _MAX_POLL)

    def _try_take(self, account: str, owner: str) -> bool:
        params = {"a": account, "me": owner, "ttl": self.lock_ttl}
        with self._db.begin(f"lock account {account!r}") as connection:
            if connection.execute(self._take, params).rowcount == 1:
                return True
            return self._db.inserted(connection, self._take_new, params)

    def _timeout_message(self, account: str, timeout: float | None) -> str:
        holder = ""
        with contextlib.suppress(TokenStoreError):
            with self._db.begin(f"read the lock of {account!r}") as connection:
                row = connection.execute(self._holder, {"a": account}).first()
            if row is not None and row[0] is not None:
                holder = f" (held by {row[0]}, for {max(0.0, float(row[1])):.1f} s more)"
        return (
            f"could not lock account {account!r} in SQL token store at {self._db.server} "
            f"(table {self.table_name!r}) within {timeout} s{holder}: another process is "
            "refreshing it, or died holding it (its lease frees itself after "
            f"lock_ttl={self.lock_ttl:g} s)"
        )

    # -- checking and giving back ------------------------------------------------------------

    def verify(self, account: str) -> None:
        """Check this thread's lease on the account is still its own, and renew it to a
        full ``lock_ttl`` (one statement); :class:`~refresher.LockLost` otherwise."""
        hold = self._holds().get(account)
        if hold is None:
            raise LockLost(f"account {account!r}: this thread does not hold its SQL lease")
        params = {"a": account, "me": hold.owner, "ttl": self.lock_ttl}
        with self._db.begin(f"renew the lock of {account!r}") as connection:
            renewed = connection.execute(self._renew, params).rowcount == 1
        if not renewed:
            raise LockLost(
                f"account {account!r} in SQL token store at {self._db.server}: the lease "
                f"lapsed (held longer than lock_ttl={self.lock_ttl:g} s: a paused process?) "
                "and another holder took it before the refresh token was sent; it was not "
                "sent. Raise lock_ttl if this repeats"
            )

    def _leftover(self, account: str, owner: str) -> None:
        with self._unreleased_guard:
            self._unreleased.setdefault(account, owner)

    def _give_back(self, account: str, owner: str) -> None:
        try:
            with self._db.begin(f"release the lock of {account!r}") as connection:
                released = connection.execute(self._release,
                                              {"a": account, "me": owner}).rowcount == 1
                if released:
                    connection.execute(self._prune, {"a": account})
        except TokenStoreError as exc:
            # Raising here would hide the error that ended the block, if any.
            log.warning("%s; the lease frees itself within lock_ttl=%g s (this store takes "
                        "it back at once)", exc, self.lock_ttl)
            self._leftover(account, owner)
            return
        if not released:
            log.warning(
                "account %r: the SQL lease lapsed and was taken over before it was released "
                "(held longer than lock_ttl=%g s); saves were fenced by version",
                account, self.lock_ttl,
            )
