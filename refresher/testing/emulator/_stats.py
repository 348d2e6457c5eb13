"""Counting what clients do to an emulator: :class:`EmulatorStats` and the live counts."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class EmulatorStats:
    """Counts of what clients did to an :class:`XEmulator`, as a snapshot.

    ``reused_refresh_tokens`` is the one refresher exists to keep at zero: a refresh token
    sent again after a refresh already spent it, typically by two processes refreshing at once.
    ``rate_limited`` counts the API's 429 answers (``enforce_rate_limits``).
    """

    token_requests: int = 0
    exchanges: int = 0
    refreshes: int = 0
    reused_refresh_tokens: int = 0
    invalid_refresh_tokens: int = 0
    api_requests: int = 0
    unauthorized: int = 0
    forbidden: int = 0
    revocations: int = 0
    rate_limited: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict, e.g. ``{"refreshes": 1, ...}``."""
        return asdict(self)


_NAMES = tuple(f.name for f in fields(EmulatorStats))


class Counters:
    """The running counts behind :attr:`XEmulator.stats`, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_NAMES, 0)

    def add(self, *names: str) -> None:
        """Count one more of each of ``names`` (fields of :class:`EmulatorStats`)."""
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def snapshot(self) -> EmulatorStats:
        """The counts as they are now."""
        with self._lock:
            return EmulatorStats(**self._counts)

    def reset(self) -> None:
        """Every count back to zero."""
        with self._lock:
            self._counts = dict.fromkeys(_NAMES, 0)
