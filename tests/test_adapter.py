"""RefreshingAdapter: which 401/403 answers cause a refresh, and what a replay sends."""

from __future__ import annotations

import hashlib
import io
import json
import time

import pytest
import requests

from refresher import MemoryTokenStore

# -- 403: at most one refresh, none for problems X documents as not about the token ------

def _old_token(x):
    """A valid emulator token that the client believes is in the second half of its life."""
    token = x.issue_token()
    token["expires_at"] = time.time() + 600  # 600 s left of a 7200 s lifetime
    return token


def test_five_calls_to_an_always_403_endpoint_cause_at_most_one_refresh(x_emulator,
                                                                         make_session):
    session = make_session(token=_old_token(x_emulator))
    for _ in range(5):
        response = session.get(x_emulator.api_url + "/2/emulator/forbidden/plain")
        assert response.status_code == 403
    assert x_emulator.stats.refreshes == 1  # the old token got one chance, then no more


def test_403_for_a_young_token_does_not_refresh(x_emulator, make_session) -> None:
    session = make_session()  # just issued: a 403 cannot be about its age
    for _ in range(3):
        assert session.get(x_emulator.api_url + "/2/emulator/forbidden/plain").status_code == 403
    assert x_emulator.stats.refreshes == 0


@pytest.mark.parametrize("kind", ["client-forbidden", "unsupported-authentication"])
def test_403_problems_that_are_not_about_the_token_cause_no_refresh(x_emulator, make_session,
                                                                     kind):
    session = make_session(token=_old_token(x_emulator))
    for _ in range(3):
        response = session.get(x_emulator.api_url + f"/2/emulator/forbidden/{kind}")
        assert response.status_code == 403
        assert response.json()["type"].endswith(kind)
    assert x_emulator.stats.refreshes == 0


def test_duplicate_tweet_403_rotates_the_token_at_most_once(x_emulator, make_session) -> None:
    token = x_emulator.issue_token(scope="tweet.read tweet.write users.read offline.access")
    token["expires_at"] = time.time() + 600
    session = make_session(token=token)
    first = session.post(x_emulator.api_url + "/2/tweets", json={"text": "hello"})
    assert first.status_code == 201
    for _ in range(4):
        again = session.post(x_emulator.api_url + "/2/tweets", json={"text": "hello"})
        assert again.status_code == 403
        assert "duplicate content" in again.json()["detail"]
    assert x_emulator.stats.refreshes <= 1


def test_refresh_status_codes_is_a_knob(x_emulator, make_session) -> None:
    session = make_session(refresh_status_codes=(401,), token=_old_token(x_emulator))
    assert session.get(x_emulator.api_url + "/2/emulator/forbidden/plain").status_code == 403
    assert x_emulator.stats.refreshes == 0


# -- the replay is the same request ----------------------------------------------------

def _expire(x, session):
    x.expire_access_token(session.token["access_token"])


def _echoed(response):
    assert response.status_code == 200, response.text
    return response.json()


def test_json_body_is_replayed_whole(x_emulator, make_session) -> None:
    session = make_session()
    _expire(x_emulator, session)
    payload = {"text": "héllo", "list": list(range(100))}
    body = _echoed(session.post(x_emulator.api_url + "/2/emulator/echo", json=payload))
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 1
    assert json.loads(body["body"]) == payload
    assert body["content_type"].startswith("application/json")


def test_form_body_is_replayed_whole(x_emulator, make_session) -> None:
    session = make_session()
    _expire(x_emulator, session)
    body = _echoed(session.put(x_emulator.api_url + "/2/emulator/echo?q=1",
                               data={"a": "1", "b": "two words"}))
    assert body["method"] == "PUT" and body["query"] == "q=1"
    assert body["body"] == "a=1&b=two+words"
    assert x_emulator.stats.refreshes == 1


def test_seekable_file_body_is_rewound_and_replayed_whole(x_emulator, make_session) -> None:
    session = make_session()
    _expire(x_emulator, session)
    data = bytes(range(256)) * 1024  # 256 KiB of "media"
    body = _echoed(session.post(x_emulator.api_url + "/2/emulator/echo", data=io.BytesIO(data)))
    assert body["body_length"] == len(data)
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert x_emulator.stats.refreshes == 1


def test_file_body_from_the_middle_is_replayed_from_where_it_started(x_emulator, make_session,
                                                                     tmp_path):
    path = tmp_path / "media.bin"
    path.write_bytes(b"HEADER" + b"x" * 10_000)
    session = make_session()
    _expire(x_emulator, session)
    with open(path, "rb") as handle:
        handle.seek(6)
        body = _echoed(session.post(x_emulator.api_url + "/2/emulator/echo", data=handle))
    assert body["body_length"] == 10_000
    assert body["body_sha256"] == hashlib.sha256(b"x" * 10_000).hexdigest()


def test_multipart_upload_is_replayed_whole(x_emulator, make_session) -> None:
    session = make_session()
    _expire(x_emulator, session)
    body = _echoed(session.post(x_emulator.api_url + "/2/emulator/echo",
                                files={"media": ("a.png", io.BytesIO(b"\x89PNG" * 500))}))
    assert body["content_type"].startswith("multipart/form-data")
    assert body["body_length"] > 2000
    assert x_emulator.stats.refreshes == 1


def test_generator_body_is_not_resent_but_the_store_has_the_fresh_token(x_emulator,
                                                                        make_session, me_url):
    store = MemoryTokenStore()
    session = make_session(store=store)
    old = session.token["access_token"]
    _expire(x_emulator, session)

    def chunks():
        yield b"part one, "
        yield b"part two"

    response = session.post(x_emulator.api_url + "/2/emulator/echo", data=chunks())
    assert response.status_code == 401
    assert x_emulator.stats.refreshes == 1
    assert store.load("default")["access_token"] != old
    assert session.get(me_url(x_emulator)).status_code == 200


# -- the token stays with its host -------------------------------------------------------

def test_redirect_to_another_host_carries_no_token_and_its_401_refreshes_nothing(
        x_emulator_factory, make_session):
    home = x_emulator_factory()
    elsewhere = x_emulator_factory()  # another host: another port on localhost vs 127.0.0.1
    other = elsewhere.url.replace("127.0.0.1", "localhost") + "/2/users/me"
    session = make_session(emulator=home)
    response = session.get(home.api_url + "/2/emulator/redirect", params={"to": other})
    assert response.status_code == 401  # the other host saw no token of ours
    assert response.history and response.history[0].status_code == 302
    assert "Authorization" not in response.request.headers
    assert home.stats.refreshes == 0
    assert elsewhere.stats.unauthorized == 1


def test_401_to_a_request_with_someone_elses_token_refreshes_nothing(x_emulator, make_session,
                                                                      me_url):
    session = make_session()
    adapter = session.get_adapter(x_emulator.api_url)
    foreign = requests.Request("GET", me_url(x_emulator),
                               headers={"Authorization": "Bearer not-ours"}).prepare()
    assert adapter.send(foreign).status_code == 401
    assert x_emulator.stats.refreshes == 0


def test_withhold_token_sends_none(x_emulator, make_session, me_url) -> None:
    session = make_session()
    response = session.get(me_url(x_emulator), withhold_token=True)
    assert response.status_code == 401
    assert "Authorization" not in response.request.headers
    assert x_emulator.stats.refreshes == 0


def test_403_without_expiry_information_refreshes_at_most_once(x_emulator, make_session):
    token = x_emulator.issue_token()
    del token["expires_at"], token["expires_in"]  # nothing to judge the token's age by
    session = make_session(token=token)
    for _ in range(5):
        assert session.get(x_emulator.api_url + "/2/emulator/forbidden/plain").status_code == 403
    assert x_emulator.stats.refreshes == 1


def test_a_403_late_in_a_refreshed_tokens_life_may_refresh_it_again(x_emulator, make_session):
    session = make_session(token=_old_token(x_emulator))
    forbidden = x_emulator.api_url + "/2/emulator/forbidden/plain"
    session.get(forbidden)
    assert x_emulator.stats.refreshes == 1
    # ...an hour and a half later, the refreshed token is old in its turn:
    session.coordinator._token["expires_at"] = time.time() + 1800
    session.get(forbidden)
    session.get(forbidden)
    assert x_emulator.stats.refreshes == 2
