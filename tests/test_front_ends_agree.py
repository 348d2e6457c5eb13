"""The per-request rule's three decisions (refresher.flow), on all four front ends alike.

Over real HTTP to the emulator: requests (``RefreshingSession``), httpx sync and async
(``RefreshingAuth``) and aiohttp (``RefreshingMiddleware``), each driving the one rule.

1. The statuses looked at are the front end's ``refresh_status_codes``.
2. An answer is judged by the bearer the answered request carried: a redirect hop to
   another origin carried none, so its 401 refreshes nothing.
3. A replay refused with the token just refreshed brakes that endpoint; a replay whose
   last hop carried no token does not.

And the fast path every driver takes: a 2xx to a ready token builds no rule at all
(``refresher.flow.settled`` decides, for the rule).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from refresher import MemoryTokenStore, RefreshingSession
from refresher.testing import XEmulator

FRONTS = ["requests", "httpx", "httpx-async", "aiohttp"]


def _front(kind: str, make_wired: Any, x: XEmulator, **kw: Any) -> Any:
    if kind == "requests":
        return make_wired(RefreshingSession, emulator=x, store=MemoryTokenStore(), **kw)
    if kind.startswith("httpx"):
        pytest.importorskip("httpx")
        from refresher.httpx import RefreshingAuth

        return make_wired(RefreshingAuth, emulator=x, store=MemoryTokenStore(), **kw)
    pytest.importorskip("aiohttp")
    from refresher.aiohttp import RefreshingMiddleware

    return make_wired(RefreshingMiddleware, emulator=x, store=MemoryTokenStore(), **kw)


def _get(kind: str, front: Any, url: str, **params: str) -> int:
    """GET ``url`` through ``front`` (redirects followed, as each library does by default);
    the final status."""
    if kind == "requests":
        return int(front.get(url, params=params, timeout=10).status_code)
    if kind == "httpx":
        import httpx

        with httpx.Client(auth=front, timeout=10, follow_redirects=True) as client:
            return client.get(url, params=params).status_code
    return asyncio.run(_get_async(kind, front, url, params))


async def _get_async(kind: str, front: Any, url: str, params: dict[str, str]) -> int:
    if kind == "httpx-async":
        import httpx

        async with httpx.AsyncClient(auth=front, timeout=10, follow_redirects=True) as client:
            return (await client.get(url, params=params)).status_code
    import aiohttp

    async with aiohttp.ClientSession(middlewares=[front]) as session:
        async with session.get(url, params=params) as response:
            await response.read()
            return response.status


@pytest.mark.parametrize("kind", FRONTS)
def test_only_the_front_ends_refresh_status_codes_are_looked_at(kind, make_wired,
                                                                 x_emulator) -> None:
    x = x_emulator
    front = _front(kind, make_wired, x, refresh_status_codes={403})
    x.expire_access_token(front.token["access_token"])
    assert _get(kind, front, x.api_url + "/2/users/me") == 401  # returned as it came
    assert x.stats.refreshes == 0


@pytest.mark.parametrize("kind", FRONTS)
def test_a_401_from_a_hop_to_another_origin_refreshes_nothing(kind, make_wired,
                                                               x_emulator_factory) -> None:
    home, other = x_emulator_factory(), x_emulator_factory()
    front = _front(kind, make_wired, home)
    status = _get(kind, front, home.api_url + "/2/emulator/redirect",
                  to=other.api_url + "/2/users/me")
    assert status == 401  # the other origin got no token
    assert home.stats.refreshes == 0 and other.stats.token_requests == 0


@pytest.mark.parametrize("kind", FRONTS)
def test_a_replay_refused_with_the_new_token_brakes_and_no_other_does(kind, make_wired,
                                                                      x_emulator_factory) -> None:
    home, other = x_emulator_factory(), x_emulator_factory()
    front = _front(kind, make_wired, home)
    always = home.api_url + "/2/emulator/unauthorized"
    assert _get(kind, front, always) == 401          # refreshed, replayed, refused again
    assert _get(kind, front, always) == 401          # braked: not refreshed again
    assert home.stats.refreshes == 1
    # A replay redirected to another origin, refused there without a token: no brake, so
    # the next 401 to the new token at home is cured again.
    away = home.api_url + "/2/emulator/redirect"
    home.expire_access_token(front.token["access_token"])
    assert _get(kind, front, away, to=other.api_url + "/2/users/me") == 401
    assert home.stats.refreshes == 2
    home.expire_access_token(front.token["access_token"])
    assert _get(kind, front, away, to=home.api_url + "/2/users/me") == 200
    assert home.stats.refreshes == 3 and home.stats.reused_refresh_tokens == 0


def test_the_refresh_rule_pages_example_never_refreshes_on_a_403(x_emulator, tmp_path,
                                                                 monkeypatch):
    """docs/explanation/refresh-rule.rst's example, as printed, on a saved account: with
    ``refresh_status_codes={401}`` a 403 refreshes nothing, even for a token late in its
    life, where the default would refresh it once; a 401 still refreshes."""
    from doc_blocks import doc_block

    from refresher import JSONTokenStore, open_session
    from refresher.testing import DEFAULT_CLIENT_ID

    store = tmp_path / "tokens.json"
    late = dict(x_emulator.issue_token())  # X still takes it; it says it is 80 minutes old
    late["expires_at"] = time.time() + float(late["expires_in"]) / 3
    JSONTokenStore(store).save("alice", late)
    for name, value in {"REFRESHER_STORE": str(store), "REFRESHER_CLIENT_ID": DEFAULT_CLIENT_ID,
                        "REFRESHER_TOKEN_URL": x_emulator.token_url,
                        "REFRESHER_API_URL": x_emulator.api_url}.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {}
    exec(doc_block("docs/explanation/refresh-rule.rst", "leave it out of the statuses looked at:"),
         namespace)
    session = namespace["session"]
    assert session.policy.refresh_status_codes == {401}

    def post(front: Any) -> int:  # the token has no tweet.write: X answers 403
        return int(front.post(f"{x_emulator.api_url}/2/tweets", json={"text": "hi"},
                              timeout=10).status_code)

    assert post(session) == 403 and x_emulator.stats.refreshes == 0
    with open_session("alice") as default:  # the default statuses: this 403 may be cured
        assert post(default) == 403 and x_emulator.stats.refreshes == 1
    assert session.get(x_emulator.api_url + "/2/emulator/unauthorized", timeout=10
                       ).status_code == 401
    # A 401 is still cured: by the pair the other session saved (adopted, not refreshed
    # again), and the request replayed once.
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 2
    session.close()


@pytest.mark.parametrize("kind", FRONTS)
def test_a_2xx_to_a_ready_token_builds_no_rule(kind, make_wired, x_emulator,
                                                monkeypatch) -> None:
    x = x_emulator
    front = _front(kind, make_wired, x)
    module = {"requests": "refresher.adapter", "aiohttp": "refresher.aiohttp"}.get(
        kind, "refresher.httpx")

    def no_rule(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a rule was built for a 2xx")

    monkeypatch.setattr(f"{module}.request_rule", no_rule)
    assert _get(kind, front, x.api_url + "/2/users/me") == 200
    x.expire_access_token(front.token["access_token"])
    with pytest.raises(AssertionError, match="a rule was built"):
        _get(kind, front, x.api_url + "/2/users/me")  # a 401 needs the rule
