"""What refresher costs per request: keep-alive GETs through several clients, side by side.

The clients, each sending the same bearer token to the same fast local HTTP server:

- ``requests.Session``: a plain session sending the token through a fixed ``auth`` (the
  floor; as for every session with ``auth`` set, requests then skips its ``~/.netrc``
  lookup, which a bare session with a fixed header pays on every request: 4-6 %);
- ``OAuth2Session``: requests-oauthlib with the token (what users would pick instead);
- ``RefreshingSession+memory``: refresher with a MemoryTokenStore;
- ``RefreshingSession+json``: refresher with a JSONTokenStore (a file on disk);
- ``httpx.AsyncClient``: httpx, async, with a fixed ``Authorization`` header (the httpx rows'
  floor), one request at a time on an event loop of its own;
- ``RefreshingAuth+memory`` / ``RefreshingAuth+json``: the same client with
  ``auth=refresher.httpx.RefreshingAuth`` (skipped, with a note, when httpx is missing);
- ``aiohttp+no-op``: an ``aiohttp.ClientSession`` with a fixed header and a middleware that
  only calls on (the aiohttp rows' floor); ``RefreshingMiddleware+memory``: the same session
  with ``refresher.aiohttp.RefreshingMiddleware`` instead (skipped when aiohttp is missing).

Rounds are interleaved (every round runs every client, in a rotating order) so that noise
from the machine falls on all of them alike; the table shows the median of the rounds.

    python benchmarks/overhead.py                      # 3000 requests per client, 30 rounds
    python benchmarks/overhead.py --requests 20000 --rounds 100 --json
    python benchmarks/overhead.py --profile RefreshingSession+json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import requests
from requests_oauthlib import OAuth2Session

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FastHTTPServer, emit, median, progress  # noqa: E402

from refresher import JSONTokenStore, MemoryTokenStore, RefreshingSession  # noqa: E402

CLIENT_ID = "benchmark-client"
FLOOR = "requests.Session"
OAUTH2 = "OAuth2Session"
MEMORY = "RefreshingSession+memory"
JSON_STORE = "RefreshingSession+json"
HTTPX_FLOOR = "httpx.AsyncClient"
HTTPX_MEMORY = "RefreshingAuth+memory"
HTTPX_JSON = "RefreshingAuth+json"
AIOHTTP_FLOOR = "aiohttp+no-op"
AIOHTTP_MEMORY = "RefreshingMiddleware+memory"
SYNC_CLIENTS = (FLOOR, OAUTH2, MEMORY, JSON_STORE)
HTTPX_CLIENTS = (HTTPX_FLOOR, HTTPX_MEMORY, HTTPX_JSON)
AIOHTTP_CLIENTS = (AIOHTTP_FLOOR, AIOHTTP_MEMORY)
ASYNC_CLIENTS = HTTPX_CLIENTS + AIOHTTP_CLIENTS
CLIENTS = SYNC_CLIENTS + ASYNC_CLIENTS


def _token() -> dict[str, Any]:
    # Lives two hours, as X's do: no refresh happens during the benchmark.
    return {
        "token_type": "bearer",
        "access_token": "benchmark-access-token-" + "a" * 60,
        "refresh_token": "benchmark-refresh-token-" + "r" * 60,
        "expires_in": 7200,
        "expires_at": time.time() + 7200,
        "scope": "tweet.read users.read offline.access",
    }


def make_clients(base_url: str, folder: str) -> dict[str, requests.Session]:
    """The four sessions, each holding the same two-hour token."""
    token = _token()
    floor = requests.Session()
    floor.auth = _FixedBearer(token["access_token"])
    oauth2 = OAuth2Session(CLIENT_ID, token=dict(token))
    common: dict[str, Any] = {
        "token": dict(token), "token_url": base_url + "/2/oauth2/token",
        "api_base_url": base_url,
    }
    memory = RefreshingSession(CLIENT_ID, store=MemoryTokenStore(), **common)
    json_store = RefreshingSession(
        CLIENT_ID, store=JSONTokenStore(os.path.join(folder, "tokens.json")), **common
    )
    return {FLOOR: floor, OAUTH2: oauth2, MEMORY: memory, JSON_STORE: json_store}


class _FixedBearer(requests.auth.AuthBase):
    """The floor's token, as an ``auth``: requests skips ``~/.netrc`` for it, as it does for
    OAuth2Session and RefreshingSession, so the floor pays no lookup they do not."""

    def __init__(self, access_token: str) -> None:
        self.header = f"Bearer {access_token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self.header
        return request


def aiohttp_unavailable() -> str | None:
    """Why the aiohttp rows cannot run (``None`` when they can)."""
    try:
        import aiohttp  # noqa: F401

        import refresher.aiohttp  # noqa: F401
    except ImportError as exc:
        return f"aiohttp rows skipped: {exc} (pip install -e '.[aiohttp]')"
    return None


def httpx_unavailable() -> str | None:
    """Why the httpx rows cannot run (``None`` when they can)."""
    try:
        import httpx  # noqa: F401

        import refresher.httpx  # noqa: F401
    except ImportError as exc:
        return f"httpx rows skipped: {exc} (pip install -e '.[httpx]')"
    return None


class AsyncClients:
    """The httpx and aiohttp rows: clients on an event loop of their own, driven from this
    thread one request at a time (as the requests rows are), each holding the same two-hour
    token. ``names``: the rows to make."""

    def __init__(self, base_url: str, folder: str, names: tuple[str, ...]) -> None:
        token = _token()
        self.auths: dict[str, Any] = {}
        self.getters: dict[str, Callable[..., Any]] = {}
        self.loop = asyncio.new_event_loop()
        self.closers: list[Callable[[], Any]] = []
        if HTTPX_FLOOR in names:
            self._make_httpx(base_url, folder, token)
        if AIOHTTP_FLOOR in names:
            self._make_aiohttp(base_url, token)

    def _make_aiohttp(self, base_url: str, token: dict[str, Any]) -> None:
        import aiohttp

        from refresher.aiohttp import RefreshingMiddleware

        middleware = RefreshingMiddleware(CLIENT_ID, store=MemoryTokenStore(),
                                          token=dict(token), token_url=base_url +
                                          "/2/oauth2/token", api_url=base_url)
        self.auths[AIOHTTP_MEMORY] = middleware

        async def no_op(request: Any, handler: Any) -> Any:
            return await handler(request)

        async def make() -> None:
            floor = aiohttp.ClientSession(
                middlewares=[no_op], headers={"Authorization": f"Bearer {token['access_token']}"})
            mine = aiohttp.ClientSession(middlewares=[middleware])
            for name, session in ((AIOHTTP_FLOOR, floor), (AIOHTTP_MEMORY, mine)):
                self.getters[name] = _aiohttp_get(session)
                self.closers.append(session.close)

        self.loop.run_until_complete(make())

    def _make_httpx(self, base_url: str, folder: str, token: dict[str, Any]) -> None:
        import httpx

        from refresher.httpx import RefreshingAuth

        common: dict[str, Any] = {"token_url": base_url + "/2/oauth2/token", "api_url": base_url}
        auths = {
            HTTPX_MEMORY: RefreshingAuth(CLIENT_ID, store=MemoryTokenStore(),
                                         token=dict(token), **common),
            HTTPX_JSON: RefreshingAuth(
                CLIENT_ID, store=JSONTokenStore(os.path.join(folder, "httpx-tokens.json")),
                token=dict(token), **common),
        }
        self.auths.update(auths)

        async def make() -> None:
            clients = {name: httpx.AsyncClient(auth=auth) for name, auth in auths.items()}
            clients[HTTPX_FLOOR] = httpx.AsyncClient(
                headers={"Authorization": f"Bearer {token['access_token']}"})
            for name, client in clients.items():
                self.getters[name] = client.get
                self.closers.append(client.aclose)

        self.loop.run_until_complete(make())

    def run(self, name: str, url: str, count: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds) for ``count`` GETs through client ``name``, timed inside
        the loop (starting the loop is not the client's cost)."""
        gc.collect()
        return self.loop.run_until_complete(_timed_async(self.getters[name], url, count))

    def close(self) -> None:
        async def close_all() -> None:
            for close in self.closers:
                await close()

        self.loop.run_until_complete(close_all())
        self.loop.close()
        for auth in self.auths.values():
            auth.close()


def _aiohttp_get(session: Any) -> Callable[..., Any]:
    """``get(url)`` through an aiohttp session: the answer, its body read (as httpx's is)."""

    class Answer:
        __slots__ = ("status_code",)

    async def get(url: str) -> Any:
        async with session.get(url) as response:
            await response.read()
            answer = Answer()
            answer.status_code = response.status
            return answer

    return get


async def _timed_async(get: Callable[..., Any], url: str, count: int) -> tuple[float, float]:
    bad = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        if (await get(url)).status_code != 200:
            bad += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if bad:
        raise RuntimeError(f"{bad} of {count} requests did not answer 200")
    return wall, cpu


class _InsecureTransportAllowed:
    """OAuth2Session refuses plain http unless OAUTHLIB_INSECURE_TRANSPORT is set.

    It is set only around OAuth2Session's rounds: refresher is measured on its real check
    (plain http is allowed to loopback addresses only, which costs it a little more than
    an https URL would).
    """

    def __enter__(self) -> None:
        self.before = os.environ.get("OAUTHLIB_INSECURE_TRANSPORT")
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"

    def __exit__(self, *exc_info: object) -> None:
        if self.before is None:
            os.environ.pop("OAUTHLIB_INSECURE_TRANSPORT", None)
        else:
            os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = self.before


def run_round(name: str, session: requests.Session, url: str, count: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for ``count`` GETs through ``session``.

    Raises on any answer other than 200.
    """
    gc.collect()
    if name == OAUTH2:
        with _InsecureTransportAllowed():
            return _timed(session.get, url, count)
    return _timed(session.get, url, count)


def _timed(get: Callable[..., requests.Response], url: str, count: int) -> tuple[float, float]:
    bad = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        if get(url).status_code != 200:
            bad += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if bad:
        raise RuntimeError(f"{bad} of {count} requests did not answer 200")
    return wall, cpu


def profile(name: str, session: Any, url: str, count: int, top: int) -> str:
    """cProfile of ``count`` requests through one client, sorted by cumulative time.
    ``session`` is a requests session, or the AsyncClients for an httpx row."""
    profiler = cProfile.Profile()
    if isinstance(session, AsyncClients):
        profiler.runcall(session.run, name, url, count)
    elif name == OAUTH2:
        with _InsecureTransportAllowed():
            profiler.runcall(_timed, session.get, url, count)
    else:
        profiler.runcall(_timed, session.get, url, count)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    out.write("Time spent in refresher's and requests-oauthlib's own code:\n")
    stats.sort_stats("tottime").print_stats(r"refresher[/\\]|oauthlib[/\\]")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Microseconds per keep-alive GET through requests.Session, "
        "OAuth2Session and RefreshingSession (memory and JSON stores), and through "
        "httpx.AsyncClient bare and with RefreshingAuth, against a fast local HTTP server "
        "in another process.",
    )
    parser.add_argument("--requests", type=int, default=3000, metavar="N",
                        help="timed requests per client, split evenly over the rounds "
                        "(default 3000)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="interleaved rounds; the table shows their median (default 30)")
    parser.add_argument("--warmup", type=int, default=200, metavar="N",
                        help="untimed requests per client first (default 200)")
    parser.add_argument("--path", default="/2/users/me", help="path to GET")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", choices=CLIENTS, metavar="CLIENT",
                        help="instead of the table, profile --requests requests through "
                        f"CLIENT (one of: {', '.join(CLIENTS)})")
    parser.add_argument("--top", type=int, default=30, help="rows of --profile output")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    per_round = max(1, args.requests // args.rounds)

    skips = [why for why in (httpx_unavailable(), aiohttp_unavailable()) if why]
    names = SYNC_CLIENTS + (() if httpx_unavailable() else HTTPX_CLIENTS) + (
        () if aiohttp_unavailable() else AIOHTTP_CLIENTS)
    skipped = "; ".join(skips) or None
    with FastHTTPServer() as server, tempfile.TemporaryDirectory() as folder:
        url = server.url + args.path
        clients = make_clients(server.url, folder)
        async_names = tuple(name for name in names if name in ASYNC_CLIENTS)
        async_clients = AsyncClients(server.url, folder, async_names) if async_names else None

        def measure(name: str, count: int) -> tuple[float, float]:
            if name in ASYNC_CLIENTS:
                assert async_clients is not None
                return async_clients.run(name, url, count)
            return run_round(name, clients[name], url, count)

        try:
            for name in names:
                measure(name, max(1, args.warmup))
            if args.profile:
                if args.profile not in names:
                    print(skipped)
                    return 1
                target: Any = async_clients if args.profile in ASYNC_CLIENTS else (
                    clients[args.profile])
                print(profile(args.profile, target, url, args.requests, args.top))
                return 0
            wall: dict[str, list[float]] = {name: [] for name in names}
            cpu: dict[str, list[float]] = {name: [] for name in names}
            for index in range(args.rounds):
                shift = index % len(names)
                for name in names[shift:] + names[:shift]:
                    seconds, cpu_seconds = measure(name, per_round)
                    wall[name].append(seconds / per_round * 1e6)
                    cpu[name].append(cpu_seconds / per_round * 1e6)
                if (index + 1) % 10 == 0 or index + 1 == args.rounds:
                    progress(f"round {index + 1}/{args.rounds}")
        finally:
            for session in clients.values():
                session.close()
            if async_clients is not None:
                async_clients.close()

    # Ratios are taken round by round (the clients of a round ran within moments of
    # each other, under the same load), then their median: steadier than a ratio of medians.
    def ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
        return median([a / b for a, b in zip(samples[name], samples[base], strict=True) if b > 0])

    def floor_of(name: str) -> str:
        if name in AIOHTTP_CLIENTS:
            return AIOHTTP_FLOOR
        return HTTPX_FLOOR if name in HTTPX_CLIENTS else FLOOR

    def versus_oauth2(samples: dict[str, list[float]], name: str) -> float | None:
        return None if name in ASYNC_CLIENTS else ratio(samples, name, OAUTH2)

    rows = [
        [name, median(wall[name]), versus_oauth2(wall, name), ratio(wall, name, floor_of(name)),
         median(cpu[name]), versus_oauth2(cpu, name), ratio(cpu, name, floor_of(name))]
        for name in names
    ]
    columns = ["client", "us/request", "vs OAuth2Session", "vs floor",
               "CPU us/request", "CPU vs OAuth2Session", "CPU vs floor"]
    goal = ratio(wall, JSON_STORE, OAUTH2)
    notes = [
        f"{args.rounds} interleaved rounds x {per_round} keep-alive GETs per client to "
        f"{server.url}{args.path} (asyncio HTTP/1.1 server in a child process).",
        "us/request: wall clock, median of rounds. CPU: this process only (the server's "
        "work and other processes' are left out).",
        "Ratios: median over rounds of the ratio within the round. The floor is "
        "requests.Session with a fixed auth (no ~/.netrc lookup, as for the others) for the "
        "requests rows, httpx.AsyncClient with a fixed header for the httpx rows, "
        "aiohttp.ClientSession with a fixed header and a no-op middleware for the aiohttp "
        "rows.",
        f"Goal: RefreshingSession+json within 5 % of OAuth2Session: "
        f"{(goal - 1) * 100:+.1f} % -> {'met' if goal <= 1.05 else 'NOT met'}.",
    ]
    if skipped:
        notes.append(skipped)
    if HTTPX_JSON in names:
        async_goal = ratio(wall, HTTPX_JSON, HTTPX_FLOOR)
        notes.append(f"Goal: RefreshingAuth+json within 5 % of httpx.AsyncClient with a fixed "
                     f"header: {(async_goal - 1) * 100:+.1f} % -> "
                     f"{'met' if async_goal <= 1.05 else 'NOT met'}.")
    if AIOHTTP_MEMORY in names:
        aiohttp_goal = ratio(cpu, AIOHTTP_MEMORY, AIOHTTP_FLOOR)
        notes.append(f"Goal: RefreshingMiddleware's CPU within 5 % of a no-op middleware's: "
                     f"{(aiohttp_goal - 1) * 100:+.1f} % -> "
                     f"{'met' if aiohttp_goal <= 1.05 else 'NOT met'}.")
    emit(args.json, "overhead: microseconds per keep-alive GET (median of rounds)", columns,
         rows, notes, extra={
             "requests_per_round": per_round, "rounds": args.rounds,
             "wall_us_per_round": wall, "cpu_us_per_round": cpu,
             "python": sys.version.split()[0],
         })
    return 0


if __name__ == "__main__":
    sys.exit(main())
