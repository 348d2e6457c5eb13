"""What an emulator remembers: its apps and users, the codes and tokens it issued, the
tweets posted, the media uploaded, the rate-limit windows and the faults queued for the token
endpoint.

:class:`EmulatorState` is the base of every side of :class:`XEmulator` (OAuth, API, test
controls): they all read and write these records under its one lock, and read the time
from its one clock.
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refresher.clock import Clock
from refresher.testing.emulator._messages import Response
from refresher.testing.emulator._stats import Counters

#: A public client (PKCE only, no secret), known to every emulator by default.
DEFAULT_CLIENT_ID = "emulator-client"
#: A confidential client, known to every emulator by default, with :data:`DEFAULT_CLIENT_SECRET`.
DEFAULT_CONFIDENTIAL_CLIENT_ID = "emulator-confidential-client"
DEFAULT_CLIENT_SECRET = "emulator-client-secret"
#: The user who logs in when no ``users`` are given.
DEFAULT_USER: Mapping[str, str] = {
    "id": "1000000001",
    "name": "Emulated User",
    "username": "emulated_user",
}

#: The scopes X's authorize page accepts.
KNOWN_SCOPES = frozenset(
    "tweet.read tweet.write tweet.moderate.write users.read users.email follows.read"
    " follows.write offline.access space.read mute.read mute.write like.read like.write"
    " list.read list.write block.read block.write bookmark.read bookmark.write media.write"
    " dm.read dm.write".split()
)


@dataclass
class CodeRecord:
    """An authorization code: whom it was issued to, and how to prove it (PKCE)."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    challenge: str
    method: str
    user_id: str
    expires_at: float
    used: bool = False


@dataclass
class AccessRecord:
    """An access token's holder, scopes and expiry (epoch seconds)."""

    client_id: str
    user_id: str
    scopes: tuple[str, ...]
    expires_at: float
    revoked: bool = False


@dataclass
class RefreshRecord:
    """A refresh token, and the access token issued beside it."""

    client_id: str
    user_id: str
    scopes: tuple[str, ...]
    access_token: str
    spent: bool = False
    revoked: bool = False


@dataclass
class MediaRecord:
    """A media upload: whose, what was announced (INIT), what arrived (APPEND).

    ``appends`` holds every accepted APPEND as ``(segment_index, bytes)``, in arrival order,
    so that a test sees a chunk that came twice; the media is made of the last chunk of each
    segment index.
    """

    user_id: str
    media_type: str
    total_bytes: int
    expires_at: float
    appends: list[tuple[int, bytes]] = field(default_factory=list)
    finalized: bool = False


class EmulatorState:
    """The records behind an :class:`XEmulator`, the lock that guards them, its counts, and
    the clock that every expiry, issue time and rate-limit window is read from."""

    #: Seconds an access token lives, read at each issue (set by :class:`XEmulator`).
    access_ttl: float
    #: Answer 429 past ``rate_limit`` calls per ``rate_window`` seconds (set by XEmulator).
    enforce_rate_limits: bool
    rate_limit: int
    rate_window: float

    def __init__(
        self,
        *,
        clients: dict[str, str | None] | None,
        users: list[dict[str, str]] | None,
        clock: Clock,
    ) -> None:
        self._clock = clock
        self._clients: dict[str, str | None] = (
            dict(clients)
            if clients is not None
            else {DEFAULT_CLIENT_ID: None, DEFAULT_CONFIDENTIAL_CLIENT_ID: DEFAULT_CLIENT_SECRET}
        )
        user_list = [dict(u) for u in users] if users else [dict(DEFAULT_USER)]
        for user in user_list:
            if not {"id", "name", "username"} <= user.keys():
                raise ValueError("each user needs 'id', 'name' and 'username'")
        self._users: dict[str, dict[str, str]] = {u["id"]: u for u in user_list}
        self._login_user = user_list[0]["id"]

        self._lock = threading.Lock()
        self._codes: dict[str, CodeRecord] = {}
        self._issued_codes: set[str] = set()  # every code handed out, pruned or not
        self._access: dict[str, AccessRecord] = {}
        self._refresh: dict[str, RefreshRecord] = {}
        self._tweets: dict[str, set[str]] = {}
        # (client id, user id, method and path) -> (window start, calls in it)
        self._rate_windows: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._faults: list[Response] = []
        self._counts = Counters()
        self._next_tweet_id = 1_800_000_000_000_000_000
        self._media: dict[str, MediaRecord] = {}
        self._next_media_id = 1_900_000_000_000_000_000

    def _new_token(self, kind: str) -> str:
        # Shaped like X's tokens: base64 of "random:millis:1:0:kind:1".
        raw = f"{secrets.token_urlsafe(30)}:{int(self._clock.time() * 1000)}:1:0:{kind}:1"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _mint(self, client_id: str, user_id: str, scopes: tuple[str, ...]) -> dict[str, Any]:
        """Issue a token pair, answered as the token endpoint does; the caller holds the lock."""
        access_token = self._new_token("at")
        ttl = self.access_ttl
        expires_at = self._clock.time() + ttl
        self._access[access_token] = AccessRecord(client_id, user_id, scopes, expires_at)
        payload: dict[str, Any] = {
            "token_type": "bearer",
            "expires_in": _seconds(ttl),
            "access_token": access_token,
            "scope": " ".join(scopes),
        }
        if "offline.access" in scopes:
            refresh_token = self._new_token("rt")
            self._refresh[refresh_token] = RefreshRecord(client_id, user_id, scopes, access_token)
            payload["refresh_token"] = refresh_token
        return payload

    def _count_call(self, access: AccessRecord, route: str) -> tuple[bool, dict[str, str]]:
        """Count one API call of this user and app to ``route`` in its fixed window of
        ``rate_window`` seconds (read on the emulator's clock), as X counts per user per
        endpoint.

        Returns whether it is over ``rate_limit`` (only with ``enforce_rate_limits``: a
        limited call is not counted) and the ``x-rate-limit-*`` headers X sends either way
        (the reset rounded up to a whole second: no client that waits for it is early).
        """
        key = (access.client_id, access.user_id, route)
        limit, window = self.rate_limit, self.rate_window
        with self._lock:
            now = self._clock.time()
            window_start, used = self._rate_windows.get(key, (now, 0))
            if now >= window_start + window:
                window_start, used = now, 0
            limited = self.enforce_rate_limits and used >= limit
            if not limited:
                used += 1
            self._rate_windows[key] = (window_start, used)
        return limited, {
            "x-rate-limit-limit": str(limit),
            "x-rate-limit-remaining": str(max(0, limit - used)),
            "x-rate-limit-reset": str(math.ceil(window_start + window)),
        }

    def _live_access(self, token: str) -> AccessRecord | None:
        """The record of ``token`` if it is a known, unrevoked, unexpired access token."""
        with self._lock:
            record = self._access.get(token)
            if record is None or record.revoked or self._clock.time() >= record.expires_at:
                return None
            return record


def _seconds(ttl: float) -> float:
    return int(ttl) if float(ttl).is_integer() else ttl
