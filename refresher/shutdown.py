"""SIGTERM is not kill -9: an orderly exit, after a refresh in flight has saved its pair.

``docker stop``, systemd, Kubernetes and ``timeout`` stop a process with SIGTERM (then
SIGKILL after a grace period: 10 s for docker). Python's default for SIGTERM ends the
process at once, so a refresh whose request X has already taken loses its new pair, exactly
as under ``kill -9``. The handler here (installed by every ``refresher`` command, and by
:func:`graceful_shutdown` for programs that opt in) turns SIGTERM into :class:`Terminated`,
a :class:`SystemExit` with status 143 raised in the main thread, at a safe point only:

- while no refresh is in flight: at once;
- while one is (in any thread: from the moment it holds the account's store lock, through
  the token request and the save, until it lets the lock go): as soon as it is done; or,
  if X has still not answered after ``wait`` seconds, then. A pair whose answer has arrived
  is always saved first, however long the save takes (the store's own timeouts bound it);
- from the signal on, no refresh token is sent: a refresh that has not sent its request
  yet raises :class:`~refresher.RefreshError` (``request_sent`` False). Saves still happen
  (a pair kept in memory is written back, a sibling's pair is adopted).

What a "refresh in flight" is, is told from the two places that know: :class:`~refresher.
stores.guarded.GuardedAccount` holds an :func:`in_flight` section while it holds the store's
lock, and the token endpoint calls :func:`check_not_stopping` before it spends a refresh
token and :func:`answer_arrived` when X's answer is in. The coordinator needs to know nothing.

Python runs signal handlers in the main thread only, between two bytecodes, possibly while
that thread holds a lock; so the handler takes no lock and starts no :class:`threading.Thread`
(whose start takes one). When it must wait, it starts a watcher with :mod:`_thread`, which
polls the sections and sends SIGTERM to the main thread again once they are done or the
bound has passed (a real signal, so a main thread blocked in a sleep or a lock wakes up).
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from ._fork import register
from .errors import ConfigurationError, RefreshError

__all__ = ["EXIT_STATUS", "DEFAULT_WAIT", "Terminated", "graceful_shutdown", "in_flight",
           "answer_arrived", "check_not_stopping", "terminating", "sigterm_handled", "Flight"]

log = logging.getLogger(__name__)

#: The exit status after SIGTERM, as shells report a process the signal ended: 128 + 15.
EXIT_STATUS = 128 + int(signal.SIGTERM)
#: How long a refresh in flight is waited for, at most, for X's answer: well inside docker's
#: 10 s grace period (a grant's own deadline is 15 s), leaving the program time to close.
DEFAULT_WAIT = 5.0
# How often the watcher looks at the sections in flight.
_POLL = 0.02


class Terminated(SystemExit):
    """SIGTERM asked the process to stop: raised in the main thread, at a safe point.

    A :class:`SystemExit` (code 143): ``finally`` blocks and context managers run, an
    uncaught one ends the process with status 143 and no traceback, and ``except
    Exception`` does not swallow it.
    """

    def __init__(self) -> None:
        super().__init__(EXIT_STATUS)


class Flight:
    """A refresh in flight in one thread; :meth:`arrived` once X's answer is in."""

    __slots__ = ("thread", "answered")

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.answered = False

    def arrived(self) -> None:
        """X's answer is in: from now on the exit waits for the save, whatever the bound."""
        self.answered = True


class _Shutdown:
    """The process's state: the sections in flight and what SIGTERM asked. The handler
    reads it without a lock (dict and attribute access are atomic under the GIL)."""

    def __init__(self) -> None:
        self.flights: dict[int, Flight] = {}
        self.wait = DEFAULT_WAIT
        self.reset()
        register(self)

    def reset(self) -> None:
        self.requested = self.raised = self.forced = self.watching = False
        self.deadline = 0.0

    def _after_fork_in_child(self) -> None:
        # The parent's sections and its signal are the parent's; the watcher stayed there.
        self.flights = {}
        self.reset()

    # -- sections ------------------------------------------------------------------------

    def enter(self) -> Flight:
        # Registered before its token request checks check_not_stopping(): the handler sets
        # ``requested`` before it looks at the sections, so one of the two sees the other.
        flight = Flight()
        self.flights[id(flight)] = flight
        return flight

    def leave(self, flight: Flight) -> None:
        self.flights.pop(id(flight), None)
        if (self.requested and not self.raised and self.may_exit()
                and threading.current_thread() is threading.main_thread()):
            self.raised = True
            raise Terminated()

    def may_exit(self) -> bool:
        """No section in flight, or the bound has passed and none has its answer in."""
        flights = list(self.flights.values())
        return not flights or (self.forced and not any(f.answered for f in flights))

    # -- the signal ----------------------------------------------------------------------

    def on_sigterm(self) -> None:
        if self.raised:
            return  # already on its way out
        if not self.requested:
            self.deadline = time.monotonic() + self.wait
            self.requested = True
        if self.may_exit():
            self.raised = True
            raise Terminated()
        if not self.watching:
            self.watching = True
            _thread.start_new_thread(self._watch, ())

    def _watch(self) -> None:
        log.warning("SIGTERM: waiting for the refresh in flight to save its pair (X's answer "
                    "at most %g s) before exiting", self.wait)
        try:
            while True:
                flights = list(self.flights.values())
                if not flights:
                    break
                if time.monotonic() >= self.deadline and not any(f.answered for f in flights):
                    self.forced = True
                    log.error("SIGTERM: X has not answered the refresh in flight within %g s; "
                              "exiting without its answer", self.wait)
                    break
                time.sleep(_POLL)
        finally:
            self.watching = False
        _wake_main_thread()


_state = _Shutdown()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _state.on_sigterm()


def _wake_main_thread() -> None:
    """Run the handler again in the main thread, interrupting what it blocks in; nothing if
    the handler was taken away meanwhile (SIGTERM would then end the process unsaved)."""
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        return
    main = threading.main_thread().ident
    if hasattr(signal, "pthread_kill") and main is not None:
        signal.pthread_kill(main, signal.SIGTERM)
    else:  # no pthread_kill (Windows): runs the handler at the main thread's next bytecode
        _thread.interrupt_main(signal.SIGTERM)


# -- the hooks -------------------------------------------------------------------------------


@contextlib.contextmanager
def in_flight() -> Iterator[Flight]:
    """A section SIGTERM waits for: a store lock held for a refresh, a revoke and its delete.

    Leaving the last section after SIGTERM, in the main thread, raises :class:`Terminated`.
    """
    flight = _state.enter()
    try:
        yield flight
    finally:
        _state.leave(flight)


def check_not_stopping() -> None:
    """Raise :class:`~refresher.RefreshError` (``request_sent`` False) once SIGTERM asked the
    process to stop: no refresh token is spent (nor a logout started) then."""
    if _state.requested:
        raise RefreshError(
            "not started: the process is shutting down (SIGTERM); nothing was sent, and "
            "the stored token is kept", request_sent=False)


def answer_arrived() -> None:
    """X's answer to this thread's request is in: the sections of this thread are saved
    before any exit, whatever the bound (the token endpoint calls it)."""
    me = threading.get_ident()
    for flight in list(_state.flights.values()):
        if flight.thread == me:
            flight.arrived()


def terminating() -> bool:
    """Whether SIGTERM has asked this process to stop (work loops end at their next turn)."""
    return _state.requested


# -- installing the handler ------------------------------------------------------------------


def graceful_shutdown(wait: float = DEFAULT_WAIT) -> bool:
    """Make SIGTERM an orderly exit that lets a refresh in flight save its pair.

    Installs refresher's SIGTERM handler, but only when SIGTERM still has its default
    disposition: an application's own handler (or ``SIG_IGN``, or an asyncio
    ``loop.add_signal_handler``) is left alone. Then SIGTERM raises :class:`Terminated`
    (a ``SystemExit``, status 143) in the main thread at once, or as soon as the refreshes
    in flight in any thread have saved their pairs; one whose answer X has not sent within
    ``wait`` seconds (default 5: inside docker's 10 s grace period) is not waited for
    longer. A pair whose answer arrived is saved before the exit, whatever the bound. From
    the signal on, no refresh token is sent.

    Returns True when refresher's handler is in place (installed now, or before: a second
    call only sets ``wait``), False when another disposition was left alone. Undo it with
    ``signal.signal(signal.SIGTERM, signal.SIG_DFL)``. Must be called from the main thread
    (Python runs signal handlers there only): elsewhere it raises
    :class:`~refresher.ConfigurationError`.

    >>> import refresher
    >>> refresher.graceful_shutdown()  # doctest: +SKIP
    True
    """
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not (
            math.isfinite(wait) and wait >= 0):
        raise ConfigurationError(f"graceful_shutdown(wait={wait!r}): give a number of "
                                 "seconds, 0 or more (default 5)")
    if threading.current_thread() is not threading.main_thread():
        raise ConfigurationError(
            "refresher.graceful_shutdown() must be called from the main thread: Python runs "
            "signal handlers there only. Call it at start-up, in the main thread")
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        _state.wait = float(wait)
        return True
    if current is not signal.SIG_DFL:
        log.debug("SIGTERM already has a handler (%r); graceful_shutdown leaves it", current)
        return False
    _state.wait = float(wait)
    _state.reset()
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


@contextlib.contextmanager
def sigterm_handled(wait: float = DEFAULT_WAIT) -> Iterator[bool]:
    """:func:`graceful_shutdown` for the length of the block, then the default back (what
    the ``refresher`` commands use; in a thread other than the main one, nothing)."""
    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
                 and graceful_shutdown(wait))
    try:
        yield installed
    finally:
        if installed and signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _state.reset()
