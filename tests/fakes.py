"""Fakes the unit tests share: a token endpoint that grants numbered pairs as X does (each
refresh token works once), made by the ``clock`` and ``endpoint`` fixtures of tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

from refresher import ReauthorizationRequired
from refresher.testing import FakeClock


class FakeEndpoint:
    """Grants numbered pairs; each refresh token works once, as at X."""

    token_url = "https://api.x.com/2/oauth2/token"
    client_id = "cid"
    deadline = 15.0

    def __init__(self, clock: FakeClock, lifetime: int = 7200) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.spent: list[str] = []
        self.live = {"rt-0"}
        self.fail_with: Exception | None = None
        self.count = 0

    def pair(self, n: int) -> dict[str, Any]:
        return {"access_token": f"at-{n}", "refresh_token": f"rt-{n}", "token_type": "bearer",
                "expires_in": self.lifetime, "expires_at": self.clock.time() + self.lifetime}

    def refresh(self, refresh_token: str, *, on_late_grant: Any = None) -> dict[str, Any]:
        self.spent.append(refresh_token)
        if self.fail_with is not None:
            raise self.fail_with
        if refresh_token not in self.live:
            raise ReauthorizationRequired("Value passed for the token was invalid.")
        self.live.discard(refresh_token)
        self.count += 1
        self.live.add(f"rt-{self.count}")
        return self.pair(self.count)

    def wait_for_late_answers(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass
