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

__all__ = ["STOP_SIGNALS", "RATE_LIMITS_HELP", "X_RATE_LIMITS", "add_redirect_options",
           "parse_rate_limits", "rate_limit_arguments", "registered_redirect_uris", "serve"]

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


#: ``--rate-limits`` alone: X's documented limit of ``/2/users/me``, 75 calls per 15 minutes.
X_RATE_LIMITS = "75/900"
#: What ``--rate-limits`` does, for both commands' help.
RATE_LIMITS_HELP = ("answer X's 429 past CALLS calls per SECONDS seconds, per user and app and "
                    "endpoint, as X does (alone: 75/900, X's limit of /2/users/me); the "
                    "x-rate-limit-* headers come with every API answer either way")


def parse_rate_limits(value: str) -> tuple[int, float]:
    """``CALLS/SECONDS`` as ``--rate-limits`` takes it: the emulator's ``rate_limit`` and
    ``rate_window``.

    >>> parse_rate_limits("3/10")
    (3, 10.0)
    """
    calls, _, seconds = value.partition("/")
    try:
        limit, window = int(calls), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rate-limits takes CALLS/SECONDS, such as 75/900, not {value!r}") from None
    if limit < 1 or not window > 0:
        raise argparse.ArgumentTypeError("--rate-limits needs at least 1 call per a positive "
                                         f"number of seconds, not {value!r}")
    return limit, window


def rate_limit_arguments(rate_limits: tuple[int, float] | None) -> dict[str, Any]:
    """The :class:`XEmulator` arguments for ``--rate-limits`` (``None``: not given).

    >>> rate_limit_arguments((3, 10.0))
    {'enforce_rate_limits': True, 'rate_limit': 3, 'rate_window': 10.0}
    """
    if rate_limits is None:
        return {}
    return {"enforce_rate_limits": True, "rate_limit": rate_limits[0],
            "rate_window": rate_limits[1]}


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
