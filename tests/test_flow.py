"""The per-request rule (refresher.flow) on its own: no HTTP, a FakeClock, every branch.

A tiny driver plays the front end: ``server`` answers each send by the token it carried
(and what it was sent to), and the test reads back the steps the rule asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from test_coordinator_unit import FakeEndpoint

from refresher import MemoryTokenStore, RefreshCoordinator, RefreshPolicy
from refresher.flow import (
    Answer,
    Describe,
    Facts,
    Refresh,
    Send,
    TokenNeeded,
    request_rule,
)
from refresher.testing import FakeClock

ME = "GET https://api.x.com/2/users/me"
FORBIDDEN = "https://api.twitter.com/2/problems/client-forbidden"


@dataclass
class Run:
    """What one request did: the steps asked, the bearers sent, the status returned."""

    steps: list[str] = field(default_factory=list)
    sent: list[str | None] = field(default_factory=list)
    status: int = 0


def drive(coordinator: RefreshCoordinator, server: Callable[[str | None, int], int], *,
          problem: str | None = None, replayable: bool = True, put_bearer: bool = True,
          codes: frozenset[int] = frozenset({401, 403}),
          carried: Callable[[str | None, int], str | None] = lambda token, n: token) -> Run:
    """Drive the rule as a front end does. ``server(token, n)``: the status of the n-th
    send carrying ``token``; ``carried(token, n)``: the bearer the answered request carried
    (a redirect to another origin carries none)."""
    run, rule, value = Run(), request_rule(coordinator, codes, put_bearer=put_bearer), None
    while True:
        try:
            step = rule.send(value)
        except StopIteration:
            return run
        run.steps.append(type(step).__name__)
        if isinstance(step, TokenNeeded):
            value = coordinator.token_for_request()
        elif isinstance(step, Send):
            token = step.token["access_token"] if step.token is not None else "callers-own"
            n = len(run.sent)
            run.sent.append(token)
            run.status = server(token, n)
            value = Answer(run.status, carried(token, n))
        elif isinstance(step, Describe):
            value = Facts(ME, problem if step.status == 403 else None, replayable)
        else:
            assert isinstance(step, Refresh)
            value = coordinator.refresh(replacing=step.replacing)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def endpoint(clock: FakeClock) -> FakeEndpoint:
    return FakeEndpoint(clock)


@pytest.fixture
def coordinator(clock: FakeClock, endpoint: FakeEndpoint) -> RefreshCoordinator:
    made = RefreshCoordinator(MemoryTokenStore(), "alice", endpoint,  # type: ignore[arg-type]
                              clock=clock, policy=RefreshPolicy(background_refresh=False))
    made.load(seed=endpoint.pair(0))
    return made


def ok(token: str | None, n: int) -> int:
    return 200


def refuses(*tokens: str, status: int = 401) -> Callable[[str | None, int], int]:
    return lambda token, n: status if token in tokens else 200


# -- before the send: which token ---------------------------------------------------------

def test_a_fresh_token_goes_out_and_nothing_else_happens(coordinator, endpoint) -> None:
    run = drive(coordinator, ok)
    assert run.steps == ["TokenNeeded", "Send"] and run.sent == ["at-0"]
    assert endpoint.spent == []


def test_an_expiring_token_is_refreshed_before_the_send(coordinator, endpoint, clock) -> None:
    clock.advance(7200 - 20)  # inside the leeway
    run = drive(coordinator, ok)
    assert run.sent == ["at-1"] and endpoint.spent == ["rt-0"]


def test_an_expired_token_is_refreshed_before_the_send(coordinator, endpoint, clock) -> None:
    clock.advance(7200 + 10)
    run = drive(coordinator, ok)
    assert run.sent == ["at-1"] and run.steps == ["TokenNeeded", "Send"]


def test_a_request_with_its_own_header_is_sent_as_it_is(coordinator) -> None:
    run = drive(coordinator, ok, put_bearer=False)
    assert run.steps == ["Send"] and run.sent == ["callers-own"]


def test_nothing_is_described_for_an_answer_no_refresh_could_cure(coordinator) -> None:
    for status in (200, 404, 429, 500):
        run = drive(coordinator, lambda token, n, s=status: s)
        assert run.steps == ["TokenNeeded", "Send"], status
    run = drive(coordinator, refuses("at-0", status=403), codes=frozenset({401}))
    assert run.steps == ["TokenNeeded", "Send"] and run.status == 403  # narrowed


# -- a 401 --------------------------------------------------------------------------------

def test_a_401_is_cured_by_one_refresh_and_one_replay(coordinator, endpoint) -> None:
    run = drive(coordinator, refuses("at-0"))
    assert run.steps == ["TokenNeeded", "Send", "Describe", "Refresh", "Send"]
    assert run.sent == ["at-0", "at-1"] and run.status == 200
    assert endpoint.spent == ["rt-0"]


def test_a_401_to_a_request_that_carried_no_token_is_returned(coordinator, endpoint) -> None:
    run = drive(coordinator, refuses("at-0"), carried=lambda token, n: None)
    assert run.steps == ["TokenNeeded", "Send"] and run.status == 401
    assert endpoint.spent == []


def test_a_401_to_someone_elses_token_is_returned(coordinator, endpoint) -> None:
    run = drive(coordinator, lambda token, n: 401, carried=lambda token, n: "theirs")
    assert run.steps == ["TokenNeeded", "Send", "Describe"] and run.status == 401
    assert endpoint.spent == []


def test_a_replay_refused_with_the_new_token_brakes_that_endpoint(coordinator,
                                                                   endpoint) -> None:
    always = refuses("at-0", "at-1")
    run = drive(coordinator, always)
    assert run.sent == ["at-0", "at-1"] and run.status == 401
    again = drive(coordinator, always)  # braked: no second rotation for this endpoint
    assert again.steps == ["TokenNeeded", "Send", "Describe"] and again.status == 401
    assert endpoint.spent == ["rt-0"]


def test_a_replay_refused_without_the_new_token_does_not_brake(coordinator, endpoint) -> None:
    """The replay was redirected to another origin (it carried no token): that host's 401
    says nothing about the new token."""
    run = drive(coordinator, refuses("at-0", "at-1"),
                carried=lambda token, n: token if n == 0 else None)
    assert run.status == 401
    later = drive(coordinator, refuses("at-1"))  # the new token refused here: cured again
    assert later.steps[-2:] == ["Refresh", "Send"] and later.sent == ["at-1", "at-2"]
    assert endpoint.spent == ["rt-0", "rt-1"]


def test_an_unreplayable_body_is_not_resent(coordinator, endpoint) -> None:
    run = drive(coordinator, refuses("at-0"), replayable=False)
    assert run.steps == ["TokenNeeded", "Send", "Describe", "Refresh"] and run.status == 401
    assert endpoint.spent == ["rt-0"] and coordinator.token["access_token"] == "at-1"
    assert drive(coordinator, ok).sent == ["at-1"]  # the next request uses the new token


# -- a 403 --------------------------------------------------------------------------------

def test_a_403_to_a_young_token_is_about_the_request(coordinator, endpoint) -> None:
    run = drive(coordinator, refuses("at-0", status=403))
    assert run.steps == ["TokenNeeded", "Send", "Describe"] and run.status == 403
    assert endpoint.spent == []


def test_a_403_late_in_the_tokens_life_is_cured(coordinator, endpoint, clock) -> None:
    clock.advance(3601)
    run = drive(coordinator, refuses("at-0", status=403))
    assert run.sent == ["at-0", "at-1"] and run.status == 200


def test_a_403_whose_problem_type_is_not_about_the_token_is_returned(coordinator, endpoint,
                                                                     clock) -> None:
    clock.advance(3601)
    run = drive(coordinator, refuses("at-0", status=403), problem=FORBIDDEN)
    assert run.steps == ["TokenNeeded", "Send", "Describe"] and run.status == 403
    assert endpoint.spent == []


def test_the_rule_is_a_plain_generator_of_frozen_steps(coordinator) -> None:
    rule = request_rule(coordinator, {401})
    step = next(rule)
    assert step == TokenNeeded()
    with pytest.raises(AttributeError):
        Send(None).token = {}  # type: ignore[misc]
    rule.close()
