"""What the ``refresher`` commands share: their errors, the store and account they act on,
the client id, revoking a pair, and saying how long a token has left.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from .._constants import DEFAULT_DEADLINE, DEFAULT_TIMEOUT
from .._transport import require_secure_transport
from ..endpoint import TokenEndpoint
from ..errors import InsecureTransport
from ..revoke import revoke_pair as revoke
from ..settings import (
    ENVIRONMENT,
    choose_account,
    default_store_location,
    describe_store,
    resolve_setting,
)
from ..stores import TokenStore, open_store, store_folder
from ..stores.sealed import refuse_sealed
from ..token import Token

__all__ = [
    "LOCK_TIMEOUT",
    "Failure",
    "UsageError",
    "account_for",
    "check_urls",
    "client_id_for",
    "duration",
    "expiry",
    "load_token",
    "revoke_pair",
    "seconds_left",
    "store_for",
]

#: How long a command waits for an account's lock (another process refreshing it).
LOCK_TIMEOUT = 30.0


class UsageError(Exception):
    """The command line (or its environment) is wrong: exit status 2."""


class Failure(Exception):
    """Something failed that is not a :class:`~refresher.RefresherError`: exit status 1."""


def store_for(args: argparse.Namespace, *, create: bool = False) -> TokenStore:
    """The store of ``--store``, else the default one (``$REFRESHER_STORE``...).

    A store named by ``--store`` or ``$REFRESHER_STORE`` whose folder does not exist is a
    :class:`UsageError` that creates nothing (a typo must not leave folders behind), unless
    ``create`` (a login, which makes the store). The default location's folder is created
    by the first login, and reads as an empty store until then.
    """
    named = args.store or os.environ.get(ENVIRONMENT["store"])
    location = named or default_store_location()
    folder = store_folder(location) if named and not create else None
    if folder is not None and not folder.is_dir():
        raise UsageError(
            f"the folder {folder} of token store {location} does not exist: check --store "
            "(or REFRESHER_STORE), or create the store with refresher login"
        )
    return open_store(location)


def load_token(store: TokenStore, account: str) -> Token | None:
    """The account's token; :class:`~refresher.EncryptionKeyError` when it is encrypted
    and the store was opened without a key (``REFRESHER_KEY`` unset)."""
    token = store.load(account)
    refuse_sealed(token, account, describe_store(store))
    return token


def account_for(store: TokenStore, args: argparse.Namespace) -> str:
    """The account of ``--account``, else as :func:`~refresher.settings.choose_account`;
    a :class:`UsageError` for an unknown one or none chosen among several."""
    try:
        return choose_account(store, args.account)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def client_id_for(args: argparse.Namespace, metadata: Mapping[str, Any], *,
                  new_login: bool = False) -> str:
    """``--client-id``, else the one recorded (``metadata``), else ``$REFRESHER_CLIENT_ID``
    (for a ``new_login``, the variable before the record: see
    :func:`~refresher.settings.resolve_setting`)."""
    client_id = resolve_setting("client_id", args.client_id, metadata, new_login=new_login)
    if not client_id:
        raise UsageError(
            "missing client id: pass --client-id or set REFRESHER_CLIENT_ID (the OAuth 2.0 "
            "Client ID on your app's Keys and tokens page in the X developer portal)"
        )
    return client_id


def check_urls(urls: Mapping[str, str]) -> None:
    """A :class:`UsageError` with the https message for the first of ``urls`` (setting name
    to URL: ``token_url``...) that may not carry a token, before anything is sent or shown."""
    for name, url in urls.items():
        try:
            require_secure_transport(url)
        except InsecureTransport as exc:
            option = "--" + name.replace("_", "-")
            raise UsageError(f"the {name.replace('_', ' ')} ({option}, "
                             f"{ENVIRONMENT[name]} or the account's record): {exc}") from None


def revoke_pair(token: Mapping[str, Any], *, client_id: str, client_secret: str | None,
                token_url: str, revoke_url: str, timeout: float | None = None) -> str:
    """Revoke the refresh token, then the access token (:func:`refresher.revoke.revoke_pair`,
    as the library does); RevokeError if the first fails.

    ``timeout`` bounds both revokes together (default: the endpoint's own bounds). Returns
    "" or a note saying the access token could not be revoked (it expires soon).
    """
    budget = DEFAULT_DEADLINE if timeout is None else min(timeout, DEFAULT_DEADLINE)
    endpoint = TokenEndpoint(token_url, client_id, client_secret,
                             timeout=min(DEFAULT_TIMEOUT, budget), deadline=budget)
    try:
        return revoke(endpoint, revoke_url, token, timeout=budget)
    finally:
        endpoint.close()


def duration(seconds: float) -> str:
    """``seconds`` (its absolute value) as the commands show it, to two units at most.

    >>> duration(59), duration(3725), duration(-90061)
    ('59s', '1h 02m', '1d 1h')
    """
    whole = int(round(abs(seconds)))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def seconds_left(token: Mapping[str, Any], now: float | None = None) -> tuple[
        float | None, bool]:
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


def expiry(token: Mapping[str, Any]) -> str:
    """When the access token expires, for a sentence: ``in 1h 59m``, ``expired 5s ago``...

    >>> expiry({})
    'unknown'
    """
    left, invalid = seconds_left(token)
    if left is None:
        return "at an invalid time (expires_at is not a number)" if invalid else "unknown"
    return f"in {duration(left)}" if left > 0 else f"expired {duration(left)} ago"

