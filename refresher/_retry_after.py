"""When an answer says to try again: ``Retry-After`` and X's rate-limit headers, read once.

Both the token endpoint (a 429 or 503 it retries no sooner than it is told) and the
per-request rule (an API 429 it may wait out, :mod:`refresher.flow`) ask the same question
of an answer's headers: how many seconds from ``now`` until a new request may succeed?

- ``Retry-After``: delta-seconds or an HTTP date (RFC 9110 §10.2.3);
- ``x-rate-limit-reset``: epoch seconds when X's per-endpoint window starts again; also
  ``x-user-limit-24hour-reset`` and ``x-app-limit-24hour-reset``, X's daily caps, when
  their ``-remaining`` is spent. A 429 whose windows all claim requests remaining is
  still about some window: the per-endpoint reset is then the best guess. Any other status
  (a 503) with a window not spent is not about the window: its reset says nothing.

The longest of those waits wins (no sooner than any of them says).

>>> asked_wait({"Retry-After": "30"}, now=1_800_000_000.0)
30.0
>>> asked_wait({"x-rate-limit-reset": "1800000090", "x-rate-limit-remaining": "0"},
...            now=1_800_000_000.0)
90.0
>>> asked_wait({}, now=1_800_000_000.0) is None
True
>>> asked_wait({"x-rate-limit-reset": "1800000090", "x-rate-limit-remaining": "7"},
...            now=1_800_000_000.0, status=503) is None
True
"""

from __future__ import annotations

import email.utils
import math
import time
from typing import Protocol

__all__ = ["Headers", "asked_wait", "when"]

# X's windows: the per-endpoint one first, then the daily caps of the user and of the app.
_WINDOWS = ("x-rate-limit", "x-user-limit-24hour", "x-app-limit-24hour")


class Headers(Protocol):
    """Response headers, looked up without regard to case (requests, httpx and aiohttp
    all give such a mapping)."""

    def get(self, key: str, /) -> str | None: ...


def asked_wait(headers: Headers, now: float, status: int = 429) -> float | None:
    """Seconds from ``now`` (epoch seconds, on the caller's wall clock) until an answer
    with ``status`` says to try again, never negative; ``None`` when it says nothing usable."""
    waits = [wait for wait in (_retry_after(headers.get("Retry-After"), now),
                               *_spent_windows(headers, now)) if wait is not None]
    if not waits and status == 429:
        fallback = _number(headers.get("x-rate-limit-reset"))
        if fallback is not None:
            waits.append(fallback - now)
    return max(0.0, *waits) if waits else None


def when(seconds: float, now: float | None = None) -> str:
    """``HH:MM:SS UTC`` of ``seconds`` from ``now`` (default: the system's wall clock),
    for messages that say when to try again.

    >>> when(90, now=1_800_000_000.0)
    '08:01:30 UTC'
    """
    at = (time.time() if now is None else now) + seconds
    return time.strftime("%H:%M:%S UTC", time.gmtime(math.ceil(at)))


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) else None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 9110: an HTTP date is always GMT
        return None
    return moment.timestamp() - now


def _spent_windows(headers: Headers, now: float) -> list[float | None]:
    waits: list[float | None] = []
    for window in _WINDOWS:
        reset = _number(headers.get(f"{window}-reset"))
        remaining = _number(headers.get(f"{window}-remaining"))
        if reset is not None and remaining is not None and remaining <= 0:
            waits.append(reset - now)
    return waits


def _number(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None
