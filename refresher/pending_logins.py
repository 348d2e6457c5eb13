"""Logins under way, kept in a token store: any worker sharing it can finish what another began.

Between the redirect to X and the callback, a login has a ``state``, a PKCE code verifier,
a redirect URI and scopes to remember. A web app with several workers (gunicorn -w 4, or
several hosts) cannot keep them in one process's memory: the callback may reach another
worker. :class:`PendingLogins` keeps them in a :class:`~refresher.TokenStore` (memory, JSON,
SQL, Redis, or your own), for ``ttl`` seconds (ten minutes unless told), and hands each
out once.

Where. One entry of the store, named ``refresher:pending-logins``: a name refresher keeps
for itself (:mod:`refresher.stores.reserved`), never listed or accepted as an account. Its
token slot (not its metadata: the verifier is a secret, and a store that encrypts tokens
encrypts it too) maps a digest of each state to its login. One entry rather than one per
login, because a JSON store keeps a lock file per name it ever locked, and dropping the
logins nobody finished would need a listing of reserved names that the five methods of a
store do not give.

Bounds. Every write (a new link, a callback) drops the logins past their time, and the
entry goes when it is empty (a SQL row, a Redis key). So a store holds the logins begun in
the ``ttl`` before its last write, and never more than :data:`MAX_PENDING_LOGINS`, the
oldest going first (someone loading ``/login`` in a loop cannot grow it without end; they
can push out real logins, which then start again: rate-limit ``/login`` as any endpoint
that writes).

Once. :meth:`PendingLogins.take` reads the login and writes the entry without it under the
entry's lock, before any code is exchanged: of two workers handed the same callback, one
gets the login, the other a :class:`~refresher.LoginError`, and the code is sent once at
most. An unknown, expired or already used state is a :class:`~refresher.LoginError` too,
and spends nothing.

Expiry is judged on the wall clock (shared between hosts, unlike a monotonic one): hosts
whose clocks disagree by a minute shift a ten-minute limit by a minute.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigurationError, LoginError
from .login_link import AuthorizationLink
from .stores.base import TokenStore
from .stores.sealed import refuse_sealed

__all__ = ["PendingLogin", "PendingLogins", "PENDING_LOGINS", "DEFAULT_PENDING_TTL",
           "MAX_PENDING_LOGINS"]

log = logging.getLogger("refresher.login")

#: The store entry that holds the logins under way.
PENDING_LOGINS = "refresher:pending-logins"
#: Seconds a login may take, from the link to the callback, unless told otherwise.
DEFAULT_PENDING_TTL = 600.0
#: The most logins one store keeps under way; beyond, the oldest go.
MAX_PENDING_LOGINS = 1000
#: Seconds to wait for the entry's lock (held for one read and one write at a time).
_LOCK_TIMEOUT = 10.0


@dataclass(frozen=True)
class PendingLogin:
    """What a login keeps until its callback; ``repr`` leaves the verifier out."""

    code_verifier: str = field(repr=False)
    redirect_uri: str
    scopes: tuple[str, ...]
    expires_at: float


class PendingLogins:
    """The logins under way of ``store``, each kept ``ttl`` seconds and handed out once.

    >>> from refresher import MemoryTokenStore
    >>> from refresher.login_link import new_link
    >>> pending = PendingLogins(MemoryTokenStore())
    >>> link = new_link("https://x.com/i/oauth2/authorize", "id", "http://127.0.0.1/cb",
    ...                 ("users.read",))
    >>> pending.put(link)
    >>> pending.take(link.state).scopes
    ('users.read',)
    >>> pending.take(link.state)
    Traceback (most recent call last):
    ...
    refresher.errors.LoginError: no login under way has this state: ...
    """

    def __init__(self, store: TokenStore, *, ttl: float = DEFAULT_PENDING_TTL,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        if not ttl > 0:
            raise ConfigurationError(f"pending_ttl must be a positive number of seconds, "
                                     f"not {ttl!r}")
        self.store = store
        self.ttl = float(ttl)
        self.clock = clock

    def __repr__(self) -> str:
        return f"PendingLogins({self.store!r}, ttl={self.ttl:g})"

    def put(self, link: AuthorizationLink) -> None:
        """Keep ``link``'s login until its callback, or ``ttl`` seconds.

        A state that a login under way already has is a
        :class:`~refresher.ConfigurationError`: each login needs its own.
        """
        key = _key(link.state)
        with self._logins() as logins:
            if key in logins:
                raise ConfigurationError(
                    "a login under way already has this state: choose a new state for each "
                    "login (a random part, plus what you need to carry)"
                )
            logins[key] = {"code_verifier": link.code_verifier,
                           "redirect_uri": link.redirect_uri, "scopes": list(link.scopes),
                           "expires_at": self.clock.time() + self.ttl}
            _drop_oldest(logins)

    def take(self, state: str) -> PendingLogin:
        """The login of ``state``, removed from the store; :class:`~refresher.LoginError`
        when none is under way (unknown, finished already, or expired)."""
        with self._logins(keep_expired=_key(state)) as logins:
            found = logins.pop(_key(state), None)
        if not isinstance(found, dict):
            raise LoginError(
                "no login under way has this state: it was finished already (the callback "
                "opened twice), it expired, or it began with another store; start the login "
                "again"
            )
        try:
            login = PendingLogin(str(found["code_verifier"]), str(found["redirect_uri"]),
                                 tuple(found["scopes"]), float(found["expires_at"]))
        except (KeyError, TypeError, ValueError):
            raise LoginError("the login under way with this state was stored damaged; start "
                             "the login again") from None
        if login.expires_at <= self.clock.time():
            raise LoginError(
                f"this login began more than {self.ttl:g} seconds ago (pending_ttl) and has "
                "expired; start the login again"
            )
        return login

    @contextmanager
    def _logins(self, keep_expired: str | None = None) -> Iterator[dict[str, Any]]:
        """The logins under way, to change in the block: read under the entry's lock,
        written back (without the expired, except ``keep_expired``) when the block ends."""
        with self.store.lock(PENDING_LOGINS, timeout=_LOCK_TIMEOUT):
            stored = self.store.load(PENDING_LOGINS) or {}
            # Encrypted by a worker with the key: never read as "none", nor written over.
            refuse_sealed(stored, PENDING_LOGINS, repr(self.store))
            logins = stored.get("logins")
            logins = dict(logins) if isinstance(logins, dict) else {}
            before = dict(logins)
            now = self.clock.time()
            for key, login in before.items():
                if key != keep_expired and not _alive(login, now):
                    del logins[key]
            yield logins
            if logins == before:
                return
            if logins:
                self.store.save(PENDING_LOGINS, {"logins": logins})
            else:
                self.store.delete(PENDING_LOGINS)


def _key(state: str) -> str:
    """Where a state's login is kept: a digest (fixed length, any state, not the state)."""
    return hashlib.sha256(state.encode("utf-8")).hexdigest()[:32]


def _alive(login: Any, now: float) -> bool:
    try:
        return bool(float(login["expires_at"]) > now)
    except (KeyError, TypeError, ValueError):
        return False  # damaged: nobody can finish it


def _drop_oldest(logins: dict[str, Any]) -> None:
    excess = len(logins) - MAX_PENDING_LOGINS
    if excess <= 0:
        return
    for key in sorted(logins, key=lambda k: float(logins[k]["expires_at"]))[:excess]:
        del logins[key]
    log.warning("more than %d logins under way in one store: the %d oldest were dropped "
                "(their callbacks will be refused); is /login called in a loop?",
                MAX_PENDING_LOGINS, excess)
