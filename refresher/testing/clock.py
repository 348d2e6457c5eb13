"""FakeClock: time that moves only when a test says so."""

from __future__ import annotations

import threading

from refresher.clock import Clock

__all__ = ["FakeClock"]


class FakeClock(Clock):
    """A :class:`~refresher.clock.Clock` for tests: ``advance(seconds)`` moves both the
    wall clock and the monotonic clock; ``sleep`` and ``asleep`` advance instead of waiting.

    Hand the same instance to a session (``clock=``) and to an
    :class:`~refresher.testing.XEmulator` (``clock=``), and token expiry can be tested
    without sleeping::

        clock = FakeClock()
        x = XEmulator(clock=clock, access_ttl=7200).start()
        ...
        clock.advance(7200)  # every access token is now expired, at X and in the session
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._lock = threading.Lock()
        self._time = float(start)
        self._monotonic = 1_000.0

    def time(self) -> float:
        with self._lock:
            return self._time

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        """Advance instead of waiting, as :meth:`sleep` does (the event loop runs on)."""
        self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` forward."""
        if seconds < 0:
            raise ValueError("a clock does not go back; use set_time() to make the wall clock jump")
        with self._lock:
            self._time += seconds
            self._monotonic += seconds

    def set_time(self, epoch_seconds: float) -> None:
        """Make the wall clock jump (as NTP may), leaving the monotonic clock alone."""
        with self._lock:
            self._time = float(epoch_seconds)

    def __repr__(self) -> str:
        return f"FakeClock(time={self.time():.3f})"
