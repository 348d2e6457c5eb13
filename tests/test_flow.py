"""The per-request rule (refresher.flow) on its own: no HTTP, a FakeClock, every branch.

A tiny driver plays the front end: ``server`` answers each send by the token it carried
(and what it was sent to), and the test reads back the steps the rule asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from fakes import FakeEndpoint

from refresher import MemoryTokenStore, RefreshCoordinator, RefreshPolicy
from refresher.flow import (
    Answer,
    Describe,
    Facts,
    Refresh,
    Send,
    TokenNeeded,
    Wait,
    request_rule,
    settled,
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
    waited: list[float] = field(default_factory=list)


def drive(coordinator: RefreshCoordinator, server: Callable[[str | None, int], int], *,
          problem: str | None = None, replayable: bool = True, put_bearer: bool = True,
          codes: frozenset[int] = frozenset({401, 403}),
          carried: Callable[[str | None, int], str | None] = lambda token, n: token,
          max_wait: float | None = None, retry_after: float | None = None,
          answered: Answer | None = None) -> Run:
    """Drive the rule as a front end does. ``server(token, n)``: the status of the n-th
    send carrying ``token``; ``carried(token, n)``: the bearer the answered request carried
    (a redirect to another origin carries none). ``max_wait``: the longest wait for a 429
    (``None``: none), whose reset is ``retry_after`` seconds away; a wait moves the
    coordinator's clock on. ``answered``: the first send is done (a driver's fast path), the
    rule goes on from its answer."""
    run, value = Run(), None
    rule = request_rule(coordinator, codes, put_bearer=put_bearer, max_rate_limit_wait=max_wait,
                        answered=answered)
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
            value = Facts(ME, problem if step.status == 403 else None, replayable,
                          retry_after if step.status == 429 else None)
        elif isinstance(step, Wait):
            run.waited.append(step.seconds)
            coordinator.clock.sleep(step.seconds)
            value = None
        else:
            assert isinstance(step, Refresh)
            value = coordinator.refresh(replacing=step.replacing)


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

def test_steps_and_values_are_told_apart_by_type_and_are_all_true() -> None:
    """A driver or a test comparing steps must not mistake one for another that happens
    to hold the same items (as plain tuples would: Describe(401) == Wait(401))."""
    assert Describe(401) != Wait(401) and not Describe(401) == Wait(401)
    assert Refresh("at") != Send("at") and Send(None) != (None, False)
    assert Describe(401) == Describe(401) and Send(None) == Send(None, replay=False)
    assert Answer(401, "at") != Describe(401) and Answer(401, "at") == Answer(401, "at")
    assert len({Describe(401), Wait(401), Describe(401)}) == 2
    assert all([TokenNeeded(), Send(None), Facts("GET x", None, True)])


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


# -- a 429, with wait_on_rate_limit ----------------------------------------------------------

def limited_once(token: str | None, n: int) -> int:
    return 429 if n == 0 else 200


def test_a_429_within_the_longest_wait_is_waited_out_and_replayed_once(coordinator,
                                                                        endpoint) -> None:
    run = drive(coordinator, limited_once, max_wait=900.0, retry_after=30.0)
    assert run.steps == ["TokenNeeded", "Send", "Describe", "Wait", "TokenNeeded", "Send"]
    assert run.waited == [31.0]  # the reset, plus a second's margin
    assert run.sent == ["at-0", "at-0"] and run.status == 200
    assert endpoint.spent == []


def test_a_429_is_returned_at_once_when_its_reset_is_too_far(coordinator) -> None:
    run = drive(coordinator, limited_once, max_wait=60.0, retry_after=61.0)
    assert run.steps == ["TokenNeeded", "Send", "Describe"] and run.status == 429
    assert run.waited == []
    full_window = drive(coordinator, limited_once, max_wait=900.0, retry_after=900.0)
    assert full_window.waited == [901.0]  # X's whole 15-minute window fits the default


def test_a_429_that_says_nothing_of_its_reset_is_returned(coordinator) -> None:
    run = drive(coordinator, limited_once, max_wait=900.0, retry_after=None)
    assert run.steps == ["TokenNeeded", "Send", "Describe"] and run.status == 429


def test_a_429_is_neither_waited_nor_described_unless_asked(coordinator) -> None:
    run = drive(coordinator, limited_once, retry_after=30.0)
    assert run.steps == ["TokenNeeded", "Send"] and run.status == 429


def test_a_429_to_an_unreplayable_body_is_returned_without_a_wait(coordinator) -> None:
    run = drive(coordinator, limited_once, max_wait=900.0, retry_after=30.0, replayable=False)
    assert run.steps == ["TokenNeeded", "Send", "Describe"] and run.status == 429
    assert run.waited == [] and len(run.sent) == 1


def test_a_replay_answered_429_again_is_returned_not_waited_again(coordinator) -> None:
    run = drive(coordinator, lambda token, n: 429, max_wait=900.0, retry_after=30.0)
    assert run.steps.count("Wait") == 1 and len(run.sent) == 2 and run.status == 429


def test_the_replay_after_a_wait_takes_the_token_as_it_is_then(coordinator, endpoint,
                                                                 clock) -> None:
    clock.advance(7200 - 100)  # 100 s left; the window resets in 300
    run = drive(coordinator, limited_once, max_wait=900.0, retry_after=300.0)
    assert run.sent == ["at-0", "at-1"] and run.status == 200  # refreshed, not sent expired
    assert endpoint.spent == ["rt-0"]


def test_a_401_to_the_replay_after_a_wait_is_cured_as_any_other(coordinator,
                                                                 endpoint) -> None:
    run = drive(coordinator, lambda token, n: {0: 429, 1: 401}.get(n, 200), max_wait=900.0,
                retry_after=30.0)
    assert run.steps == ["TokenNeeded", "Send", "Describe", "Wait", "TokenNeeded", "Send",
                         "Describe", "Refresh", "Send"]
    assert run.sent == ["at-0", "at-0", "at-1"] and run.status == 200


def test_a_request_with_its_own_header_is_waited_out_as_it_is(coordinator) -> None:
    run = drive(coordinator, limited_once, put_bearer=False, max_wait=900.0, retry_after=5.0)
    assert run.steps == ["Send", "Describe", "Wait", "Send"]
    assert run.sent == ["callers-own", "callers-own"] and run.status == 200


# -- the drivers' fast path: settled, and a rule that goes on from the first answer ----------

@pytest.mark.parametrize("max_wait", [None, 900.0])
@pytest.mark.parametrize("codes", [frozenset({401, 403}), frozenset({401}), frozenset()])
def test_settled_is_the_rules_own_verdict_on_the_first_answer(clock, max_wait, codes) -> None:
    """A driver may skip the rule when settled says so: exactly when the rule itself ends
    at the first answer, having described nothing."""
    for status in (200, 204, 302, 401, 403, 404, 429, 500, 503):
        for bearer in ("own", "theirs", None):
            endpoint = FakeEndpoint(clock)
            coordinator = RefreshCoordinator(
                MemoryTokenStore(), "alice", endpoint,  # type: ignore[arg-type]
                clock=clock, policy=RefreshPolicy(background_refresh=False))
            coordinator.load(seed=endpoint.pair(0))
            run = drive(coordinator, lambda token, n, s=status: s if n == 0 else 200,
                        codes=codes, max_wait=max_wait, retry_after=30.0,
                        carried=lambda token, n, b=bearer: token if b == "own" else b)
            carried = "at-0" if bearer == "own" else bearer
            ends_at_once = run.steps == ["TokenNeeded", "Send"]
            assert settled(status, carried, codes, max_wait) is ends_at_once, (status, bearer)


def test_a_rule_started_from_the_first_answer_goes_on_as_the_whole_rule(coordinator,
                                                                        endpoint) -> None:
    run = drive(coordinator, refuses("at-0"), answered=Answer(401, "at-0"))
    assert run.steps == ["Describe", "Refresh", "Send"]
    assert run.sent == ["at-1"] and run.status == 200 and endpoint.spent == ["rt-0"]
    waited = drive(coordinator, ok, answered=Answer(429, "at-1"), max_wait=900.0,
                   retry_after=30.0)
    assert waited.steps == ["Describe", "Wait", "TokenNeeded", "Send"]
    assert waited.sent == ["at-1"] and waited.status == 200
    assert drive(coordinator, ok, answered=Answer(200, "at-1")).steps == []


def test_the_rule_is_a_plain_generator_of_frozen_steps(coordinator) -> None:
    rule = request_rule(coordinator, {401})
    step = next(rule)
    assert step == TokenNeeded()
    with pytest.raises(AttributeError):
        Send(None).token = {}  # type: ignore[misc]
    rule.close()
