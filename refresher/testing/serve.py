"""Serve an :class:`~refresher.testing.XEmulator` in the foreground until SIGINT or SIGTERM.

The one serving loop behind ``refresher emulator`` and ``python -m refresher.testing``:
each prints its own banner, both stop on Ctrl-C (SIGINT) or SIGTERM and then exit 0.

Two details make the stop reliable. The handlers are installed by :func:`serve` itself,
before the emulator starts, rather than left to Python's default: a process started with
SIGINT ignored (a background job of a non-interactive shell, and every child of one, gets
SIGINT as ``SIG_IGN``, and Python then raises no ``KeyboardInterrupt``) would otherwise
never stop on Ctrl-C. And the handlers only record the signal: they take no lock (as
``threading.Event.set`` would), since a handler runs in the main thread between two
bytecodes, possibly while that thread holds the very lock in ``Event.wait``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from refresher.testing import XEmulator

__all__ = ["STOP_SIGNALS", "serve"]

log = logging.getLogger(__name__)

#: The signals that stop :func:`serve` (SIGINT is Ctrl-C; SIGTERM what ``kill`` sends).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(
    emulator: XEmulator,
    announce: Callable[[XEmulator], None],
    *,
    stop: threading.Event | None = None,
    poll_interval: float = 0.1,
) -> signal.Signals | None:
    """Start ``emulator``, call ``announce(emulator)``, serve until a stop signal, stop it.

    The SIGINT and SIGTERM handlers are installed first (in the main thread only: elsewhere
    signals cannot be handled) and put back as they were afterwards. ``stop``, when given,
    also ends the serving once set (for callers not in the main thread, and tests). The
    emulator is stopped whatever happens; ``announce`` is the place to print the URLs.
    Returns the signal that ended the serving, ``None`` if ``stop`` did.

    >>> from refresher.testing import XEmulator
    >>> done = threading.Event()
    >>> serve(XEmulator(), lambda x: done.set(), stop=done)
    """
    received: list[signal.Signals] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))  # no lock: see the module's docstring

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, record)
    waiting = stop if stop is not None else threading.Event()
    try:
        emulator.start()
        announce(emulator)
        while not received and not waiting.wait(poll_interval):
            pass
    finally:
        emulator.stop()
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python; leave ours
                signal.signal(signum, handler)
    if received:
        log.debug("X emulator stopped on %s", received[0].name)
        return received[0]
    return None
