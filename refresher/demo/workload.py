"""A shared-token workload: P processes x T threads calling the API through one store.

The engine behind ``refresher demo``, the multi-process tests and the contention
benchmark. Each worker process opens the store by location, builds one
RefreshingSession, and its threads call ``/2/users/me`` until the time is up. The
emulator's own counters (refreshes, reused refresh tokens) are the ground truth; the
workers report requests, failures, and optionally latencies.
"""

from __future__ import annotations

import math
import multiprocessing
import queue as queue_module
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..shutdown import Terminated, sigterm_handled, terminating

__all__ = ["RefreshSpans", "WorkloadSpec", "WorkerReport", "run_workers", "summarize"]


@dataclass(frozen=True)
class WorkloadSpec:
    """What every worker process does; plain data, so it pickles to spawned processes."""

    store: str                      # a location for open_store(): a file path or redis:// URL
    account: str
    client_id: str
    token_url: str
    api_url: str
    client_secret: str | None = None
    threads: int = 3
    seconds: float = 10.0
    shared_store: bool = True       # False: each process keeps the token in memory only
    collect_latencies: bool = False
    path: str = "/2/users/me"
    lock_timeout: float = 30.0
    pause: float = 0.0              # seconds each thread waits between requests
    client: str = "requests"        # "httpx-async": tasks on an event loop instead of threads


@dataclass
class WorkerReport:
    """What one worker process saw."""

    requests: int = 0
    failed: int = 0
    refreshes: int = 0
    errors: list[str] = field(default_factory=list)
    # (start, seconds) of each request, when collect_latencies is on
    latencies: list[tuple[float, float]] = field(default_factory=list)
    # (start, end) of each refresh this process made
    refresh_spans: list[tuple[float, float]] = field(default_factory=list)


class RefreshSpans:
    """A session's refresh windows, through its hooks: a span starts when the token
    endpoint is called (``on_refresh_start``) and ends when the new pair is saved and
    ``on_token_update`` runs, in the same thread. ``spans`` holds ``(start, end)``."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._started: dict[int, float] = {}

    def on_start(self) -> None:
        self._started[threading.get_ident()] = time.time()

    def on_update(self, token: dict[str, Any]) -> None:
        ended = time.time()
        self.spans.append((self._started.pop(threading.get_ident(), ended), ended))


def _worker(spec: WorkloadSpec, seed: dict[str, Any] | None, counters: Any, index: int,
            start_at: float, queue: Any) -> None:
    report = WorkerReport()
    try:
        # SIGTERM (the parent stopping us) ends the run at a safe point: after a refresh in
        # flight has saved its pair; the threads end after their request under way.
        with sigterm_handled():
            report = _work(spec, seed, counters, index, start_at)
    except Terminated:
        pass  # stopped before it started: nothing to report
    except BaseException:  # the parent must hear of it, whatever it was
        report.errors.append(traceback.format_exc(limit=5))
        report.failed += 1
    queue.put((index, report))


def _work(spec: WorkloadSpec, seed: dict[str, Any] | None, counters: Any, index: int,
          start_at: float) -> WorkerReport:
    from ..session import RefreshingSession
    from ..stores import MemoryTokenStore, open_store

    store = open_store(spec.store) if spec.shared_store else MemoryTokenStore()
    report = WorkerReport()
    windows = RefreshSpans()

    if spec.client == "httpx-async":
        from .async_load import run_async_load

        run_async_load(spec, seed, store, counters, index, start_at, report,
                       windows.on_start, windows.on_update)
        report.refresh_spans = windows.spans
        store.close()
        return report
    session = RefreshingSession(
        spec.client_id, client_secret=spec.client_secret, store=store, account=spec.account,
        token=seed, token_url=spec.token_url, api_url=spec.api_url,
        on_token_update=windows.on_update, on_refresh_start=windows.on_start,
        lock_timeout=spec.lock_timeout,
    )
    coordinator = session.coordinator
    url = spec.api_url.rstrip("/") + spec.path
    lock = threading.Lock()
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + spec.seconds

    def loop() -> None:
        requests_made = failed = 0
        samples: list[tuple[float, float]] = []
        errors: list[str] = []
        while True:  # one request at least, even in a worker a busy machine started late
            began = time.time()
            if (began >= deadline and requests_made) or terminating():
                break
            try:
                response = session.get(url, timeout=30)
                ok = response.status_code == 200
                if not ok:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
            except Exception as exc:  # a failure to count, not to crash on
                ok = False
                errors.append(f"{type(exc).__name__}: {exc}")
            ended = time.time()
            requests_made += 1
            failed += 0 if ok else 1
            if spec.collect_latencies:
                samples.append((began, ended - began))
            with counters.get_lock():
                counters[2 * index] += 1
                counters[2 * index + 1] += 0 if ok else 1
            if spec.pause > 0:
                time.sleep(spec.pause)
        with lock:
            report.requests += requests_made
            report.failed += failed
            report.latencies.extend(samples)
            report.errors.extend(errors[:5])

    threads = [threading.Thread(target=loop) for _ in range(spec.threads)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except Terminated:  # SIGTERM: each thread ends after its request under way
        for thread in threads:
            thread.join()
    report.refreshes = coordinator.refreshes if coordinator is not None else 0
    report.refresh_spans = windows.spans
    session.close()
    store.close()
    return report


def run_workers(
    spec: WorkloadSpec,
    processes: int,
    *,
    seed: dict[str, Any] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    progress_interval: float = 0.5,
) -> list[WorkerReport]:
    """Run ``processes`` spawned worker processes to the end; their reports, in order.

    ``seed`` is the first token (it goes into the store, or into each process's memory
    when ``shared_store`` is off). ``progress(requests, failed, elapsed)`` is called every
    ``progress_interval`` seconds while they run.
    """
    context = multiprocessing.get_context("spawn")
    counters = context.Array("q", 2 * processes)
    queue = context.Queue()
    start_at = time.time() + 1.0 + 0.25 * processes  # spawned interpreters need a moment
    workers = [
        context.Process(target=_worker, args=(spec, seed, counters, i, start_at, queue),
                        daemon=True)
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports: dict[int, WorkerReport] = {}
    limit = start_at + spec.seconds + 60.0
    while len(reports) < processes and time.time() < limit:
        try:
            index, report = queue.get(timeout=progress_interval)
            reports[index] = report
        except queue_module.Empty:
            pass  # time for a progress line
        if progress is not None and time.time() >= start_at:
            with counters.get_lock():
                done = sum(counters[0::2])
                bad = sum(counters[1::2])
            progress(done, bad, min(time.time() - start_at, spec.seconds))
    for worker in workers:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()
    missing = [i for i in range(processes) if i not in reports]
    for i in missing:
        reports[i] = WorkerReport(failed=1, errors=[f"worker {i} sent no report (crashed?)"])
    return [reports[i] for i in range(processes)]


def summarize(reports: Sequence[WorkerReport], emulator_stats: dict[str, int], *,
              processes: int, seconds: float, access_ttl: float) -> dict[str, Any]:
    """The numbers the demo and the tests print: requests, failed, refreshes, windows..."""
    windows = max(1, math.ceil(seconds / access_ttl))
    refreshes = int(emulator_stats.get("refreshes", 0))
    return {
        "requests": sum(r.requests for r in reports),
        "failed": sum(r.failed for r in reports),
        "refreshes": refreshes,
        "windows": windows,
        "refreshes_per_window": round(refreshes / windows, 2),
        "reused_refresh_tokens": int(emulator_stats.get("reused_refresh_tokens", 0)),
        "processes": processes,
        "seconds": seconds,
    }
