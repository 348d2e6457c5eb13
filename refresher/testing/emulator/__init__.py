"""An emulator of X's OAuth 2.0 endpoints and a few API v2 endpoints, over real HTTP.

It follows the rules in X's documentation and the behaviour observed in the wild: PKCE codes
that live 30 seconds and serve once, refresh tokens that rotate and die when spent, Basic
authentication for confidential clients, problem+json 401/403/429 answers. It accepts what X
accepts (``s256``, short ``plain`` challenges, revocation without ``token_type_hint``) and
refuses with X's own words (a code verifier that does not match the challenge). On top of that it
counts what clients do (see :class:`EmulatorStats`) and lets tests misbehave on purpose:
expire or revoke tokens, fail or slow down the token endpoint. It reads the time from a
:class:`refresher.clock.Clock` (``clock=``), so a test can share a
:class:`~refresher.testing.clock.FakeClock` with a session and move time on instead of sleeping.

:class:`XEmulator` is the one public class; it is put together from one module per job:

- ``_emulator``: :class:`XEmulator` itself: settings, start and stop, URLs, the route table.
- ``_server``: the HTTP/1.1 server: framing, chunked bodies, ``TCP_NODELAY``, trickled
  answers, tracking connections so that stopping cuts them.
- ``_oauth``: the OAuth side: authorize page, token endpoint (code exchange with PKCE,
  refresh with rotation, client authentication), revocation.
- ``_api``: the API side: ``/2/users/me`` (with X's rate limit, enforced on request),
  ``/2/tweets``, the 403 naming a missing scope, and the ``/2/emulator/`` diagnostic routes
  (echo, kinds of 403, redirect, 401 to every token).
- ``_media``: X's chunked v2 media upload, ``POST /2/media/upload`` (INIT, APPEND with a
  multipart chunk, FINALIZE; ``media.write``), recording every chunk it accepts.
- ``_controls``: what tests do behind clients' backs: issue, expire, revoke and inspect
  tokens; make the token endpoint fail, wait or trickle.
- ``_stats``: :class:`EmulatorStats` and the counters behind :attr:`XEmulator.stats`.
- ``_state``: the records every side shares (clients, users, codes, tokens), their lock,
  and the default clients and user.
- ``_messages``: the request and response values between the server and the sides (form
  and multipart bodies), and the shapes of X's answers.

Only the standard library is used: the emulator ships inside refresher.
"""

from __future__ import annotations

from refresher.testing.emulator._emulator import XEmulator
from refresher.testing.emulator._state import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_CONFIDENTIAL_CLIENT_ID,
    DEFAULT_USER,
)
from refresher.testing.emulator._stats import EmulatorStats

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_CONFIDENTIAL_CLIENT_ID",
    "DEFAULT_USER",
    "EmulatorStats",
    "XEmulator",
]
