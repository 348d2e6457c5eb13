"""One refresh per expiry? P processes x T threads sharing one token, against the emulator.

Every worker thread calls ``GET /2/users/me`` through a RefreshingSession, pausing
``--pause`` seconds between calls (the engine is :mod:`refresher.demo.workload`), with access
tokens that live ``--ttl`` seconds, for ``--seconds``. One row per store:

- ``json``: one JSONTokenStore file shared by all processes;
- ``sqlite``, ``postgres``: one SQLTokenStore, on a SQLite file or in a database of a
  throw-away PostgreSQL server (``refresher.testing.postgres_server``);
- ``redis``: one RedisTokenStore on a throw-away ``redis-server``;
- ``memory per process``: the baseline. Each process keeps the token in its own memory,
  as requests-oauthlib or a per-process plugin would, so processes spend the same
  single-use refresh token and all but one of them are locked out.

A row that cannot run here (no server binary, no driver) is skipped with a note saying why.

The emulator counts refreshes and reused refresh tokens. An *expiry window* is a group of
refreshes less than ``ttl / 2`` apart (ideally exactly one refresh each). A request is
*inside a refresh window* when it overlaps a refresh of any process: from the call to the
token endpoint to the save of the new pair. A probe process refreshes a token of its own
every 100 ms during the load to measure one token-endpoint round trip under that load
(its refreshes are not counted).

Each row runs ``--runs`` times (a fresh store and emulator each time; run 1 of every row,
then run 2...). Counts are summed over a row's runs and its latency samples pooled before
the percentiles are taken, so one noisy run does not decide the row. The target: in-window
p99 at most ``--ratio-target`` (1.5) times the outside-window p99 at 4 x 4.

Beside it, *placebo* windows: the same windows moved 0.3 to 0.7 of a lifetime later (five
shifts), between refreshes, where nothing happens. Their in/out ratio is what the split
gives by itself on this machine at this moment (a long request overlaps a window more
often than a short one; a stall of the machine lands in a window by chance), and
``in/placebo`` (in-window p99 over the placebo windows' p99, their median) is what the
refreshes themselves cost the requests around them.

The default lifetime, 5 s, leaves a realistic leeway: a token is refreshed in its last
10 % (0.5 s; X's two-hour tokens: 60 s), in the background, and a request waits for the
refresh only in the last half of that. ``--ttl 1`` (a 0.1 s leeway, 50 ms before requests
wait) is a stress test: on a busy machine requests then wait for refreshes.

    python benchmarks/contention.py                    # 4 x 4, 5-second tokens, 3 x 30 s a row
    python benchmarks/contention.py --ttl 1 --seconds 15   # the stress test
    python benchmarks/contention.py -P 8 -T 2 --ttl 2 --seconds 30 --runs 1 --json
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    emit,
    median,
    percentile,
    postgres_unavailable,
    progress,
    redis_unavailable,
    sql_unavailable,
)

from refresher.demo.workload import (  # noqa: E402
    RefreshSpans,
    WorkerReport,
    WorkloadSpec,
    run_workers,
    summarize,
)
from refresher.endpoint import TokenEndpoint  # noqa: E402
from refresher.policy import DEFAULT_POLICY  # noqa: E402
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator  # noqa: E402
from refresher.testing.redis_server import RedisServer  # noqa: E402

Span = tuple[float, float]


# -- measuring ------------------------------------------------------------------------------


def start_helper(target: Callable[..., None], *args: Any) -> tuple[Any, Any, Any]:
    """Start ``target(*args, stop, results)`` in a spawned process of its own: the process,
    the event that stops it, and the end of the pipe its results come from."""
    context = multiprocessing.get_context("spawn")
    stop, (results, child) = context.Event(), context.Pipe(duplex=False)
    process = context.Process(target=target, daemon=True, args=(*args, stop, child))
    process.start()
    child.close()
    return process, stop, results


class TokenRoundTripProbe:
    """Refreshes a token chain of its own every ``interval`` s; records each round trip.

    ``samples`` holds ``(start, seconds)``; ``refreshes`` how many succeeded, to subtract
    from the emulator's count. Under load (``with probe:``) it runs in a process of its own:
    a thread of this one would take the emulator's interpreter lock every 100 ms, and the
    requests it delays would be counted as the refreshes' doing, or as the baseline.
    """

    def __init__(self, emulator: XEmulator, interval: float = 0.1) -> None:
        self.emulator = emulator
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.refreshes = 0
        self._endpoint = TokenEndpoint(emulator.token_url, DEFAULT_CLIENT_ID, None)
        self._refresh_token = str(emulator.issue_token()["refresh_token"])
        self._process: Any = None
        self._stop: Any = None
        self._results: Any = None

    def once(self) -> float:
        """One refresh; its round trip in seconds."""
        start = time.time()
        began = time.perf_counter()
        token = self._endpoint.refresh(self._refresh_token)
        seconds = time.perf_counter() - began
        self._refresh_token = str(token["refresh_token"])
        self.refreshes += 1
        self.samples.append((start, seconds))
        return seconds

    def __enter__(self) -> TokenRoundTripProbe:
        self._process, self._stop, self._results = start_helper(
            _probe_process, self.emulator.token_url, self._refresh_token, self.interval)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._results.poll(30):
            samples, self._refresh_token = self._results.recv()
            self.samples += samples
            self.refreshes += len(samples)
        self._process.join(timeout=30)
        self._endpoint.close()

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for began, seconds in self.samples if start <= began <= end]


def _probe_process(token_url: str, refresh_token: str, interval: float, stop: Any,
                   results: Any) -> None:
    """The probe's loop, in a process of its own: ``(samples, last refresh token)`` sent to
    ``results`` when ``stop`` is set (a failed refresh ends the loop, and is not a sample)."""
    endpoint = TokenEndpoint(token_url, DEFAULT_CLIENT_ID, None)
    samples: list[tuple[float, float]] = []
    try:
        while not stop.wait(interval):
            start, began = time.time(), time.perf_counter()
            refresh_token = str(endpoint.refresh(refresh_token)["refresh_token"])
            samples.append((start, time.perf_counter() - began))
    except Exception:  # the emulator went away: the samples so far stand
        pass
    finally:
        results.send((samples, refresh_token))
        endpoint.close()


def idle_round_trip(emulator: XEmulator, count: int = 20) -> float:
    """Median seconds of ``count`` refreshes against an otherwise idle emulator."""
    probe = TokenRoundTripProbe(emulator)
    try:
        probe.once()  # connect first
        return median([probe.once() for _ in range(count)])
    finally:
        probe._endpoint.close()


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Overlapping or touching spans joined, sorted by start."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def overlaps(merged: Sequence[Span], starts: Sequence[float], start: float, end: float) -> bool:
    """Whether [start, end] overlaps one of ``merged`` (whose starts are ``starts``)."""
    index = bisect.bisect_right(starts, end) - 1  # the last span starting before we end
    return index >= 0 and merged[index][1] >= start


def expiry_windows(spans: Sequence[Span], ttl: float) -> int:
    """Refreshes grouped by time: a new window when one starts > ttl/2 after the last."""
    windows, last = 0, None
    for start, _ in sorted(spans):
        if last is None or start - last > ttl / 2:
            windows += 1
        last = start
    return windows


# -- one run of one row ---------------------------------------------------------------------


@dataclass
class Run:
    """What one run of one row left: the workers' reports, the emulator's counts (the
    probe's refreshes taken out), the probe's round trips under load, the idle round trip."""

    reports: list[WorkerReport]
    stats: dict[str, int]
    loaded_rtts: list[float]
    idle_rtt: float
    sidecar_refreshes: int = 0


class Sidecar:
    """The refreshes made by a process of their own (``with sidecar:``), as ``refresher
    refresh --all --within W --every E`` makes them: ``RefreshingSession.refresh(within=W)``
    every ``E`` seconds. ``report`` (after the block) holds its refresh spans and errors."""

    def __init__(self, spec: WorkloadSpec, seed: dict[str, Any], within: float,
                 every: float) -> None:
        self.args = (spec, seed, within, every)
        self.report = WorkerReport()
        self._process: Any = None
        self._stop: Any = None
        self._results: Any = None

    def __enter__(self) -> Sidecar:
        self._process, self._stop, self._results = start_helper(_sidecar_process, *self.args)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._results.poll(30):
            spans, errors, refreshes = self._results.recv()
            self.report = WorkerReport(refreshes=refreshes, refresh_spans=spans,
                                       errors=errors)
        else:
            self.report = WorkerReport(errors=["the sidecar sent no report (crashed?)"])
        self._process.join(timeout=30)


def _sidecar_process(spec: WorkloadSpec, seed: dict[str, Any], within: float, every: float,
                     stop: Any, results: Any) -> None:
    """The sidecar's loop: its refresh spans (token call to saved pair, as the workers
    record theirs), its errors and its refresh count, sent to ``results`` when ``stop`` is
    set."""
    from refresher.session import RefreshingSession
    from refresher.stores import open_store

    windows = RefreshSpans()
    errors: list[str] = []
    store = open_store(spec.store)
    session = RefreshingSession(spec.client_id, store=store, account=spec.account, token=seed,
                                token_url=spec.token_url, api_url=spec.api_url,
                                on_refresh_start=windows.on_start,
                                on_token_update=windows.on_update)
    try:
        while not stop.wait(every):
            try:
                session.refresh(within=within)
            except Exception as exc:  # counted, and tried again at the next tick
                errors.append(f"sidecar: {type(exc).__name__}: {exc}")
    finally:
        coordinator = session.coordinator
        results.send((windows.spans, errors[:5],
                      coordinator.refreshes if coordinator else 0))
        session.close()
        store.close()


def run_once(label: str, store: str, shared: bool, args: argparse.Namespace,
             client: str = "requests", sidecar: bool = False) -> Run:
    with XEmulator(host="127.0.0.1", port=0, access_ttl=args.ttl) as x:
        idle_rtt = idle_round_trip(x)
        x.reset_stats()
        spec = WorkloadSpec(
            store=store, account="benchmark", client_id=DEFAULT_CLIENT_ID,
            token_url=x.token_url, api_url=x.api_url, threads=args.threads,
            seconds=args.seconds, shared_store=shared, collect_latencies=True,
            pause=args.pause, client=client,
        )
        # The first token outlives the workers' start-up (run_workers starts them together
        # 1 + 0.25 P seconds from now) by half a lifetime: the first refresh then falls in
        # the steady state, not on cold processes opening their first connections.
        x.access_ttl = 1.0 + 0.25 * args.processes + args.ttl / 2
        seed = x.issue_token()
        x.access_ttl = args.ttl
        with contextlib.ExitStack() as beside:
            probe = beside.enter_context(TokenRoundTripProbe(x))
            helper = beside.enter_context(Sidecar(spec, seed, *sidecar_times(args.ttl))) \
                if sidecar else None
            reports = run_workers(spec, args.processes, seed=seed)
        if helper is not None:  # its refreshes are windows like the workers' own
            reports.append(helper.report)
        stats = x.stats.as_dict()
    stats["refreshes"] -= probe.refreshes
    latencies = [sample for report in reports for sample in report.latencies]
    first = min((began for began, _ in latencies), default=0.0)
    last = max((began + seconds for began, seconds in latencies), default=0.0)
    return Run(reports, stats, probe.between(first, last), idle_rtt,
               helper.report.refreshes if helper is not None else 0)


def sidecar_times(ttl: float) -> tuple[float, float]:
    """The sidecar's ``within`` and ``every`` for tokens living ``ttl`` s: refresh with 30 %
    of the lifetime left, looking every 5 % of it (X's two-hour tokens: ``--within 2160
    --every 360``; ``--within 600 --every 60`` does as well). The workers' own leeway is 10 %:
    by then the store holds the sidecar's pair, and they adopt it."""
    return 0.3 * ttl, 0.05 * ttl


#: Where the placebo windows go: every refresh window moved these fractions of a token
#: lifetime later, between refreshes (a refresh window lasts milliseconds; the next starts
#: a lifetime later).
PLACEBO_SHIFTS = (0.3, 0.4, 0.5, 0.6, 0.7)


def split_by_window(run: Run, shift: float = 0.0) -> tuple[list[float], list[float], list[Span]]:
    """One run's request latencies inside and outside refresh windows, and its refreshes.

    ``shift`` moves every window that many seconds later first: with a fraction of a token
    lifetime (:data:`PLACEBO_SHIFTS`), the *placebo* windows fall between refreshes, where
    nothing happens, so their in/out ratio is what the split alone gives (a long request is
    more likely to overlap a window than a short one, and a hiccup of the machine falls in
    a window by chance).
    """
    latencies = [sample for report in run.reports for sample in report.latencies]
    spans = [span for report in run.reports for span in report.refresh_spans]
    merged = merge_spans([(start + shift, end + shift) for start, end in spans])
    starts = [start for start, _ in merged]
    inside, outside = [], []
    for began, seconds in latencies:
        (inside if overlaps(merged, starts, began, began + seconds) else outside).append(seconds)
    return inside, outside, spans


# -- a row: its runs pooled ---------------------------------------------------------------


def measure(label: str, runs: Sequence[Run], args: argparse.Namespace) -> dict[str, Any]:
    """The row: counts summed over ``runs``, latency samples pooled, percentiles taken once."""
    inside: list[float] = []
    outside: list[float] = []
    spans: list[Span] = []
    windows = 0
    per_run = []
    for run in runs:
        run_inside, run_outside, run_spans = split_by_window(run)
        inside += run_inside
        outside += run_outside
        spans += run_spans
        windows += expiry_windows(run_spans, args.ttl)
        run_in_p99, run_out_p99 = percentile(run_inside, 99), percentile(run_outside, 99)
        per_run.append({"in_window_p99_ms": run_in_p99 * 1000,
                        "outside_window_p99_ms": run_out_p99 * 1000,
                        "in_out_p99_ratio": _ratio(run_in_p99, run_out_p99),
                        "in_window_requests": len(run_inside)})
    summaries = [summarize(run.reports, run.stats, processes=args.processes,
                           seconds=args.seconds, access_ttl=args.ttl) for run in runs]

    def total(key: str) -> int:
        return sum(int(summary[key]) for summary in summaries)

    requests, failed, refreshes = total("requests"), total("failed"), total("refreshes")
    reused = total("reused_refresh_tokens")
    loaded_rtts = [rtt for run in runs for rtt in run.loaded_rtts]
    idle_rtt = median([run.idle_rtt for run in runs])
    rtt = median(loaded_rtts) if loaded_rtts else idle_rtt
    overall = inside + outside
    p99_inside, p99_outside = percentile(inside, 99), percentile(outside, 99)
    ratio = _ratio(p99_inside, p99_outside)
    placebo = placebo_windows(runs, args.ttl)
    placebo_ratios = [r for r in (_ratio(p_in, p_out) for p_in, p_out in placebo)
                      if r is not None]
    placebo_p99 = median([p_in for p_in, _ in placebo if not math.isnan(p_in)])
    in_over_placebo = _ratio(p99_inside, placebo_p99)
    errors = [error for run in runs for report in run.reports for error in report.errors]
    return {
        "store": label,
        "runs": len(runs),
        "requests": requests,
        "failed": failed,
        "refreshes": refreshes,
        "windows": windows,
        "refreshes_per_window": refreshes / windows if windows else None,
        "reused_refresh_tokens": reused,
        "sidecar_refreshes": sum(run.sidecar_refreshes for run in runs),
        "refresh_attempts_rejected": sum(run.stats.get("invalid_refresh_tokens", 0)
                                         for run in runs),
        "p50_ms": percentile(overall, 50) * 1000,
        "p99_ms": percentile(overall, 99) * 1000,
        "in_window_requests": len(inside),
        "in_window_p50_ms": percentile(inside, 50) * 1000,
        "in_window_p99_ms": p99_inside * 1000,
        "outside_window_p99_ms": p99_outside * 1000,
        "in_out_p99_ratio": ratio,
        "ratio_target_met": ratio is not None and ratio <= args.ratio_target,
        "placebo_in_out_p99_ratio": median(placebo_ratios) if placebo_ratios else None,
        "placebo_in_out_p99_ratios": placebo_ratios,
        "placebo_in_window_p99_ms": placebo_p99 * 1000,
        "in_over_placebo_p99": in_over_placebo,
        "placebo_target_met": in_over_placebo is not None
        and in_over_placebo <= args.ratio_target,
        "refresh_span_p50_ms": median([end - start for start, end in spans]) * 1000,
        "token_rtt_idle_ms": idle_rtt * 1000,
        "token_rtt_loaded_ms": rtt * 1000,
        "token_rtt_loaded_p99_ms": percentile(loaded_rtts, 99) * 1000,
        "goal_met": (failed == 0 and reused == 0 and windows > 0 and refreshes == windows
                     and p99_inside <= rtt + 0.010),
        "refresh_spans": len(spans),
        "per_run": per_run,
        "errors": errors[:3],
    }


def placebo_windows(runs: Sequence[Run], ttl: float) -> list[tuple[float, float]]:
    """For each of :data:`PLACEBO_SHIFTS`: the in-window and outside p99 (seconds) of the
    runs' requests, pooled, with every window moved that fraction of ``ttl`` later."""
    result = []
    for fraction in PLACEBO_SHIFTS:
        inside: list[float] = []
        outside: list[float] = []
        for run in runs:
            run_inside, run_outside, _ = split_by_window(run, shift=fraction * ttl)
            inside += run_inside
            outside += run_outside
        result.append((percentile(inside, 99), percentile(outside, 99)))
    return result


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _ms(value: float) -> str:
    return "- ms" if math.isnan(value) else f"{value:.1f} ms"


def _ratio(numerator: float, denominator: float) -> float | None:
    if math.isnan(numerator) or math.isnan(denominator) or denominator <= 0:
        return None
    return numerator / denominator


COLUMNS = [
    ("store", "store"), ("requests", "requests"), ("failed", "failed"),
    ("refreshes", "refreshes"), ("windows", "windows"), ("refreshes_per_window", "per window"),
    ("reused_refresh_tokens", "reused RT"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
    ("in_window_requests", "in-window reqs"), ("in_window_p50_ms", "in-window p50"),
    ("in_window_p99_ms", "in-window p99"), ("outside_window_p99_ms", "outside p99"),
    ("in_out_p99_ratio", "in/out p99"), ("placebo_in_out_p99_ratio", "placebo"),
    ("in_over_placebo_p99", "in/placebo"), ("token_rtt_loaded_ms", "token RTT ms"),
]

STORES = ("json", "json-async", "sqlite", "postgres", "redis", "memory")


@dataclass
class Row:
    """A row to run: its label, whether the processes share the store, and where a fresh
    store lives for each run (a new file, database, or an emptied Redis)."""

    label: str
    shared: bool
    location: Callable[[int], str]
    client: str = "requests"
    sidecar: bool = False


def httpx_unavailable() -> str | None:
    """Why the async row cannot run here, or None."""
    try:
        import httpx  # noqa: F401
    except ImportError:
        return "httpx is not installed (pip install -e '.[httpx]')"
    return None


def _flushed(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def plan_rows(wanted: Sequence[str], folder: str, servers: contextlib.ExitStack,
              notes: list[str], sidecar: bool = False) -> list[Row]:
    """The rows that can run here, their servers started; a note for each that cannot.
    With ``sidecar``, each shared store's row is followed by its sidecar row."""
    rows: list[Row] = []
    for name in wanted:
        why = {"sqlite": sql_unavailable, "postgres": postgres_unavailable,
               "redis": redis_unavailable, "json-async": httpx_unavailable,
               }.get(name, lambda: None)()
        label = {"json": "json file", "postgres": "postgresql", "memory": "memory per process",
                 "json-async": "json file, async"}.get(name, name)
        if why is not None:
            notes.append(f"{label} row skipped: {why}.")
            progress(notes[-1])
            continue
        if name == "json":
            rows.append(Row(label, True, lambda run: os.path.join(folder, f"tokens-{run}.json")))
        elif name == "json-async":  # each process: tasks on an event loop, httpx.AsyncClient
            rows.append(Row(label, True, lambda run: os.path.join(
                folder, f"tokens-async-{run}.json"), client="httpx-async"))
        elif name == "sqlite":
            rows.append(Row(label, True, lambda run: "sqlite:///" + os.path.join(
                folder, f"tokens-{run}.db")))
        elif name == "postgres":
            from refresher.testing.postgres_server import PostgresServer

            try:
                postgres = servers.enter_context(PostgresServer())
            except Exception as exc:  # the binaries are there, but it would not start
                notes.append(f"{label} row skipped: the server did not start "
                             f"({type(exc).__name__}: {str(exc)[-200:]}).")
                progress(notes[-1])
                continue
            rows.append(Row(label, True,
                            lambda run, pg=postgres: pg.create_database(f"contention_{run}")))
        elif name == "redis":
            redis_server = servers.enter_context(RedisServer())
            rows.append(Row(label, True, lambda run, rs=redis_server: _flushed(rs.url)))
        else:
            rows.append(Row(label, False, lambda run: ":memory:"))
        if sidecar and rows and rows[-1].label == label:
            if rows[-1].shared:
                rows.append(dataclasses.replace(  # a store of its own (a file, a database)
                    rows[-1], label=f"{label}, sidecar", sidecar=True,
                    location=lambda run, where=rows[-1].location: where(1000 + run)))
            else:
                notes.append(f"{label}: no sidecar row (nothing shared to adopt from).")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="P processes x T threads sharing one token (JSON file, SQLite, "
        "PostgreSQL, Redis, and a per-process in-memory baseline) against the local X "
        "emulator: refreshes per expiry window, reused refresh tokens, latency inside "
        "refresh windows against outside them.",
    )
    parser.add_argument("-P", "--processes", type=int, default=4,
                        help="worker processes (default 4)")
    parser.add_argument("-T", "--threads", type=int, default=4,
                        help="threads per process (default 4)")
    parser.add_argument("-L", "--ttl", type=float, default=5.0,
                        help="seconds an access token lives (default 5: a refresh starts "
                        "0.5 s before expiry, requests wait for it only in the last 0.25 s; "
                        "1 is a stress test)")
    parser.add_argument("-S", "--seconds", type=float, default=30.0,
                        help="seconds of load per run of a row (default 30)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per row, interleaved between the rows; a row's latency "
                        "samples are pooled over its runs before its percentiles are taken "
                        "(default 3)")
    parser.add_argument("--pause", type=float, default=0.01,
                        help="seconds each thread waits between requests (default 0.01; "
                        "0 sends back to back, which saturates a small machine)")
    parser.add_argument("--stores", default=",".join(STORES),
                        help="rows to run, comma-separated: json, json-async (each process "
                        "runs its threads as tasks on an event loop through httpx), sqlite, "
                        "postgres, redis, memory (default all six)")
    parser.add_argument("--ratio-target", type=float, default=1.5,
                        help="the target for in-window p99 / outside-window p99 (default 1.5)")
    parser.add_argument("--sidecar", action="store_true",
                        help="after each shared store's row, the same with a sidecar "
                        "process making the refreshes (refresher refresh --within): the "
                        "workers adopt its pairs from the store")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.processes, args.threads, args.runs) < 1 or args.ttl <= 0 or args.seconds <= 0:
        parser.error("processes, threads and runs must be at least 1; ttl and seconds "
                     "positive")
    wanted = [name.strip() for name in args.stores.split(",") if name.strip()]
    unknown = set(wanted) - set(STORES)
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")

    notes: list[str] = []
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as servers:
        rows = plan_rows(wanted, folder, servers, notes, args.sidecar)
        runs: dict[str, list[Run]] = {row.label: [] for row in rows}
        # Run 1 of every row, then run 2 of every row...: noise falls on every row alike.
        for number in range(args.runs):
            for row in rows:
                progress(f"{row.label} (run {number + 1} of {args.runs}): {args.processes} "
                         f"processes x {args.threads} threads, {args.seconds:g} s, tokens "
                         f"living {args.ttl:g} s")
                runs[row.label].append(run_once(row.label, row.location(number), row.shared,
                                                args, row.client, row.sidecar))
    results = [measure(row.label, runs[row.label], args) for row in rows]
    report(results, notes, args)
    return 0


def report(results: list[dict[str, Any]], notes: list[str], args: argparse.Namespace) -> None:
    rows = [[result[key] for key, _ in COLUMNS] for result in results]
    leeway = DEFAULT_POLICY.leeway_for({"expires_in": args.ttl})
    notes[:0] = [
        f"{args.processes} processes x {args.threads} threads, GET /2/users/me with "
        f"{args.pause * 1000:g} ms between a thread's requests, {args.seconds:g} s per run, "
        f"{args.runs} runs per row (counts summed, latency samples pooled); access tokens "
        f"live {args.ttl:g} s: each is refreshed in its last {leeway:g} s, in the "
        f"background, and requests wait for a refresh only in the last {leeway / 2:g} s.",
        "windows: groups of refreshes less than ttl/2 apart; per window: refreshes / windows "
        "(ideal 1.00). reused RT: refresh tokens sent again after being spent.",
        "Latencies over all requests, failed ones included. in-window: requests overlapping "
        "a refresh (token endpoint call to saved pair) of any process; outside: the others; "
        "in/out p99: in-window p99 / outside p99. placebo: the same ratio with every window "
        "moved 0.3, 0.4, 0.5, 0.6, 0.7 of a lifetime later, between refreshes (the median "
        "of the five): what the split gives where nothing happens. in/placebo: in-window "
        "p99 / the placebo windows' p99 (their median): what the refreshes cost.",
        "token RTT: median refresh round trip of a probe under the same load "
        "(idle: " + ", ".join(f"{r['token_rtt_idle_ms']:.1f}" for r in results) + " ms).",
    ]
    for result in results:
        verdict = "met" if result["goal_met"] else "NOT met"
        notes.append(
            f"Goal ({result['store']}): 1.00 per window, 0 reused, in-window p99 "
            f"{result['in_window_p99_ms']:.1f} ms < token RTT "
            f"{result['token_rtt_loaded_ms']:.1f} ms + 10 ms -> {verdict} "
            f"(round trip p99 under the same load {result['token_rtt_loaded_p99_ms']:.1f} ms; "
            f"refresh span p50 {result['refresh_span_p50_ms']:.1f} ms)."
        )
    at = "" if (args.processes, args.threads) == (4, 4) else \
        " (the target is set at 4 processes x 4 threads; this run is not)"
    for result in results:
        ratio = result["in_out_p99_ratio"]
        verdict = "met" if result["ratio_target_met"] else "NOT met"
        per_run = ", ".join(_times(r["in_out_p99_ratio"]) for r in result["per_run"])
        shifted = ", ".join(_times(r) for r in result["placebo_in_out_p99_ratios"])
        adjusted = "met" if result["placebo_target_met"] else "NOT met"
        notes.append(
            f"Target ({result['store']}): in-window p99 {_ms(result['in_window_p99_ms'])} "
            f"<= {args.ratio_target:g} x outside p99 {_ms(result['outside_window_p99_ms'])}: "
            f"{_times(ratio)} -> {verdict}{at} (runs alone: {per_run}; placebo windows "
            f"0.3-0.7 of a lifetime later: {shifted or '-'}, median "
            f"{_times(result['placebo_in_out_p99_ratio'])}); against the placebo windows' "
            f"p99 {_ms(result['placebo_in_window_p99_ms'])}: "
            f"{_times(result['in_over_placebo_p99'])} -> {adjusted}."
        )
    for result in results:
        if result["store"].endswith(", sidecar"):
            within, every = sidecar_times(args.ttl)
            notes.append(
                f"Sidecar ({result['store']}): a process of its own refreshes with "
                f"{within:g} s left, looking every {every:g} s; the workers adopt its pairs "
                f"from the store (a read, not a window). Refreshes by the sidecar "
                f"{result['sidecar_refreshes']}, by the workers "
                f"{result['refreshes'] - result['sidecar_refreshes']}.")
    for result in results:
        for error in result["errors"]:
            notes.append(f"  {result['store']} error: {error.strip().splitlines()[-1][:160]}")
    emit(args.json, "contention: processes x threads sharing one token",
         [title for _, title in COLUMNS], rows, notes, extra={"results": results})


if __name__ == "__main__":
    sys.exit(main())
