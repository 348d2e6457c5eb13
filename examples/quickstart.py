"""The quick start, run against the built-in X emulator: no account, no network.

A JSON token store, a RefreshingSession, and calls that outlive several access tokens
(the emulator's tokens live 2 seconds here instead of X's 2 hours).

    python examples/quickstart.py
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import refresher
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with XEmulator(access_ttl=2.0) as x, tempfile.TemporaryDirectory() as folder:
        store = refresher.JSONTokenStore(Path(folder) / "tokens.json")
        session = refresher.RefreshingSession(
            DEFAULT_CLIENT_ID,
            store=store,
            account="me",
            token=x.issue_token(),  # in real life: the token from `refresher login`
            token_url=x.token_url,
            api_base_url=x.api_url,
        )
        print(session)
        ok = 0
        deadline = time.time() + 7
        while time.time() < deadline:
            user = session.me()  # GET /2/users/me with a live token, always
            ok += 1
            time.sleep(0.05)
        stats = x.stats
        print(f"{ok} calls as @{user['username']}, {stats.refreshes} refreshes, "
              f"{stats.unauthorized} unauthorized, {stats.reused_refresh_tokens} reused")
        print(session)
        return 0 if stats.reused_refresh_tokens == 0 and stats.unauthorized == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
