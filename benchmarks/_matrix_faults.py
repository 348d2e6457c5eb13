"""The fault-matrix scenarios that play in one process: slow and late answers, a resolver
that hangs, the store going down during a save, a lock file deleted, a hook that blocks.

Each scenario is ``scenario(lab)``: it stages one fault on the cell's store and front end
(``lab``, see ``_matrix_env.Lab``) as a program would meet it, fails with
:class:`NotExercised` when the fault did not happen as staged, and raises when a request
fails that refresher should have carried through. "Another process" is another store
object on the same store, used from another thread (for the JSON store, a thread takes its
own ``flock``, as a process does).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from _matrix_env import (
    ACCOUNT,
    BOUND,
    DEADLINE,
    LOCK_TTL,
    Lab,
    Outage,
    exercised,
    wait_until,
)

from refresher import JSONTokenStore, RefresherError, RefreshError, TokenStoreError

#: How long after its caller's deadline a late answer comes.
LATE_BY = 1.0


def _caller_gave_up(lab: Lab, front: Any) -> RefreshError:
    """A request through ``front`` whose refresh reached its deadline; the error."""
    try:
        front.get(lab.api)
    except RefreshError as exc:
        return exc
    raise AssertionError("the refresh did not reach its deadline: the fault was not staged")


def late_answer(lab: Lab) -> None:
    """X spends the refresh token at once and answers after the caller's deadline: the late
    pair is saved, and the next request waits for it instead of resending the spent token."""
    lab.x.answer_delay = DEADLINE + LATE_BY
    front = lab.front(token=lab.seed())
    failed = _caller_gave_up(lab, front)
    exercised(failed.request_sent is not False, "the request went out before the deadline")
    lab.x.answer_delay = 0.0
    assert front.get(lab.api) == 200
    lab.note(f"gave up after {DEADLINE} s; the next request used the late pair")


def late_answer_other_process(lab: Lab) -> None:
    """As :func:`late_answer`, and meanwhile another process on the store refreshes: it
    finds the lock free and the old pair stored, while X has already spent that token."""
    lab.x.answer_delay = DEADLINE + LATE_BY
    front = lab.front(token=lab.seed())
    other = lab.front()
    failed = _caller_gave_up(lab, front)
    exercised(failed.request_sent is not False, "the request went out before the deadline")
    lab.x.answer_delay = 0.0
    try:
        lab.note(f"the other process: {other.get(lab.api)}")
    except RefresherError as exc:
        lab.note(f"the other process: {type(exc).__name__}")
    assert front.get(lab.api) == 200


def trickle(lab: Lab) -> None:
    """X spends the refresh token and sends its answer a byte at a time: the body ends
    after the caller's deadline (within the read bound): the pair is saved, not dropped."""
    seed = lab.seed()
    lab.x.token_trickle = (DEADLINE + LATE_BY) / (len(json.dumps(seed)) + 40)  # the body's size
    front = lab.front(token=seed)
    failed = _caller_gave_up(lab, front)
    exercised(failed.request_sent is not False, "the headers came before the deadline")
    lab.x.token_trickle = 0.0
    assert front.get(lab.api) == 200


class SlowNames:
    """This process's resolver, with names that hang until released (a resolver hiccup);
    every other name resolves as before. Installed once for a whole run."""

    def __init__(self) -> None:
        self._held: dict[str, threading.Event] = {}
        self._finished: set[str] = set()
        self._real: Any = None
        self._guard = threading.Lock()

    def install(self) -> None:
        if self._real is None:
            self._real = socket.getaddrinfo
            socket.getaddrinfo = self._getaddrinfo  # type: ignore[assignment]

    def uninstall(self) -> None:
        if self._real is not None:
            socket.getaddrinfo = self._real  # type: ignore[assignment]
            self._real = None

    def hold(self) -> tuple[str, threading.Event]:
        """A new name that hangs until the event is set, then resolves to 127.0.0.1."""
        name = f"slow-{uuid.uuid4().hex[:8]}.localhost"
        self._held[name] = threading.Event()
        return name, self._held[name]

    def finished(self, name: str) -> bool:
        with self._guard:
            return name in self._finished

    def _getaddrinfo(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        held = self._held.get(host) if isinstance(host, str) else None
        if held is None:
            return self._real(host, *args, **kwargs)
        held.wait(BOUND)  # nothing can interrupt a lookup: the caller's deadline passes
        try:
            return self._real("127.0.0.1", *args, **kwargs)
        finally:
            with self._guard:
                self._finished.add(host)


SLOW_NAMES = SlowNames()


def slow_resolver(lab: Lab) -> None:
    """The token URL's name hangs in the resolver past the deadline; another process
    refreshes meanwhile; then the lookup returns: nothing may be sent by then."""
    SLOW_NAMES.install()
    name, release = SLOW_NAMES.hold()
    front = lab.front(token=lab.seed(), token_url=lab.x.token_url.replace("127.0.0.1", name))
    failed = _caller_gave_up(lab, front)
    exercised(failed.request_sent is False, "the refresh gave up before anything was sent")
    other = lab.front()
    assert other.get(lab.api) == 200  # spends the stored refresh token
    release.set()  # the hiccup ends: the stuck lookup returns, and must not send
    wait_until(lambda: SLOW_NAMES.finished(name), "the stuck lookup to return")
    time.sleep(0.3)  # a request sent now would reach X within this
    assert front.get(lab.api) == 200  # adopts the other process's pair
    lab.note("nothing sent after the lookup returned")


def store_down(lab: Lab) -> None:
    """The store goes down while X is answering: the save fails, the pair is kept in
    memory and written back before the next request once the store is up."""
    outage = Outage(lab.spec)

    def down_once() -> None:
        lab.x.on_rotate = None
        outage.down()

    lab.x.on_rotate = down_once
    front = lab.front(token=lab.seed())
    try:
        front.get(lab.api)
        refused = False
    except TokenStoreError:
        refused = True
    finally:
        outage.up()
    exercised(refused, "the save failed while the store was down")
    exercised(front.coordinator.pending_write_back, "the pair waited to be written back")
    assert front.get(lab.api) == 200
    exercised(not front.coordinator.pending_write_back, "the pair was written back")


def lock_file_deleted(lab: Lab) -> None:
    """While A holds the account's lock (in ``on_refresh_start``), a tmp cleaner deletes
    the lock file and B locks a new one and refreshes: A must learn it before spending."""
    checks = JSONTokenStore(lab.spec.where)
    other = lab.front()
    done: list[int] = []

    def cleaner_then_other() -> None:
        if done:
            return
        os.unlink(checks.account_lock_path(ACCOUNT))
        thread = threading.Thread(target=lambda: done.append(other.get(lab.api)))
        thread.start()
        thread.join(BOUND)

    front = lab.front(token=lab.seed(), on_refresh_start=cleaner_then_other)
    assert front.get(lab.api) == 200
    exercised(done == [200], "B refreshed on the new lock file meanwhile")
    assert front.token["refresh_token"] == other.token["refresh_token"]


def blocking_hook(lab: Lab) -> None:
    """A's ``on_refresh_start`` blocks past its lease (SQL, Redis: it lapses, B takes it and
    refreshes; A must then spend nothing). A JSON lock does not lapse: B waits for A as
    long as the hook blocks, and takes A's pair."""
    lapses = lab.kind != "json"
    entered, release = threading.Event(), threading.Event()

    def hook() -> None:
        if not entered.is_set():
            entered.set()
            release.wait(BOUND)

    front = lab.front(token=lab.seed(), on_refresh_start=hook)
    other = lab.front()
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(_get(front, lab.api)))
    thread.start()
    try:
        exercised(entered.wait(BOUND), "A's hook ran")
        if lapses:
            started = time.monotonic()
            assert other.get(lab.api) == 200  # once A's lease lapsed
            exercised(time.monotonic() - started >= LOCK_TTL / 2,
                      "B waited for A's lease to lapse")
        else:
            waiting = threading.Thread(target=lambda: outcome.append(_get(other, lab.api)))
            waiting.start()
            time.sleep(1.0)
            exercised(lab.x.stats.token_requests == 0, "B waited for A's lock")
    finally:
        release.set()
    thread.join(BOUND)
    if not lapses:
        waiting.join(BOUND)
    assert outcome == [200] * len(outcome) and len(outcome) == (1 if lapses else 2), outcome
    assert front.token["refresh_token"] == other.token["refresh_token"]


def _get(front: Any, url: str) -> Any:
    try:
        return front.get(url)
    except Exception as exc:  # reported by the caller's assertion
        return f"{type(exc).__name__}: {exc}"
