"""Background refreshes: at most one per account at a time, on one bounded pool per process.

A token with a good margin left is sent as it is while its refresh runs in the background
(google-auth's non-blocking refresh). A process with a thousand accounts whose tokens enter
their refresh window together must not start a thousand threads for that: the runs queue
for a small pool (``RefreshPolicy.background_threads``, one pool per size per process), and
the accounts waiting in the queue keep using their still-valid tokens. A run that finds its
token already replaced (a request thread refreshed it in the meantime) does nothing.

The pool's threads are not daemons: a process that exits while a run is under way waits for
it (bounded by the lock timeout and the grant's deadline), so a pair X granted is saved
rather than lost with the process. Runs still queued when the interpreter is exiting are
dropped: their tokens still work, and nothing was sent for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ._fork import PerProcess, register
from ._pool import BoundedPool

__all__ = ["BackgroundRun", "background_pool", "THREAD_NAME"]

log = logging.getLogger(__name__)

#: The name of every background refresh thread (with a number): what a thread dump shows.
THREAD_NAME = "refresher-background-refresh"

_pools: PerProcess[dict[int, BoundedPool]] = PerProcess(dict)


def background_pool(size: int) -> BoundedPool:
    """This process's pool of at most ``size`` background refresh threads (a forked child
    gets its own; nothing of the parent's is used)."""
    pools = _pools.get()
    pool = pools.get(size)
    if pool is None:  # setdefault is atomic: one pool per size
        pool = pools.setdefault(size, BoundedPool(size, THREAD_NAME, daemon=False))
    return pool


class BackgroundRun:
    """One account's background refresh: queued or running at most once at a time, on the
    process's pool of ``threads`` threads, and joinable."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._guard = threading.Lock()
        self._done: threading.Event | None = None  # set when the current run has ended
        register(self)

    @property
    def running(self) -> bool:
        """Whether a run is queued or under way."""
        done = self._done
        return done is not None and not done.is_set()

    def start(self, job: Callable[[], object]) -> bool:
        """Queue ``job`` unless a run is queued or under way; whether it was queued."""
        with self._guard:
            if self.running:
                return False
            done = self._done = threading.Event()

        def run() -> None:
            try:
                if threading.main_thread().is_alive():
                    job()
                else:  # the interpreter is exiting: the token still works, nothing was sent
                    log.debug("background refresh dropped: the process is exiting")
            finally:
                done.set()

        try:
            background_pool(self.threads).submit(run)
        except BaseException:
            done.set()
            raise
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run queued or under way, if any; False if it has not ended after
        ``timeout`` seconds."""
        done = self._done
        return done is None or done.wait(timeout)

    def _after_fork_in_child(self) -> None:
        # The run (and the thread that ran it) stayed in the parent: no phantom work here.
        self._guard = threading.Lock()
        self._done = None
