"""TokenLedger: which access tokens a coordinator handed out, and which endpoints refused them.

The 401/403 rule needs two memories, both bounded: whether a token is one this process sent
(a 401 to someone else's token is none of our business) and whether it came from a refresh
here (a 403 to such a token is not about its age); and the 401 brake, the (token, endpoint)
pairs that answered 401 even right after a refresh.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["TokenLedger"]


class TokenLedger:
    """Bounded memories of handed-out tokens (``tokens``) and braked endpoints (``refusals``)."""

    def __init__(self, tokens: int = 32, refusals: int = 64) -> None:
        self._tokens = tokens
        self._refusals = refusals
        # access token -> True if it came from a refresh or an adoption in this process
        self._issued: OrderedDict[str, bool] = OrderedDict()
        self._refused: OrderedDict[tuple[str, str], None] = OrderedDict()

    def record(self, access_token: str, *, refreshed_here: bool) -> None:
        """``access_token`` is the one requests are sent with from now on."""
        self._issued[access_token] = refreshed_here or self._issued.get(access_token, False)
        self._issued.move_to_end(access_token)
        while len(self._issued) > self._tokens:
            self._issued.popitem(last=False)

    def handed_out(self, access_token: str) -> bool:
        """Whether this process sent ``access_token`` (lately)."""
        return access_token in self._issued

    def refreshed_here(self, access_token: str) -> bool:
        """Whether ``access_token`` came from a refresh or an adoption in this process."""
        return self._issued.get(access_token, False)

    def brake(self, access_token: str, endpoint: str) -> None:
        """``endpoint`` answered 401 to ``access_token`` even right after a refresh."""
        key = (access_token, endpoint)
        self._refused[key] = None
        self._refused.move_to_end(key)
        while len(self._refused) > self._refusals:
            self._refused.popitem(last=False)

    def braked(self, access_token: str, endpoint: str) -> bool:
        """Whether 401s from ``endpoint`` to ``access_token`` are on the brake."""
        return (access_token, endpoint) in self._refused
