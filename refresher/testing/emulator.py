"""An emulator of X's OAuth 2.0 endpoints and a few API v2 endpoints, over real HTTP.

It follows the rules in X's documentation and the behaviour observed in the wild: PKCE codes
that live 30 seconds and serve once, refresh tokens that rotate and die when spent, Basic
authentication for confidential clients, problem+json 401/403 answers. On top of that it
counts what clients do (see :class:`EmulatorStats`) and lets tests misbehave on purpose:
expire or revoke tokens, fail or slow down the token endpoint.

Only the standard library is used: the emulator ships inside refresher.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.server
import json
import logging
import re
import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_CONFIDENTIAL_CLIENT_ID",
    "DEFAULT_USER",
    "EmulatorStats",
    "XEmulator",
]

logger = logging.getLogger("refresher.testing")

#: A public client (PKCE only, no secret), known to every emulator by default.
DEFAULT_CLIENT_ID = "emulator-client"
#: A confidential client, known to every emulator by default, with :data:`DEFAULT_CLIENT_SECRET`.
DEFAULT_CONFIDENTIAL_CLIENT_ID = "emulator-confidential-client"
DEFAULT_CLIENT_SECRET = "emulator-client-secret"
#: The user who logs in when no ``users`` are given.
DEFAULT_USER: Mapping[str, str] = {
    "id": "1000000001",
    "name": "Emulated User",
    "username": "emulated_user",
}

KNOWN_SCOPES = frozenset(
    "tweet.read tweet.write tweet.moderate.write users.read users.email follows.read"
    " follows.write offline.access space.read mute.read mute.write like.read like.write"
    " list.read list.write block.read block.write bookmark.read bookmark.write media.write"
    " dm.read dm.write".split()
)

_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
_PROBLEM = "application/problem+json"
_TEXT = "text/plain; charset=utf-8"

_CODE_INVALID = "Value passed for the authorization code was invalid."
_TOKEN_INVALID = "Value passed for the token was invalid."
_MISSING_AUTH = "Missing valid authorization header"
_DUPLICATE_TWEET = "You are not allowed to create a Tweet with duplicate content."

_USERS_ME_SCOPES = frozenset({"tweet.read", "users.read"})
# X's reference lists all three for POST /2/tweets, not only tweet.write.
_CREATE_TWEET_SCOPES = frozenset({"tweet.read", "tweet.write", "users.read"})
_RATE_LIMIT = 75
_RATE_WINDOW = 15 * 60.0
_ECHO_TEXT_LIMIT = 64 * 1024
_MAX_STATE = 500
_PKCE_VALUE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class EmulatorStats:
    """Counts of what clients did to an :class:`XEmulator`, as a snapshot.

    ``reused_refresh_tokens`` is the one refresher exists to keep at zero: a refresh token
    sent again after a refresh already spent it, typically by two processes refreshing at once.
    """

    token_requests: int = 0
    exchanges: int = 0
    refreshes: int = 0
    reused_refresh_tokens: int = 0
    invalid_refresh_tokens: int = 0
    api_requests: int = 0
    unauthorized: int = 0
    forbidden: int = 0
    revocations: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict, e.g. ``{"refreshes": 1, ...}``."""
        return asdict(self)


_STAT_NAMES = tuple(f.name for f in fields(EmulatorStats))


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    scopes: Tuple[str, ...]
    challenge: str
    method: str
    user_id: str
    expires_at: float
    used: bool = False


@dataclass
class _Access:
    client_id: str
    user_id: str
    scopes: Tuple[str, ...]
    expires_at: float
    revoked: bool = False


@dataclass
class _Refresh:
    client_id: str
    user_id: str
    scopes: Tuple[str, ...]
    access_token: str
    spent: bool = False
    revoked: bool = False


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def params(self) -> dict[str, str]:
        return _first_values(self.query)

    def form(self) -> dict[str, str]:
        return _first_values(self.body.decode("utf-8", "replace"))


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: Dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0  # seconds between body bytes (a slow, hostile server)


_Handler = Callable[["XEmulator", _Request], _Response]
_ApiHandler = Callable[["XEmulator", _Request, _Access], _Response]


def _first_values(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}


def _json(status: int, payload: Any, content_type: str = _JSON) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, content_type)


def _problem(status: int, title: str, detail: str) -> _Response:
    payload = {"title": title, "type": "about:blank", "status": status, "detail": detail}
    return _json(status, payload, _PROBLEM)


def _unauthorized() -> _Response:
    return _problem(401, "Unauthorized", "Unauthorized")


def _forbidden(detail: str = "Forbidden") -> _Response:
    return _problem(403, "Forbidden", detail)


def _oauth_error(status: int, error: str, description: str) -> _Response:
    response = _json(status, {"error": error, "error_description": description})
    response.headers["Cache-Control"] = "no-store"
    return response


def _invalid_request(description: str) -> _Response:
    return _oauth_error(400, "invalid_request", description)


def _missing(parameter: str) -> _Response:
    return _invalid_request(f"Missing required parameter [{parameter}].")


def _page(status: int, message: str) -> _Response:
    """What X's authorize page shows when it refuses to redirect back."""
    return _Response(status, f"{status} {message}\n".encode(), _TEXT)


def _new_token(kind: str) -> str:
    # Shaped like X's tokens: base64 of "random:millis:1:0:kind:1".
    raw = f"{secrets.token_urlsafe(30)}:{int(time.time() * 1000)}:1:0:{kind}:1"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _basic_credentials(header: str) -> Optional[Tuple[str, str]]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    return urllib.parse.unquote(client_id), urllib.parse.unquote(secret)


def _seconds(ttl: float) -> float:
    return int(ttl) if float(ttl).is_integer() else ttl


def _with_bearer(handler: _ApiHandler) -> _Handler:
    """Answer 401 unless the request carries a live access token, else call ``handler``."""

    @functools.wraps(handler)
    def guarded(emulator: XEmulator, request: _Request) -> _Response:
        access = emulator._live_access(request)
        if access is None:
            return _unauthorized()
        return handler(emulator, request, access)

    return guarded


@dataclass(frozen=True)
class _Route:
    handler: _Handler
    methods: Optional[frozenset[str]]  # None: any method


class XEmulator:
    """A local stand-in for X's OAuth 2.0 and API v2 endpoints, served over loopback HTTP.

    Point a client's token, authorize, revoke and API URLs at the emulator's
    ``token_url``, ``authorize_url``, ``revoke_url`` and ``api_url``; read
    :attr:`stats` to see what it did::

        with XEmulator(access_ttl=1) as x:
            token = x.issue_token()
            r = requests.get(x.api_url + "/2/users/me",
                             headers={"Authorization": "Bearer " + token["access_token"]})
            assert r.json()["data"]["username"] == "emulated_user"
            assert x.stats.api_requests == 1

    ``clients`` maps client ids to secrets (``None`` for a public client). ``redirect_uris``
    of ``None`` accepts any loopback ``http`` redirect URI; a list demands an exact match, as
    X does. ``token_delay`` holds each token answer back that many seconds;
    ``token_trickle`` sends its headers at once and then its body one byte every that many
    seconds (a server that never quite answers). ``access_ttl``, ``token_delay``,
    ``token_trickle``, ``auto_approve`` and ``invalidate_access_on_refresh`` may be changed
    while the emulator runs. ``/2/emulator/unauthorized`` answers 401 to every token, as X
    has been seen to do to valid ones.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_ttl: float = 7200.0,
        code_ttl: float = 30.0,
        clients: dict[str, str | None] | None = None,
        users: list[dict[str, str]] | None = None,
        auto_approve: bool = True,
        invalidate_access_on_refresh: bool = False,
        token_delay: float = 0.0,
        redirect_uris: list[str] | None = None,
        token_trickle: float = 0.0,
    ) -> None:
        self.access_ttl = access_ttl
        self.code_ttl = code_ttl
        self.auto_approve = auto_approve
        self.invalidate_access_on_refresh = invalidate_access_on_refresh
        self.token_delay = token_delay
        self.token_trickle = token_trickle
        self._host = host
        self._port = port
        self._clients: dict[str, Optional[str]] = (
            dict(clients)
            if clients is not None
            else {DEFAULT_CLIENT_ID: None, DEFAULT_CONFIDENTIAL_CLIENT_ID: DEFAULT_CLIENT_SECRET}
        )
        user_list = [dict(u) for u in users] if users else [dict(DEFAULT_USER)]
        for user in user_list:
            if not {"id", "name", "username"} <= user.keys():
                raise ValueError("each user needs 'id', 'name' and 'username'")
        self._users: dict[str, dict[str, str]] = {u["id"]: u for u in user_list}
        self._login_user = user_list[0]["id"]
        self._redirect_uris = list(redirect_uris) if redirect_uris is not None else None

        self._lock = threading.Lock()
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._tweets: dict[str, set[str]] = {}
        self._rate_windows: dict[str, Tuple[float, int]] = {}
        self._faults: List[_Response] = []
        self._counts: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)
        self._next_tweet_id = 1_800_000_000_000_000_000

        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._url: Optional[str] = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> XEmulator:
        """Serve in a daemon thread; return ``self``.

        Starting again after :meth:`stop` serves on the same port, so a test can take X
        down and bring it back without clients noticing a new URL.
        """
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), self)
        self._port = server.server_address[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"http://{host}:{self._port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # stop() waits up to one poll: short, since test suites stop emulators by hundreds.
            kwargs={"poll_interval": 0.02},
            name=f"XEmulator:{self._port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("X emulator serving on %s", self._url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and open connections. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        # Kept-alive connections would otherwise go on being served by their threads.
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        logger.debug("X emulator on %s stopped", self._url)

    def __enter__(self) -> XEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- URLs --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running emulator."""
        if self._url is None:
            raise RuntimeError("the XEmulator has not been started")
        return self._url

    @property
    def api_url(self) -> str:
        """The base of API requests, as ``https://api.x.com`` is for X."""
        return self.url

    @property
    def token_url(self) -> str:
        """``POST`` here to exchange a code or refresh a token."""
        return self.url + "/2/oauth2/token"

    @property
    def authorize_url(self) -> str:
        """Where a browser is sent to log in (approved at once by default)."""
        return self.url + "/i/oauth2/authorize"

    @property
    def revoke_url(self) -> str:
        """``POST`` here to revoke a token."""
        return self.url + "/2/oauth2/revoke"

    # -- test controls -----------------------------------------------------------------

    def issue_token(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        scope: str = "tweet.read users.read offline.access",
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Mint a token pair without a login, as the token endpoint would answer it.

        The dict also holds ``expires_at`` (epoch seconds). A refresh token comes only with
        ``offline.access`` in ``scope``.
        """
        if client_id not in self._clients:
            raise ValueError(f"unknown client_id {client_id!r}")
        user_id = self._login_user if user_id is None else user_id
        if user_id not in self._users:
            raise ValueError(f"unknown user_id {user_id!r}")
        scopes = tuple(scope.split())
        unknown = set(scopes) - KNOWN_SCOPES
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}")
        with self._lock:
            payload = self._mint(client_id, user_id, scopes)
            payload["expires_at"] = self._access[payload["access_token"]].expires_at
        return payload

    def expire_access_token(self, access_token: str) -> None:
        """Make an access token expired from now on. Raises KeyError for an unknown token."""
        with self._lock:
            record = self._access.get(access_token)
            if record is None:
                raise KeyError("unknown access token")
            record.expires_at = min(record.expires_at, time.time())

    def revoke_all(self) -> None:
        """Kill every access and refresh token issued so far."""
        with self._lock:
            for access in self._access.values():
                access.revoked = True
            for refresh in self._refresh.values():
                refresh.revoked = True

    def refresh_token_state(self, refresh_token: str) -> str:
        """What a refresh token is now: ``"live"``, ``"spent"``, ``"revoked"`` or ``"unknown"``."""
        with self._lock:
            record = self._refresh.get(refresh_token)
            if record is None:
                return "unknown"
            if record.revoked:
                return "revoked"
            return "spent" if record.spent else "live"

    def fail_token_endpoint(
        self,
        times: int = 1,
        status: int = 503,
        body: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Make the next ``times`` token requests answer ``status`` and ``body``.

        Nothing is spent or issued by those requests: a refresh token sent to a failing
        endpoint stays valid. ``body`` defaults to a JSON OAuth error.
        """
        if times < 0:
            raise ValueError("times must not be negative")
        if body is None:
            error = "temporarily_unavailable" if status == 503 else "server_error"
            description = f"Emulated failure of the token endpoint (HTTP {status})."
            body = json.dumps({"error": error, "error_description": description})
            content_type = _JSON
        fault = _Response(status, body.encode(), content_type)
        with self._lock:
            self._faults.extend([fault] * times)

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counts since the start or the last :meth:`reset_stats`."""
        with self._lock:
            return EmulatorStats(**self._counts)

    def reset_stats(self) -> None:
        """Set every count back to zero."""
        with self._lock:
            self._counts = dict.fromkeys(_STAT_NAMES, 0)

    # -- request handling --------------------------------------------------------------

    def _handle(self, request: _Request) -> _Response:
        is_api = request.path.startswith("/2/") and not request.path.startswith("/2/oauth2/")
        if is_api:
            self._count("api_requests")
        route = _ROUTES.get(request.path)
        if route is None and request.path.startswith(_FORBIDDEN_PREFIX):
            route = _ROUTES[_FORBIDDEN_PREFIX]
        if route is None:
            response = _problem(404, "Not Found", f"No such endpoint: {request.path}")
        elif route.methods is not None and request.method not in route.methods:
            response = _problem(405, "Method Not Allowed", "Method Not Allowed")
            response.headers["Allow"] = ", ".join(sorted(route.methods))
        else:
            response = route.handler(self, request)
        if is_api and response.status == 401:
            self._count("unauthorized")
        elif is_api and response.status == 403:
            self._count("forbidden")
        return response

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def _mint(self, client_id: str, user_id: str, scopes: Tuple[str, ...]) -> dict[str, Any]:
        """Issue a token pair; the caller holds the lock."""
        access_token = _new_token("at")
        ttl = self.access_ttl
        self._access[access_token] = _Access(client_id, user_id, scopes, time.time() + ttl)
        payload: dict[str, Any] = {
            "token_type": "bearer",
            "expires_in": _seconds(ttl),
            "access_token": access_token,
            "scope": " ".join(scopes),
        }
        if "offline.access" in scopes:
            refresh_token = _new_token("rt")
            self._refresh[refresh_token] = _Refresh(client_id, user_id, scopes, access_token)
            payload["refresh_token"] = refresh_token
        return payload

    def _live_access(self, request: _Request) -> Optional[_Access]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            record = self._access.get(token.strip())
            if record is None or record.revoked or time.time() >= record.expires_at:
                return None
            return record

    def _redirect_uri_allowed(self, uri: str) -> bool:
        if self._redirect_uris is not None:
            return uri in self._redirect_uris
        try:
            parts = urllib.parse.urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS and not parts.fragment

    def _authorize(self, request: _Request) -> _Response:
        params = request.params()
        client_id = params.get("client_id", "")
        if client_id not in self._clients:
            return _page(400, "Something went wrong: unknown or missing client_id.")
        redirect_uri = params.get("redirect_uri", "")
        if not self._redirect_uri_allowed(redirect_uri):
            return _page(400, "Something went wrong: redirect_uri is not registered for this app.")
        if params.get("response_type") != "code":
            return _page(400, "Something went wrong: response_type must be 'code'.")
        scopes = tuple(params.get("scope", "").split())
        if not scopes or not set(scopes) <= KNOWN_SCOPES:
            return _page(400, "Something went wrong: missing or unknown scope.")
        state = params.get("state", "")
        if not state or len(state) > _MAX_STATE:
            return _page(400, "Something went wrong: state is missing or too long.")
        challenge = params.get("code_challenge", "")
        method = params.get("code_challenge_method", "")
        if method not in ("S256", "plain") or not _PKCE_VALUE.fullmatch(challenge):
            return _page(400, "Something went wrong: invalid code_challenge or its method.")

        if not self.auto_approve:
            return _redirect(_with_query(redirect_uri, error="access_denied", state=state))
        code = _new_token("ac")
        with self._lock:
            now = time.time()
            for stale in [c for c, r in self._codes.items() if r.expires_at <= now]:
                del self._codes[stale]
            self._codes[code] = _Code(
                client_id, redirect_uri, scopes, challenge, method, self._login_user,
                now + self.code_ttl,
            )
        return _redirect(_with_query(redirect_uri, state=state, code=code))

    def _token(self, request: _Request) -> _Response:
        response = self._token_answer(request)
        response.trickle = self.token_trickle
        return response

    def _token_answer(self, request: _Request) -> _Response:
        self._count("token_requests")
        delay = self.token_delay
        if delay > 0:
            time.sleep(delay)
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            logger.debug("token endpoint: emulated failure %d", fault.status)
            return fault
        if request.content_type != _FORM:
            return _invalid_request(f"Content-Type must be {_FORM}.")
        form = request.form()
        client_id = self._authenticate_client(request, form)
        if isinstance(client_id, _Response):
            return client_id
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(form, client_id)
        if grant_type == "refresh_token":
            return self._refresh_token(form, client_id)
        if not grant_type:
            return _missing("grant_type")
        return _oauth_error(400, "unsupported_grant_type", "Grant type is not supported.")

    def _authenticate_client(self, request: _Request, form: Mapping[str, str]) -> str | _Response:
        """The client a token or revoke request speaks for, or the answer refusing it."""
        refused = _oauth_error(401, "unauthorized_client", _MISSING_AUTH)
        header = request.headers.get("authorization")
        if header:
            credentials = _basic_credentials(header)
            if credentials is None:
                return refused
            client_id, secret = credentials
            expected = self._clients.get(client_id)
            # A public client has no secret to prove: X wants its client_id in the body.
            if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
                return refused
            if form.get("client_id", client_id) != client_id:
                return refused
            return client_id
        body_client_id = form.get("client_id")
        if not body_client_id:
            return _missing("client_id")
        if body_client_id not in self._clients or self._clients[body_client_id] is not None:
            return refused
        return body_client_id

    def _exchange_code(self, form: Mapping[str, str], client_id: str) -> _Response:
        for parameter in ("code", "redirect_uri", "code_verifier"):
            if not form.get(parameter):
                return _missing(parameter)
        verifier = form["code_verifier"]
        with self._lock:
            record = self._codes.get(form["code"])
            if (
                record is None
                or record.used
                or time.time() >= record.expires_at
                or record.client_id != client_id
                or record.redirect_uri != form["redirect_uri"]
                or not _PKCE_VALUE.fullmatch(verifier)
                or not _verifier_matches(record, verifier)
            ):
                logger.debug("token endpoint: code rejected (client %s)", client_id)
                return _invalid_request(_CODE_INVALID)
            record.used = True
            self._counts["exchanges"] += 1
            payload = self._mint(client_id, record.user_id, record.scopes)
        logger.debug("token endpoint: code exchanged (client %s)", client_id)
        return _token_response(payload)

    def _refresh_token(self, form: Mapping[str, str], client_id: str) -> _Response:
        token = form.get("refresh_token")
        if not token:
            return _missing("refresh_token")
        with self._lock:
            record = self._refresh.get(token)
            if record is None or record.spent or record.revoked or record.client_id != client_id:
                self._counts["invalid_refresh_tokens"] += 1
                if record is not None and record.spent:
                    self._counts["reused_refresh_tokens"] += 1
                    logger.debug("token endpoint: spent refresh token reused (client %s)",
                                 client_id)
                else:
                    logger.debug("token endpoint: refresh token rejected (client %s)", client_id)
                return _invalid_request(_TOKEN_INVALID)
            record.spent = True
            previous_access = self._access.get(record.access_token)
            if self.invalidate_access_on_refresh and previous_access is not None:
                previous_access.revoked = True
            self._counts["refreshes"] += 1
            payload = self._mint(record.client_id, record.user_id, record.scopes)
        logger.debug("token endpoint: refresh token rotated (client %s)", client_id)
        return _token_response(payload)

    def _revoke(self, request: _Request) -> _Response:
        if request.content_type != _FORM:
            return _invalid_request(f"Content-Type must be {_FORM}.")
        form = request.form()
        client_id = self._authenticate_client(request, form)
        if isinstance(client_id, _Response):
            return client_id
        for parameter in ("token", "token_type_hint"):
            if not form.get(parameter):
                return _missing(parameter)
        if form["token_type_hint"] not in ("access_token", "refresh_token"):
            return _invalid_request("Value passed for the token_type_hint was invalid.")
        token = form["token"]
        # As RFC 7009 says, a token that is unknown or another client's is not an error.
        with self._lock:
            refresh: Optional[_Refresh] = self._refresh.get(token)
            if refresh is not None and refresh.client_id == client_id:
                refresh.revoked = True
                token = refresh.access_token  # to be safe, its access token dies with it
            access = self._access.get(token)
            if access is not None and access.client_id == client_id:
                access.revoked = True
            self._counts["revocations"] += 1
        return _json(200, {"revoked": True})

    @_with_bearer
    def _users_me(self, request: _Request, access: _Access) -> _Response:
        if not _USERS_ME_SCOPES <= set(access.scopes):
            return _forbidden()
        with self._lock:
            user = dict(self._users[access.user_id])
            now = time.time()
            window_start, used = self._rate_windows.get(access.user_id, (now, 0))
            if now >= window_start + _RATE_WINDOW:
                window_start, used = now, 0
            used += 1
            self._rate_windows[access.user_id] = (window_start, used)
        response = _json(200, {"data": user})
        response.headers.update({
            "x-rate-limit-limit": str(_RATE_LIMIT),
            "x-rate-limit-remaining": str(max(0, _RATE_LIMIT - used)),
            "x-rate-limit-reset": str(int(window_start + _RATE_WINDOW)),
        })
        return response

    @_with_bearer
    def _create_tweet(self, request: _Request, access: _Access) -> _Response:
        if not _CREATE_TWEET_SCOPES <= set(access.scopes):
            return _forbidden()
        try:
            text = json.loads(request.body).get("text")
        except (ValueError, AttributeError):
            text = None
        if not isinstance(text, str) or not text:
            return _json(400, {
                "errors": [{"message": "Tweet text must be a non-empty string."}],
                "title": "Invalid Request",
                "detail": "One or more parameters to your request was invalid.",
                "type": "https://api.twitter.com/2/problems/invalid-request",
            }, _PROBLEM)
        with self._lock:
            posted = self._tweets.setdefault(access.user_id, set())
            if text in posted:
                return _forbidden(_DUPLICATE_TWEET)
            posted.add(text)
            self._next_tweet_id += 1
            tweet_id = str(self._next_tweet_id)
        return _json(201, {"data": {"id": tweet_id, "text": text}})

    @_with_bearer
    def _echo(self, request: _Request, access: _Access) -> _Response:
        text: Optional[str] = None
        if len(request.body) < _ECHO_TEXT_LIMIT:
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        return _json(200, {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "content_type": request.headers.get("content-type"),
            "body_length": len(request.body),
            "body_sha256": hashlib.sha256(request.body).hexdigest(),
            "body": text,
        })

    @_with_bearer
    def _forbidden_kind(self, request: _Request, access: _Access) -> _Response:
        kind = request.path[len(_FORBIDDEN_PREFIX):]
        if kind == "plain":
            return _forbidden()
        if kind == "duplicate":
            return _forbidden(_DUPLICATE_TWEET)
        if kind == "client-forbidden":
            return _json(403, _client_forbidden(access.client_id), _PROBLEM)
        if kind == "unsupported-authentication":
            return _json(403, _UNSUPPORTED_AUTHENTICATION, _PROBLEM)
        return _problem(404, "Not Found", f"No such forbidden kind: {kind}")

    def _always_unauthorized(self, request: _Request) -> _Response:
        """401 to every token, valid or not: X's intermittent 401s on valid credentials."""
        return _unauthorized()

    @_with_bearer
    def _redirect_to(self, request: _Request, access: _Access) -> _Response:
        target = request.params().get("to")
        if not target:
            return _problem(400, "Invalid Request", "Missing required parameter [to].")
        return _redirect(target)

    def _stats(self, request: _Request) -> _Response:
        return _json(200, self.stats.as_dict())

    def _reset(self, request: _Request) -> _Response:
        self.reset_stats()
        return _json(200, self.stats.as_dict())


_FORBIDDEN_PREFIX = "/2/emulator/forbidden/"
_GET = frozenset({"GET"})
_POST = frozenset({"POST"})
_ROUTES: dict[str, _Route] = {
    "/i/oauth2/authorize": _Route(XEmulator._authorize, _GET),
    "/2/oauth2/token": _Route(XEmulator._token, _POST),
    "/2/oauth2/revoke": _Route(XEmulator._revoke, _POST),
    "/2/users/me": _Route(XEmulator._users_me, _GET),
    "/2/tweets": _Route(XEmulator._create_tweet, _POST),
    "/2/emulator/echo": _Route(XEmulator._echo, None),
    _FORBIDDEN_PREFIX: _Route(XEmulator._forbidden_kind, _GET),
    "/2/emulator/redirect": _Route(XEmulator._redirect_to, _GET),
    "/2/emulator/unauthorized": _Route(XEmulator._always_unauthorized, None),
    "/emulator/stats": _Route(XEmulator._stats, _GET),
    "/emulator/reset": _Route(XEmulator._reset, _POST),
}

_UNSUPPORTED_AUTHENTICATION = {
    "title": "Unsupported Authentication",
    "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint. "
    " Supported authentication types are [OAuth 1.0a User Context, OAuth 2.0 User Context].",
    "type": "https://api.twitter.com/2/problems/unsupported-authentication",
    "status": 403,
}


def _client_forbidden(client_id: str) -> dict[str, str]:
    return {
        "client_id": client_id,
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use"
        " keys and tokens from a Twitter developer App that is attached to a Project. You can"
        " create a project via the developer portal.",
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": "https://api.twitter.com/2/problems/client-forbidden",
    }


def _verifier_matches(code: _Code, verifier: str) -> bool:
    expected = _s256(verifier) if code.method == "S256" else verifier
    return hmac.compare_digest(expected.encode(), code.challenge.encode())


def _token_response(payload: Mapping[str, Any]) -> _Response:
    response = _json(200, payload)
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


def _redirect(location: str) -> _Response:
    response = _Response(302, b"", _TEXT)
    response.headers["Location"] = location
    return response


def _with_query(uri: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    query = "&".join(filter(None, [parts.query, urllib.parse.urlencode(params)]))
    return urllib.parse.urlunsplit(parts._replace(query=query))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections when tests open dozens at once.
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], emulator: XEmulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer, or stop() cutting a connection, is no failure of ours.
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and
        # the client's delayed ACK hold the body back ~40 ms on every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(_problem(400, "Bad Request", "Malformed request body framing."))
            return
        parts = urllib.parse.urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.emulator._handle(request)
        except Exception:
            logger.exception("X emulator failed on %s %s", self.command, parts.path)
            response = _problem(500, "Internal Server Error", "The emulator failed.")
        self._write(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: List[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537).strip():
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _write(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.trickle <= 0:
            self.wfile.write(response.body)
            return
        self.wfile.flush()
        for index in range(len(response.body)):
            time.sleep(response.trickle)
            try:
                self.wfile.write(response.body[index:index + 1])
                self.wfile.flush()
            except OSError:  # the client gave up, or the emulator stopped
                self.close_connection = True
                return

    # Request lines are logged without their query: it may carry codes or tokens.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urllib.parse.urlsplit(getattr(self, "path", "")).path
        logger.debug("%s %s -> %s", getattr(self, "command", "-"), path, code)

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("malformed request from %s", self.address_string())

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s", format % args)
