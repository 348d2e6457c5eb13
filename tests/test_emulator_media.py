"""The emulator's v2 media upload (INIT, APPEND, FINALIZE), over real loopback HTTP, and a
multipart APPEND replayed whole by a RefreshingSession after X refused its expired token."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from refresher import MemoryTokenStore, RefreshingSession
from refresher.testing import DEFAULT_CLIENT_ID, FakeClock, XEmulator

WRITER = "tweet.read users.read media.write offline.access"
UNAUTHORIZED = {"title": "Unauthorized", "type": "about:blank", "status": 401,
                "detail": "Unauthorized"}
# Bytes a naive multipart parser would trip on: CRLFs, dashes, a boundary-like line.
CHUNK = b"\r\n--\r\n\r\n" + os.urandom(4096) + b"\r\n--boundary--\r\n"


@pytest.fixture
def x() -> Iterator[XEmulator]:
    with XEmulator() as emulator:
        yield emulator


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(x: XEmulator, token: str, *, params: dict[str, Any] | None = None,
           data: dict[str, Any] | None = None, chunk: bytes | None = None) -> requests.Response:
    files = {"media": ("chunk", chunk, "application/octet-stream")} if chunk is not None else None
    return requests.post(x.api_url + "/2/media/upload", params=params, data=data, files=files,
                         headers=bearer(token), timeout=10)


def init(x: XEmulator, token: str, total: int, media_type: str = "image/png") -> str:
    response = upload(x, token, params={"command": "INIT", "total_bytes": total,
                                        "media_type": media_type})
    assert response.status_code == 200, response.text
    media_id: str = response.json()["data"]["id"]
    return media_id


def append(x: XEmulator, token: str, media_id: str, index: int,
           chunk: bytes) -> requests.Response:
    return upload(x, token, data={"command": "APPEND", "media_id": media_id,
                                  "segment_index": index}, chunk=chunk)


def finalize(x: XEmulator, token: str, media_id: str) -> requests.Response:
    return upload(x, token, params={"command": "FINALIZE", "media_id": media_id})


def problem_parameter(response: requests.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["title"] == "Invalid Request"
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert response.headers["Content-Type"] == "application/problem+json"
    (name,) = body["errors"][0]["parameters"]
    return str(name)


# -- the happy path ---------------------------------------------------------------------


def test_init_append_finalize_as_x_answers_them(x: XEmulator) -> None:
    token = x.issue_token(scope=WRITER)["access_token"]
    first, second = CHUNK, b"tail" * 100
    response = upload(x, token, params={"command": "INIT", "media_type": "video/mp4",
                                        "total_bytes": len(first) + len(second)})
    assert response.status_code == 200
    data = response.json()["data"]
    media_id = data["id"]
    assert media_id.isdigit()
    assert data == {"id": media_id, "media_key": f"7_{media_id}", "expires_after_secs": 86400}

    appended = append(x, token, media_id, 0, first)
    assert appended.status_code == 200
    assert set(appended.json()["data"]) == {"expires_at"}
    assert append(x, token, media_id, 1, second).status_code == 200

    done = finalize(x, token, media_id)
    assert done.status_code == 200
    media = done.json()["data"]
    assert 86000 < media.pop("expires_after_secs") <= 86400  # what is left of the day
    assert media == {"id": media_id, "media_key": f"7_{media_id}",
                     "size": len(first) + len(second)}
    assert x.media_appends(media_id) == [(0, first), (1, second)]


def test_init_and_finalize_take_a_form_body_too(x: XEmulator) -> None:
    token = x.issue_token(scope=WRITER)["access_token"]
    response = upload(x, token, data={"command": "INIT", "total_bytes": "3",
                                      "media_type": "image/gif"})
    media_id = response.json()["data"]["id"]
    assert response.json()["data"]["media_key"] == f"16_{media_id}"
    assert append(x, token, media_id, 0, b"GIF").status_code == 200
    done = upload(x, token, data={"command": "FINALIZE", "media_id": media_id})
    assert (done.status_code, done.json()["data"]["size"]) == (200, 3)


def test_a_segment_sent_again_replaces_the_first_and_is_recorded_twice(x: XEmulator) -> None:
    token = x.issue_token(scope=WRITER)["access_token"]
    media_id = init(x, token, 4)
    append(x, token, media_id, 0, b"oops")
    append(x, token, media_id, 0, b"good")
    assert finalize(x, token, media_id).json()["data"]["size"] == 4
    assert x.media_appends(media_id) == [(0, b"oops"), (0, b"good")]


# -- refusals ---------------------------------------------------------------------------


def test_media_write_is_required_and_named(x: XEmulator) -> None:
    token = x.issue_token()["access_token"]  # tweet.read users.read offline.access
    response = upload(x, token, params={"command": "INIT", "total_bytes": 1,
                                        "media_type": "image/png"})
    assert (response.status_code, response.json()) == (403, {
        "title": "Forbidden", "type": "about:blank", "status": 403,
        "detail": "Forbidden: this endpoint needs the scope media.write; the token has "
                  "tweet.read users.read offline.access",
    })
    assert x.stats.forbidden == 1


def test_a_bad_or_expired_token_gets_x_401(x: XEmulator) -> None:
    token = x.issue_token(scope=WRITER)["access_token"]
    media_id = init(x, token, len(CHUNK))
    x.expire_access_token(token)
    for sent in (token, "no-such-token"):
        response = append(x, sent, media_id, 0, CHUNK)
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert x.media_appends(media_id) == []  # nothing recorded from a refused request
    assert requests.post(x.api_url + "/2/media/upload", timeout=10).status_code == 401


@pytest.mark.parametrize(("params", "parameter"), [
    ({}, "command"),
    ({"command": "init", "total_bytes": "1", "media_type": "image/png"}, "command"),
    ({"command": "STATUS"}, "command"),
    ({"command": "INIT", "media_type": "image/png"}, "total_bytes"),
    ({"command": "INIT", "total_bytes": "0", "media_type": "image/png"}, "total_bytes"),
    ({"command": "INIT", "total_bytes": "-5", "media_type": "image/png"}, "total_bytes"),
    ({"command": "INIT", "total_bytes": str(513 * 2**20), "media_type": "video/mp4"},
     "total_bytes"),
    ({"command": "INIT", "total_bytes": "1"}, "media_type"),
    ({"command": "INIT", "total_bytes": "1", "media_type": "application/zip"}, "media_type"),
    ({"command": "FINALIZE"}, "media_id"),
    ({"command": "FINALIZE", "media_id": "123"}, "media_id"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else v)
def test_bad_parameters_get_x_invalid_request_problem(x: XEmulator, params: dict[str, str],
                                                      parameter: str) -> None:
    token = x.issue_token(scope=WRITER)["access_token"]
    assert problem_parameter(upload(x, token, params=params)) == parameter


def test_append_refusals(x: XEmulator) -> None:
    token = x.issue_token(scope=WRITER)["access_token"]
    media_id = init(x, token, 1)
    assert problem_parameter(append(x, token, media_id, 1000, b"x")) == "segment_index"
    assert problem_parameter(append(x, token, media_id, -1, b"x")) == "segment_index"
    no_chunk = upload(x, token, data={"command": "APPEND", "media_id": media_id,
                                      "segment_index": 0})
    assert problem_parameter(no_chunk) == "media"
    assert problem_parameter(append(x, token, media_id, 0, b"x" * (5 * 2**20 + 1))) == "media"
    assert problem_parameter(append(x, token, "999", 0, b"x")) == "media_id"
    assert x.media_appends(media_id) == []


def test_an_upload_belongs_to_its_user(x_emulator_factory: Any) -> None:
    x = x_emulator_factory(users=[{"id": "1", "name": "One", "username": "one"},
                                  {"id": "2", "name": "Two", "username": "two"}])
    mine = x.issue_token(scope=WRITER, user_id="1")["access_token"]
    theirs = x.issue_token(scope=WRITER, user_id="2")["access_token"]
    media_id = init(x, mine, 1)
    assert problem_parameter(append(x, theirs, media_id, 0, b"x")) == "media_id"
    assert problem_parameter(finalize(x, theirs, media_id)) == "media_id"


def test_finalize_wants_every_byte_and_closes_the_upload(x: XEmulator) -> None:
    token = x.issue_token(scope=WRITER)["access_token"]
    media_id = init(x, token, 10)
    append(x, token, media_id, 0, b"12345")
    short = finalize(x, token, media_id)
    assert problem_parameter(short) == "media_id"
    assert short.json()["errors"][0]["message"] == (
        "Segments do not add up to provided total file size.")
    append(x, token, media_id, 1, b"67890")
    assert finalize(x, token, media_id).status_code == 200
    assert problem_parameter(append(x, token, media_id, 2, b"more")) == "media_id"
    assert finalize(x, token, media_id).status_code == 200  # the media object, again


def test_an_upload_expires_after_a_day_on_the_emulator_clock() -> None:
    clock = FakeClock()
    with XEmulator(clock=clock, access_ttl=10 * 86400) as x:
        token = x.issue_token(scope=WRITER)["access_token"]
        media_id = init(x, token, 2)
        clock.advance(86399)
        appended = append(x, token, media_id, 0, b"ok")
        assert appended.json()["data"]["expires_at"] == int(clock.time()) + 1
        clock.advance(1)
        assert problem_parameter(append(x, token, media_id, 1, b"no")) == "media_id"
        assert problem_parameter(finalize(x, token, media_id)) == "media_id"


# -- a RefreshingSession's replay of an APPEND ------------------------------------------


def test_an_append_refused_for_an_expired_token_is_refreshed_and_replayed_whole(
    x: XEmulator,
) -> None:
    token = x.issue_token(scope=WRITER)
    media_id = init(x, token["access_token"], len(CHUNK))
    x.expire_access_token(token["access_token"])  # expired at X, not yet in the client's eyes
    x.reset_stats()
    with RefreshingSession(store=MemoryTokenStore(), token=token, client_id=DEFAULT_CLIENT_ID,
                           token_url=x.token_url, api_base_url=x.api_url) as session:
        response = session.post(x.api_url + "/2/media/upload",
                                data={"command": "APPEND", "media_id": media_id,
                                      "segment_index": "0"},
                                files={"media": ("chunk", CHUNK, "application/octet-stream")},
                                timeout=10)
        assert response.status_code == 200, response.text
        assert x.media_appends(media_id) == [(0, CHUNK)]  # exactly the chunk, once
        assert (x.stats.unauthorized, x.stats.refreshes, x.stats.api_requests) == (1, 1, 2)
        fresh = session.token["access_token"]
        assert fresh != token["access_token"]
        assert finalize(x, fresh, media_id).json()["data"]["size"] == len(CHUNK)
