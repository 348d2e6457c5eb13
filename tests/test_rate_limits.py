"""X's rate limits, over real HTTP to the emulator (a FakeClock shared with it: no sleeping).

- The token endpoint: a 429 or 503 that says when to try again (``Retry-After`` in seconds
  or as an HTTP date, ``x-rate-limit-reset``) is retried no sooner; a wait past the grant's
  deadline fails at once with a ``RefreshError`` that says when, and spends nothing.
- The API, opt-in (``wait_on_rate_limit``): a 429 whose window resets within
  ``max_rate_limit_wait`` is waited out and replayed once, on all four front ends; the
  async ones await the wait, the event loop running on.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from doc_blocks import doc_block
from test_cli import CLI
from test_readme_story import Emulator, _environment, bash, login_with_curl

from refresher import (
    ConfigurationError,
    JSONTokenStore,
    MemoryTokenStore,
    RefreshError,
    RefreshPolicy,
)
from refresher.testing import FakeClock, XEmulator
from refresher.testing.net import free_port

FRONTS = ["requests", "httpx", "httpx-async", "aiohttp"]
WINDOW = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def x(x_emulator_factory: Callable[..., XEmulator], clock: FakeClock) -> XEmulator:
    return x_emulator_factory(clock=clock, enforce_rate_limits=True, rate_limit=2,
                              rate_window=WINDOW)


# -- the token endpoint --------------------------------------------------------------------

def _session(make_session: Callable[..., Any], x: XEmulator, clock: FakeClock,
             **policy: Any) -> Any:
    return make_session(emulator=x, clock=clock, policy=RefreshPolicy(
        token_deadline=15.0, background_refresh=False, **policy))


@pytest.mark.parametrize("headers", [
    {"Retry-After": "4"},
    {"Retry-After": email.utils.formatdate(1_800_000_004, usegmt=True)},  # an HTTP date
    {"x-rate-limit-reset": "1800000004", "x-rate-limit-remaining": "0"},
], ids=["seconds", "http-date", "x-rate-limit-reset"])
@pytest.mark.parametrize("status", [429, 503])
def test_the_token_endpoint_is_retried_no_sooner_than_it_says(make_session, x, clock, status,
                                                               headers) -> None:
    session = _session(make_session, x, clock)
    old = session.token
    started = clock.monotonic()
    x.fail_token_endpoint(times=1, status=status, headers=headers)

    new = session.refresh()

    assert clock.monotonic() - started >= 4.0  # not the 0.25 s backoff
    assert new["access_token"] != old["access_token"]
    assert (x.stats.token_requests, x.stats.refreshes) == (2, 1)


def test_a_503_with_a_window_not_spent_is_retried_after_the_usual_backoff(make_session, x,
                                                                          clock) -> None:
    session = _session(make_session, x, clock)
    started = clock.monotonic()
    x.fail_token_endpoint(times=1, status=503, headers={
        "x-rate-limit-reset": "1800000600", "x-rate-limit-remaining": "40"})
    session.refresh()
    assert clock.monotonic() - started == 0.25  # the backoff: the window's reset is not asked
    assert x.stats.refreshes == 1


def test_a_wait_past_the_deadline_fails_at_once_and_spends_nothing(make_session, x,
                                                                   clock) -> None:
    session = _session(make_session, x, clock)
    old = session.token
    started = clock.monotonic()
    x.fail_token_endpoint(times=1, status=429, headers={"Retry-After": "60"})

    with pytest.raises(RefreshError) as raised:
        session.refresh()

    assert clock.monotonic() == started  # no wait at all
    assert raised.value.retry_after == 60.0
    assert "Try again after 08:01:00 UTC" in str(raised.value)  # FakeClock's epoch + 60 s
    assert "the refresh token is still good" in str(raised.value)
    assert x.stats.token_requests == 1
    assert x.refresh_token_state(old["refresh_token"]) == "live"
    assert session.token == old  # the pair is intact
    clock.advance(60)
    assert session.refresh()["access_token"] != old["access_token"]  # the same pair, spent now
    assert x.stats.reused_refresh_tokens == 0


def test_a_wait_that_fits_but_no_retry_left_says_when(make_session, x, clock) -> None:
    session = _session(make_session, x, clock, token_retries=0)
    x.fail_token_endpoint(times=1, status=503, headers={"Retry-After": "5"})
    with pytest.raises(RefreshError) as raised:
        session.refresh()
    assert raised.value.retry_after == 5.0 and "try again after 08:00:05 UTC" in str(raised.value)


def test_an_early_refresh_x_asked_to_pause_is_not_tried_sooner(make_session, x, clock) -> None:
    session = _session(make_session, x, clock)
    clock.advance(7200 - 50)  # inside the leeway, 50 s left
    x.fail_token_endpoint(times=1, status=429, headers={"Retry-After": "30"})
    me = x.api_url + "/2/users/me"
    assert session.get(me, timeout=10).status_code == 200  # the current token, still good
    clock.advance(10)
    assert session.get(me, timeout=10).status_code == 200
    assert x.stats.token_requests == 1  # not retried in 5 s, as early refreshes otherwise are
    clock.advance(21)
    session.get(me, timeout=10)
    assert x.stats.refreshes == 1


# -- the API: waits on a 429, opt in ---------------------------------------------------------

def _front(kind: str, make_wired: Any, x: XEmulator, clock: FakeClock, **kw: Any) -> Any:
    if kind == "requests":
        from refresher import RefreshingSession as cls
    elif kind.startswith("httpx"):
        pytest.importorskip("httpx")
        from refresher.httpx import RefreshingAuth as cls  # type: ignore[assignment]
    else:
        pytest.importorskip("aiohttp")
        from refresher.aiohttp import RefreshingMiddleware as cls  # type: ignore[assignment]
    return make_wired(cls, emulator=x, store=MemoryTokenStore(), clock=clock, **kw)


def _get(kind: str, front: Any, url: str) -> int:
    if kind == "requests":
        return int(front.get(url, timeout=10).status_code)
    if kind == "httpx":
        import httpx

        with httpx.Client(auth=front, timeout=10) as client:
            return client.get(url).status_code
    return asyncio.run(_get_async(kind, front, url))


async def _get_async(kind: str, front: Any, url: str) -> int:
    if kind == "httpx-async":
        import httpx

        async with httpx.AsyncClient(auth=front, timeout=10) as client:
            return (await client.get(url)).status_code
    import aiohttp

    async with aiohttp.ClientSession(middlewares=[front]) as session:
        async with session.get(url) as response:
            await response.read()
            return response.status


def _post_generator(kind: str, front: Any, url: str) -> int:
    """POST a body that can be sent once only (a generator)."""
    def chunks() -> Iterator[bytes]:
        yield b"once"

    if kind == "requests":
        return int(front.post(url, data=chunks(), timeout=10).status_code)
    if kind == "httpx":
        import httpx

        with httpx.Client(auth=front, timeout=10) as client:
            return client.post(url, content=chunks()).status_code

    async def achunks() -> Any:
        yield b"once"

    async def post() -> int:
        if kind == "httpx-async":
            import httpx

            async with httpx.AsyncClient(auth=front, timeout=10) as client:
                return (await client.post(url, content=achunks())).status_code
        import aiohttp

        async with aiohttp.ClientSession(middlewares=[front]) as session:
            async with session.post(url, data=achunks()) as response:
                await response.read()
                return response.status

    return asyncio.run(post())


def _use_up_the_window(kind: str, front: Any, url: str) -> None:
    assert [_get(kind, front, url) for _ in range(2)] == [200, 200]


@pytest.mark.parametrize("kind", FRONTS)
def test_a_waited_429_is_replayed_once(kind, make_wired, x, clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="refresher.flow")
    front = _front(kind, make_wired, x, clock, wait_on_rate_limit=True)
    me = x.api_url + "/2/users/me"
    _use_up_the_window(kind, front, me)
    started = clock.time()

    assert _get(kind, front, me) == 200

    assert (x.stats.rate_limited, x.stats.api_requests) == (1, 4)  # one 429, one replay
    assert clock.time() - started >= WINDOW  # until the window's reset (and a margin)
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 1 and f"waiting {WINDOW + 1:.1f} s" in waits[0]
    assert x.stats.refreshes == 0


@pytest.mark.parametrize("kind", FRONTS)
def test_a_429_is_returned_as_it_comes_by_default(kind, make_wired, x, clock) -> None:
    front = _front(kind, make_wired, x, clock)
    me = x.api_url + "/2/users/me"
    _use_up_the_window(kind, front, me)
    started = clock.time()
    assert _get(kind, front, me) == 429
    assert x.stats.api_requests == 3 and clock.time() == started


@pytest.mark.parametrize("kind", FRONTS)
def test_a_429_whose_reset_is_too_far_is_returned_at_once(kind, make_wired, x, clock) -> None:
    front = _front(kind, make_wired, x, clock, wait_on_rate_limit=True,
                   max_rate_limit_wait=WINDOW / 2)
    me = x.api_url + "/2/users/me"
    _use_up_the_window(kind, front, me)
    started = clock.time()
    assert _get(kind, front, me) == 429
    assert x.stats.api_requests == 3 and clock.time() == started


@pytest.mark.parametrize("kind", FRONTS)
def test_a_body_that_cannot_be_replayed_is_not_resent(kind, make_wired, x, clock) -> None:
    front = _front(kind, make_wired, x, clock, wait_on_rate_limit=True)
    echo = x.api_url + "/2/emulator/echo"
    assert [_post_generator(kind, front, echo) for _ in range(2)] == [200, 200]
    started = clock.time()
    assert _post_generator(kind, front, echo) == 429
    assert x.stats.api_requests == 3 and clock.time() == started


class LoopClock(FakeClock):
    """A FakeClock that fails a blocking sleep, and whose ``asleep`` lets the loop run."""

    def sleep(self, seconds: float) -> None:
        raise AssertionError("a blocking sleep on the event loop")

    async def asleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", ["httpx-async", "aiohttp"])
def test_the_async_front_ends_wait_without_blocking_the_loop(kind, make_wired,
                                                             x_emulator_factory) -> None:
    clock = LoopClock()
    x = x_emulator_factory(clock=clock, enforce_rate_limits=True, rate_limit=1,
                           rate_window=WINDOW)
    front = _front(kind, make_wired, x, clock, wait_on_rate_limit=True)
    me = x.api_url + "/2/users/me"
    ticks: list[float] = []

    async def ticker(done: asyncio.Event) -> None:
        while not done.is_set():
            ticks.append(clock.time())
            await asyncio.sleep(0)

    async def both() -> int:
        done = asyncio.Event()
        ticking = asyncio.create_task(ticker(done))
        try:
            assert await _get_async(kind, front, me) == 200
            return await _get_async(kind, front, me)
        finally:
            done.set()
            await ticking

    assert asyncio.run(both()) == 200
    assert x.stats.rate_limited == 1
    assert any(tick >= 1_800_000_000 + WINDOW for tick in ticks)  # ticked after the wait too


# -- the arguments -------------------------------------------------------------------------

def test_the_arguments_override_the_policy(make_session, x) -> None:
    policy = RefreshPolicy(wait_on_rate_limit=True, max_rate_limit_wait=10.0)
    assert policy.longest_rate_limit_wait == 10.0
    assert RefreshPolicy().longest_rate_limit_wait is None  # off by default
    session = make_session(emulator=x, policy=policy, max_rate_limit_wait=60.0)
    assert (session.policy.wait_on_rate_limit, session.policy.max_rate_limit_wait) == (True, 60.0)
    off = make_session(emulator=x, policy=policy, wait_on_rate_limit=False)
    assert off.policy.longest_rate_limit_wait is None


@pytest.mark.parametrize("changes", [{"wait_on_rate_limit": "yes"},
                                     {"max_rate_limit_wait": -1}])
def test_the_policy_refuses_what_it_cannot_use(changes) -> None:
    with pytest.raises(ConfigurationError):
        RefreshPolicy(**changes)


# -- the how-to (docs/howto/rate-limits.rst), as printed -----------------------------------------


@pytest.mark.integration
def test_the_howtos_emulator_walk_through(tmp_path: Path) -> None:
    """``refresher emulator --rate-limits 2/5``, its exports and login (finished by curl, as
    its banner says), then the page's script: three names, one 429 waited out."""
    block = doc_block("docs/howto/rate-limits.rst", "2 calls per\n5 seconds:")
    assert block == "refresher emulator --rate-limits 2/5\n"
    env = _environment(tmp_path)
    callback = f"http://127.0.0.1:{free_port()}/callback"  # not 8765: others log in there
    running = Emulator(env, *block.split()[2:], "--redirect-uri", callback)
    try:
        assert "Rate limits enforced: 2 calls per 5 s" in running.banner
        login = login_with_curl(env, *running.printed)
        assert login.returncode == 0, login.stderr
        script = tmp_path / "patient.py"
        script.write_text(doc_block("docs/howto/rate-limits.rst",
                                    "plus a second, then goes out once more:"))
        exports = [line for line in running.printed if line.startswith("export ")]
        done = bash(env, *exports, f"python {script}", timeout=90)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["emulated_user"] * 3
        assert running.stats()["rate_limited"] >= 1
    finally:
        assert "Traceback" not in running.stop()


@pytest.mark.integration
def test_the_howtos_token_endpoint_block(x_emulator: XEmulator, tmp_path: Path) -> None:
    """A 429 with ``Retry-After: 60`` from the token endpoint: the page's block says how long,
    and the pair it holds is the live one."""
    cli = CLI(tmp_path)
    cli.login(x_emulator, "--account", "alice")
    before = JSONTokenStore(cli.store).load("alice")
    x_emulator.fail_token_endpoint(times=1, status=429, headers={"Retry-After": "60"})
    script = tmp_path / "paused.py"
    script.write_text(doc_block("docs/howto/rate-limits.rst", "and the stored pair is intact:"))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=dict(cli.env, REFRESHER_STORE=str(cli.store)), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "X asks for 60 s of quiet; the stored pair is intact\n"
    assert JSONTokenStore(cli.store).load("alice") == before
    assert x_emulator.refresh_token_state(before["refresh_token"]) == "live"
