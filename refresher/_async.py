"""AsyncTokens: the coordinator as async code asks it, never blocking the event loop.

The :class:`~refresher.coordinator.RefreshCoordinator` is synchronous: a thread lock, the
store's lock, blocking I/O to the store and the token endpoint. Async front ends
(:mod:`refresher.httpx`, :mod:`refresher.aiohttp`) ask it through this class:

- a FRESH token is read on the loop: no thread, no lock (the hot path);
- anything else (a token to refresh, a 401 to cure, a pair to write back) goes to a worker
  thread (:func:`asyncio.to_thread`), behind one :class:`asyncio.Lock` per coordinator per
  event loop. Tasks queued behind it take the token the first one got, so many tasks that
  meet an expired token cause one token-endpoint call, and at most one worker thread per
  loop waits on the thread and store locks;
- a task whose token still has more than half the leeway left does not queue behind a
  refresh under way: it sends the token it has, as threads do (the policy's
  ``waits_for_refresh``).

Between processes nothing changes: the store's lock and its compare-and-set do the work,
so sync and async programs can share one store.

:class:`FrontEnd` is what the async front ends share: RefreshingSession's arguments, the
coordinator built from them (``_build``), this class in front of it, and ``open()``, the
counterpart of :func:`~refresher.login.open_session`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import requests

from ._build import UNSET, build_coordinator, resolve_policy, resolve_store
from ._constants import X_API_URL, X_TOKEN_URL
from ._fork import register
from .clock import Clock
from .coordinator import RefreshCoordinator
from .policy import RefreshPolicy, TokenState
from .stores import TokenStore
from .token import Token, lifetime_of

__all__ = ["AsyncTokens", "FrontEnd"]

_F = TypeVar("_F", bound="FrontEnd")


class AsyncTokens:
    """``coordinator``'s questions as coroutines, safe to await from any event loop (also
    in a child forked after they were asked: it starts with no lock of its parent's)."""

    def __init__(self, coordinator: RefreshCoordinator) -> None:
        self.coordinator = coordinator
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())
        self._guard = threading.Lock()
        register(self)  # a forked child starts with free locks

    def _after_fork_in_child(self) -> None:
        # A parent thread may have held the guard, a parent task a loop's lock, at the fork.
        self._locks = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    async def token_for_request(self) -> Token:
        """The token to send now, refreshed first when it is expiring (in a worker thread)."""
        coordinator = self.coordinator
        token = coordinator.token
        if self._ready(token):
            assert token is not None
            return token
        lock = self._loop_lock()
        if lock.locked() and token is not None and token.get("access_token") and not (
                coordinator.policy.waits_for_refresh(token, coordinator.clock.time())):
            return token  # another task refreshes; this token still has a good margin
        seen = token.get("access_token") if token is not None else None
        async with lock:
            current = coordinator.token
            if self._ready(current) or (seen and _replaced(current, seen)):
                assert current is not None
                return current  # the task before this one refreshed: take its token
            return await asyncio.to_thread(coordinator.token_for_request)

    async def refresh(self, replacing: str | None = None, *,
                      retry_refused: bool = False) -> Token:
        """A coordinated refresh (in a worker thread); the token to use from now on.

        When another task of this loop already replaced ``replacing`` while this one
        waited, its token is taken and nothing is sent to the token endpoint (unless that
        token has aged into the leeway in its turn: then it is refreshed as before a
        request). ``retry_refused``: as :meth:`refresher.RefreshingSession.refresh`.
        """
        coordinator = self.coordinator
        async with self._loop_lock():
            current = coordinator.token
            if replacing is None or not _replaced(current, replacing):
                return await asyncio.to_thread(coordinator.refresh, replacing,
                                               retry_refused=retry_refused)
            assert current is not None
            if self._ready(current) or not (lifetime_of(current) or 0) > 0:
                # A grant that was never fresh (expires_in 0) is taken as it is: refreshing
                # it again for every queued task would rotate the pair once per task.
                return current
            # Replaced while this task waited, but the replacement has aged into the leeway
            # (requests stay in flight a long time on a busy loop): replaying with it would
            # earn another 401. The usual path refreshes it, or adopts a sibling's pair.
            return await asyncio.to_thread(coordinator.token_for_request)

    def _ready(self, token: Token | None) -> bool:
        """Send ``token`` at once: it is FRESH and no granted pair waits to be written back."""
        coordinator = self.coordinator
        if token is None or not token.get("access_token"):
            return False
        # A pair granted while the store was down is written back before the next request
        # (the coordinator does it in token_for_request): that request takes the thread.
        if coordinator.pending_write_back:
            return False
        return coordinator.policy.state(token, coordinator.clock.time()) is TokenState.FRESH

    def _loop_lock(self) -> asyncio.Lock:
        """This coordinator's lock for the running event loop (an asyncio.Lock belongs to
        one loop; a program may run several, in several threads)."""
        loop = asyncio.get_running_loop()
        with self._guard:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
            return lock


def _replaced(current: Token | None, replacing: str) -> bool:
    """``current`` carries an access token other than ``replacing``."""
    return current is not None and current.get("access_token") not in (None, "", replacing)


class FrontEnd:
    """A refreshing front end built from :class:`~refresher.RefreshingSession`'s arguments.

    ``store`` is a :class:`~refresher.TokenStore`, or a path or URL as
    :func:`~refresher.open_store` takes (default: an in-memory store); ``token`` seeds an
    empty account; ``policy`` holds the numbers, ``leeway``, ``lock_timeout`` and
    ``refresh_status_codes`` override it; the hooks run in the thread that refreshes (a
    worker thread, for async requests); ``refresh_session`` is the
    :class:`requests.Session` for the token endpoint. Building it reads the store once.
    """

    def __init__(
        self,
        client_id: str | None = None,
        *,
        client_secret: str | None = None,
        store: TokenStore | str | os.PathLike[str] | None = None,
        account: str = "default",
        token: Mapping[str, Any] | None = None,
        token_url: str = X_TOKEN_URL,
        api_url: str | None = None,
        policy: RefreshPolicy | None = None,
        leeway: float | None = None,
        lock_timeout: Any = UNSET,
        refresh_status_codes: Collection[int] | None = None,
        on_token_update: Callable[[Token], Any] | None = None,
        on_refresh_error: Callable[[BaseException], Any] | None = None,
        on_refresh_start: Callable[[], Any] | None = None,
        refresh_session: requests.Session | None = None,
        clock: Clock | None = None,
        api_base_url: str | None = None,
    ) -> None:
        self.policy = resolve_policy(policy, leeway=leeway, lock_timeout=lock_timeout,
                                     refresh_status_codes=refresh_status_codes)
        self.store = resolve_store(store)
        self.account = account
        self.api_url = (api_url or api_base_url or X_API_URL).rstrip("/")
        self.coordinator = build_coordinator(
            client_id, client_secret=client_secret, store=self.store, account=account,
            token=token, token_url=token_url, policy=self.policy,
            on_token_update=on_token_update, on_refresh_error=on_refresh_error,
            on_refresh_start=on_refresh_start, refresh_session=refresh_session, clock=clock,
        )
        self.tokens = AsyncTokens(self.coordinator)

    @classmethod
    def open(cls: type[_F], account: str | None = None, *,
             store: TokenStore | str | os.PathLike[str] | None = None,
             client_id: str | None = None, client_secret: str | None = None,
             **kwargs: Any) -> _F:
        """One for an account ``refresher login`` saved, as
        :func:`~refresher.login.open_session` opens a session: the store (default
        ``$REFRESHER_STORE``, else the user's), the account (``$REFRESHER_ACCOUNT``, else
        the store's only one), the client id and URLs from the arguments, the
        ``REFRESHER_*`` variables, else what the login recorded. Other keywords go to the
        constructor."""
        from .settings import saved_account_arguments

        return cls(**saved_account_arguments(account, store=store, client_id=client_id,
                                             client_secret=client_secret, **kwargs))

    def replay_refused(self, token: Token, endpoint: str) -> None:
        """A replay with ``token`` (just refreshed or adopted) was answered 401 by
        ``endpoint``: the coordinator's 401 brake, which spares a token that ran out in
        flight (see :meth:`~refresher.RefreshCoordinator.refused_after_refresh`)."""
        self.coordinator.refused_after_refresh(token, endpoint)

    @property
    def token(self) -> Token:
        """A copy of the token requests are sent with now (the live pair is the store's)."""
        return dict(self.coordinator.token or {})

    def refresh(self, *, retry_refused: bool = False) -> Token:
        """Refresh now, coordinated with every sibling sharing the store (blocking: from a
        coroutine, ``await front.tokens.refresh()``); the new token. ``retry_refused``: as
        :meth:`refresher.RefreshingSession.refresh`."""
        return dict(self.coordinator.refresh(retry_refused=retry_refused))

    def close(self) -> None:
        """Close the token endpoint's HTTP session, if this front end created it."""
        self.coordinator.endpoint.close()

    def __repr__(self) -> str:
        facts = self.coordinator.describe()
        left = facts["expires_in"]
        expiry = "no token" if left is None else (
            f"expires in {left:.0f} s" if left > 0 else "expired")
        return (f"<{type(self).__name__} account={self.account!r} store={self.store!r} "
                f"token {facts['fingerprint']} {expiry}>")
