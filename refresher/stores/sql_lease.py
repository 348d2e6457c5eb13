"""The SQL store's refresh lock: a lease written in the account's row.

Two columns of the row hold it: ``lease_owner`` (who: host, process id, a random part new
for every acquisition, so two threads or two store objects never pass for each other, and
the holder's ``lock_ttl``) and ``lease_until`` (epoch seconds, on the database's clock
where there is one: see :class:`~refresher.stores.sql_connection.Database`). Nothing stays
open in the database while a lease is held (no transaction, no row lock, no connection),
so a holder that hangs cannot block a database, and one that dies (``kill -9``, a lost
host) is taken over (below).

- **Taking** it is one conditional UPDATE::

      UPDATE refresher_tokens SET lease_owner = :me, lease_until = now + :ttl
      WHERE account = :a AND (lease_owner IS NULL OR lease_owner = :me
                              OR lease_until < now)          -- PostgreSQL only

  or, for an account that has no row yet, an INSERT that does nothing when the row is
  there; retried every few milliseconds (5 ms, doubling up to 25 ms) until ``timeout``,
  counted from the first look, then :class:`~refresher.LockTimeout`, naming the holder.
- **Another's lease** is judged on the server's clock on PostgreSQL (``lease_until <
  now``: every host agrees on it). Elsewhere (SQLite) ``now`` is the client's wall clock,
  which no other process may trust: a process whose clock stepped 45 s ahead would find
  every live lease expired. So there the wall clock is only written, never believed: a
  waiting store takes another's lease once it has itself watched the same ``(lease_owner,
  lease_until)`` stay unchanged for the holder's ``lock_ttl`` on its own monotonic clock
  (which does not step), remembered across waits by the store object, with an UPDATE that
  changes the row only if it still holds exactly that pair. A live holder changes the pair
  when it renews the lease right before the token call, and a grant lasts at most its
  deadline (15 s) after that, less than ``lock_ttl`` (at least 20 s for a session): so
  nothing is taken from a holder that can still send.

  What a dead holder costs: on PostgreSQL, ``lock_ttl`` after it last wrote the lease. On
  SQLite, a store already waiting takes it then too; one that comes later waits up to the
  holder's ``lock_ttl`` from its first look, however long ago ``lease_until`` passed (after
  a crash or a reboot, once per store object). A wait shorter than that (``lock_timeout``
  below ``lock_ttl``) ends in :class:`~refresher.LockTimeout` and the store's next wait
  goes on watching; a process that waits only once (``refresher refresh`` from cron)
  needs a ``lock_timeout`` of at least the holder's ``lock_ttl`` (the defaults: 30 s each).
- **Checking** it, right before a refresh token is sent, renews it to a full ``lock_ttl``
  in the same statement: ``UPDATE ... SET lease_until = now + :ttl WHERE account = :a AND
  lease_owner = :me``. No row means someone else took the lease since (or it was
  released): :class:`~refresher.LockLost`, and nothing is sent. A lease that ran past
  its time while nobody took it is still ours, and renewing it is safe: any other taker
  would have written its own name.
- **Releasing** it clears the two columns only where ``lease_owner = :me``: a holder whose
  lease lapsed and was taken over does not free its successor's. A lease that could not be
  released (the database went away meanwhile) lapses for the others as a dead holder's
  does; the store object that held it takes it back at once under the same name (the
  ``OR lease_owner = :me`` above), so a pair kept in memory is written back as soon as the
  database returns.

The lease is re-entrant within a thread, for one store object.

Words (lease, lapse): see ``docs/explanation/glossary.rst``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING, Any

from .._fork import register
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import LockLost, LockTimeout, TokenStoreError
from ._holds import ThreadHolds
from .sql_connection import Database, import_sqlalchemy

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["Leases"]

log = logging.getLogger(__name__)

# Waiters retry the conditional UPDATE: first soon (a refresh is a few ms), then less often.
_FIRST_POLL = 0.005
_MAX_POLL = 0.025
_HOST = socket.gethostname()[:48]
# Owner names end with the holder's lock_ttl, which is how long others watch its lease.
_TTL_TAG = ":ttl="


class Leases:
    """Per-account leases in ``table`` (columns ``account``, ``lease_owner``,
    ``lease_until``, ``token``, ``meta``), each living ``lock_ttl`` seconds unless renewed."""

    def __init__(self, db: Database, table: sqlalchemy.Table, lock_ttl: float,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        sa = import_sqlalchemy()
        self._db = db
        self.table_name = table.name
        self.lock_ttl = lock_ttl
        self._clock = clock
        # The lease this thread holds, per account: its owner name (a forked child holds
        # none of its parent's: their names embed the parent's pid).
        self._holds: ThreadHolds[str] = ThreadHolds()
        # Others' leases this store is watching (client clocks only): account -> (owner,
        # lease_until, when first seen on the monotonic clock). Plain dict operations, no
        # lock: a lost race only makes a watch start again later.
        self._watched: dict[str, tuple[str, float, float]] = {}
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
        free = [c.lease_owner.is_(None), c.lease_owner == me]
        if db.clock == "database":
            free.append(c.lease_until < now)
        self._take = table.update().where(c.account == account, sa.or_(*free)) \
            .values(lease_owner=me, lease_until=until)
        # Another's lease, watched long enough: taken only if it is still the one watched.
        self._take_watched = table.update().where(
            c.account == account, c.lease_owner == sa.bindparam("seen_owner", type_=sa.String),
            sa.func.coalesce(c.lease_until, 0.0) == sa.bindparam("seen_until", type_=sa.Double),
        ).values(lease_owner=me, lease_until=until)
        self._lease = sa.select(c.lease_owner, c.lease_until).where(c.account == account)
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
        # The parent's unreleased leases are the parent's (their owner names embed its
        # pid): a child that took one back under the same name would share it.
        self._unreleased = {}
        self._unreleased_guard = threading.Lock()

    def holds(self, account: str) -> bool:
        """Whether this thread holds the account's lease (as far as it knows)."""
        return account in self._holds

    # -- taking --------------------------------------------------------------------------

    def held(self, account: str, timeout: float | None) -> contextlib.AbstractContextManager[str]:
        """The account's lease, for the block; :class:`~refresher.LockTimeout` when it is
        not had within ``timeout`` seconds (``None``: no limit)."""
        return self._holds.held(account, take=lambda: self._take_lease(account, timeout),
                                give_back=lambda owner: self._give_back(account, owner))

    def _take_lease(self, account: str, timeout: float | None) -> str:
        """Wait for the account's lease; the owner name it is held under."""
        with self._unreleased_guard:
            leftover = self._unreleased.pop(account, None)
        owner = leftover or (f"{_HOST}:{os.getpid()}:{secrets.token_hex(6)}"
                             f"{_TTL_TAG}{self.lock_ttl:g}")
        try:
            self._wait_for(account, owner, timeout)
        except TokenStoreError:
            if leftover is not None:  # still ours to take back next time
                self._leftover(account, owner)
            raise
        return owner

    def _wait_for(self, account: str, owner: str, timeout: float | None) -> None:
        clock, deadline, delay = self._clock, None, _FIRST_POLL
        while not self._try_take(account, owner):
            if deadline is None and timeout is not None:
                # Counted from the first look, which starts the watch: a timeout of the
                # holder's lock_ttl then outlasts the watch of a dead holder's lease.
                deadline = clock.monotonic() + max(0.0, timeout)
            left = None if deadline is None else deadline - clock.monotonic()
            if left is not None and left <= 0:
                raise LockTimeout(self._timeout_message(account, timeout))
            clock.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, _MAX_POLL)

    def _try_take(self, account: str, owner: str) -> bool:
        params = {"a": account, "me": owner, "ttl": self.lock_ttl}

        def take(connection: sqlalchemy.Connection) -> bool:
            taken = connection.execute(self._take, params).rowcount == 1 \
                or self._db.inserted(connection, self._take_new, params)
            if not taken and self._db.clock != "database":
                taken = self._take_if_outlasted(connection, account, params)
            return taken

        taken = self._db.run(f"lock account {account!r}", take)
        if taken:
            self._watched.pop(account, None)
        return taken

    def _take_if_outlasted(self, connection: sqlalchemy.Connection, account: str,
                           params: dict[str, object]) -> bool:
        """Take another's lease if this store has watched it unchanged for its holder's
        ``lock_ttl`` on the monotonic clock (see the module's docstring); else watch it."""
        row = connection.execute(self._lease, {"a": account}).first()
        if row is None or row[0] is None:
            return False  # released meanwhile: free for the next try
        seen = (str(row[0]), 0.0 if row[1] is None else float(row[1]))
        now = self._clock.monotonic()
        watched = self._watched.get(account)
        if watched is None or watched[:2] != seen:
            self._watched[account] = (*seen, now)
            return False
        unchanged = now - watched[2]
        if unchanged < self._holder_ttl(seen[0]):
            return False
        if connection.execute(self._take_watched, {**params, "seen_owner": seen[0],
                                                   "seen_until": seen[1]}).rowcount != 1:
            return False
        log.warning("account %r: took over the SQL lease of %s, unchanged for %.1f s "
                    "(its holder died, or hangs)", account, seen[0], unchanged)
        return True

    def _holder_ttl(self, owner: str) -> float:
        """The ``lock_ttl`` named in ``owner``; this store's for a name without one."""
        try:
            ttl = float(owner.rpartition(_TTL_TAG)[2]) if _TTL_TAG in owner else -1.0
        except ValueError:
            ttl = -1.0
        return ttl if 0 < ttl < math.inf else self.lock_ttl

    def _timeout_message(self, account: str, timeout: float | None) -> str:
        holder = ""
        with contextlib.suppress(TokenStoreError):
            row = self._db.run(f"read the lock of {account!r}", lambda connection:
                               connection.execute(self._holder, {"a": account}).first())
            if row is not None and row[0] is not None:
                holder = f" (held by {row[0]}{self._outlook(account, row)})"
        return (
            f"could not lock account {account!r} in SQL token store at {self._db.server} "
            f"(table {self.table_name!r}) within {timeout} s{holder}: another process is "
            "refreshing it, or died holding it (its lease frees itself after "
            f"lock_ttl={self.lock_ttl:g} s)"
        )

    def _outlook(self, account: str, row: Any) -> str:
        """When the holder's lease frees itself, as this store judges it."""
        if self._db.clock == "database":
            return f", for {max(0.0, float(row[1] or 0.0)):.1f} s more"
        watched = self._watched.get(account)
        so_far = self._clock.monotonic() - watched[2] \
            if watched is not None and watched[0] == row[0] else 0.0
        return (f"; this store takes it over once it has stayed unchanged for "
                f"{self._holder_ttl(str(row[0])):g} s, {so_far:.1f} s so far")

    # -- checking and giving back ------------------------------------------------------------

    def verify(self, account: str) -> None:
        """Check this thread's lease on the account is still its own, and renew it to a
        full ``lock_ttl`` (one statement); :class:`~refresher.LockLost` otherwise."""
        owner = self._holds.get(account)
        if owner is None:
            raise LockLost(f"account {account!r}: this thread does not hold its SQL lease")
        params = {"a": account, "me": owner, "ttl": self.lock_ttl}
        renewed = self._db.run(f"renew the lock of {account!r}", lambda connection:
                               connection.execute(self._renew, params).rowcount == 1)
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
        def release(connection: sqlalchemy.Connection) -> bool:
            released = connection.execute(self._release,
                                          {"a": account, "me": owner}).rowcount == 1
            if released:
                connection.execute(self._prune, {"a": account})
            return released

        try:
            released = self._db.run(f"release the lock of {account!r}", release)
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
