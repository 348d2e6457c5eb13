"""``refresher demo``: the whole story offline, in about fifteen seconds.

1. start the X emulator on loopback, with access tokens that live ``access_ttl`` seconds;
2. log in through the real :class:`~refresher.LoginFlow` code (the emulator approves at
   once and redirects to the local callback server) and save the token in a JSON store;
3. run ``processes`` worker processes of ``threads`` threads each, all calling
   ``/2/users/me`` through :class:`~refresher.RefreshingSession` over that one store
   (the engine is :mod:`refresher.demo.workload`), while the token expires every few seconds;
4. read the emulator's counters: every request should succeed, about one refresh should
   happen per token lifetime, and no refresh token should be sent twice.

>>> result = run_demo(processes=2, threads=2, seconds=3, access_ttl=1)  # doctest: +SKIP
>>> result.ok, result.summary["reused_refresh_tokens"]  # doctest: +SKIP
(True, 0)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import requests

from ..errors import ConfigurationError, LoginError
from ..login import LoginFlow
from ..settings import describe_store
from ..shutdown import DEFAULT_WAIT, Terminated
from ..stores import open_store
from ..testing.emulator import DEFAULT_CLIENT_ID, XEmulator
from .workload import WorkerReport, WorkloadSpec, run_workers, summarize

__all__ = ["ACCOUNT", "DemoResult", "run_demo", "format_table", "JSON_KEYS"]

log = logging.getLogger(__name__)

#: The keys of ``refresher demo --json``, in order.
JSON_KEYS = ("requests", "failed", "refreshes", "windows", "reused_refresh_tokens",
             "processes", "threads", "seconds", "access_ttl")
#: The account the demo writes in its store.
ACCOUNT = "demo"


@dataclass
class DemoResult:
    """What a demo run measured. ``summary`` is :func:`refresher.demo.workload.summarize`'s dict."""

    summary: dict[str, Any]
    threads: int
    access_ttl: float
    user: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: Stopped by Ctrl-C: the counts are those so far, ``summary["seconds"]`` the time run.
    interrupted: bool = False
    #: Stopped by SIGTERM (``interrupted`` too): the workers saved what they had in flight.
    terminated: bool = False

    @property
    def ok(self) -> bool:
        """Ran to the end, with no failed request and no refresh token spent twice."""
        return bool(not self.interrupted and self.summary["failed"] == 0
                    and self.summary["reused_refresh_tokens"] == 0)

    def public(self) -> dict[str, Any]:
        """The ``--json`` object: exactly :data:`JSON_KEYS`."""
        run = dict(self.summary, threads=self.threads, access_ttl=self.access_ttl)
        return {key: run[key] for key in JSON_KEYS}


def run_demo(
    *,
    processes: int = 4,
    threads: int = 3,
    seconds: float = 10.0,
    access_ttl: float = 2.0,
    store: str | None = None,
    force: bool = False,
    progress: TextIO | None = None,
) -> DemoResult:
    """Run the demo; ``progress`` (a stream such as ``sys.stderr``) gets a live status line.

    ``store`` is a token store location (a JSON file or ``redis://`` URL); by default a
    JSON file in a temporary folder, removed afterwards. The demo writes the account
    :data:`ACCOUNT` there: a store that already holds one is refused unless ``force``, and
    a JSON file's folder must exist (:class:`~refresher.ConfigurationError` otherwise).
    A ``KeyboardInterrupt`` (Ctrl-C), or :class:`~refresher.shutdown.Terminated` (SIGTERM,
    with the handler of :func:`refresher.graceful_shutdown` or the ``refresher`` command),
    while the workers run stops them, and the result holds the counts so far
    (``interrupted``; ``terminated`` for SIGTERM).
    """
    say = _Say(progress)
    with _location(store) as location:
        if store:
            _check_store(location, force)
        return _run(location, processes, threads, seconds, access_ttl, say, progress)


def _run(location: str, processes: int, threads: int, seconds: float, access_ttl: float,
         say: _Say, progress: TextIO | None) -> DemoResult:
    with XEmulator(host="127.0.0.1", port=0, access_ttl=access_ttl) as x:
        say(f"X emulator on {x.url}; access tokens live {access_ttl:g} s.")
        flow = LoginFlow(
            DEFAULT_CLIENT_ID,
            redirect_uri="http://127.0.0.1:0/callback",  # any free port
            authorize_url=x.authorize_url,
            token_url=x.token_url,
            api_url=x.api_url,
        )
        # The browser: follows the authorize URL, which the emulator approves with a 302 to
        # the callback server run_local_server is listening on.
        token = flow.run_local_server(open_browser=_browse, timeout=30.0)
        token_store = open_store(location)
        try:
            session = flow.session(token, store=token_store, account=ACCOUNT)
            user = session.me()
            session.close()
            where = describe_store(token_store)
        finally:
            token_store.close()
        say(f"Logged in as @{user.get('username')} through the emulator's authorize page; "
            f"token saved in {where}.")
        x.reset_stats()  # count the run only

        spec = WorkloadSpec(store=location, account=ACCOUNT, client_id=DEFAULT_CLIENT_ID,
                            token_url=x.token_url, api_url=x.api_url, threads=threads,
                            seconds=seconds)
        say(f"Starting {processes} worker processes x {threads} threads for {seconds:g} s...")
        line = _ProgressLine(progress, seconds, x)
        before = set(multiprocessing.active_children())
        try:
            with _interruptible():
                reports = run_workers(spec, processes, progress=line)
        except (KeyboardInterrupt, Terminated) as stop:  # stop the workers, keep the counts
            _stop(set(multiprocessing.active_children()) - before)
            so_far = WorkerReport(requests=line.done, failed=line.failed)
            summary = summarize([so_far], x.stats.as_dict(), processes=processes,
                                seconds=round(line.elapsed, 1), access_ttl=access_ttl)
            return DemoResult(summary, threads, access_ttl, user, interrupted=True,
                              terminated=isinstance(stop, Terminated))
        finally:
            line.finish()
        summary = summarize(reports, x.stats.as_dict(), processes=processes, seconds=seconds,
                            access_ttl=access_ttl)
    errors = [error for report in reports for error in report.errors]
    return DemoResult(summary, threads, access_ttl, user, errors)


def _check_store(location: str, force: bool) -> None:
    """Refuse a store the demo could harm: a missing folder, an account named 'demo'."""
    if "://" not in location:
        folder = os.path.dirname(location)
        if not os.path.isdir(folder):
            raise ConfigurationError(
                f"the folder of {location} does not exist; the demo creates no folder: "
                "create it, or leave --store out (a temporary folder)"
            )
    token_store = open_store(location)
    try:
        taken = ACCOUNT in token_store.accounts()
        where = describe_store(token_store)
    finally:
        token_store.close()
    if taken and not force:
        raise ConfigurationError(
            f"{where} already holds an account named {ACCOUNT!r}, which the demo would "
            "replace: choose another store, or pass --force to replace it"
        )


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, even in a process started with it ignored (a
    background job of a script, as ``refresher.testing.serve`` explains)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _stop(workers: set[multiprocessing.process.BaseProcess]) -> None:
    """SIGTERM to each worker, which ends after its request under way (a refresh in flight
    saves its pair); one still running after the shutdown bound is killed."""
    for worker in workers:
        worker.terminate()
    give_up_at = time.monotonic() + DEFAULT_WAIT + 1.0
    for worker in workers:
        worker.join(timeout=max(0.0, give_up_at - time.monotonic()))
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def format_table(result: DemoResult) -> str:
    """The demo's numbers as a small table, and a verdict line."""
    s = result.summary
    rows = [
        ("requests", f"{s['requests']}"),
        ("failed", f"{s['failed']}"),
        ("refreshes", f"{s['refreshes']}"),
        ("expiry windows", f"{s['windows']}"),
        ("refreshes per window", f"{s['refreshes_per_window']:.2f}"),
        ("reused refresh tokens", f"{s['reused_refresh_tokens']}"),
    ]
    head = (f"refresher demo: {s['processes']} processes x {result.threads} threads, "
            f"{s['seconds']:g} s, access tokens living {result.access_ttl:g} s, one shared store")
    width = max(len(value) for _, value in rows)
    lines = [head] + [f"  {name:<22} {value:>{width}}" for name, value in rows]
    if result.interrupted:
        how = "TERMINATED" if result.terminated else "INTERRUPTED"
        lines.append(f"{how} after {s['seconds']:g} s: the counts so far.")
    elif result.ok:
        lines.append("OK: every request succeeded, and no refresh token was spent twice.")
    else:
        lines.append("FAILED: some requests failed or a refresh token was spent twice.")
    return "\n".join(lines)


# -- plumbing --------------------------------------------------------------------------------


def _browse(url: str) -> None:
    response = requests.get(url, timeout=30)
    if not response.history:  # the authorize page refused instead of redirecting back
        raise LoginError(f"the emulator's authorize page answered {response.status_code}: "
                         f"{response.text.strip()[:200]}")


@contextlib.contextmanager
def _location(store: str | None) -> Iterator[str]:
    if store:
        yield store if "://" in store else os.path.abspath(os.path.expanduser(store))
        return
    with tempfile.TemporaryDirectory(prefix="refresher-demo-") as folder:
        yield os.path.join(folder, "tokens.json")


class _Say:
    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream

    def __call__(self, message: str) -> None:
        if self.stream is not None:
            self.stream.write(message + "\n")
            self.stream.flush()


class _ProgressLine:
    """``run_workers``'s progress callback: one line rewritten in place on a terminal,
    a plain line a second otherwise (logs, pipes)."""

    def __init__(self, stream: TextIO | None, seconds: float, emulator: XEmulator) -> None:
        self.stream = stream
        self.seconds = seconds
        self.emulator = emulator
        self.tty = bool(stream is not None and stream.isatty())
        self._wrote = False
        self._last = 0.0
        self._text = ""
        #: The latest counts, shown or not (an interrupted demo reports them).
        self.done = self.failed = 0
        self.elapsed = 0.0

    def __call__(self, done: int, failed: int, elapsed: float) -> None:
        self.done, self.failed, self.elapsed = done, failed, elapsed
        if self.stream is None:
            return
        now = time.monotonic()
        if not self.tty and now - self._last < 1.0 and elapsed < self.seconds:
            return
        stats = self.emulator.stats
        text = (f"{elapsed:5.1f}/{self.seconds:g} s  {done:7d} requests  {failed} failed  "
                f"{stats.refreshes} refreshes  {stats.reused_refresh_tokens} reused")
        if text == self._text:  # the workers are finishing: nothing new to say
            return
        self._last, self._text = now, text
        self.stream.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        self.stream.flush()
        self._wrote = True

    def finish(self) -> None:
        if self.stream is not None and self.tty and self._wrote:
            self.stream.write("\n")
            self.stream.flush()
