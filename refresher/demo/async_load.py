"""The workload's async worker: ``threads`` tasks on one event loop, through httpx and
:class:`refresher.httpx.RefreshingAuth`, so the contention benchmark can measure an async
process beside the sync ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..stores.base import TokenStore
    from .workload import WorkerReport, WorkloadSpec

__all__ = ["run_async_load"]


def run_async_load(spec: WorkloadSpec, seed: dict[str, Any] | None, store: TokenStore,
                   counters: Any, index: int, start_at: float, report: WorkerReport,
                   on_start: Callable[[], Any], on_update: Callable[[Any], Any]) -> None:
    """Run ``spec.threads`` tasks calling ``spec.path`` until ``start_at + spec.seconds``."""
    import httpx

    from ..httpx import RefreshingAuth

    auth = RefreshingAuth(
        spec.client_id, client_secret=spec.client_secret, store=store, account=spec.account,
        token=seed, token_url=spec.token_url, api_url=spec.api_url,
        on_token_update=on_update, on_refresh_start=on_start, lock_timeout=spec.lock_timeout,
    )
    url = spec.api_url.rstrip("/") + spec.path
    deadline = start_at + spec.seconds

    async def task(client: httpx.AsyncClient) -> None:
        first = True  # every task makes one request, even one a busy machine started late
        while True:
            began = time.time()
            if began >= deadline and not first:
                return
            first = False
            try:
                response = await client.get(url)
                ok = response.status_code == 200
                if not ok and len(report.errors) < 5:
                    report.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
            except Exception as exc:  # a failure to count, not to crash on
                ok = False
                if len(report.errors) < 5:
                    report.errors.append(f"{type(exc).__name__}: {exc}")
            report.requests += 1
            report.failed += 0 if ok else 1
            if spec.collect_latencies:
                report.latencies.append((began, time.time() - began))
            with counters.get_lock():
                counters[2 * index] += 1
                counters[2 * index + 1] += 0 if ok else 1
            if spec.pause > 0:
                await asyncio.sleep(spec.pause)

    async def main() -> None:
        while time.time() < start_at:
            await asyncio.sleep(0.001)
        async with httpx.AsyncClient(auth=auth, timeout=30) as client:
            await asyncio.gather(*(task(client) for _ in range(spec.threads)))

    try:
        asyncio.run(main())
    finally:
        report.refreshes = auth.coordinator.refreshes
        auth.close()
