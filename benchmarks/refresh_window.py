"""What one refresh costs the requests beside it, and whether refresher's code adds to it.

One worker process runs ``--threads`` threads, each calling ``GET /2/users/me`` against the
emulator with ``--pause`` seconds between calls, for ``--seconds``, with a token that does
not expire. Beside them, every ``--every`` seconds, one token request is made, one row per
way of making it:

- ``refresher``: ``TokenEndpoint.refresh`` in the worker process, from a thread of its own:
  the call a refresh makes (its thread pool, send gate, deadlines, checks);
- ``bare POST``: a plain ``requests.Session().post`` to the token endpoint in the worker
  process, from a thread of its own: the least any in-process refresh must do;
- ``other process``: ``TokenEndpoint.refresh`` from a process of its own, at the same
  rhythm: the emulator and the machine do the same work, the worker process none;
- ``busy thread``: no token request at all: a thread of the worker process runs pure Python
  for ``--burn-ms`` of CPU (about what one refresh costs) at the same rhythm: what any
  work of that size in the process costs the requests beside it, through the
  interpreter lock alone;
- ``coordinator``: ``session.coordinator.refresh()`` from a thread of the worker process:
  that call plus the coordinator's part of a refresh (locks, the store: a memory store);
- ``background``: no thread of ours: tokens live ``--ttl`` seconds, and the session
  refreshes them in the background, started by the request that finds its token in the
  refresh window, as in ``contention.py`` (one process, a memory store).

For the last two, a window runs from ``on_refresh_start`` to ``on_token_update``, as in
``contention.py``.

A request is *in the window* when it overlaps a token request (``contention.py`` uses the
same split). ``in/out p50`` and ``in/out p99`` compare the requests in the windows with the
others. If ``refresher`` reads like ``bare POST``, the stall in ``contention.py``'s refresh
windows comes from making an HTTP request in the process at all, not from refresher's
code; ``other process`` is what is left when the process makes none.

Only in ``background`` is a token request started by a request (the one that finds its
token in the window, which then runs beside the refresh's start); in the other rows a
thread that sleeps starts them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, percentile, progress  # noqa: E402
from contention import merge_spans, overlaps  # noqa: E402

from refresher.demo.workload import RefreshSpans  # noqa: E402
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator  # noqa: E402

Span = tuple[float, float]
WAYS = ("refresher", "bare POST", "other process", "busy thread", "coordinator", "background")


def _burn(seconds: float) -> None:
    """Run Python (holding the interpreter lock but for its switch interval) for ``seconds``
    of this thread's CPU time."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        sum(range(200))


def _token_requests(way: str, token_url: str, refresh_token: str, every: float,
                    until: float, burn: float = 0.0) -> list[Span]:
    """Spend the chain of ``refresh_token`` every ``every`` s until ``until`` (``busy
    thread``: burn ``burn`` s of CPU instead); the spans."""
    import requests

    from refresher.endpoint import TokenEndpoint

    endpoint = TokenEndpoint(token_url, DEFAULT_CLIENT_ID, None)
    session = requests.Session()
    spans: list[Span] = []
    try:
        while time.time() + every < until:
            time.sleep(every)
            began = time.time()
            if way == "busy thread":
                _burn(burn)
            elif way == "bare POST":
                answer = session.post(token_url, headers={"Accept": "application/json"},
                                      data={"grant_type": "refresh_token",
                                            "refresh_token": refresh_token,
                                            "client_id": DEFAULT_CLIENT_ID}, timeout=30)
                answer.raise_for_status()
                refresh_token = answer.json()["refresh_token"]
            else:
                refresh_token = str(endpoint.refresh(refresh_token)["refresh_token"])
            spans.append((began, time.time()))
    finally:
        endpoint.close()
        session.close()
    return spans


def _other_process(token_url: str, refresh_token: str, every: float, until: float,
                   results: Any) -> None:
    results.put(json.dumps(_token_requests("other process", token_url, refresh_token, every,
                                           until)))


def _worker(way: str, args: dict[str, Any], token: dict[str, Any], refresh_token: str,
            token_url: str, api_url: str, start_at: float, results: Any) -> None:
    """The requests (and, for the in-process ways, the token requests) of one run."""
    from refresher import MemoryTokenStore, RefreshingSession

    latencies: list[Span] = []  # (start, seconds)
    windows = RefreshSpans()  # the windows of a session's refresh, as contention.py's
    spans = windows.spans
    hooked = way in ("coordinator", "background")
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=MemoryTokenStore(), account="bench",
                                token=token, token_url=token_url, api_url=api_url,
                                on_refresh_start=windows.on_start if hooked else None,
                                on_token_update=windows.on_update if hooked else None)
    url = api_url.rstrip("/") + "/2/users/me"
    until = start_at + args["seconds"]
    lock = threading.Lock()

    def requests_loop() -> None:
        mine: list[Span] = []
        while True:  # one request at least, even in a worker a busy machine started late
            began = time.time()
            if began >= until and mine:
                break
            session.get(url, timeout=30).raise_for_status()
            mine.append((began, time.time() - began))
            time.sleep(args["pause"])
        with lock:
            latencies.extend(mine)

    def token_loop() -> None:
        if way != "coordinator":
            spans.extend(_token_requests(way, token_url, refresh_token, args["every"], until,
                                         args["burn_ms"] / 1000))
            return
        coordinator = session.coordinator
        assert coordinator is not None
        while time.time() + args["every"] < until:
            time.sleep(args["every"])
            coordinator.refresh()

    while time.time() < start_at:
        time.sleep(0.001)
    threads = [threading.Thread(target=requests_loop) for _ in range(args["threads"])]
    if way not in ("other process", "background"):
        threads.append(threading.Thread(target=token_loop))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    session.close()
    results.put(json.dumps({"latencies": latencies, "spans": spans}))


def run_way(way: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """One run of ``way``: the latencies (seconds) inside the windows and outside."""
    context = multiprocessing.get_context("spawn")
    ttl = args.ttl if way == "background" else 10 * args.seconds + 3600
    with XEmulator(host="127.0.0.1", port=0, access_ttl=ttl) as x:
        token, chain = x.issue_token(), str(x.issue_token()["refresh_token"])
        results = context.Queue()
        start_at = time.time() + 1.0  # spawned interpreters are up well within it
        worker = context.Process(target=_worker, args=(
            way, vars(args), token, chain, x.token_url, x.api_url, start_at, results))
        worker.start()
        other = None
        if way == "other process":
            other = context.Process(target=_other_process, args=(
                x.token_url, chain, args.every, start_at + args.seconds, results))
            other.start()
        answers = [json.loads(results.get(timeout=args.seconds + 120))
                   for _ in range(2 if other else 1)]
        worker.join(timeout=30)
        if other is not None:
            other.join(timeout=30)
    latencies = next(a["latencies"] for a in answers if isinstance(a, dict))
    spans = [s for a in answers for s in (a if isinstance(a, list) else a["spans"])]
    merged = merge_spans([(start, end) for start, end in spans])
    starts = [start for start, _ in merged]
    inside: list[float] = []
    outside: list[float] = []
    for began, seconds in latencies:
        (inside if overlaps(merged, starts, began, began + seconds) else outside).append(seconds)
    return inside, outside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-T", "--threads", type=int, default=4,
                        help="request threads in the worker process (default 4)")
    parser.add_argument("-S", "--seconds", type=float, default=40.0,
                        help="seconds of requests per run (default 40)")
    parser.add_argument("--pause", type=float, default=0.01,
                        help="seconds each thread waits between requests (default 0.01)")
    parser.add_argument("--every", type=float, default=0.5,
                        help="seconds between token requests (default 0.5)")
    parser.add_argument("-L", "--ttl", type=float, default=1.0,
                        help="seconds a token lives in the background row (default 1: a "
                             "refresh about every 0.9 s)")
    parser.add_argument("--burn-ms", type=float, default=1.1,
                        help="ms of CPU the busy thread row burns each time (default 1.1: "
                             "about one coordinated refresh on a memory store)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per row, interleaved; samples pooled (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    pooled: dict[str, tuple[list[float], list[float]]] = {way: ([], []) for way in WAYS}
    for run in range(1, args.runs + 1):
        for way in WAYS:
            progress(f"{way} (run {run} of {args.runs}): {args.threads} threads, "
                     f"a token request every {args.every} s, {args.seconds:g} s")
            inside, outside = run_way(way, args)
            pooled[way][0].extend(inside)
            pooled[way][1].extend(outside)
    rows = []
    for way in WAYS:
        inside, outside = pooled[way]
        ms = [percentile(values, pct) * 1000 if values else float("nan")
              for values in (inside, outside) for pct in (50, 99)]
        rows.append([way, len(inside), len(outside), *ms,
                     ms[0] / ms[2] if outside else float("nan"),
                     ms[1] / ms[3] if outside else float("nan")])
    columns = ["token requests from", "in-window reqs", "outside reqs", "in p50 ms",
               "in p99 ms", "out p50 ms", "out p99 ms", "in/out p50", "in/out p99"]
    emit(args.json, "what one token request costs the requests beside it", columns, rows,
         notes=[f"1 worker process x {args.threads} threads, GET /2/users/me with "
                f"{args.pause:g} s between a thread's requests; a token request every "
                f"{args.every:g} s; {args.runs} run(s) of {args.seconds:g} s per row, "
                "interleaved, samples pooled.",
                "in-window: requests overlapping a token request; refresher: the call a "
                "refresh makes; bare POST: requests.Session().post; both from a thread "
                "of the worker process. other process: the same calls, from another "
                f"process. busy thread: no token request, {args.burn_ms:g} ms of pure "
                "Python CPU in a thread of the worker. coordinator: "
                "session.coordinator.refresh() from a thread of the worker; background: "
                "the session's own refreshes, tokens living "
                f"{args.ttl:g} s (windows from on_refresh_start to on_token_update)."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
