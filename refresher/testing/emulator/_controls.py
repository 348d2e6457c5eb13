"""What a test does to an emulator behind its clients' backs: mint, expire and revoke
tokens, look at a refresh token, and make the token endpoint fail, wait or trickle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from refresher.testing.emulator._messages import JSON, Request, Response
from refresher.testing.emulator._state import (
    DEFAULT_CLIENT_ID,
    KNOWN_SCOPES,
    EmulatorState,
)

logger = logging.getLogger("refresher.testing")


class EmulatorControls(EmulatorState):
    """The test-facing methods of :class:`XEmulator`, and the knobs on its token endpoint."""

    # Settings, set by XEmulator and read at each token request.
    token_delay: float
    answer_delay: float
    token_trickle: float

    # -- tokens ------------------------------------------------------------------------

    def issue_token(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        scope: str = "tweet.read users.read offline.access",
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Mint a token pair without a login, as the token endpoint would answer it.

        The dict also holds ``expires_at`` (epoch seconds on the emulator's clock). A refresh
        token comes only with ``offline.access`` in ``scope``.
        """
        if client_id not in self._clients:
            raise ValueError(f"unknown client_id {client_id!r}")
        user_id = self._login_user if user_id is None else user_id
        if user_id not in self._users:
            raise ValueError(f"unknown user_id {user_id!r}")
        scopes = tuple(scope.split())
        unknown = set(scopes) - KNOWN_SCOPES
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}")
        with self._lock:
            payload = self._mint(client_id, user_id, scopes)
            payload["expires_at"] = self._access[payload["access_token"]].expires_at
        return payload

    def expire_access_token(self, access_token: str) -> None:
        """Make an access token expired from now on. Raises KeyError for an unknown token."""
        with self._lock:
            record = self._access.get(access_token)
            if record is None:
                raise KeyError("unknown access token")
            record.expires_at = min(record.expires_at, self._clock.time())

    def revoke_all(self) -> None:
        """Kill every access and refresh token issued so far."""
        with self._lock:
            for access in self._access.values():
                access.revoked = True
            for refresh in self._refresh.values():
                refresh.revoked = True

    def refresh_token_state(self, refresh_token: str) -> str:
        """What a refresh token is now: ``"live"``, ``"spent"``, ``"revoked"`` or ``"unknown"``."""
        with self._lock:
            record = self._refresh.get(refresh_token)
            if record is None:
                return "unknown"
            if record.revoked:
                return "revoked"
            return "spent" if record.spent else "live"

    def issued_secrets(self) -> set[str]:
        """Every secret this emulator has handed out or knows: each access token, refresh
        token and authorization code it issued (live, spent, expired or revoked alike), and
        its clients' secrets. For tests that prove none of them reaches a log or a message."""
        with self._lock:
            found = set(self._access) | set(self._refresh) | self._issued_codes
            found.update(secret for secret in self._clients.values() if secret)
        return found

    # -- the token endpoint's knobs ----------------------------------------------------

    def fail_token_endpoint(
        self,
        times: int = 1,
        status: int = 503,
        body: str | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Make the next ``times`` token requests answer ``status``, ``body`` and
        ``headers`` (a 429 or 503 with ``{"Retry-After": "30"}``, say).

        Nothing is spent or issued by those requests: a refresh token sent to a failing
        endpoint stays valid. ``body`` defaults to a JSON OAuth error.
        """
        if times < 0:
            raise ValueError("times must not be negative")
        if body is None:
            error = "temporarily_unavailable" if status == 503 else "server_error"
            description = f"Emulated failure of the token endpoint (HTTP {status})."
            body = json.dumps({"error": error, "error_description": description})
            content_type = JSON
        fault = Response(status, body.encode(), content_type, dict(headers or {}))
        with self._lock:
            self._faults.extend([fault] * times)

    def _bent(self, request: Request, answer: Callable[[Request], Response]) -> Response:
        """``answer(request)``, or a queued fault instead, after ``token_delay``, held back
        ``answer_delay`` more seconds once decided, and trickled at ``token_trickle``; every
        request is counted, faults included."""
        self._counts.add("token_requests")
        delay = self.token_delay
        if delay > 0:
            # Real time, whatever the emulator's clock: it is the client's socket that waits.
            time.sleep(delay)
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            logger.debug("token endpoint: emulated failure %d", fault.status)
            response = fault
        else:
            response = answer(request)
        if self.answer_delay > 0:
            time.sleep(self.answer_delay)  # X has acted (spent the token); the answer is slow
        response.trickle = self.token_trickle
        return response
