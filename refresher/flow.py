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
4. When the coordinator says a refresh may cure it: :class:`Refresh` → the driver answers
   the token to use from now on (a sibling's newer token is adopted, not refreshed).
5. A body that cannot be sent again ends the rule: the refused answer is returned, the
   next request uses the new token. Otherwise :class:`Send` once more, with the new token
   (``replay=True``: the driver releases the first answer first).
6. A replay answered 401 *with the token just refreshed* puts that endpoint and token on
   the brake (:meth:`~refresher.RefreshCoordinator.refused_after_refresh`).

The rule ends when the driver should return the last answer it got. A driver iterates
:class:`Steps` and answers each step with :meth:`Steps.answer`.

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
from dataclasses import dataclass
from typing import Protocol

from .token import Token

__all__ = ["Answer", "Describe", "Facts", "Judge", "Refresh", "Send", "Step", "Steps",
           "TokenNeeded", "request_rule", "refused_replay"]

log = logging.getLogger(__name__)


class Judge(Protocol):
    """What the rule asks of a :class:`~refresher.RefreshCoordinator`."""

    def may_cure(self, status: int, access_token: str, endpoint: str,
                 problem_type: str | None = None) -> bool: ...

    def refused_after_refresh(self, token: Token | str, endpoint: str) -> None: ...


@dataclass(frozen=True)
class TokenNeeded:
    """Answer the token to send now (refreshed first when it is expiring)."""


@dataclass(frozen=True)
class Send:
    """Send the request with ``Bearer <token>`` (as it is when ``token`` is ``None``);
    answer an :class:`Answer`. ``replay``: the second send, after a refresh."""

    token: Token | None
    replay: bool = False


@dataclass(frozen=True)
class Describe:
    """Answer the :class:`Facts` of the answer with ``status`` (a 403: read its problem
    type)."""

    status: int


@dataclass(frozen=True)
class Refresh:
    """Refresh, replacing the access token ``replacing``; answer the token to use now."""

    replacing: str


Step = TokenNeeded | Send | Describe | Refresh


@dataclass(frozen=True)
class Answer:
    """What came back: the status, and the bearer the answered request carried (``None``:
    no bearer, as on a hop to another origin)."""

    status: int
    carried: str | None


@dataclass(frozen=True)
class Facts:
    """About an answer a refresh may cure: the call's name (method and URL without query,
    for log lines and the brake), the 403's problem+json ``type``, and whether the request
    body can be sent again."""

    endpoint: str
    problem_type: str | None
    replayable: bool


_NEED_TOKEN = TokenNeeded()


def request_rule(judge: Judge, status_codes: Collection[int], *, put_bearer: bool = True
                 ) -> Generator[Step, object, None]:
    """The rule for one request; see the module docstring for the steps and what each
    expects back."""
    token: Token | None = None
    if put_bearer:
        given = yield _NEED_TOKEN
        assert isinstance(given, dict)
        token = given
    answer = yield Send(token)
    assert isinstance(answer, Answer)
    sent = answer.carried
    if sent is None or answer.status not in status_codes:
        return
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
