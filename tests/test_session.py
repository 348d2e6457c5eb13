"""RefreshingSession over real loopback HTTP to the emulator: the token on every request,
refresh before expiry, refresh-and-replay on 401, hooks, me(), repr, drop-in behaviour."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from oauthlib.oauth2 import InsecureTransportError
from requests_oauthlib import OAuth2Session

import refresher
from refresher import JSONTokenStore, MemoryTokenStore, RefreshingSession
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator


def echo(session: RefreshingSession, x: XEmulator, **kw: Any) -> requests.Response:
    return session.post(x.api_url + "/2/emulator/echo", **kw)


def test_public_constants_are_xs_endpoints() -> None:
    assert refresher.X_TOKEN_URL == "https://api.x.com/2/oauth2/token"
    assert refresher.X_AUTHORIZE_URL == "https://x.com/i/oauth2/authorize"
    assert refresher.X_REVOKE_URL == "https://api.x.com/2/oauth2/revoke"
    assert refresher.X_API_URL == "https://api.x.com"


def test_every_request_carries_the_current_bearer_token(x_emulator, make_session, me_url) -> None:
    session = make_session()
    response = session.get(me_url(x_emulator))
    assert response.status_code == 200
    sent = response.request.headers["Authorization"]
    assert sent == f"Bearer {session.token['access_token']}"
    assert x_emulator.stats.refreshes == 0


def test_callers_authorization_header_is_replaced_by_the_live_token(x_emulator, make_session,
                                                                    me_url):
    session = make_session()
    response = session.get(me_url(x_emulator),
                           headers={"authorization": "Bearer placeholder", "X-Extra": "1"})
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == f"Bearer {session.token['access_token']}"
    assert response.request.headers["X-Extra"] == "1"


def test_me_returns_the_data_object(x_emulator, make_session) -> None:
    assert make_session().me() == {"id": "1000000001", "name": "Emulated User",
                                   "username": "emulated_user"}


def test_token_expiring_within_leeway_is_refreshed_before_sending(x_emulator, make_session, me_url):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + 30  # 30 s left, leeway 60 s, lifetime 7200 s
    session = make_session(token=token, leeway=60.0)
    response = session.get(me_url(x_emulator))
    assert response.status_code == 200
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.unauthorized == 0  # refreshed first, not after a 401
    assert response.request.headers["Authorization"] != f"Bearer {token['access_token']}"


def test_token_outside_leeway_is_not_refreshed(x_emulator, make_session, me_url) -> None:
    session = make_session(leeway=60.0)
    for _ in range(3):
        assert session.get(me_url(x_emulator)).status_code == 200
    assert x_emulator.stats.refreshes == 0


def test_leeway_is_capped_for_short_lived_tokens(x_emulator_factory, make_session, me_url) -> None:
    x = x_emulator_factory(access_ttl=5.0)
    session = make_session(emulator=x, leeway=60.0)  # 60 s leeway > the 5 s lifetime
    for _ in range(5):
        assert session.get(me_url(x)).status_code == 200
    assert x.stats.refreshes == 0


def test_401_refreshes_once_and_replays(x_emulator, make_session, me_url) -> None:
    session = make_session()
    old = session.token["access_token"]
    x_emulator.expire_access_token(old)  # the client still thinks it has 2 hours
    response = session.get(me_url(x_emulator))
    assert response.status_code == 200
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.unauthorized == 1
    assert session.token["access_token"] != old
    assert session.store.load("default")["access_token"] == session.token["access_token"]


def test_second_401_is_returned_as_it_came_never_a_loop(x_emulator, make_session, me_url) -> None:
    session = make_session()
    x_emulator.expire_access_token(session.token["access_token"])
    x_emulator.access_ttl = -1.0  # every access token issued from now on is born dead
    response = session.get(me_url(x_emulator))
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthorized"
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.unauthorized == 2  # the first try and the one replay


def test_refresh_now_rotates_the_pair_and_saves_it(x_emulator, make_session, me_url) -> None:
    store = MemoryTokenStore()
    session = make_session(store=store)
    before = store.load("default")
    new = session.refresh()
    assert new["refresh_token"] != before["refresh_token"]
    assert store.load("default") == new
    assert x_emulator.stats.refreshes == 1
    assert session.get(me_url(x_emulator)).status_code == 200


def test_token_already_in_the_store_wins_over_the_seed(x_emulator, make_session) -> None:
    store = MemoryTokenStore()
    stored = x_emulator.issue_token()
    store.save("alice", stored)
    session = make_session(store=store, account="alice", token=x_emulator.issue_token())
    assert session.token["access_token"] == stored["access_token"]


def test_seed_fills_an_empty_account_with_expires_at(x_emulator, make_session) -> None:
    store = MemoryTokenStore()
    seed = x_emulator.issue_token()
    del seed["expires_at"]
    make_session(store=store, token=seed)
    saved = store.load("default")
    assert saved["access_token"] == seed["access_token"]
    assert saved["expires_at"] == pytest.approx(time.time() + 7200, abs=5)


def test_on_token_update_runs_once_per_refresh_after_the_store_write(x_emulator, make_session,
                                                                     me_url):
    store = MemoryTokenStore()
    seen: list[dict[str, Any]] = []
    stored_when_called: list[Any] = []

    def hook(token: dict[str, Any]) -> None:
        stored_when_called.append(store.load("default"))
        seen.append(token)

    session = make_session(store=store, on_token_update=hook)
    session.refresh()
    x_emulator.expire_access_token(session.token["access_token"])
    session.get(me_url(x_emulator))
    assert len(seen) == 2
    assert stored_when_called == seen  # the store already held each token
    assert seen[-1] == store.load("default")


def test_a_failing_hook_is_logged_and_does_not_fail_the_request(x_emulator, make_session,
                                                                 caplog, me_url):
    def broken(token: dict[str, Any]) -> None:
        raise RuntimeError("database is down")

    session = make_session(on_token_update=broken)
    x_emulator.expire_access_token(session.token["access_token"])
    assert session.get(me_url(x_emulator)).status_code == 200
    assert "database is down" in caplog.text
    assert session.store.load("default") == session.token


def test_a_failed_early_refresh_sends_the_still_valid_token_and_retries_later(
        x_emulator, make_session, me_url):
    errors: list[BaseException] = []
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + 30  # inside the leeway, still valid
    session = make_session(token=token, on_refresh_error=errors.append)
    x_emulator.fail_token_endpoint(times=3, status=500)
    for _ in range(5):
        assert session.get(me_url(x_emulator)).status_code == 200
    assert len(errors) == 1  # one try, not one per request
    assert x_emulator.stats.token_requests == 1
    assert session.token["access_token"] == token["access_token"]


def test_on_token_update_alone_turns_the_machinery_on(x_emulator, me_url) -> None:
    seen: list[dict[str, Any]] = []
    session = RefreshingSession(DEFAULT_CLIENT_ID, token=x_emulator.issue_token(),
                                token_url=x_emulator.token_url, on_token_update=seen.append)
    assert session.refreshing
    x_emulator.expire_access_token(session.token["access_token"])
    assert session.get(me_url(x_emulator)).status_code == 200
    assert len(seen) == 1


def test_on_refresh_error_sees_each_failure_before_it_propagates(x_emulator, make_session, me_url):
    errors: list[BaseException] = []
    session = make_session(on_refresh_error=errors.append)
    x_emulator.revoke_all()
    with pytest.raises(refresher.ReauthorizationRequired) as raised:
        session.get(me_url(x_emulator))
    assert errors == [raised.value]


def test_confidential_client_refreshes_with_basic_auth(x_emulator, make_session) -> None:
    from refresher.testing import DEFAULT_CLIENT_SECRET, DEFAULT_CONFIDENTIAL_CLIENT_ID

    token = x_emulator.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID)
    session = make_session(token=token, client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID,
                           client_secret=DEFAULT_CLIENT_SECRET)
    assert session.refresh()["access_token"] != token["access_token"]
    wrong = make_session(store=MemoryTokenStore(), client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID,
                         token=x_emulator.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID),
                         client_secret="not-the-secret")
    with pytest.raises(refresher.RefreshError) as raised:
        wrong.refresh()
    assert not isinstance(raised.value, refresher.ReauthorizationRequired)
    assert raised.value.error == "unauthorized_client"
    assert "not-the-secret" not in str(raised.value)


def test_custom_refresh_session_carries_every_token_endpoint_call(x_emulator, make_session):
    calls: list[str] = []
    refresh_session = requests.Session()
    refresh_session.hooks["response"].append(lambda r, *a, **k: calls.append(r.request.url))
    session = make_session(refresh_session=refresh_session)
    session.refresh()
    assert calls == [x_emulator.token_url]


def test_plain_http_is_refused_except_to_loopback(x_emulator, make_session, monkeypatch,
                                                  me_url) -> None:
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    session = make_session()
    with pytest.raises(InsecureTransportError):
        session.get("http://example.invalid/2/users/me")
    assert session.get(me_url(x_emulator)).status_code == 200


def test_repr_shows_account_and_expiry_never_the_token(x_emulator, make_session) -> None:
    session = make_session(store=MemoryTokenStore(), account="alice")
    text = repr(session)
    assert "alice" in text and "expires in" in text
    assert session.token["access_token"] not in text
    assert session.token["refresh_token"] not in text


def test_request_without_any_token_says_to_log_in(x_emulator, me_url) -> None:
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=MemoryTokenStore(), account="nobody",
                                token_url=x_emulator.token_url)
    with pytest.raises(refresher.ReauthorizationRequired, match="log in"):
        session.get(me_url(x_emulator))


def test_token_set_on_the_session_goes_to_the_store(x_emulator, tmp_path, me_url) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, token_url=x_emulator.token_url)
    token = x_emulator.issue_token()
    session.token = token  # what OAuth2Session.fetch_token does after a login
    assert store.load("default")["access_token"] == token["access_token"]
    assert session.get(me_url(x_emulator)).status_code == 200


# -- drop-in: without store and on_token_update it is an OAuth2Session ---------------------

def test_without_store_it_is_a_plain_oauth2session(x_emulator, monkeypatch, me_url) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    token = x_emulator.issue_token()
    session = RefreshingSession(DEFAULT_CLIENT_ID, token=token)
    assert isinstance(session, OAuth2Session)
    assert not session.refreshing
    assert session.authorized
    assert session.access_token == token["access_token"]
    response = session.get(me_url(x_emulator))
    assert response.status_code == 200
    x_emulator.expire_access_token(token["access_token"])
    assert session.get(me_url(x_emulator)).status_code == 401  # no magic
    assert x_emulator.stats.refreshes == 0


def test_plain_mode_keeps_oauth2sessions_auto_refresh(x_emulator, monkeypatch, me_url) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() - 1
    updates: list[dict[str, Any]] = []
    session = RefreshingSession(DEFAULT_CLIENT_ID, token=token,
                                auto_refresh_url=x_emulator.token_url,
                                auto_refresh_kwargs={"client_id": DEFAULT_CLIENT_ID},
                                token_updater=updates.append)
    assert session.get(me_url(x_emulator)).status_code == 200
    assert len(updates) == 1 and x_emulator.stats.refreshes == 1


def test_session_accessors_follow_the_live_token(x_emulator, make_session) -> None:
    session = make_session()
    new = session.refresh()
    assert session.access_token == new["access_token"]
    assert session.token == new
    assert session.authorized


def test_protected_request_compliance_hooks_still_run(x_emulator, make_session) -> None:
    session = make_session()
    session.register_compliance_hook(
        "protected_request", lambda url, headers, data: (url + "?hooked=1", headers, data))
    response = session.get(x_emulator.api_url + "/2/emulator/echo")
    assert response.json()["query"] == "hooked=1"


def test_an_adapter_mounted_with_custom_settings_keeps_refreshing(x_emulator, make_session, me_url):
    session = make_session()
    session.mount("http://", refresher.RefreshingAdapter(session.coordinator, max_retries=2))
    x_emulator.expire_access_token(session.token["access_token"])
    assert session.get(me_url(x_emulator)).status_code == 200
    assert x_emulator.stats.refreshes == 1


def test_changing_the_returned_token_dict_changes_nothing(x_emulator, make_session, me_url) -> None:
    session = make_session()
    live = session.token["access_token"]
    session.token["access_token"] = "mangled"
    response = session.get(me_url(x_emulator))
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == f"Bearer {live}"
