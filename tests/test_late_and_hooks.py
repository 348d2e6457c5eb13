"""The refresh transaction's edges (issue 15): a grant that arrives after its caller gave up
is saved and nothing is resent meanwhile; ``on_refresh_start`` runs before the last lock
check, so a hook that blocks past the lease cannot let two holders spend one token; a
thousand accounts entering their window together refresh on a bounded pool of threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from refresher import (
    JSONTokenStore,
    MemoryTokenStore,
    RefreshError,
    RefreshingSession,
    RefreshPolicy,
)
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator


def _expired(x: XEmulator) -> dict[str, Any]:
    """A pair whose access token X already refuses, and whose refresh token is live."""
    seed = x.issue_token()
    x.expire_access_token(seed["access_token"])
    return dict(seed, expires_at=time.time() - 1)


def _session(x: XEmulator, store: Any, token: Any, **kw: Any) -> RefreshingSession:
    return RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=kw.pop("account", "a"),
                             token=token, token_url=x.token_url, api_url=x.api_url, **kw)


# -- a late grant -------------------------------------------------------------------------

def test_a_grant_that_arrives_after_the_caller_gave_up_is_saved_and_not_resent(
        x_emulator_factory, tmp_path, me_url) -> None:
    x = x_emulator_factory(access_ttl=30.0, answer_delay=2.0)  # X spends at once, answers late
    store = JSONTokenStore(tmp_path / "tokens.json")
    updates: list[dict[str, Any]] = []
    session = _session(x, store, _expired(x), policy=RefreshPolicy(token_deadline=0.5),
                       on_token_update=updates.append)
    with pytest.raises(RefreshError) as info:
        session.get(me_url(x))  # the refresh went out; its answer comes 2 s later
    assert info.value.request_sent is not False
    x.answer_delay = 0.0
    # The next request must not resend the refresh token while its answer may still come:
    # it waits for the late answer, which is saved, and uses that pair.
    assert session.get(me_url(x)).status_code == 200
    stats = x.stats.as_dict()
    assert stats["refreshes"] == 1 and stats["reused_refresh_tokens"] == 0, stats
    stored = store.load("a")
    assert stored is not None and x.refresh_token_state(stored["refresh_token"]) == "live"
    assert [u["refresh_token"] for u in updates] == [stored["refresh_token"]]


def test_a_late_grant_is_saved_even_when_nobody_asks_again(x_emulator_factory, tmp_path,
                                                           me_url, wait_for) -> None:
    x = x_emulator_factory(access_ttl=30.0, answer_delay=1.5)
    store = JSONTokenStore(tmp_path / "tokens.json")
    seed = _expired(x)
    session = _session(x, store, seed, policy=RefreshPolicy(token_deadline=0.3))
    with pytest.raises(RefreshError):
        session.get(me_url(x))

    def saved() -> bool:
        stored = store.load("a") or {}
        return stored.get("refresh_token") != seed["refresh_token"]

    wait_for(saved, "the late pair to be saved")
    stored = store.load("a")
    assert stored is not None and x.refresh_token_state(stored["refresh_token"]) == "live"
    # A second process (a new session on the store) uses it without spending anything.
    other = _session(x, JSONTokenStore(tmp_path / "tokens.json"), None)
    assert other.get(me_url(x)).status_code == 200
    assert x.stats.as_dict()["reused_refresh_tokens"] == 0


@pytest.mark.parametrize("kind", ["json", "sqlite"])
def test_a_sibling_does_not_resend_a_token_whose_answer_may_still_come(
        kind, x_emulator_factory, tmp_path, me_url, request) -> None:
    if kind == "sqlite":
        request.getfixturevalue("sqlalchemy_installed")
        from refresher import SQLTokenStore

        def make_store() -> Any:
            return SQLTokenStore(f"sqlite:///{tmp_path / 'tokens.db'}")
    else:
        def make_store() -> Any:
            return JSONTokenStore(tmp_path / "tokens.json")
    x = x_emulator_factory(access_ttl=30.0, answer_delay=2.0)
    seed = _expired(x)
    policy = RefreshPolicy(token_deadline=0.5)
    a = _session(x, make_store(), seed, policy=policy)
    b = _session(x, make_store(), None, policy=policy)  # another process's store object
    with pytest.raises(RefreshError):
        a.get(me_url(x))  # sent; A gives up at 0.5 s; X's answer comes at 2 s
    x.answer_delay = 0.0
    # B finds the record: it waits for A's late pair instead of resending the token.
    assert b.get(me_url(x)).status_code == 200
    stats = x.stats.as_dict()
    assert stats["refreshes"] == 1 and stats["reused_refresh_tokens"] == 0, stats
    assert b.token["refresh_token"] == make_store().load("a")["refresh_token"]
    assert a.get(me_url(x)).status_code == 200
    assert x.stats.as_dict()["reused_refresh_tokens"] == 0


# -- on_refresh_start before the lock check ------------------------------------------------

def _blocking_hook_run(x: XEmulator, make_store: Any, ttl: float) -> dict[str, Any]:
    """Session A's on_refresh_start blocks longer than its lease lives; session B (another
    store object: another host) takes the lapsed lease and refreshes meanwhile."""
    release = threading.Event()
    entered = threading.Event()

    def hook() -> None:
        if not entered.is_set():
            entered.set()
            release.wait(ttl + 4)

    seed = _expired(x)
    policy = RefreshPolicy(token_deadline=1.0, lock_timeout=ttl + 10)
    a = _session(x, make_store(), seed, policy=policy, on_refresh_start=hook)
    b = _session(x, make_store(), None, policy=policy)
    errors: list[BaseException] = []

    def run_a() -> None:
        try:
            a.get(x.api_url + "/2/users/me")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run_a)
    thread.start()
    assert entered.wait(10)
    assert b.get(x.api_url + "/2/users/me").status_code == 200  # waits out A's lease
    release.set()
    thread.join(30)
    assert not thread.is_alive() and not errors, errors
    stats = x.stats.as_dict()
    stats["a_token"] = a.token["refresh_token"]
    stats["b_token"] = b.token["refresh_token"]
    return stats


def test_a_hook_blocking_past_the_sql_lease_cannot_spend_a_token_twice(
        x_emulator_factory, tmp_path, sqlalchemy_installed) -> None:
    from refresher import SQLTokenStore

    x = x_emulator_factory(access_ttl=60.0)
    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    stats = _blocking_hook_run(x, lambda: SQLTokenStore(url, lock_ttl=6.0), ttl=6.0)
    assert stats["reused_refresh_tokens"] == 0 and stats["refreshes"] == 1, stats
    assert stats["a_token"] == stats["b_token"]  # A adopted B's pair


@pytest.mark.redis
def test_a_hook_blocking_past_the_redis_lock_cannot_spend_a_token_twice(
        x_emulator_factory, redis_server) -> None:
    from refresher import RedisTokenStore

    x = x_emulator_factory(access_ttl=60.0)
    stats = _blocking_hook_run(x, lambda: RedisTokenStore(redis_server.url, lock_ttl=6.0),
                               ttl=6.0)
    assert stats["reused_refresh_tokens"] == 0 and stats["refreshes"] == 1, stats
    assert stats["a_token"] == stats["b_token"]


# -- many accounts, bounded threads --------------------------------------------------------

def _refresher_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("refresher-"))


def test_many_accounts_in_their_window_together_refresh_on_a_bounded_pool(
        x_emulator_factory) -> None:
    accounts = 120
    x = x_emulator_factory(access_ttl=3600.0, token_delay=0.1)
    store = MemoryTokenStore()
    policy = RefreshPolicy(background_threads=3, token_request_threads=4)
    sessions = []
    for n in range(accounts):
        # 100-second tokens with 8 s left: inside the leeway (10 s), outside its wait
        # margin (5 s): the request goes out as it is, and a background run refreshes.
        pair = dict(x.issue_token(), expires_in=100, expires_at=time.time() + 8)
        sessions.append(_session(x, store, pair, account=f"user{n}", policy=policy))
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _refresher_threads())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for session in sessions:  # each request goes out at once with its still-valid token
            assert session.get(x.api_url + "/2/users/me").status_code == 200
        for session in sessions:
            assert session.coordinator is not None
            assert session.coordinator.wait_for_background(60)
    finally:
        stop.set()
        sampler.join()
    assert peak[0] <= 3 + 4, f"{peak[0]} refresher threads at once"
    stats = x.stats.as_dict()
    assert stats["refreshes"] == accounts and stats["reused_refresh_tokens"] == 0, stats
    assert all(x.refresh_token_state(store.load(f"user{n}")["refresh_token"]) == "live"
               for n in range(accounts))
