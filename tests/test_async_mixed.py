"""Mixed fleets: sync and async programs share one store, and never spend a refresh token twice.

Four processes call ``/2/users/me`` at once through one store while access tokens live one
second: two sync (RefreshingSession, 3 threads each), one httpx.AsyncClient and one aiohttp
session (4 tasks each). The emulator's counters are the ground truth. (That ``import
refresher`` imports neither httpx nor aiohttp, and how a missing one is reported, is in
test_extras.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refresher.testing import DEFAULT_CLIENT_ID

pytestmark = pytest.mark.integration  # spawns processes

ROOT = Path(__file__).resolve().parent.parent

WORKER = '''
import asyncio, json, sys, threading, time

mode, store, token_url, api_url, client_id, start_at, seconds, width = sys.argv[1:9]
start_at, seconds, width = float(start_at), float(seconds), int(width)
url = api_url + "/2/users/me"
deadline = start_at + seconds
counts = {"requests": 0, "failed": 0, "errors": [], "first": None, "last": None}
lock = threading.Lock()


def times():
    """Each request's start: one at least (a busy machine may start a worker after the
    window), then until the deadline."""
    began = time.time()
    while True:
        yield began
        began = time.time()
        if began >= deadline:
            return


def count(began, ok, error=None):
    with lock:
        counts["requests"] += 1
        counts["first"] = min(began, counts["first"] or began)
        counts["last"] = time.time()
        if not ok:
            counts["failed"] += 1
            if error and len(counts["errors"]) < 5:
                counts["errors"].append(f"{mode}: {error}")


def run_sync():
    from refresher import RefreshingSession

    session = RefreshingSession(client_id, store=store, account="shared",
                                token_url=token_url, api_url=api_url)

    def loop():
        for began in times():
            try:
                r = session.get(url, timeout=30)
                count(began, r.status_code == 200, f"HTTP {r.status_code}: {r.text[:100]}")
            except Exception as exc:
                count(began, False, f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=loop) for _ in range(width)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()


async def run_httpx():
    import httpx
    from refresher.httpx import RefreshingAuth

    auth = RefreshingAuth(client_id, store=store, account="shared", token_url=token_url,
                          api_url=api_url)

    async def loop(client):
        for began in times():
            try:
                r = await client.get(url)
                count(began, r.status_code == 200, f"HTTP {r.status_code}: {r.text[:100]}")
            except Exception as exc:
                count(began, False, f"{type(exc).__name__}: {exc}")

    async with httpx.AsyncClient(auth=auth, timeout=30) as client:
        await asyncio.gather(*(loop(client) for _ in range(width)))
    auth.close()


async def run_aiohttp():
    import aiohttp
    from refresher.aiohttp import RefreshingMiddleware

    middleware = RefreshingMiddleware(client_id, store=store, account="shared",
                                      token_url=token_url, api_url=api_url)

    async def loop(session):
        for began in times():
            try:
                async with session.get(url) as r:
                    text = await r.text()
                count(began, r.status == 200, f"HTTP {r.status}: {text[:100]}")
            except Exception as exc:
                count(began, False, f"{type(exc).__name__}: {exc}")

    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        await asyncio.gather(*(loop(session) for _ in range(width)))
    middleware.close()


def main():
    if mode == "sync":
        while time.time() < start_at:
            time.sleep(0.001)
        run_sync()
        return
    async def waiting(run):
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await run()
    asyncio.run(waiting(run_httpx if mode == "httpx" else run_aiohttp))


main()
print(json.dumps(counts))
'''


def run_fleet(x, store: str, tmp_path: Path, *, seconds: float = 3.0) -> dict:
    from refresher import RefreshingSession

    RefreshingSession(DEFAULT_CLIENT_ID, store=store, account="shared", token=x.issue_token(),
                      token_url=x.token_url, api_url=x.api_url).close()  # the first pair
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    start_at = time.time() + 3.0  # interpreters (and httpx, aiohttp) need a moment
    # 4 tasks an async process: on a busy 2-core machine more keep requests in flight past
    # the 0.1 s a 1-second token is refreshed early, and a replay can outlive its token too.
    modes = [("sync", 3), ("sync", 3), ("httpx", 4), ("aiohttp", 4)]
    workers = [subprocess.Popen(
        [sys.executable, str(script), mode, store, x.token_url, x.api_url, DEFAULT_CLIENT_ID,
         str(start_at), str(seconds), str(width)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for mode, width in modes]
    reports = {}
    for (mode, _), worker in zip(modes, workers):
        out, err = worker.communicate(timeout=seconds + 90)
        assert worker.returncode == 0, err[-3000:]
        reports.setdefault(mode, []).append(json.loads(out.strip().splitlines()[-1]))
    everyone = [r for rs in reports.values() for r in rs]
    stats = x.stats
    result = {
        "requests": {mode: sum(r["requests"] for r in rs) for mode, rs in reports.items()},
        "requests_per_process": [r["requests"] for r in everyone],
        "failed": sum(r["failed"] for r in everyone),
        "errors": [e for r in everyone for e in r["errors"]][:5],
        "refreshes": stats.refreshes,
        "reused_refresh_tokens": stats.reused_refresh_tokens,
        "access_ttl": x.access_ttl,
        # from the first request's start to the last one's end, in any process
        "active_seconds": (max((r["last"] for r in everyone if r["last"]), default=0.0)
                           - min((r["first"] for r in everyone if r["first"]), default=0.0)),
    }
    print(result)
    return result


def test_sync_and_async_processes_share_one_json_store_with_1_second_tokens(
        x_emulator_factory, tmp_path, workload):
    x = x_emulator_factory(access_ttl=1.0)
    workload.assert_coordinated(run_fleet(x, str(tmp_path / "tokens.json"), tmp_path))


def test_sync_and_async_processes_share_one_redis_store_with_1_second_tokens(
        x_emulator_factory, redis_server, tmp_path, workload):
    pytest.importorskip("redis")
    x = x_emulator_factory(access_ttl=1.0)
    workload.assert_coordinated(run_fleet(x, redis_server.url, tmp_path))
