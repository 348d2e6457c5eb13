"""The X emulator, specified over real loopback HTTP with plain requests."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from refresher import LoginError, LoginFlow
from refresher.clock import SYSTEM_CLOCK
from refresher.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_CONFIDENTIAL_CLIENT_ID,
    EmulatorStats,
    FakeClock,
    XEmulator,
    pytest_plugin,
)

# Run from a checkout, the plugin is not installed: bring its fixtures in by hand.
x_emulator = pytest_plugin.x_emulator
x_emulator_factory = pytest_plugin.x_emulator_factory

REDIRECT_URI = "http://127.0.0.1:8765/callback"
SCOPE = "tweet.read users.read offline.access"
CODE_INVALID = {
    "error": "invalid_request",
    "error_description": "Value passed for the authorization code was invalid.",
}
VERIFIER_MISMATCH = {
    "error": "invalid_request",
    "error_description": "Value passed for the code verifier did not match the code challenge.",
}
TOKEN_INVALID = {
    "error": "invalid_request",
    "error_description": "Value passed for the token was invalid.",
}
UNAUTHORIZED_CLIENT = {
    "error": "unauthorized_client",
    "error_description": "Missing valid authorization header",
}
UNAUTHORIZED = {"title": "Unauthorized", "type": "about:blank", "status": 401,
                "detail": "Unauthorized"}
FORBIDDEN = {"title": "Forbidden", "type": "about:blank", "status": 403, "detail": "Forbidden"}
DUPLICATE = {"title": "Forbidden", "type": "about:blank", "status": 403,
             "detail": "You are not allowed to create a Tweet with duplicate content."}


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def x() -> Iterator[XEmulator]:
    with XEmulator() as emulator:
        yield emulator


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorize(emulator: XEmulator, challenge: str, **overrides: str) -> requests.Response:
    params = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPE,
        "state": "state-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return requests.get(emulator.authorize_url, params=params, allow_redirects=False)


def returned_params(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def login_code(emulator: XEmulator, **overrides: str) -> tuple[str, str]:
    """Authorize and return (code, verifier)."""
    verifier, challenge = pkce()
    return returned_params(authorize(emulator, challenge, **overrides))["code"], verifier


def exchange(emulator: XEmulator, code: str, verifier: str, **overrides: Any) -> requests.Response:
    auth = overrides.pop("auth", None)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
        "client_id": DEFAULT_CLIENT_ID,
    }
    data.update(overrides)
    return requests.post(emulator.token_url, data={k: v for k, v in data.items() if v is not None},
                         auth=auth)


def refresh(emulator: XEmulator, refresh_token: str, client_id: str | None = DEFAULT_CLIENT_ID,
            auth: Any = None, session: Any = requests) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if client_id is not None:
        data["client_id"] = client_id
    response: requests.Response = session.post(emulator.token_url, data=data, auth=auth)
    return response


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def me_at(api_url: str, access_token: str) -> requests.Response:
    return requests.get(api_url + "/2/users/me", headers=bearer(access_token))


def me(emulator: XEmulator, access_token: str) -> requests.Response:
    return me_at(emulator.api_url, access_token)


def basic(client_id: str, secret: str) -> str:
    quoted = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
    return "Basic " + base64.b64encode(quoted.encode()).decode()


# -- authorization code flow -------------------------------------------------------------


def test_pkce_login_yields_a_working_token_pair(x: XEmulator) -> None:
    verifier, challenge = pkce()
    returned = returned_params(authorize(x, challenge))
    assert returned["state"] == "state-123"

    response = exchange(x, returned["code"], verifier)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == 7200 and isinstance(token["expires_in"], int)
    assert token["scope"] == SCOPE
    assert token["refresh_token"] != token["access_token"]
    assert me(x, token["access_token"]).json() == {
        "data": {"id": "1000000001", "name": "Emulated User", "username": "emulated_user"}
    }
    assert x.stats.exchanges == 1


def test_plain_code_challenge_method_is_accepted(x: XEmulator) -> None:
    verifier = secrets.token_urlsafe(48)
    code = returned_params(authorize(x, verifier, code_challenge_method="plain"))["code"]
    assert exchange(x, code, verifier).status_code == 200


@pytest.mark.parametrize("method", ["S256", "s256"])
def test_s256_is_accepted_in_either_case(x: XEmulator, method: str) -> None:
    verifier, challenge = pkce()  # twitter-api-v2 sends "s256"
    code = returned_params(authorize(x, challenge, code_challenge_method=method))["code"]
    assert exchange(x, code, verifier).status_code == 200


@pytest.mark.parametrize("method", ["plain", "PLAIN"])
@pytest.mark.parametrize("verifier", ["challenge", "a", "v" * 43, "~._-" * 32],
                         ids=["x-docs-example", "1-char", "43-chars", "128-chars"])
def test_plain_challenges_of_any_length_x_accepts(x: XEmulator, method: str,
                                                  verifier: str) -> None:
    # X's own documented example: code_challenge=challenge, code_verifier=challenge.
    code = returned_params(authorize(x, verifier, code_challenge_method=method))["code"]
    assert exchange(x, code, verifier).status_code == 200


def test_no_refresh_token_without_offline_access(x: XEmulator) -> None:
    code, verifier = login_code(x, scope="tweet.read users.read")
    token = exchange(x, code, verifier).json()
    assert "refresh_token" not in token
    assert token["scope"] == "tweet.read users.read"


def test_code_serves_once(x: XEmulator) -> None:
    code, verifier = login_code(x)
    assert exchange(x, code, verifier).status_code == 200
    second = exchange(x, code, verifier)
    assert (second.status_code, second.json()) == (400, CODE_INVALID)


def test_code_expires_after_code_ttl(x_emulator_factory: Callable[..., XEmulator]) -> None:
    x = x_emulator_factory(code_ttl=0.2)
    code, verifier = login_code(x)
    time.sleep(0.3)
    response = exchange(x, code, verifier)
    assert (response.status_code, response.json()) == (400, CODE_INVALID)


def test_wrong_code_verifier_gets_x_answer_and_leaves_the_code(x: XEmulator) -> None:
    code, verifier = login_code(x)
    for wrong in (pkce()[0], "short", "not ascii: \u00e9"):
        response = exchange(x, code, wrong)
        assert (response.status_code, response.json()) == (400, VERIFIER_MISMATCH)
        assert response.headers["Cache-Control"] == "no-store"
    assert x.stats.exchanges == 0
    assert exchange(x, code, verifier).status_code == 200


def test_a_bad_code_is_reported_before_the_verifier(x: XEmulator) -> None:
    code, verifier = login_code(x)
    assert exchange(x, code, verifier).status_code == 200
    for sent in (code, "no-such-code"):
        response = exchange(x, sent, pkce()[0])
        assert (response.status_code, response.json()) == (400, CODE_INVALID)


def test_login_hint_for_a_verifier_mismatch(x: XEmulator) -> None:
    flow = LoginFlow(DEFAULT_CLIENT_ID, authorize_url=x.authorize_url, token_url=x.token_url,
                     api_base_url=x.api_url, redirect_uri=REDIRECT_URI)
    link, other = flow.authorization_url(), flow.authorization_url()
    back = requests.get(link.url, allow_redirects=False).headers["Location"]
    with pytest.raises(LoginError) as mismatch:
        flow.exchange(back, state=link.state, code_verifier=other.code_verifier)
    assert "code verifier did not match the challenge" in str(mismatch.value)
    assert "mixed up with another attempt" in str(mismatch.value)
    assert "30 seconds" not in str(mismatch.value)
    flow.exchange(back, state=link.state, code_verifier=link.code_verifier)
    with pytest.raises(LoginError, match="30 seconds and serves once") as reused:
        flow.exchange(back, state=link.state, code_verifier=link.code_verifier)
    assert "verifier" not in str(reused.value)


def test_exchange_needs_the_redirect_uri_of_the_authorize_request(x: XEmulator) -> None:
    code, verifier = login_code(x)
    response = exchange(x, code, verifier, redirect_uri="http://127.0.0.1:9999/callback")
    assert (response.status_code, response.json()) == (400, CODE_INVALID)


def test_code_belongs_to_the_client_it_was_issued_to(x: XEmulator) -> None:
    code, verifier = login_code(x)
    response = exchange(x, code, verifier, client_id=None,
                        auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert (response.status_code, response.json()) == (400, CODE_INVALID)


def test_denied_login_redirects_with_access_denied(x: XEmulator) -> None:
    x.auto_approve = False
    _, challenge = pkce()
    returned = returned_params(authorize(x, challenge))
    assert returned == {"error": "access_denied", "state": "state-123"}


def test_unregistered_redirect_uri_gets_no_redirect(
    x_emulator_factory: Callable[..., XEmulator],
) -> None:
    x = x_emulator_factory(redirect_uris=[REDIRECT_URI])
    _, challenge = pkce()
    assert authorize(x, challenge).status_code == 302
    for uri in (REDIRECT_URI + "/", "http://127.0.0.1:8766/callback"):
        response = authorize(x, challenge, redirect_uri=uri)
        assert response.status_code == 400
        assert "Location" not in response.headers


@pytest.mark.parametrize("overrides", [
    {"client_id": "nobody"},
    {"redirect_uri": "https://attacker.example/callback"},
    {"redirect_uri": "http://127.0.0.1:8765/cb#fragment"},
    {"response_type": "token"},
    {"scope": ""},
    {"scope": "tweet.read everything"},
    {"state": ""},
    {"state": "s" * 501},
    {"code_challenge": "too-short"},
    {"code_challenge": "c" * 129, "code_challenge_method": "plain"},
    {"code_challenge": "", "code_challenge_method": "plain"},
    {"code_challenge": "not/base64url!", "code_challenge_method": "plain"},
    {"code_challenge_method": "S512"},
    {"code_challenge_method": ""},
], ids=lambda o: "-".join(f"{k}={v[:20]}" for k, v in o.items()))
def test_invalid_authorize_request_shows_an_error_page(
    x: XEmulator, overrides: dict[str, str],
) -> None:
    _, challenge = pkce()
    response = authorize(x, challenge, **overrides)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/plain")


def test_loopback_redirect_uris_are_accepted_by_default(x: XEmulator) -> None:
    _, challenge = pkce()
    for uri in ("http://localhost:1234/cb", "http://[::1]:1234/cb", "http://127.0.0.1/cb?x=1"):
        response = authorize(x, challenge, redirect_uri=uri)
        assert response.status_code == 302
        assert response.headers["Location"].startswith(uri)


# -- refresh -----------------------------------------------------------------------------


def test_refresh_rotates_and_the_spent_token_is_dead(x: XEmulator) -> None:
    first = x.issue_token()

    response = refresh(x, first["refresh_token"])
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == SCOPE
    assert me(x, second["access_token"]).status_code == 200

    reused = refresh(x, first["refresh_token"])
    assert (reused.status_code, reused.json()) == (400, TOKEN_INVALID)
    assert refresh(x, second["refresh_token"]).status_code == 200
    stats = x.stats
    assert (stats.refreshes, stats.reused_refresh_tokens, stats.invalid_refresh_tokens) == (2, 1, 1)


def test_unknown_refresh_token_is_invalid_but_not_a_reuse(x: XEmulator) -> None:
    response = refresh(x, "no-such-token")
    assert (response.status_code, response.json()) == (400, TOKEN_INVALID)
    assert (x.stats.invalid_refresh_tokens, x.stats.reused_refresh_tokens) == (1, 0)


def test_refresh_token_belongs_to_its_client(x: XEmulator) -> None:
    token = x.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID)
    response = refresh(x, token["refresh_token"], client_id=DEFAULT_CLIENT_ID)
    assert (response.status_code, response.json()) == (400, TOKEN_INVALID)
    ok = refresh(x, token["refresh_token"], client_id=None,
                 auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert ok.status_code == 200


def test_twenty_simultaneous_refreshes_of_one_token_let_exactly_one_win(x: XEmulator) -> None:
    token = x.issue_token()["refresh_token"]
    barrier = threading.Barrier(20)
    statuses: list[int] = []

    def race() -> None:
        with requests.Session() as session:
            session.get(x.url + "/emulator/stats")  # connect before the race starts
            barrier.wait()
            statuses.append(refresh(x, token, session=session).status_code)

    threads = [threading.Thread(target=race) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(statuses) == [200] + [400] * 19
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (1, 19)


def test_previous_access_token_survives_a_refresh_by_default(x: XEmulator) -> None:
    token = x.issue_token()
    assert refresh(x, token["refresh_token"]).status_code == 200
    assert me(x, token["access_token"]).status_code == 200


def test_invalidate_access_on_refresh_kills_the_previous_access_token(x: XEmulator) -> None:
    x.invalidate_access_on_refresh = True
    token = x.issue_token()
    new = refresh(x, token["refresh_token"]).json()
    assert me(x, token["access_token"]).status_code == 401
    assert me(x, new["access_token"]).status_code == 200


# -- client authentication ---------------------------------------------------------------


def test_confidential_client_must_authenticate_with_basic(x: XEmulator) -> None:
    token = x.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID)

    for auth in (None, (DEFAULT_CONFIDENTIAL_CLIENT_ID, "wrong-secret")):
        response = refresh(x, token["refresh_token"], client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID,
                           auth=auth)
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED_CLIENT)

    response = refresh(x, token["refresh_token"], client_id=None,
                       auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert response.status_code == 200
    assert x.stats.invalid_refresh_tokens == 0  # the 401s never looked at the token


def test_basic_credentials_are_percent_decoded(
    x_emulator_factory: Callable[..., XEmulator],
) -> None:
    client_id, secret = "app:with/odd id", "s3cr:t+&%=é"
    x = x_emulator_factory(clients={client_id: secret})
    token = x.issue_token(client_id=client_id)

    def refresh_with(header: str) -> requests.Response:
        return requests.post(x.token_url, headers={"Authorization": header},
                             data={"grant_type": "refresh_token",
                                   "refresh_token": token["refresh_token"]})

    raw = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    assert refresh_with(raw).status_code == 401
    assert refresh_with(basic(client_id, secret)).status_code == 200


def test_public_client_sends_client_id_in_the_body(x: XEmulator) -> None:
    token = x.issue_token()
    missing = refresh(x, token["refresh_token"], client_id=None)
    assert missing.status_code == 400
    assert missing.json() == {"error": "invalid_request",
                              "error_description": "Missing required parameter [client_id]."}
    # A public client has no secret to prove with Basic.
    with_basic = refresh(x, token["refresh_token"], client_id=None, auth=(DEFAULT_CLIENT_ID, ""))
    assert with_basic.status_code == 401
    assert refresh(x, token["refresh_token"]).status_code == 200


def test_token_endpoint_wants_a_form(x: XEmulator) -> None:
    token = x.issue_token()
    response = requests.post(x.token_url, json={"grant_type": "refresh_token",
                                                "refresh_token": token["refresh_token"],
                                                "client_id": DEFAULT_CLIENT_ID})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert refresh(x, token["refresh_token"]).status_code == 200


def test_unsupported_grant_type(x: XEmulator) -> None:
    response = requests.post(x.token_url, data={"grant_type": "client_credentials",
                                                "client_id": DEFAULT_CLIENT_ID})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


# -- access tokens and the API -----------------------------------------------------------


def test_expired_access_token_gets_a_401_problem(
    x_emulator_factory: Callable[..., XEmulator],
) -> None:
    x = x_emulator_factory(access_ttl=0.25)
    token = x.issue_token()
    assert token["expires_in"] == 0.25
    assert token["expires_at"] == pytest.approx(time.time() + 0.25, abs=0.2)
    time.sleep(0.3)

    response = me(x, token["access_token"])

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json() == UNAUTHORIZED
    x.access_ttl = 60  # a token that cannot run out in flight, on however busy a machine
    assert me(x, x.issue_token()["access_token"]).status_code == 200  # the live one passes
    assert (x.stats.api_requests, x.stats.unauthorized) == (2, 1)


def test_expire_access_token_and_access_ttl_at_runtime(x: XEmulator) -> None:
    token = x.issue_token()
    x.expire_access_token(token["access_token"])
    assert me(x, token["access_token"]).status_code == 401
    x.access_ttl = 60
    assert x.issue_token()["expires_in"] == 60
    with pytest.raises(KeyError):
        x.expire_access_token("no-such-token")


@pytest.mark.parametrize("headers", [{}, bearer("no-such-token"), {"Authorization": "Basic eDp5"}])
def test_api_needs_a_known_bearer_token(x: XEmulator, headers: dict[str, str]) -> None:
    response = requests.get(x.api_url + "/2/users/me", headers=headers)
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


def test_revoking_a_refresh_token_kills_the_pair(x: XEmulator) -> None:
    token = x.issue_token()
    response = requests.post(x.revoke_url, data={"token": token["refresh_token"],
                                                 "token_type_hint": "refresh_token",
                                                 "client_id": DEFAULT_CLIENT_ID})
    assert (response.status_code, response.json()) == (200, {"revoked": True})
    assert refresh(x, token["refresh_token"]).json() == TOKEN_INVALID
    assert me(x, token["access_token"]).status_code == 401
    assert (x.stats.revocations, x.stats.reused_refresh_tokens) == (1, 0)


def test_revoking_an_access_token_leaves_the_refresh_token(x: XEmulator) -> None:
    token = x.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID)
    response = requests.post(x.revoke_url, auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID,
                                                 DEFAULT_CLIENT_SECRET),
                             data={"token": token["access_token"],
                                   "token_type_hint": "access_token"})
    assert response.status_code == 200
    assert me(x, token["access_token"]).status_code == 401
    assert refresh(x, token["refresh_token"], client_id=None,
                   auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CLIENT_SECRET)).status_code == 200


def test_revoke_requires_a_token_and_a_client(x: XEmulator) -> None:
    token = x.issue_token()
    no_client = requests.post(x.revoke_url, data={"token": token["access_token"],
                                                  "token_type_hint": "access_token"})
    assert no_client.status_code == 400
    no_token = requests.post(x.revoke_url, data={"token_type_hint": "access_token",
                                                 "client_id": DEFAULT_CLIENT_ID})
    assert (no_token.status_code, no_token.json()["error"]) == (400, "invalid_request")
    bad_hint = requests.post(x.revoke_url, data={"token": token["access_token"],
                                                 "token_type_hint": "id_token",
                                                 "client_id": DEFAULT_CLIENT_ID})
    assert bad_hint.status_code == 400
    assert me(x, token["access_token"]).status_code == 200


def test_revoke_without_token_type_hint_finds_either_kind(x: XEmulator) -> None:
    # X's own examples leave token_type_hint out.
    first, second = x.issue_token(), x.issue_token()
    for sent in (first["refresh_token"], second["access_token"]):
        response = requests.post(x.revoke_url, data={"token": sent,
                                                     "client_id": DEFAULT_CLIENT_ID})
        assert (response.status_code, response.json()) == (200, {"revoked": True})
    assert refresh(x, first["refresh_token"]).json() == TOKEN_INVALID
    assert me(x, first["access_token"]).status_code == 401  # dies with its refresh token
    assert me(x, second["access_token"]).status_code == 401
    assert refresh(x, second["refresh_token"]).status_code == 200
    assert x.stats.revocations == 2


def test_revoke_all(x: XEmulator) -> None:
    token = x.issue_token()
    x.revoke_all()
    assert me(x, token["access_token"]).status_code == 401
    assert refresh(x, token["refresh_token"]).json() == TOKEN_INVALID


def test_users_me_needs_tweet_read_and_users_read(x: XEmulator) -> None:
    token = x.issue_token(scope="tweet.read offline.access")
    response = me(x, token["access_token"])
    assert (response.status_code, response.json()) == (403, {
        **FORBIDDEN,
        "detail": "Forbidden: this endpoint needs the scope users.read; the token has "
                  "tweet.read offline.access",
    })
    assert response.headers["Content-Type"] == "application/problem+json"
    assert x.stats.forbidden == 1
    bare = me(x, x.issue_token(scope="offline.access")["access_token"]).json()
    assert bare["detail"] == ("Forbidden: this endpoint needs the scopes tweet.read users.read; "
                              "the token has offline.access")


def test_users_me_reports_rate_limits(x: XEmulator) -> None:
    token = x.issue_token()
    first, second = me(x, token["access_token"]), me(x, token["access_token"])
    assert first.headers["x-rate-limit-limit"] == "75"
    assert first.headers["x-rate-limit-remaining"] == "74"
    assert second.headers["x-rate-limit-remaining"] == "73"
    assert int(first.headers["x-rate-limit-reset"]) > time.time()


def test_users_me_answers_for_the_token_user(
    x_emulator_factory: Callable[..., XEmulator],
) -> None:
    users = [{"id": "1", "name": "One", "username": "one"},
             {"id": "2", "name": "Two", "username": "two"}]
    x = x_emulator_factory(users=users)
    assert me(x, x.issue_token()["access_token"]).json()["data"]["username"] == "one"
    assert me(x, x.issue_token(user_id="2")["access_token"]).json()["data"]["username"] == "two"


def test_create_tweet(x: XEmulator) -> None:
    read_only = x.issue_token()["access_token"]
    writer = x.issue_token(scope="tweet.read tweet.write users.read")["access_token"]
    url = x.api_url + "/2/tweets"

    denied = requests.post(url, json={"text": "hello"}, headers=bearer(read_only))
    assert (denied.status_code, denied.json()) == (403, {
        **FORBIDDEN,
        "detail": "Forbidden: this endpoint needs the scope tweet.write; the token has "
                  "tweet.read users.read offline.access",
    })

    created = requests.post(url, json={"text": "hello"}, headers=bearer(writer))
    assert created.status_code == 201
    assert created.json()["data"]["text"] == "hello"
    assert created.json()["data"]["id"].isdigit()

    duplicate = requests.post(url, json={"text": "hello"}, headers=bearer(writer))
    assert (duplicate.status_code, duplicate.json()) == (403, DUPLICATE)
    assert requests.post(url, json={}, headers=bearer(writer)).status_code == 400


def test_echo_returns_the_request_whole(x: XEmulator) -> None:
    token = x.issue_token()["access_token"]
    text = requests.put(x.api_url + "/2/emulator/echo?a=1&b=two", data="héllo".encode(),
                        headers={**bearer(token), "Content-Type": "text/plain"}).json()
    assert text == {
        "method": "PUT", "path": "/2/emulator/echo", "query": "a=1&b=two",
        "content_type": "text/plain", "body_length": 6,
        "body_sha256": hashlib.sha256("héllo".encode()).hexdigest(), "body": "héllo",
    }

    blob = os.urandom(100_000)
    binary = requests.post(x.api_url + "/2/emulator/echo", data=blob, headers=bearer(token)).json()
    assert (binary["body_length"], binary["body"]) == (100_000, None)
    assert binary["body_sha256"] == hashlib.sha256(blob).hexdigest()

    chunked = requests.post(x.api_url + "/2/emulator/echo", headers=bearer(token),
                            data=(part for part in [b"first,", b"", b"second"])).json()
    assert chunked["body"] == "first,second"


@pytest.mark.parametrize("kind, expected", [
    ("plain", FORBIDDEN),
    ("duplicate", DUPLICATE),
    ("client-forbidden", {
        "client_id": DEFAULT_CLIENT_ID,
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use"
                  " keys and tokens from a Twitter developer App that is attached to a Project."
                  " You can create a project via the developer portal.",
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": "https://api.twitter.com/2/problems/client-forbidden",
    }),
    ("unsupported-authentication", {
        "title": "Unsupported Authentication",
        "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this"
                  " endpoint.  Supported authentication types are [OAuth 1.0a User Context,"
                  " OAuth 2.0 User Context].",
        "type": "https://api.twitter.com/2/problems/unsupported-authentication",
        "status": 403,
    }),
])
def test_forbidden_kinds(x: XEmulator, kind: str, expected: dict[str, Any]) -> None:
    url = f"{x.api_url}/2/emulator/forbidden/{kind}"
    assert requests.get(url).status_code == 401
    response = requests.get(url, headers=bearer(x.issue_token()["access_token"]))
    assert (response.status_code, response.json()) == (403, expected)
    assert response.headers["Content-Type"] == "application/problem+json"


def test_redirect_helper(x: XEmulator) -> None:
    url = x.api_url + "/2/emulator/redirect"
    target = x.api_url + "/2/users/me"
    assert requests.get(url, params={"to": target}, allow_redirects=False).status_code == 401
    response = requests.get(url, params={"to": target}, allow_redirects=False,
                            headers=bearer(x.issue_token()["access_token"]))
    assert (response.status_code, response.headers["Location"]) == (302, target)


def test_unknown_path_is_a_404_problem(x: XEmulator) -> None:
    response = requests.get(x.api_url + "/2/nothing/here")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 404


# -- test controls -----------------------------------------------------------------------


def test_failing_token_endpoint_leaves_the_refresh_token_valid(x: XEmulator) -> None:
    token = x.issue_token()
    x.fail_token_endpoint(times=2)
    for _ in range(2):
        failed = refresh(x, token["refresh_token"])
        assert failed.status_code == 503
        assert failed.json()["error"] == "temporarily_unavailable"

    assert refresh(x, token["refresh_token"]).status_code == 200
    stats = x.stats
    assert (stats.token_requests, stats.refreshes, stats.invalid_refresh_tokens) == (3, 1, 0)


def test_failing_token_endpoint_with_a_custom_body(x: XEmulator) -> None:
    x.fail_token_endpoint(status=502, body="<html>Bad Gateway</html>", content_type="text/html")
    response = refresh(x, x.issue_token()["refresh_token"])
    assert (response.status_code, response.text) == (502, "<html>Bad Gateway</html>")
    assert response.headers["Content-Type"] == "text/html"


def test_token_delay_slows_only_the_token_endpoint(x: XEmulator) -> None:
    token = x.issue_token()
    x.token_delay = 0.5
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(refresh(x, token["refresh_token"])))
    started = time.monotonic()
    slow.start()
    while x.stats.token_requests == 0:  # the token endpoint has it, and sleeps
        time.sleep(0.005)
    assert me(x, token["access_token"]).status_code == 200
    assert slow.is_alive() and not answers  # the API answered while the token endpoint slept
    slow.join(5)
    assert time.monotonic() - started >= 0.5
    assert answers[0].status_code == 200


def test_stats_endpoint_and_reset(x: XEmulator) -> None:
    token = x.issue_token()
    me(x, token["access_token"])
    refresh(x, token["refresh_token"])
    counts = requests.get(x.url + "/emulator/stats").json()
    assert counts == {**EmulatorStats().as_dict(), "api_requests": 1, "token_requests": 1,
                      "refreshes": 1}
    assert counts == x.stats.as_dict()

    assert requests.post(x.url + "/emulator/reset").json() == EmulatorStats().as_dict()
    assert x.stats == EmulatorStats()
    me(x, token["access_token"])
    x.reset_stats()
    assert x.stats.api_requests == 0


# -- the clock ---------------------------------------------------------------------------
# Lifetimes here are X's real ones (two hours, 30 seconds): only a moved clock can end them.


def test_the_system_clock_is_the_default(x: XEmulator) -> None:
    assert x.clock is SYSTEM_CLOCK


def test_an_access_token_expires_when_a_fake_clock_reaches_access_ttl() -> None:
    clock = FakeClock()
    with XEmulator(clock=clock, access_ttl=7200) as x:
        token = x.issue_token()
        assert token["expires_at"] == clock.time() + 7200
        assert me(x, token["access_token"]).status_code == 200

        clock.advance(7199)
        assert me(x, token["access_token"]).status_code == 200
        clock.advance(1)
        response = me(x, token["access_token"])

        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
        renewed = refresh(x, token["refresh_token"]).json()  # the refresh token outlives it
        assert me(x, renewed["access_token"]).status_code == 200
        assert (x.stats.api_requests, x.stats.unauthorized) == (4, 1)


def test_a_code_expires_when_a_fake_clock_reaches_code_ttl() -> None:
    clock = FakeClock()
    with XEmulator(clock=clock, code_ttl=30) as x:
        first, first_verifier = login_code(x)
        second, second_verifier = login_code(x)

        clock.advance(29)
        assert exchange(x, first, first_verifier).status_code == 200
        clock.advance(1)
        response = exchange(x, second, second_verifier)

        assert (response.status_code, response.json()) == (400, CODE_INVALID)
        assert x.stats.exchanges == 1


def test_expire_access_token_and_new_tokens_follow_a_fake_clock() -> None:
    clock = FakeClock()
    with XEmulator(clock=clock, access_ttl=60) as x:
        clock.advance(1000)
        token = x.issue_token()
        assert token["expires_at"] == clock.time() + 60
        x.expire_access_token(token["access_token"])
        assert me(x, token["access_token"]).status_code == 401


def test_rate_limit_windows_follow_a_fake_clock() -> None:
    clock = FakeClock(start=1_800_000_000)
    with XEmulator(clock=clock) as x:
        token = x.issue_token()["access_token"]
        first, second = me(x, token), me(x, token)
        assert first.headers["x-rate-limit-reset"] == str(1_800_000_000 + 15 * 60)
        assert second.headers["x-rate-limit-remaining"] == "73"

        clock.advance(15 * 60)
        third = me(x, token)

        assert third.headers["x-rate-limit-remaining"] == "74"
        assert third.headers["x-rate-limit-reset"] == str(1_800_000_000 + 2 * 15 * 60)


TOO_MANY = {"title": "Too Many Requests", "type": "about:blank", "status": 429,
            "detail": "Too Many Requests"}


def test_users_me_answers_429_past_75_calls_when_limits_are_enforced() -> None:
    clock = FakeClock(start=1_800_000_000)
    with XEmulator(clock=clock, enforce_rate_limits=True) as x:
        token, other = x.issue_token()["access_token"], x.issue_token()["access_token"]
        answers = [me(x, token) for _ in range(75)]
        assert {a.status_code for a in answers} == {200}
        assert answers[-1].headers["x-rate-limit-remaining"] == "0"

        clock.advance(15 * 60 - 1)
        limited = me(x, other)  # another token of the same user and app: the same window

        assert (limited.status_code, limited.json()) == (429, TOO_MANY)
        assert limited.headers["Content-Type"] == "application/problem+json"
        assert limited.headers["x-rate-limit-limit"] == "75"
        assert limited.headers["x-rate-limit-remaining"] == "0"
        assert limited.headers["x-rate-limit-reset"] == str(1_800_000_000 + 15 * 60)
        clock.advance(1)  # the window rolls over on the emulator's clock, no sleeping
        again = me(x, token)
        assert again.status_code == 200
        assert again.headers["x-rate-limit-remaining"] == "74"


def test_rate_limits_are_per_user_and_app_and_can_be_switched_at_runtime(
    x_emulator_factory: Callable[..., XEmulator],
) -> None:
    x = x_emulator_factory(users=[{"id": "1", "name": "One", "username": "one"},
                                  {"id": "2", "name": "Two", "username": "two"}])
    assert x.enforce_rate_limits is False
    token = x.issue_token(user_id="1")["access_token"]
    for _ in range(76):
        answer = me(x, token)
    assert (answer.status_code, answer.headers["x-rate-limit-remaining"]) == (200, "0")
    x.enforce_rate_limits = True
    assert me(x, token).status_code == 429
    assert me(x, x.issue_token(user_id="2")["access_token"]).status_code == 200
    other_app = x.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID, user_id="1")
    assert me(x, other_app["access_token"]).status_code == 200


# -- the server --------------------------------------------------------------------------


def test_keep_alive_connection_survives_every_kind_of_answer(x: XEmulator) -> None:
    token = x.issue_token()["access_token"]
    connection = http.client.HTTPConnection("127.0.0.1", int(x.url.rsplit(":", 1)[1]), timeout=5)
    requests_to_send = [
        ("GET", "/2/users/me", {"Authorization": f"Bearer {token}"}, None, 200),
        ("GET", "/2/users/me", {}, None, 401),
        ("GET", "/nowhere", {}, None, 404),
        ("POST", "/2/oauth2/token", {"Content-Type": "application/json"}, b"{}", 400),
        ("DELETE", "/2/users/me", {}, None, 405),
        ("POST", "/2/emulator/echo", {"Authorization": f"Bearer {token}"}, b"x" * 5000, 200),
        ("GET", "/i/oauth2/authorize?client_id=nobody", {}, None, 400),
    ]
    for method, path, headers, body, status in requests_to_send:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == status, path
        assert len(response.read()) == int(response.headers["Content-Length"])
        assert not response.will_close
    connection.close()


def test_stop_closes_connections_and_start_serves_the_same_url_again() -> None:
    emulator = XEmulator().start()
    token = emulator.issue_token()["access_token"]
    session = requests.Session()
    assert session.get(emulator.api_url + "/2/users/me", headers=bearer(token)).ok
    url = emulator.url

    emulator.stop()
    emulator.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/emulator/stats", timeout=2)

    with emulator:
        assert emulator.url == url
        assert session.get(emulator.api_url + "/2/users/me", headers=bearer(token)).ok
    session.close()


def test_secrets_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="refresher.testing")
    with XEmulator() as x:
        code, verifier = login_code(x, client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID)
        token = exchange(x, code, verifier, client_id=None,
                         auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CLIENT_SECRET)).json()
        refresh(x, token["refresh_token"], client_id=None,
                auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CLIENT_SECRET))
        refresh(x, token["refresh_token"], client_id=None,
                auth=(DEFAULT_CONFIDENTIAL_CLIENT_ID, DEFAULT_CLIENT_SECRET))
        me(x, token["access_token"])
        requests.get(x.api_url + "/2/emulator/echo", params={"t": token["access_token"]},
                     headers=bearer(token["access_token"]))
    assert "/2/oauth2/token" in caplog.text  # requests are logged...
    for secret in (code, verifier, token["access_token"], token["refresh_token"],
                   DEFAULT_CLIENT_SECRET):
        assert secret not in caplog.text  # ...but nothing that grants access


@pytest.mark.integration
def test_command_line_server_prints_its_endpoints_and_serves() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root),
                                                                     os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "refresher.testing", "--port", "0", "--access-ttl", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root,
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        assert info["token_url"] == info["url"] + "/2/oauth2/token"
        assert info["authorize_url"] == info["url"] + "/i/oauth2/authorize"
        assert info["revoke_url"] == info["url"] + "/2/oauth2/revoke"
        assert info["api_url"] == info["url"]
        assert (info["client_id"], info["confidential_client_id"]) == (
            DEFAULT_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_ID)
        assert DEFAULT_CLIENT_SECRET not in json.dumps(info)  # no secret in any output

        verifier, challenge = pkce()
        location = requests.get(info["authorize_url"], allow_redirects=False, params={
            "response_type": "code", "client_id": info["client_id"], "redirect_uri": REDIRECT_URI,
            "scope": SCOPE, "state": "s", "code_challenge": challenge,
            "code_challenge_method": "S256",
        }).headers["Location"]
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]
        token = requests.post(info["token_url"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier, "client_id": info["client_id"],
        }).json()
        assert token["expires_in"] == 60
        response = me_at(info["api_url"], token["access_token"])
        assert response.json()["data"]["username"] == "emulated_user"
        assert requests.get(info["url"] + "/emulator/stats").json()["api_requests"] == 1
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "/2/users/me" in stderr
    assert token["access_token"] not in stderr


@pytest.mark.integration
def test_importing_refresher_testing_does_not_import_pytest() -> None:
    root = Path(__file__).resolve().parents[1]
    code = "import sys, refresher.testing; assert 'pytest' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True,
                   env={**os.environ, "PYTHONPATH": str(root)})


# -- pytest fixtures ---------------------------------------------------------------------


def test_x_emulator_fixture_is_started(x_emulator: XEmulator) -> None:
    assert requests.get(x_emulator.url + "/emulator/stats").ok


def test_x_emulator_factory_fixture_passes_arguments(
    x_emulator_factory: Callable[..., XEmulator],
) -> None:
    one, two = x_emulator_factory(access_ttl=5), x_emulator_factory()
    assert one.url != two.url
    assert one.issue_token()["expires_in"] == 5
    assert two.issue_token()["expires_in"] == 7200
