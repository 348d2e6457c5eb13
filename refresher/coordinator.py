"""RefreshCoordinator: one refresh at a time, and never the same refresh token twice.

The whole rule, top to bottom, is :meth:`RefreshCoordinator.refresh`:

1. take the thread lock (one refresh per process at a time), within ``lock_timeout``;
2. take the store's lock for the account (one per machine, or per Redis);
3. re-read the store: if a sibling already replaced the token that failed, use theirs; if
   X already refused the stored refresh token, say a login is needed without resending it;
4. check the store's lock is still held, then spend the *stored* refresh token;
5. save the new pair before anything else, release the locks, run ``on_token_update``.

A failed refresh changes nothing in the store; ``on_refresh_error`` sees it first. A pair
that X granted but the store could not take (whatever the store raised) is kept in memory,
used, and written back before the next request.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, TypeVar

import requests

from ._constants import LOCK_TTL_MARGIN
from .endpoint import TokenEndpoint
from .errors import (
    ConfigurationError,
    LockLost,
    LockTimeout,
    ReauthorizationRequired,
    RefresherError,
    RefreshError,
    TokenStoreError,
)
from .stores.base import TokenStore
from .token import (
    Token,
    effective_leeway,
    fingerprint,
    needs_refresh,
    seconds_left,
    validate_token,
)

_T = TypeVar("_T")

__all__ = ["RefreshCoordinator", "NOT_TOKEN_RELATED_403"]

log = logging.getLogger(__name__)

#: 403 problem types X documents as having nothing to do with the token: no refresh.
NOT_TOKEN_RELATED_403 = (
    "/2/problems/client-forbidden",
    "/2/problems/unsupported-authentication",
)
# A 403 with a token younger than this fraction of its lifetime is not about expiry.
_YOUNG_FRACTION = 0.5
# After a failed refresh ahead of expiry, wait this long (at most) before the next try.
_EARLY_RETRY = 5.0
# How many access tokens we remember having handed out (to recognise our own 401s).
_REMEMBERED_TOKENS = 32
# How many (access token, endpoint) pairs we remember as answering 401 even after a refresh.
_REMEMBERED_REFUSALS = 64


class RefreshCoordinator:
    """Owns the live token of one account of one store, and every refresh of it.

    ``RefreshingSession`` asks it for a token before each request and tells it about each
    401/403; it decides whether to refresh, adopt a sibling's newer token, or do nothing.
    """

    def __init__(
        self,
        store: TokenStore,
        account: str,
        endpoint: TokenEndpoint,
        *,
        leeway: float,
        lock_timeout: Optional[float],
        on_token_update: Optional[Callable[[Token], Any]] = None,
        on_refresh_error: Optional[Callable[[BaseException], Any]] = None,
        on_new_token: Optional[Callable[[Token], Any]] = None,
    ) -> None:
        self.store = store
        self.account = account
        self.endpoint = endpoint
        self.leeway = leeway
        self.lock_timeout = lock_timeout
        self.on_token_update = on_token_update
        self.on_refresh_error = on_refresh_error
        self._on_new_token = on_new_token
        _check_lock_ttl(store, endpoint)
        self._thread_lock = threading.Lock()
        self._token: Optional[Token] = None
        # A pair we were granted but could not save (store down): written back first thing.
        self._unsaved: Optional[Token] = None
        self._unsaved_parent: Optional[str] = None
        # access token -> True if it came from a refresh/adoption in this process
        self._issued: OrderedDict[str, bool] = OrderedDict()
        # (access token, endpoint) pairs that answered 401 again after a refresh-and-replay
        self._refused: OrderedDict[Tuple[str, str], None] = OrderedDict()
        self.refreshes = 0
        self._next_early_try = 0.0

    # -- start-up ------------------------------------------------------------------------

    def load(self, seed: Optional[Token] = None) -> Optional[Token]:
        """Read the account's token; store ``seed`` first when the account has none.

        A ``seed`` refresher cannot use raises :class:`~refresher.InvalidTokenError` before
        anything is saved.
        """
        if seed:
            checked = validate_token(seed)
            with self._store_lock():
                stored = self._store("read", self.store.load, self.account)
                if stored is None:
                    stored = checked
                    self._store("save", self.store.save, self.account, stored)
        else:
            stored = self._store("read", self.store.load, self.account)
        if stored is not None:
            self._set(stored, fresh=False)
        return stored

    def replace(self, token: Token) -> None:
        """Make ``token`` the account's token (a new login): save it, then use it."""
        token = validate_token(token)
        with self._thread_held(), self._store_lock():
            self._store("save", self.store.save, self.account, token)
            self._unsaved = None
            self._set(token, fresh=True)

    # -- the hot path --------------------------------------------------------------------

    @property
    def token(self) -> Optional[Token]:
        """The token requests are sent with now (may be ``None`` before a login)."""
        return self._token

    def token_for_request(self) -> Token:
        """The token to send now, refreshed first when it expires within the leeway."""
        if self._unsaved is not None:
            self._write_back()
        token = self._token
        if token is None:
            token = self.load()
            if token is None:
                raise ReauthorizationRequired(
                    f"no token for account {self.account!r} in {self.store!r}; "
                    "log in first (for example with `refresher login`)"
                )
        if not token.get("access_token"):
            # A pair whose access token X never gave us: "" is stale, so threads queued
            # behind the first take the token it gets instead of refreshing again.
            return self.refresh(stale="")
        if needs_refresh(token, self.leeway) and time.monotonic() >= self._next_early_try:
            left = seconds_left(token)
            try:
                # While the token still has a good margin, a refresh already under way in
                # another thread or process is not waited for: this request goes out with
                # the current token (as google-auth does), instead of stalling behind it.
                margin = effective_leeway(token, self.leeway) / 2
                token = self.refresh(stale=token.get("access_token"),
                                     wait=left is None or left <= margin)
            except RefresherError as exc:
                if left is None or left <= 0:
                    raise
                # The token still works: send it, and try the refresh again a little later
                # instead of on every request (on_refresh_error has seen the failure).
                self._next_early_try = time.monotonic() + min(_EARLY_RETRY, left / 4)
                log.warning("account %r: early refresh failed (%s); the token still has "
                            "%.0f s, retrying later", self.account, type(exc).__name__, left)
        return token

    # -- 401/403 -------------------------------------------------------------------------

    def sent_by_us(self, access_token: str) -> bool:
        """Whether ``access_token`` is one this coordinator handed out."""
        return access_token in self._issued

    def refused_after_refresh(self, access_token: str, endpoint: str) -> None:
        """``endpoint`` answered 401 to ``access_token`` even right after a refresh.

        That 401 is not about the token (X has been seen answering 401 to valid tokens):
        further 401s from that endpoint to that token are returned as they come instead of
        rotating the pair again. Other endpoints, and the next token, are not affected.
        """
        key = (access_token, endpoint)
        self._refused[key] = None
        self._refused.move_to_end(key)
        while len(self._refused) > _REMEMBERED_REFUSALS:
            self._refused.popitem(last=False)
        log.warning("account %r: %s still answered 401 after a refresh; not refreshing again "
                    "for its 401s while this token lives", self.account, endpoint)

    def should_refresh_after(self, response: requests.Response, access_token: str,
                             endpoint: Optional[str] = None) -> bool:
        """Whether a 401/403 answered to ``access_token`` may be cured by a refresh."""
        if response.status_code != 403:
            if endpoint is not None and (access_token, endpoint) in self._refused:
                log.debug("401 from %s to a token it refused after a refresh; no refresh",
                          endpoint)
                return False
            return True
        problem = _problem_type(response)
        if problem and problem.endswith(NOT_TOKEN_RELATED_403):
            log.debug("403 %s is not about the token; no refresh", problem)
            return False
        # A 403 to a young token (in the first half of its life, as every token just
        # granted or adopted is) is about the request, not the token: refreshing would
        # rotate the pair on every call to a forbidden endpoint.
        token = self._token
        if token is not None and token.get("access_token") == access_token:
            left, lifetime = seconds_left(token), token.get("expires_in")
            if left is not None and lifetime:
                return left < float(lifetime) * _YOUNG_FRACTION
        # No expiry to judge by: refresh only a token that did not come from a refresh here.
        return not self._issued.get(access_token)

    # -- the refresh ---------------------------------------------------------------------

    def refresh(self, stale: Optional[str] = None, *, wait: bool = True) -> Token:
        """A coordinated refresh; returns the token to use from now on.

        ``stale`` is the access token that failed or is expiring. When the store (or another
        thread) already holds a different, unexpired token, that one is adopted and no
        refresh token is spent. ``stale=None`` refreshes unconditionally.
        """
        try:
            if not self._acquire_thread_lock(wait):
                assert self._token is not None
                return self._token  # another thread of ours is refreshing
            try:
                current = self._token
                if _replaced(current, stale):
                    # Another thread of ours refreshed while we waited: use its token even
                    # if it is already "expiring" (a grant with expires_in 0), instead of
                    # every waiting thread rotating the pair again in turn.
                    assert current is not None
                    return current
                try:
                    granted = self._refresh_under_lock(stale, wait)
                except LockLost as lost:
                    # Nothing was spent; whoever holds the lock now may have refreshed.
                    log.warning("account %r: %s; taking the lock again", self.account, lost)
                    granted = self._refresh_under_lock(stale, wait)
            finally:
                self._thread_lock.release()
        except RefresherError as exc:
            _run_hook(self.on_refresh_error, exc, "on_refresh_error")
            raise
        if granted is not None:
            # The pair is saved: a failing hook is logged, and must not fail the request.
            _run_hook(self.on_token_update, dict(granted), "on_token_update")
            return granted
        assert self._token is not None
        return self._token

    def _refresh_under_lock(self, stale: Optional[str], wait: bool = True) -> Optional[Token]:
        """Returns the granted pair, or ``None`` when a sibling's token was adopted."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._store_lock(wait=wait))
            except LockTimeout:
                if wait:
                    raise
                return None  # a sibling is refreshing; the current token still works
            if self._unsaved is not None:
                self._write_back_locked()
            stored = self._store("read", self.store.load, self.account)
            if _newer(stored, stale, self.leeway):
                assert stored is not None
                log.info(
                    "account %r: adopting token %s refreshed by a sibling",
                    self.account, fingerprint(stored.get("access_token")),
                )
                self._set(stored, fresh=True)
                return None
            base = stored if stored is not None else self._token
            refresh_token = (base or {}).get("refresh_token")
            if not refresh_token:
                raise ReauthorizationRequired(
                    f"account {self.account!r} has no refresh token in {self.store!r} "
                    "(was offline.access in the scopes?); log in again"
                )
            if stored is not None and self._store("read", self.store.needs_login,
                                                  self.account, stored):
                raise ReauthorizationRequired(
                    f"account {self.account!r}: X already refused its stored refresh token as "
                    f"spent or revoked (recorded in {self.store!r}); it is not sent again. "
                    "Log in again (for example with `refresher login`)"
                )
            # A holder whose lock lapsed must not spend the token: the next holder may be.
            self._store("check the lock of", self.store.verify_lock, self.account)
            try:
                granted = self.endpoint.refresh(refresh_token)
            except ReauthorizationRequired:
                if self._adopted_after_refusal(refresh_token):
                    return None
                raise
            # X has rotated the pair: saving it comes before anything else that can fail.
            self.refreshes += 1
            self._save_or_keep(granted, parent=refresh_token)
            log.info(
                "account %r: refreshed, access token %s, expires in %.0f s",
                self.account, fingerprint(granted.get("access_token")),
                seconds_left(granted) or 0.0,
            )
            if not granted.get("access_token"):
                raise RefreshError(
                    f"{self.endpoint.token_url} answered 200 with a new refresh token but no "
                    "usable access token; the new refresh token is saved, and the next request "
                    "refreshes again"
                )
            return granted

    def _adopted_after_refusal(self, refresh_token: str) -> bool:
        """X refused ``refresh_token`` as spent: adopt a sibling's pair, or record the loss."""
        # A sibling whose lock lapsed may have saved the new pair meanwhile.
        again = self._store("read", self.store.load, self.account)
        if again is not None and again.get("refresh_token") != refresh_token:
            log.info("account %r: refresh token was spent by a sibling; adopting its pair",
                     self.account)
            self._set(again, fresh=True)
            return True
        # Nobody holds a newer pair: record it, so siblings stop resending the dead token.
        try:
            self._store("record the refusal in", self.store.mark_needs_login,
                        self.account, refresh_token)
        except TokenStoreError as exc:
            log.error("account %r: could not record that a login is needed: %s",
                      self.account, exc)
        return False

    # -- saving, and writing back what could not be saved --------------------------------

    def _save_or_keep(self, granted: Token, *, parent: str) -> None:
        try:
            self._store("save", self.store.save, self.account, granted)
        except TokenStoreError:
            # The old refresh token is spent: this pair is now the only way into the
            # account. Keep it and write it back as soon as the store answers again.
            self._unsaved, self._unsaved_parent = granted, parent
            log.error("account %r: could not save the new token; keeping it in memory "
                      "and retrying the save before the next request", self.account)
            raise
        finally:
            self._set(granted, fresh=True)

    def _write_back(self) -> None:
        with self._thread_held():
            if self._unsaved is None:
                return
            with self._store_lock():
                self._write_back_locked()

    def _write_back_locked(self) -> None:
        unsaved = self._unsaved
        assert unsaved is not None
        stored = self._store("read", self.store.load, self.account)
        if stored is None or stored.get("refresh_token") == self._unsaved_parent:
            self._store("save", self.store.save, self.account, unsaved)
            log.info("account %r: saved the token kept in memory while the store was down",
                     self.account)
        else:
            self._set(stored, fresh=True)  # someone logged in again meanwhile: theirs wins
        self._unsaved = self._unsaved_parent = None

    # -- locks, and a store that may raise anything ---------------------------------------

    def _acquire_thread_lock(self, wait: bool) -> bool:
        if not wait:
            return self._thread_lock.acquire(blocking=False)
        timeout = -1 if self.lock_timeout is None else self.lock_timeout
        if self._thread_lock.acquire(timeout=timeout):
            return True
        raise LockTimeout(
            f"account {self.account!r}: another thread of this process has been refreshing "
            f"for more than lock_timeout={self.lock_timeout:g} s (a slow token endpoint?); "
            "the stored token is kept, try again later"
        )

    @contextlib.contextmanager
    def _thread_held(self) -> Iterator[None]:
        self._acquire_thread_lock(wait=True)
        try:
            yield
        finally:
            self._thread_lock.release()

    @contextlib.contextmanager
    def _store_lock(self, wait: bool = True) -> Iterator[None]:
        """The store's lock for the account; whatever the store raises, a TokenStoreError."""
        timeout = self.lock_timeout if wait else 0
        manager = self._store("lock", self.store.lock, self.account, timeout=timeout)
        self._store("lock", manager.__enter__)
        try:
            yield
        except BaseException:
            try:
                manager.__exit__(*sys.exc_info())
            except Exception:  # the error that ended the block is the one to report
                log.exception("account %r: releasing the store's lock failed", self.account)
            raise
        self._store("unlock", manager.__exit__, None, None, None)

    def _store(self, doing: str, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``call(*args)``; whatever a store raises reaches callers as a TokenStoreError."""
        try:
            return call(*args, **kwargs)
        except RefresherError:
            raise
        except Exception as exc:
            raise TokenStoreError(
                f"token store {self.store!r} failed to {doing} account {self.account!r}: "
                f"{type(exc).__name__}"
            ) from exc

    # -- bookkeeping ---------------------------------------------------------------------

    def _set(self, token: Token, *, fresh: bool) -> None:
        self._token = token
        access = token.get("access_token")
        if access:
            self._issued[access] = fresh or self._issued.get(access, False)
            self._issued.move_to_end(access)
            while len(self._issued) > _REMEMBERED_TOKENS:
                self._issued.popitem(last=False)
        if self._on_new_token is not None:
            try:
                self._on_new_token(token)
            except Exception:
                log.exception("account %r: updating the session's copy of the token failed",
                              self.account)

    def describe(self) -> Dict[str, Any]:
        """Safe facts for a repr or a status line: account, expiry, fingerprint."""
        token = self._token or {}
        left = seconds_left(token)
        return {
            "account": self.account,
            "expires_in": left,
            "fingerprint": fingerprint(token.get("access_token")),
        }


def _run_hook(hook: Optional[Callable[[Any], Any]], argument: Any, name: str) -> None:
    if hook is None:
        return
    try:
        hook(argument)
    except Exception:
        log.exception("%s hook %r raised; carrying on", name, hook)


def _newer(candidate: Optional[Token], stale: Optional[str], leeway: float) -> bool:
    """True when ``candidate`` is a usable token other than the one known to be stale."""
    if candidate is None or stale is None:
        return False
    if candidate.get("access_token") in (None, stale):
        return False
    return not needs_refresh(candidate, leeway)


def _replaced(current: Optional[Token], stale: Optional[str]) -> bool:
    """True when ``current`` carries an access token other than the ``stale`` one."""
    if current is None or stale is None:
        return False
    return current.get("access_token") not in (None, stale)


def _problem_type(response: requests.Response) -> Optional[str]:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        return str(body["type"])
    return None


def _check_lock_ttl(store: TokenStore, endpoint: TokenEndpoint) -> None:
    """A store lock that lapses (``lock_ttl``) must outlive a whole grant, with a margin."""
    ttl = getattr(store, "lock_ttl", None)
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
        return
    needed = endpoint.deadline + LOCK_TTL_MARGIN
    if ttl < needed:
        raise ConfigurationError(
            f"{store!r} has lock_ttl={ttl:g} s, but a refresh may take up to the token "
            f"endpoint's deadline of {endpoint.deadline:g} s, and the lock must outlive it by "
            f"{LOCK_TTL_MARGIN:g} s: use lock_ttl >= {needed:g}, or a shorter deadline"
        )
