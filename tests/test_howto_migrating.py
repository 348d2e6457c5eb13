"""docs/howto/migrating.rst, as printed: the requests-oauthlib "before" block and every "after"
block run against an emulator that knows ``YOUR_CLIENT_ID``, with X's hosts sent to it below
the clients (requests' ``HTTPAdapter.send``, httpx's transports), so the blocks call
``https://api.x.com`` as the page prints them. Then what the page says is gained over
requests-oauthlib, shown on both. (Authlib is not installed: its "before" blocks are
literal blocks, run by no test.)"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from doc_blocks import doc_block
from requests.adapters import HTTPAdapter

from refresher import JSONTokenStore, RefreshingSession
from refresher.testing import XEmulator

requests_oauthlib = pytest.importorskip("requests_oauthlib")
oauth2_errors = pytest.importorskip("oauthlib.oauth2.rfc6749.errors")

CLIENT_ID = "YOUR_CLIENT_ID"  # as the page's blocks name it
X_ORIGINS = ("https://api.x.com", "https://api.twitter.com")


def _rerouted(url: str, target: str) -> str:
    for origin in X_ORIGINS:
        if url == origin or url.startswith(origin + "/"):
            return target + url[len(origin):]
    return url


@pytest.fixture
def x(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[XEmulator]:
    """An emulator whose one client is ``YOUR_CLIENT_ID``, standing in for X's hosts for
    every requests session and httpx client; the test runs in ``tmp_path``."""
    with XEmulator(clients={CLIENT_ID: None}) as emulator:
        send = HTTPAdapter.send

        def rerouting_send(self: HTTPAdapter, request: Any, **kwargs: Any) -> Any:
            request.url = _rerouted(request.url, emulator.url)
            return send(self, request, **kwargs)

        monkeypatch.setattr(HTTPAdapter, "send", rerouting_send)
        httpx = pytest.importorskip("httpx")
        handle_async = httpx.AsyncHTTPTransport.handle_async_request

        async def rerouting_handle_async(self: Any, request: Any) -> Any:
            request.url = httpx.URL(_rerouted(str(request.url), emulator.url))
            return await handle_async(self, request)

        monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request",
                            rerouting_handle_async)
        for name in ("REFRESHER_STORE", "REFRESHER_ACCOUNT", "REFRESHER_CLIENT_ID",
                     "REFRESHER_CLIENT_SECRET", "REFRESHER_TOKEN_URL", "REFRESHER_API_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(tmp_path)
        yield emulator


def saved_token(x: XEmulator, *, expires_in: float = -1.0) -> dict[str, Any]:
    """A pair as requests-oauthlib's token_updater leaves it in token.json, expiring
    ``expires_in`` seconds from now by its ``expires_at`` (already expired by default)."""
    token = x.issue_token(client_id=CLIENT_ID)
    token["expires_at"] = time.time() + expires_in
    Path("token.json").write_text(json.dumps(token))
    return token


def run(block: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The block run as a script would run it; what it printed."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(block, "block.py", "exec"), namespace)
    session = namespace.get("session")
    if session is not None:
        session.close()
    return capsys.readouterr().out


# -- the blocks, as printed ----------------------------------------------------------------------

def test_the_requests_oauthlib_before_block(x: XEmulator, capsys) -> None:
    old = saved_token(x)
    block = doc_block("docs/howto/migrating.rst", "saves the new pair\nwith ``token_updater``.")
    assert "OAuth2Session(" in block
    assert run(block, capsys) == "@emulated_user\n"
    assert x.stats.refreshes == 1
    saved = json.loads(Path("token.json").read_text())  # token_updater wrote the new pair
    assert saved["refresh_token"] != old["refresh_token"]


def test_the_requests_oauthlib_after_block(x: XEmulator, capsys) -> None:
    old = saved_token(x)
    block = doc_block("docs/howto/migrating.rst", "does not change.")
    assert run(block, capsys) == "@emulated_user\n"
    stats = x.stats
    assert stats.refreshes == 1 and stats.reused_refresh_tokens == 0
    stored = JSONTokenStore("tokens.json").load("alice")
    assert stored is not None and stored["refresh_token"] != old["refresh_token"]
    assert json.loads(Path("token.json").read_text()) == stored  # on_token_update: a copy
    # run again: the store holds a newer pair than the file's seed, and wins
    assert run(block, capsys) == "@emulated_user\n"
    assert x.stats.refreshes == 1


def test_the_authlib_after_block(x: XEmulator, capsys) -> None:
    saved_token(x)
    block = doc_block("docs/howto/migrating.rst", "After: the hook takes the token alone.")
    assert run(block, capsys) == "@emulated_user\n"
    stored = JSONTokenStore("tokens.json").load("alice")
    assert json.loads(Path("token.json").read_text()) == stored
    assert x.stats.refreshes == 1 and x.stats.reused_refresh_tokens == 0


def test_the_authlib_async_after_block(x: XEmulator, capsys) -> None:
    saved_token(x)
    block = doc_block("docs/howto/migrating.rst", "After: a plain ``httpx.AsyncClient``")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(block, "block.py", "exec"), namespace)
    namespace["auth"].close()
    assert capsys.readouterr().out == "token updated\n@emulated_user\n"
    assert x.stats.refreshes == 1 and x.stats.unauthorized == 0


def test_the_javascript_after_block(x: XEmulator, capsys) -> None:
    token = x.issue_token(client_id=CLIENT_ID)
    Path("credentials.json").write_text(json.dumps(
        {"accessToken": token["access_token"], "refreshToken": token["refresh_token"]}))
    x.expire_access_token(token["access_token"])  # the Node app's token has run out
    block = doc_block("docs/howto/migrating.rst", "After, in Python, seeded")
    # no expires_at: sent, refused, refreshed, replayed
    assert run(block, capsys) == "token updated\n@emulated_user\n"
    stats = x.stats
    assert stats.refreshes == 1 and stats.unauthorized == 1 and stats.api_requests == 2


# -- what the page says is gained over requests-oauthlib ----------------------------------------

def _oauthlib_session(token: dict[str, Any], updates: list[Any]) -> Any:
    return requests_oauthlib.OAuth2Session(
        CLIENT_ID, token=token, auto_refresh_url="https://api.x.com/2/oauth2/token",
        auto_refresh_kwargs={"client_id": CLIENT_ID}, token_updater=updates.append)


def _refreshing_session(token: dict[str, Any]) -> RefreshingSession:
    # a store of its own per session: two processes' handles on one file
    return RefreshingSession(CLIENT_ID, store=JSONTokenStore("tokens.json"), account="alice",
                             token=token)


def test_two_processes_with_one_pair_spend_it_twice_unless_they_share_a_store(
        x: XEmulator) -> None:
    token = saved_token(x)
    first, second = _oauthlib_session(dict(token), []), _oauthlib_session(dict(token), [])
    assert first.get("https://api.x.com/2/users/me").status_code == 200
    for _ in range(2):  # refused, and refused again: it holds the spent refresh token
        with pytest.raises(oauth2_errors.OAuth2Error):
            second.get("https://api.x.com/2/users/me")
    assert x.stats.refreshes == 1 and x.stats.reused_refresh_tokens == 2

    x.reset_stats()
    token = saved_token(x)
    sessions = [_refreshing_session(dict(token)), _refreshing_session(dict(token))]
    for session in sessions * 2:
        assert session.get("https://api.x.com/2/users/me").status_code == 200
    assert x.stats.refreshes == 1 and x.stats.reused_refresh_tokens == 0
    for session in sessions:
        session.close()


def test_a_token_x_refuses_early_is_a_401_for_requests_oauthlib_and_replayed_by_refresher(
        x: XEmulator) -> None:
    token = saved_token(x, expires_in=3600)
    x.expire_access_token(token["access_token"])
    plain = _oauthlib_session(dict(token), [])
    assert plain.get("https://api.x.com/2/users/me").status_code == 401
    session = _refreshing_session(dict(token))
    assert session.get("https://api.x.com/2/users/me").status_code == 200
    assert x.stats.refreshes == 1 and x.stats.unauthorized == 2
    session.close()


def test_a_token_in_its_last_minute_is_refreshed_first_only_by_refresher(x: XEmulator) -> None:
    token = saved_token(x, expires_in=30)  # inside the 60-second leeway (of a 7200 s token)
    assert _oauthlib_session(dict(token), []).get(
        "https://api.x.com/2/users/me").status_code == 200
    assert x.stats.refreshes == 0  # sent as it was
    session = _refreshing_session(dict(token))
    assert session.get("https://api.x.com/2/users/me").status_code == 200
    assert x.stats.refreshes == 1 and x.stats.unauthorized == 0
    session.close()


def test_requests_oauthlib_logs_the_token_at_debug(x: XEmulator,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    token = saved_token(x, expires_in=3600)
    with caplog.at_level(logging.DEBUG, logger="requests_oauthlib"):
        _oauthlib_session(dict(token), []).get("https://api.x.com/2/users/me")
    assert token["access_token"] in caplog.text


def test_the_reroute_leaves_other_hosts_alone(x: XEmulator) -> None:
    assert _rerouted("https://api.x.com.evil/2", x.url) == "https://api.x.com.evil/2"
    assert _rerouted("https://api.x.com/2/users/me", x.url) == x.url + "/2/users/me"
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:9/", timeout=5)  # not sent to the emulator
