"""Which accounts this thread holds the lock of: the re-entrant hold the Redis and SQL stores
share.

A store's lock is re-entrant within a thread, for one store object: a thread that holds an
account's lock and asks for it again goes on at once, and only the outermost block gives
it back. :class:`ThreadHolds` keeps, per thread, what each held lock is (redis-py's lock,
a lease owner's name), which is also how a store knows whether this thread holds it.

Fork. A child forked inside a held block holds nothing of its parent's: the table starts
empty in the child (see :mod:`refresher._fork`), and the block, when it ends in the child,
gives nothing back (the lock is the parent's to give back).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from .._fork import register

__all__ = ["ThreadHolds"]

_H = TypeVar("_H")


class ThreadHolds(Generic[_H]):
    """Per thread, account -> the hold (of type ``_H``) this thread has on its lock.

    >>> holds: ThreadHolds[str] = ThreadHolds()
    >>> with holds.held("alice", take=lambda: "lock-1", give_back=print):
    ...     with holds.held("alice", take=lambda: "lock-2", give_back=print):
    ...         holds.get("alice")
    'lock-1'
    lock-1
    >>> "alice" in holds
    False
    """

    def __init__(self) -> None:
        self._local = threading.local()
        register(self)  # a forked child holds none of its parent's locks

    def _after_fork_in_child(self) -> None:
        self._local = threading.local()

    def mine(self) -> dict[str, _H]:
        """This thread's holds, by account."""
        holds: dict[str, _H] | None = getattr(self._local, "holds", None)
        if holds is None:
            holds = self._local.holds = {}
        return holds

    def get(self, account: str) -> _H | None:
        """This thread's hold on the account's lock, or ``None``."""
        return self.mine().get(account)

    def __contains__(self, account: object) -> bool:
        return account in self.mine()

    @contextmanager
    def held(self, account: str, take: Callable[[], _H],
             give_back: Callable[[_H], object]) -> Iterator[_H]:
        """The account's lock for the block: ``take()`` gets it (or raises) unless this
        thread holds it already; ``give_back(hold)`` ends the outermost block, in the
        process that took it only."""
        holds = self.mine()
        hold = holds.get(account)
        if hold is not None:  # this thread holds it already
            yield hold
            return
        hold = holds[account] = take()
        holder = os.getpid()
        try:
            yield hold
        finally:
            del holds[account]
            if os.getpid() == holder:  # in a forked child, the lock is the parent's
                give_back(hold)
