"""The per-request rule, written once and without I/O: every front end drives it.

bearer on → send → may a refresh cure this answer? → refresh → replay → brake.

:func:`request_rule` is a generator, as httpx's ``Auth.auth_flow`` is: it yields what to do
next (a :class:`Step`) and receives the outcome as plain values. It opens no socket and
reads no body: the drivers — :class:`~refresher.RefreshingAdapter` (requests),
:class:`refresher.httpx.RefreshingAuth` (both flows) and
:class:`refresher.aiohttp.RefreshingMiddleware` — translate their HTTP objects to those
values, and answer :class:`TokenNeeded` and :class:`Refresh` from the coordinator (sync
drivers directly, async ones through :class:`~refresher.frontend.AsyncTokens`, off the
loop). Only this module asks the coordinator whether a refresh may cure an answer and
tells it when a replay was refused.

The steps, in order:

1. :class:`TokenNeeded` → the driver answers the token to send now (refreshed first when
   it is expiring). Skipped for a request that carries its own ``Authorization``
   (``put_bearer=False``).
2. :class:`Send` → the driver puts ``Bearer <token>`` on the request (unless the step's
   token is ``None``), sends it, and answers an :class:`Answer`: the status, and the
   bearer the *answered* request carried.
3. Only for a status in the driver's ``status_codes`` to a request that carried a token:
   :class:`Describe` → the driver answers :class:`Facts` (the call's name, a 403's
   problem type, whether the body can be sent again). Nothing of that is computed for an
   answer no refresh could cure.
   With ``max_rate_limit_wait`` (the policy's ``wait_on_rate_limit``), a 429 is described
   too, and its :class:`Facts` say when X's window resets (``retry_after``): when that is
   at most ``max_rate_limit_wait`` seconds away and the body can be sent again,
   :class:`Wait` (the seconds, plus a margin) → the driver sleeps, without blocking an
   event loop; then :class:`TokenNeeded` again (the token may have aged meanwhile) and
   :class:`Send` once more (``replay=True``). Otherwise the 429 is returned at once. The
   answer to that replay goes on through the steps below, as the first answer would have
   (a 401 to a token that expired during the wait is cured as any other).
4. When the coordinator says a refresh may cure it: :class:`Refresh` → the driver answers
   the token to use from now on (a sibling's newer token is adopted, not refreshed).
5. A body that cannot be sent again ends the rule: the refused answer is returned, the
   next request uses the new token. Otherwise :class:`Send` once more, with the new token
   (``replay=True``: the driver releases the first answer first).
6. A replay answered 401 *with the token just refreshed* puts that endpoint and token on
   the brake (:meth:`~refresher.RefreshCoordinator.refused_after_refresh`).

The rule ends when the driver should return the last answer it got. A driver iterates
:class:`Steps` and answers each step with :meth:`Steps.answer`.

Most answers end the rule at step 2, so the drivers take steps 1 and 2 themselves (the
token, as they answer :class:`TokenNeeded`; the send), ask :func:`settled` — the rule's own
test of that first answer — and start the rule from the answer (``answered=``) only when it
is not settled. A 2xx then costs the bearer, the send and one test: no generator, no step
objects; every decision after the first answer is still the rule's.

Three things the front ends once did differently, decided here once:

- **Which statuses are looked at**: the driver's ``status_codes`` — the policy's
  ``refresh_status_codes`` for every front end; a :class:`~refresher.RefreshingAdapter`
  built with its own ``refresh_status_codes`` narrows it for that adapter. The
  coordinator then applies the policy's own set and the rest of its judgement.
- **Which token the answer is judged against**: the bearer the answered request carried,
  read back from it (for a redirect, the last hop). A hop to another origin carried none,
  so its 401 refreshes nothing; a request that carried someone else's token is not cured.
- **When a replay's 401 brakes**: only when the replay carried the token just refreshed
  (a replay redirected to another origin carried none: its 401 is not about our token).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Generator
from typing import NamedTuple, Protocol

from ._constants import RATE_LIMIT_MARGIN
from .token import Token

__all__ = ["Answer", "Describe", "Facts", "Judge", "Refresh", "Send", "Step", "Steps",
           "TokenNeeded", "Wait", "refused_replay", "request_rule", "settled"]

log = logging.getLogger(__name__)


class Judge(Protocol):
    """What the rule asks of a :class:`~refresher.RefreshCoordinator`."""

    def may_cure(self, status: int, access_token: str, endpoint: str,
                 problem_type: str | None = None) -> bool: ...

    def refused_after_refresh(self, token: Token | str, endpoint: str) -> None: ...


# Steps and the values answered to them are immutable named tuples: many times cheaper to
# define (at import) and to make (per request) than frozen dataclasses. Told apart by type:
# each compares equal only to one of its own type (a plain tuple compares by its items, so
# Describe(401) would equal Wait(401)), and each is true, TokenNeeded() too.
def _same_type_eq(self: tuple[object, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]


def _same_type_ne(self: tuple[object, ...], other: object) -> bool:
    return not _same_type_eq(self, other)


def _typed_hash(self: tuple[object, ...]) -> int:
    return hash((type(self).__name__, *self))


def _told_apart_by_type(*classes: type) -> None:
    for cls in classes:
        cls.__eq__ = _same_type_eq  # type: ignore[assignment]
        cls.__ne__ = _same_type_ne  # type: ignore[assignment]
        cls.__hash__ = _typed_hash  # type: ignore[assignment]
        cls.__bool__ = lambda self: True  # type: ignore[attr-defined]


class TokenNeeded(NamedTuple):
    """Answer the token to send now (refreshed first when it is expiring)."""


class Send(NamedTuple):
    """Send the request with ``Bearer <token>`` (as it is when ``token`` is ``None``);
    answer an :class:`Answer`. ``replay``: the second send, after a refresh."""

    token: Token | None
    replay: bool = False


class Describe(NamedTuple):
    """Answer the :class:`Facts` of the answer with ``status`` (a 403: read its problem
    type)."""

    status: int


class Refresh(NamedTuple):
    """Refresh, replacing the access token ``replacing``; answer the token to use now."""

    replacing: str


class Wait(NamedTuple):
    """Wait ``seconds`` (an API rate limit's reset), without blocking an event loop: the
    sync drivers sleep on the coordinator's clock, the async ones await it; answer
    ``None``. The driver may release the answer it holds first."""

    seconds: float


Step = TokenNeeded | Send | Describe | Refresh | Wait


class Answer(NamedTuple):
    """What came back: the status, and the bearer the answered request carried (``None``:
    no bearer, as on a hop to another origin)."""

    status: int
    carried: str | None


class Facts(NamedTuple):
    """About an answer a refresh (or a wait) may cure: the call's name (method and URL
    without query, for log lines and the brake), the 403's problem+json ``type``, whether
    the request body can be sent again, and for a 429 the seconds until X's rate-limit
    window resets, from ``x-rate-limit-reset`` or ``Retry-After`` (``None``: it does not
    say)."""

    endpoint: str
    problem_type: str | None
    replayable: bool
    retry_after: float | None = None


_told_apart_by_type(TokenNeeded, Send, Describe, Refresh, Wait, Answer, Facts)
_NEED_TOKEN = TokenNeeded()


def request_rule(judge: Judge, status_codes: Collection[int], *, put_bearer: bool = True,
                 max_rate_limit_wait: float | None = None, answered: Answer | None = None
                 ) -> Generator[Step, object, None]:
    """The rule for one request; see the module docstring for the steps and what each
    expects back. ``max_rate_limit_wait``: the longest wait for a 429's reset (``None``: a
    429 is returned as it comes). ``answered``: steps 1 and 2 are done, this is the first
    answer (see :func:`settled`): the rule goes on from there."""
    if answered is None:
        token = (yield from _token()) if put_bearer else None
        answer = yield Send(token)
        assert isinstance(answer, Answer)
    else:
        answer = answered
    if _may_wait(answer.status, max_rate_limit_wait):
        assert max_rate_limit_wait is not None
        waited = yield from _wait_out(max_rate_limit_wait, put_bearer=put_bearer)
        if waited is None:
            return
        answer = waited
    if not _looked_at(answer.status, answer.carried, status_codes):
        return
    sent = answer.carried
    assert sent is not None
    facts = yield Describe(answer.status)
    assert isinstance(facts, Facts)
    if not judge.may_cure(answer.status, sent, facts.endpoint, facts.problem_type):
        return
    log.info("%s answered %d; refreshing the token", facts.endpoint, answer.status)
    fresh = yield Refresh(sent)
    assert isinstance(fresh, dict)
    if not facts.replayable:
        log.warning("%s has a body that cannot be replayed (a generator?); returning the %d, "
                    "the next request uses the new token", facts.endpoint, answer.status)
        return
    replay = yield Send(fresh, replay=True)
    assert isinstance(replay, Answer)
    if replay.status == 401 and replay.carried is not None \
            and replay.carried == fresh.get("access_token"):
        refused_replay(judge, fresh, facts.endpoint)


def settled(status: int, carried: str | None, status_codes: Collection[int],
            max_rate_limit_wait: float | None = None) -> bool:
    """Whether the rule ends with the first answer — ``status``, to a request that carried
    the bearer ``carried`` — returned as it is: nothing to describe, wait or refresh. It
    is the rule's own test (:func:`request_rule` asks the same two questions), so a driver
    that took steps 1 and 2 itself asks this, and starts the rule only when it says no
    (``request_rule(..., answered=Answer(status, carried))``): the common 2xx then builds
    no rule at all."""
    # Neither _may_wait nor _looked_at, written out: this runs on every request, and a
    # call costs more than the test (tests/test_flow.py holds the two to the same verdict).
    return (status != 429 or max_rate_limit_wait is None) and (
        carried is None or status not in status_codes)


def _may_wait(status: int, max_rate_limit_wait: float | None) -> bool:
    """A 429 that the policy may wait out (``max_rate_limit_wait`` set)."""
    return status == 429 and max_rate_limit_wait is not None


def _looked_at(status: int, carried: str | None, status_codes: Collection[int]) -> bool:
    """An answer a refresh might cure: a status looked at, to a request with a bearer."""
    return carried is not None and status in status_codes


def _token() -> Generator[Step, object, Token]:
    given = yield _NEED_TOKEN
    assert isinstance(given, dict)
    return given


def _wait_out(longest: float, *, put_bearer: bool) -> Generator[Step, object, Answer | None]:
    """A 429: wait for the window's reset and send once more (the replay's answer), or
    ``None`` to return the 429 as it is."""
    facts = yield Describe(429)
    assert isinstance(facts, Facts)
    if facts.retry_after is None:
        log.debug("%s answered 429 without saying when to try again", facts.endpoint)
        return None
    if facts.retry_after > longest:
        log.info("%s answered 429; X's rate limit resets in %.0f s, more than "
                 "max_rate_limit_wait (%g s): returning the 429", facts.endpoint,
                 facts.retry_after, longest)
        return None
    if not facts.replayable:
        log.warning("%s answered 429 to a body that cannot be replayed (a generator?): "
                    "returning the 429", facts.endpoint)
        return None
    seconds = facts.retry_after + RATE_LIMIT_MARGIN
    log.info("%s answered 429 (rate limit); waiting %.1f s for its reset, then sending it "
             "again", facts.endpoint, seconds)
    yield Wait(seconds)
    token = (yield from _token()) if put_bearer else None
    replay = yield Send(token, replay=True)
    assert isinstance(replay, Answer)
    return replay


class Steps:
    """A driver's view of a rule: iterate for the steps, :meth:`answer` each one; the loop
    ends with the rule."""

    def __init__(self, rule: Generator[Step, object, None]) -> None:
        self._rule = rule
        self._value: object = None

    def __iter__(self) -> Steps:
        return self

    def __next__(self) -> Step:
        return self._rule.send(self._value)

    def answer(self, value: object) -> None:
        """What the step just taken came to (see each step for what it expects)."""
        self._value = value


def refused_replay(judge: Judge, token: Token | str, endpoint: str) -> None:
    """A replay with ``token`` (just refreshed or adopted) was answered 401 by ``endpoint``:
    the 401 brake, which spares a token that ran out in flight (see
    :meth:`~refresher.RefreshCoordinator.refused_after_refresh`)."""
    log.debug("%s refused the replay", endpoint)
    judge.refused_after_refresh(token, endpoint)
