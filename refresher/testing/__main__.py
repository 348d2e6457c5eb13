"""Serve an :class:`~refresher.testing.XEmulator` until Ctrl-C or SIGTERM.

``python -m refresher.testing [--host 127.0.0.1] [--port 0] [--access-ttl 7200]
[--redirect-uri URL]... [--any-loopback-redirect] [--rate-limits [CALLS/SECONDS]]`` prints
one line of JSON with the URLs, client ids and registered callback URLs
(``redirect_uris``; ``null``: any loopback one) first, so that a parent process can read
it, then logs requests to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from refresher.testing import DEFAULT_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_ID, XEmulator
from refresher.testing.serve import (
    RATE_LIMITS_HELP,
    X_RATE_LIMITS,
    add_redirect_options,
    parse_rate_limits,
    rate_limit_arguments,
    registered_redirect_uris,
    serve,
)

log = logging.getLogger("refresher.testing")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refresher.testing",
        description="Serve an emulator of X's OAuth 2.0 and API v2 endpoints.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--access-ttl", type=float, default=7200.0,
                        help="lifetime of access tokens in seconds")
    parser.add_argument("--code-ttl", type=float, default=30.0,
                        help="lifetime of authorization codes in seconds")
    parser.add_argument("--invalidate-access-on-refresh", action="store_true",
                        help="a refresh also kills the previous access token")
    add_redirect_options(parser)
    parser.add_argument("--rate-limits", nargs="?", const=parse_rate_limits(X_RATE_LIMITS),
                        type=parse_rate_limits, metavar="CALLS/SECONDS", help=RATE_LIMITS_HELP)
    parser.add_argument("--log-level", default="DEBUG",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="DEBUG shows every request")
    return parser


def _announce(emulator: XEmulator, redirect_uris: list[str] | None) -> None:
    """One line of JSON on stdout, for a parent process to read; then the log on stderr."""
    endpoints = {
        "url": emulator.url,
        "token_url": emulator.token_url,
        "authorize_url": emulator.authorize_url,
        "revoke_url": emulator.revoke_url,
        "api_url": emulator.api_url,
        "client_id": DEFAULT_CLIENT_ID,
        "confidential_client_id": DEFAULT_CONFIDENTIAL_CLIENT_ID,
        "redirect_uris": redirect_uris,
    }
    sys.stdout.write(json.dumps(endpoints) + "\n")
    sys.stdout.flush()
    log.info("X emulator serving on %s", emulator.url)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the emulator until SIGINT or SIGTERM; return the exit status (0)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redirect_uris = registered_redirect_uris(args.redirect_uris, args.any_loopback_redirect)
    emulator = XEmulator(
        host=args.host,
        port=args.port,
        access_ttl=args.access_ttl,
        code_ttl=args.code_ttl,
        invalidate_access_on_refresh=args.invalidate_access_on_refresh,
        redirect_uris=redirect_uris,
        **rate_limit_arguments(args.rate_limits),
    )
    serve(emulator, lambda x: _announce(x, redirect_uris))
    return 0


if __name__ == "__main__":
    sys.exit(main())
