"""An answer X may still send: a refresh whose caller gave up after the request went out.

A refresh that reaches its deadline after its request was written may still be answered:
X may have spent the refresh token and be sending the new pair over a slow network. The
process that sent it saves that pair when it arrives (:mod:`refresher.pending`), but it has
released the store's lock by then, and a sibling that took it would resend the same refresh
token: X refuses it, one reused token. So before releasing the lock, the sender records in
the store's metadata, under :data:`ANSWER_PENDING`, the refresh token's fingerprint and until
when its answer may come; a holder that reads the record for the refresh token it was about
to spend does not send it, and waits (outside the lock, within its lock timeout) for the
pair, or for the record to run out (the sender died, or its answer never came). A new pair
makes the record moot: it names a refresh token no longer stored.

Only a fingerprint and a time are kept: never a token. A store without metadata records
nothing (its siblings then resend, as before).

Words (answer pending, sibling, spend): see ``docs/explanation/glossary.rst``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .clock import Clock
from .errors import RefreshError
from .policy import RefreshPolicy
from .token import Token, fingerprint

__all__ = ["ANSWER_PENDING", "AnswerPending", "AnswerWaits", "pending_until", "with_pending"]

_T = TypeVar("_T")

#: Metadata key: ``{"refresh_token": fingerprint, "until": epoch seconds}``.
ANSWER_PENDING = "answer_pending"


class AnswerPending(RefreshError):
    """The stored refresh token was sent by a sibling whose answer may still come, until
    ``until`` (epoch seconds); nothing was sent."""

    def __init__(self, account: str, until: float) -> None:
        super().__init__(
            f"account {account!r}: another holder sent its refresh token and gave up waiting "
            "for the answer, which may still come (and be saved by it); the token is not sent "
            "again meanwhile, nothing was sent. Try again shortly", request_sent=False)
        self.until = until


def pending_until(metadata: Mapping[str, Any], token: Token | None, now: float) -> float | None:
    """When the answer for ``token``'s refresh token may still come until (epoch seconds),
    if a record says so and that time is not past; else ``None``."""
    record = metadata.get(ANSWER_PENDING)
    refresh_token = (token or {}).get("refresh_token")
    if not isinstance(record, dict) or not refresh_token:
        return None
    until = record.get("until")
    if record.get("refresh_token") != fingerprint(str(refresh_token)) \
            or not isinstance(until, (int, float)) or until <= now:
        return None
    return float(until)


def with_pending(metadata: Mapping[str, Any], refresh_token: str,
                 until: float) -> dict[str, Any]:
    """``metadata`` with the record that an answer for ``refresh_token`` may come until
    ``until`` (epoch seconds)."""
    updated = {key: value for key, value in metadata.items() if key != "updated_at"}
    updated[ANSWER_PENDING] = {"refresh_token": fingerprint(refresh_token), "until": until}
    return updated


class AnswerWaits:
    """When a coordinator of ``account`` waits for an answer that may still come: its own
    (``endpoint.wait_for_late_answers``) before it takes the store's lock, and a sibling's
    (an :class:`AnswerPending`) outside it; every wait within the policy's bounds."""

    def __init__(self, account: str, endpoint: Any, policy: RefreshPolicy, clock: Clock) -> None:
        self.account, self.endpoint, self.policy, self.clock = account, endpoint, policy, clock

    def bound(self) -> float:
        """Seconds an answer may still come after its caller gave up, at the most."""
        return float(self.endpoint.deadline + self.policy.token_timeout)

    def until(self) -> float:
        """Until when (epoch seconds) an answer given up on now may still come."""
        return self.clock.time() + self.bound()

    def ours_done(self, wait: bool) -> bool:
        """Whether no answer to an earlier refresh of ours may still come (after waiting for
        it, within the lock timeout, when ``wait``); raises when one still may."""
        bound = self.bound()
        if self.policy.lock_timeout is not None:
            bound = min(bound, self.policy.lock_timeout)
        if self.endpoint.wait_for_late_answers(bound if wait else 0.0):
            return True
        if not wait:
            return False
        raise RefreshError(
            f"account {self.account!r}: the answer to an earlier refresh, sent before its "
            "caller gave up, may still come; its refresh token is not sent again meanwhile "
            "(nothing was sent now). Try again shortly", request_sent=False)

    def after_sibling(self, pending: AnswerPending, attempt: Callable[[], _T]) -> _T:
        """A sibling's answer for the stored refresh token may still come: run ``attempt``
        (a refresh under the store's lock) again every 0.1 s until it no longer meets the
        record (the sibling saved its pair, or the record ran out), within the lock timeout."""
        limit = self.policy.lock_timeout if self.policy.lock_timeout is not None \
            else self.bound()
        give_up = self.clock.monotonic() + limit
        while True:
            if self.clock.monotonic() >= give_up:
                raise pending
            self.clock.sleep(min(0.1, max(0.0, pending.until - self.clock.time())))
            try:
                return attempt()
            except AnswerPending as again:
                pending = again
