"""Serve an :class:`~refresher.testing.XEmulator` in the foreground until SIGINT or SIGTERM.

The one serving loop behind ``refresher emulator`` and ``python -m refresher.testing``:
each prints its own banner, both stop on Ctrl-C (SIGINT) or SIGTERM and then exit 0.
Both register callback URLs as X does (:func:`add_redirect_options`,
:func:`registered_redirect_uris`): the login's default one and those given, matched exactly.

Two details make the stop reliable. The handlers are installed by :func:`serve` itself,
before the emulator starts, rather than left to Python's default: a process started with
SIGINT ignored (a background job of a non-interactive shell, and every child of one, gets
SIGINT as ``SIG_IGN``, and Python then raises no ``KeyboardInterrupt``) would otherwise
never stop on Ctrl-C. And the handlers only record the signal: they take no lock (as
``threading.Event.set`` would), since a handler runs in the main thread between two
bytecodes, possibly while that thread holds the very lock in ``Event.wait``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from refresher.loopback import DEFAULT_REDIRECT_URI
from refresher.testing import XEmulator

__all__ = ["STOP_SIGNALS", "add_redirect_options", "registered_redirect_uris", "serve"]

log = logging.getLogger(__name__)

#: The signals that stop :func:`serve` (SIGINT is Ctrl-C; SIGTERM what ``kill`` sends).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_redirect_options(parser: argparse.ArgumentParser) -> None:
    """``--redirect-uri URL`` (repeatable) and ``--any-loopback-redirect``, for a served
    emulator's callback URLs (see :func:`registered_redirect_uris`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--redirect-uri", action="append", metavar="URL", dest="redirect_uris",
                       help="a callback URL to register, repeatable; the login's default, "
                            f"{DEFAULT_REDIRECT_URI}, is always registered. As at X, the "
                            "authorize page refuses any other (another port, localhost "
                            "for 127.0.0.1)")
    group.add_argument("--any-loopback-redirect", action="store_true",
                       help="accept any http callback URL on 127.0.0.1, ::1 or localhost "
                            "(X does not: it wants the registered one, exactly)")


def registered_redirect_uris(given: Sequence[str] | None,
                             any_loopback: bool = False) -> list[str] | None:
    """The ``redirect_uris`` to give :class:`XEmulator`: the login's default callback URL and
    ``given``, in that order; ``None`` (any loopback URL) when ``any_loopback``.

    >>> registered_redirect_uris(["http://127.0.0.1:9000/cb"])
    ['http://127.0.0.1:8765/callback', 'http://127.0.0.1:9000/cb']
    >>> registered_redirect_uris(None, any_loopback=True) is None
    True
    """
    if any_loopback:
        return None
    uris = [DEFAULT_REDIRECT_URI]
    uris.extend(uri for uri in dict.fromkeys(given or ()) if uri not in uris)
    return uris


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
