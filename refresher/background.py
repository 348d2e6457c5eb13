"""OneAtATime: at most one background run of a job at a time, joinable."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["OneAtATime"]


class OneAtATime:
    """Runs ``job`` in a thread of its own, unless a run of it is still going.

    The thread is not a daemon: a process that exits while a run is under way waits for it
    (the coordinator's refresh is bounded by the lock timeout and the grant's deadline), so a
    pair X granted is saved rather than lost with the process.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether a run is under way."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self, job: Callable[[], object]) -> bool:
        """Start ``job`` unless a run is under way; whether it was started."""
        with self._guard:
            if self.running:
                return False
            self._thread = threading.Thread(target=job, name=self.name)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run under way, if any; False if it still runs after ``timeout``."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()
