"""``refresher login``: the PKCE login in the browser, then who logged in, then the save.

The token goes into the store under the X username (or ``--account``), with the client id
and endpoints beside it (never the secret). A previous pair of the account is replaced and,
unless ``--revoke-previous`` says so and it is safe, not revoked.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

import requests
from oauthlib.oauth2 import OAuth2Error

from .._constants import DEFAULT_SCOPES
from .._transport import require_secure_transport
from ..errors import RefresherError
from ..login import LoginFlow
from ..settings import describe_store, resolve_setting, wanted_account
from ..token import Token, fingerprint
from .common import (
    Failure,
    check_urls,
    client_id_for,
    expiry,
    load_token,
    revoke_pair,
    store_for,
)
from .secrets import read_client_secret

__all__ = ["run_login"]

# The longest the login's /2/users/me probe waits for its answer (less when the login's
# --timeout has less left).
_PROBE_TIMEOUT = 30.0
# When a login nobody came back to says what to check (half the --timeout, if shorter).
_REMIND_AFTER = 20.0


def run_login(args: argparse.Namespace) -> int:
    """``refresher login``: log in, name the account, save it; the exit status."""
    store = store_for(args, create=True)
    where = describe_store(store)
    # An empty --account is refused by the parser; an empty REFRESHER_ACCOUNT is unset.
    wanted = wanted_account(args.account)
    recorded = store.load_metadata(wanted) if wanted else {}
    if wanted:  # before the browser: an encrypted account needs its key to be replaced
        load_token(store, wanted)
    # A new login chooses its client and server: REFRESHER_* outrank the previous record.
    client_id = client_id_for(args, recorded, new_login=True)
    urls = {name: resolve_setting(name, getattr(args, name, None), recorded, new_login=True)
            or "" for name in ("authorize_url", "token_url", "api_url", "revoke_url",
                               "redirect_uri")}
    # Before the secret's prompt and the browser: a plain-http URL would fail after both.
    check_urls({name: url for name, url in urls.items() if name != "redirect_uri"})
    same_client = recorded.get("client_id") == client_id
    secret = read_client_secret(args.client_secret,
                                needed=same_client and bool(recorded.get("confidential")),
                                client_id=client_id)
    scopes = _scopes(args.scope) or (recorded.get("scopes") if same_client else None) \
        or list(DEFAULT_SCOPES)
    if "offline.access" not in scopes:
        print("refresher: warning: without the offline.access scope X gives no refresh token: "
              "the login lasts until the access token expires", file=sys.stderr)

    flow = LoginFlow(client_id, secret, redirect_uri=urls["redirect_uri"], scopes=scopes,
                     authorize_url=urls["authorize_url"], token_url=urls["token_url"],
                     api_url=urls["api_url"], revoke_url=urls["revoke_url"])
    # --timeout bounds the whole login from here (the secret prompt is behind us): the
    # browser and the code exchange, then the /2/users/me probe and any revoke, each given
    # only what is left.
    clock = _Deadline(args.timeout)
    token = flow.run_local_server(
        port=args.port, open_browser=not args.no_browser, timeout=args.timeout,
        out=sys.stderr, paste_from=sys.stdin if args.no_browser else None,
        remind_after=min(_REMIND_AFTER, args.timeout / 2),
    )
    user = _who(flow, token, named=bool(wanted), clock=clock)
    account = wanted or user["username"]

    previous = load_token(store, account)
    previous_meta = store.load_metadata(account) if previous else {}
    session = flow.session(token, store=store, account=account)
    token = session.token
    session.close()
    # The flow recorded the client id and URLs beside the pair; add who logged in.
    store.save_metadata(account, {**store.load_metadata(account), "user_id": user.get("id"),
                                  "username": user.get("username"), "name": user.get("name")})

    who = f"@{user['username']}" if user.get("username") else "an unnamed user"
    print(f"Logged in as {who} ({user.get('name') or '?'}, id {user.get('id') or '?'}).")
    print(f"Saved as account {account!r} in {where}.")
    refreshable = "refreshed automatically" if token.get("refresh_token") else \
        "NOT refreshable (no offline.access)"
    print(f"Access token {fingerprint(token.get('access_token'))} expires "
          f"{expiry(token)}; {refreshable}.")
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


def _scopes(values: list[str] | None) -> list[str]:
    scopes: list[str] = []
    for value in values or ():
        for scope in value.replace(",", " ").split():
            if scope not in scopes:
                scopes.append(scope)
    return scopes


def _who(flow: LoginFlow, token: Token, *, named: bool, clock: _Deadline) -> dict[str, Any]:
    """GET /2/users/me with the new token; without --account, the answer names the account.

    A plain request with the new access token, bounded by what is left of --timeout: no
    refresh here (one would spend the refresh token about to be saved).
    """
    url = f"{flow.api_url}/2/users/me"
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
        raise Failure(
            f"logged in, but {url} failed ({why}), so the account cannot be named and "
            f"nothing was saved: {fix} pass --account NAME"
        ) from None


def _replace_previous(previous: Token, meta: Mapping[str, Any], user: Mapping[str, Any], *,
                      client_id: str, secret: str | None, urls: Mapping[str, str],
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
        note = revoke_pair(previous, client_id=old_client, client_secret=old_secret,
                           token_url=str(meta.get("token_url") or urls["token_url"]),
                           revoke_url=str(meta.get("revoke_url") or urls["revoke_url"]),
                           timeout=left)
    except (RefresherError, OAuth2Error) as exc:
        return f"{replaced} (could not revoke it: {exc})."
    whose = "another client" if old_client != client_id else "another X user"
    return f"{replaced}, and revoked it (it belonged to {whose}){note}."

