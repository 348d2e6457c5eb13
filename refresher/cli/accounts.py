"""``refresher status``, ``refresher refresh`` and ``refresher logout``: the stored accounts.

``status`` shows them (never a token: a short fingerprint of it); ``refresh`` refreshes one
now, or with ``--all`` every one not waiting for a login (a weekly cron job keeps idle
accounts' pairs alive), coordinated with every process sharing the store; ``logout``
revokes one at X and removes it from the store.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from oauthlib.oauth2 import OAuth2Error

from ..errors import ReauthorizationRequired, RefresherError, RevokeError
from ..refusal import Refusal, binding
from ..session import RefreshingSession
from ..settings import describe_store, resolve_setting
from ..shutdown import Terminated, check_not_stopping, in_flight
from ..stores import TokenStore
from ..token import Token, fingerprint, lasts
from .common import (
    LOCK_TIMEOUT,
    Failure,
    UsageError,
    account_for,
    check_urls,
    client_id_for,
    duration,
    expiry,
    load_token,
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
        token = load_token(store, name) or {}
        meta = store.load_metadata(name)
        # A hand-edited token (an ISO date for expires_at...) shows as such: one row, not
        # the end of the listing.
        left, invalid = seconds_left(token, now)
        updated = meta.get("updated_at")
        access = token.get("access_token")
        scope = token.get("scope")
        refusals = store.refusals(name, token)
        # Judged for the client id and token URL the account was logged in with (any, when
        # none was recorded): another client's or server's refusal does not bind them.
        sender = (_recorded(meta, "client_id"), _recorded(meta, "token_url"))
        bound = binding(refusals, *sender)
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
            "needs_login": bound is not None,
            "refused": [refusal.as_dict() for refusal in refusals],
            "last_refresh": updated if _is_number(updated) else None,
            "fingerprint": fingerprint(str(access) if access else None),
            "notes": _refusal_notes(name, refusals, bound, sender),
        })
    if args.json:
        print(json.dumps({"store": where, "accounts": [
            {k: v for k, v in row.items() if k != "notes"} for row in rows]}, indent=2))
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
        for note in row["notes"]:
            print(note)
        if row["expiry_invalid"] and not row["needs_login"]:
            print(f"Account {row['account']!r}: its expires_at is not a number of epoch "
                  "seconds (edited by hand?); the expiry is unknown")
    return 0


def _recorded(meta: Mapping[str, Any], name: str) -> str | None:
    value = meta.get(name)
    return value if isinstance(value, str) and value else None


def _refusal_notes(account: str, refusals: list[Refusal], bound: Refusal | None,
                   sender: tuple[str | None, str | None]) -> list[str]:
    """What ``status`` says of X's refusals of the account's refresh token: who was refused,
    where and when (never a token: its fingerprint), and what to do."""
    notes = []
    if bound is not None:
        notes.append(
            f"Account {account!r}: X refused its refresh token (spent or revoked): "
            f"{bound.describe()}; log in again: refresher login --account {account} (or, if "
            "that refusal came from a misconfigured process, probe once: refresher refresh "
            f"--account {account} --retry-refused)")
    for refusal in refusals:
        if not refusal.binds(*sender):
            notes.append(
                f"Account {account!r}: {refusal.describe()}, not the client id and token URL "
                "the account was logged in with; this does not bind them (a refresh with the "
                "account's own settings still sends it)")
    return notes


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def run_refresh(args: argparse.Namespace) -> int:
    """``refresher refresh [--all] [--within SECONDS [--every SECONDS]] [--json]``: refresh
    now, under the store's lock.

    One account (``--account``, or the store's only one), or with ``--all`` every account
    that is not waiting for a login, each reported on a line of its own; exit 1 when one
    needs a login or failed. ``--within`` leaves alone the tokens with more time left;
    ``--every`` does it again until Ctrl-C or SIGTERM (:func:`_keep_refreshing`).
    """
    store = store_for(args)
    if args.every is not None and args.within is None:
        raise UsageError("--every refreshes again and again: give --within SECONDS too, so "
                         "that only tokens about to expire are refreshed (e.g. --within 600 "
                         "--every 60)")
    if args.every is not None and args.retry_refused:
        raise UsageError("--retry-refused sends a refused refresh token once, on purpose: "
                         "run it on its own, not with --every")
    if args.all:
        if args.account:
            raise UsageError("--all refreshes every account of the store: leave --account out")
        secret = read_client_secret(args.client_secret, needed=False, client_id="this store")
        names: Callable[[], list[str]] = store.accounts
    else:
        name = account_for(store, args)
        meta = store.load_metadata(name)
        secret = read_client_secret(args.client_secret, needed=bool(meta.get("confidential")),
                                    client_id=client_id_for(args, meta))
        names = lambda: [name]  # noqa: E731
    if args.every is not None:
        return _keep_refreshing(store, names, args, secret)
    results = _refresh_pass(store, names(), args, secret, quiet=args.json or not args.all)
    if not args.all:
        problem = results[0].get("problem")
        if problem:  # one account: a failure as it came, one line on stderr
            raise problem
    if args.json:
        print(json.dumps({"store": describe_store(store), "accounts": [
            {k: v for k, v in row.items() if k not in ("problem", "line")}
            for row in results]}, indent=2))
    elif not results:
        print(f"No accounts in {describe_store(store)}.")
    elif not args.all:
        print(results[0]["line"])
    failed = [row["account"] for row in results if _failed(row)]
    if failed:
        raise Failure(f"{len(failed)} of {len(results)} accounts not refreshed "
                      f"({', '.join(failed)}): see the lines above")
    return 0


def _failed(row: Mapping[str, Any]) -> bool:
    return not (row["refreshed"] or row["fresh"])


def _refresh_pass(store: TokenStore, names: Sequence[str], args: argparse.Namespace,
                  secret: str | None, *, quiet: bool,
                  show: Callable[[dict[str, Any]], bool] = lambda row: True,
                  ) -> list[dict[str, Any]]:
    """Refresh ``names`` in turn (``--within``: those expiring); what became of each. Unless
    ``quiet``, each line that ``show`` selects is printed as it happens: a SIGTERM keeps the
    lines so far."""
    results = []
    for name in names:
        try:
            results.append(_refresh_account(store, name, args, secret,
                                            skip_needs_login=args.all))
        except Terminated:  # right after the refresh in flight ended (and saved its pair)
            if not quiet:
                print(f"Account {name!r}: SIGTERM came while it was being refreshed; "
                      "refresher status shows where it stands.", flush=True)
            raise
        if not quiet and show(results[-1]):
            print(results[-1]["line"], flush=True)
    return results


def _keep_refreshing(store: TokenStore, names: Callable[[], list[str]],
                     args: argparse.Namespace, secret: str | None) -> int:
    """``--every``: a pass every ``args.every`` seconds until Ctrl-C or SIGTERM (a SIGTERM
    during a refresh ends the command after its pair is saved). Prints what changed: an
    account refreshed, or failing or needing a login (once, until that changes);
    ``--json``: one JSON object a line for the same. A failure does not end the loop: the
    next pass tries again (an expiring token that could not be refreshed is still the
    sessions' to refresh: they refresh it themselves in their own leeway)."""
    print(f"Refreshing the tokens of {describe_store(store)} that expire within "
          f"{duration(args.within)}, every {duration(args.every)}; Ctrl-C or SIGTERM "
          "stops.", file=sys.stderr, flush=True)
    told: dict[str, str] = {}  # account -> the last line printed for a standing problem

    def show(row: dict[str, Any]) -> bool:
        if row["refreshed"]:
            told.pop(row["account"], None)
            return True
        if row["fresh"]:
            told.pop(row["account"], None)
            return False
        if told.get(row["account"]) == row["line"]:
            return False  # said already; said again once it changes
        told[row["account"]] = row["line"]
        return True

    while True:
        started = time.monotonic()
        try:
            rows = _refresh_pass(store, names(), args, secret, quiet=args.json, show=show)
        except (RefresherError, OSError) as exc:  # the store itself is down or unreadable
            problem = " ".join((str(exc) or type(exc).__name__).split())
            if told.get("") != problem:  # once, until it changes
                told[""] = problem
                print(f"refresher: could not list the accounts ({problem}); trying again "
                      f"every {duration(args.every)}", file=sys.stderr, flush=True)
            rows = []
        else:
            told.pop("", None)
        if args.json:
            for row in rows:
                if show(row):
                    print(json.dumps({k: v for k, v in row.items()
                                      if k not in ("problem", "line")}), flush=True)
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


def _refresh_account(store: TokenStore, account: str, args: argparse.Namespace,
                     secret: str | None, *, skip_needs_login: bool) -> dict[str, Any]:
    """Refresh one account (coordinated: a RefreshingSession); what became of it."""
    meta = store.load_metadata(account)
    user = f" (@{meta['username']})" if meta.get("username") else ""
    row: dict[str, Any] = {"account": account, "user": meta.get("username"),
                           "refreshed": False, "fresh": False, "needs_login": False,
                           "error": None, "fingerprint": None, "expires_in": None}
    relogin = f"log in again: refresher login --account {account}"
    try:
        client_id = client_id_for(args, meta)
        token_url = resolve_setting("token_url", args.token_url, meta) or ""
        check_urls({"token_url": token_url})
        if skip_needs_login and not args.retry_refused and store.needs_login(
                account, client_id=client_id, token_url=token_url):
            row.update(needs_login=True, error="X refused its refresh token (spent or revoked)",
                       line=f"Account {account!r}{user} needs a login, not refreshed: X "
                            f"refused its refresh token (spent or revoked); {relogin}")
            return row
        confidential = bool(meta.get("confidential"))
        if confidential and not secret:
            raise UsageError(f"{client_id} is a confidential client: give its secret with "
                             "REFRESHER_CLIENT_SECRET or --client-secret -")
        token = _fresh_token(store, account, args.within)
        spent = False
        if token is None:  # (a fresh one needs no session, no lock)
            session = RefreshingSession(
                client_id, client_secret=secret if confidential or not args.all else None,
                store=store, account=account, token_url=token_url,
                api_url=resolve_setting("api_url", args.api_url, meta) or "",
                lock_timeout=LOCK_TIMEOUT,
            )
            try:
                token = session.refresh(retry_refused=args.retry_refused, within=args.within)
                spent = session.coordinator is not None and session.coordinator.refreshes > 0
            finally:
                session.close()
    except ReauthorizationRequired as exc:
        row.update(needs_login=True, error=str(exc), problem=exc,
                   line=f"Account {account!r}{user} needs a login, not refreshed: {relogin}")
        return row
    except (RefresherError, OAuth2Error, UsageError, ValueError, OSError) as exc:
        message = " ".join((str(exc) or type(exc).__name__).split())
        row.update(error=message, problem=exc,
                   line=f"Account {account!r}{user} was not refreshed: {message}")
        return row
    left, _ = seconds_left(token)
    row.update(fingerprint=fingerprint(token.get("access_token")),
               expires_in=None if left is None else round(left, 1))
    if args.within is None or spent:
        row.update(refreshed=True,
                   line=f"Refreshed account {account!r}{user}: access token "
                        f"{row['fingerprint']} expires {expiry(token)}.")
    else:  # fresh, or another process refreshed it while we looked
        row.update(fresh=True,
                   line=f"Account {account!r}{user} is fresh, not refreshed: access token "
                        f"{row['fingerprint']} expires {expiry(token)}.")
    return row


def _fresh_token(store: TokenStore, account: str, within: float | None) -> Token | None:
    """The account's stored token when ``within`` is given and it has more than ``within``
    seconds left (or does not say: X's 401 will tell), else ``None``."""
    if within is None:
        return None
    token = load_token(store, account)
    return token if token and lasts(token, within) else None


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
    revoke_url = resolve_setting("revoke_url", args.revoke_url, meta) or ""
    token_url = resolve_setting("token_url", args.token_url, meta) or ""
    check_urls({"token_url": token_url, "revoke_url": revoke_url})
    secret = read_client_secret(args.client_secret, needed=bool(meta.get("confidential")),
                                client_id=client_id)
    # Under the account's lock, so no sibling refreshes it between the revoke and the delete;
    # in flight, so a SIGTERM does not leave a pair revoked at X in the store.
    check_not_stopping()
    with store.lock(account, timeout=LOCK_TIMEOUT), in_flight() as flight:
        token = load_token(store, account) or {}
        try:
            note = revoke_pair(token, client_id=client_id, client_secret=secret,
                               token_url=token_url, revoke_url=revoke_url)
        except RevokeError as exc:
            raise Failure(
                f"{exc}; account {account!r} is kept in the store. Try again later, or remove "
                f"it without revoking: refresher logout --account {account} --forget-only"
            ) from None
        flight.arrived()
        store.delete(account)
    user = f" (@{meta['username']})" if meta.get("username") else ""
    print(f"Logged out account {account!r}{user}: revoked at {revoke_url} and removed "
          f"from {where}{note}.")
    return 0

