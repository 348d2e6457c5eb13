"""The ``refresher`` command line: log in, look, refresh, log out, and try it all offline.

``refresher login`` runs the PKCE login in the browser and saves the token (and, beside
it, the client id and endpoints: never the secret) in the token store; ``status``,
``refresh`` and ``logout`` then need none of them repeated. ``emulator`` serves the local
X emulator; ``demo`` runs the whole story against it. Every setting can also come from a
``REFRESHER_*`` environment variable.

Exit status: 0 done, 1 failed (X refused, store corrupt, port in use...), 2 bad usage
or configuration (unknown account, missing client id, a name or URL refresher cannot use:
a :class:`~refresher.ConfigurationError` or another ``ValueError``), 130 interrupted. One
line on stderr says what to do, whatever went wrong; ``--debug`` adds the traceback and
refresher's debug log.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import requests
from oauthlib.oauth2 import OAuth2Error

from ._constants import DEFAULT_DEADLINE, DEFAULT_SCOPES, DEFAULT_TIMEOUT
from ._transport import require_secure_transport
from .endpoint import TokenEndpoint
from .errors import ConfigurationError, RefresherError, RefreshError
from .login import LoginFlow
from .session import RefreshingSession
from .settings import (
    choose_account,
    default_store_location,
    describe_store,
    resolve_setting,
    wanted_account,
)
from .stores import TokenStore, open_store
from .token import Token, fingerprint

__all__ = ["main"]

log = logging.getLogger(__name__)

_PROMPT = object()  # --client-secret given without a value: ask for it
_LOCK_TIMEOUT = 30.0
# The longest the login's /2/users/me probe waits for its answer (less when the login's
# --timeout has less left).
_PROBE_TIMEOUT = 30.0


class _UsageError(Exception):
    """The command line (or its environment) is wrong: exit status 2."""


class _Failure(Exception):
    """Something failed that is not a RefresherError: exit status 1."""


# -- entry point -------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``refresher`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so it can be called from Python:

    >>> main(["status", "--json"])  # doctest: +SKIP
    0
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (status 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug)
    try:
        status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        print("\nrefresher: interrupted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        return _report(exc, debug, 2)
    except (ConfigurationError, ValueError) as exc:  # a name, setting or token refused
        return _report(exc, debug, 2)
    except (RefresherError, _Failure, OAuth2Error, OSError) as exc:
        return _report(exc, debug, 1)
    except Exception as exc:  # a bug: still one line, and the traceback with --debug
        return _report(exc, debug, 1, unexpected=True)


def _report(exc: BaseException, debug: bool, status: int, *, unexpected: bool = False) -> int:
    if debug:
        traceback.print_exc()
    if unexpected:
        # Not one of refresher's own messages, which are written never to hold a token:
        # only the exception's type is shown.
        message = (f"unexpected {type(exc).__name__}; run the command again with --debug "
                   "for the traceback, and report it")
    elif isinstance(exc, OSError) and not isinstance(exc, RefresherError):
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    elif isinstance(exc, OAuth2Error):
        message = exc.description or str(exc)
    else:
        message = str(exc) or type(exc).__name__
    # One line, whatever the message holds.
    message = " ".join(message.split())
    print(f"refresher: error: {message}", file=sys.stderr)
    return status


_handler: Optional[logging.Handler] = None


def _configure_logging(debug: bool) -> None:
    global _handler
    logger = logging.getLogger("refresher")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(
        "refresher: %(levelname)s: %(name)s: %(message)s" if debug
        else "refresher: %(levelname)s: %(message)s"))
    logger.addHandler(_handler)
    # The command prints its own warnings; the library's (retries...) would make more than
    # the one line an error deserves.
    logger.setLevel(logging.DEBUG if debug else logging.ERROR)


# -- the parser --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refresher",
        description="Keep OAuth 2.0 user tokens for the X API v2 alive: log in, look at, "
                    "refresh and revoke stored tokens, or run the offline demo.",
        epilog="Settings also come from REFRESHER_CLIENT_ID, REFRESHER_CLIENT_SECRET, "
               "REFRESHER_STORE, REFRESHER_ACCOUNT, REFRESHER_TOKEN_URL, REFRESHER_API_URL, "
               "REFRESHER_AUTHORIZE_URL, REFRESHER_REVOKE_URL. Try: refresher demo",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and refresher's debug log (never a token)")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"refresher {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and refresher's debug log")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", metavar="PATH",
                       help="token store: a JSON file or a redis:// URL (default: "
                            "$REFRESHER_STORE, else ~/.config/refresher/tokens.json)")
    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--account", metavar="NAME", type=_account_name,
                         help="account in the store ($REFRESHER_ACCOUNT; default: the only "
                              "one, or for login the X username)")
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--client-id", metavar="ID",
                        help="your X app's OAuth 2.0 Client ID ($REFRESHER_CLIENT_ID)")
    client.add_argument("--client-secret", metavar="SECRET", nargs="?", const=_PROMPT,
                        help="for a confidential client: '-' reads it from stdin, no value "
                             "prompts for it ($REFRESHER_CLIENT_SECRET); never echoed")

    def url(parser_: argparse.ArgumentParser, name: str, what: str) -> None:
        env = "REFRESHER_" + name.upper().replace("-", "_")
        parser_.add_argument(f"--{name}", metavar="URL", help=f"{what} (${env})")

    login = commands.add_parser(
        "login", parents=[common, client, store, account],
        help="log in to X in the browser and save the token",
        description="Log in with OAuth 2.0 (PKCE) in the browser, ask X who logged in, and "
                    "save the token under --account (default: the X username). Logging in "
                    "again over an account replaces its token, and does not revoke the old "
                    "one: X's revoke may end every login of the same user in the same app, "
                    "the one just saved included (see --revoke-previous). --timeout bounds "
                    "the whole login: the browser, the code exchange and the /2/users/me "
                    "question.")
    login.add_argument("--scope", action="append", metavar="SCOPE",
                       help=f"a scope to ask for, repeatable (default: {' '.join(DEFAULT_SCOPES)})")
    login.add_argument("--port", type=int, metavar="PORT",
                       help="port of the local callback server (default: the redirect URI's, "
                            "8765; 0: any free port)")
    login.add_argument("--redirect-uri", metavar="URL",
                       help="the callback URL registered with your X app "
                            "(default http://127.0.0.1:8765/callback; $REFRESHER_REDIRECT_URI)")
    login.add_argument("--no-browser", action="store_true",
                       help="do not open a browser: print the URL, and accept the redirected "
                            "URL pasted on stdin (for SSH sessions and containers)")
    login.add_argument("--timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                       help="give up when the whole login (browser, code exchange, "
                            "/2/users/me) has taken this long (default 300)")
    login.add_argument("--revoke-previous", action="store_true",
                       help="after saving the new token, revoke the account's previous one, "
                            "but only when it belongs to another X user or another client id. "
                            "One of the same user and client is never revoked: X may end "
                            "every login of that user in that app on a revoke, the new one "
                            "included")
    for name, what in (("authorize-url", "X's authorize page"), ("token-url", "token endpoint"),
                       ("api-url", "API base URL"), ("revoke-url", "revoke endpoint")):
        url(login, name, what)
    login.set_defaults(run=_login)

    status = commands.add_parser(
        "status", parents=[common, store, account],
        help="list the stored accounts (never a token)",
        description="A table of the store's accounts: user, scopes, expiry, last refresh and "
                    "a short fingerprint of the access token. Never the token itself.")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(run=_status)

    refresh = commands.add_parser(
        "refresh", parents=[common, client, store, account],
        help="refresh an account's token now",
        description="Refresh now, coordinated with every process sharing the store.")
    url(refresh, "token-url", "token endpoint")
    url(refresh, "api-url", "API base URL")
    refresh.set_defaults(run=_refresh)

    logout = commands.add_parser(
        "logout", parents=[common, client, store, account],
        help="revoke an account's token at X and remove it from the store",
        description="Revoke the account's refresh and access tokens at X, then remove the "
                    "account from the store. If X cannot be reached the account is kept.")
    logout.add_argument("--forget-only", action="store_true",
                        help="remove the account from the store without revoking at X")
    url(logout, "token-url", "token endpoint")
    url(logout, "revoke-url", "revoke endpoint")
    logout.set_defaults(run=_logout)

    emulator = commands.add_parser(
        "emulator", parents=[common],
        help="serve the local X emulator until Ctrl-C",
        description="Serve an emulator of X's OAuth 2.0 and API v2 endpoints on 127.0.0.1, "
                    "and print the settings that point refresher (or your script) at it.")
    emulator.add_argument("--port", type=int, default=8000,
                          help="port on 127.0.0.1 (default 8000; 0: any free port)")
    emulator.add_argument("--access-ttl", type=_positive_float, default=7200.0,
                          metavar="SECONDS", help="access token lifetime (default 7200, X's)")
    emulator.set_defaults(run=_emulator)

    demo = commands.add_parser(
        "demo", parents=[common],
        help="the whole story offline: log in, then many processes share one token",
        description="Start the X emulator, log in through the real login code (the emulator "
                    "approves), then run PROCESSES worker processes of THREADS threads each "
                    "calling the API through one shared JSON token store while access tokens "
                    "expire every few seconds. Exit 0 only when no request failed and no "
                    "refresh token was spent twice.")
    demo.add_argument("--processes", type=_positive_int, default=4, help="default 4")
    demo.add_argument("--threads", type=_positive_int, default=3, help="per process; default 3")
    demo.add_argument("--seconds", type=_positive_float, default=10.0,
                      help="how long the workers run; default 10")
    demo.add_argument("--access-ttl", type=_positive_float, default=2.0, metavar="SECONDS",
                      help="access token lifetime; default 2")
    demo.add_argument("--store", metavar="PATH",
                      help="token store to use (default: a JSON file in a temporary folder)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(run=_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _account_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty: name an account, or leave --account out to use "
            "$REFRESHER_ACCOUNT or the store's only account"
        )
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


# -- shared pieces -----------------------------------------------------------------------------


def _open_store(args: argparse.Namespace) -> TokenStore:
    return open_store(args.store or default_store_location())


def _pick_account(store: TokenStore, args: argparse.Namespace) -> str:
    try:
        return choose_account(store, args.account)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _client_id(args: argparse.Namespace, metadata: Mapping[str, Any]) -> str:
    client_id = resolve_setting("client_id", args.client_id, metadata)
    if not client_id:
        raise _UsageError(
            "missing client id: pass --client-id or set REFRESHER_CLIENT_ID (the OAuth 2.0 "
            "Client ID on your app's Keys and tokens page in the X developer portal)"
        )
    return client_id


def _client_secret(args: argparse.Namespace, *, needed: bool, client_id: str) -> Optional[str]:
    given = args.client_secret
    secret: Optional[str]
    if given is _PROMPT:
        secret = getpass.getpass(f"Client secret of {client_id}: ")
    elif given == "-":
        secret = sys.stdin.readline().strip()
        if not secret:
            raise _UsageError("--client-secret -: no secret on stdin (pipe it in, one line)")
    elif given:
        secret = given
        print("refresher: warning: a secret on the command line is visible to `ps` and kept "
              "in shell history; prefer --client-secret - (stdin), --client-secret (prompt) "
              "or REFRESHER_CLIENT_SECRET", file=sys.stderr)
    else:
        secret = os.environ.get("REFRESHER_CLIENT_SECRET") or None
    if needed and not secret:
        if sys.stdin.isatty():
            secret = getpass.getpass(f"Client secret of {client_id}: ")
        if not secret:
            raise _UsageError(
                f"{client_id} is a confidential client: give its secret with --client-secret - "
                "(stdin), --client-secret (prompt) or REFRESHER_CLIENT_SECRET"
            )
    return secret or None


def _duration(seconds: float) -> str:
    whole = int(round(abs(seconds)))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def _seconds_left(token: Mapping[str, Any], now: Optional[float] = None) -> Tuple[
        Optional[float], bool]:
    """Seconds until the access token expires (``None``: unknown), and whether the stored
    ``expires_at`` is there but not a number (an ISO date written by hand, say)."""
    raw = token.get("expires_at")
    if raw is None:
        return None, False
    try:
        expires_at = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        expires_at = math.nan
    if not math.isfinite(expires_at):
        return None, True
    return expires_at - (time.time() if now is None else now), False


def _expiry(token: Mapping[str, Any]) -> str:
    left, invalid = _seconds_left(token)
    if left is None:
        return "at an invalid time (expires_at is not a number)" if invalid else "unknown"
    return f"in {_duration(left)}" if left > 0 else f"expired {_duration(left)} ago"


def _revoke_pair(token: Mapping[str, Any], *, client_id: str, client_secret: Optional[str],
                 token_url: str, revoke_url: str, timeout: Optional[float] = None) -> str:
    """Revoke the refresh token, then the access token; RefreshError if the first fails.

    ``timeout`` bounds both revokes together (default: the endpoint's own bounds). Returns
    "" or a note saying the access token could not be revoked (it expires soon).
    """
    budget = DEFAULT_DEADLINE if timeout is None else min(timeout, DEFAULT_DEADLINE)
    give_up_at = time.monotonic() + budget
    endpoint = TokenEndpoint(token_url, client_id, client_secret,
                             timeout=min(DEFAULT_TIMEOUT, budget), deadline=budget)
    try:
        if token.get("refresh_token"):
            endpoint.revoke(revoke_url, str(token["refresh_token"]), "refresh_token")
        if token.get("access_token"):
            endpoint.deadline = max(0.1, give_up_at - time.monotonic())
            endpoint.timeout = min(endpoint.timeout, endpoint.deadline)
            try:
                endpoint.revoke(revoke_url, str(token["access_token"]), "access_token")
            except RefreshError as exc:
                return f" (the access token could not be revoked: {exc}; it expires by itself)"
        return ""
    finally:
        endpoint.close()


# -- login -------------------------------------------------------------------------------------


def _login(args: argparse.Namespace) -> int:
    store = _open_store(args)
    where = describe_store(store)
    # An empty --account is refused by the parser; an empty REFRESHER_ACCOUNT is unset.
    wanted = wanted_account(args.account)
    recorded = store.load_metadata(wanted) if wanted else {}
    client_id = _client_id(args, recorded)
    same_client = recorded.get("client_id") == client_id
    secret = _client_secret(args, needed=same_client and bool(recorded.get("confidential")),
                            client_id=client_id)
    scopes = _scopes(args.scope) or (recorded.get("scopes") if same_client else None) \
        or list(DEFAULT_SCOPES)
    urls = {name: resolve_setting(name, getattr(args, name, None), recorded) or ""
            for name in ("authorize_url", "token_url", "api_url", "revoke_url", "redirect_uri")}
    if "offline.access" not in scopes:
        print("refresher: warning: without the offline.access scope X gives no refresh token: "
              "the login lasts until the access token expires", file=sys.stderr)

    flow = LoginFlow(client_id, secret, redirect_uri=urls["redirect_uri"], scopes=scopes,
                     authorize_url=urls["authorize_url"], token_url=urls["token_url"],
                     api_base_url=urls["api_url"])
    # --timeout bounds the whole login from here (the secret prompt is behind us): the
    # browser and the code exchange, then the /2/users/me probe and any revoke, each given
    # only what is left.
    clock = _Deadline(args.timeout)
    token = flow.run_local_server(
        port=args.port, open_browser=not args.no_browser, timeout=args.timeout,
        out=sys.stderr, paste_from=sys.stdin if args.no_browser else None,
    )
    user = _who(flow, token, named=bool(wanted), clock=clock)
    account = wanted or user["username"]

    previous = store.load(account)
    previous_meta = store.load_metadata(account) if previous else {}
    session = flow.session(token, store=store, account=account)
    token = session.token
    session.close()
    store.save_metadata(account, {
        "client_id": client_id,
        "confidential": secret is not None,
        "authorize_url": urls["authorize_url"],
        "token_url": urls["token_url"],
        "api_url": urls["api_url"],
        "revoke_url": urls["revoke_url"],
        "redirect_uri": flow.redirect_uri,
        "scopes": str(token.get("scope") or " ".join(scopes)).split(),
        "user_id": user.get("id"),
        "username": user.get("username"),
        "name": user.get("name"),
        "logged_in_at": time.time(),
    })

    who = f"@{user['username']}" if user.get("username") else "an unnamed user"
    print(f"Logged in as {who} ({user.get('name') or '?'}, id {user.get('id') or '?'}).")
    print(f"Saved as account {account!r} in {where}.")
    refreshable = "refreshed automatically" if token.get("refresh_token") else \
        "NOT refreshable (no offline.access)"
    print(f"Access token {fingerprint(token.get('access_token'))} expires "
          f"{_expiry(token)}; {refreshable}.")
    if previous and previous.get("refresh_token") != token.get("refresh_token"):
        print(_replace_previous(previous, previous_meta, user, client_id=client_id,
                                secret=secret, urls=urls, revoke=args.revoke_previous,
                                clock=clock))
    return 0


class _Deadline:
    """The login's --timeout, as the time left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return self._end - time.monotonic()


def _scopes(values: Optional[List[str]]) -> List[str]:
    scopes: List[str] = []
    for value in values or ():
        for scope in value.replace(",", " ").split():
            if scope not in scopes:
                scopes.append(scope)
    return scopes


def _who(flow: LoginFlow, token: Token, *, named: bool, clock: _Deadline) -> Dict[str, Any]:
    """GET /2/users/me with the new token; without --account, the answer names the account.

    A plain request with the new access token, bounded by what is left of --timeout: no
    refresh here (one would spend the refresh token about to be saved).
    """
    url = f"{flow.api_base_url.rstrip('/')}/2/users/me"
    left = clock.left()
    try:
        if left <= 0:
            raise requests.Timeout()
        require_secure_transport(url)
        with requests.Session() as http:
            response = http.get(
                url, timeout=min(_PROBE_TIMEOUT, left), allow_redirects=False,
                headers={"Authorization": f"Bearer {token.get('access_token')}",
                         "Accept": "application/json"})
            response.raise_for_status()
            data = response.json().get("data")
        if not isinstance(data, dict):
            raise ValueError("no data object")
        return data
    except (requests.RequestException, ValueError, AttributeError) as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, requests.Timeout):
            why = (f"no answer within {max(0.0, min(_PROBE_TIMEOUT, left)):.1f} s, what was "
                   f"left of the login's --timeout of {clock.seconds:g} s")
            fix = "run the login again with a longer --timeout, or"
        else:
            why = f"HTTP {status}" if status else type(exc).__name__
            fix = "check the scopes include tweet.read and users.read, or"
        if named:
            print(f"refresher: warning: logged in, but {url} failed ({why}): saving the "
                  "account without its X username", file=sys.stderr)
            return {}
        raise _Failure(
            f"logged in, but {url} failed ({why}), so the account cannot be named and "
            f"nothing was saved: {fix} pass --account NAME"
        ) from None


def _replace_previous(previous: Token, meta: Mapping[str, Any], user: Mapping[str, Any], *,
                      client_id: str, secret: Optional[str], urls: Mapping[str, str],
                      revoke: bool, clock: _Deadline) -> str:
    """Say what became of the account's previous pair; revoke it only when that is safe.

    X's revoke may end every grant of the same user in the same app (client id), not just
    the token sent: revoking the previous pair of that user and client would kill the pair
    just saved. So it is revoked only with --revoke-previous, and only when it belongs to
    another client id, or to another user of the same client.
    """
    replaced = "Replaced the account's previous token"
    old_client = str(meta.get("client_id") or client_id)
    old_user, new_user = meta.get("user_id"), user.get("id")
    if not revoke:
        return (f"{replaced} (not revoked: revoking it may also end this login, when it "
                "belongs to the same X user and client; --revoke-previous revokes it when "
                "it belongs to another user or client).")
    if old_client == client_id:
        if not old_user or not new_user:
            return (f"{replaced} (not revoked, despite --revoke-previous: it is not known "
                    "whether it belongs to the same X user, and if it does, revoking it may "
                    "also end this login).")
        if str(old_user) == str(new_user):
            return (f"{replaced} (not revoked, despite --revoke-previous: it belongs to the "
                    f"same X user (id {new_user}) and client ({client_id}), and X may end "
                    "this login too when it is revoked. It stays valid at X until it expires "
                    "unused).")
    old_secret = secret if old_client == client_id else None
    if meta.get("confidential") and old_secret is None:
        return (f"{replaced} (not revoked: it belongs to the confidential client "
                f"{old_client}, whose secret was not given).")
    left = clock.left()
    if left <= 0:
        return (f"{replaced} (not revoked: the login's --timeout of {clock.seconds:g} s ran "
                "out first).")
    try:
        note = _revoke_pair(previous, client_id=old_client, client_secret=old_secret,
                            token_url=str(meta.get("token_url") or urls["token_url"]),
                            revoke_url=str(meta.get("revoke_url") or urls["revoke_url"]),
                            timeout=left)
    except (RefresherError, OAuth2Error) as exc:
        return f"{replaced} (could not revoke it: {exc})."
    whose = "another client" if old_client != client_id else "another X user"
    return f"{replaced}, and revoked it (it belonged to {whose}){note}."


# -- status, refresh, logout -------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    store = _open_store(args)
    where = describe_store(store)
    names = [_pick_account(store, args)] if args.account else store.accounts()
    rows: List[Dict[str, Any]] = []
    now = time.time()
    for name in names:
        token = store.load(name) or {}
        meta = store.load_metadata(name)
        # A hand-edited token (an ISO date for expires_at...) shows as such: one row, not
        # the end of the listing.
        left, invalid = _seconds_left(token, now)
        updated = meta.get("updated_at")
        access = token.get("access_token")
        scope = token.get("scope")
        rows.append({
            "account": name,
            "user": meta.get("username"),
            "user_id": meta.get("user_id"),
            "client_id": meta.get("client_id"),
            "scopes": (" ".join(map(str, scope)) if isinstance(scope, (list, tuple))
                       else str(scope or "")).split(),
            "expires_in": None if left is None else round(left, 1),
            "expires_at": None if invalid else token.get("expires_at"),
            "expiry_invalid": invalid,
            "refreshable": bool(token.get("refresh_token")),
            "needs_login": bool(store.needs_login(name, token)),
            "last_refresh": updated if _is_number(updated) else None,
            "fingerprint": fingerprint(str(access) if access else None),
        })
    if args.json:
        print(json.dumps({"store": where, "accounts": rows}, indent=2))
        return 0
    if not rows:
        print(f"No accounts in {where}. Log in with: refresher login --client-id YOUR_CLIENT_ID")
        return 0
    print(f"Store: {where}")
    table: List[Sequence[str]] = [
        ("ACCOUNT", "USER", "SCOPES", "EXPIRES", "LAST REFRESH", "FINGERPRINT")]
    for row in rows:
        left = row["expires_in"]
        if row["needs_login"]:
            expires = "needs login"
        elif row["expiry_invalid"]:
            expires = "invalid"
        elif left is None:
            expires = "unknown"
        else:
            expires = f"in {_duration(left)}" if left > 0 else f"expired {_duration(left)} ago"
        table.append((
            row["account"],
            f"@{row['user']}" if row["user"] else "-",
            " ".join(row["scopes"]) or "-",
            expires,
            "-" if row["last_refresh"] is None else f"{_duration(now - row['last_refresh'])} ago",
            row["fingerprint"] + ("" if row["refreshable"] else " (no refresh token)"),
        ))
    widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
    for row in rows:
        if row["needs_login"]:
            print(f"Account {row['account']!r}: X refused its refresh token (spent or "
                  f"revoked); log in again: refresher login --account {row['account']}")
        elif row["expiry_invalid"]:
            print(f"Account {row['account']!r}: its expires_at is not a number of epoch "
                  "seconds (edited by hand?); the expiry is unknown")
    return 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _refresh(args: argparse.Namespace) -> int:
    store = _open_store(args)
    account = _pick_account(store, args)
    meta = store.load_metadata(account)
    client_id = _client_id(args, meta)
    secret = _client_secret(args, needed=bool(meta.get("confidential")), client_id=client_id)
    session = RefreshingSession(
        client_id, client_secret=secret, store=store, account=account,
        token_url=resolve_setting("token_url", args.token_url, meta) or "",
        api_base_url=resolve_setting("api_url", args.api_url, meta) or "",
        lock_timeout=_LOCK_TIMEOUT,
    )
    try:
        token = session.refresh()
    finally:
        session.close()
    user = f" (@{meta['username']})" if meta.get("username") else ""
    print(f"Refreshed account {account!r}{user}: access token "
          f"{fingerprint(token.get('access_token'))} expires {_expiry(token)}.")
    return 0


def _logout(args: argparse.Namespace) -> int:
    store = _open_store(args)
    where = describe_store(store)
    account = _pick_account(store, args)
    meta = store.load_metadata(account)
    if args.forget_only:
        store.delete(account)
        print(f"Removed account {account!r} from {where} (not revoked at X).")
        return 0
    client_id = _client_id(args, meta)
    secret = _client_secret(args, needed=bool(meta.get("confidential")), client_id=client_id)
    revoke_url = resolve_setting("revoke_url", args.revoke_url, meta) or ""
    # Under the account's lock, so no sibling refreshes it between the revoke and the delete.
    with store.lock(account, timeout=_LOCK_TIMEOUT):
        token = store.load(account) or {}
        try:
            note = _revoke_pair(token, client_id=client_id, client_secret=secret,
                                token_url=resolve_setting("token_url", args.token_url, meta) or "",
                                revoke_url=revoke_url)
        except RefreshError as exc:
            raise _Failure(
                f"{exc}; account {account!r} is kept in the store. Try again later, or remove "
                f"it without revoking: refresher logout --account {account} --forget-only"
            ) from None
        store.delete(account)
    user = f" (@{meta['username']})" if meta.get("username") else ""
    print(f"Logged out account {account!r}{user}: revoked at {revoke_url} and removed "
          f"from {where}{note}.")
    return 0


# -- emulator and demo -------------------------------------------------------------------------


def _emulator(args: argparse.Namespace) -> int:
    from .testing.emulator import (
        DEFAULT_CLIENT_ID,
        DEFAULT_CONFIDENTIAL_CLIENT_ID,
        DEFAULT_USER,
        XEmulator,
    )

    emulator = XEmulator(host="127.0.0.1", port=args.port, access_ttl=args.access_ttl)
    try:
        emulator.start()
    except OSError as exc:
        raise _Failure(
            f"cannot serve the emulator on 127.0.0.1:{args.port}: {exc.strerror}; choose "
            "another port with --port (0: any free port)"
        ) from None
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        lines = [
            f"X emulator serving on {emulator.url} (access tokens live {args.access_ttl:g} s; "
            f"every login is approved at once as @{DEFAULT_USER['username']}).",
            "",
            "Point refresher at it, in another shell:",
            "",
            f"    export REFRESHER_CLIENT_ID={DEFAULT_CLIENT_ID}",
            f"    export REFRESHER_AUTHORIZE_URL={emulator.authorize_url}",
            f"    export REFRESHER_TOKEN_URL={emulator.token_url}",
            f"    export REFRESHER_REVOKE_URL={emulator.revoke_url}",
            f"    export REFRESHER_API_URL={emulator.api_url}",
            "    refresher login --no-browser --store /tmp/emulated-tokens.json",
            "",
            f"Public client: {DEFAULT_CLIENT_ID}. Confidential client: "
            f"{DEFAULT_CONFIDENTIAL_CLIENT_ID} (its test secret is "
            "refresher.testing.DEFAULT_CLIENT_SECRET; no secret is ever printed).",
            f"Counters: {emulator.url}/emulator/stats. Stop with Ctrl-C.",
        ]
        print("\n".join(lines), flush=True)
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    print("X emulator stopped.", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    result = run_demo(processes=args.processes, threads=args.threads, seconds=args.seconds,
                      access_ttl=args.access_ttl, store=args.store, progress=sys.stderr)
    if args.json:
        print(json.dumps(result.public()))
    else:
        print(format_table(result))
    for error in result.errors[:5]:
        print(f"refresher: worker error: {error.strip()}", file=sys.stderr)
    return 0 if result.ok else 1

