"""The client secret of a confidential client, never echoed and never required in ``argv``.

``--client-secret -`` reads it from stdin (one line), ``--client-secret`` alone prompts for
it without echo, ``$REFRESHER_CLIENT_SECRET`` holds it; ``--client-secret VALUE`` works but
is warned about (``ps`` and shell history show it).
"""

from __future__ import annotations

import getpass
import os
import sys

from ..settings import ENVIRONMENT
from .common import UsageError

__all__ = ["PROMPT", "read_client_secret"]

#: The value of ``--client-secret`` given without one: prompt for the secret.
PROMPT = object()


def read_client_secret(given: str | object | None, *, needed: bool,
                       client_id: str) -> str | None:
    """The secret as ``--client-secret`` says (``given``: :data:`PROMPT`, ``"-"``, a value
    or ``None``), else ``$REFRESHER_CLIENT_SECRET``; ``None`` for a public client.

    When the client is confidential (``needed``) and no secret was given, a terminal is
    prompted; otherwise a :class:`~refresher.cli.common.UsageError` says how to give it.

    >>> read_client_secret(PROMPT, needed=True, client_id="my-client")  # doctest: +SKIP
    Client secret of my-client:
    """
    secret: str | None
    if given is PROMPT:
        secret = getpass.getpass(f"Client secret of {client_id}: ")
    elif given == "-":
        secret = sys.stdin.readline().strip()
        if not secret:
            raise UsageError("--client-secret -: no secret on stdin (pipe it in, one line)")
    elif isinstance(given, str) and given:
        secret = given
        print("refresher: warning: a secret on the command line is visible to `ps` and kept "
              "in shell history; prefer --client-secret - (stdin), --client-secret (prompt) "
              "or REFRESHER_CLIENT_SECRET", file=sys.stderr)
    else:
        secret = os.environ.get(ENVIRONMENT["client_secret"]) or None
    if needed and not secret:
        if sys.stdin.isatty():
            secret = getpass.getpass(f"Client secret of {client_id}: ")
        if not secret:
            raise UsageError(
                f"{client_id} is a confidential client: give its secret with --client-secret - "
                "(stdin), --client-secret (prompt) or REFRESHER_CLIENT_SECRET"
            )
    return secret or None
