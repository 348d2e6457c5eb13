"""refresher.httpx.RefreshingAuth: the adapter's rule for httpx.Client and httpx.AsyncClient,
against the emulator over loopback; and the async guarantees (one refresh for many tasks,
a loop that never stalls behind the token endpoint)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import threading
import time

import pytest
from doc_blocks import doc_block

from refresher import InsecureTransport, MemoryTokenStore
from refresher.testing import DEFAULT_CLIENT_ID

httpx = pytest.importorskip("httpx")
from refresher.httpx import RefreshingAuth  # noqa: E402

KINDS = ["sync", "async"]


@pytest.fixture
def make_auth(make_wired):
    """``make_auth(store=None, token="fresh", emulator=None, **kw)``: a RefreshingAuth wired to the
    emulator (conftest's ``make_wired``)."""
    return functools.partial(make_wired, RefreshingAuth)


def send(kind, auth, method, url, **kw):
    """One request through an httpx.Client (``kind`` "sync") or an httpx.AsyncClient."""
    if kind == "sync":
        with httpx.Client(auth=auth) as client:
            return client.request(method, url, **kw)

    async def go():
        async with httpx.AsyncClient(auth=auth) as client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())


def _expired(x):
    """A token that the client and the emulator both know has expired."""
    token = x.issue_token()
    token["expires_at"] = time.time() - 1
    x.expire_access_token(token["access_token"])
    return token


def _old_token(x):
    """A valid token that the client believes is in the second half of its life."""
    token = x.issue_token()
    token["expires_at"] = time.time() + 600
    return token


# -- the bearer, and refreshing before sending -------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_request_carries_the_current_bearer(kind, x_emulator, make_auth):
    auth = make_auth()
    response = send(kind, auth, "GET", x_emulator.api_url + "/2/users/me",
                    headers={"Authorization": "Bearer someone-elses"})
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == f"Bearer {auth.token['access_token']}"
    assert x_emulator.stats.refreshes == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_expiring_within_the_leeway_is_refreshed_before_sending(kind, x_emulator,
                                                                        make_auth):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + 20  # 20 s left, leeway 60 s: waits for the refresh
    auth = make_auth(token=token)
    response = send(kind, auth, "GET", x_emulator.api_url + "/2/users/me")
    assert response.status_code == 200
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.unauthorized == 0  # refreshed first, not after a 401
    assert response.request.headers["Authorization"] != f"Bearer {token['access_token']}"


# -- 401/403: one refresh, one replay, no storm ------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_401_refreshes_once_and_replays(kind, x_emulator, make_auth):
    store = MemoryTokenStore()
    auth = make_auth(store=store)
    old = auth.token["access_token"]
    x_emulator.expire_access_token(old)  # the client still thinks it has two hours
    response = send(kind, auth, "GET", x_emulator.api_url + "/2/users/me")
    assert response.status_code == 200
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 1
    assert auth.token["access_token"] != old
    assert store.load("default")["access_token"] == auth.token["access_token"]


@pytest.mark.parametrize("kind", KINDS)
def test_six_calls_to_an_always_401_endpoint_cost_one_refresh(kind, x_emulator, make_auth):
    auth = make_auth()
    for _ in range(6):
        response = send(kind, auth, "GET", x_emulator.api_url + "/2/emulator/unauthorized")
        assert response.status_code == 401
    assert x_emulator.stats.refreshes == 1  # then the brake: not about the token
    assert send(kind, auth, "GET", x_emulator.api_url + "/2/users/me").status_code == 200


@pytest.mark.parametrize("kind", KINDS)
def test_six_calls_to_an_always_403_endpoint_cost_at_most_one_refresh(kind, x_emulator,
                                                                      make_auth):
    auth = make_auth(token=_old_token(x_emulator))
    for _ in range(6):
        response = send(kind, auth, "GET", x_emulator.api_url + "/2/emulator/forbidden/plain")
        assert response.status_code == 403
        assert response.json()["title"] == "Forbidden"  # the body is still there to read
    assert x_emulator.stats.refreshes == 1  # the old token got one chance


@pytest.mark.parametrize("kind", KINDS)
def test_403_problems_not_about_the_token_and_young_tokens_refresh_nothing(kind, x_emulator,
                                                                           make_auth):
    old = make_auth(token=_old_token(x_emulator))
    for _ in range(3):
        response = send(kind, old, "GET",
                        x_emulator.api_url + "/2/emulator/forbidden/client-forbidden")
        assert response.status_code == 403
    young = make_auth()
    assert send(kind, young, "GET", x_emulator.api_url + "/2/emulator/forbidden/plain"
                ).status_code == 403
    assert x_emulator.stats.refreshes == 0


# -- what a replay sends --------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_json_and_form_bodies_are_replayed_whole(kind, x_emulator, make_auth):
    auth = make_auth()
    x_emulator.expire_access_token(auth.token["access_token"])
    payload = {"text": "héllo", "list": list(range(100))}
    response = send(kind, auth, "POST", x_emulator.api_url + "/2/emulator/echo", json=payload)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["body"]) == payload
    x_emulator.expire_access_token(auth.token["access_token"])
    response = send(kind, auth, "PUT", x_emulator.api_url + "/2/emulator/echo?q=1",
                    data={"a": "1", "b": "two words"})
    assert response.json()["body"] == "a=1&b=two+words"
    assert x_emulator.stats.refreshes == 2 and x_emulator.stats.unauthorized == 2


@pytest.mark.parametrize("kind", KINDS)
def test_multipart_upload_is_replayed_whole(kind, x_emulator, make_auth):
    auth = make_auth()
    x_emulator.expire_access_token(auth.token["access_token"])
    media = b"\x89PNG" * 5000
    response = send(kind, auth, "POST", x_emulator.api_url + "/2/emulator/echo",
                    files={"media": ("a.png", io.BytesIO(media))})
    body = response.json()
    assert response.status_code == 200
    assert body["content_type"].startswith("multipart/form-data")
    assert body["body_length"] > len(media)
    assert x_emulator.stats.refreshes == 1


def test_a_generator_body_is_not_resent_but_the_store_has_the_fresh_token(x_emulator,
                                                                           make_auth):
    store = MemoryTokenStore()
    auth = make_auth(store=store)
    old = auth.token["access_token"]
    x_emulator.expire_access_token(old)

    def chunks():
        yield b"part one, "
        yield b"part two"

    response = send("sync", auth, "POST", x_emulator.api_url + "/2/emulator/echo",
                    content=chunks())
    assert response.status_code == 401
    assert x_emulator.stats.refreshes == 1
    assert store.load("default")["access_token"] != old
    assert send("sync", auth, "GET", x_emulator.api_url + "/2/users/me").status_code == 200


def test_an_async_generator_body_is_not_resent(x_emulator, make_auth):
    auth = make_auth()
    x_emulator.expire_access_token(auth.token["access_token"])

    async def chunks():
        yield b"part one, "
        yield b"part two"

    response = send("async", auth, "POST", x_emulator.api_url + "/2/emulator/echo",
                    content=chunks())
    assert response.status_code == 401
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 1
    assert send("async", auth, "GET", x_emulator.api_url + "/2/users/me").status_code == 200


# -- the token stays with its host ------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_redirect_to_another_host_carries_no_token_and_its_401_refreshes_nothing(
        kind, x_emulator_factory, make_auth):
    home = x_emulator_factory()
    elsewhere = x_emulator_factory()  # another host: localhost instead of 127.0.0.1
    other = elsewhere.url.replace("127.0.0.1", "localhost") + "/2/users/me"
    auth = make_auth(emulator=home)
    response = send(kind, auth, "GET", home.api_url + "/2/emulator/redirect",
                    params={"to": other}, follow_redirects=True)
    assert response.status_code == 401  # the other host saw no token of ours
    assert response.history and response.history[0].status_code == 302
    assert "Authorization" not in response.request.headers
    assert home.stats.refreshes == 0
    assert elsewhere.stats.unauthorized == 1


@pytest.mark.parametrize("kind", KINDS)
def test_plain_http_to_another_machine_is_refused_before_anything_is_sent(kind, x_emulator,
                                                                          make_auth,
                                                                          monkeypatch):
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    auth = make_auth()
    with pytest.raises(InsecureTransport):
        send(kind, auth, "GET", "http://example.invalid/2/users/me")
    assert send(kind, auth, "GET", x_emulator.api_url + "/2/users/me").status_code == 200


def test_repr_shows_the_account_and_expiry_never_the_token(make_auth):
    auth = make_auth()
    shown = repr(auth)
    assert "RefreshingAuth account='default'" in shown and "expires in" in shown
    assert auth.token["access_token"] not in shown


def test_a_replay_401_brakes_only_a_token_still_fresh_when_the_answer_came(make_auth):
    auth = make_auth()
    token = auth.token
    endpoint = "GET http://127.0.0.1/2/users/me"
    stale = dict(token, expires_at=time.time() + 1)  # 1 s left: its age may explain the 401
    auth.replay_refused(stale, endpoint)
    assert auth.coordinator.may_cure(401, token["access_token"], endpoint)
    auth.replay_refused(token, endpoint)  # two hours left: the 401 is not about the token
    assert not auth.coordinator.may_cure(401, token["access_token"], endpoint)


@pytest.mark.parametrize("left, refreshed", [(7000, False), (20, True)])
def test_after_a_401_a_token_another_task_got_is_taken_only_while_fresh(x_emulator, make_auth,
                                                                        left, refreshed):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + left  # 20 s: inside the leeway, past half of it
    auth = make_auth(token=token)
    replay_with = asyncio.run(auth.tokens.refresh(replacing="the token that got the 401"))
    assert (replay_with["access_token"] != token["access_token"]) is refreshed
    assert x_emulator.stats.refreshes == int(refreshed)


# -- many tasks, one refresh, a loop that never stalls ------------------------------------------

def _counting_threads(monkeypatch):
    """Count the coordinator calls sent to worker threads (asyncio.to_thread)."""
    calls = []
    real = asyncio.to_thread

    async def to_thread(func, /, *args, **kwargs):
        calls.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    return calls


def test_200_tasks_on_an_expired_token_cause_one_refresh(x_emulator, make_auth, monkeypatch):
    auth = make_auth(token=_expired(x_emulator))
    threads = _counting_threads(monkeypatch)

    async def main():
        async with httpx.AsyncClient(auth=auth, limits=httpx.Limits(max_connections=20)) as c:
            return await asyncio.gather(*(c.get(x_emulator.api_url + "/2/users/me")
                                          for _ in range(200)))

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 200
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.unauthorized == 0
    assert threads == ["token_for_request"]  # the 199 queued behind it took its token


def test_tasks_refused_together_cause_one_refresh_even_when_x_grants_dead_tokens(x_emulator,
                                                                                 make_auth):
    auth = make_auth()
    x_emulator.expire_access_token(auth.token["access_token"])
    x_emulator.access_ttl = -1.0  # every access token granted from now on is born dead

    async def main():
        async with httpx.AsyncClient(auth=auth) as client:
            return await asyncio.gather(*(client.get(x_emulator.api_url + "/2/users/me")
                                          for _ in range(20)))

    answers = asyncio.run(main())
    assert {a.status_code for a in answers} == {401}  # one replay each, never a loop
    assert x_emulator.stats.refreshes == 1  # not one per task in turn


def test_a_fresh_token_is_sent_without_a_worker_thread(x_emulator, make_auth, monkeypatch):
    auth = make_auth()
    threads = _counting_threads(monkeypatch)

    async def main():
        async with httpx.AsyncClient(auth=auth) as client:
            for _ in range(50):
                assert (await client.get(x_emulator.api_url + "/2/users/me")).status_code == 200

    asyncio.run(main())
    assert threads == []


def test_the_loop_keeps_ticking_while_a_refresh_waits_on_a_slow_token_endpoint(
        x_emulator_factory, make_auth, heartbeat):
    x = x_emulator_factory(token_delay=2.0)
    auth = make_auth(emulator=x, token=_expired(x))

    async def main():
        async with heartbeat.running(), httpx.AsyncClient(auth=auth) as client:
            return await asyncio.gather(*(client.get(x.api_url + "/2/users/me")
                                          for _ in range(20)))

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 20 and x.stats.refreshes == 1
    assert heartbeat.loop_ticks[-1] - heartbeat.loop_ticks[0] >= 2.0  # it beat all along
    # A loop held by the refresh misses 2 s of beats; a busy machine delays the control too.
    assert heartbeat.loop_stall() < 0.5, (heartbeat.largest_gap(heartbeat.loop_ticks),
                                          heartbeat.largest_gap(heartbeat.control_ticks))


def test_tasks_whose_token_has_a_margin_do_not_queue_behind_a_slow_refresh(x_emulator_factory,
                                                                            make_auth):
    from refresher import RefreshPolicy

    x = x_emulator_factory(token_delay=2.0)
    token = x.issue_token()
    token["expires_at"] = time.time() + 50  # inside the 60 s leeway, above half of it
    # No background thread: the first task refreshes (2 s), the others go on with the token.
    auth = make_auth(emulator=x, token=token, policy=RefreshPolicy(background_refresh=False))

    async def main():
        async with httpx.AsyncClient(auth=auth) as client:
            first = asyncio.create_task(client.get(x.api_url + "/2/users/me"))
            while x.stats.token_requests == 0:  # its refresh is under way...
                await asyncio.sleep(0.01)
            others = await asyncio.gather(*(client.get(x.api_url + "/2/users/me")
                                            for _ in range(10)))
            refreshes_when_answered = x.stats.refreshes  # ...and still is: 2 s at X
            return await first, others, refreshes_when_answered

    first, others, refreshes_when_answered = asyncio.run(main())
    assert first.status_code == 200
    assert first.request.headers["Authorization"] != f"Bearer {token['access_token']}"
    # They went out with the token they had, answered before the refresh was: no queue.
    assert [r.status_code for r in others] == [200] * 10
    assert {r.request.headers["Authorization"] for r in others} == {
        f"Bearer {token['access_token']}"}
    assert refreshes_when_answered == 0
    assert x.stats.refreshes == 1 and x.stats.unauthorized == 0


def test_a_task_cancelled_while_refreshing_still_leaves_the_new_pair_saved(x_emulator_factory,
                                                                           make_auth):
    x = x_emulator_factory(token_delay=1.0)
    store = MemoryTokenStore()
    auth = make_auth(emulator=x, store=store, token=_expired(x))

    async def main():
        async with httpx.AsyncClient(auth=auth) as client:
            task = asyncio.create_task(client.get(x.api_url + "/2/users/me"))
            while x.stats.token_requests == 0:  # the refresh is under way in its worker thread
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await client.get(x.api_url + "/2/users/me")  # waits for that refresh

    assert asyncio.run(main()).status_code == 200
    assert x.stats.refreshes == 1 and x.stats.reused_refresh_tokens == 0
    assert store.load("default")["access_token"] == auth.token["access_token"]


def test_a_pair_granted_while_the_store_is_down_is_written_back_before_the_next_request(
        x_emulator, make_auth):
    from refresher import TokenStoreError

    class FlakyStore(MemoryTokenStore):
        down = False

        def save(self, account, token):
            if self.down:
                raise TokenStoreError("flaky store is down")
            super().save(account, token)

    store = FlakyStore()
    auth = make_auth(store=store)
    store.down = True
    x_emulator.expire_access_token(auth.token["access_token"])

    async def main():
        async with httpx.AsyncClient(auth=auth) as client:
            with pytest.raises(TokenStoreError):  # granted, not saved: the caller hears of it
                await client.get(x_emulator.api_url + "/2/users/me")
            granted = auth.token
            assert store.load("default")["access_token"] != granted["access_token"]
            store.down = False
            # The granted token is FRESH, but it is not sent before it is saved.
            assert (await client.get(x_emulator.api_url + "/2/users/me")).status_code == 200
            return granted

    granted = asyncio.run(main())
    assert store.load("default") == granted  # the only live pair was not lost
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.reused_refresh_tokens == 0


def test_two_event_loops_in_two_threads_share_one_auth_and_one_refresh(x_emulator, make_auth):
    auth = make_auth(token=_expired(x_emulator))
    results = []

    def loop_in_thread():
        async def main():
            async with httpx.AsyncClient(auth=auth) as client:
                return await asyncio.gather(*(client.get(x_emulator.api_url + "/2/users/me")
                                              for _ in range(20)))
        results.extend(a.status_code for a in asyncio.run(main()))

    threads = [threading.Thread(target=loop_in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [200] * 40
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 0


def test_sync_client_in_many_threads_refreshes_once(x_emulator, make_auth):
    auth = make_auth(token=_expired(x_emulator))
    statuses = []

    with httpx.Client(auth=auth) as client:
        def call():
            statuses.append(client.get(x_emulator.api_url + "/2/users/me").status_code)

        threads = [threading.Thread(target=call) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert statuses == [200] * 16
    assert x_emulator.stats.refreshes == 1


def test_the_body_hash_of_a_replayed_upload_matches(x_emulator, make_auth):
    auth = make_auth()
    x_emulator.expire_access_token(auth.token["access_token"])
    data = bytes(range(256)) * 1024
    response = send("async", auth, "POST", x_emulator.api_url + "/2/emulator/echo", content=data)
    assert response.json()["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert x_emulator.stats.refreshes == 1


# -- the docs' recipe, as printed (docs/howto/async.rst) ----------------------------------------


def test_httpx_recipe_runs_as_printed(x_emulator, tmp_path, monkeypatch, capsys):
    from refresher import JSONTokenStore

    store = JSONTokenStore(tmp_path / "tokens.json")  # as `refresher login` leaves it
    with store.lock("alice"):
        store.save("alice", _expired(x_emulator))
    store.save_metadata("alice", {"client_id": DEFAULT_CLIENT_ID, "confidential": False,
                                  "token_url": x_emulator.token_url,
                                  "api_url": x_emulator.api_url})
    for name in ("REFRESHER_ACCOUNT", "REFRESHER_CLIENT_ID", "REFRESHER_CLIENT_SECRET",
                 "REFRESHER_TOKEN_URL", "REFRESHER_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REFRESHER_STORE", str(tmp_path / "tokens.json"))
    recipe = doc_block("docs/howto/async.rst", "``RefreshingAuth.open(account)`` finds them")
    exec(compile(recipe, "httpx_recipe.py", "exec"), {"__name__": "__recipe__"})
    assert capsys.readouterr().out == "@emulated_user: 20 calls at once\n"
    stats = x_emulator.stats
    assert stats.refreshes == 1 and stats.unauthorized == 0 and stats.api_requests == 20
    assert stats.reused_refresh_tokens == 0
