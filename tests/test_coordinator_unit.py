"""RefreshCoordinator on its own: a fake token endpoint, a FakeClock, no HTTP, no sleeping."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fakes import FakeEndpoint

from refresher import (
    ConfigurationError,
    MemoryTokenStore,
    ReauthorizationRequired,
    RefreshCoordinator,
    RefreshError,
    RefreshPolicy,
    StaleTokenError,
    TokenStoreError,
)
from refresher.testing import FakeClock


def make(store: Any, endpoint: FakeEndpoint, clock: FakeClock, **kw: Any) -> RefreshCoordinator:
    coordinator = RefreshCoordinator(store, "alice", endpoint, clock=clock, **kw)  # type: ignore[arg-type]
    coordinator.load(seed=endpoint.pair(0))
    return coordinator


# -- when a token is refreshed ----------------------------------------------------------------

def test_a_fresh_token_is_sent_as_it_is(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    assert coordinator.token_for_request()["access_token"] == "at-0"
    clock.advance(7200 - 61)
    assert coordinator.token_for_request()["access_token"] == "at-0"
    assert endpoint.spent == []


def test_with_a_margin_left_the_refresh_runs_in_the_background(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    clock.advance(7200 - 59)  # inside the 60 s leeway, more than half of it left
    assert coordinator.token_for_request()["access_token"] == "at-0"  # sent at once
    assert coordinator.wait_for_background(10)
    assert coordinator.token_for_request()["access_token"] == "at-1"
    assert endpoint.spent == ["rt-0"]


def test_near_expiry_the_request_waits_for_the_refresh(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    clock.advance(7200 - 29)  # under half the leeway left
    assert coordinator.token_for_request()["access_token"] == "at-1"
    assert coordinator.token_for_request()["access_token"] == "at-1"
    assert endpoint.spent == ["rt-0"]


def test_without_background_refresh_the_request_that_notices_refreshes(clock,
                                                                        endpoint) -> None:
    policy = RefreshPolicy(background_refresh=False)
    coordinator = make(MemoryTokenStore(), endpoint, clock, policy=policy)
    clock.advance(7200 - 59)
    assert coordinator.token_for_request()["access_token"] == "at-1"
    assert not coordinator._background.running and endpoint.spent == ["rt-0"]


def test_the_leeway_is_capped_at_a_tenth_of_a_short_lifetime(clock) -> None:
    endpoint = FakeEndpoint(clock, lifetime=10)
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    clock.advance(8.5)  # 1.5 s left: outside a 60 s leeway capped at 1 s
    assert coordinator.token_for_request()["access_token"] == "at-0"
    clock.advance(1.1)  # 0.4 s left: inside the capped leeway, under half of it
    assert coordinator.token_for_request()["access_token"] == "at-1"


def test_a_failed_background_refresh_is_reported_and_retried_later(clock,
                                                                   endpoint) -> None:
    errors: list[BaseException] = []
    coordinator = make(MemoryTokenStore(), endpoint, clock, on_refresh_error=errors.append)
    clock.advance(7200 - 40)  # 40 s left
    endpoint.fail_with = RefreshError("X is down")
    assert coordinator.token_for_request()["access_token"] == "at-0"
    assert coordinator.wait_for_background(10)
    assert coordinator.token_for_request()["access_token"] == "at-0"
    assert coordinator.wait_for_background(10)
    assert len(endpoint.spent) == 1 and len(errors) == 1  # not on every request
    endpoint.fail_with = None
    clock.advance(RefreshPolicy().early_retry_delay(40) + 0.01)
    assert coordinator.token_for_request()["access_token"] == "at-0"  # retried, behind
    assert coordinator.wait_for_background(10)
    assert coordinator.token_for_request()["access_token"] == "at-1"


def test_an_expired_token_whose_refresh_fails_raises(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    clock.advance(7201)
    endpoint.fail_with = RefreshError("X is down")
    with pytest.raises(RefreshError):
        coordinator.token_for_request()


def test_the_policy_and_its_overrides(clock, endpoint) -> None:
    policy = RefreshPolicy(leeway=300.0, lock_timeout=1.0).replace(lock_timeout=2.0)
    coordinator = make(MemoryTokenStore(), endpoint, clock, policy=policy)
    assert coordinator.policy.leeway == 300.0 and coordinator.policy.lock_timeout == 2.0
    clock.advance(7200 - 149)  # inside the 300 s leeway, under half of it
    assert coordinator.token_for_request()["access_token"] == "at-1"
    with pytest.raises(ConfigurationError, match="fraction"):
        RefreshPolicy(young_fraction=2)


# -- which 401/403 a refresh may cure ---------------------------------------------------------

def test_may_cure_401_only_for_tokens_it_handed_out(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    assert coordinator.may_cure(401, "at-0", "GET https://api.x.com/2/users/me")
    assert not coordinator.may_cure(401, "someone-elses", "GET https://api.x.com/2/users/me")
    assert not coordinator.may_cure(500, "at-0", "GET https://api.x.com/2/users/me")


def test_the_403_rule_judges_by_age_and_problem_type(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    url = "GET https://api.x.com/2/tweets"
    assert not coordinator.may_cure(403, "at-0", url)  # young: about the request
    clock.advance(3601)
    assert coordinator.may_cure(403, "at-0", url)      # late in its life: maybe expiry
    forbidden = "https://api.twitter.com/2/problems/client-forbidden"
    assert not coordinator.may_cure(403, "at-0", url, forbidden)


def test_the_401_brake_is_per_endpoint_and_token(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    flaky, other = "GET https://api.x.com/2/flaky", "GET https://api.x.com/2/users/me"
    fresh = coordinator.refresh(replacing="at-0")
    coordinator.refused_after_refresh(fresh["access_token"], flaky)
    assert not coordinator.may_cure(401, fresh["access_token"], flaky)
    assert coordinator.may_cure(401, fresh["access_token"], other)
    off = make(MemoryTokenStore(), FakeEndpoint(clock), clock,
               policy=RefreshPolicy(brake_401=False))
    off.refused_after_refresh("at-0", flaky)
    assert off.may_cure(401, "at-0", flaky)


# -- the refresh, against a shared store ----------------------------------------------------

def test_a_sibling_token_in_the_store_is_adopted_without_spending(clock, endpoint) -> None:
    store = MemoryTokenStore()
    first, second = make(store, endpoint, clock), make(store, endpoint, clock)
    first.refresh(replacing="at-0")
    assert second.refresh(replacing="at-0")["access_token"] == "at-1"
    assert endpoint.spent == ["rt-0"]


class SiblingHolding:
    """Another holder (a thread standing for a sibling process) that holds the store's lock
    for ``account`` until the block ends; :meth:`save` saves its pair meanwhile."""

    def __init__(self, store: MemoryTokenStore, account: str = "alice") -> None:
        self.store, self.account = store, account
        self.taken, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold)
        self.thread.start()
        assert self.taken.wait(10)

    def _hold(self) -> None:
        with self.store.lock(self.account):
            self.taken.set()
            self.release.wait(30)

    def save(self, token: dict[str, Any]) -> None:
        """Save as the holder would (a memory store's save takes no lock of its own)."""
        self.store.save(self.account, token)

    def __enter__(self) -> SiblingHolding:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.thread.join(10)


def test_a_background_refresh_adopts_a_saved_sibling_token_without_its_lock(
        clock, endpoint) -> None:
    store = MemoryTokenStore()
    coordinator = make(store, endpoint, clock)
    with SiblingHolding(store) as sibling:
        clock.advance(7200 - 59)  # in the leeway, with a margin
        sibling.save(endpoint.pair(9))  # saved, and the sibling still lets the lock go
        assert coordinator.token_for_request()["access_token"] == "at-0"  # sent as it is
        assert coordinator.wait_for_background(10)  # no wait for the sibling's lock
        assert coordinator.token_for_request()["access_token"] == "at-9"
    assert endpoint.spent == []


def test_a_request_near_expiry_adopts_a_saved_sibling_token_without_its_lock(
        clock, endpoint) -> None:
    store = MemoryTokenStore()
    coordinator = make(store, endpoint, clock, policy=RefreshPolicy(lock_timeout=5.0))
    with SiblingHolding(store) as sibling:
        clock.advance(7200 - 10)  # under half the leeway left: the request waits...
        sibling.save(endpoint.pair(9))
        assert coordinator.token_for_request()["access_token"] == "at-9"  # ...for nothing
    assert endpoint.spent == []


def test_a_refused_refresh_token_is_recorded_and_not_resent(clock, endpoint) -> None:
    store = MemoryTokenStore()
    first, second = make(store, endpoint, clock), make(store, endpoint, clock)
    endpoint.live.clear()  # the pair was lost: X says rt-0 is spent
    with pytest.raises(ReauthorizationRequired):
        first.refresh()
    assert store.needs_login("alice")
    with pytest.raises(ReauthorizationRequired, match="already refused"):
        second.refresh()
    assert endpoint.spent == ["rt-0"]


class StaleOnce(MemoryTokenStore):
    """A store whose first fenced save finds someone else's newer write."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 1

    def save_versioned(self, account: str, token: Any,
                       expected_version: str | None = None) -> str:
        if expected_version is not None and self.conflicts:
            self.conflicts -= 1
            raise StaleTokenError("someone else saved meanwhile")
        return super().save_versioned(account, token, expected_version)


def test_a_pair_the_store_refuses_is_kept_and_written_back(clock, endpoint) -> None:
    store = StaleOnce()
    coordinator = make(store, endpoint, clock)
    with pytest.raises(TokenStoreError):
        coordinator.refresh()
    assert coordinator.token is not None and coordinator.token["access_token"] == "at-1"
    assert coordinator.token_for_request()["access_token"] == "at-1"  # written back first
    assert store.load("alice") == coordinator.token


def test_a_store_lock_ttl_shorter_than_a_grant_is_refused(clock, endpoint) -> None:
    store = MemoryTokenStore()
    store.lock_ttl = 10.0  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="lock_ttl >= 20"):
        RefreshCoordinator(store, "alice", endpoint, clock=clock)  # type: ignore[arg-type]


def test_on_refresh_start_runs_right_before_each_token_call(clock, endpoint) -> None:
    calls: list[int] = []
    store = MemoryTokenStore()

    def start() -> None:
        calls.append(len(endpoint.spent))  # the token call has not happened yet
        raise RuntimeError("a hook that raises does not fail the refresh")

    coordinator = make(store, endpoint, clock, on_refresh_start=start)
    coordinator.refresh()
    sibling = make(store, endpoint, clock, on_refresh_start=start)
    sibling.refresh(replacing="at-0")  # adopts the stored pair: no token call, no hook
    assert calls == [0]
    assert sibling.token is not None and sibling.token["access_token"] == "at-1"


def test_a_replay_refused_after_its_token_ran_out_is_not_braked(clock, endpoint) -> None:
    coordinator = make(MemoryTokenStore(), endpoint, clock)
    url = "GET https://api.x.com/2/users/me"
    fresh = coordinator.refresh(replacing="at-0")
    clock.advance(7201)  # the replay was in flight past the token's end
    coordinator.refused_after_refresh(fresh["access_token"], url)
    assert coordinator.may_cure(401, fresh["access_token"], url)
