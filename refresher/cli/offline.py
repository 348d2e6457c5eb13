"""``refresher emulator`` and ``refresher demo``: everything offline, against the X emulator.

``emulator`` serves it in the foreground (the loop of :mod:`refresher.testing.serve`, as
``python -m refresher.testing`` does) and prints the settings that point refresher at it;
``demo`` runs the whole story against one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from typing import TYPE_CHECKING

from ..loopback import DEFAULT_REDIRECT_URI
from ..shutdown import EXIT_STATUS
from .common import Failure

if TYPE_CHECKING:
    from ..testing import XEmulator

__all__ = ["banner", "emulator_store", "run_demo", "run_emulator"]


def run_emulator(args: argparse.Namespace) -> int:
    """``refresher emulator``: serve the emulator until Ctrl-C or SIGTERM; then exit 0."""
    # The emulator is imported on demand: the other commands never need it.
    from ..testing import XEmulator
    from ..testing.serve import rate_limit_arguments, registered_redirect_uris, serve

    redirect_uris = registered_redirect_uris(args.redirect_uris, args.any_loopback_redirect)
    emulator = XEmulator(host="127.0.0.1", port=args.port, access_ttl=args.access_ttl,
                         redirect_uris=redirect_uris,
                         **rate_limit_arguments(getattr(args, "rate_limits", None)))
    try:
        emulator.start()  # here, to tell a port in use apart from any other failure
    except OSError as exc:
        raise Failure(
            f"cannot serve the emulator on 127.0.0.1:{args.port}: {exc.strerror}; choose "
            "another port with --port (0: any free port)"
        ) from None
    # The login's callback: the one asked for, else the login's default (registered first).
    callback = (args.redirect_uris or [DEFAULT_REDIRECT_URI])[0]
    serve(emulator, lambda x: print(banner(x, redirect_uris, callback), flush=True))
    print("X emulator stopped.", file=sys.stderr)
    return 0


def banner(emulator: XEmulator, redirect_uris: list[str] | None, callback: str) -> str:
    """What ``refresher emulator`` prints: its callback URLs, and the lines to run in another
    shell (the ``export`` lines that point refresher at it, every one, the store included,
    and the login), and how to finish the login without a browser."""
    from ..testing import DEFAULT_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_ID
    from ..testing.emulator import DEFAULT_USER

    if redirect_uris is None:
        registered = ("Callback URLs: any http one on this machine (--any-loopback-redirect; "
                      "X accepts only the one registered with the app, exactly).")
    else:
        registered = (f"Registered callback URL{'s' if len(redirect_uris) > 1 else ''}: "
                      f"{', '.join(redirect_uris)} (as at X, the authorize page refuses any "
                      "other: another port, localhost for 127.0.0.1).")
    settings = [
        ("REFRESHER_CLIENT_ID", DEFAULT_CLIENT_ID),
        ("REFRESHER_AUTHORIZE_URL", emulator.authorize_url),
        ("REFRESHER_TOKEN_URL", emulator.token_url),
        ("REFRESHER_REVOKE_URL", emulator.revoke_url),
        ("REFRESHER_API_URL", emulator.api_url),
        ("REFRESHER_REDIRECT_URI", callback),
        ("REFRESHER_STORE", emulator_store()),
    ]
    lines = [
        f"X emulator serving on {emulator.url} (access tokens live {emulator.access_ttl:g} s; "
        f"every login is approved at once as @{DEFAULT_USER['username']}).",
        registered,
        *_rate_limits_line(emulator),
        "",
        "Point refresher at it, in another shell:",
        "",
        *(f"    export {name}={shlex.quote(value)}" for name, value in settings),
        "    refresher login --account alice",
        "",
        "The login opens the authorize page in a browser, which approves at once. Without a "
        "browser (SSH, a container), finish it from a third shell with: curl -sSL "
        "'THE-URL-THE-LOGIN-PRINTS'",
        "",
        f"Public client: {DEFAULT_CLIENT_ID}. Confidential client: "
        f"{DEFAULT_CONFIDENTIAL_CLIENT_ID} (its test secret is "
        "refresher.testing.DEFAULT_CLIENT_SECRET; no secret is ever printed).",
        f"Counters: {emulator.url}/emulator/stats. Stop with Ctrl-C.",
    ]
    return "\n".join(lines)


def _rate_limits_line(emulator: XEmulator) -> list[str]:
    if not emulator.enforce_rate_limits:
        return []
    return [f"Rate limits enforced: {emulator.rate_limit} calls per {emulator.rate_window:g} s "
            "per user and endpoint, then HTTP 429 until the window resets (try "
            "wait_on_rate_limit=True)."]


def emulator_store() -> str:
    """The token store ``refresher emulator`` proposes: a JSON file in the temporary folder
    (``$TMPDIR``), kept apart from the default store where real accounts live."""
    return os.path.join(tempfile.gettempdir(), "refresher-emulator-tokens.json")


def run_demo(args: argparse.Namespace) -> int:
    """``refresher demo``: the offline demo; exit 0 only when nothing failed, 130 when
    interrupted (Ctrl-C), 143 when terminated (SIGTERM), after the counts so far."""
    from .. import demo

    result = demo.run_demo(processes=args.processes, threads=args.threads,
                           seconds=args.seconds, access_ttl=args.access_ttl, store=args.store,
                           force=args.force, progress=sys.stderr)
    if args.json:
        print(json.dumps(result.public()))
    else:
        print(demo.format_table(result))
    for error in result.errors[:5]:
        print(f"refresher: worker error: {error.strip()}", file=sys.stderr)
    if result.interrupted:
        how = "terminated (SIGTERM)" if result.terminated else "interrupted"
        print(f"refresher: {how} after {result.summary['seconds']:g} s: the counts "
              "above are those so far", file=sys.stderr)
        return EXIT_STATUS if result.terminated else 130
    return 0 if result.ok else 1
