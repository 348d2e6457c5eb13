"""BoundedPool: at most ``size`` threads run the jobs handed in; the rest wait in a queue.

A process with a thousand accounts must not start a thousand threads (one per background
refresh, one per token request). Both kinds of job run on pools of this class, one per
process (made through :class:`refresher._fork.PerProcess`, so a forked child gets its own
and never touches the parent's threads, locks or queue).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

__all__ = ["BoundedPool"]

log = logging.getLogger(__name__)


class BoundedPool:
    """At most ``size`` threads named ``name-N`` run jobs; more jobs wait in a FIFO queue.

    Threads start on demand and end once they have idled ``idle_seconds`` (0: as soon as
    the queue is empty). ``daemon`` threads do not hold up the process's exit; non-daemon
    ones are waited for by the interpreter at exit, so a job under way ends (and saves what
    it must) before the process does: keep ``idle_seconds`` 0 for those, or an idle thread
    would hold the exit up too.
    """

    def __init__(self, size: int, name: str, *, daemon: bool,
                 idle_seconds: float = 0.0) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one thread, not {size!r}")
        self.size, self.name, self.daemon, self.idle_seconds = size, name, daemon, idle_seconds
        self._lock = threading.Lock()
        self._jobs_ready = threading.Condition(self._lock)
        self._jobs: collections.deque[Callable[[], object]] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._started = 0

    @property
    def threads(self) -> int:
        """How many pool threads exist now."""
        return self._threads

    @property
    def queued(self) -> int:
        """How many jobs wait for a thread."""
        return len(self._jobs)

    def submit(self, job: Callable[[], object]) -> None:
        """Queue ``job``; a thread is started if all are busy and the bound allows."""
        with self._lock:
            self._jobs.append(job)
            if len(self._jobs) > self._idle and self._threads < self.size:
                self._start_thread()
            else:
                self._jobs_ready.notify()

    def _start_thread(self) -> None:
        self._started += 1
        thread = threading.Thread(target=self._serve, daemon=self.daemon,
                                  name=f"{self.name}-{self._started}")
        try:
            thread.start()
        except RuntimeError:  # the OS refuses another thread: the busy ones will get to it
            if self._threads == 0:
                self._jobs.pop()
                raise
            log.warning("could not start another %s thread; the job waits for one of the "
                        "%d running", self.name, self._threads)
            return
        self._threads += 1

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._idle += 1
                    woken = self._jobs_ready.wait(self.idle_seconds)
                    self._idle -= 1
                    if not woken and not self._jobs:
                        self._threads -= 1
                        return
                job = self._jobs.popleft()
            try:
                job()
            except BaseException:  # a job hands its own errors on; this is a last resort
                log.exception("%s job failed", self.name)
