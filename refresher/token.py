"""The token model: requests-oauthlib's token dict, and what refresher needs to know of it.

A token is a plain ``dict`` (``access_token``, ``refresh_token``, ``token_type``,
``expires_in``, ``expires_at`` in epoch seconds, ``scope``) so that it stays
interchangeable with requests-oauthlib, tweepy and whatever database a user syncs it to.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Dict, Mapping, Optional

from ._constants import LEEWAY_MAX_FRACTION

Token = Dict[str, Any]

__all__ = ["Token", "normalize_token", "fingerprint", "seconds_left", "needs_refresh"]


def normalize_token(raw: Mapping[str, Any], *, now: Optional[float] = None) -> Token:
    """Return a copy of a token-endpoint answer with ``expires_at`` computed on receipt.

    ``scope`` is kept as X sends it (a space-separated string); a list is joined.
    """
    token: Token = dict(raw)
    received = time.time() if now is None else now
    expires_in = token.get("expires_in")
    if expires_in is not None and "expires_at" not in token:
        token["expires_at"] = received + float(expires_in)
    scope = token.get("scope")
    if isinstance(scope, (list, tuple)):
        token["scope"] = " ".join(scope)
    return token


def fingerprint(secret: Optional[str]) -> str:
    """A short, non-reversible name for a token, safe to log: ``"sha256:1a2b3c4d"``."""
    if not secret:
        return "none"
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]


def seconds_left(token: Mapping[str, Any], *, now: Optional[float] = None) -> Optional[float]:
    """Seconds until the access token expires, or ``None`` when the token does not say."""
    expires_at = token.get("expires_at")
    if expires_at is None:
        return None
    return float(expires_at) - (time.time() if now is None else now)


def effective_leeway(token: Mapping[str, Any], leeway: float) -> float:
    """``leeway``, capped at a fraction of the token's lifetime.

    With X's 2-hour tokens a 60-second leeway is used as is; with a 5-second emulator
    token it shrinks to half a second, so not every request triggers a refresh.
    """
    lifetime = token.get("expires_in")
    if lifetime is None:
        return leeway
    return min(leeway, float(lifetime) * LEEWAY_MAX_FRACTION)


def needs_refresh(token: Mapping[str, Any], leeway: float, *, now: Optional[float] = None) -> bool:
    """True when the access token expires within the (capped) leeway, or has expired."""
    left = seconds_left(token, now=now)
    return left is not None and left <= effective_leeway(token, leeway)
