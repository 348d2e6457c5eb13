"""``refresher emulator`` and ``refresher demo``: everything offline, against the X emulator.

``emulator`` serves it in the foreground (the loop of :mod:`refresher.testing.serve`, as
``python -m refresher.testing`` does) and prints the settings that point refresher at it;
``demo`` runs the whole story against one.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .common import Failure

if TYPE_CHECKING:
    from ..testing import XEmulator

__all__ = ["run_demo", "run_emulator"]


def run_emulator(args: argparse.Namespace) -> int:
    """``refresher emulator``: serve the emulator until Ctrl-C or SIGTERM; then exit 0."""
    # The emulator is imported on demand: the other commands never need it.
    from ..testing import XEmulator
    from ..testing.serve import serve

    emulator = XEmulator(host="127.0.0.1", port=args.port, access_ttl=args.access_ttl)
    try:
        emulator.start()  # here, to tell a port in use apart from any other failure
    except OSError as exc:
        raise Failure(
            f"cannot serve the emulator on 127.0.0.1:{args.port}: {exc.strerror}; choose "
            "another port with --port (0: any free port)"
        ) from None
    serve(emulator, _announce)
    print("X emulator stopped.", file=sys.stderr)
    return 0


def _announce(emulator: XEmulator) -> None:
    """The emulator's URLs, as the ``export`` lines that point refresher at it."""
    from ..testing import DEFAULT_CLIENT_ID, DEFAULT_CONFIDENTIAL_CLIENT_ID
    from ..testing.emulator import DEFAULT_USER

    lines = [
        f"X emulator serving on {emulator.url} (access tokens live {emulator.access_ttl:g} s; "
        f"every login is approved at once as @{DEFAULT_USER['username']}).",
        "",
        "Point refresher at it, in another shell:",
        "",
        f"    export REFRESHER_CLIENT_ID={DEFAULT_CLIENT_ID}",
        f"    export REFRESHER_AUTHORIZE_URL={emulator.authorize_url}",
        f"    export REFRESHER_TOKEN_URL={emulator.token_url}",
        f"    export REFRESHER_REVOKE_URL={emulator.revoke_url}",
        f"    export REFRESHER_API_URL={emulator.api_url}",
        "    refresher login --no-browser --store /tmp/emulated-tokens.json",
        "",
        f"Public client: {DEFAULT_CLIENT_ID}. Confidential client: "
        f"{DEFAULT_CONFIDENTIAL_CLIENT_ID} (its test secret is "
        "refresher.testing.DEFAULT_CLIENT_SECRET; no secret is ever printed).",
        f"Counters: {emulator.url}/emulator/stats. Stop with Ctrl-C.",
    ]
    print("\n".join(lines), flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """``refresher demo``: the offline demo; exit 0 only when nothing failed."""
    from .. import demo

    result = demo.run_demo(processes=args.processes, threads=args.threads,
                           seconds=args.seconds, access_ttl=args.access_ttl, store=args.store,
                           progress=sys.stderr)
    if args.json:
        print(json.dumps(result.public()))
    else:
        print(demo.format_table(result))
    for error in result.errors[:5]:
        print(f"refresher: worker error: {error.strip()}", file=sys.stderr)
    return 0 if result.ok else 1
