"""Token requests against the clock: nothing is sent after the caller gave up, a late grant
is handed on, errors say whether anything was sent, threads are bounded, forks start over.

Real loopback servers (the emulator, raw listening sockets); the slow resolver is the test
process's own ``socket.getaddrinfo``, slowed down for one name that resolves to loopback.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from refresher import LoginError, MemoryTokenStore, RefreshError, RefreshPolicy
from refresher.endpoint import TokenEndpoint
from refresher.errors import ConfigurationError
from refresher.login import LoginFlow
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
from refresher.testing.net import free_port

SLOW_NAME = "slow-dns.localhost"      # answers after SLOW_LOOKUP seconds, with 127.0.0.1
MISSING_NAME = "no-such-host.localhost"  # does not resolve
SLOW_LOOKUP = 3.0
POOL_THREAD = "refresher-token-request"


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's resolver, with a slow name and a missing one (others as they are)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW_NAME:
            time.sleep(SLOW_LOOKUP)  # a resolver hiccup: nothing can interrupt it
            return real("127.0.0.1", *args, **kwargs)
        if host == MISSING_NAME:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _renamed(x: XEmulator, host: str) -> str:
    return x.token_url.replace("127.0.0.1", host)


def _still_unsent(x: XEmulator, seconds: float) -> None:
    """The emulator gets no token request for ``seconds`` (the stuck lookup ends in them)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert x.stats.token_requests == 0, "a token request went out after its caller gave up"
        time.sleep(0.05)


# -- 1. nothing is sent after the caller gave up ------------------------------------------

@pytest.mark.parametrize("callers_session", [False, True], ids=["own-session", "callers-session"])
def test_a_slow_resolver_never_sends_the_token_after_the_deadline(
        x_emulator, make_session, resolver, callers_session) -> None:
    store = MemoryTokenStore()
    extra = {"refresh_session": requests.Session()} if callers_session else {}
    session = make_session(store=store, token_url=_renamed(x_emulator, SLOW_NAME), **extra)
    session.coordinator.endpoint.deadline = 1.0
    before = store.load("default")
    started = time.monotonic()
    with pytest.raises(RefreshError) as failed:
        session.refresh()
    assert time.monotonic() - started < 1.0 + 2.0  # the deadline, not the lookup
    _still_unsent(x_emulator, SLOW_LOOKUP + 1.5)
    assert failed.value.request_sent is False
    assert "nothing was sent" in str(failed.value)
    assert store.load("default") == before
    # The account still works, with the same refresh token.
    again = make_session(store=store, token=None)
    assert again.refresh()["access_token"] != before["access_token"]
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.reused_refresh_tokens == 0


def test_a_slow_connect_ends_at_the_deadline_and_sends_nothing(x_emulator) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)  # the backlog is full now
    seed = x_emulator.issue_token()
    endpoint = TokenEndpoint(f"http://127.0.0.1:{port}/2/oauth2/token", DEFAULT_CLIENT_ID,
                             deadline=1.0)
    with pytest.raises(RefreshError) as failed:
        endpoint.refresh(seed["refresh_token"])
    received = bytearray()
    listener.settimeout(0.2)
    end = time.monotonic() + 4.0  # SYNs are retried for a while: take whatever comes
    while time.monotonic() < end:
        try:
            connection = listener.accept()[0]
        except TimeoutError:
            continue
        connection.settimeout(0.5)
        try:
            received += connection.recv(65536)
        except TimeoutError:
            pass
        connection.close()
    assert seed["refresh_token"].encode() not in received and b"POST" not in received
    assert failed.value.request_sent is False and "nothing was sent" in str(failed.value)
    TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID).refresh(seed["refresh_token"])
    assert x_emulator.stats.reused_refresh_tokens == 0
    queued.close()
    listener.close()


# -- 2. a grant that comes after the caller gave up is handed on ----------------------------

def test_a_late_grant_is_handed_to_on_late_grant(x_emulator) -> None:
    seed = x_emulator.issue_token()
    x_emulator.token_delay = 2.0  # X rotates the pair; its answer comes after the deadline
    endpoint = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, deadline=1.0)
    late: list[dict[str, Any]] = []
    handed_in: list[str] = []
    with pytest.raises(RefreshError) as failed:
        endpoint.refresh(seed["refresh_token"], on_late_grant=lambda pair: (
            late.append(pair), handed_in.append(threading.current_thread().name)))
    assert endpoint.wait_for_late_answers(15.0)
    assert len(late) == 1 and late[0]["access_token"] and late[0]["expires_at"] > 0
    assert late[0]["refresh_token"] != seed["refresh_token"]
    assert handed_in[0].startswith(POOL_THREAD)
    assert failed.value.request_sent is True
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.reused_refresh_tokens == 0
    x_emulator.token_delay = 0.0
    endpoint.refresh(late[0]["refresh_token"])  # the late pair is the live one
    assert x_emulator.stats.refreshes == 2 and x_emulator.stats.reused_refresh_tokens == 0


def test_wait_for_late_answers_waits_while_one_may_come(x_emulator) -> None:
    seed = x_emulator.issue_token()
    x_emulator.token_delay = 1.5
    endpoint = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, deadline=0.5)
    assert endpoint.wait_for_late_answers(0)  # nothing in flight
    with pytest.raises(RefreshError):
        endpoint.refresh(seed["refresh_token"], on_late_grant=lambda pair: None)
    assert not endpoint.wait_for_late_answers(0.1)  # its answer may still come
    assert endpoint.wait_for_late_answers(15.0)


def test_a_late_grant_nobody_takes_is_logged_without_a_token(x_emulator, all_logs) -> None:
    seed = x_emulator.issue_token()
    x_emulator.token_delay = 1.5
    endpoint = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, deadline=0.5)
    with pytest.raises(RefreshError):
        endpoint.refresh(seed["refresh_token"])
    assert endpoint.wait_for_late_answers(15.0)
    errors = [r for r in all_logs.records if r.levelname == "ERROR"]
    assert any("granted a refresh_token after its caller had given up" in r.getMessage()
               for r in errors)
    _no_token_in_logs(all_logs, seed, x_emulator)


def test_an_on_late_grant_that_raises_is_logged(x_emulator, all_logs) -> None:
    seed = x_emulator.issue_token()
    x_emulator.token_delay = 1.5
    endpoint = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, deadline=0.5)

    def broken(pair: dict[str, Any]) -> None:
        raise RuntimeError("the store is down")

    with pytest.raises(RefreshError):
        endpoint.refresh(seed["refresh_token"], on_late_grant=broken)
    assert endpoint.wait_for_late_answers(15.0)
    assert any("on_late_grant raised" in r.getMessage() for r in all_logs.records)
    _no_token_in_logs(all_logs, seed, x_emulator)


def _no_token_in_logs(logs: pytest.LogCaptureFixture, seed: dict[str, Any],
                      x: XEmulator) -> None:
    text = "\n".join(r.getMessage() + str(r.exc_info) for r in logs.records)
    assert seed["refresh_token"] not in text and seed["access_token"] not in text
    assert "access_token=" not in text and '"refresh_token"' not in text


# -- 3. errors say whether anything was sent -----------------------------------------------

def test_a_name_that_does_not_resolve_says_nothing_was_sent(x_emulator, resolver) -> None:
    endpoint = TokenEndpoint(_renamed(x_emulator, MISSING_NAME), DEFAULT_CLIENT_ID,
                             backoff=0.01)
    with pytest.raises(RefreshError) as failed:
        endpoint.refresh("rt-secret")
    message = str(failed.value)
    assert "may already have acted" not in message and "after the request was sent" not in message
    assert f"cannot reach {endpoint.token_url}: the name '{MISSING_NAME}' did not resolve" \
        in message
    assert "nothing was sent; the refresh token is still good" in message
    assert failed.value.request_sent is False and "rt-secret" not in message


def test_a_refused_connection_says_nothing_was_sent() -> None:
    endpoint = TokenEndpoint(f"http://127.0.0.1:{free_port()}/token", DEFAULT_CLIENT_ID,
                             backoff=0.01)
    with pytest.raises(RefreshError) as failed:
        endpoint.refresh("rt-secret")
    assert "connection refused — nothing was sent; the refresh token is still good" \
        in str(failed.value)
    assert failed.value.request_sent is False


def test_a_connection_broken_after_the_send_says_x_may_have_acted() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def read_then_hang_up() -> None:
        connection = listener.accept()[0]
        connection.recv(65536)
        connection.close()

    threading.Thread(target=read_then_hang_up, daemon=True).start()
    endpoint = TokenEndpoint(f"http://127.0.0.1:{listener.getsockname()[1]}/token",
                             DEFAULT_CLIENT_ID, deadline=10)
    with pytest.raises(RefreshError) as failed:
        endpoint.refresh("rt-secret")
    assert "X may already have acted on it" in str(failed.value)
    assert "nothing was sent" not in str(failed.value)
    assert failed.value.request_sent is True
    listener.close()


@pytest.mark.parametrize("fault", ["refused", "http-503"])
def test_a_failed_login_exchange_never_speaks_of_a_stored_token(x_emulator, fault) -> None:
    if fault == "refused":
        token_url = f"http://127.0.0.1:{free_port()}/2/oauth2/token"
    else:
        token_url = x_emulator.token_url
        x_emulator.fail_token_endpoint(times=10, status=503)
    flow = LoginFlow(DEFAULT_CLIENT_ID, token_url=token_url,
                     authorize_url=x_emulator.authorize_url,
                     redirect_uri="http://127.0.0.1:5000/callback")
    link = flow.authorization_url()
    back = requests.get(link.url, allow_redirects=False, timeout=10).headers["Location"]
    with pytest.raises(LoginError) as failed:
        flow.exchange(back, state=link.state, code_verifier=link.code_verifier, timeout=5)
    message = str(failed.value)
    assert "stored token" not in message and "refresh token" not in message
    assert "start the login again" in message
    if fault == "refused":
        assert "nothing was sent; the code was not used" in message


# -- 4. a bounded pool of threads ----------------------------------------------------------

@pytest.fixture
def peak_threads() -> Iterator[Callable[[], int]]:
    """``peak()``: the most token request threads started during the test seen at once
    (idle ones of earlier tests' pools are not counted)."""
    earlier = {t.ident for t in threading.enumerate()}
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now = sum(t.name.startswith(POOL_THREAD) and t.ident not in earlier
                      for t in threading.enumerate())
            peak[0] = max(peak[0], now)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    yield lambda: peak[0]
    stop.set()
    sampler.join(5)


def test_many_refreshes_at_once_never_start_more_threads_than_the_bound(
        x_emulator, peak_threads) -> None:
    policy = RefreshPolicy(token_request_threads=3, token_deadline=60.0)
    x_emulator.token_delay = 0.2
    seeds = [x_emulator.issue_token() for _ in range(24)]
    endpoints = [TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, policy=policy)
                 for _ in seeds]
    results: list[Any] = [None] * len(seeds)

    def refresh(i: int) -> None:
        try:
            results[i] = endpoints[i].refresh(seeds[i]["refresh_token"])
        except Exception as exc:  # reported below
            results[i] = exc

    callers = [threading.Thread(target=refresh, args=(i,)) for i in range(len(seeds))]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(60)
    assert [type(r).__name__ for r in results if not isinstance(r, dict)] == []
    assert x_emulator.stats.refreshes == len(seeds)
    assert x_emulator.stats.reused_refresh_tokens == 0
    assert 1 <= peak_threads() <= 3


def test_the_pool_size_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="token_request_threads"):
        RefreshPolicy(token_request_threads=0)


def test_a_request_still_queued_when_its_caller_gives_up_is_never_sent(
        x_emulator, resolver) -> None:
    policy = RefreshPolicy(token_request_threads=1)  # one thread, held by a stuck lookup
    stuck = TokenEndpoint(_renamed(x_emulator, SLOW_NAME), DEFAULT_CLIENT_ID, policy=policy,
                          deadline=0.3)
    queued = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, policy=policy,
                           deadline=1.0)
    seed = x_emulator.issue_token()
    with pytest.raises(RefreshError):
        stuck.refresh("rt-stuck")
    with pytest.raises(RefreshError) as failed:
        queued.refresh(seed["refresh_token"])
    _still_unsent(x_emulator, SLOW_LOOKUP + 0.5)
    assert failed.value.request_sent is False
    assert "token request threads were busy" in str(failed.value)
    queued.refresh(seed["refresh_token"])  # once the thread is free, the same token works
    assert x_emulator.stats.reused_refresh_tokens == 0


# -- 5. a fork starts over -----------------------------------------------------------------

def _in_child(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child; what it returned (or raised, as text)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's cleanup
        try:
            outcome: Any = ("ok", work())
        except BaseException as exc:
            outcome = ("error", f"{type(exc).__name__}: {exc}")
        os.write(write, pickle.dumps(outcome))
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    assert kind == "ok", value
    return value


def _marks(session: requests.Session) -> tuple[str | None, str | None]:
    """What was written on ``session`` and on its http adapter's pools (:func:`_mark`)."""
    pools = session.get_adapter("http://127.0.0.1/").poolmanager
    return getattr(session, "mark", None), getattr(pools, "mark", None)


def _mark(session: requests.Session, mark: str) -> None:
    session.mark = mark  # type: ignore[attr-defined]
    session.get_adapter("http://127.0.0.1/").poolmanager.mark = mark


@pytest.mark.parametrize("callers_session", [False, True], ids=["own-session", "callers-session"])
def test_a_forked_child_uses_sessions_and_threads_of_its_own(
        x_emulator, callers_session) -> None:
    given = requests.Session() if callers_session else None
    endpoint = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, session=given)
    endpoint.refresh(x_emulator.issue_token()["refresh_token"])  # pools and threads in use
    _mark(endpoint.session, "parent's")
    for_child = x_emulator.issue_token()

    def child() -> tuple[tuple[str | None, str | None], dict[str, Any]]:
        pair = endpoint.refresh(for_child["refresh_token"])
        return _marks(endpoint.session), dict(pair)

    (session_mark, pools_mark), pair = _in_child(child)
    assert pair["access_token"] and pools_mark is None  # no pooled socket of the parent's
    assert (session_mark == "parent's") is callers_session  # the caller's stays theirs
    endpoint.refresh(x_emulator.issue_token()["refresh_token"])  # the parent is unharmed
    assert _marks(endpoint.session) == ("parent's", "parent's")
    assert x_emulator.stats.refreshes == 3 and x_emulator.stats.reused_refresh_tokens == 0


def test_a_child_forked_while_a_late_answer_may_come_waits_it_out(x_emulator) -> None:
    seed = x_emulator.issue_token()
    x_emulator.token_delay = 1.5
    endpoint = TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID, deadline=0.5,
                             timeout=3.0)
    late: list[dict[str, Any]] = []
    with pytest.raises(RefreshError):
        endpoint.refresh(seed["refresh_token"], on_late_grant=late.append)

    def child() -> tuple[bool, bool]:
        return endpoint.wait_for_late_answers(0.1), endpoint.wait_for_late_answers(30)

    assert _in_child(child) == (False, True)
    assert endpoint.wait_for_late_answers(15) and len(late) == 1  # the parent took it


_EXITS_RIGHT_AFTER = """
import json, sys
from refresher.endpoint import TokenEndpoint
from refresher import RefreshError
endpoint = TokenEndpoint(sys.argv[1], sys.argv[2], deadline=0.5)
def keep(pair):
    with open(sys.argv[4], "w") as out:
        json.dump(dict(pair), out)
try:
    endpoint.refresh(sys.argv[3], on_late_grant=keep)
except RefreshError as exc:
    print("gave up; sent:", exc.request_sent)
"""


@pytest.mark.integration
def test_a_process_that_exits_after_giving_up_still_takes_the_late_grant(
        x_emulator, tmp_path) -> None:
    import json
    import subprocess
    import sys

    seed = x_emulator.issue_token()
    x_emulator.token_delay = 1.5
    kept = tmp_path / "late.json"
    done = subprocess.run([sys.executable, "-c", _EXITS_RIGHT_AFTER, x_emulator.token_url,
                           DEFAULT_CLIENT_ID, seed["refresh_token"], str(kept)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "gave up; sent: True" in done.stdout, done.stderr
    assert kept.exists(), "the process exited without the pair X granted"
    pair = json.loads(kept.read_text())
    x_emulator.token_delay = 0.0
    TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID).refresh(pair["refresh_token"])
    assert x_emulator.stats.refreshes == 2 and x_emulator.stats.reused_refresh_tokens == 0
