"""``refresher status``, ``refresher refresh`` and ``refresher logout``: the stored accounts.

``status`` shows them (never a token: a short fingerprint of it); ``refresh`` refreshes one
now, coordinated with every process sharing the store; ``logout`` revokes one at X and
removes it from the store.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from ..errors import RevokeError
from ..session import RefreshingSession
from ..settings import describe_store, resolve_setting
from ..token import fingerprint
from .common import (
    LOCK_TIMEOUT,
    Failure,
    account_for,
    client_id_for,
    duration,
    expiry,
    revoke_pair,
    seconds_left,
    store_for,
)
from .secrets import read_client_secret

__all__ = ["run_logout", "run_refresh", "run_status"]


def run_status(args: argparse.Namespace) -> int:
    """``refresher status [--json]``: a table (or JSON) of the store's accounts."""
    store = store_for(args)
    where = describe_store(store)
    names = [account_for(store, args)] if args.account else store.accounts()
    rows: list[dict[str, Any]] = []
    now = time.time()
    for name in names:
        token = store.load(name) or {}
        meta = store.load_metadata(name)
        # A hand-edited token (an ISO date for expires_at...) shows as such: one row, not
        # the end of the listing.
        left, invalid = seconds_left(token, now)
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
    table: list[Sequence[str]] = [
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
            expires = f"in {duration(left)}" if left > 0 else f"expired {duration(left)} ago"
        table.append((
            row["account"],
            f"@{row['user']}" if row["user"] else "-",
            " ".join(row["scopes"]) or "-",
            expires,
            "-" if row["last_refresh"] is None else f"{duration(now - row['last_refresh'])} ago",
            row["fingerprint"] + ("" if row["refreshable"] else " (no refresh token)"),
        ))
    widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = (str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
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


def run_refresh(args: argparse.Namespace) -> int:
    """``refresher refresh``: refresh the account's token now, under the store's lock."""
    store = store_for(args)
    account = account_for(store, args)
    meta = store.load_metadata(account)
    client_id = client_id_for(args, meta)
    secret = read_client_secret(args.client_secret, needed=bool(meta.get("confidential")),
                                client_id=client_id)
    session = RefreshingSession(
        client_id, client_secret=secret, store=store, account=account,
        token_url=resolve_setting("token_url", args.token_url, meta) or "",
        api_base_url=resolve_setting("api_url", args.api_url, meta) or "",
        lock_timeout=LOCK_TIMEOUT,
    )
    try:
        token = session.refresh()
    finally:
        session.close()
    user = f" (@{meta['username']})" if meta.get("username") else ""
    print(f"Refreshed account {account!r}{user}: access token "
          f"{fingerprint(token.get('access_token'))} expires {expiry(token)}.")
    return 0


def run_logout(args: argparse.Namespace) -> int:
    """``refresher logout [--forget-only]``: revoke at X, then remove from the store."""
    store = store_for(args)
    where = describe_store(store)
    account = account_for(store, args)
    meta = store.load_metadata(account)
    if args.forget_only:
        store.delete(account)
        print(f"Removed account {account!r} from {where} (not revoked at X).")
        return 0
    client_id = client_id_for(args, meta)
    secret = read_client_secret(args.client_secret, needed=bool(meta.get("confidential")),
                                client_id=client_id)
    revoke_url = resolve_setting("revoke_url", args.revoke_url, meta) or ""
    # Under the account's lock, so no sibling refreshes it between the revoke and the delete.
    with store.lock(account, timeout=LOCK_TIMEOUT):
        token = store.load(account) or {}
        try:
            note = revoke_pair(token, client_id=client_id, client_secret=secret,
                               token_url=resolve_setting("token_url", args.token_url, meta) or "",
                               revoke_url=revoke_url)
        except RevokeError as exc:
            raise Failure(
                f"{exc}; account {account!r} is kept in the store. Try again later, or remove "
                f"it without revoking: refresher logout --account {account} --forget-only"
            ) from None
        store.delete(account)
    user = f" (@{meta['username']})" if meta.get("username") else ""
    print(f"Logged out account {account!r}{user}: revoked at {revoke_url} and removed "
          f"from {where}{note}.")
    return 0

