"""Coroutine hooks (``async def on_token_update(token)``) with the httpx and aiohttp front
ends: awaited on the caller's loop, after the save, before the request goes on; what they
raise is logged; a refresh nobody waits for still runs them; the sync session refuses one.
Real HTTP to the emulator."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
from typing import Any

import pytest
from doc_blocks import doc_block

from refresher import (
    ConfigurationError,
    JSONTokenStore,
    MemoryTokenStore,
    RefreshError,
    RefreshingSession,
    RefreshPolicy,
)
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator

ASYNC_FRONTS = ["httpx-async", "aiohttp"]


def _front(kind: str, x: XEmulator, store: MemoryTokenStore, token: Any, **kw: Any) -> Any:
    if kind.startswith("httpx"):
        pytest.importorskip("httpx")
        from refresher.httpx import RefreshingAuth as cls
    else:
        pytest.importorskip("aiohttp")
        from refresher.aiohttp import RefreshingMiddleware as cls  # type: ignore[assignment]
    return cls(DEFAULT_CLIENT_ID, store=store, account="alice", token=token,
               token_url=x.token_url, api_url=x.api_url, **kw)


async def _get(kind: str, front: Any, url: str) -> int:
    if kind == "httpx-async":
        import httpx

        async with httpx.AsyncClient(auth=front, timeout=10) as client:
            return (await client.get(url)).status_code
    import aiohttp

    async with aiohttp.ClientSession(middlewares=[front]) as session:
        async with session.get(url) as response:
            await response.read()
            return response.status


def _expired(x: XEmulator) -> dict[str, Any]:
    return dict(x.issue_token(), expires_at=time.time() - 10)


@pytest.mark.parametrize("kind", ASYNC_FRONTS)
def test_an_async_on_token_update_is_awaited_on_the_callers_loop_after_the_save(
        kind, x_emulator) -> None:
    x, store, seen = x_emulator, MemoryTokenStore(), []

    async def on_token_update(token: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # really a coroutine, suspended once
        seen.append((token["access_token"], store.load("alice")["access_token"],
                     asyncio.get_running_loop()))

    async def main() -> None:
        front = _front(kind, x, store, _expired(x), on_token_update=on_token_update)
        assert await _get(kind, front, x.api_url + "/2/users/me") == 200
        # awaited before the request went on, on this loop, with the pair already saved
        assert seen == [(front.token["access_token"], front.token["access_token"],
                         asyncio.get_running_loop())]
        front.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert x.stats.refreshes == 1


@pytest.mark.parametrize("kind", ASYNC_FRONTS)
def test_async_start_and_error_hooks_are_awaited_and_what_they_raise_is_logged(
        kind, x_emulator, caplog) -> None:
    x, store, calls = x_emulator, MemoryTokenStore(), []

    async def on_refresh_start() -> None:
        calls.append("start")
        raise RuntimeError("metrics push failed")

    async def on_refresh_error(exc: BaseException) -> None:
        calls.append(type(exc).__name__)

    async def main() -> None:
        front = _front(kind, x, store, _expired(x), on_refresh_start=on_refresh_start,
                       on_refresh_error=on_refresh_error,
                       policy=RefreshPolicy(token_retries=0))
        x.fail_token_endpoint(times=5, status=503)
        with pytest.raises(RefreshError):
            await _get(kind, front, x.api_url + "/2/users/me")
        assert calls == ["start", "RefreshError"]  # both awaited before the error came back
        front.close()

    with caplog.at_level(logging.ERROR, logger="refresher.hooks"):
        asyncio.run(main())
    assert any("on_refresh_start hook raised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ASYNC_FRONTS)
def test_a_background_refresh_runs_the_async_hook_on_the_loop_that_used_the_front_end(
        kind, x_emulator) -> None:
    x, store, seen = x_emulator, MemoryTokenStore(), []
    # 100-second tokens with 8 s left: inside the leeway, outside its wait margin: the
    # request goes out at once, and a background thread refreshes.
    seed = dict(x.issue_token(), expires_in=100, expires_at=time.time() + 8)

    async def on_token_update(token: dict[str, Any]) -> None:
        seen.append(asyncio.get_running_loop())

    async def main() -> None:
        front = _front(kind, x, store, seed, on_token_update=on_token_update)
        loop = asyncio.get_running_loop()
        assert await _get(kind, front, x.api_url + "/2/users/me") == 200
        for _ in range(2000):  # the background thread hands the hook to this loop
            if seen:
                break
            await asyncio.sleep(0.005)
        assert seen == [loop]
        front.close()

    asyncio.run(main())
    assert x.stats.refreshes == 1


def test_an_async_hook_with_the_sync_httpx_client_runs_to_completion(x_emulator) -> None:
    httpx = pytest.importorskip("httpx")
    x, store, seen = x_emulator, MemoryTokenStore(), []

    async def on_token_update(token: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(token["access_token"])

    front = _front("httpx", x, store, _expired(x), on_token_update=on_token_update)
    with httpx.Client(auth=front, timeout=10) as client:
        assert client.get(x.api_url + "/2/users/me").status_code == 200
    assert seen == [front.token["access_token"]]
    front.close()


@pytest.mark.parametrize("hook", ["on_token_update", "on_refresh_error", "on_refresh_start"])
def test_the_sync_session_refuses_a_coroutine_function_hook(hook, x_emulator) -> None:
    async def coroutine_hook(*args: Any) -> None:
        pass

    with pytest.raises(ConfigurationError, match=f"{hook} is a coroutine function"):
        RefreshingSession(DEFAULT_CLIENT_ID, store=MemoryTokenStore(),
                          token=x_emulator.issue_token(), token_url=x_emulator.token_url,
                          **{hook: coroutine_hook})


def test_the_docs_async_hook_recipe_as_printed(x_emulator, tmp_path, monkeypatch,
                                               capsys) -> None:
    pytest.importorskip("httpx")
    recipe = doc_block("docs/howto/async.rst", "never raised into the request:")
    store = JSONTokenStore(tmp_path / "tokens.json")  # as `refresher login` leaves it
    store.save("alice", _expired(x_emulator))
    store.save_metadata("alice", {"client_id": DEFAULT_CLIENT_ID, "confidential": False,
                                  "token_url": x_emulator.token_url,
                                  "api_url": x_emulator.api_url})
    for name in ("REFRESHER_ACCOUNT", "REFRESHER_CLIENT_ID", "REFRESHER_CLIENT_SECRET",
                 "REFRESHER_TOKEN_URL", "REFRESHER_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REFRESHER_STORE", str(tmp_path / "tokens.json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(recipe, "hook_recipe.py", "exec"), {"__name__": "__recipe__"})
        gc.collect()
    assert capsys.readouterr().out == "1 new pair synced\n"
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert x_emulator.stats.refreshes == 1
