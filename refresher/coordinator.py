"""RefreshCoordinator: one refresh at a time, and never the same refresh token twice.

It knows tokens, stores and the token endpoint, not HTTP requests (the adapters ask it
questions in plain values). The rule, top to bottom, is :meth:`RefreshCoordinator.refresh`:

1. take the thread lock (one refresh per process at a time), within ``lock_timeout``;
2. take the store's lock for the account (one per machine, or per Redis);
3. read the store with its version: if a sibling already replaced the token that failed,
   use theirs; if X already refused the stored refresh token to this client id at this
   token URL, say a login is needed without resending it;
4. run ``on_refresh_start``, then check the store's lock is still held, and spend the
   *stored* refresh token: nothing stands between that check and the token request;
5. save the new pair before anything else (a compare-and-set on the version read in 3),
   release the locks, run ``on_token_update``.

A failed refresh changes nothing in the store; ``on_refresh_error`` sees it first. A pair
the store could not take (whatever it raised) is kept, used, and written back first thing.
So is a pair X granted after the caller gave up waiting (it had been sent before the
deadline): the endpoint hands it over, and it is saved under the store's lock; until that
answer came or can no longer come, the refresh token it spent is not sent again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ._fork import register
from .background import BackgroundRun
from .clock import SYSTEM_CLOCK, Clock
from .endpoint import TokenEndpoint
from .errors import (
    LockLost,
    LockTimeout,
    ReauthorizationRequired,
    RefresherError,
    RefreshError,
    TokenStoreError,
)
from .inflight import AnswerPending, AnswerWaits
from .judge import CureJudge
from .pending import WriteBack
from .policy import DEFAULT_POLICY, RefreshPolicy, TokenState
from .stores.base import TokenStore
from .stores.guarded import GuardedAccount
from .token import Token, fingerprint, seconds_left, validate_token

__all__ = ["RefreshCoordinator"]

log = logging.getLogger(__name__)


class RefreshCoordinator:
    """Owns the live token of one account of one store, and every refresh of it.

    ``policy`` holds the numbers (leeway, lock timeout, the 401/403 rule); ``clock`` is the
    time it reads (a :class:`~refresher.testing.FakeClock` in tests).

    The adapter asks it three things: :meth:`token_for_request` (the token to send, refreshed
    first when expiring), :meth:`may_cure` (may a refresh cure this 401/403?) and
    :meth:`refresh`; and tells it one: :meth:`refused_after_refresh`.
    """

    def __init__(
        self,
        store: TokenStore,
        account: str,
        endpoint: TokenEndpoint,
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
        # A pair we were granted but could not save (store down, or it came after its
        # caller gave up): written back first thing.
        self._write_back = WriteBack(
            self._account, policy.lock_timeout, lambda token: self._set(token, fresh=True),
            lambda pair: _run_hook(self.on_token_update, dict(pair), "on_token_update"))
        self._judge = CureJudge(policy, self.clock, account)
        self._answers = AnswerWaits(account, endpoint, policy, self.clock)
        self.refreshes = 0
        self._next_early_try = 0.0
        self._background = BackgroundRun(policy.background_threads)
        register(self)

    def _after_fork_in_child(self) -> None:
        # The parent's background run and its locks stayed there (they reset themselves);
        # a pair it was granted and saves is adopted from the store by the next refresh.
        self._next_early_try = 0.0

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

    def token_for_request(self) -> Token:
        """The token to send now, refreshed first when it is expiring."""
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
        if state is TokenState.FRESH or self.clock.monotonic() < self._next_early_try:
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
        again a little later rather than on every request."""
        left = seconds_left(token, now=self.clock.time()) or 0.0
        self._next_early_try = self.clock.monotonic() + self.policy.early_retry_delay(left)
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

    def refresh(self, replacing: str | None = None, *, wait: bool = True,
                retry_refused: bool = False) -> Token:
        """A coordinated refresh; returns the token to use from now on.

        ``replacing`` is the access token that failed or is expiring: when another thread,
        or the store, already holds a different usable token, that one is adopted and no
        refresh token is spent. ``None`` refreshes whatever is stored. With ``wait=False``, a
        refresh already under way elsewhere is not waited for: the current token is returned.
        ``retry_refused`` sends once on purpose a refresh token X refused (:mod:`.refusal`).
        """
        try:
            if not self._account.acquire_thread_lock(self.policy.lock_timeout, wait=wait):
                assert self._token is not None
                return self._token  # another thread of ours is refreshing
            try:
                current = self._token
                if _replaced(current, replacing):
                    # Another thread of ours refreshed while we waited: use its token even
                    # if it is already "expiring" (a grant with expires_in 0), instead of
                    # every waiting thread rotating the pair again in turn.
                    assert current is not None
                    return current
                try:
                    granted = self._refresh_under_lock(replacing, wait, retry_refused)
                except LockLost as lost:
                    # Nothing was spent; whoever holds the lock now may have refreshed.
                    log.warning("account %r: %s; taking the lock again", self.account, lost)
                    granted = self._refresh_under_lock(replacing, wait, retry_refused)
                except AnswerPending as pending:
                    granted = None if not wait else self._answers.after_sibling(
                        pending, lambda: self._refresh_under_lock(replacing, True, retry_refused))
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

    def _refresh_under_lock(self, replacing: str | None, wait: bool, retry: bool) -> Token | None:
        """Returns the granted pair, or ``None`` when a sibling's token was adopted."""
        if not self._answers.ours_done(wait):
            return None  # a refresh whose answer may still come: the current token still works
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._store_lock(wait=wait))
            except LockTimeout:
                if wait:
                    raise
                return None  # a sibling is refreshing; the current token still works
            self._write_back.locked()
            stored = self._account.load_versioned()
            if self._usable_replacement(stored.token, replacing):
                assert stored.token is not None
                log.info("account %r: adopting token %s refreshed by a sibling",
                         self.account, fingerprint(stored.token.get("access_token")))
                self._set(stored.token, fresh=True)
                return None
            refresh_token = (stored.token or self._token or {}).get("refresh_token")
            if not refresh_token:
                raise ReauthorizationRequired(
                    f"account {self.account!r} has no refresh token in {self.store!r} "
                    "(was offline.access in the scopes?); log in again"
                )
            self._account.check_refusals(stored.token, retry=retry)
            self._account.check_answer_pending(stored.token, self.clock.time())
            if self.on_refresh_start is not None:
                try:
                    self.on_refresh_start()  # for metrics: the token call starts now
                except Exception:
                    log.exception("on_refresh_start hook raised; carrying on")
            # A holder whose lock lapsed (a hook that blocked, a paused process) must not
            # spend the token: the next holder may be. Nothing runs between this and the send.
            self._account.verify_lock()
            try:
                granted = self.endpoint.refresh(
                    refresh_token, on_late_grant=lambda pair: self._late_grant(pair, refresh_token))
            except ReauthorizationRequired:
                if self._adopted_after_refusal(refresh_token):
                    return None
                raise
            except RefreshError as exc:
                if exc.request_sent is not False and not self.endpoint.wait_for_late_answers(0):
                    # X may still answer (and this process save the pair): siblings must
                    # not resend the token meanwhile. Recorded before the lock is released.
                    self._account.mark_answer_pending(refresh_token, self._answers.until())
                raise
            # X has rotated the pair: saving it comes before anything else that can fail.
            self.refreshes += 1
            self._save_or_keep(granted, parent=refresh_token, expected=stored.version)
            self._account.forget_refusals()  # X granted: a recorded refusal of it is moot
            log.info("account %r: refreshed, access token %s, expires in %.0f s",
                     self.account, fingerprint(granted.get("access_token")),
                     seconds_left(granted, now=self.clock.time()) or 0.0)
            if not granted.get("access_token"):
                raise RefreshError(
                    f"{self.endpoint.token_url} answered 200 with a new refresh token but no "
                    "usable access token; the new refresh token is saved, and the next request "
                    "refreshes again"
                )
            return granted

    def _usable_replacement(self, candidate: Token | None, replacing: str | None) -> bool:
        """``candidate`` is a token other than the one being replaced, and not expiring."""
        return _replaced(candidate, replacing) and candidate is not None and (
            self.policy.state(candidate, self.clock.time()) is TokenState.FRESH)

    def _adopted_after_refusal(self, refresh_token: str) -> bool:
        """X refused ``refresh_token`` as spent: adopt a sibling's pair, or record the loss."""
        # A sibling whose lock lapsed may have saved the new pair meanwhile.
        again = self._account.load()
        if again is not None and again.get("refresh_token") != refresh_token:
            log.info("account %r: refresh token was spent by a sibling; adopting its pair",
                     self.account)
            self._set(again, fresh=True)
            return True
        # Nobody holds a newer pair: record it, so siblings stop resending the dead token.
        try:
            self._account.mark_needs_login(refresh_token)
        except TokenStoreError as exc:
            log.error("account %r: could not record that a login is needed: %s",
                      self.account, exc)
        return False

    # -- saving, and writing back what could not be saved --------------------------------

    def _save_or_keep(self, granted: Token, *, parent: str, expected: str | None) -> None:
        try:
            self._account.save_versioned(granted, expected)
        except TokenStoreError:
            # The old refresh token is spent: this pair is now the only way into the
            # account. Keep it and write it back as soon as the store answers again.
            self._write_back.pending.keep(granted, parent)
            log.error("account %r: could not save the new token; keeping it in memory "
                      "and retrying the save before the next request", self.account)
            raise
        finally:
            self._set(granted, fresh=True)

    def _late_grant(self, granted: Token, parent: str) -> None:
        self.refreshes += 1
        self._write_back.late(granted, parent)

    def _store_lock(self, wait: bool = True) -> Any:
        """The store's lock for the account, within the policy's lock timeout."""
        return self._account.lock(self.policy.lock_timeout if wait else 0)

    def _set(self, token: Token, *, fresh: bool) -> None:
        self._token = token
        access = token.get("access_token")
        if access:
            self._judge.record(access, refreshed_here=fresh)

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


def _replaced(current: Token | None, replacing: str | None) -> bool:
    """True when ``current`` carries an access token other than the one being replaced."""
    return (current is not None and replacing is not None
            and current.get("access_token") not in (None, replacing))
