"""RefreshPolicy: every tuning number of the refresh rule, in one frozen value.

In the spirit of urllib3's ``Retry``: one immutable object says *when* a token counts as
expiring, who waits for a refresh under way, which 401/403 answers a refresh may cure, and
how hard the token endpoint is tried. Change it with :meth:`RefreshPolicy.replace`::

    policy = RefreshPolicy(leeway=120.0, token_deadline=10.0)
    session = RefreshingSession("my-client-id", store=store, policy=policy)

A token is in one of three :class:`TokenState`: ``FRESH`` (send it), ``EXPIRING`` (inside
the leeway: refresh before sending, while it still works) and ``EXPIRED`` (past
``expires_at``: X will refuse it). google-auth's ``TokenState`` draws the same lines under
other names: ``FRESH`` is its ``FRESH``, ``EXPIRING`` its ``STALE`` (inside its refresh
threshold), ``EXPIRED`` its ``INVALID`` (which also covers having no token at all, a case
refresher's states leave out: a store answers ``None`` instead).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from typing import Any, TypeGuard

from ._constants import (
    DEFAULT_DEADLINE,
    DEFAULT_LEEWAY,
    DEFAULT_TIMEOUT,
    LEEWAY_MAX_FRACTION,
    LOCK_TTL_MARGIN,
)
from .errors import ConfigurationError
from .token import lifetime_of, seconds_left

__all__ = ["RefreshPolicy", "TokenState", "NOT_TOKEN_RELATED_403", "checked_lock_ttl"]

#: 403 problem types X documents as having nothing to do with the token: no refresh.
NOT_TOKEN_RELATED_403 = (
    "/2/problems/client-forbidden",
    "/2/problems/unsupported-authentication",
)


class TokenState(enum.Enum):
    """Where a token stands, by its ``expires_at`` and the policy's leeway."""

    FRESH = "fresh"
    EXPIRING = "expiring"
    EXPIRED = "expired"


@dataclasses.dataclass(frozen=True)
class RefreshPolicy:
    """The refresh rule's numbers. Every field has the default refresher ships with.

    Expiry:

    - ``leeway``: refresh a token this many seconds before it expires...
    - ``leeway_max_fraction``: ...but no earlier than this fraction of its lifetime before
      (so the emulator's 1-second tokens do not refresh on every request).

    Who waits for a refresh under way in another thread or process:

    - ``wait_margin_fraction``: a token with more than this fraction of the leeway left is
      sent as it is while the refresh runs elsewhere; nearer to expiry the request waits.
    - ``background_refresh``: while that margin lasts, the refresh runs in one background
      thread, so no request stalls behind the token endpoint (off: the request that notices
      the expiry refreshes, the others go on with the current token).
    - ``background_threads``: at most this many background refreshes run at once per
      process, however many accounts enter their refresh window together; the others queue,
      and their requests go on with their still-valid tokens meanwhile.
    - ``lock_timeout``: the longest wait for the thread lock and the store's lock
      (``None``: no limit), then :class:`~refresher.LockTimeout`.
    - ``early_retry`` / ``early_retry_fraction``: after a refresh ahead of expiry failed,
      the next try comes after ``min(early_retry, early_retry_fraction × seconds left)``.

    Which answers a refresh may cure:

    - ``refresh_status_codes``: the statuses that may mean "token refused" (401, 403).
    - ``not_token_related_403``: 403 problem types that never cause a refresh.
    - ``young_fraction``: a 403 to a token still in this first fraction of its life is not
      about the token (every token just granted is young): no refresh.
    - ``brake_401``: a 401 that survives a refresh-and-replay stops further refreshes for
      that endpoint and token (``remembered_refusals`` of them are kept).

    The token endpoint:

    - ``token_timeout``: seconds for each socket read; ``token_deadline``: seconds for the
      whole grant on the wall clock, retries included; ``token_retries`` and
      ``token_backoff``: retries of failures that prove X did not act, with exponential
      backoff.
    - ``token_request_threads``: at most this many threads per process send token requests
      (refreshes, code exchanges, revokes), however many accounts refresh at once; more
      requests wait in a queue, and that wait counts against their deadline (one still
      queued when its caller gives up is never sent). Endpoints whose policies name the
      same number share one pool.
    - ``lock_ttl_margin``: a store lock that lapses by itself must outlive the deadline by
      this much.

    X's rate limits on API requests:

    - ``wait_on_rate_limit``: on an API 429 that says when X's window resets
      (``x-rate-limit-reset``), sleep until then (plus a margin of a second) and send the
      request once more, when that is at most ``max_rate_limit_wait`` seconds away (X's
      windows last 15 minutes); otherwise, and by default, the 429 is returned at once.
    """

    leeway: float = DEFAULT_LEEWAY
    leeway_max_fraction: float = LEEWAY_MAX_FRACTION
    wait_margin_fraction: float = 0.5
    background_refresh: bool = True
    background_threads: int = 4
    lock_timeout: float | None = 30.0
    early_retry: float = 5.0
    early_retry_fraction: float = 0.25
    refresh_status_codes: frozenset[int] = frozenset({401, 403})
    not_token_related_403: tuple[str, ...] = NOT_TOKEN_RELATED_403
    young_fraction: float = 0.5
    brake_401: bool = True
    remembered_refusals: int = 64
    remembered_tokens: int = 32
    token_timeout: float = DEFAULT_TIMEOUT
    token_deadline: float = DEFAULT_DEADLINE
    token_retries: int = 2
    token_backoff: float = 0.25
    token_request_threads: int = 8
    lock_ttl_margin: float = LOCK_TTL_MARGIN
    wait_on_rate_limit: bool = False
    max_rate_limit_wait: float = 900.0

    def __post_init__(self) -> None:
        # Accept any collection of codes, keep a frozenset (the value must stay hashable).
        object.__setattr__(self, "refresh_status_codes",
                           frozenset(int(code) for code in self.refresh_status_codes))
        object.__setattr__(self, "not_token_related_403", tuple(self.not_token_related_403))
        for name in ("leeway", "token_timeout", "token_deadline", "token_backoff",
                     "early_retry", "lock_ttl_margin", "max_rate_limit_wait"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(
                    f"RefreshPolicy.{name} must be a number of seconds >= 0, not {value!r}")
        for name in ("leeway_max_fraction", "wait_margin_fraction", "early_retry_fraction",
                     "young_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigurationError(
                    f"RefreshPolicy.{name} must be a fraction between 0 and 1, not {value!r}")
        if not isinstance(self.wait_on_rate_limit, bool):
            raise ConfigurationError("RefreshPolicy.wait_on_rate_limit must be True or False, "
                                     f"not {self.wait_on_rate_limit!r}")
        if self.lock_timeout is not None and self.lock_timeout < 0:
            raise ConfigurationError("RefreshPolicy.lock_timeout must be >= 0 seconds, or None")
        if self.token_retries < 0:
            raise ConfigurationError("RefreshPolicy.token_retries must be >= 0")
        for name in ("token_request_threads", "background_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"RefreshPolicy.{name} must be a whole number of threads >= 1, not {value!r}")

    def replace(self, **changes: Any) -> RefreshPolicy:
        """A copy with ``changes`` applied (the policy itself never changes)."""
        return dataclasses.replace(self, **changes)

    # -- expiry ----------------------------------------------------------------------------

    def leeway_for(self, token: Mapping[str, Any]) -> float:
        """The leeway for ``token``: ``leeway``, capped at a fraction of its lifetime."""
        lifetime = lifetime_of(token)
        if lifetime is None:
            return self.leeway
        return min(self.leeway, max(lifetime, 0.0) * self.leeway_max_fraction)

    def state(self, token: Mapping[str, Any], now: float) -> TokenState:
        """FRESH, EXPIRING (inside the leeway) or EXPIRED, at wall-clock time ``now``.

        A token that does not say when it expires is FRESH: X's 401 will tell.
        """
        left = seconds_left(token, now=now)
        if left is None or left > self.leeway_for(token):
            return TokenState.FRESH
        return TokenState.EXPIRING if left > 0 else TokenState.EXPIRED

    def waits_for_refresh(self, token: Mapping[str, Any], now: float) -> bool:
        """Whether a request with ``token`` waits for a refresh someone else is doing."""
        left = seconds_left(token, now=now)
        return left is None or left <= self.leeway_for(token) * self.wait_margin_fraction

    def early_retry_delay(self, seconds_left: float) -> float:
        """Seconds until the next try after a failed refresh ahead of expiry."""
        return min(self.early_retry, max(seconds_left, 0.0) * self.early_retry_fraction)

    @property
    def longest_rate_limit_wait(self) -> float | None:
        """The longest wait for an API rate limit's reset, or ``None`` for no waiting (a
        429 is returned as it comes)."""
        return self.max_rate_limit_wait if self.wait_on_rate_limit else None

    # -- which refused requests a refresh may cure -----------------------------------------

    def may_cure_403(self, problem_type: str | None, token: Mapping[str, Any] | None,
                     now: float, *, refreshed_here: bool) -> bool:
        """Whether a 403 to ``token`` may be about the token, so a refresh may cure it.

        Never for the problem types X documents as unrelated; never for a token in the first
        ``young_fraction`` of its life; for a token that does not say when it expires, only
        if it did not come from a refresh in this process (``refreshed_here``).
        """
        if problem_type and problem_type.endswith(self.not_token_related_403):
            return False
        if token is not None:
            left, lifetime = seconds_left(token, now=now), lifetime_of(token)
            if left is not None and lifetime:
                return left < lifetime * self.young_fraction
        return not refreshed_here

    # -- store locks that lapse by themselves ------------------------------------------------

    def lock_ttl_needed(self, deadline: float) -> float:
        """The shortest ``lock_ttl`` a store lock may have when a grant may take up to
        ``deadline`` seconds: the deadline plus ``lock_ttl_margin``."""
        return deadline + self.lock_ttl_margin

    def check_lock_ttl(self, store: Any, deadline: float) -> None:
        """Refuse a store whose lock lapses by itself (``lock_ttl``) before a grant of up to
        ``deadline`` seconds, plus the margin, is over (:class:`~refresher.ConfigurationError`)."""
        ttl = getattr(store, "lock_ttl", None)
        if not _is_seconds(ttl):
            return
        needed = self.lock_ttl_needed(deadline)
        if ttl < needed:
            raise ConfigurationError(
                f"{store!r} has lock_ttl={ttl:g} s, but a refresh may take up to the token "
                f"endpoint's deadline of {deadline:g} s, and the lock must outlive it by "
                f"{self.lock_ttl_margin:g} s: use lock_ttl >= {needed:g}, or a shorter deadline"
            )


#: The policy used when none is given.
DEFAULT_POLICY = RefreshPolicy()


def _is_seconds(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a number (``True`` and ``False`` are not numbers of seconds)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checked_lock_ttl(lock_ttl: object, log: logging.Logger) -> float:
    """``lock_ttl`` as a store's constructor keeps it, in seconds.

    Not a positive number (``True`` is none): :class:`~refresher.ConfigurationError`.
    Shorter than :data:`DEFAULT_POLICY` needs for the default deadline: a warning on
    ``log`` (the store's logger), since sessions with that deadline will refuse the store.

    >>> checked_lock_ttl(30, logging.getLogger("doctest"))
    30.0
    """
    if not _is_seconds(lock_ttl) or lock_ttl <= 0:
        raise ConfigurationError("lock_ttl must be a positive number of seconds")
    seconds = float(lock_ttl)
    if seconds < DEFAULT_POLICY.lock_ttl_needed(DEFAULT_DEADLINE):
        log.warning(
            "lock_ttl=%s s is shorter than a refresh may take (the token endpoint's %s s "
            "deadline plus %s s): sessions with the default deadline will refuse this store",
            lock_ttl, DEFAULT_DEADLINE, DEFAULT_POLICY.lock_ttl_margin,
        )
    return seconds
