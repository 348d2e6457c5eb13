"""RefreshingSession: an OAuth2Session whose token never runs out.

The session decides *what* to send: the current bearer token, refreshed first when it
is about to expire. Its :class:`~refresher.adapter.RefreshingAdapter` decides what to do
when X refuses the token anyway. Both defer to one
:class:`~refresher.coordinator.RefreshCoordinator`, which owns refreshing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests_oauthlib import OAuth2Session

from ._constants import DEFAULT_API_TIMEOUT, X_TOKEN_URL
from ._transport import require_secure_transport
from .adapter import BearerFromAdapter, RefreshingAdapter
from .clock import Clock
from .coordinator import RefreshCoordinator
from .errors import InsecureTransport
from .frontend import FrontEndOptions, describe
from .hooks import refuse_async
from .policy import RefreshPolicy
from .stores import TokenStore
from .token import Token, validate_token

__all__ = ["RefreshingSession", "open_session"]

log = logging.getLogger(__name__)

_BEARER_FROM_ADAPTER = BearerFromAdapter()


class RefreshingSession(OAuth2Session):
    """A :class:`requests_oauthlib.OAuth2Session` that keeps an X user token alive.

    Give it a ``store`` (a :class:`~refresher.TokenStore`, or a path or URL as
    :func:`~refresher.open_store` takes) or an ``on_token_update`` hook, and every request
    carries the current bearer token; a token within the leeway of expiry is refreshed
    first, and a 401/403 to a request that carried it is cured by one refresh and one replay
    (the :class:`~refresher.RefreshingAdapter` does both). Refreshes are coordinated through
    the store, so threads and processes sharing it never spend the same single-use refresh
    token twice.

    ``policy`` (a :class:`~refresher.RefreshPolicy`) holds every tuning number; ``leeway``,
    ``lock_timeout``, ``refresh_status_codes``, ``wait_on_rate_limit`` and
    ``max_rate_limit_wait``, when given, override it. ``wait_on_rate_limit=True`` waits out
    an API 429 until X's window resets (``x-rate-limit-reset``) and sends the request once
    more, when that is at most ``max_rate_limit_wait`` seconds (900) away; otherwise, and
    by default, the 429 is returned at once. ``clock`` is the
    time the session reads (tests hand in a :class:`~refresher.testing.FakeClock`).
    ``api_url`` is X's API base URL (``api_base_url`` is its earlier name); ``revoke_url``
    is X's revoke endpoint, for :meth:`revoke` (default: what the login recorded, else
    ``$REFRESHER_REVOKE_URL``, else X's).

    Without ``store`` and ``on_token_update`` it is exactly an ``OAuth2Session``.

    It reads its arguments, and X's defaults for the rest: ``token_url`` and ``api_url``
    are X's unless given, whatever a login recorded or ``REFRESHER_*`` says; only the
    client id falls back to the account's record, then ``$REFRESHER_CLIENT_ID``. For an
    account ``refresher login`` saved, :func:`open_session` reads the record.

    ``token`` seeds the store when the account is empty; a token already in the store
    wins. From then on the store holds the live pair: the dict passed in may be spent.

    >>> store = JSONTokenStore("tokens.json")  # doctest: +SKIP
    >>> session = RefreshingSession("my-client-id", store=store, account="alice")  # doctest: +SKIP
    >>> session.get("https://api.x.com/2/users/me").json()  # doctest: +SKIP
    """

    def __init__(
        self,
        client_id: str | None = None,
        client: Any = None,
        auto_refresh_url: str | None = None,
        auto_refresh_kwargs: dict[str, Any] | None = None,
        scope: Any = None,
        redirect_uri: str | None = None,
        token: Mapping[str, Any] | None = None,
        state: Any = None,
        token_updater: Callable[[Token], Any] | None = None,
        pkce: str | None = None,
        *,
        client_secret: str | None = None,
        store: TokenStore | str | os.PathLike[str] | None = None,
        account: str = "default",
        token_url: str = X_TOKEN_URL,
        api_url: str | None = None,
        revoke_url: str | None = None,
        refresh_status_codes: Collection[int] | None = None,
        leeway: float | None = None,
        lock_timeout: float | None = None,
        wait_on_rate_limit: bool | None = None,
        max_rate_limit_wait: float | None = None,
        on_token_update: Callable[[Token], Any] | None = None,
        on_refresh_error: Callable[[BaseException], Any] | None = None,
        on_refresh_start: Callable[[], Any] | None = None,
        refresh_session: requests.Session | None = None,
        policy: RefreshPolicy | None = None,
        clock: Clock | None = None,
        api_base_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._coordinator: RefreshCoordinator | None = None
        refuse_async(on_token_update=on_token_update, on_refresh_error=on_refresh_error,
                     on_refresh_start=on_refresh_start)
        manages_tokens = store is not None or on_token_update is not None
        if token and manages_tokens:
            token = validate_token(token)  # refused before oauthlib or a store sees it
        options = FrontEndOptions(
            client_id=client_id or getattr(client, "client_id", None),
            client_secret=client_secret, store=store, account=account, token=token,
            token_url=token_url, api_url=api_url or api_base_url, revoke_url=revoke_url,
            policy=policy, leeway=leeway,
            lock_timeout=lock_timeout, refresh_status_codes=refresh_status_codes,
            wait_on_rate_limit=wait_on_rate_limit, max_rate_limit_wait=max_rate_limit_wait,
            on_token_update=on_token_update, on_refresh_error=on_refresh_error,
            on_refresh_start=on_refresh_start, refresh_session=refresh_session, clock=clock)
        super().__init__(
            client_id=client_id,
            client=client,
            auto_refresh_url=auto_refresh_url,
            auto_refresh_kwargs=auto_refresh_kwargs,
            scope=scope,
            redirect_uri=redirect_uri,
            # Managed, the coordinator holds the token: oauthlib's client keeps no copy.
            token=dict(token) if token and not manages_tokens else None,
            state=state,
            token_updater=token_updater,
            pkce=pkce,
            **kwargs,
        )
        # Two attributes of our own, not eight: a session's __dict__ stays key-shared (a
        # tenth of the memory) with a thousand sessions in one process.
        self._front = _Front(options)
        if not manages_tokens:
            return  # plain OAuth2Session

        wired = options.wire()
        self._front.store, self._coordinator = wired.store, wired.coordinator
        adapter = RefreshingAdapter(wired.coordinator)
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

    @property  # type: ignore[override]
    def access_token(self) -> Any:
        coordinator = self.__dict__.get("_coordinator")
        if coordinator is not None:
            return (coordinator.token or {}).get("access_token")
        return OAuth2Session.access_token.fget(self)  # type: ignore[attr-defined]

    @access_token.setter
    def access_token(self, value: Any) -> None:
        OAuth2Session.access_token.fset(self, value)  # type: ignore[attr-defined]

    @access_token.deleter
    def access_token(self) -> None:
        OAuth2Session.access_token.fdel(self)  # type: ignore[attr-defined]

    # -- what it was built from ------------------------------------------------------------

    @property
    def options(self) -> FrontEndOptions:
        """The arguments it was built from (:class:`~refresher.FrontEndOptions`)."""
        return self._front.options

    @property
    def account(self) -> str:
        """The account's name in the store."""
        return self._front.options.account

    @property
    def token_url(self) -> str:
        """X's token endpoint."""
        return self._front.options.token_url

    @property
    def policy(self) -> RefreshPolicy:
        """Every tuning number (:class:`~refresher.RefreshPolicy`)."""
        return self._front.policy

    @property
    def refresh_status_codes(self) -> tuple[int, ...]:
        """The statuses a refresh may cure (the policy's), sorted."""
        return tuple(sorted(self._front.policy.refresh_status_codes))

    @property
    def store(self) -> TokenStore | None:
        """The store holding the account's pair (``None`` in plain mode)."""
        return self._front.store

    @property
    def api_url(self) -> str:
        """X's API base URL, without a trailing slash."""
        return self._front.api_url

    @api_url.setter
    def api_url(self, value: str) -> None:
        self._front.api_url = value.rstrip("/")

    @property
    def api_base_url(self) -> str:
        """The earlier name of :attr:`api_url`."""
        return self.api_url

    @api_base_url.setter
    def api_base_url(self, value: str) -> None:
        self.api_url = value

    @property
    def coordinator(self) -> RefreshCoordinator | None:
        """The :class:`RefreshCoordinator` behind this session (``None`` in plain mode).

        To mount an adapter with your own settings, keep refreshing through it::

            session.mount("https://", RefreshingAdapter(session.coordinator, max_retries=3))
        """
        return self._coordinator

    @property
    def manages_tokens(self) -> bool:
        """True when refresher manages the token (a store or an on_token_update hook was
        given); False when the session is a plain ``OAuth2Session``."""
        return self._coordinator is not None

    @property
    def refreshing(self) -> bool:
        """The earlier name of :attr:`manages_tokens`."""
        return self.manages_tokens

    # -- requests ------------------------------------------------------------------------

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        withhold_token: bool = False,
        client_id: str | None = None,
        client_secret: str | None = None,
        files: Any = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request; unless ``withhold_token``, the adapter puts the bearer on it.

        The contract with :class:`~refresher.RefreshingAdapter`: a request that should carry
        the token gets ``auth=BearerFromAdapter()`` (unless the caller passed an ``auth``),
        which marks the prepared request (``_refresher_sends_bearer``); the adapter puts
        the bearer only on marked requests. A redirect hop is a new, unmarked request.

        Not through ``OAuth2Session.request``, which logs whole tokens at DEBUG: the
        compliance hooks run here, and :class:`~refresher.RefreshingAdapter` does the rest.
        """
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
        require_secure_transport(url)
        if not withhold_token:
            for hook in self.compliance_hook["protected_request"]:
                url, headers, data = hook(url, headers, data)
            if kwargs.get("auth") is None:  # an auth= of the caller's wins (tweepy passes None)
                kwargs["auth"] = _BEARER_FROM_ADAPTER
        response: requests.Response = requests.Session.request(
            self, method, url, data=data, headers=headers, files=files, **kwargs
        )
        return response

    def refresh(self, *, retry_refused: bool = False, within: float | None = None) -> Token:
        """Refresh now (coordinated with every sibling sharing the store); the new token.

        With ``within`` (seconds), only if the stored token expires within that time, else
        it is returned as it is: for a sidecar, whose pairs the processes serving requests
        adopt (:meth:`~refresher.RefreshCoordinator.refresh_within`).

        A refresh token X already refused to this client id at this token URL is not sent
        again (:class:`~refresher.ReauthorizationRequired`); ``retry_refused=True`` sends it
        once on purpose, as when that refusal came from a misconfigured process, and a grant
        clears the record (see :mod:`refresher.refusal`).
        """
        coordinator = self._require_coordinator("refresh")
        if within is not None:
            return dict(coordinator.refresh_within(within, retry_refused=retry_refused))
        return dict(coordinator.refresh(retry_refused=retry_refused))

    def revoke(self) -> None:
        """Revoke the account's pair at X (``revoke_url``: the argument, else what the login
        recorded, else ``$REFRESHER_REVOKE_URL``, else X's) and remove the account from the
        store, under its lock; from then on a request raises
        :class:`~refresher.ReauthorizationRequired` until a new login. For a web app's
        "disconnect X" button.

        X's caveat: a revoke may remove all of the app's access for that user, every other
        login of theirs in this app included. Raises :class:`~refresher.RevokeError` when X
        did not revoke the refresh token (the account is kept).
        """
        coordinator = self._require_coordinator("revoke")
        assert self.store is not None
        coordinator.revoke(self.options.resolved_revoke_url(self.store))

    def me(self, *, timeout: float | None = DEFAULT_API_TIMEOUT) -> dict[str, Any]:
        """``GET {api_url}/2/users/me``: the ``data`` object (id, name, username).

        Raises :class:`requests.HTTPError` when X refuses, and :class:`requests.Timeout`
        when no answer came within ``timeout`` seconds (per socket read, as requests
        counts it).
        """
        response = self.get(f"{self.api_url}/2/users/me", timeout=timeout)
        response.raise_for_status()
        data = response.json().get("data")
        if not isinstance(data, dict):
            raise ValueError(f"{self.api_url}/2/users/me answered without a data object")
        return data

    def close(self) -> None:
        super().close()
        coordinator = self.__dict__.get("_coordinator")
        if coordinator is not None:
            coordinator.endpoint.close()

    def __repr__(self) -> str:
        coordinator = self.__dict__.get("_coordinator")
        if coordinator is None:
            return f"<RefreshingSession (plain OAuth2Session) client_id={self.client_id!r}>"
        return f"<RefreshingSession {describe(coordinator, coordinator.store)}>"

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


class _Front:
    """What a session keeps of its arguments, in one attribute."""

    __slots__ = ("options", "policy", "api_url", "store")

    def __init__(self, options: FrontEndOptions) -> None:
        self.options = options
        self.policy = options.resolved_policy()
        self.api_url = options.resolved_api_url()
        self.store: TokenStore | None = None


def open_session(
    account: str | None = None,
    *,
    store: TokenStore | str | os.PathLike[str] | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    **kwargs: Any,
) -> RefreshingSession:
    """A :class:`~refresher.RefreshingSession` for an account ``refresher login`` saved.

    ``store`` is a store or a location (default
    :func:`~refresher.settings.default_store_location`);
    ``account`` defaults to ``$REFRESHER_ACCOUNT``, else the store's only account. The
    client id and the token and API URLs come from the arguments, else what the login
    recorded in the store, else the ``REFRESHER_*`` environment variables (see
    :func:`~refresher.settings.resolve_setting`); the
    secret of a confidential client from ``client_secret`` or ``$REFRESHER_CLIENT_SECRET``
    (the store never holds it). Other keywords go to :class:`~refresher.RefreshingSession`.

    Raises :class:`~refresher.ConfigurationError` (also a :class:`ValueError`) for an
    unknown account, a store with several accounts and none chosen, or a missing client id
    or secret: the message names the store and its accounts (never a token) and what to do.

    >>> session = open_session("alice")  # doctest: +SKIP
    >>> session.me()["username"]  # doctest: +SKIP
    'alice'
    """
    from .settings import saved_account_arguments  # settings read the store: when asked

    return RefreshingSession(**saved_account_arguments(
        account, store=store, client_id=client_id, client_secret=client_secret, **kwargs))
