"""Refusal: X refused an account's refresh token, and to whom, recorded beside the account.

When the token endpoint refuses a refresh token as spent or revoked (X: 400 "Value passed
for the token was invalid"), the coordinator records it in the store's metadata under
:data:`NEEDS_LOGIN`: the refresh token's fingerprint, and for each refusal the client id and
token URL it was sent with, and when. A process that would send that refresh token with the
same client id to the same token URL is *bound* by it: it does not resend it and says a
login is needed. A process with another client id or token URL is not: that refusal said
nothing about its client or server (a process left with an emulator's token URL, or another
app's client id, is refused by a server that never issued the token to it). A deliberate
probe (``refresh(retry_refused=True)``, ``refresher refresh --retry-refused``) sends it once
anyway. The record names the refresh token it is about, so a new pair (a login, a grant)
makes it moot without anyone deleting it; a grant also removes it.

Only fingerprints, client ids, URLs and times are kept: never a token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .token import fingerprint

__all__ = ["NEEDS_LOGIN", "Refusal", "binding", "record_refusal", "refusals_of",
           "without_refusals"]

#: Metadata key of the record: ``{"refresh_token": fingerprint, "since": epoch seconds,
#: "refusals": [{"client_id": ..., "token_url": ..., "at": epoch seconds}, ...]}``. A record
#: without ``refusals`` (written before they were recorded) binds every process.
NEEDS_LOGIN = "needs_login"

# Refusals kept per refresh token: one per client id and token URL that was refused, the
# latest ones (each misconfigured process adds one at most).
_KEPT = 8


@dataclass(frozen=True)
class Refusal:
    """X refused the refresh token of fingerprint ``refresh_token``, sent by ``client_id``
    to ``token_url``, at ``at`` (epoch seconds). ``None``: not recorded (an older record),
    which matches any client id or URL."""

    refresh_token: str
    client_id: str | None
    token_url: str | None
    at: float

    def binds(self, client_id: str | None, token_url: str | None) -> bool:
        """Whether a process sending the token as ``client_id`` to ``token_url`` must not
        resend it. ``None`` for either means "any" (as for a record that lacks it)."""
        return (self.client_id is None or client_id is None or self.client_id == client_id) \
            and (self.token_url is None or token_url is None
                 or _same_url(self.token_url, token_url))

    def describe(self) -> str:
        """Who was refused, where and when, for a message: no token, only its fingerprint.

        >>> Refusal("sha256:1a2b3c4d", "my-app", "https://api.x.com/2/oauth2/token",
        ...         0.0).describe()  # doctest: +ELLIPSIS
        'refresh token sha256:1a2b3c4d refused to client id my-app at https://api.x.com/...'
        """
        who = f"client id {self.client_id}" if self.client_id else "an unrecorded client id"
        where = self.token_url or "an unrecorded token URL"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))
        return f"refresh token {self.refresh_token} refused to {who} at {where} on {when}"

    def login_needed(self, account: str, where: str) -> str:
        """The message of the :class:`~refresher.ReauthorizationRequired` a bound process
        raises instead of resending the token: what was refused, and the two ways out."""
        return (f"account {account!r}: X already refused its stored refresh token as spent "
                f"or revoked ({self.describe()}; recorded in {where}); it is not sent again "
                "with that client id to that URL. Log in again (for example with `refresher "
                "login`); or, if that refusal came from a misconfigured process, probe once on "
                "purpose: `refresher refresh --retry-refused`, or refresh(retry_refused=True)")

    def as_dict(self) -> dict[str, Any]:
        """The refusal as ``refresher status --json`` shows it."""
        return {"refresh_token": self.refresh_token, "client_id": self.client_id,
                "token_url": self.token_url, "at": self.at}


def refusals_of(metadata: Mapping[str, Any], refresh_token: object) -> list[Refusal]:
    """The refusals ``metadata`` records of ``refresh_token`` (the account's current one);
    ``[]`` when none, or when the record is about another refresh token."""
    record = metadata.get(NEEDS_LOGIN)
    if not isinstance(record, Mapping) or not refresh_token:
        return []
    spent = fingerprint(str(refresh_token))
    if record.get("refresh_token") != spent:
        return []
    since = _number(record.get("since"))
    entries = record.get("refusals")
    if not isinstance(entries, list):  # an older record: who was refused is not known
        return [Refusal(spent, None, None, since)]
    return [Refusal(spent, _text(entry.get("client_id")), _text(entry.get("token_url")),
                    _number(entry.get("at"), since))
            for entry in entries if isinstance(entry, Mapping)]


def binding(refusals: list[Refusal], client_id: str | None,
            token_url: str | None) -> Refusal | None:
    """The latest of ``refusals`` that binds ``client_id`` at ``token_url``, if any."""
    bound = [refusal for refusal in refusals if refusal.binds(client_id, token_url)]
    return max(bound, key=lambda refusal: refusal.at) if bound else None


def record_refusal(metadata: Mapping[str, Any], refresh_token: str, *,
                   client_id: str | None, token_url: str | None,
                   at: float) -> dict[str, Any]:
    """``metadata`` with the refusal of ``refresh_token`` to ``client_id`` at ``token_url``
    added (replacing that client's and URL's earlier one; a record about another refresh
    token is replaced)."""
    spent = fingerprint(refresh_token)
    record = metadata.get(NEEDS_LOGIN)
    entries: list[dict[str, Any]] = []
    since = at
    if isinstance(record, Mapping) and record.get("refresh_token") == spent:
        since = _number(record.get("since"), at)
        entries = [dict(e) for e in record.get("refusals") or () if isinstance(e, Mapping)
                   and not (e.get("client_id") == client_id
                            and _same_url(_text(e.get("token_url")), token_url))]
    entries.append({"client_id": client_id, "token_url": token_url, "at": at})
    updated = dict(metadata)
    updated[NEEDS_LOGIN] = {"refresh_token": spent, "since": since,
                            "refusals": entries[-_KEPT:]}
    return updated


def without_refusals(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` without the refusal record."""
    return {key: value for key, value in metadata.items() if key != NEEDS_LOGIN}


def _same_url(a: str | None, b: str | None) -> bool:
    """The same token endpoint, whatever the case of scheme and host or a trailing slash."""
    if a is None or b is None:
        return a is b
    return _canonical(a) == _canonical(b)


def _canonical(url: str) -> str:
    parts = urlsplit(url.strip())
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}{query}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object, default: float = 0.0) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default
