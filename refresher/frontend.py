"""The front ends' shared wiring: their arguments, once, and what the async ones share.

Every front end — :class:`~refresher.RefreshingSession` (requests),
:class:`refresher.httpx.RefreshingAuth` and :class:`refresher.aiohttp.RefreshingMiddleware` —
takes the same arguments and means the same by them. :class:`FrontEndOptions` is that
meaning: one value, turned into a loaded :class:`~refresher.RefreshCoordinator` by
:meth:`FrontEndOptions.wire`. Each front end then drives the per-request rule
(:mod:`refresher.flow`) in its HTTP library's shape.

:class:`RefreshingFrontEnd` is the base of the httpx and aiohttp front ends (their
constructor, ``open()``, ``token``, ``refresh()``, ``close()``); :class:`AsyncTokens` is
how async code asks the coordinator, never blocking the event loop.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import requests

from ._constants import X_API_URL, X_TOKEN_URL
from ._fork import register
from ._transport import OriginCheck, require_secure_transport
from .clock import Clock
from .coordinator import RefreshCoordinator
from .endpoint import TokenEndpoint
from .errors import ConfigurationError
from .flow import refused_replay
from .hooks import AsyncHooks
from .policy import DEFAULT_POLICY, RefreshPolicy
from .stores import MemoryTokenStore, TokenStore, open_store
from .token import Token
from .transaction import Replacing

if TYPE_CHECKING:  # asyncio is imported where a coroutine runs: `import refresher` skips it
    import asyncio

__all__ = ["AsyncTokens", "FrontEndOptions", "RefreshingFrontEnd", "Wired"]

_F = TypeVar("_F", bound="RefreshingFrontEnd")


@dataclass(frozen=True)
class FrontEndOptions:
    """What a front end is built from; every front end means the same by each field.

    - ``client_id``: your X app's OAuth 2.0 client id (default: the one ``refresher login``
      recorded for the account, else ``$REFRESHER_CLIENT_ID``); ``client_secret`` for a
      confidential client.
    - ``store``: a :class:`~refresher.TokenStore`, or a path or URL as
      :func:`~refresher.open_store` takes (default: an in-memory store); ``account``: the
      account's name in it.
    - ``token``: seeds an empty account; a token already stored wins, and from then on the
      store holds the live pair.
    - ``token_url``, ``api_url``: X's token endpoint and API base URL; ``revoke_url``: its
      revoke endpoint (default: what ``refresher login`` recorded for the account, else
      ``$REFRESHER_REVOKE_URL``, else X's), read when a revoke is asked for.
    - ``policy``: every tuning number (:class:`~refresher.RefreshPolicy`); ``leeway``,
      ``lock_timeout``, ``refresh_status_codes``, ``wait_on_rate_limit`` and
      ``max_rate_limit_wait``, when not ``None``, override it (for no limit on the lock
      wait, ``policy=RefreshPolicy(lock_timeout=None)``).
    - ``wait_on_rate_limit``: wait out an API 429 until X's window resets and send the
      request once more, when that is at most ``max_rate_limit_wait`` seconds away (default
      off: the 429 is returned as it comes).
    - ``on_token_update(token)``, ``on_refresh_error(exc)``, ``on_refresh_start()``: hooks,
      run in the thread that refreshes.
    - ``refresh_session``: the :class:`requests.Session` for the token endpoint (retries,
      proxies); ``clock``: the time read (a :class:`~refresher.testing.FakeClock` in tests).
    """

    client_id: str | None = None
    client_secret: str | None = None
    store: TokenStore | str | os.PathLike[str] | None = None
    account: str = "default"
    token: Mapping[str, Any] | None = None
    token_url: str = X_TOKEN_URL
    api_url: str | None = None
    revoke_url: str | None = None
    policy: RefreshPolicy | None = None
    leeway: float | None = None
    lock_timeout: float | None = None
    refresh_status_codes: Collection[int] | None = None
    wait_on_rate_limit: bool | None = None
    max_rate_limit_wait: float | None = None
    on_token_update: Callable[[Token], Any] | None = None
    on_refresh_error: Callable[[BaseException], Any] | None = None
    on_refresh_start: Callable[[], Any] | None = None
    refresh_session: requests.Session | None = None
    clock: Clock | None = None

    def resolved_policy(self) -> RefreshPolicy:
        """``policy`` (or the default) with the overrides given applied."""
        changes: dict[str, Any] = {}
        if self.leeway is not None:
            changes["leeway"] = self.leeway
        if self.lock_timeout is not None:
            changes["lock_timeout"] = self.lock_timeout
        if self.refresh_status_codes is not None:
            changes["refresh_status_codes"] = frozenset(self.refresh_status_codes)
        if self.wait_on_rate_limit is not None:
            changes["wait_on_rate_limit"] = self.wait_on_rate_limit
        if self.max_rate_limit_wait is not None:
            changes["max_rate_limit_wait"] = self.max_rate_limit_wait
        base = self.policy if self.policy is not None else DEFAULT_POLICY
        return base.replace(**changes) if changes else base

    def resolved_api_url(self) -> str:
        """``api_url`` without its trailing slash (default X's)."""
        return (self.api_url or X_API_URL).rstrip("/")

    def resolved_revoke_url(self, store: TokenStore) -> str:
        """``revoke_url``, else the account's recorded one, else ``$REFRESHER_REVOKE_URL``,
        else X's; refused when it may not carry a token (plain http to another machine)."""
        from .settings import resolve_setting  # above this module: imported when needed

        try:
            recorded = store.load_metadata(self.account)
        except Exception:  # a store without metadata, or one that fails: the revoke says
            recorded = {}
        url = resolve_setting("revoke_url", self.revoke_url, recorded) or ""
        require_secure_transport(url)
        return url

    def opened_store(self) -> TokenStore:
        """``store`` as given, opened from a path or URL, or a new in-memory one."""
        store = self.store
        if store is None:
            return MemoryTokenStore()
        if isinstance(store, (str, os.PathLike)):
            return open_store(store)
        return store

    def wire(self) -> Wired:
        """The policy, the opened store and the account's coordinator, its token loaded
        (``token`` seeds an empty account; one that is not usable raises
        :class:`~refresher.InvalidTokenError` before anything is saved). Reads the store.

        No client id anywhere raises :class:`~refresher.ConfigurationError`, and a token URL
        that may not carry a token (plain http to another machine)
        :class:`~refresher.InsecureTransport`, here rather than at the first refresh.
        """
        policy, store = self.resolved_policy(), self.opened_store()
        client_id = self.client_id or _recorded_client_id(store, self.account)
        if not client_id:
            raise ConfigurationError(
                "a refreshing session needs your X app's client id (its OAuth 2.0 Client ID, "
                "on the Keys and tokens page of the X developer portal): pass client_id, or "
                "set REFRESHER_CLIENT_ID; for an account `refresher login` saved, "
                "refresher.open_session() finds it"
            )
        require_secure_transport(self.token_url)  # InsecureTransport: the https message, at once
        if self.revoke_url:
            require_secure_transport(self.revoke_url)
        endpoint = TokenEndpoint(self.token_url, client_id, self.client_secret,
                                 session=self.refresh_session, policy=policy, clock=self.clock)
        coordinator = RefreshCoordinator(
            store, self.account, endpoint, policy=policy, clock=self.clock,
            on_token_update=self.on_token_update, on_refresh_error=self.on_refresh_error,
            on_refresh_start=self.on_refresh_start,
        )
        coordinator.load(seed=dict(self.token) if self.token else None)
        return Wired(policy, store, coordinator)


class Wired(NamedTuple):
    """What :meth:`FrontEndOptions.wire` makes."""

    policy: RefreshPolicy
    store: TokenStore
    coordinator: RefreshCoordinator


def _recorded_client_id(store: TokenStore, account: str) -> str | None:
    """The account's recorded client id, else ``$REFRESHER_CLIENT_ID`` (``None``: neither)."""
    from .settings import resolve_setting  # above this module: imported when needed

    try:
        recorded = store.load_metadata(account)
    except Exception:  # the load that follows reports a store that fails
        recorded = {}
    return resolve_setting("client_id", None, recorded)


class AsyncTokens:
    """The coordinator's questions as coroutines, safe to await from any event loop (also
    in a child forked after they were asked: it starts with no lock of its parent's).

    - a token ready to send (:meth:`~refresher.RefreshCoordinator.ready_token`) is read on
      the loop: no thread, no lock (the hot path);
    - anything else goes to a worker thread (:func:`asyncio.to_thread`), behind one
      :class:`asyncio.Lock` per coordinator per event loop. Tasks queued behind it take the
      token the first one got, so many tasks that meet an expired token cause one
      token-endpoint call, and at most one worker thread per loop waits on the locks;
    - a task whose token still has a good margin does not queue behind a refresh under
      way: it sends the token it has, as threads do.

    Between processes nothing changes: the store's lock and its compare-and-set do the
    work, so sync and async programs can share one store.
    """

    def __init__(self, coordinator: RefreshCoordinator, hooks: AsyncHooks | None = None
                 ) -> None:
        self.coordinator = coordinator
        self.hooks = hooks if hooks is not None else AsyncHooks()
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
        ready = coordinator.ready_token()
        if ready is not None:
            return ready
        lock = self._loop_lock()
        if lock.locked():
            meanwhile = coordinator.ready_token(refresh_under_way=True)
            if meanwhile is not None:
                return meanwhile  # another task refreshes; this token has a good margin
        seen = (coordinator.token or {}).get("access_token")
        async with lock:
            current = coordinator.ready_token()
            if current is None and seen and coordinator.replaced(seen):
                current = coordinator.token
            if current is not None:
                return current  # the task before this one refreshed: take its token
            return await self.hooks.run_waiting(coordinator.token_for_request)

    async def refresh(self, replacing: Replacing = None, *,
                      retry_refused: bool = False) -> Token:
        """A coordinated refresh (in a worker thread); the token to use from now on.

        When another task of this loop already replaced ``replacing`` while this one
        waited, its token is taken and nothing is sent to the token endpoint (unless that
        token has aged into the leeway in its turn: then it is refreshed as before a
        request). ``retry_refused``: as :meth:`refresher.RefreshingSession.refresh`.
        """
        coordinator = self.coordinator
        async with self._loop_lock():
            if replacing is None or not coordinator.replaced(replacing):
                return await self.hooks.run_waiting(coordinator.refresh, replacing,
                                                    retry_refused=retry_refused)
            taken = coordinator.replacement(replacing)
            if taken is not None:
                return taken
            # Replaced while this task waited, but the replacement has aged into the leeway
            # (requests stay in flight a long time on a busy loop): replaying with it would
            # earn another 401. The usual path refreshes it, or adopts a sibling's pair.
            return await self.hooks.run_waiting(coordinator.token_for_request)

    def _loop_lock(self) -> asyncio.Lock:
        """This coordinator's lock for the running event loop (an asyncio.Lock belongs to
        one loop; a program may run several, in several threads)."""
        import asyncio

        loop = asyncio.get_running_loop()
        with self._guard:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
            return lock


class RefreshingFrontEnd:
    """The base of :class:`refresher.httpx.RefreshingAuth` and
    :class:`refresher.aiohttp.RefreshingMiddleware`: built from
    :class:`FrontEndOptions`'s arguments (``api_base_url`` is ``api_url``'s earlier name).
    Building it reads the store once.

    A hook may be a coroutine function (``async def on_token_update(token): ...``): it is
    awaited on the caller's event loop, after the save, by the request that waited for the
    refresh (see :mod:`refresher.hooks`); what it raises is logged.
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
        revoke_url: str | None = None,
        policy: RefreshPolicy | None = None,
        leeway: float | None = None,
        lock_timeout: float | None = None,
        refresh_status_codes: Collection[int] | None = None,
        wait_on_rate_limit: bool | None = None,
        max_rate_limit_wait: float | None = None,
        on_token_update: Callable[[Token], Any] | None = None,
        on_refresh_error: Callable[[BaseException], Any] | None = None,
        on_refresh_start: Callable[[], Any] | None = None,
        refresh_session: requests.Session | None = None,
        clock: Clock | None = None,
        api_base_url: str | None = None,
    ) -> None:
        hooks = AsyncHooks()  # a coroutine-function hook is awaited on the caller's loop
        self.options = FrontEndOptions(
            client_id=client_id, client_secret=client_secret, store=store, account=account,
            token=token, token_url=token_url, api_url=api_url or api_base_url,
            revoke_url=revoke_url, policy=policy, leeway=leeway, lock_timeout=lock_timeout,
            refresh_status_codes=refresh_status_codes, wait_on_rate_limit=wait_on_rate_limit,
            max_rate_limit_wait=max_rate_limit_wait,
            on_token_update=hooks.wrap(on_token_update, "on_token_update"),
            on_refresh_error=hooks.wrap(on_refresh_error, "on_refresh_error"),
            on_refresh_start=hooks.wrap(on_refresh_start, "on_refresh_start"),
            refresh_session=refresh_session, clock=clock)
        wired = self.options.wire()
        self.policy, self.store, self.coordinator = wired.policy, wired.store, wired.coordinator
        self.account = account
        self.api_url = self.options.resolved_api_url()
        self.tokens = AsyncTokens(self.coordinator, hooks)
        self._origin_check = OriginCheck()  # plain http only to this machine, per request

    @classmethod
    def open(cls: type[_F], account: str | None = None, *,
             store: TokenStore | str | os.PathLike[str] | None = None,
             client_id: str | None = None, client_secret: str | None = None,
             **kwargs: Any) -> _F:
        """One for an account ``refresher login`` saved, as
        :func:`~refresher.open_session` opens a session: the store (default
        ``$REFRESHER_STORE``, else the user's), the account (``$REFRESHER_ACCOUNT``, else
        the store's only one), the client id and URLs from the arguments, else what the
        login recorded, else the ``REFRESHER_*`` variables, else X's. Other keywords go to
        the constructor."""
        from .settings import saved_account_arguments

        return cls(**saved_account_arguments(account, store=store, client_id=client_id,
                                             client_secret=client_secret, **kwargs))

    def replay_refused(self, token: Token, endpoint: str) -> None:
        """A replay with ``token`` (just refreshed or adopted) was answered 401 by
        ``endpoint``: the 401 brake (:func:`refresher.flow.refused_replay`)."""
        refused_replay(self.coordinator, token, endpoint)

    @property
    def token(self) -> Token:
        """A copy of the token requests are sent with now (the live pair is the store's)."""
        return dict(self.coordinator.token or {})

    def refresh(self, *, retry_refused: bool = False) -> Token:
        """Refresh now, coordinated with every sibling sharing the store (blocking: from a
        coroutine, ``await front.tokens.refresh()``); the new token. ``retry_refused``: as
        :meth:`refresher.RefreshingSession.refresh`."""
        return dict(self.coordinator.refresh(retry_refused=retry_refused))

    def revoke(self) -> None:
        """Revoke the account's pair at X and remove the account from the store (blocking:
        from a coroutine, ``await front.arevoke()``); from then on a request raises
        :class:`~refresher.ReauthorizationRequired` until a new login.

        X's caveat: a revoke may remove all of the app's access for that user, every other
        login of theirs in this app included. Raises :class:`~refresher.RevokeError` when X
        did not revoke the refresh token (the account is kept).
        """
        self.coordinator.revoke(self.options.resolved_revoke_url(self.store))

    async def arevoke(self) -> None:
        """:meth:`revoke`, on a worker thread: the event loop keeps running."""
        url = self.options.resolved_revoke_url(self.store)
        await self.tokens.hooks.run_waiting(self.coordinator.revoke, url)

    def close(self) -> None:
        """Close the token endpoint's HTTP session, if this front end created it."""
        self.coordinator.endpoint.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {describe(self.coordinator, self.store)}>"


def describe(coordinator: RefreshCoordinator, store: TokenStore) -> str:
    """``account=... store=... token <fingerprint> expires in N s``: a front end's repr,
    without a secret."""
    facts = coordinator.describe()
    left = facts["expires_in"]
    expiry = "no token" if left is None else (
        f"expires in {left:.0f} s" if left > 0 else "expired")
    return (f"account={facts['account']!r} store={store!r} token {facts['fingerprint']} "
            f"{expiry}")
