"""One refresh per expiry? P processes x T threads sharing one token, against the emulator.

Every worker thread calls ``GET /2/users/me`` through a RefreshingSession, pausing
``--pause`` seconds between calls (the engine is :mod:`refresher.demo.workload`), with access
tokens that live ``--ttl`` seconds, for ``--seconds``. One row per store:

- ``json``: one JSONTokenStore file shared by all processes;
- ``redis``: one RedisTokenStore on a throw-away ``redis-server`` (skipped, with the
  reason, when there is none);
- ``memory per process``: the baseline. Each process keeps the token in its own memory,
  as requests-oauthlib or a per-process plugin would, so processes spend the same
  single-use refresh token and all but one of them are locked out.

The emulator counts refreshes and reused refresh tokens. An *expiry window* is a group of
refreshes less than ``ttl / 2`` apart (ideally exactly one refresh each). A request is
*inside a refresh window* when it overlaps a refresh of any process: from the call to the
token endpoint to the save of the new pair. A probe thread refreshes a token of its own
every 100 ms during the load to measure one token-endpoint round trip under that load
(its refreshes are not counted).

    python benchmarks/contention.py                    # 4 x 4, 1-second tokens, 15 s a row
    python benchmarks/contention.py -P 8 -T 2 --ttl 2 --seconds 30 --json
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, median, percentile, progress, redis_unavailable  # noqa: E402

from refresher.demo.workload import WorkerReport, WorkloadSpec, run_workers, summarize  # noqa: E402
from refresher.endpoint import TokenEndpoint  # noqa: E402
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator  # noqa: E402
from refresher.testing.redis_server import RedisServer  # noqa: E402

Span = tuple[float, float]


# -- measuring ------------------------------------------------------------------------------


class TokenRoundTripProbe:
    """Refreshes a token chain of its own every ``interval`` s; records each round trip.

    ``samples`` holds ``(start, seconds)``; ``refreshes`` how many succeeded, to subtract
    from the emulator's count.
    """

    def __init__(self, emulator: XEmulator, interval: float = 0.1) -> None:
        self.emulator = emulator
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._endpoint = TokenEndpoint(emulator.token_url, DEFAULT_CLIENT_ID, None)
        self._refresh_token = str(emulator.issue_token()["refresh_token"])

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

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.once()

    def __enter__(self) -> TokenRoundTripProbe:
        self._thread = threading.Thread(target=self._run, name="token-rtt-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._endpoint.close()

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for began, seconds in self.samples if start <= began <= end]


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


# -- one row --------------------------------------------------------------------------------


def run_row(label: str, store: str, shared: bool, args: argparse.Namespace) -> dict[str, Any]:
    with XEmulator(host="127.0.0.1", port=0, access_ttl=args.ttl) as x:
        idle_rtt = idle_round_trip(x)
        x.reset_stats()
        spec = WorkloadSpec(
            store=store, account="benchmark", client_id=DEFAULT_CLIENT_ID,
            token_url=x.token_url, api_url=x.api_url, threads=args.threads,
            seconds=args.seconds, shared_store=shared, collect_latencies=True,
            pause=args.pause,
        )
        progress(f"{label}: {args.processes} processes x {args.threads} threads, "
                 f"{args.seconds:g} s, tokens living {args.ttl:g} s")
        # The first token outlives the workers' start-up (run_workers starts them together
        # 1 + 0.25 P seconds from now) by half a lifetime: the first refresh then falls in
        # the steady state, not on cold processes opening their first connections.
        x.access_ttl = 1.0 + 0.25 * args.processes + args.ttl / 2
        seed = x.issue_token()
        x.access_ttl = args.ttl
        with TokenRoundTripProbe(x) as probe:
            reports = run_workers(spec, args.processes, seed=seed)
        stats = x.stats.as_dict()
    stats["refreshes"] -= probe.refreshes
    return measure(label, reports, stats, probe, idle_rtt, args)


def measure(label: str, reports: Sequence[WorkerReport], stats: dict[str, int],
            probe: TokenRoundTripProbe, idle_rtt: float,
            args: argparse.Namespace) -> dict[str, Any]:
    summary = summarize(reports, stats, processes=args.processes, seconds=args.seconds,
                        access_ttl=args.ttl)
    latencies = [sample for report in reports for sample in report.latencies]
    spans = [span for report in reports for span in report.refresh_spans]
    merged = merge_spans(spans)
    starts = [start for start, _ in merged]
    inside = [seconds for began, seconds in latencies
              if overlaps(merged, starts, began, began + seconds)]
    overall = [seconds for _, seconds in latencies]
    outside = [seconds for began, seconds in latencies
               if not overlaps(merged, starts, began, began + seconds)]
    first = min((began for began, _ in latencies), default=0.0)
    last = max((began + seconds for began, seconds in latencies), default=0.0)
    loaded_rtts = probe.between(first, last)
    windows = expiry_windows(spans, args.ttl)
    rtt = median(loaded_rtts) if loaded_rtts else idle_rtt
    p99_inside = percentile(inside, 99)
    errors = [error for report in reports for error in report.errors]
    return {
        "store": label,
        "requests": summary["requests"],
        "failed": summary["failed"],
        "refreshes": summary["refreshes"],
        "windows": windows,
        "refreshes_per_window": summary["refreshes"] / windows if windows else None,
        "reused_refresh_tokens": summary["reused_refresh_tokens"],
        "refresh_attempts_rejected": stats.get("invalid_refresh_tokens", 0),
        "p50_ms": percentile(overall, 50) * 1000,
        "p99_ms": percentile(overall, 99) * 1000,
        "in_window_requests": len(inside),
        "in_window_p50_ms": percentile(inside, 50) * 1000,
        "in_window_p99_ms": p99_inside * 1000,
        "outside_window_p99_ms": percentile(outside, 99) * 1000,
        "refresh_span_p50_ms": median([end - start for start, end in spans]) * 1000,
        "token_rtt_idle_ms": idle_rtt * 1000,
        "token_rtt_loaded_ms": rtt * 1000,
        "token_rtt_loaded_p99_ms": percentile(loaded_rtts, 99) * 1000,
        "goal_met": (summary["failed"] == 0 and summary["reused_refresh_tokens"] == 0
                     and windows > 0 and summary["refreshes"] == windows
                     and p99_inside <= rtt + 0.010),
        "refresh_spans": len(spans),
        "errors": errors[:3],
    }


COLUMNS = [
    ("store", "store"), ("requests", "requests"), ("failed", "failed"),
    ("refreshes", "refreshes"), ("windows", "windows"), ("refreshes_per_window", "per window"),
    ("reused_refresh_tokens", "reused RT"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
    ("in_window_requests", "in-window reqs"), ("in_window_p50_ms", "in-window p50"),
    ("in_window_p99_ms", "in-window p99"), ("token_rtt_loaded_ms", "token RTT ms"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="P processes x T threads sharing one token (JSON file, Redis, and a "
        "per-process in-memory baseline) against the local X emulator: refreshes per "
        "expiry window, reused refresh tokens, latency inside refresh windows.",
    )
    parser.add_argument("-P", "--processes", type=int, default=4,
                        help="worker processes (default 4)")
    parser.add_argument("-T", "--threads", type=int, default=4,
                        help="threads per process (default 4)")
    parser.add_argument("-L", "--ttl", type=float, default=1.0,
                        help="seconds an access token lives (default 1)")
    parser.add_argument("-S", "--seconds", type=float, default=15.0,
                        help="seconds of load per row (default 15)")
    parser.add_argument("--pause", type=float, default=0.01,
                        help="seconds each thread waits between requests (default 0.01; "
                        "0 sends back to back, which saturates a small machine)")
    parser.add_argument("--stores", default="json,redis,memory",
                        help="rows to run, comma-separated: json, redis, memory "
                        "(default all three)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.processes, args.threads) < 1 or args.ttl <= 0 or args.seconds <= 0:
        parser.error("processes and threads must be at least 1; ttl and seconds positive")
    wanted = [name.strip() for name in args.stores.split(",") if name.strip()]
    unknown = set(wanted) - {"json", "redis", "memory"}
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")

    results: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        for name in wanted:
            if name == "json":
                results.append(run_row("json file", os.path.join(folder, "tokens.json"),
                                       True, args))
            elif name == "redis":
                why = redis_unavailable()
                if why is not None:
                    notes.append(f"redis row skipped: {why}.")
                    progress(notes[-1])
                    continue
                with RedisServer() as server:
                    results.append(run_row("redis", server.url, True, args))
            else:
                results.append(run_row("memory per process", ":memory:", False, args))

    rows = [[result[key] for key, _ in COLUMNS] for result in results]
    notes[:0] = [
        f"{args.processes} processes x {args.threads} threads, GET /2/users/me with "
        f"{args.pause * 1000:g} ms between a thread's requests, {args.seconds:g} s per row; "
        f"access tokens live {args.ttl:g} s.",
        "windows: groups of refreshes less than ttl/2 apart; per window: refreshes / windows "
        "(ideal 1.00). reused RT: refresh tokens sent again after being spent.",
        "Latencies over all requests, failed ones included. in-window: requests overlapping "
        "a refresh (token endpoint call to saved pair) of any process.",
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
        for error in result["errors"]:
            notes.append(f"  {result['store']} error: {error.strip().splitlines()[-1][:160]}")
    emit(args.json, "contention: processes x threads sharing one token",
         [title for _, title in COLUMNS], rows, notes, extra={"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
