"""From a front end's arguments to a loaded RefreshCoordinator: one recipe, three front ends.

:class:`~refresher.RefreshingSession` (requests), :class:`refresher.httpx.RefreshingAuth`
and :class:`refresher.aiohttp.RefreshingMiddleware` take the same arguments (``client_id``,
``client_secret``, ``store``, ``account``, ``token``, ``token_url``, ``policy`` and its
overrides, the hooks, ``refresh_session``, ``clock``) and mean the same by them: the
functions here are where that meaning lives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import Any

import requests

from ._transport import require_secure_transport
from .clock import Clock
from .coordinator import RefreshCoordinator
from .endpoint import TokenEndpoint
from .errors import ConfigurationError
from .policy import DEFAULT_POLICY, RefreshPolicy
from .stores import MemoryTokenStore, TokenStore, open_store
from .token import Token

__all__ = ["UNSET", "resolve_policy", "resolve_store", "build_coordinator"]

#: "Not given" for ``lock_timeout``, whose ``None`` means "no limit".
UNSET: Any = object()


def resolve_policy(policy: RefreshPolicy | None, *, leeway: float | None = None,
                   lock_timeout: Any = UNSET,
                   refresh_status_codes: Collection[int] | None = None) -> RefreshPolicy:
    """``policy`` (or the default) with the keyword arguments given explicitly applied."""
    changes: dict[str, Any] = {}
    if leeway is not None:
        changes["leeway"] = leeway
    if lock_timeout is not UNSET:
        changes["lock_timeout"] = lock_timeout
    if refresh_status_codes is not None:
        changes["refresh_status_codes"] = frozenset(refresh_status_codes)
    base = policy if policy is not None else DEFAULT_POLICY
    return base.replace(**changes) if changes else base


def resolve_store(store: TokenStore | str | os.PathLike[str] | None) -> TokenStore:
    """A :class:`~refresher.TokenStore` as given, opened from a path or URL, or a new
    in-memory one for ``None``."""
    if store is None:
        return MemoryTokenStore()
    if isinstance(store, (str, os.PathLike)):
        return open_store(store)
    return store


def build_coordinator(
    client_id: str | None,
    *,
    client_secret: str | None,
    store: TokenStore,
    account: str,
    token: Mapping[str, Any] | None,
    token_url: str,
    policy: RefreshPolicy,
    on_token_update: Callable[[Token], Any] | None = None,
    on_refresh_error: Callable[[BaseException], Any] | None = None,
    on_refresh_start: Callable[[], Any] | None = None,
    refresh_session: requests.Session | None = None,
    clock: Clock | None = None,
) -> RefreshCoordinator:
    """The coordinator of ``account`` in ``store``, its token loaded (``token`` seeds an
    empty account; a token already stored wins; one that is not usable raises
    :class:`~refresher.InvalidTokenError` before anything is saved). Reads the store.

    Without ``client_id``, the one ``refresher login`` recorded for the account, else
    ``$REFRESHER_CLIENT_ID`` (as :func:`~refresher.settings.resolve_setting` orders them);
    none at all raises :class:`~refresher.ConfigurationError`, and a token URL that may not
    carry a token (plain http to another machine) :class:`~refresher.InsecureTransport`,
    here rather than at the first refresh.
    """
    client_id = client_id or _recorded_client_id(store, account)
    if not client_id:
        raise ConfigurationError(
            "a refreshing session needs your X app's client id (its OAuth 2.0 Client ID, on "
            "the Keys and tokens page of the X developer portal): pass client_id, or set "
            "REFRESHER_CLIENT_ID; for an account `refresher login` saved, "
            "refresher.open_session() finds it"
        )
    require_secure_transport(token_url)  # InsecureTransport: the https message, at once
    endpoint = TokenEndpoint(token_url, client_id, client_secret, session=refresh_session,
                             policy=policy, clock=clock)
    coordinator = RefreshCoordinator(
        store, account, endpoint, policy=policy, clock=clock,
        on_token_update=on_token_update, on_refresh_error=on_refresh_error,
        on_refresh_start=on_refresh_start,
    )
    coordinator.load(seed=dict(token) if token else None)
    return coordinator


def _recorded_client_id(store: TokenStore, account: str) -> str | None:
    """The account's recorded client id, else ``$REFRESHER_CLIENT_ID`` (``None``: neither)."""
    from .settings import resolve_setting  # above this module: imported when needed

    try:
        recorded = store.load_metadata(account)
    except Exception:  # the load that follows reports a store that fails
        recorded = {}
    return resolve_setting("client_id", None, recorded)
