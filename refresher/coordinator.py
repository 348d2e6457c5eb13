"""RefreshCoordinator: one refresh at a time, and never the same refresh token twice.

It knows tokens, stores and the token endpoint, not HTTP requests: the front ends drive
:func:`refresher.flow.request_rule`, which asks it questions in plain values. It holds the
live token of one account (the hot path: :meth:`RefreshCoordinator.token_for_request`, and
:meth:`~RefreshCoordinator.ready_token` for a caller that must not block), decides when to
refresh, and runs one refresh at a time per process (the thread lock); the refresh itself,
under the store's lock, is :class:`~refresher.transaction.RefreshTransaction`, and
whether a 401/403 may be cured is :class:`~refresher.judge.CureJudge`'s to say.

A failed refresh changes nothing in the store; ``on_refresh_error`` sees it first. A pair
the store could not take (whatever it raised) is kept, used, and written back first thing.
So is a pair X granted after the caller gave up waiting (it had been sent before the
deadline): the endpoint hands it over, and it is saved under the store's lock; until that
answer came or can no longer come, the refresh token it spent is not sent again.

Words (spend, adopt, sibling, brake, write back, lease, fencing): see
``docs/explanation/glossary.rst``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

from .background import BackgroundRun
from .clock import SYSTEM_CLOCK, Clock
from .errors import LockLost, ReauthorizationRequired, RefresherError
from .inflight import AnswerPending
from .judge import CureJudge
from .pending import WriteBack
from .policy import DEFAULT_POLICY, RefreshPolicy, TokenState
from .revoke import revoke_pair
from .stores.base import TokenStore
from .stores.guarded import GuardedAccount
from .token import Token, fingerprint, lasts, lifetime_of, seconds_left, validate_token
from .transaction import Endpoint, RefreshTransaction, Replacing, replaced

__all__ = ["RefreshCoordinator"]

log = logging.getLogger(__name__)


class RefreshCoordinator:
    """Owns the live token of one account of one store, and every refresh of it.

    ``policy`` holds the numbers (leeway, lock timeout, the 401/403 rule); ``clock`` is the
    time it reads (a :class:`~refresher.testing.FakeClock` in tests).

    The front ends ask it for :meth:`token_for_request` (the token to send, refreshed first
    when expiring) or, without blocking, :meth:`ready_token`, and for :meth:`refresh`; the
    per-request rule (:mod:`refresher.flow`) asks :meth:`may_cure` (may a refresh cure this
    401/403?) and tells it :meth:`refused_after_refresh`.
    """

    def __init__(
        self,
        store: TokenStore,
        account: str,
        endpoint: Endpoint,
        *,
        policy: RefreshPolicy | None = None,
        clock: Clock | None = None,
        on_token_update: Callable[[Token], Any] | None = None,
        on_refresh_error: Callable[[BaseException], Any] | None = None,
        on_refresh_start: Callable[[], Any] | None = None,
    ) -> None:
        policy = policy if policy is not None else DEFAULT_POLICY
        self.policy = policy
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.account = account
        self._account = GuardedAccount(store, account,
                                       sender=(endpoint.client_id, endpoint.token_url))
        self.endpoint = endpoint
        self.on_token_update = on_token_update
        self.on_refresh_error = on_refresh_error
        self.on_refresh_start = on_refresh_start
        policy.check_lock_ttl(store, endpoint.deadline)
        self._token: Token | None = None
        self._fresh_until = -math.inf  # see _set
        # A pair we were granted but could not save (store down, or it came after its
        # caller gave up): written back first thing.
        self._write_back = WriteBack(
            self._account, policy.lock_timeout, lambda token: self._set(token, fresh=True),
            lambda pair: _run_hook(self.on_token_update, dict(pair), "on_token_update"))
        self._judge = CureJudge(policy, self.clock, account)
        self._transaction = RefreshTransaction(
            self._account, endpoint, policy, self.clock, write_back=self._write_back,
            adopt=lambda token, fresh: self._set(token, fresh=fresh),
            starting=self._refresh_starting)
        # When a failed early refresh may be tried again, in which process: a child forked
        # meanwhile tries at once. (The parent's background run and its locks reset
        # themselves; a pair the parent saves is adopted from the store by the next refresh.)
        self._next_early_try = (0, 0.0)
        self._background = BackgroundRun(policy.background_threads)

    @property
    def refreshes(self) -> int:
        """Pairs X granted to this coordinator (late ones included)."""
        return self._transaction.refreshes

    @property
    def store(self) -> TokenStore:
        """The store holding the account's pair."""
        return self._account.store

    # -- start-up ------------------------------------------------------------------------

    def load(self, seed: Token | None = None) -> Token | None:
        """Read the account's token; store ``seed`` first when the account has none.

        A ``seed`` refresher cannot use raises :class:`~refresher.InvalidTokenError` before
        anything is saved.
        """
        if seed:
            checked = validate_token(seed, now=self.clock.time())
            with self._store_lock():
                stored = self._account.load_versioned().token
                if stored is None:
                    stored = checked
                    self._account.save_versioned(stored, None)
        else:
            stored = self._account.load()
        if stored is not None:
            self._set(stored, fresh=False)
        return stored

    def replace(self, token: Token) -> None:
        """Make ``token`` the account's token (a new login): save it, then use it."""
        token = validate_token(token, now=self.clock.time())
        with self._account.thread_held(self.policy.lock_timeout), self._store_lock():
            self._account.save_versioned(token, None)
            self._write_back.pending.forget()
            self._set(token, fresh=True)

    # -- the hot path --------------------------------------------------------------------

    @property
    def token(self) -> Token | None:
        """The token requests are sent with now (may be ``None`` before a login)."""
        return self._token

    @property
    def pending_write_back(self) -> bool:
        """Whether a granted pair the store could not take waits to be written back."""
        return self._write_back.waiting

    def ready_token(self, *, refresh_under_way: bool = False) -> Token | None:
        """The token to send now if that needs no wait, else ``None`` (then
        :meth:`token_for_request` has work to do: a first load, a write back, a refresh).

        Never blocks, never reads the store: what an event loop may call. Ready means FRESH
        with no granted pair waiting to be written back; with ``refresh_under_way`` (the
        caller knows another task is refreshing), also a token with a good margin left,
        which goes out as it is rather than waiting (the policy's ``waits_for_refresh``).
        """
        token = self._token
        if token is None or not token.get("access_token") or self._write_back.waiting:
            return None
        now = self.clock.time()
        if now < self._fresh_until:  # FRESH, as policy.state says, decided when it was set
            return token
        if refresh_under_way and not self.policy.waits_for_refresh(token, now):
            return token
        return None

    def replacement(self, replacing: str) -> Token | None:
        """The live token when it replaced the access token ``replacing`` and may be used
        as it is — ready, or a grant that was never fresh (``expires_in`` 0: refreshing it
        again for every waiting caller would rotate the pair once per caller); else
        ``None``. Never blocks."""
        current = self._token
        if not replaced(current, replacing):
            return None
        assert current is not None
        if self.ready_token() is not None or not (lifetime_of(current) or 0) > 0:
            return current
        return None

    def replaced(self, replacing: Replacing) -> bool:
        """Whether the live token replaced the access token ``replacing`` (see
        :func:`refresher.transaction.replaced`)."""
        return replaced(self._token, replacing)

    def token_for_request(self) -> Token:
        """The token to send now, refreshed first when it is expiring."""
        ready = self.ready_token()
        if ready is not None:
            return ready  # the hot path: nothing to write back, load or refresh
        if self._write_back.waiting:
            self._write_back.now()
        token = self._token
        if token is None:
            token = self.load()
            if token is None:
                raise ReauthorizationRequired(
                    f"no token for account {self.account!r} in {self.store!r}; "
                    "log in first (for example with `refresher login`)"
                )
        if not token.get("access_token"):
            # A pair whose access token X never gave us: "" is what it replaces, so threads
            # queued behind the first take the token it gets instead of refreshing again.
            return self.refresh(replacing="")
        now = self.clock.time()
        state = self.policy.state(token, now)
        if state is TokenState.FRESH or self._early_retry_waits():
            return token
        wait = self.policy.waits_for_refresh(token, now)
        if not wait and self.policy.background_refresh:
            # The token still has a good margin: this request goes out with it, and one
            # background thread does the coordinated refresh (google-auth's non-blocking
            # refresh), so no request of the window stalls behind the token endpoint.
            self._background.start(lambda: self._background_refresh(token))
            return token
        try:
            return self.refresh(replacing=token["access_token"], wait=wait)
        except RefresherError as exc:
            if state is TokenState.EXPIRED:
                raise
            self._retry_later(token, exc)
            return token

    def _early_retry_waits(self) -> bool:
        pid, until = self._next_early_try
        return pid == os.getpid() and self.clock.monotonic() < until

    def wait_for_background(self, timeout: float | None = None) -> bool:
        """Wait for a background refresh under way; False if it still runs after ``timeout``."""
        return self._background.wait(timeout)

    def _background_refresh(self, token: Token) -> None:
        try:
            self.refresh(replacing=token["access_token"], wait=True)
        except Exception as exc:  # on_refresh_error has heard of a RefresherError
            if not isinstance(exc, RefresherError):
                log.exception("account %r: background refresh failed", self.account)
            self._retry_later(token, exc)

    def _retry_later(self, token: Token, exc: BaseException) -> None:
        """A refresh ahead of expiry failed while the token still works: send it, and try
        again a little later rather than on every request (no sooner than the token endpoint
        asked, :attr:`~refresher.EndpointError.retry_after`, while the token lasts)."""
        left = seconds_left(token, now=self.clock.time()) or 0.0
        delay = self.policy.early_retry_delay(left)
        asked = getattr(exc, "retry_after", None)
        if asked is not None:  # X asked for a pause: none sooner, within the token's life
            delay = max(delay, min(asked, left))
        self._next_early_try = (os.getpid(), self.clock.monotonic() + delay)
        log.warning("account %r: early refresh failed (%s); the token still has %.0f s, "
                    "retrying later", self.account, type(exc).__name__, left)

    # -- 401/403 -------------------------------------------------------------------------

    def may_cure(self, status: int, access_token: str, endpoint: str,
                 problem_type: str | None = None) -> bool:
        """Whether a refresh may cure ``status``, answered by ``endpoint`` (a method and URL
        without query) to a request that carried ``access_token``.

        No for a token this coordinator did not hand out (someone else's, or none), for a
        status outside the policy's ``refresh_status_codes``, for a 401 on the brake (see
        :meth:`refused_after_refresh`), and for a 403 the policy says is not about the token
        (``problem_type`` is the problem+json ``type`` of the answer, if any).
        """
        return self._judge.may_cure(status, access_token, endpoint, problem_type, self._token)

    def refused_after_refresh(self, token: Token | str, endpoint: str) -> None:
        """``endpoint`` answered 401 to ``token`` (the pair, or its access token) even right
        after a refresh. That 401 is not about the token (X has been seen answering 401 to
        valid tokens): further 401s from that endpoint to that token are returned as they
        come instead of rotating the pair again. Other endpoints, and the next token, are not
        affected. A token no longer fresh by then (it ran out in flight) is not braked.
        """
        self._judge.refused_after_refresh(token, endpoint, self._token)

    # -- the refresh ---------------------------------------------------------------------

    def refresh(self, replacing: Replacing = None, *, wait: bool = True,
                retry_refused: bool = False) -> Token:
        """A coordinated refresh; returns the token to use from now on.

        ``replacing`` is the access token that failed or is expiring (``""`` for a pair
        that has none): when another thread, or the store, already holds a different usable
        token, that one is adopted and no refresh token is spent. ``None`` (a refresh asked
        for as such) refreshes whatever is stored. With ``wait=False``, a
        refresh already under way elsewhere is not waited for: the current token is returned.
        ``retry_refused`` sends once on purpose a refresh token X refused (:mod:`.refusal`).
        """
        try:
            if not self._account.acquire_thread_lock(self.policy.lock_timeout, wait=wait):
                assert self._token is not None
                return self._token  # another thread of ours is refreshing
            try:
                current = self._token
                if replaced(current, replacing):
                    # Another thread of ours refreshed while we waited: use its token even
                    # if it is already "expiring" (a grant with expires_in 0), instead of
                    # every waiting thread rotating the pair again in turn.
                    assert current is not None
                    return current
                try:
                    granted = self._run(replacing, wait, retry_refused)
                except LockLost as lost:
                    # Nothing was spent; whoever holds the lock now may have refreshed.
                    log.warning("account %r: %s; taking the lock again", self.account, lost)
                    granted = self._run(replacing, wait, retry_refused)
                except AnswerPending as pending:
                    granted = None if not wait else self._transaction.answers.after_sibling(
                        pending, lambda: self._run(replacing, True, retry_refused))
            finally:
                self._account.thread_lock.release()
        except RefresherError as exc:
            self._write_back.announce_due()
            _run_hook(self.on_refresh_error, exc, "on_refresh_error")
            raise
        self._write_back.announce_due()
        if granted is not None:
            # The pair is saved: a failing hook is logged, and must not fail the request.
            _run_hook(self.on_token_update, dict(granted), "on_token_update")
            return granted
        assert self._token is not None
        return self._token

    def refresh_within(self, within: float, *, retry_refused: bool = False) -> Token:
        """Refresh only if the stored token expires within ``within`` seconds; the token to
        use from now on. A token that does not say when it expires is left alone (X's 401
        will tell).

        What a sidecar or a cron job calls so that the processes serving requests never
        refresh themselves (``refresher refresh --within``): the store is read without a
        lock, and a token with more than ``within`` seconds left is returned as it is. An
        expiring one is refreshed as :meth:`refresh` does, replacing the access token read:
        a sibling that refreshed in between is adopted, nothing is spent twice. Give more
        than the sessions' leeway (60 s by default) plus the time between two calls.
        """
        if not (isinstance(within, (int, float)) and not isinstance(within, bool)
                and math.isfinite(within) and within >= 0):
            raise ValueError(f"within must be a number of seconds >= 0, not {within!r}")
        stored = self.load()
        if stored is None:
            raise ReauthorizationRequired(
                f"no token for account {self.account!r} in {self.store!r}; "
                "log in first (for example with `refresher login`)")
        if lasts(stored, within, now=self.clock.time()):
            return stored
        return self.refresh(replacing=stored.get("access_token") or "",
                            retry_refused=retry_refused)

    def _run(self, replacing: Replacing, wait: bool, retry: bool) -> Token | None:
        """The refresh under the store's lock: the granted pair, or ``None`` when a
        sibling's token was adopted."""
        return self._transaction.run(replacing, self._token, wait, retry)

    def _refresh_starting(self) -> None:
        if self.on_refresh_start is not None:
            try:
                self.on_refresh_start()
            except Exception:
                log.exception("on_refresh_start hook raised; carrying on")

    def _store_lock(self, wait: bool = True) -> Any:
        """The store's lock for the account, within the policy's lock timeout."""
        return self._account.lock(self.policy.lock_timeout if wait else 0)

    def _set(self, token: Token, *, fresh: bool) -> None:
        self._token = token
        access = token.get("access_token")
        if access:
            self._judge.record(access, refreshed_here=fresh)
        # Until when (wall clock) the token is FRESH: the hot path compares one number.
        left = seconds_left(token, now=0.0)
        self._fresh_until = math.inf if left is None else left - self.policy.leeway_for(token)

    # -- the end ---------------------------------------------------------------------------

    def revoke(self, revoke_url: str) -> str:
        """Revoke the account's pair at ``revoke_url`` and remove the account from the store,
        under the thread lock and the store's lock (no refresh can come between); from then
        on a request raises :class:`~refresher.ReauthorizationRequired`.

        X's caveat: a revoke may remove all of the app's access for that user. Raises
        :class:`~refresher.RevokeError` when X did not revoke the refresh token (the account
        is kept). Returns ``""`` or a note that the access token could not be revoked.
        """
        with self._account.thread_held(self.policy.lock_timeout), self._store_lock():
            pair = self._account.load() or self._token or {}
            note = revoke_pair(self.endpoint, revoke_url, pair)
            self._token = None  # revoked at X: nothing to send any more
            self._write_back.pending.forget()
            self._account.delete()
        log.info("account %r: revoked at %s and removed from %r", self.account, revoke_url,
                 self.store)
        return note

    def describe(self) -> dict[str, Any]:
        """Safe facts for a repr or a status line: account, expiry, fingerprint."""
        t = self._token or {}
        return {"account": self.account, "expires_in": seconds_left(t, now=self.clock.time()),
                "fingerprint": fingerprint(t.get("access_token"))}


def _run_hook(hook: Callable[[Any], Any] | None, argument: Any, name: str) -> None:
    try:
        if hook is not None:
            hook(argument)
    except Exception:
        log.exception("%s hook %r raised; carrying on", name, hook)
