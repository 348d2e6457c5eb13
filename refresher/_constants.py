"""X's OAuth 2.0 endpoints and the defaults refresher uses with them."""

from __future__ import annotations

X_API_URL = "https://api.x.com"
X_TOKEN_URL = "https://api.x.com/2/oauth2/token"
X_AUTHORIZE_URL = "https://x.com/i/oauth2/authorize"
X_REVOKE_URL = "https://api.x.com/2/oauth2/revoke"

#: Scopes that let a session call ``/2/users/me`` and get a refresh token.
DEFAULT_SCOPES = ("tweet.read", "users.read", "offline.access")

#: Refresh this many seconds before ``expires_at`` unless told otherwise.
DEFAULT_LEEWAY = 60.0
#: ...but never earlier than this fraction of the token's lifetime before expiry, so that
#: short-lived tokens (the emulator's 1-second ones) do not refresh on every request.
LEEWAY_MAX_FRACTION = 0.1

#: Seconds to wait for one answer of the token endpoint.
DEFAULT_TIMEOUT = 10.0
#: Seconds to wait for an API answer in the calls refresher makes itself (``me()``).
DEFAULT_API_TIMEOUT = 30.0
#: Seconds one grant may take, retries and backoff included: well under the stores' lock
#: lifetimes (the Redis lock's 30 s), so a slow X cannot make a holder outlive its lock.
DEFAULT_DEADLINE = 15.0
#: A store lock that lapses by itself (Redis' lock_ttl) must outlive a grant's deadline by
#: this many seconds, for the store read before the grant and the save after it.
LOCK_TTL_MARGIN = 5.0

#: An API 429 is waited out until ``x-rate-limit-reset`` plus this many seconds: the reset is
#: a whole second on X's clock, which may run ahead of ours.
RATE_LIMIT_MARGIN = 1.0
