"""The fault holes of the guarantee: slow servers, stores that raise anything, odd answers
after X has rotated, 401 storms, and calls without a bound. Real loopback servers only."""

from __future__ import annotations

import http.server
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

import refresher
from refresher import (
    JSONTokenStore,
    LockTimeout,
    MemoryTokenStore,
    ReauthorizationRequired,
    RefreshError,
    RefreshingSession,
    TokenStoreError,
)
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator

# -- 1. a slow token endpoint cannot hang anything ---------------------------------------

def test_a_trickling_token_endpoint_ends_the_grant_at_its_deadline(
        x_emulator_factory, make_session, me_url, in_thread) -> None:
    x = x_emulator_factory(token_trickle=0.5)  # headers at once, then a byte every 0.5 s
    session = make_session(emulator=x)
    assert session.coordinator is not None
    session.coordinator.endpoint.deadline = 2.0
    x.expire_access_token(session.token["access_token"])
    started = time.monotonic()
    join = in_thread(lambda: session.get(me_url(x)))
    with pytest.raises(RefreshError, match="within the 2 s deadline"):
        join(30)
    # On the wall clock: the deadline, plus generous slack for a busy machine, not the
    # answer's 100+ s.
    assert time.monotonic() - started < 2.0 + 8.0


def test_threads_waiting_for_a_stuck_refresh_get_LockTimeout(
        x_emulator_factory, make_session, me_url, in_thread) -> None:
    x = x_emulator_factory(token_trickle=0.5)
    session = make_session(emulator=x, lock_timeout=0.5)
    assert session.coordinator is not None
    session.coordinator.endpoint.deadline = 4.0
    x.expire_access_token(session.token["access_token"])
    refreshing = in_thread(lambda: session.get(me_url(x)))
    while x.stats.token_requests == 0:
        time.sleep(0.01)
    waiters = [in_thread(lambda: session.get(me_url(x))) for _ in range(3)]
    for join in waiters:
        with pytest.raises(LockTimeout, match="lock_timeout=0.5"):
            join(30)
    with pytest.raises(RefreshError):
        refreshing(30)


# -- 2. whatever a store raises, the granted pair is kept --------------------------------

class DriverErrorStore(MemoryTokenStore):
    """A user's own store whose driver raises its own exceptions while ``down``."""

    down = False

    def save(self, account: str, token: dict[str, Any]) -> None:
        if self.down:
            raise sqlite3.OperationalError("database is locked")
        super().save(account, token)


def test_a_store_raising_its_drivers_exception_keeps_the_granted_pair(x_emulator,
                                                                      make_session, me_url) -> None:
    store = DriverErrorStore()
    errors: list[BaseException] = []
    session = make_session(store=store, on_refresh_error=errors.append)
    store.down = True
    with pytest.raises(TokenStoreError) as caught:
        session.refresh()
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert errors == [caught.value]
    granted = session.token
    store.down = False
    assert session.get(me_url(x_emulator)).status_code == 200  # written back first, then sent
    assert store.load("default") == granted
    session.refresh()  # the kept pair is the live one: spending it works
    assert x_emulator.stats.reused_refresh_tokens == 0


class RaisingLockStore(MemoryTokenStore):
    broken = False

    def lock(self, account: str, timeout: float | None = None) -> Any:
        if self.broken:
            raise ConnectionResetError("driver lost its connection")
        return super().lock(account, timeout)


def test_a_store_lock_raising_anything_is_a_TokenStoreError(x_emulator,
                                                            make_session) -> None:
    store = RaisingLockStore()
    session = make_session(store=store)
    store.broken = True
    with pytest.raises(TokenStoreError, match="failed to lock") as caught:
        session.refresh()
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert x_emulator.stats.token_requests == 0


# -- 3. after X answered 200, the new refresh token is saved before anything can fail -----

class ScriptedTokenServer:
    """A loopback token endpoint that answers each POST with the next scripted JSON body,
    and records the refresh tokens it was sent."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.received: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(x.split("=", 1) for x in self.rfile.read(length).decode().split("&"))
                owner.received.append(form.get("refresh_token", ""))
                body = json.dumps(owner.answers.pop(0)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/2/oauth2/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedTokenServer]:
    server = ScriptedTokenServer()
    yield server
    server.close()


SEED = {"access_token": "at-0", "refresh_token": "rt-0", "token_type": "bearer",
        "expires_in": 7200}


@pytest.mark.parametrize("flaw, usable, expiring", [
    ({"expires_in": "two hours"}, True, True),
    ({"expires_at": "2026-11-29T10:00:00Z"}, True, False),  # expires_in still tells
    ({"expires_in": None, "expires_at": "tomorrow"}, True, True),
    ({"access_token": 12345}, False, False),
])
def test_an_odd_200_answer_saves_the_new_refresh_token_first(scripted, tmp_path, flaw,
                                                             usable, expiring) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, token=SEED,
                                token_url=scripted.url)
    scripted.answers.append(dict({"access_token": "at-1", "refresh_token": "rt-1",
                                  "token_type": "bearer", "expires_in": 7200}, **flaw))
    if usable:
        token = session.refresh()
        assert token["access_token"] == "at-1"
        # An expiry that cannot be known counts as expiring: the next request refreshes.
        assert (refresher.RefreshPolicy().state(token, time.time())
                is not refresher.TokenState.FRESH) is expiring
    else:
        with pytest.raises(RefreshError, match="no usable access token"):
            session.refresh()
    assert store.load("default")["refresh_token"] == "rt-1"  # the only live one, kept
    # The next refresh spends the new refresh token, never the spent one again.
    scripted.answers.append({"access_token": "at-2", "refresh_token": "rt-2",
                             "expires_in": 7200})
    assert session.refresh()["access_token"] == "at-2"
    assert scripted.received == ["rt-0", "rt-1"]


@pytest.mark.parametrize("seed, field", [
    (dict(SEED, expires_at="2026-11-29T10:00:00Z"), "expires_at"),
    (dict(SEED, expires_in="soon"), "expires_in"),
    (dict(SEED, access_token=["not", "a", "string"]), "access_token"),
])
def test_an_unusable_seed_is_refused_before_anything_is_saved(tmp_path, seed, field) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    with pytest.raises(refresher.InvalidTokenError, match=field) as caught:
        RefreshingSession(DEFAULT_CLIENT_ID, store=store, token=seed)
    assert isinstance(caught.value, refresher.RefresherError)
    assert store.load("default") is None
    assert "rt-0" not in str(caught.value)
    # ...so a later, correct construction is not poisoned by it.
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, token=SEED)
    assert session.token["refresh_token"] == "rt-0"


def test_a_grant_with_expires_in_zero_does_not_make_every_thread_refresh(
        x_emulator_factory, make_session, me_url, in_thread) -> None:
    class ZeroLifetime(XEmulator):
        def _mint(self, *args: Any) -> dict[str, Any]:
            payload = super()._mint(*args)
            payload["expires_in"] = 0  # the token works; the answer says it is over
            return payload

    x = ZeroLifetime().start()
    try:
        session = make_session(emulator=x)
        session.refresh()
        before = x.stats.refreshes
        assert session.get(me_url(x)).status_code == 200
        assert x.stats.refreshes - before <= 1  # at most one per request, never two
        before = x.stats.refreshes
        barrier = threading.Barrier(8)

        def call() -> int:
            barrier.wait()
            return int(session.get(me_url(x)).status_code)

        joins = [in_thread(call) for _ in range(8)]
        assert [join(30) for join in joins] == [200] * 8
        assert x.stats.refreshes - before < 8  # waiting threads take the new token
        assert x.stats.reused_refresh_tokens == 0
    finally:
        x.stop()


# -- 5. no refresh storm on 401 ------------------------------------------------------------

def test_an_always_401_endpoint_does_not_cause_a_refresh_storm(x_emulator,
                                                                make_session, me_url) -> None:
    session = make_session()
    for _ in range(6):
        response = session.get(x_emulator.api_url + "/2/emulator/unauthorized")
        assert response.status_code == 401
    assert x_emulator.stats.refreshes <= 2
    refreshes = x_emulator.stats.refreshes
    token = session.token["access_token"]
    assert session.get(me_url(x_emulator)).status_code == 200  # other endpoints keep working
    assert session.token["access_token"] == token
    assert x_emulator.stats.refreshes == refreshes
    # A real expiry on another endpoint is still cured by a refresh.
    x_emulator.expire_access_token(token)
    assert session.get(me_url(x_emulator)).status_code == 200
    assert x_emulator.stats.refreshes == refreshes + 1


# -- 6. every network call has a bound -----------------------------------------------------

@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_me_has_a_timeout(silent_server, x_emulator, in_thread) -> None:
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=MemoryTokenStore(),
                                token=x_emulator.issue_token(), token_url=x_emulator.token_url,
                                api_base_url=silent_server)
    join = in_thread(lambda: session.me(timeout=0.5))
    with pytest.raises(requests.Timeout):
        join(30)
    import inspect
    assert inspect.signature(session.me).parameters["timeout"].default == 30.0


# -- 7. a spent refresh token is recorded, so siblings stop resending it -------------------

def test_a_refresh_token_X_refused_is_not_resent_by_siblings(x_emulator, tmp_path) -> None:
    path = tmp_path / "tokens.json"
    kw: dict[str, Any] = dict(token_url=x_emulator.token_url, api_base_url=x_emulator.api_url)
    seed = x_emulator.issue_token()
    first = RefreshingSession(DEFAULT_CLIENT_ID, store=JSONTokenStore(path), token=seed, **kw)
    siblings = [RefreshingSession(DEFAULT_CLIENT_ID, store=JSONTokenStore(path), **kw)
                for _ in range(3)]
    # A pair lost behind the store's back (a process killed before it could save it).
    lost = requests.post(x_emulator.token_url, data={
        "grant_type": "refresh_token", "refresh_token": seed["refresh_token"],
        "client_id": DEFAULT_CLIENT_ID}, timeout=10)
    assert lost.status_code == 200
    with pytest.raises(ReauthorizationRequired):
        first.refresh()
    assert JSONTokenStore(path).needs_login("default")
    requests_before = x_emulator.stats.token_requests
    for sibling in siblings:
        with pytest.raises(ReauthorizationRequired, match="already refused"):
            sibling.refresh()
    assert x_emulator.stats.token_requests == requests_before  # nothing resent
    assert x_emulator.stats.reused_refresh_tokens == 1          # one per lost pair
    # A new login clears it.
    siblings[0].token = x_emulator.issue_token()
    assert not JSONTokenStore(path).needs_login("default")
    assert siblings[1].refresh()["access_token"]


# -- 9. no raw exceptions ------------------------------------------------------------------

def test_a_body_that_breaks_off_is_not_called_unreachable(tmp_path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_half() -> None:
        connection = listener.accept()[0]
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 200\r\n\r\n{\"access_token\": ")
        time.sleep(3)
        connection.close()

    threading.Thread(target=answer_half, daemon=True).start()
    endpoint = refresher.endpoint.TokenEndpoint(
        f"http://127.0.0.1:{listener.getsockname()[1]}/token", DEFAULT_CLIENT_ID,
        timeout=0.5, deadline=10)
    with pytest.raises(RefreshError) as caught:
        endpoint.refresh("rt-secret")
    message = str(caught.value)
    assert "broke off" in message and "cannot reach" not in message
    assert "rt-secret" not in message
    listener.close()


def test_a_plain_session_reaches_this_machine_over_http(x_emulator, me_url) -> None:
    plain = RefreshingSession(DEFAULT_CLIENT_ID)  # no store, no token: an OAuth2Session
    assert plain.get(x_emulator.url + "/emulator/stats", timeout=10).status_code == 200
    with pytest.raises(refresher.InsecureTransport, match="use an https URL"):
        plain.get("http://example.invalid/2/users/me")
    with_token = RefreshingSession(DEFAULT_CLIENT_ID, token=x_emulator.issue_token())
    with pytest.raises(refresher.RefresherError, match="pass store="):
        with_token.get(me_url(x_emulator))


@pytest.mark.parametrize("url, allowed", [
    ("https://api.x.com/2/users/me", True),
    ("HTTPS://API.X.COM/2/users/me", True),
    ("http://127.0.0.1:8000/2/users/me?x=1", True),
    ("http://[::1]:8000/", True),
    ("http://localhost/", True),
    ("http://api.x.com/2/users/me", False),
    ("http://127.0.0.1.evil.example/", False),
    # urllib3 (which connects) reads this host as evil.example; urlsplit says 127.0.0.1
    ("http://evil.example\\@127.0.0.1/", False),
    ("ftp://127.0.0.1/", False),
])
def test_plain_http_is_allowed_to_this_machine_only(url, allowed, monkeypatch) -> None:
    from refresher._transport import is_allowed_transport

    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    assert is_allowed_transport(url) is allowed


def test_the_per_request_origin_check_remembers_only_what_passed_on_its_own(monkeypatch):
    """OriginCheck (httpx and aiohttp, every request): https passes; a loopback http
    origin is checked once; another host is refused every time; an origin let through only
    by OAUTHLIB_INSECURE_TRANSPORT is not remembered once the variable is gone."""
    from yarl import URL

    from refresher import InsecureTransport
    from refresher._transport import OriginCheck

    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    check = OriginCheck()
    check(URL("https://api.x.com/2/users/me"))
    check(URL("http://127.0.0.1:8080/2/users/me"))
    check(URL("http://127.0.0.1:8080/2/tweets"))  # remembered: same origin
    for _ in range(2):
        with pytest.raises(InsecureTransport):
            check(URL("http://api.example.com/2/users/me"))
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    check(URL("http://api.example.com/2/users/me"))  # allowed by the variable, not kept
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT")
    with pytest.raises(InsecureTransport):
        check(URL("http://api.example.com/2/users/me"))
