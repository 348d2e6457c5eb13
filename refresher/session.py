"""RefreshingSession: an OAuth2Session whose token never runs out.

The session decides *what* to send: the current bearer token, refreshed first when it
is about to expire. Its :class:`~refresher.adapter.RefreshingAdapter` decides what to do
when X refuses the token anyway. Both defer to one
:class:`~refresher.coordinator.RefreshCoordinator`, which owns refreshing.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Collection, Dict, Mapping, Optional
from urllib.parse import urlsplit

import requests
from requests_oauthlib import OAuth2Session

from ._constants import DEFAULT_API_TIMEOUT, DEFAULT_LEEWAY, X_API_URL, X_TOKEN_URL
from ._transport import require_secure_transport
from .adapter import RefreshingAdapter
from .coordinator import RefreshCoordinator
from .endpoint import TokenEndpoint
from .errors import InsecureTransport
from .stores.base import MemoryTokenStore, TokenStore
from .token import Token, validate_token

__all__ = ["RefreshingSession"]

log = logging.getLogger(__name__)


class RefreshingSession(OAuth2Session):
    """A :class:`requests_oauthlib.OAuth2Session` that keeps an X user token alive.

    Give it a ``store`` (or an ``on_token_update`` hook) and every request carries the
    current bearer token; a token within ``leeway`` seconds of expiry is refreshed first,
    and a 401/403 (``refresh_status_codes``) to a request that carried it is cured by one
    refresh and one replay. Refreshes are coordinated through the store, so threads and
    processes sharing it never spend the same single-use refresh token twice.

    Without ``store`` and ``on_token_update`` it is exactly an ``OAuth2Session``.

    ``token`` seeds the store when the account is empty; a token already in the store
    wins. From then on the store holds the live pair: the dict passed in may be spent.

    >>> store = JSONTokenStore("tokens.json")  # doctest: +SKIP
    >>> session = RefreshingSession("my-client-id", store=store, account="alice")  # doctest: +SKIP
    >>> session.get("https://api.x.com/2/users/me").json()  # doctest: +SKIP
    """

    def __init__(
        self,
        client_id: Optional[str] = None,
        client: Any = None,
        auto_refresh_url: Optional[str] = None,
        auto_refresh_kwargs: Optional[Dict[str, Any]] = None,
        scope: Any = None,
        redirect_uri: Optional[str] = None,
        token: Optional[Mapping[str, Any]] = None,
        state: Any = None,
        token_updater: Optional[Callable[[Token], Any]] = None,
        pkce: Optional[str] = None,
        *,
        client_secret: Optional[str] = None,
        store: Optional[TokenStore] = None,
        account: str = "default",
        token_url: str = X_TOKEN_URL,
        api_base_url: str = X_API_URL,
        refresh_status_codes: Collection[int] = (401, 403),
        leeway: float = DEFAULT_LEEWAY,
        lock_timeout: Optional[float] = 30.0,
        on_token_update: Optional[Callable[[Token], Any]] = None,
        on_refresh_error: Optional[Callable[[BaseException], Any]] = None,
        refresh_session: Optional[requests.Session] = None,
        **kwargs: Any,
    ) -> None:
        self._coordinator: Optional[RefreshCoordinator] = None
        manages_tokens = store is not None or on_token_update is not None
        if token and manages_tokens:
            token = validate_token(token)  # refused before oauthlib or a store sees it
        super().__init__(
            client_id=client_id,
            client=client,
            auto_refresh_url=auto_refresh_url,
            auto_refresh_kwargs=auto_refresh_kwargs,
            scope=scope,
            redirect_uri=redirect_uri,
            token=dict(token) if token else None,
            state=state,
            token_updater=token_updater,
            pkce=pkce,
            **kwargs,
        )
        self.account = account
        self.token_url = token_url
        self.api_base_url = api_base_url.rstrip("/")
        self.refresh_status_codes = tuple(refresh_status_codes)
        if not manages_tokens:
            return  # plain OAuth2Session

        self.store = store if store is not None else MemoryTokenStore()
        self._endpoint = TokenEndpoint(
            token_url, client_id or getattr(client, "client_id", None), client_secret,
            session=refresh_session,
        )
        coordinator = RefreshCoordinator(
            self.store,
            account,
            self._endpoint,
            leeway=leeway,
            lock_timeout=lock_timeout,
            on_token_update=on_token_update,
            on_refresh_error=on_refresh_error,
            on_new_token=self._sync_client,
        )
        coordinator.load(seed=dict(token) if token else None)
        self._coordinator = coordinator
        adapter = RefreshingAdapter(coordinator, self.refresh_status_codes)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    # -- the token, as OAuth2Session exposes it ------------------------------------------

    @property  # type: ignore[override]
    def token(self) -> Any:
        coordinator = self.__dict__.get("_coordinator")
        if coordinator is not None:
            return dict(coordinator.token or {})  # a copy: the live pair is the store's
        return OAuth2Session.token.fget(self)  # type: ignore[attr-defined]

    @token.setter
    def token(self, value: Any) -> None:
        coordinator = self.__dict__.get("_coordinator")
        if coordinator is not None and value:
            coordinator.replace(value)  # a new login (fetch_token): the store gets it
        else:
            OAuth2Session.token.fset(self, value)  # type: ignore[attr-defined]

    def _sync_client(self, token: Token) -> None:
        OAuth2Session.token.fset(self, token)  # type: ignore[attr-defined]

    @property
    def coordinator(self) -> Optional[RefreshCoordinator]:
        """The :class:`RefreshCoordinator` behind this session (``None`` in plain mode).

        To mount an adapter with your own settings, keep refreshing through it::

            session.mount("https://", RefreshingAdapter(session.coordinator, max_retries=3))
        """
        return self._coordinator

    @property
    def refreshing(self) -> bool:
        """True when the refresh machinery is on (a store or an on_token_update hook)."""
        return self._coordinator is not None

    # -- requests ------------------------------------------------------------------------

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        data: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        withhold_token: bool = False,
        client_id: Optional[str] = None,
        client_secret: Optional[str] = None,
        files: Any = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request with the current bearer token, refreshed first if it is expiring."""
        coordinator = self._coordinator
        if coordinator is None:
            if urlsplit(url).scheme.lower() != "https":
                self._check_plain_http(url, sends_token=bool(self.token) and not withhold_token)
                if not self.token or withhold_token:  # to this machine, and nothing to add
                    bare: requests.Response = requests.Session.request(
                        self, method, url, data=data, headers=headers, files=files, **kwargs)
                    return bare
            plain: requests.Response = super().request(
                method, url, data=data, headers=headers, withhold_token=withhold_token,
                client_id=client_id, client_secret=client_secret, files=files, **kwargs,
            )
            return plain
        # Not through OAuth2Session.request: it logs whole tokens at DEBUG.
        require_secure_transport(url)
        if not withhold_token:
            for hook in self.compliance_hook["protected_request"]:
                url, headers, data = hook(url, headers, data)
            token = coordinator.token_for_request()
            merged = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
            merged["Authorization"] = f"Bearer {token['access_token']}"
            headers = merged
        response: requests.Response = requests.Session.request(
            self, method, url, data=data, headers=headers, files=files, **kwargs
        )
        return response

    def refresh(self) -> Token:
        """Refresh now (coordinated with every sibling sharing the store); the new token."""
        coordinator = self._require_coordinator("refresh")
        return dict(coordinator.refresh(stale=None))

    def me(self, *, timeout: Optional[float] = DEFAULT_API_TIMEOUT) -> Dict[str, Any]:
        """``GET {api_base_url}/2/users/me``: the ``data`` object (id, name, username).

        Raises :class:`requests.HTTPError` when X refuses, and :class:`requests.Timeout`
        when no answer came within ``timeout`` seconds (per socket read, as requests
        counts it).
        """
        response = self.get(f"{self.api_base_url}/2/users/me", timeout=timeout)
        response.raise_for_status()
        data = response.json().get("data")
        if not isinstance(data, dict):
            raise ValueError(f"{self.api_base_url}/2/users/me answered without a data object")
        return data

    def close(self) -> None:
        super().close()
        endpoint = self.__dict__.get("_endpoint")
        if endpoint is not None:
            endpoint.close()

    def __repr__(self) -> str:
        coordinator = self.__dict__.get("_coordinator")
        if coordinator is None:
            return f"<RefreshingSession (plain OAuth2Session) client_id={self.client_id!r}>"
        facts = coordinator.describe()
        left = facts["expires_in"]
        expiry = "no token" if left is None else (
            f"expires in {left:.0f} s" if left > 0 else "expired")
        return (f"<RefreshingSession account={self.account!r} store={self.store!r} "
                f"token {facts['fingerprint']} {expiry}>")

    @staticmethod
    def _check_plain_http(url: str, *, sends_token: bool) -> None:
        """Plain mode, an http URL: refresher's rule (only to this machine), in its words."""
        require_secure_transport(url)  # raises InsecureTransport for any other host
        if sends_token and not os.environ.get("OAUTHLIB_INSECURE_TRANSPORT"):
            raise InsecureTransport(
                "requests-oauthlib refuses to send a token over plain http, even to this "
                "machine: pass store= (or on_token_update=) so refresher sends it, or set "
                "OAUTHLIB_INSECURE_TRANSPORT=1 for a local test server"
            )

    def _require_coordinator(self, what: str) -> RefreshCoordinator:
        if self._coordinator is None:
            raise TypeError(
                f"{what}() needs the refresh machinery: pass store= or on_token_update="
            )
        return self._coordinator
