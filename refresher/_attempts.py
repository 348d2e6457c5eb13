"""Token requests run on a bounded pool of threads, each waited for until its deadline.

A caller (holding its account's locks) must not wait on the network longer than the grant's
deadline, and a process with a thousand accounts must not start a thousand threads. So each
attempt is a job on :func:`token_request_pool`, one bounded pool per process (per size),
and the caller waits for it only until its deadline. A job still queued then is never
started, and a request not yet written is never written (:mod:`refresher._sendgate`).

A request that *was* written when its caller gave up may still be answered: the worker keeps
reading (within a bound), hands the outcome to the attempt's ``late`` callback, and
:class:`LateAnswers` tracks it until then, so nobody resends that refresh token while its
answer may still come.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from ._fork import PerProcess, register
from ._pool import BoundedPool
from ._sendgate import GateState, SendGate, active

__all__ = ["token_request_pool", "LateAnswers", "LazyLateAnswers", "Attempt",
           "AttemptAbandoned", "POOL_THREAD_NAME"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")

#: The name of every pool thread (with a number): what a thread dump shows.
POOL_THREAD_NAME = "refresher-token-request"
# An idle pool thread ends after this long, so a quiet process holds no threads.
_IDLE_SECONDS = 10.0


_pools: PerProcess[dict[int, BoundedPool]] = PerProcess(dict)


def token_request_pool(size: int) -> BoundedPool:
    """This process's pool of ``size`` threads (endpoints asking for the same size share
    it; a forked child gets new ones, nothing of the parent's is used). Its threads are
    daemons that idle a while: a written request whose answer may still come is waited for
    at exit instead, within its bound (:class:`LateAnswers`)."""
    pools = _pools.get()
    pool = pools.get(size)
    if pool is None:  # setdefault is atomic: one pool per size
        pool = pools.setdefault(size, BoundedPool(size, POOL_THREAD_NAME, daemon=True,
                                                  idle_seconds=_IDLE_SECONDS))
    return pool


_every_late: weakref.WeakSet[LateAnswers] = weakref.WeakSet()


def _wait_at_exit() -> None:
    """At interpreter exit, give answers still on their way the bound they have left: the
    pool's threads are daemons, and a grant dropped with the process loses the account."""
    for late in list(_every_late):
        left = late.latest() - time.monotonic()
        if left > 0:
            log.warning("waiting up to %.1f s for a token answer that came after its caller "
                        "gave up", left)
            late.wait(left)


atexit.register(_wait_at_exit)


class LateAnswers:
    """The attempts whose request went out after their caller gave up, until their answer
    (or failure) has been handled; :meth:`wait` waits for them, within a bound."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._until: dict[int, float] = {}  # id(attempt) -> when its worker gives up (monotonic)
        self._inherited_until = 0.0
        register(self)
        _every_late.add(self)

    def add(self, key: int, until: float) -> None:
        """An attempt whose answer may come until ``until`` (``time.monotonic()``)."""
        with self._lock:
            self._until[key] = until

    def remove(self, key: int) -> None:
        """The attempt's answer was handled (or will never come)."""
        with self._lock:
            self._until.pop(key, None)
            self._changed.notify_all()

    def pending(self) -> int:
        """How many late answers may still come."""
        return len(self._until)

    def latest(self) -> float:
        """When the last of them may still come, at the latest (``time.monotonic()``)."""
        with self._lock:
            return max([*self._until.values(), 0.0])

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no late answer may come; True if none may."""
        end = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while True:
                now = time.monotonic()
                # In a forked child the parent's workers may still be answered: their ends.
                inherited = self._inherited_until - now
                if not self._until and inherited <= 0:
                    return True
                if now >= end:
                    return False
                self._changed.wait(min(end - now, inherited) if not self._until
                                   else end - now)

    def _after_fork_in_child(self) -> None:
        # The workers stay in the parent, which handles their answers; the child waits out
        # their bound instead, so it does not resend a token whose answer may still come.
        inherited = list(self._until.values())
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._until = {}
        self._inherited_until = max([self._inherited_until, *inherited])


_MAKING = threading.Lock()  # makes an endpoint's LateAnswers once (rarely taken)


def _new_making_lock() -> None:
    global _MAKING
    _MAKING = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_making_lock)


class LazyLateAnswers:
    """An endpoint's :class:`LateAnswers`, made when an answer first comes late: most
    endpoints never see one, and a thousand sessions keep none. Calling it gives (makes)
    them; :meth:`wait` needs none."""

    __slots__ = ("_late",)

    def __init__(self) -> None:
        self._late: LateAnswers | None = None

    def __call__(self) -> LateAnswers:
        late = self._late
        if late is None:
            with _MAKING:
                late = self._late
                if late is None:
                    late = self._late = LateAnswers()
        return late

    def wait(self, timeout: float) -> bool:
        """:meth:`LateAnswers.wait`; True at once when no answer ever came late."""
        late = self._late
        return True if late is None else late.wait(timeout)


class AttemptAbandoned(Exception):  # noqa: N818 — an outcome, handled by the endpoint
    """The caller's deadline came before the attempt ended. ``state`` is where its request
    stood: ``ABANDONED`` (never written, never will be) or ``SENT``; ``started`` whether a
    pool thread had taken it up (else it was still queued behind busy threads)."""

    def __init__(self, state: GateState, started: bool) -> None:
        super().__init__(state.value)
        self.state, self.started = state, started


class Attempt(Generic[_R]):
    """One request: ``work(gate)`` runs on a pool thread; :meth:`run` waits for it until
    ``give_up_at`` (``time.monotonic()``).

    If the caller gives up after the request was written, ``late(result, error)`` gets what
    the worker ends with (in the worker thread), and ``late_answers()`` tracks the attempt
    until then; ``late_until`` is when the worker stops waiting for an answer at the latest.
    """

    def __init__(self, work: Callable[[SendGate], _R], gate: SendGate, *, give_up_at: float,
                 late_until: float, late: Callable[[_R | None, BaseException | None], None],
                 late_answers: Callable[[], LateAnswers]) -> None:
        self.gate = gate
        self._work, self._late, self._late_answers = work, late, late_answers
        self._give_up_at, self._late_until = give_up_at, late_until
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._finished = self._orphaned = self._started = False
        self._result: _R | None = None
        self._error: BaseException | None = None

    def run(self, pool: BoundedPool) -> _R:
        """The work's result, or its exception; :class:`AttemptAbandoned` at the deadline."""
        pool.submit(self._serve)
        try:
            finished = self._done.wait(max(0.0, self._give_up_at - time.monotonic()))
        except BaseException:  # KeyboardInterrupt, SystemExit: the caller is gone too
            self._give_up()
            raise
        if not finished:
            gave_up = self._give_up()
            if gave_up is not None:
                raise gave_up
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def _give_up(self) -> AttemptAbandoned | None:
        """Abandon the gate unless the work finished; ``None`` if it had."""
        with self._lock:
            if self._finished:
                return None
            state = self.gate.abandon()
            if state is GateState.SENT:
                self._orphaned = True
                self._late_answers().add(id(self), self._late_until)
            return AttemptAbandoned(state, self._started)

    def _serve(self) -> None:
        if self.gate.state is GateState.ABANDONED:
            return  # its caller gave up while it waited in the queue: never started
        self._started = True
        result: _R | None = None
        error: BaseException | None = None
        try:
            with active(self.gate):
                result = self._work(self.gate)
        except BaseException as exc:  # handed to the caller, or to ``late``
            error = exc
        with self._lock:
            self._finished = True
            self._result, self._error = result, error
            orphaned = self._orphaned
        self._done.set()
        if orphaned:
            try:
                self._late(result, error)
            except Exception:
                log.exception("handling a late token answer failed")
            finally:
                self._late_answers().remove(id(self))
