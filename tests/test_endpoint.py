"""TokenEndpoint in isolation: client authentication and what each answer means.

Narrow unit cases with ``responses``; the same paths run over real HTTP in the other tests.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import pytest
import responses

from refresher import ReauthorizationRequired, RefreshError
from refresher.endpoint import TokenEndpoint

URL = "https://api.x.com/2/oauth2/token"


def _form(call) -> dict:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


@responses.activate
def test_public_client_sends_client_id_in_the_form_and_no_basic() -> None:
    responses.post(URL, json={"access_token": "A", "refresh_token": "R", "expires_in": 7200,
                              "token_type": "bearer", "scope": "tweet.read"})
    token = TokenEndpoint(URL, "cid").refresh("old")
    call = responses.calls[0]
    assert _form(call) == {"grant_type": "refresh_token", "refresh_token": "old",
                           "client_id": "cid"}
    assert "Authorization" not in call.request.headers
    assert token["refresh_token"] == "R" and token["expires_at"] > 0


@responses.activate
def test_confidential_client_sends_percent_encoded_basic() -> None:
    responses.post(URL, json={"access_token": "A", "refresh_token": "R", "expires_in": 7200})
    TokenEndpoint(URL, "id:x", "s3cr+t/=").refresh("old")
    call = responses.calls[0]
    header = call.request.headers["Authorization"]
    assert base64.b64decode(header.split()[1]).decode() == "id%3Ax:s3cr%2Bt%2F%3D"
    assert "client_id" not in _form(call)


@pytest.mark.parametrize("body", [
    {"error": "invalid_request", "error_description": "Value passed for the token was invalid."},
    {"error": "invalid_grant", "error_description": "whatever"},
])
@responses.activate
def test_spent_refresh_token_answers_mean_reauthorization(body) -> None:
    responses.post(URL, status=400, json=body)
    with pytest.raises(ReauthorizationRequired):
        TokenEndpoint(URL, "cid").refresh("old")


@responses.activate
def test_other_invalid_request_is_a_plain_refresh_error() -> None:
    responses.post(URL, status=400, json={"error": "invalid_request",
                                          "error_description": "Missing required parameter"})
    with pytest.raises(RefreshError) as raised:
        TokenEndpoint(URL, "cid").refresh("old")
    assert not isinstance(raised.value, ReauthorizationRequired)
    assert raised.value.error == "invalid_request"
    assert raised.value.response is not None and raised.value.response.status_code == 400


@responses.activate
def test_endpoint_that_does_not_rotate_keeps_the_old_refresh_token() -> None:
    responses.post(URL, json={"access_token": "A", "expires_in": 60})
    assert TokenEndpoint(URL, "cid").refresh("old")["refresh_token"] == "old"


@responses.activate
def test_429_is_retried_then_reported() -> None:
    responses.post(URL, status=429, json={"title": "Too Many Requests"})
    with pytest.raises(RefreshError, match="HTTP 429"):
        TokenEndpoint(URL, "cid", retries=2, backoff=0.001).refresh("old")
    assert len(responses.calls) == 3


def test_plain_http_to_a_remote_token_url_is_refused(monkeypatch) -> None:
    from oauthlib.oauth2 import InsecureTransportError

    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    with pytest.raises(InsecureTransportError):
        TokenEndpoint("http://api.x.com/2/oauth2/token", "cid").refresh("old")


@responses.activate
def test_retries_stop_at_the_deadline() -> None:
    responses.post(URL, status=503, json={"error": "temporarily_unavailable"})
    endpoint = TokenEndpoint(URL, "cid", retries=10, backoff=0.2, deadline=1.0)
    with pytest.raises(RefreshError, match="HTTP 503"):
        endpoint.refresh("old")
    assert len(responses.calls) <= 3  # 0.2 + 0.4 s of backoff fit in 1 s; 0.8 more do not


def test_the_whole_grant_deadline_is_well_under_the_redis_lock_lifetime() -> None:
    from refresher.endpoint import DEFAULT_DEADLINE, DEFAULT_TIMEOUT
    from refresher.stores.redis import DEFAULT_LOCK_TTL

    assert DEFAULT_TIMEOUT <= DEFAULT_DEADLINE <= DEFAULT_LOCK_TTL / 2


def test_revoke_raises_its_own_error_not_a_refresh_error(x_emulator) -> None:
    from refresher import RefreshError, RevokeError
    from refresher.endpoint import TokenEndpoint
    from refresher.testing.net import free_port

    endpoint = TokenEndpoint(x_emulator.token_url, "no-such-client")
    with pytest.raises(RevokeError) as refused:
        endpoint.revoke(x_emulator.revoke_url, "rt-secret-value")
    assert not isinstance(refused.value, RefreshError)
    assert refused.value.response is not None and "rt-secret-value" not in str(refused.value)
    closed = free_port()  # a port nobody listens on
    with pytest.raises(RevokeError, match="revoke URL") as unreachable:
        endpoint.revoke(f"http://127.0.0.1:{closed}/2/oauth2/revoke", "rt-secret-value")
    assert "stored token is kept" not in str(unreachable.value)


def test_a_granted_lifetime_counts_from_when_the_request_left(x_emulator) -> None:
    import time

    from refresher.endpoint import TokenEndpoint
    from refresher.testing import DEFAULT_CLIENT_ID

    seed = x_emulator.issue_token()
    x_emulator.token_delay = 0.3  # X issues the pair, then the answer takes a while
    sent = time.time()
    granted = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID).refresh(
        seed["refresh_token"])
    received = time.time()
    assert received - sent >= 0.3
    # Counted from receipt, expires_at would be at least received + expires_in.
    assert granted["expires_at"] < received + granted["expires_in"]
