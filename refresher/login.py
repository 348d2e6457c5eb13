"""LoginFlow: the first tokens, by OAuth 2.0 Authorization Code with PKCE (S256).

The user is sent to X's authorize page with a fresh ``state`` and a code challenge, comes
back to the callback URL with a code, and the code is exchanged (with the verifier) for
an access token and a refresh token. :meth:`LoginFlow.run_local_server` does all of it
for a script, a notebook or the ``refresher login`` command (the callback server is in
:mod:`refresher.loopback`); a web app calls :meth:`LoginFlow.authorization_url` and
:meth:`LoginFlow.exchange` from its own routes; with ``pending=store`` the flow keeps each
link's state and verifier in that store (:mod:`refresher.pending_logins`), so any worker
sharing it finishes the login. The link itself is made in :mod:`refresher.login_link`.

:func:`open_session` is the other half, beside the session in :mod:`refresher.session`
and importable from here too: a :class:`~refresher.RefreshingSession` for an account that
``refresher login`` saved, configured from what the login recorded in the store (client
id, endpoints; never the secret).

Nothing here logs, prints or repeats a token, a code verifier or a client secret.
"""

from __future__ import annotations

import hmac
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import requests

from ._constants import DEFAULT_DEADLINE, DEFAULT_SCOPES, DEFAULT_TIMEOUT
from ._transport import require_secure_transport
from .endpoint import TokenEndpoint
from .errors import ConfigurationError, InsecureTransport, LoginError, RefreshError
from .login_link import AuthorizationLink, checked_scopes, new_link
from .loopback import DEFAULT_REDIRECT_URI, OpenBrowser, callback_params, wait_for_login
from .pending_logins import DEFAULT_PENDING_TTL, PendingLogins
from .revoke import revoke_pair
from .session import RefreshingSession, open_session
from .settings import default_store_location, record_login, resolve_setting
from .stores import MemoryTokenStore, TokenStore, open_store
from .token import Token, normalize_token

__all__ = [
    "DEFAULT_REDIRECT_URI",
    "AuthorizationLink",
    "LoginFlow",
    "default_store_location",
    "open_session",
]

log = logging.getLogger(__name__)


class LoginFlow:
    """The OAuth 2.0 Authorization Code flow with PKCE, for one X app (client).

    ``client_secret`` makes it a confidential client (HTTP Basic at the token endpoint);
    without it the client id goes in the form, as X wants for public clients.
    ``redirect_uri`` must be exactly the callback URL registered with the app.
    ``api_url`` is where :meth:`session` sends ``me()`` (``api_base_url`` is its earlier
    name; point it, and the other URLs, at :class:`refresher.testing.XEmulator` to log in
    offline). ``revoke_url`` is kept for whoever revokes the pair later (``refresher login``
    records it for ``refresher logout``).

    ``pending`` (a :class:`~refresher.TokenStore`, or a path or URL as
    :func:`~refresher.open_store` takes) keeps each link's state, verifier, redirect URI and
    scopes for ``pending_ttl`` seconds (ten minutes), for one callback: any process sharing
    that store (another web worker) then finishes the login with ``exchange(callback_url)``.
    They live beside the accounts, under a name no account may take
    (:mod:`refresher.pending_logins`).

    Settings not given come from the environment, as for the command line and
    :func:`open_session`: ``REFRESHER_CLIENT_ID``, ``REFRESHER_REDIRECT_URI``,
    ``REFRESHER_AUTHORIZE_URL``, ``REFRESHER_TOKEN_URL``, ``REFRESHER_API_URL``,
    ``REFRESHER_REVOKE_URL``, else X's own. ``REFRESHER_CLIENT_SECRET`` is read only when
    the client id came from ``REFRESHER_CLIENT_ID`` too: a secret belongs to its client. A
    URL that may not carry a token (plain http to another machine) raises
    :class:`~refresher.InsecureTransport` here, before any browser is opened.

    >>> flow = LoginFlow("my-client-id")
    >>> token = flow.run_local_server()  # doctest: +SKIP
    >>> session = flow.session(token, store="tokens.json", account="me")  # doctest: +SKIP
    >>> session.me()["username"]  # doctest: +SKIP
    'me'
    """

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uri: str | None = None,
        scopes: str | Iterable[str] = DEFAULT_SCOPES,
        authorize_url: str | None = None,
        token_url: str | None = None,
        *,
        api_url: str | None = None,
        revoke_url: str | None = None,
        http_session: requests.Session | None = None,
        api_base_url: str | None = None,
        pending: TokenStore | str | os.PathLike[str] | None = None,
        pending_ttl: float = DEFAULT_PENDING_TTL,
    ) -> None:
        resolved_id = resolve_setting("client_id", client_id, {})
        if not resolved_id:
            raise ConfigurationError(
                "client_id is required: the OAuth 2.0 Client ID of your X app (on its Keys "
                "and tokens page in the X developer portal); pass it, or set "
                "REFRESHER_CLIENT_ID"
            )
        if client_secret is None and not client_id:  # the id is the environment's: so is this
            client_secret = resolve_setting("client_secret", None, {})
        self.client_id = resolved_id
        self._client_secret = client_secret or None
        self.redirect_uri = resolve_setting("redirect_uri", redirect_uri, {}) or ""
        self.scopes: tuple[str, ...] = checked_scopes(scopes)
        self.authorize_url = resolve_setting("authorize_url", authorize_url, {}) or ""
        self.token_url = resolve_setting("token_url", token_url, {}) or ""
        self.api_url = (resolve_setting("api_url", api_url or api_base_url, {}) or "").rstrip("/")
        self.revoke_url = resolve_setting("revoke_url", revoke_url, {}) or ""
        self.http_session = http_session
        # Refused now, not after the user approved in the browser: each of them carries a
        # token or a code.
        for name in ("authorize_url", "token_url", "api_url", "revoke_url"):
            try:
                require_secure_transport(getattr(self, name))
            except InsecureTransport as exc:
                raise InsecureTransport(f"{name}: {exc}") from None
        #: Where the logins under way are kept, or ``None`` when the caller keeps them.
        self.pending: PendingLogins | None = None if pending is None else PendingLogins(
            pending if isinstance(pending, TokenStore) else open_store(pending), ttl=pending_ttl)

    @property
    def api_base_url(self) -> str:
        """The earlier name of :attr:`api_url`."""
        return self.api_url

    @api_base_url.setter
    def api_base_url(self, value: str) -> None:
        self.api_url = value.rstrip("/")

    def __repr__(self) -> str:
        kind = "confidential" if self._client_secret else "public"
        return (f"LoginFlow(client_id={self.client_id!r}, {kind}, "
                f"redirect_uri={self.redirect_uri!r}, scopes={' '.join(self.scopes)!r})")

    @property
    def confidential(self) -> bool:
        """True when the client authenticates with a secret."""
        return self._client_secret is not None

    # -- the two halves of the flow ------------------------------------------------------

    def authorization_url(
        self,
        *,
        redirect_uri: str | None = None,
        scopes: str | Iterable[str] | None = None,
        state: str | None = None,
    ) -> AuthorizationLink:
        """A new link to X's authorize page: fresh ``state``, fresh PKCE (S256) verifier.

        ``redirect_uri`` overrides the flow's for this link (the same one must then reach
        :meth:`exchange`; :class:`AuthorizationLink` carries it), ``scopes`` the flow's
        scopes (more of them later, say). ``state`` is yours to choose (to carry a "return
        to" page): 16 to 500 characters, unguessable, one per login; a shorter one is a
        :class:`~refresher.ConfigurationError`. With ``pending=``, the link's login is kept
        in that store until its callback.

        >>> link = LoginFlow("my-client-id").authorization_url()
        >>> "code_challenge_method=S256" in link.url
        True
        """
        link = self._new_link(redirect_uri, scopes, state)
        if self.pending is not None:
            self.pending.put(link)
        return link

    def _new_link(self, redirect_uri: str | None, scopes: str | Iterable[str] | None = None,
                  state: str | None = None) -> AuthorizationLink:
        require_secure_transport(self.authorize_url)
        return new_link(self.authorize_url, self.client_id, redirect_uri or self.redirect_uri,
                        self.scopes if scopes is None else checked_scopes(scopes), state)

    def exchange(
        self,
        callback_url: str,
        *,
        state: str | None = None,
        code_verifier: str | None = None,
        redirect_uri: str | None = None,
        timeout: float | None = None,
    ) -> Token:
        """Check the URL the browser came back to, and trade its code for the first token.

        ``callback_url`` is the whole redirected URL (or just its query string). The
        ``state`` in it must be the link's (:class:`~refresher.LoginError` otherwise: a
        stale tab or a forged request); ``error=access_denied`` (the user refused) and a
        code the token endpoint rejects raise :class:`~refresher.LoginError` too. Returns
        the token, with ``expires_at``: a :class:`~refresher.Token`, a dict whose ``repr``
        shows fingerprints instead of the tokens.

        With ``pending=``, leave ``code_verifier`` out: the login of the callback's state is
        taken from the store (once: an unknown, expired or used state is a
        :class:`~refresher.LoginError`, and no code is sent). Give ``state`` still where you
        kept it with the browser (a session cookie): a callback for another browser's login
        is then refused (login CSRF).

        ``timeout`` bounds the whole exchange in seconds, retries included (default: the
        token endpoint's own bounds, 10 s an answer and 15 s in all); a
        :class:`~refresher.LoginError` says when it ran out.

        >>> token = flow.exchange(request.url, state=link.state,  # doctest: +SKIP
        ...                       code_verifier=link.code_verifier)
        """
        params = callback_params(callback_url)
        returned = params.get("state", "")
        expected = state if state is not None else returned
        if not returned or not hmac.compare_digest(returned.encode(), expected.encode()):
            raise LoginError(
                "the callback's state does not match this login (a stale browser tab, a "
                "second login, or a forged request); start the login again"
            )
        verifier, redirect = self._login_of(returned, state, code_verifier, redirect_uri)
        error = params.get("error")
        if error:
            description = params.get("error_description", "")[:200]
            detail = f": {description}" if description else ""
            if error == "access_denied":
                raise LoginError(
                    f"the login was refused at X (access_denied{detail}); run it again and "
                    "choose Authorize app"
                )
            raise LoginError(f"X answered the login with an error ({error}{detail})")
        code = params.get("code")
        if not code:
            raise LoginError("the callback has no code; start the login again")
        budget = DEFAULT_DEADLINE if timeout is None else min(timeout, DEFAULT_DEADLINE)
        if budget <= 0:
            raise LoginError(
                "the login's timeout ran out before the code could be exchanged; start the "
                "login again, and allow it more time"
            )
        endpoint = TokenEndpoint(self.token_url, self.client_id, self._client_secret,
                                 session=self.http_session, timeout=min(DEFAULT_TIMEOUT, budget),
                                 deadline=budget)
        started = time.monotonic()
        try:
            token = endpoint.exchange(
                code, redirect_uri=redirect, code_verifier=verifier
            )
        except RefreshError as exc:
            if exc.response is None and time.monotonic() - started >= budget - 0.25:
                raise LoginError(
                    f"the code exchange at {self.token_url} did not finish within its "
                    f"{budget:.1f} s timeout; a code serves once: start the login again, "
                    "and allow it more time if X is slow"
                ) from None
            hint = (" (a code lives 30 seconds and serves once: start the login again)"
                    if exc.error == "invalid_request" else "")
            if exc.error == "invalid_request" and "code verifier" in str(exc).lower():
                hint = (" (the code verifier did not match the challenge: the login's state was "
                        "mixed up with another attempt; start the login again)")
            raise LoginError(f"{exc}{hint}") from None
        finally:
            endpoint.close()
        if not token.get("refresh_token"):
            log.warning("X issued no refresh token (scopes: %s): add offline.access to the "
                        "scopes, or the account stops working when this token expires",
                        token.get("scope", ""))
        log.info("logged in: client %s, scopes %s", self.client_id, token.get("scope", ""))
        return Token(token)  # a dict whose repr shows fingerprints: a notebook displays it

    def _login_of(self, returned_state: str, state: str | None, code_verifier: str | None,
                  redirect_uri: str | None) -> tuple[str, str]:
        """The callback's verifier and redirect URI: as given, or taken from ``pending``
        (once, before any code is sent: a LoginError there spends none)."""
        if code_verifier is not None and state is not None:
            return code_verifier, redirect_uri or self.redirect_uri
        if code_verifier is None and self.pending is not None:
            login = self.pending.take(returned_state)
            return login.code_verifier, redirect_uri or login.redirect_uri
        raise ConfigurationError("exchange needs the link's state= and code_verifier=; with "
                                 "LoginFlow(..., pending=store), which keeps them, neither")

    # -- the whole flow on this machine --------------------------------------------------

    def run_local_server(
        self,
        port: int | None = None,
        open_browser: OpenBrowser = True,
        timeout: float = 300.0,
        *,
        out: TextIO | None = None,
        paste_from: TextIO | None = None,
        remind_after: float | None = 20.0,
    ) -> Token:
        """Log in through the browser: serve the callback on loopback, wait, exchange.

        The callback server listens on the redirect URI's loopback address (127.0.0.1 for
        ``localhost``) only, at ``port`` (default: the redirect URI's, 8765; 0 picks a free
        one, and the link then names it). ``open_browser`` is ``True`` (open the system
        browser and print the URL), ``False`` (only print the URL), or a callable that is
        given the URL (called in this thread: it should not block). The browser gets a short
        page saying how it went.

        ``timeout`` bounds the whole login in seconds: waiting for the browser, and the code
        exchange, which gets only the time left when the browser comes back. X sends the
        browser back only when all is well: for an unknown client id, or a callback URL not
        registered exactly, it shows an error page and the login can only wait. So after
        ``remind_after`` seconds (``None``: never) ``out`` is told once what to check, and
        the timeout's error says it too.

        ``out`` is where the URL and instructions go (default ``sys.stdout``). With
        ``paste_from`` (a text stream such as ``sys.stdin``), the redirected URL may also be
        pasted there: the way in for machines the browser cannot reach (SSH, containers).

        Raises :class:`~refresher.LoginError` on a timeout, a refusal, a state mismatch,
        a failed exchange, or a port that cannot be listened on, and
        :class:`~refresher.ConfigurationError` for a redirect URI it cannot serve. Returns the
        token (a :class:`~refresher.Token`, its ``repr`` masked).

        >>> token = LoginFlow("my-client-id").run_local_server()  # doctest: +SKIP
        Opening https://x.com/i/oauth2/authorize?... in your browser.
        """

        def begin(redirect_uri: str) -> tuple[str, Callable[[str, float], Token]]:
            link = self._new_link(redirect_uri)  # its state and verifier stay right here

            def exchange(callback_url: str, seconds_left: float) -> Token:
                return self.exchange(callback_url, state=link.state,
                                     code_verifier=link.code_verifier,
                                     redirect_uri=link.redirect_uri, timeout=seconds_left)

            return link.url, exchange

        return wait_for_login(
            self.redirect_uri, port, begin, open_browser=open_browser, timeout=timeout,
            out=out if out is not None else sys.stdout, paste_from=paste_from,
            token_url=self.token_url, client_id=self.client_id, remind_after=remind_after)

    # -- after the login -----------------------------------------------------------------

    def session(
        self,
        token: Mapping[str, Any] | None = None,
        *,
        store: TokenStore | str | os.PathLike[str] | None = None,
        account: str = "default",
        **kwargs: Any,
    ) -> RefreshingSession:
        """A :class:`~refresher.RefreshingSession` for this client, holding ``token``.

        The flow's client id, secret, token URL and API URL carry over; other keywords go
        to :class:`~refresher.RefreshingSession`. ``store`` is a
        :class:`~refresher.TokenStore` or a path or URL, as :func:`~refresher.open_store`
        takes; without it the token lives in a :class:`~refresher.MemoryTokenStore`.

        ``token`` (a login's answer) goes into the store, replacing what the account held,
        unless the store already holds a pair issued after it (a refresh of it: the dict you
        hold may be spent, so calling this twice with the same dict is safe). From here on
        the store holds the live pair. ``token=None`` uses the stored one.

        >>> session = flow.session(token, store=store, account="alice")  # doctest: +SKIP
        >>> session  # doctest: +SKIP
        <RefreshingSession account='alice' store=... token sha256:1a2b3c4d expires in 7200 s>
        """
        if "api_url" not in kwargs and "api_base_url" not in kwargs:
            kwargs["api_url"] = self.api_url
        session = RefreshingSession(
            self.client_id, client_secret=self._client_secret, token_url=self.token_url,
            store=store if store is not None else MemoryTokenStore(), account=account,
            token=token, **kwargs)
        if token and _should_replace(session.token, token):
            session.token = dict(token)  # a new login: saved under the store's lock
        if token and store is not None:  # beside the pair, what it was logged in with
            record_login(session.store, account, self, token, session.policy.lock_timeout)
        return session

    def revoke(self, token: Mapping[str, Any], *, timeout: float | None = None) -> None:
        """Revoke a pair the app holds (its refresh token, then its access token) at the
        flow's ``revoke_url``. For a pair in a store, ``session.revoke()`` also removes the
        account, under its lock.

        X's caveat: a revoke may remove all of the app's access for that user, every other
        login of theirs in this app included. Raises :class:`~refresher.RevokeError` when X
        did not revoke the refresh token. ``timeout`` bounds both revokes together.
        """
        budget = DEFAULT_DEADLINE if timeout is None else min(timeout, DEFAULT_DEADLINE)
        endpoint = TokenEndpoint(self.token_url, self.client_id, self._client_secret,
                                 session=self.http_session, timeout=min(DEFAULT_TIMEOUT, budget),
                                 deadline=budget)
        try:
            revoke_pair(endpoint, self.revoke_url, token, timeout=budget)
        finally:
            endpoint.close()


# -- plumbing --------------------------------------------------------------------------------


def _issued_at(token: Mapping[str, Any]) -> float | None:
    try:
        return float(token["expires_at"]) - float(token["expires_in"])
    except (KeyError, TypeError, ValueError):
        return None


def _should_replace(stored: Mapping[str, Any] | None, given: Mapping[str, Any]) -> bool:
    """Whether a login's token should replace the stored one (not an older, maybe spent one)."""
    if not stored or stored.get("access_token") == given.get("access_token"):
        return False
    given_at = _issued_at(normalize_token(given))
    stored_at = _issued_at(stored)
    return given_at is None or stored_at is None or given_at > stored_at
