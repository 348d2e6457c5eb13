"""Revoking a pair at X: the refresh token, then the access token.

One piece of code for :meth:`refresher.RefreshingSession.revoke` (and the async front ends'
``revoke()`` / ``arevoke()``), :meth:`refresher.LoginFlow.revoke` and ``refresher logout``.

X's caveat: revoking a token may remove all of the app's access for that user, every other
login of theirs in this app included (see X's OAuth 2.0 documentation). Revoke when the
user disconnects the app, not to tidy up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from .errors import RevokeError

__all__ = ["Revoker", "revoke_pair"]

log = logging.getLogger(__name__)


class Revoker(Protocol):
    """What revoking needs of a token endpoint (:class:`~refresher.endpoint.TokenEndpoint`)."""

    deadline: float
    timeout: float

    def revoke(self, revoke_url: str, token: str,
               token_type_hint: str = "refresh_token") -> None: ...


def revoke_pair(endpoint: Revoker, revoke_url: str, token: Mapping[str, Any], *,
                timeout: float | None = None) -> str:
    """Revoke ``token``'s refresh token, then its access token, at ``revoke_url``.

    Raises :class:`~refresher.RevokeError` when the refresh token could not be revoked
    (nothing else was tried). Returns ``""``, or a note saying the access token could not be
    revoked (it expires by itself within two hours). ``timeout`` bounds both together
    (default: the endpoint's deadline for each).
    """
    give_up_at = None if timeout is None else time.monotonic() + timeout
    if token.get("refresh_token"):
        endpoint.revoke(revoke_url, str(token["refresh_token"]), "refresh_token")
    if not token.get("access_token"):
        return ""
    saved = endpoint.deadline, endpoint.timeout
    if give_up_at is not None:  # what is left of the budget, for the second revoke
        endpoint.deadline = max(0.1, min(saved[0], give_up_at - time.monotonic()))
        endpoint.timeout = min(saved[1], endpoint.deadline)
    try:
        endpoint.revoke(revoke_url, str(token["access_token"]), "access_token")
    except RevokeError as exc:
        log.warning("the access token could not be revoked (%s); it expires by itself", exc)
        return f" (the access token could not be revoked: {exc}; it expires by itself)"
    finally:
        endpoint.deadline, endpoint.timeout = saved
    return ""
