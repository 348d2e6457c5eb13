"""One refresh at a time, never the same refresh token twice, and failures that lose nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

import refresher
from refresher import JSONTokenStore, MemoryTokenStore, RefreshingSession, TokenStoreError
from refresher.testing import DEFAULT_CLIENT_ID
from refresher.testing.net import free_port


def _get_together(session, url: str, threads: int = 16) -> list[int]:
    """``threads`` threads GET ``url`` through ``session`` at the same instant."""
    barrier = threading.Barrier(threads)
    statuses: list[int] = []

    def call() -> None:
        barrier.wait()
        statuses.append(session.get(url).status_code)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return statuses


def test_16_threads_hitting_an_expired_token_cause_exactly_one_refresh(x_emulator,
                                                                        make_session, me_url):
    session = make_session()
    x_emulator.expire_access_token(session.token["access_token"])
    assert _get_together(session, me_url(x_emulator)) == [200] * 16
    stats = x_emulator.stats
    assert stats.token_requests == 1 and stats.refreshes == 1
    assert stats.reused_refresh_tokens == 0


def test_16_threads_with_an_expiring_token_refresh_once_before_sending(x_emulator,
                                                                        make_session, me_url):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + 5  # inside the 60 s leeway
    session = make_session(token=token)
    assert _get_together(session, me_url(x_emulator)) == [200] * 16
    assert x_emulator.stats.token_requests == 1


def test_a_sibling_that_already_refreshed_is_adopted_not_refreshed_again(x_emulator,
                                                                          tmp_path, me_url):
    store_path = tmp_path / "tokens.json"
    seed = x_emulator.issue_token()
    kw: Any = dict(token_url=x_emulator.token_url, api_base_url=x_emulator.api_url)
    first = RefreshingSession(DEFAULT_CLIENT_ID, store=JSONTokenStore(store_path), token=seed,
                              **kw)
    second = RefreshingSession(DEFAULT_CLIENT_ID, store=JSONTokenStore(store_path), **kw)
    assert second.token["access_token"] == seed["access_token"]
    x_emulator.invalidate_access_on_refresh = True
    first.refresh()  # second's access token is now dead, and its refresh token spent
    assert second.get(me_url(x_emulator)).status_code == 200  # 401 -> re-read -> adopt
    assert second.token == first.token
    stats = x_emulator.stats
    assert stats.refreshes == 1 and stats.reused_refresh_tokens == 0


def test_explicit_refresh_uses_the_stored_refresh_token_not_a_stale_copy(x_emulator,
                                                                         tmp_path):
    store_path = tmp_path / "tokens.json"
    kw: Any = dict(token_url=x_emulator.token_url, api_base_url=x_emulator.api_url)
    first = RefreshingSession(DEFAULT_CLIENT_ID, store=JSONTokenStore(store_path),
                              token=x_emulator.issue_token(), **kw)
    second = RefreshingSession(DEFAULT_CLIENT_ID, store=JSONTokenStore(store_path), **kw)
    first.refresh()
    second.refresh()  # its in-memory refresh token is spent; the store's is not
    assert x_emulator.stats.refreshes == 2
    assert x_emulator.stats.reused_refresh_tokens == 0


# -- failures ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 503])
def test_5xx_raises_refresh_error_keeps_the_token_and_the_next_call_works(
        x_emulator, make_session, status, me_url):
    store = MemoryTokenStore()
    session = make_session(store=store)
    before = store.load("default")
    x_emulator.expire_access_token(before["access_token"])
    x_emulator.fail_token_endpoint(times=5, status=status)
    with pytest.raises(refresher.RefreshError) as raised:
        session.get(me_url(x_emulator))
    assert not isinstance(raised.value, refresher.ReauthorizationRequired)
    assert store.load("default") == before
    x_emulator.fail_token_endpoint(times=0)
    # let the remaining faults drain, then it simply works
    for _ in range(5):
        try:
            response = session.get(me_url(x_emulator))
            break
        except refresher.RefreshError:
            continue
    assert response.status_code == 200
    assert x_emulator.stats.reused_refresh_tokens == 0


def test_transient_503_is_retried_with_backoff(x_emulator, make_session) -> None:
    session = make_session()
    x_emulator.fail_token_endpoint(times=2, status=503)
    session.refresh()  # two 503s, then success within the default 2 retries
    assert x_emulator.stats.token_requests == 3
    assert x_emulator.stats.refreshes == 1


def test_500_is_not_retried(x_emulator, make_session) -> None:
    session = make_session()
    x_emulator.fail_token_endpoint(times=1, status=500)
    with pytest.raises(refresher.RefreshError, match="HTTP 500.*stored token is kept"):
        session.refresh()
    assert x_emulator.stats.token_requests == 1


def test_non_json_answer_raises_refresh_error(x_emulator, make_session) -> None:
    store = MemoryTokenStore()
    session = make_session(store=store)
    before = store.load("default")
    x_emulator.fail_token_endpoint(times=1, status=200, body="<html>hello</html>",
                                   content_type="text/html")
    with pytest.raises(refresher.RefreshError, match="without a token"):
        session.refresh()
    assert store.load("default") == before


def test_timeout_raises_refresh_error_and_keeps_the_token(x_emulator, make_session) -> None:
    store = MemoryTokenStore()
    session = make_session(store=store)
    session.coordinator.endpoint.timeout = 0.2
    before = store.load("default")
    x_emulator.token_delay = 1.0
    with pytest.raises(refresher.RefreshError, match="did not answer"):
        session.refresh()
    assert store.load("default") == before


def test_unreachable_token_endpoint_raises_refresh_error(x_emulator, make_session) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/2/oauth2/token"
    session = make_session(token_url=dead_url)
    session.coordinator.endpoint.backoff = 0.01
    with pytest.raises(refresher.RefreshError, match="cannot reach.*stored token is kept"):
        session.refresh()


def test_spent_refresh_token_raises_reauthorization_required(x_emulator, make_session) -> None:
    store = MemoryTokenStore()
    session = make_session(store=store)
    x_emulator.revoke_all()
    before = store.load("default")
    with pytest.raises(refresher.ReauthorizationRequired) as raised:
        session.refresh()
    assert raised.value.error == "invalid_request"
    assert "log in again" in str(raised.value)
    assert store.load("default") == before  # nothing dropped


def test_spent_refresh_token_rereads_the_store_before_giving_up(x_emulator, tmp_path,
                                                                 me_url) -> None:
    """A sibling saved the new pair while we were already talking to the token endpoint."""
    # A store whose save takes no lock, as a sibling whose lock lapsed would write (the POST
    # runs in a worker thread, which could not take a JSON store's lock held by this one).
    store = MemoryTokenStore()
    seed = x_emulator.issue_token()
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, token=seed,
                                token_url=x_emulator.token_url)
    sibling_pair = {}

    class SiblingWins(requests.Session):
        def post(self, url, **kw):  # the sibling spends the token just before we do
            if not sibling_pair:
                sibling = requests.post(url, data={"grant_type": "refresh_token",
                                                   "refresh_token": seed["refresh_token"],
                                                   "client_id": DEFAULT_CLIENT_ID})
                sibling_pair.update(sibling.json())
                store.save("default", dict(sibling_pair))
            return super().post(url, **kw)

    session.coordinator.endpoint.session = SiblingWins()
    token = session.refresh()
    assert token["access_token"] == sibling_pair["access_token"]
    assert session.get(me_url(x_emulator)).status_code == 200


def test_missing_refresh_token_means_log_in_again(x_emulator, make_session) -> None:
    token = x_emulator.issue_token(scope="tweet.read users.read")  # no offline.access
    session = make_session(token=token)
    with pytest.raises(refresher.ReauthorizationRequired, match="offline.access"):
        session.refresh()


class FlakyStore(MemoryTokenStore):
    """A store whose writes fail while ``down`` is set."""

    down = False

    def save(self, account, token):
        if self.down:
            raise TokenStoreError("flaky store is down")
        super().save(account, token)


def test_a_pair_granted_while_the_store_is_down_is_kept_and_written_back(x_emulator,
                                                                          make_session, me_url):
    store = FlakyStore()
    session = make_session(store=store)
    store.down = True
    with pytest.raises(TokenStoreError):
        session.refresh()
    granted = session.token
    assert store.load("default")["access_token"] != granted["access_token"]
    with pytest.raises(TokenStoreError):  # requests fail while the store is down...
        session.get(me_url(x_emulator))
    store.down = False
    assert session.get(me_url(x_emulator)).status_code == 200  # ...and recover after
    assert store.load("default") == granted  # the only live pair was not lost
    session.refresh()
    assert x_emulator.stats.reused_refresh_tokens == 0


def test_lock_timeout_is_reported_through_on_refresh_error(x_emulator, make_session) -> None:
    store = MemoryTokenStore()
    errors: list[BaseException] = []
    session = make_session(store=store, lock_timeout=0.2, on_refresh_error=errors.append)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.lock("default"):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        with pytest.raises(refresher.LockTimeout):
            session.refresh()
    finally:
        release.set()
        holder.join()
    assert len(errors) == 1 and isinstance(errors[0], refresher.LockTimeout)


@pytest.mark.parametrize("background", [True, False])
def test_while_one_thread_refreshes_early_the_others_send_the_still_valid_token(
        x_emulator, make_session, me_url, background):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + 50  # inside the 60 s leeway, with a good margin
    session = make_session(token=token,
                           policy=refresher.RefreshPolicy(background_refresh=background))
    x_emulator.token_delay = 1.0  # a slow X
    first = threading.Thread(target=lambda: session.get(me_url(x_emulator)))
    first.start()
    while x_emulator.stats.token_requests == 0:  # the refresh is under way...
        time.sleep(0.01)
    response = session.get(me_url(x_emulator))  # ...and this request does not wait for it
    refreshes_when_answered = x_emulator.stats.refreshes
    first.join()
    assert session.coordinator is not None and session.coordinator.wait_for_background(10)
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == f"Bearer {token['access_token']}"
    assert refreshes_when_answered == 0
    assert x_emulator.stats.refreshes == 1


def test_with_background_refresh_no_request_waits_for_a_slow_token_endpoint(
        x_emulator, make_session, me_url):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + 50  # inside the leeway, with a good margin
    session = make_session(token=token)
    x_emulator.token_delay = 1.0
    sent = [session.get(me_url(x_emulator)) for _ in range(3)]
    assert session.coordinator is not None and session.coordinator.wait_for_background(10)
    assert [r.status_code for r in sent] == [200] * 3
    # Not one of them waited for the slow refresh: each went out with the token it had.
    assert {r.request.headers["Authorization"] for r in sent} == {
        f"Bearer {token['access_token']}"}
    assert x_emulator.stats.refreshes == 1
    assert session.get(me_url(x_emulator)).request.headers["Authorization"] != \
        f"Bearer {token['access_token']}"


@pytest.mark.parametrize("left", [-1, 20])
def test_a_token_at_the_end_of_its_life_waits_for_the_refresh_under_way(x_emulator,
                                                                        make_session, left, me_url):
    token = x_emulator.issue_token()
    token["expires_at"] = time.time() + left  # dead, or under half the leeway left
    session = make_session(token=token)
    x_emulator.expire_access_token(token["access_token"])  # a thread that did not wait: 401
    x_emulator.token_delay = 0.5
    statuses = _get_together(session, me_url(x_emulator), threads=4)
    assert statuses == [200] * 4
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.unauthorized == 0
