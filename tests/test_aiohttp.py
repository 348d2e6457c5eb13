"""refresher.aiohttp.RefreshingMiddleware: the adapter's rule as an aiohttp client middleware,
against the emulator over loopback; tweepy's AsyncClient on such a session; the recipes of
docs/howto/async.rst as printed."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from doc_blocks import doc_block

from refresher import InsecureTransport, JSONTokenStore, MemoryTokenStore
from refresher.testing import DEFAULT_CLIENT_ID

aiohttp = pytest.importorskip("aiohttp")
from yarl import URL  # noqa: E402

from refresher.aiohttp import RefreshingMiddleware  # noqa: E402


@pytest.fixture
def make_middleware(make_wired):
    """``make_middleware(store=None, token="fresh", emulator=None, **kw)``: a
    RefreshingMiddleware wired to the emulator (conftest's ``make_wired``)."""
    return functools.partial(make_wired, RefreshingMiddleware)


@dataclass
class Answer:
    status: int
    body: bytes
    sent_headers: dict[str, str]
    history: list[int] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(session, method, url, **kw) -> Answer:
    async with session.request(method, url, **kw) as response:
        return Answer(response.status, await response.read(),
                      dict(response.request_info.headers), [h.status for h in response.history])


def run(middlewares, call):
    """``await call(session)`` on an aiohttp session with ``middlewares``, in a new loop."""
    async def go():
        async with aiohttp.ClientSession(middlewares=middlewares) as session:
            return await call(session)

    return asyncio.run(go())


def send(middleware, method, url, **kw) -> Answer:
    return run([middleware], lambda session: fetch(session, method, url, **kw))


def _expired(x):
    token = x.issue_token()
    token["expires_at"] = time.time() - 1
    x.expire_access_token(token["access_token"])
    return token


def _old_token(x):
    token = x.issue_token()
    token["expires_at"] = time.time() + 600
    return token


# -- the bearer, refreshing, no storm -------------------------------------------------------

def test_the_bearer_replaces_the_callers_and_expiry_refreshes_before_sending(x_emulator,
                                                                             make_middleware):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + 20  # inside the 60 s leeway: refreshed first
    middleware = make_middleware(token=token)
    answer = send(middleware, "GET", x_emulator.api_url + "/2/users/me",
                  headers={"Authorization": "Bearer unused"})
    assert answer.status == 200
    assert answer.sent_headers["Authorization"] == f"Bearer {middleware.token['access_token']}"
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 0


def test_401_refreshes_once_and_replays(x_emulator, make_middleware):
    store = MemoryTokenStore()
    middleware = make_middleware(store=store)
    old = middleware.token["access_token"]
    x_emulator.expire_access_token(old)
    assert send(middleware, "GET", x_emulator.api_url + "/2/users/me").status == 200
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 1
    assert store.load("default")["access_token"] == middleware.token["access_token"] != old


@pytest.mark.parametrize("path, token, status, refreshes", [
    ("/2/emulator/unauthorized", "fresh", 401, 1),   # one refresh, then the brake
    ("/2/emulator/forbidden/plain", "old", 403, 1),  # an old token gets one chance
    ("/2/emulator/forbidden/plain", "fresh", 403, 0),  # a young token's 403: not about it
    ("/2/emulator/forbidden/unsupported-authentication", "old", 403, 0),
])
def test_six_calls_to_an_always_refusing_endpoint_cause_no_storm(x_emulator, make_middleware,
                                                                 path, token, status,
                                                                 refreshes):
    middleware = make_middleware(token=_old_token(x_emulator) if token == "old" else "fresh")

    async def six(session):
        return [await fetch(session, "GET", x_emulator.api_url + path) for _ in range(6)]

    answers = run([middleware], six)
    assert [a.status for a in answers] == [status] * 6
    assert all(a.json()["title"] in ("Unauthorized", "Forbidden", "Unsupported Authentication")
               for a in answers)  # the body is still there to read
    assert x_emulator.stats.refreshes == refreshes


def test_json_and_seekable_file_bodies_are_replayed_whole(x_emulator, make_middleware):
    middleware = make_middleware()
    x_emulator.expire_access_token(middleware.token["access_token"])
    payload = {"text": "héllo", "list": list(range(100))}
    answer = send(middleware, "POST", x_emulator.api_url + "/2/emulator/echo", json=payload)
    assert answer.status == 200 and json.loads(answer.json()["body"]) == payload
    x_emulator.expire_access_token(middleware.token["access_token"])
    data = bytes(range(256)) * 1024
    answer = send(middleware, "POST", x_emulator.api_url + "/2/emulator/echo",
                  data=io.BytesIO(data))
    assert answer.json()["body_length"] == len(data)
    assert x_emulator.stats.refreshes == 2 and x_emulator.stats.unauthorized == 2


def test_an_async_generator_body_is_not_resent_but_the_store_has_the_fresh_token(
        x_emulator, make_middleware):
    store = MemoryTokenStore()
    middleware = make_middleware(store=store)
    old = middleware.token["access_token"]
    x_emulator.expire_access_token(old)

    async def chunks():
        yield b"part one, "
        yield b"part two"

    answer = send(middleware, "POST", x_emulator.api_url + "/2/emulator/echo", data=chunks())
    assert answer.status == 401
    assert x_emulator.stats.refreshes == 1
    assert store.load("default")["access_token"] != old
    assert send(middleware, "GET", x_emulator.api_url + "/2/users/me").status == 200


# -- the token stays with its host ------------------------------------------------------------

def test_a_redirect_to_another_host_carries_no_token_and_its_401_refreshes_nothing(
        x_emulator_factory, make_middleware):
    home = x_emulator_factory()
    elsewhere = x_emulator_factory()
    other = elsewhere.url.replace("127.0.0.1", "localhost") + "/2/users/me"
    middleware = make_middleware(emulator=home)
    answer = send(middleware, "GET", home.api_url + "/2/emulator/redirect", params={"to": other})
    assert answer.status == 401 and answer.history == [302]
    assert "Authorization" not in answer.sent_headers
    assert home.stats.refreshes == 0 and elsewhere.stats.unauthorized == 1


def test_no_hop_after_leaving_the_origin_gets_the_token_not_even_one_back(make_middleware):
    """127.0.0.1 -> localhost -> localhost (same origin as the hop before) -> 127.0.0.1."""
    from aiohttp import web

    seen: dict[str, str | None] = {}

    async def serve():
        async def handle(request):
            seen[request.path] = request.headers.get("Authorization")
            port = request.url.port
            hops = {"/start": f"http://localhost:{port}/away",
                    "/away": f"http://localhost:{port}/still-away",
                    "/still-away": f"http://127.0.0.1:{port}/back"}
            if request.path in hops:
                raise web.HTTPFound(hops[request.path])
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession(middlewares=[middleware]) as session:
                first = await fetch(session, "GET", f"http://127.0.0.1:{port}/start")
                again = await fetch(session, "GET", f"http://127.0.0.1:{port}/back")
            return first, again
        finally:
            await runner.cleanup()

    middleware = make_middleware()
    first, again = asyncio.run(serve())
    assert first.status == 200 and first.history == [302, 302, 302]
    bearer = f"Bearer {middleware.token['access_token']}"
    assert seen["/start"] == bearer
    assert seen["/away"] is None and seen["/still-away"] is None
    assert "/back" in seen and again.sent_headers["Authorization"] == bearer  # a new call: yes


def test_plain_http_to_another_machine_is_refused(x_emulator, make_middleware, monkeypatch):
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    middleware = make_middleware()
    with pytest.raises(InsecureTransport):
        send(middleware, "GET", "http://example.invalid/2/users/me")


# -- many tasks, one refresh, a loop that never stalls ------------------------------------------

def test_200_tasks_on_an_expired_token_cause_one_refresh(x_emulator, make_middleware):
    middleware = make_middleware(token=_expired(x_emulator))

    async def many(session):
        return await asyncio.gather(*(fetch(session, "GET", x_emulator.api_url + "/2/users/me")
                                      for _ in range(200)))

    answers = run([middleware], many)
    assert [a.status for a in answers] == [200] * 200
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 0


def test_the_loop_keeps_ticking_while_a_refresh_waits_on_a_slow_token_endpoint(
        x_emulator_factory, make_middleware, heartbeat):
    x = x_emulator_factory(token_delay=2.0)
    middleware = make_middleware(emulator=x, token=_expired(x))

    async def main(session):
        async with heartbeat.running():
            return await asyncio.gather(*(fetch(session, "GET", x.api_url + "/2/users/me")
                                          for _ in range(20)))

    answers = run([middleware], main)
    assert [a.status for a in answers] == [200] * 20 and x.stats.refreshes == 1
    assert heartbeat.loop_ticks[-1] - heartbeat.loop_ticks[0] >= 2.0  # it beat all along
    # A loop held by the refresh misses 2 s of beats; a busy machine delays the control too.
    assert heartbeat.loop_stall() < 0.5, (heartbeat.largest_gap(heartbeat.loop_ticks),
                                          heartbeat.largest_gap(heartbeat.control_ticks))


# -- tweepy's AsyncClient --------------------------------------------------------------------

def _routed_to(x):
    """A middleware sending tweepy's https://api.twitter.com to emulator ``x``."""
    async def to_emulator(request, handler):
        if request.url.host == "api.twitter.com":
            request.url = URL(x.api_url + request.url.raw_path_qs, encoded=True)
        return await handler(request)

    return to_emulator


def test_tweepy_async_client_refreshes_through_the_middleware(x_emulator, make_middleware):
    tweepy_async = pytest.importorskip("tweepy.asynchronous")
    middleware = make_middleware()

    async def main(session):
        client = tweepy_async.AsyncClient(bearer_token="unused: the middleware sends the token")
        client.session = session
        first = await client.get_me(user_auth=False)
        x_emulator.expire_access_token(middleware.token["access_token"])
        second = await client.get_me(user_auth=False)  # no Unauthorized
        return first.data.username, second.data.username

    assert run([_routed_to(x_emulator), middleware], main) == ("emulated_user",) * 2
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 1


def test_tweepy_async_client_gets_forbidden_for_a_duplicate_without_a_refresh(
        x_emulator, make_middleware):
    tweepy = pytest.importorskip("tweepy")
    tweepy_async = pytest.importorskip("tweepy.asynchronous")
    token = x_emulator.issue_token(scope="tweet.read tweet.write users.read offline.access")
    middleware = make_middleware(token=token)

    async def main(session):
        client = tweepy_async.AsyncClient(bearer_token="unused")
        client.session = session
        posted = await client.create_tweet(text="hello", user_auth=False)
        with pytest.raises(tweepy.Forbidden):
            await client.create_tweet(text="hello", user_auth=False)
        return posted.data["text"]

    assert run([_routed_to(x_emulator), middleware], main) == "hello"
    assert x_emulator.stats.refreshes == 0


# -- the docs' recipes, as printed (docs/howto/async.rst) ---------------------------------------


def logged_in(x, path, monkeypatch, account="alice"):
    """A store as `refresher login` leaves it (the token; client id and URLs beside it),
    found through REFRESHER_STORE alone; the token already refused by the emulator."""
    store = JSONTokenStore(path)
    token = x.issue_token()
    with store.lock(account):
        store.save(account, token)
    store.save_metadata(account, {"client_id": DEFAULT_CLIENT_ID, "confidential": False,
                                  "token_url": x.token_url, "api_url": x.api_url})
    x.expire_access_token(token["access_token"])
    for name in ("REFRESHER_ACCOUNT", "REFRESHER_CLIENT_ID", "REFRESHER_CLIENT_SECRET",
                 "REFRESHER_TOKEN_URL", "REFRESHER_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REFRESHER_STORE", str(path))
    return store


def test_tweepy_recipe_runs_as_printed(x_emulator, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tweepy.asynchronous")
    logged_in(x_emulator, tmp_path / "tokens.json", monkeypatch)
    namespace: dict[str, Any] = {"__name__": "__recipe__"}
    recipe = doc_block("docs/howto/async.rst", "(against X it changes nothing):")
    exec(compile(recipe, "tweepy_recipe.py", "exec"), namespace)
    namespace["refreshing"].close()
    assert capsys.readouterr().out == "@emulated_user\n"
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.reused_refresh_tokens == 0


def test_aiohttp_recipe_runs_as_printed(x_emulator, tmp_path, monkeypatch, capsys):
    logged_in(x_emulator, tmp_path / "tokens.json", monkeypatch)
    namespace: dict[str, Any] = {"__name__": "__recipe__"}
    recipe = doc_block("docs/howto/async.rst", "``Authorization`` header already there.")
    exec(compile(recipe, "aiohttp_recipe.py", "exec"), namespace)
    namespace["refreshing"].close()
    assert capsys.readouterr().out == "@emulated_user via aiohttp\n"
    stats = x_emulator.stats
    # X refused the stored token: one refresh, one replay, and the recipe never saw the 401
    assert stats.refreshes == 1 and stats.unauthorized == 1 and stats.api_requests == 2
    assert stats.reused_refresh_tokens == 0
