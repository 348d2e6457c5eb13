"""The clock refresher reads: wall time, monotonic time, and sleeping, in one seam.

Everything that asks what time it is (token expiry, deadlines, backoff, the emulator's
token lifetimes) asks a :class:`Clock`, so a test can hand the same
:class:`~refresher.testing.FakeClock` to a session and to the emulator and move time on
instead of sleeping.
"""

from __future__ import annotations

import time

__all__ = ["Clock", "SYSTEM_CLOCK"]


class Clock:
    """The real clock: :func:`time.time`, :func:`time.monotonic`, :func:`time.sleep`, and
    :func:`asyncio.sleep` for coroutines."""

    def time(self) -> float:
        """Seconds since the epoch (token ``expires_at`` is on this clock)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (deadlines and retry delays)."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Wait ``seconds`` without blocking the event loop."""
        import asyncio  # only async callers pay for it

        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: The clock everything uses unless told otherwise.
SYSTEM_CLOCK = Clock()
