"""Write-back: a pair X granted that the store has not taken yet, until it is saved.

Whoever receives a granted pair persists it before anything else, but the store may be down
(a database restarting) or the pair may arrive after its caller gave up waiting (a slow
answer, handed over by the endpoint in a worker thread). X has already spent the old refresh
token by then, so the pair is the only way into the account: it is kept here and written
back first thing, under the store's lock, as a compare-and-set against the refresh token it
replaced (its *parent*): when the store still holds the parent (or nothing), the pair is
saved; when it holds something else (a new login meanwhile), that wins.

:class:`PendingPair` is the pair and the rule; :class:`WriteBack` is when it runs for a
coordinator: before its next request or refresh, or at once for a late grant, and who hears
of a pair it saved (``on_token_update``, once the locks are released).

Words (write back, parent, late grant): see ``docs/explanation/glossary.rst``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import NamedTuple

from ._fork import register
from .errors import RefresherError
from .stores.guarded import GuardedAccount
from .token import Token, fingerprint

__all__ = ["PendingPair", "WrittenBack", "WriteBack"]

# The coordinator's logger: these lines are about its refreshes, and keep the name they had.
log = logging.getLogger("refresher.coordinator")


class WrittenBack(NamedTuple):
    """What a write-back left in the store: ``token`` (the kept pair, or the newer one the
    store held instead) and whether this write-back ``saved`` the kept pair."""

    token: Token
    saved: bool


class PendingPair:
    """At most one granted pair waiting for the store, with the refresh token it replaced."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pair: Token | None = None
        self._parent: str | None = None
        register(self)

    @property
    def waiting(self) -> bool:
        """Whether a pair waits to be written back."""
        return self._pair is not None

    def keep(self, pair: Token, parent: str) -> None:
        """Keep ``pair``, granted for the refresh token ``parent``, until written back."""
        with self._guard:
            self._pair, self._parent = pair, parent

    def forget(self) -> None:
        """Drop the kept pair (a new login replaced the account's token)."""
        with self._guard:
            self._pair = self._parent = None

    def write_back_locked(self, account: GuardedAccount) -> WrittenBack | None:
        """Write the kept pair to ``account``'s store, under its lock (the caller holds it);
        ``None`` when nothing waits. A store failure raises and keeps the pair."""
        with self._guard:
            pair, parent = self._pair, self._parent
        if pair is None:
            return None
        stored = account.load_versioned()
        stored_refresh = (stored.token or {}).get("refresh_token")
        if stored_refresh == pair.get("refresh_token"):
            result = WrittenBack(pair, saved=False)  # written already (by a forked sibling)
        elif stored.token is None or stored_refresh == parent:
            account.save_versioned(pair, stored.version)
            result = WrittenBack(pair, saved=True)
        else:
            assert stored.token is not None
            result = WrittenBack(stored.token, saved=False)  # a login since: theirs wins
        with self._guard:
            if self._pair is pair:  # not replaced by a newer grant meanwhile
                self._pair = self._parent = None
        return result

    def _after_fork_in_child(self) -> None:
        # The pair stays kept (the child may be the one to write it back: the compare-and-set
        # makes a second write-back by the parent a no-op); only the guard starts over.
        self._guard = threading.Lock()


class WriteBack:
    """A coordinator's write-back of ``account``: ``use(token)`` makes a token the one
    requests are sent with, ``announce(pair)`` tells ``on_token_update`` of a pair saved
    here; locks are waited for up to ``lock_timeout`` seconds."""

    def __init__(self, account: GuardedAccount, lock_timeout: float | None,
                 use: Callable[[Token], None], announce: Callable[[Token], None]) -> None:
        self.pending = PendingPair()
        self._account, self._lock_timeout = account, lock_timeout
        self._use, self._announce = use, announce
        self._due: Token | None = None  # saved, for announce once the locks are released

    @property
    def waiting(self) -> bool:
        """Whether a granted pair the store could not take waits to be written back."""
        return self.pending.waiting

    def now(self) -> None:
        """Write the kept pair back (thread lock, then store lock), if one waits."""
        with self._account.thread_held(self._lock_timeout):
            if not self.pending.waiting:
                return
            with self._account.lock(self._lock_timeout):
                self.locked()
        self.announce_due()

    def locked(self) -> None:
        """Write the kept pair back; the caller holds the store's lock."""
        written = self.pending.write_back_locked(self._account)
        if written is None:
            return
        self._use(written.token)
        if written.saved:
            log.info("account %r: saved the token kept in memory", self._account.account)
            self._due = written.token
        # else: someone logged in again meanwhile, and theirs wins

    def late(self, granted: Token, parent: str) -> None:
        """X granted ``granted`` for ``parent`` after its caller gave up waiting (a worker
        thread): keep it, and save it now under the store's lock (not the thread lock,
        which a caller waiting for this very answer may hold)."""
        self.pending.keep(granted, parent)
        log.warning("account %r: a refresh answered after its caller gave up; saving the "
                    "pair it granted (access token %s)", self._account.account,
                    fingerprint(granted.get("access_token")))
        try:
            with self._account.lock(self._lock_timeout):
                self.locked()
        except RefresherError as exc:
            log.error("account %r: could not save the late pair yet (%s); it is kept in "
                      "memory and saved before the next request", self._account.account, exc)
            self._use(granted)
            return
        self.announce_due()

    def announce_due(self) -> None:
        """Tell ``announce`` of a pair saved since it was last told (outside the locks)."""
        due, self._due = self._due, None
        if due is not None:
            self._announce(due)
