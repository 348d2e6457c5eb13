"""What a forked child must not inherit as it is: locks, connections, threads, caches.

gunicorn ``--preload``, celery prefork and :mod:`multiprocessing` (fork) start workers from a
parent that has already used refresher. ``os.fork`` copies every object but only the thread
that called it, so in the child:

- a :class:`threading.Lock` a parent thread held stays held, with nobody to release it;
- a pooled connection (HTTP, Redis, a database) is one socket shared with the parent, and
  two processes talking on one socket read each other's answers;
- a background thread is gone, while the object that started it thinks it still runs;
- an OS file lock (``flock``) held by the parent is held through an open file description
  the child shares: unlocking it in the child frees the parent's lock.

Every object of refresher's that holds such state registers here (:func:`register`) and
gets, right after a fork and in the child only, a call to its ``_after_fork_in_child()``:
it drops what it inherited *without* using it (no unlock, no close handshake on a socket)
and starts over. State created lazily per process can use :class:`PerProcess` instead,
which notices the pid change where the value is used.

Nothing here runs in the parent, and nothing runs on platforms without ``os.fork``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["ForkAware", "register", "PerProcess", "forks_seen"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ForkAware(Protocol):
    """An object that starts over in a forked child."""

    def _after_fork_in_child(self) -> None:
        """Drop what was inherited from the parent (without using it) and start over."""


_registered: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_forks = 0


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked from now on, for as long
    as ``obj`` lives (held weakly: registering keeps nothing alive)."""
    _registered.add(obj)


def forks_seen() -> int:
    """How many forks this process descends from since refresher was imported (0 in the
    process that imported it); tests and :class:`PerProcess` read it."""
    return _forks


def _reset_in_child() -> None:
    global _forks
    _forks += 1
    for obj in list(_registered):
        try:
            obj._after_fork_in_child()
        except Exception:  # one object's failure must not leave the others inherited
            log.exception("resetting %s after fork failed", type(obj).__name__)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


class PerProcess(Generic[_T]):
    """A value made by ``factory`` once per process: a child forked after it was made gets
    its own on first use (the parent's copy is dropped unused; ``discard``, when given, is
    called with it in the child, to close file descriptors without touching what they
    share with the parent)."""

    def __init__(self, factory: Callable[[], _T],
                 discard: Callable[[_T], object] | None = None) -> None:
        self._factory = factory
        self._discard = discard
        self._value: _T | None = None
        self._pid = -1
        self._guard = threading.Lock()
        register(self)

    def get(self) -> _T:
        """This process's value."""
        value, pid = self._value, self._pid
        if value is not None and pid == os.getpid():
            return value
        with self._guard:
            if self._value is None or self._pid != os.getpid():
                self._value, self._pid = self._factory(), os.getpid()
            return self._value

    def peek(self) -> _T | None:
        """This process's value if it was made, else ``None`` (nothing is made)."""
        return self._value if self._pid == os.getpid() else None

    def _after_fork_in_child(self) -> None:
        self._guard = threading.Lock()
        inherited, self._value, self._pid = self._value, None, -1
        if inherited is not None and self._discard is not None:
            self._discard(inherited)
