"""What every front end (requests, httpx, aiohttp) reads off a request or an answer.

Each HTTP library holds headers and bodies its own way; what they mean to refresher does not
change with the library, so it is decided here once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bearer_token", "problem_type"]

_BEARER = "bearer "


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``.

    >>> bearer_token("Bearer abc"), bearer_token("Basic abc"), bearer_token(None)
    ('abc', None, None)
    """
    if not authorization or not authorization.lower().startswith(_BEARER):
        return None
    return authorization[len(_BEARER):]


def problem_type(body: Any) -> str | None:
    """The problem+json ``type`` of a parsed answer body (what X says a 403 is about).

    >>> problem_type({"type": "https://api.twitter.com/2/problems/client-forbidden"})
    'https://api.twitter.com/2/problems/client-forbidden'
    >>> problem_type(["not", "a", "problem"]) is None
    True
    """
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None
