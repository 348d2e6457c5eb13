"""One grant's retries at the token endpoint: how many are left, how long to wait before
each, and whether one still fits before the grant's deadline.

The wait before a retry is the exponential backoff (``backoff × 2^(n-1)`` before the n-th),
and never shorter than what a 429 or 503 asked (``Retry-After``, ``x-rate-limit-reset``:
:mod:`refresher._retry_after`). Every retry must leave ``RETRY_HEADROOM`` seconds for its
answer before the deadline; a wait the endpoint asks for that would not is not waited:
the caller fails at once instead, saying when to try again.
"""

from __future__ import annotations

import logging

from ._retry_after import Headers, asked_wait, when
from .clock import Clock

__all__ = ["GrantRetries", "RETRY_HEADROOM", "ASKS_TO_WAIT", "asked_to_wait"]

log = logging.getLogger("refresher.endpoint")  # where these lines were always logged

#: The time a retry must leave for its answer.
RETRY_HEADROOM = 0.5
#: Answers whose ``Retry-After`` or ``x-rate-limit-reset`` is obeyed: they say X did not act.
ASKS_TO_WAIT = frozenset({429, 503})


def asked_to_wait(status: int, headers: Headers, clock: Clock) -> tuple[float, str] | None:
    """The seconds a 429 or 503 asks to wait, and until when in words (on ``clock``'s wall
    time); ``None`` for another status, or one that asks nothing."""
    if status not in ASKS_TO_WAIT:
        return None
    now = clock.time()
    wait = asked_wait(headers, now, status)
    return None if wait is None else (wait, when(wait, now))


class GrantRetries:
    """The retries of one grant: ``retries`` at most, ``backoff`` seconds before the first,
    all before ``give_up_at`` (``clock.monotonic()``). ``attempt`` counts the retries made."""

    def __init__(self, retries: int, backoff: float, clock: Clock, give_up_at: float) -> None:
        self.retries, self.backoff, self.clock = retries, backoff, clock
        self.give_up_at = give_up_at
        self.attempt = 0

    def fits(self, wait: float) -> bool:
        """A retry after ``wait`` seconds still leaves time for its answer."""
        return self.clock.monotonic() + wait + RETRY_HEADROOM < self.give_up_at

    def may_retry(self, at_least: float = 0.0) -> bool:
        """Another try is allowed, and its wait leaves time for an answer."""
        return self.attempt < self.retries and self.fits(
            max(at_least, self.backoff * (2 ** self.attempt)))

    def wait(self, why: str, at_least: float = 0.0) -> None:
        """Count a retry and wait before it: the backoff, at least ``at_least`` seconds."""
        self.attempt += 1
        delay = self.backoff * (2 ** (self.attempt - 1))
        room = self.give_up_at - self.clock.monotonic() - RETRY_HEADROOM
        delay = max(at_least, min(delay, room), 0.0)
        log.warning("%s; retrying in %.2f s (attempt %d of %d)", why, delay, self.attempt,
                    self.retries)
        self.clock.sleep(delay)
