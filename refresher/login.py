"""LoginFlow: the first tokens, by OAuth 2.0 Authorization Code with PKCE (S256).

The user is sent to X's authorize page with a fresh ``state`` and a code challenge, comes
back to the callback URL with a code, and the code is exchanged (with the verifier) for
an access token and a refresh token. :meth:`LoginFlow.run_local_server` does all of it
for a script, a notebook or the ``refresher login`` command; a web app calls
:meth:`LoginFlow.authorization_url` and :meth:`LoginFlow.exchange` from its own routes.

:func:`open_session` is the other half: a :class:`~refresher.RefreshingSession` for an
account that ``refresher login`` saved, configured from what the login recorded in the
store (client id, endpoints; never the secret).

Nothing here logs, prints or repeats a token, a code verifier or a client secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import http.server
import logging
import os
import secrets
import socket
import sys
import threading
import time
import webbrowser
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, TextIO, Tuple, Union
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import requests

from ._constants import (
    DEFAULT_DEADLINE,
    DEFAULT_SCOPES,
    DEFAULT_TIMEOUT,
    X_API_URL,
    X_AUTHORIZE_URL,
    X_REVOKE_URL,
    X_TOKEN_URL,
)
from ._transport import is_loopback_host, require_secure_transport
from .endpoint import TokenEndpoint
from .errors import ConfigurationError, LoginError, ReauthorizationRequired, RefreshError
from .session import RefreshingSession
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

#: Where :meth:`LoginFlow.run_local_server` receives the browser; register it with your X app.
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8765/callback"

# How long a browser connection that sends nothing may hold a callback-server thread.
_CONNECTION_TIMEOUT = 10.0

OpenBrowser = Union[bool, Callable[[str], Any]]


@dataclass(frozen=True)
class AuthorizationLink:
    """Where to send the user, and what :meth:`LoginFlow.exchange` needs when they return.

    ``state`` and ``code_verifier`` are fresh for every link. Keep them on the server side
    (the verifier is the PKCE secret: it never goes to the browser); ``repr`` leaves it out.

    >>> link = LoginFlow("my-client-id").authorization_url()
    >>> link.url.startswith("https://x.com/i/oauth2/authorize?response_type=code")
    True
    """

    url: str
    state: str
    code_verifier: str = field(repr=False)
    redirect_uri: str = DEFAULT_REDIRECT_URI


class LoginFlow:
    """The OAuth 2.0 Authorization Code flow with PKCE, for one X app (client).

    ``client_secret`` makes it a confidential client (HTTP Basic at the token endpoint);
    without it the client id goes in the form, as X wants for public clients.
    ``redirect_uri`` must be exactly the callback URL registered with the app.
    ``api_base_url`` is where :meth:`session` sends ``me()`` (point it, and the other URLs,
    at :class:`refresher.testing.XEmulator` to log in offline).

    >>> flow = LoginFlow("my-client-id")
    >>> token = flow.run_local_server()  # doctest: +SKIP
    >>> store = JSONTokenStore("tokens.json")  # doctest: +SKIP
    >>> session = flow.session(token, store=store, account="me")  # doctest: +SKIP
    >>> session.me()["username"]  # doctest: +SKIP
    'me'
    """

    def __init__(
        self,
        client_id: str,
        client_secret: Optional[str] = None,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        scopes: Union[str, Iterable[str]] = DEFAULT_SCOPES,
        authorize_url: str = X_AUTHORIZE_URL,
        token_url: str = X_TOKEN_URL,
        *,
        api_base_url: str = X_API_URL,
        http_session: Optional[requests.Session] = None,
    ) -> None:
        if not client_id:
            raise ConfigurationError(
                "client_id is required: the OAuth 2.0 Client ID of your X app (on its Keys "
                "and tokens page in the X developer portal)"
            )
        self.client_id = client_id
        self._client_secret = client_secret or None
        self.redirect_uri = redirect_uri
        self.scopes: Tuple[str, ...] = tuple(
            scopes.split() if isinstance(scopes, str) else scopes
        )
        if not self.scopes:
            raise ConfigurationError(
                "scopes must not be empty: ask for at least tweet.read users.read "
                "offline.access (offline.access yields a refresh token)"
            )
        self.authorize_url = authorize_url
        self.token_url = token_url
        self.api_base_url = api_base_url
        self.http_session = http_session

    def __repr__(self) -> str:
        kind = "confidential" if self._client_secret else "public"
        return (f"LoginFlow(client_id={self.client_id!r}, {kind}, "
                f"redirect_uri={self.redirect_uri!r}, scopes={' '.join(self.scopes)!r})")

    @property
    def confidential(self) -> bool:
        """True when the client authenticates with a secret."""
        return self._client_secret is not None

    # -- the two halves of the flow ------------------------------------------------------

    def authorization_url(self, *, redirect_uri: Optional[str] = None) -> AuthorizationLink:
        """A new link to X's authorize page: fresh ``state``, fresh PKCE (S256) verifier.

        ``redirect_uri`` overrides the flow's for this link (the same one must then reach
        :meth:`exchange`; :class:`AuthorizationLink` carries it).

        >>> link = LoginFlow("my-client-id").authorization_url()
        >>> "code_challenge_method=S256" in link.url
        True
        """
        require_secure_transport(self.authorize_url)
        redirect = redirect_uri or self.redirect_uri
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-] (RFC 7636: 43-128)
        query = urlencode({
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect,
            "scope": " ".join(self.scopes),
            "state": state,
            "code_challenge": _s256(verifier),
            "code_challenge_method": "S256",
        })
        parts = urlsplit(self.authorize_url)
        url = urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, query]))))
        return AuthorizationLink(url, state, verifier, redirect)

    def exchange(
        self,
        callback_url: str,
        *,
        state: str,
        code_verifier: str,
        redirect_uri: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Token:
        """Check the URL the browser came back to, and trade its code for the first token.

        ``callback_url`` is the whole redirected URL (or just its query string). The
        ``state`` in it must be the link's (:class:`~refresher.LoginError` otherwise: a
        stale tab or a forged request); ``error=access_denied`` (the user refused) and a
        code the token endpoint rejects raise :class:`~refresher.LoginError` too. Returns
        the token dict, with ``expires_at``.

        ``timeout`` bounds the whole exchange in seconds, retries included (default: the
        token endpoint's own bounds, 10 s an answer and 15 s in all); a
        :class:`~refresher.LoginError` says when it ran out.

        >>> token = flow.exchange(request.url, state=link.state,  # doctest: +SKIP
        ...                       code_verifier=link.code_verifier)
        """
        params = _callback_params(callback_url)
        returned = params.get("state", "")
        if not returned or not hmac.compare_digest(returned.encode(), state.encode()):
            raise LoginError(
                "the callback's state does not match this login (a stale browser tab, a "
                "second login, or a forged request); start the login again"
            )
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
                code, redirect_uri=redirect_uri or self.redirect_uri, code_verifier=code_verifier
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
            raise LoginError(f"{exc}{hint}") from None
        finally:
            endpoint.close()
        if not token.get("refresh_token"):
            log.warning("X issued no refresh token (scopes: %s): add offline.access to the "
                        "scopes, or the account stops working when this token expires",
                        token.get("scope", ""))
        log.info("logged in: client %s, scopes %s", self.client_id, token.get("scope", ""))
        return token

    # -- the whole flow on this machine --------------------------------------------------

    def run_local_server(
        self,
        port: Optional[int] = None,
        open_browser: OpenBrowser = True,
        timeout: float = 300.0,
        *,
        out: Optional[TextIO] = None,
        paste_from: Optional[TextIO] = None,
    ) -> Token:
        """Log in through the browser: serve the callback on loopback, wait, exchange.

        The callback server listens on the redirect URI's loopback address (127.0.0.1 for
        ``localhost``) only, at ``port`` (default: the redirect URI's, 8765; 0 picks a free
        one, and the link then names it). ``open_browser`` is ``True`` (open the system
        browser and print the URL), ``False`` (only print the URL), or a callable that is
        given the URL (called in this thread: it should not block). The browser gets a short
        page saying how it went.

        ``timeout`` bounds the whole login in seconds: waiting for the browser, and the code
        exchange, which gets only the time left when the browser comes back.

        ``out`` is where the URL and instructions go (default ``sys.stdout``). With
        ``paste_from`` (a text stream such as ``sys.stdin``), the redirected URL may also be
        pasted there: the way in for machines the browser cannot reach (SSH, containers).

        Raises :class:`~refresher.LoginError` on a timeout, a refusal, a state mismatch,
        a failed exchange, or a port that cannot be listened on, and
        :class:`~refresher.ConfigurationError` for a redirect URI it cannot serve. Returns the
        token dict.

        >>> token = LoginFlow("my-client-id").run_local_server()  # doctest: +SKIP
        Opening https://x.com/i/oauth2/authorize?... in your browser.
        """
        deadline = time.monotonic() + timeout
        stream = out if out is not None else sys.stdout
        parts = urlsplit(self.redirect_uri)
        host = parts.hostname or ""
        if parts.scheme != "http" or not is_loopback_host(host):
            raise ConfigurationError(
                "run_local_server needs a loopback http redirect URI such as "
                f"{DEFAULT_REDIRECT_URI} (registered with your X app); got {self.redirect_uri!r}"
            )
        bind = "127.0.0.1" if host == "localhost" else host
        wanted = parts.port if port is None else port
        if wanted is None:
            wanted = 80
        try:
            server = _CallbackServer((bind, wanted), parts.path or "/")
        except OSError as exc:
            raise LoginError(
                f"cannot listen for the login callback on {bind}:{wanted}: {exc.strerror}; "
                "is another login running? Free that port or choose another one (the "
                "callback URL registered with your X app must name the same port)"
            ) from None
        thread: Optional[threading.Thread] = None
        try:
            actual = server.server_address[1]
            netloc = f"[{host}]:{actual}" if ":" in host else f"{host}:{actual}"
            redirect_uri = urlunsplit(parts._replace(netloc=netloc))
            link = self.authorization_url(redirect_uri=redirect_uri)
            pending = _PendingLogin(self, link, deadline)
            server.pending = pending
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"refresher-login:{actual}", daemon=True)
            thread.start()
            if paste_from is not None:
                threading.Thread(target=_read_pasted, args=(paste_from, pending, stream),
                                 name="refresher-login-paste", daemon=True).start()
            _send_user(link.url, open_browser, stream, redirect_uri, pasting=paste_from is not None)
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                exchanging = pending.abandon()
                if exchanging:
                    raise LoginError(
                        f"the browser came back, but the code exchange at {self.token_url} "
                        f"did not finish within the login's {timeout:g} s timeout; start the "
                        "login again, and allow it more time if X is slow"
                    )
                raise LoginError(
                    f"no login within {timeout:g} s: nobody came back to {redirect_uri}; "
                    "run the login again and approve it in the browser"
                )
        finally:
            if thread is not None:
                server.shutdown()  # returns once serve_forever has run and stopped
            server.server_close()
        return pending.result()

    # -- after the login -----------------------------------------------------------------

    def session(
        self,
        token: Optional[Mapping[str, Any]] = None,
        *,
        store: Optional[TokenStore] = None,
        account: str = "default",
        **kwargs: Any,
    ) -> RefreshingSession:
        """A :class:`~refresher.RefreshingSession` for this client, holding ``token``.

        The flow's client id, secret, token URL and API base URL carry over; other keywords
        go to :class:`~refresher.RefreshingSession`. Without ``store`` the token lives in a
        :class:`~refresher.MemoryTokenStore`.

        ``token`` (a login's answer) goes into the store, replacing what the account held,
        unless the store already holds a pair issued after it (a refresh of it: the dict you
        hold may be spent, so calling this twice with the same dict is safe). From here on
        the store holds the live pair. ``token=None`` uses the stored one.

        >>> session = flow.session(token, store=store, account="alice")  # doctest: +SKIP
        >>> session
        <RefreshingSession account='alice' store=... token sha256:1a2b3c4d expires in 7200 s>
        """
        kwargs.setdefault("api_base_url", self.api_base_url)
        session = RefreshingSession(
            self.client_id,
            client_secret=self._client_secret,
            token_url=self.token_url,
            store=store if store is not None else MemoryTokenStore(),
            account=account,
            token=token,
            **kwargs,
        )
        if token and _should_replace(session.token, token):
            session.token = dict(token)  # a new login: saved under the store's lock
        return session


# -- scripts and cron jobs: a session from what `refresher login` recorded -----------------

# Environment variables the command line and open_session() read, by setting.
_ENVIRONMENT = {
    "store": "REFRESHER_STORE",
    "account": "REFRESHER_ACCOUNT",
    "client_id": "REFRESHER_CLIENT_ID",
    "client_secret": "REFRESHER_CLIENT_SECRET",
    "token_url": "REFRESHER_TOKEN_URL",
    "api_url": "REFRESHER_API_URL",
    "authorize_url": "REFRESHER_AUTHORIZE_URL",
    "revoke_url": "REFRESHER_REVOKE_URL",
    "redirect_uri": "REFRESHER_REDIRECT_URI",
}
_DEFAULTS: Dict[str, Optional[str]] = {
    "token_url": X_TOKEN_URL,
    "api_url": X_API_URL,
    "authorize_url": X_AUTHORIZE_URL,
    "revoke_url": X_REVOKE_URL,
    "redirect_uri": DEFAULT_REDIRECT_URI,
}


def default_store_location() -> str:
    """``$REFRESHER_STORE``, else ``tokens.json`` in the user's config folder.

    The config folder is ``$XDG_CONFIG_HOME/refresher``, else ``~/.config/refresher``
    (``%APPDATA%\\refresher`` on Windows). The JSON store creates it mode 0700.

    >>> default_store_location()  # doctest: +SKIP
    '/home/me/.config/refresher/tokens.json'
    """
    configured = os.environ.get(_ENVIRONMENT["store"])
    if configured:
        return configured
    base = os.environ.get("XDG_CONFIG_HOME") or (
        os.environ.get("APPDATA") if os.name == "nt" else None
    ) or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "refresher", "tokens.json")


def _setting(name: str, explicit: Optional[str], metadata: Mapping[str, Any]) -> Optional[str]:
    """One setting: ``explicit``, else its ``REFRESHER_*`` variable, else the store's record,
    else X's default. The client secret is never in the store's record."""
    if explicit:
        return explicit
    from_env = os.environ.get(_ENVIRONMENT[name])
    if from_env:
        return from_env
    recorded = metadata.get(name) if name != "client_secret" else None
    if isinstance(recorded, str) and recorded:
        return recorded
    return _DEFAULTS.get(name)


def _choose_account(store: TokenStore, wanted: Optional[str] = None) -> str:
    """The account to use: ``wanted``, else ``$REFRESHER_ACCOUNT``, else the store's only one.

    Raises :class:`~refresher.ConfigurationError` (a :class:`ValueError`) for an unknown
    account or a store with several (choose one), and
    :class:`~refresher.ReauthorizationRequired` for an empty store (log in first).
    """
    # An empty (or blank) REFRESHER_ACCOUNT counts as unset, as shells make `VAR= command`
    # the usual way to clear a variable for one command. The command line refuses an empty
    # --account outright; an empty ``wanted`` from Python also means "not chosen".
    from_env = os.environ.get(_ENVIRONMENT["account"]) or ""
    name = wanted or (from_env if from_env.strip() else None)
    accounts = store.accounts()
    where = _describe_store(store)
    if name:
        if name not in accounts:
            if accounts:
                choice = (f"the accounts there are {', '.join(accounts)}: pick one of them "
                          "(--account NAME, or REFRESHER_ACCOUNT), or log")
            else:
                choice = "it holds no account yet: log"
            raise ConfigurationError(
                f"no account {name!r} in {where}; {choice} {name!r} in with: "
                f"refresher login --account {name}"
            )
        return name
    if not accounts:
        raise ReauthorizationRequired(
            f"no accounts in {where}; log in first: "
            "refresher login --client-id YOUR_CLIENT_ID"
        )
    if len(accounts) > 1:
        raise ConfigurationError(
            f"{where} holds several accounts ({', '.join(accounts)}); "
            "choose one (--account NAME, or REFRESHER_ACCOUNT)"
        )
    return accounts[0]


def _describe_store(store: TokenStore) -> str:
    """A store's name for a message: the file of a JSON store, else its (password-free) repr."""
    path = getattr(store, "path", None)
    return str(path) if path is not None else repr(store)


def open_session(
    account: Optional[str] = None,
    *,
    store: Union[TokenStore, str, os.PathLike[str], None] = None,
    client_id: Optional[str] = None,
    client_secret: Optional[str] = None,
    **kwargs: Any,
) -> RefreshingSession:
    """A :class:`~refresher.RefreshingSession` for an account ``refresher login`` saved.

    ``store`` is a store or a location (default :func:`default_store_location`);
    ``account`` defaults to ``$REFRESHER_ACCOUNT``, else the store's only account. The
    client id and the token and API URLs come from the arguments, else the
    ``REFRESHER_*`` environment variables, else what the login recorded in the store; the
    secret of a confidential client from ``client_secret`` or ``$REFRESHER_CLIENT_SECRET``
    (the store never holds it). Other keywords go to :class:`~refresher.RefreshingSession`.

    Raises :class:`~refresher.ConfigurationError` (also a :class:`ValueError`) for an
    unknown account, a store with several accounts and none chosen, or a missing client id
    or secret: the message names the store and its accounts (never a token) and what to do.

    >>> session = open_session("alice")  # doctest: +SKIP
    >>> session.me()["username"]  # doctest: +SKIP
    'alice'
    """
    if store is None or isinstance(store, (str, os.PathLike)):
        store = open_store(store if store is not None else default_store_location())
    name = _choose_account(store, account)
    metadata = store.load_metadata(name)
    client = _setting("client_id", client_id, metadata)
    if not client:
        raise ConfigurationError(
            f"no client id for account {name!r}: pass client_id, set REFRESHER_CLIENT_ID, "
            "or log the account in with `refresher login`"
        )
    secret = _setting("client_secret", client_secret, metadata)
    if metadata.get("confidential") and not secret:
        raise ConfigurationError(
            f"account {name!r} belongs to the confidential client {client!r}: pass "
            "client_secret or set REFRESHER_CLIENT_SECRET"
        )
    kwargs.setdefault("token_url", _setting("token_url", None, metadata))
    kwargs.setdefault("api_base_url", _setting("api_url", None, metadata))
    return RefreshingSession(client, client_secret=secret, store=store, account=name, **kwargs)


# -- plumbing --------------------------------------------------------------------------------


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _callback_params(callback_url: str) -> Dict[str, str]:
    text = callback_url.strip().split("#", 1)[0]
    query = text.split("?", 1)[1] if "?" in text else text
    return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _issued_at(token: Mapping[str, Any]) -> Optional[float]:
    try:
        return float(token["expires_at"]) - float(token["expires_in"])
    except (KeyError, TypeError, ValueError):
        return None


def _should_replace(stored: Optional[Mapping[str, Any]], given: Mapping[str, Any]) -> bool:
    """Whether a login's token should replace the stored one (not an older, maybe spent one)."""
    if not stored or stored.get("access_token") == given.get("access_token"):
        return False
    given_at = _issued_at(normalize_token(given))
    stored_at = _issued_at(stored)
    return given_at is None or stored_at is None or given_at > stored_at


def _send_user(url: str, open_browser: OpenBrowser, out: TextIO, redirect_uri: str, *,
               pasting: bool) -> None:
    if callable(open_browser):
        open_browser(url)
        return
    if open_browser:
        print(f"Opening X's authorize page in your browser:\n\n    {url}\n", file=out)
        # In a thread: webbrowser.open waits for a $BROWSER command (a text browser, a
        # script) to end, and the login's timeout must bound that wait too.
        threading.Thread(target=_open_browser, args=(url, out), name="refresher-login-browser",
                         daemon=True).start()
    else:
        print(f"Open this address in a browser and approve the app:\n\n    {url}\n", file=out)
    if pasting:
        print(f"Then, if this machine cannot be reached at {redirect_uri}, paste here the "
              "address the browser was sent to (it starts with that URL and has ?state= "
              "and code= in it):", file=out)
    else:
        print(f"Waiting for the browser to come back to {redirect_uri} ...", file=out)
    out.flush()


def _open_browser(url: str, out: TextIO) -> None:
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        print("No browser could be opened: open the address above yourself.", file=out)
        out.flush()


def _read_pasted(stream: TextIO, pending: _PendingLogin, out: TextIO) -> None:
    """Feed URLs pasted on ``stream`` to the login until one completes it (or EOF)."""
    try:
        for line in iter(stream.readline, ""):
            if pending.done.is_set():
                return
            text = line.strip()
            if not text:
                continue
            params = _callback_params(text)
            if not ({"code", "error"} & params.keys()):
                print("That is not the address the browser was sent to (look for ?state= and "
                      "code= in it); paste it again:", file=out)
                out.flush()
                continue
            pending.complete(text)
            return
    except (OSError, ValueError):  # the stream was closed under us
        return


class _PendingLogin:
    """One login waiting for its callback, from the browser or pasted: the first one wins.

    The code exchange gets only the time left until ``deadline`` (``time.monotonic()``).
    """

    def __init__(self, flow: LoginFlow, link: AuthorizationLink, deadline: float) -> None:
        self._flow = flow
        self._link = link
        self._deadline = deadline
        self._lock = threading.Lock()
        self.done = threading.Event()
        self._exchanging = False
        self._abandoned = False
        self._token: Optional[Token] = None
        self._error: Optional[LoginError] = None

    def abandon(self) -> bool:
        """The login gave up waiting; whether a code exchange was under way.

        A callback (or an exchange) that finishes later is told the login timed out.
        """
        self._abandoned = True
        return self._exchanging

    def complete(self, callback_url: str) -> Tuple[bool, str]:
        """Exchange the callback's code (once); whether it worked, and a line for the user."""
        with self._lock:
            if not self.done.is_set() and not self._abandoned:
                self._exchanging = True
                try:
                    self._token = self._flow.exchange(
                        callback_url, state=self._link.state,
                        code_verifier=self._link.code_verifier,
                        redirect_uri=self._link.redirect_uri,
                        timeout=self._deadline - time.monotonic(),
                    )
                except LoginError as exc:
                    self._error = exc
                finally:
                    self.done.set()
            if self._abandoned:
                return False, ("Login failed: it timed out before it could finish. Start it "
                               "again in the terminal.")
            if self._error is not None:
                return False, f"Login failed: {self._error}"
            return True, "Logged in. You can close this window and go back to the terminal."

    def result(self) -> Token:
        if self._error is not None:
            raise LoginError(str(self._error)) from None
        assert self._token is not None
        return self._token


class _CallbackServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], callback_path: str) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.callback_path = callback_path
        self.pending: Optional[_PendingLogin] = None
        super().__init__(address, _CallbackHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("login callback: connection from %s ended abruptly", client_address)


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: _CallbackServer
    timeout = _CONNECTION_TIMEOUT
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = urlsplit(self.path).path
        pending = self.server.pending
        if path != self.server.callback_path or pending is None:
            self._page(404, "Not found", "This address only receives the X login callback.")
            return
        if not ({"code", "error", "state"} & _callback_params(self.path).keys()):
            self._page(400, "Waiting for X", "This address receives the X login callback; "
                                             "start from the authorize page.")
            return
        ok, message = pending.complete(self.path)  # exchange() reads only the query
        self._page(200 if ok else 400, "Logged in" if ok else "Login failed", message)

    def _page(self, status: int, title: str, message: str) -> None:
        body = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>refresher: {html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    # The query carries the code and state: log the path only.
    def log_request(self, code: Union[int, str] = "-", size: Union[int, str] = "-") -> None:
        log.debug("login callback: %s %s -> %s", self.command,
                  urlsplit(getattr(self, "path", "")).path, code)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("login callback: malformed request from %s", self.address_string())

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("login callback: %s", format % args)
