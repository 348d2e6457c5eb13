"""The token model: requests-oauthlib's token dict, and what refresher needs to know of it.

A token is a ``dict`` (``access_token``, ``refresh_token``, ``token_type``,
``expires_in``, ``expires_at`` in epoch seconds, ``scope``) so that it stays
interchangeable with requests-oauthlib, tweepy and whatever database a user syncs it to.
:class:`Token` is a ``dict`` subclass whose ``repr`` shows fingerprints instead of the
tokens (a notebook displays what a cell returns); the login hands out one. Everything
else may hand out plain dicts, so to type checkers ``Token`` is ``dict[str, Any]``.

Two ways in, with two different rules:

- :func:`validate_token` for a token a *person* hands over (a ``token=`` seed): anything
  refresher could not use is refused with :class:`~refresher.InvalidTokenError` before
  it is saved anywhere;
- :func:`parse_grant` for what the token endpoint answered with a 200: X has already
  rotated the pair, so nothing may be refused before the new refresh token is saved. What
  cannot be read is repaired (an unreadable expiry counts as expiring now) and reported.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidTokenError

if TYPE_CHECKING:
    # What every function annotated Token may return: a plain dict does (only the login
    # builds the subclass below), and a Token is one.
    Token = dict[str, Any]
else:

    class Token(dict):
        """A token dict whose ``repr`` (and ``str``) shows fingerprints, never a token.

        The same keys and values as the token endpoint's answer: equal to that dict,
        ``json.dumps`` and ``pickle`` work as for any dict, ``dict(token)`` is a plain
        copy. Each ``*_token`` field shows as ``<sha256:...>`` (:func:`fingerprint`).

        >>> Token({"access_token": "secret-a", "expires_in": 7200})
        Token({'access_token': <sha256:8766b9cb>, 'expires_in': 7200})
        >>> Token({"access_token": "secret-a"}) == {"access_token": "secret-a"}
        True
        """

        __slots__ = ()

        def __repr__(self):
            shown = ", ".join(
                f"{key!r}: <{fingerprint(str(value))}>"
                if isinstance(key, str) and key.endswith("token") and value
                else f"{key!r}: {value!r}"
                for key, value in self.items()
            )
            return f"Token({{{shown}}})"

        def _repr_pretty_(self, printer, cycle):  # IPython and Jupyter display this
            printer.text(repr(self))

        def copy(self):
            """A shallow copy that is a Token too (its ``repr`` masked as well)."""
            return Token(self)

__all__ = [
    "Token",
    "normalize_token",
    "validate_token",
    "parse_grant",
    "fingerprint",
    "seconds_left",
    "lasts",
    "lifetime_of",
]


def _number(value: Any) -> float | None:
    """``value`` as a finite float (numbers and numeric strings), or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def normalize_token(raw: Mapping[str, Any], *, now: float | None = None) -> Token:
    """Return a copy of a token-endpoint answer with ``expires_at`` computed on receipt.

    ``scope`` is kept as X sends it (a space-separated string); a list is joined.
    Raises :class:`~refresher.InvalidTokenError` for a token refresher cannot use (see
    :func:`validate_token`).
    """
    return validate_token(raw, now=now)


def validate_token(raw: Mapping[str, Any], *, now: float | None = None) -> Token:
    """A checked copy of a token someone handed over, with ``expires_at`` filled in.

    Refused with :class:`~refresher.InvalidTokenError` (the message names the field, never
    a token): not a mapping; ``access_token`` or ``refresh_token`` present but not a
    non-empty string; neither of them; ``expires_in`` or ``expires_at`` present but not a
    number of seconds (numeric strings are converted).
    """
    if not isinstance(raw, Mapping):
        raise InvalidTokenError(
            f"a token must be a dict like the token endpoint's answer, not {type(raw).__name__}"
        )
    token, problems = _repair(raw, now)
    if problems:
        raise InvalidTokenError(
            "this token cannot be used: " + "; ".join(problems)
            + ". Pass the token endpoint's answer as it came (or log in again)."
        )
    if not token.get("access_token") and not token.get("refresh_token"):
        raise InvalidTokenError(
            "this token has neither an access_token nor a refresh_token; log in again"
        )
    return token


def parse_grant(raw: Mapping[str, Any], *, now: float | None = None) -> tuple[Token, list[str]]:
    """The token to save from a 200 answer, and what was wrong with it (empty when nothing).

    Never raises: X has already rotated the pair, so whatever can be kept is kept. An expiry
    that cannot be read becomes ``expires_at = now`` (treated as expiring); a field of the
    wrong type is dropped. The caller saves the token first and judges the problems after.
    """
    return _repair(raw, now)


def _repair(raw: Mapping[str, Any], now: float | None) -> tuple[Token, list[str]]:
    token: Token = dict(raw)
    problems: list[str] = []
    received = time.time() if now is None else now
    for field in ("access_token", "refresh_token"):
        value = token.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"{field} is not a non-empty string ({_kind(value)})")
            del token[field]
    lifetime: float | None = None
    if token.get("expires_in") is not None:
        lifetime = _number(token["expires_in"])
        if lifetime is None:
            problems.append(f"expires_in is not a number of seconds ({_kind(token['expires_in'])})")
            del token["expires_in"]
        else:
            token["expires_in"] = int(lifetime) if lifetime.is_integer() else lifetime
    if token.get("expires_at") is not None:
        expires_at = _number(token["expires_at"])
        if expires_at is None:
            problems.append(
                f"expires_at is not a number of epoch seconds ({_kind(token['expires_at'])}; "
                "an ISO date? pass datetime.timestamp())")
            # Unknown expiry: from expires_in when it can be read, else expiring now.
            token["expires_at"] = received + lifetime if lifetime is not None else received
        else:
            token["expires_at"] = expires_at
    elif lifetime is not None:
        token["expires_at"] = received + lifetime
    elif "expires_in" in raw and raw["expires_in"] is not None:
        token["expires_at"] = received  # an expires_in that cannot be read: expiring now
    scope = token.get("scope")
    if isinstance(scope, (list, tuple)):
        token["scope"] = " ".join(str(s) for s in scope)
    return token, problems


def _kind(value: Any) -> str:
    """What a bad field held, by type only: the value itself is never echoed."""
    return "empty text" if value == "" else f"got {type(value).__name__}"


def fingerprint(secret: str | None) -> str:
    """A short, non-reversible name for a token, safe to log: ``"sha256:1a2b3c4d"``."""
    if not secret:
        return "none"
    return "sha256:" + hashlib.sha256(str(secret).encode("utf-8")).hexdigest()[:8]


def seconds_left(token: Mapping[str, Any], *, now: float | None = None) -> float | None:
    """Seconds until the access token expires, or ``None`` when the token does not say.

    An ``expires_at`` that is not a number (a hand-edited store) counts as expired: 0.
    """
    raw = token.get("expires_at")
    if raw is None:
        return None
    expires_at = _number(raw)
    if expires_at is None:
        return 0.0
    return expires_at - (time.time() if now is None else now)


def lasts(token: Mapping[str, Any], seconds: float, *, now: float | None = None) -> bool:
    """Whether ``token`` has an access token with more than ``seconds`` left, or one that does
    not say when it expires (X's 401 will tell). An ``expires_at`` that is not a number
    does not last (:func:`seconds_left`: 0)."""
    if not token.get("access_token"):
        return False
    left = seconds_left(token, now=now)
    return left is None or left > seconds


def lifetime_of(token: Mapping[str, Any]) -> float | None:
    """The token's lifetime in seconds (``expires_in``), or ``None`` when it does not say."""
    return _number(token.get("expires_in"))

