"""What a fault-matrix cell runs on: a store of each kind, a front end of each kind, an
emulator of its own, and the count that ends every cell (lost pairs, reused tokens).

Shared by ``benchmarks/fault_matrix.py`` and ``tests/test_fault_matrix.py``; the scenarios
themselves are in ``_matrix_faults.py`` and ``_matrix_procs.py``, the registry in
``_matrix.py``. Everything here is real: loopback HTTP to an :class:`XEmulator`, a JSON
file, a SQLite file, a PostgreSQL and a Redis server (shared by the cells, each cell in a
table, key prefix or folder of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refresher import (
    JSONTokenStore,
    RefresherError,
    RefreshingSession,
    RefreshPolicy,
    TokenStore,
)
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator

STORES = ("json", "sqlite", "postgresql", "redis")
FRONTS = ("requests", "httpx", "httpx-async", "aiohttp")
ACCOUNT = "matrix"

#: A cell's token endpoint deadline: short, so that a fault which waits for it costs little,
#: and long enough that connecting and answering on a busy machine (cells side by side,
#: another test beside them) fit in it: a grant that missed it fails a survivor's refresh.
DEADLINE = 1.5
#: The shortest lease a session takes with that deadline (deadline + 5 s): a SQL lease or a
#: Redis lock lapses this long after its holder died or hung.
LOCK_TTL = DEADLINE + 5.0
#: Longest wait for a lock: a dead holder's lease, plus slack on a busy machine.
LOCK_TIMEOUT = LOCK_TTL + 10.0
#: Only for "did not hang": never a speed.
BOUND = 30.0


def policy(**changes: Any) -> RefreshPolicy:
    """A cell's policy: the short deadline, and pools large enough that cells running side
    by side in one process never queue behind each other's stuck token requests."""
    base = RefreshPolicy(token_deadline=DEADLINE, lock_timeout=LOCK_TIMEOUT,
                         token_request_threads=64, background_threads=16)
    return base.replace(**changes) if changes else base


# -- stores -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreSpec:
    """Where a cell's store lives; ``open()`` makes a store object on it (each one is what
    another process or host would have). Plain data: a child process gets it as JSON."""

    kind: str
    where: str                    # a file path, or a server URL
    name: str = ""                # the SQL table or the Redis key prefix of the cell
    admin: str = ""               # a URL to take the store down with (Redis: the admin's)

    def open(self, lock_ttl: float = LOCK_TTL, clock: Any = None) -> TokenStore:
        if self.kind == "json":
            return JSONTokenStore(self.where)
        if self.kind in ("sqlite", "postgresql"):
            from refresher import SQLTokenStore

            return SQLTokenStore(self.where, table=self.name, lock_ttl=lock_ttl, clock=clock)
        if self.kind == "redis":
            from refresher import RedisTokenStore

            return RedisTokenStore(self.where, prefix=self.name, lock_ttl=lock_ttl)
        raise ValueError(f"unknown store kind {self.kind!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StoreSpec:
        return cls(**json.loads(text))


@dataclass
class Servers:
    """The servers the cells share (``None``: that store is not available here) and a
    folder for the file stores."""

    folder: Path
    postgres_url: str | None = None
    redis_url: str | None = None

    def spec(self, kind: str, cell: str) -> StoreSpec:
        """A new, empty place for ``cell``'s store of ``kind``."""
        tag = "c" + uuid.uuid4().hex[:10]
        if kind == "json":
            folder = self.folder / cell / tag / "store"
            folder.mkdir(parents=True)
            return StoreSpec(kind, str(folder / "tokens.json"))
        if kind == "sqlite":
            folder = self.folder / cell / tag
            folder.mkdir(parents=True)
            return StoreSpec(kind, f"sqlite:///{folder / 'tokens.db'}", name=tag)
        if kind == "postgresql":
            if self.postgres_url is None:
                raise Missing("no PostgreSQL server here")
            return StoreSpec(kind, self.postgres_url, name=tag)
        if kind == "redis":
            if self.redis_url is None:
                raise Missing("no redis-server here")
            return _redis_user(self.redis_url, tag)
        raise ValueError(f"unknown store kind {kind!r}")


class Missing(Exception):
    """Something a cell needs is not installed here (a server): the cell is not run."""


def _redis_user(admin_url: str, tag: str) -> StoreSpec:
    """A Redis ACL user of the cell's own (so that taking the store down for it, by taking
    its rights away, touches no other cell on the shared server)."""
    import redis

    client = redis.Redis.from_url(admin_url)
    try:
        client.acl_setuser(tag, enabled=True, passwords=["+pw-" + tag], keys=["*"],
                           channels=["*"], commands=["+@all"], reset=True)
    finally:
        client.close()
    user_url = admin_url.replace("redis://", f"redis://{tag}:pw-{tag}@", 1)
    return StoreSpec("redis", user_url, name=f"m:{tag}:", admin=admin_url)


class Outage:
    """The store of ``spec`` down and back up, as every store can be: the JSON file's folder
    replaced by a file, the SQL table renamed away (every statement on it fails as on a
    database that is gone), the Redis user's rights taken away (every command refused)."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self.down_now = False

    def down(self) -> None:
        kind, spec = self.spec.kind, self.spec
        if kind == "json":
            folder = Path(spec.where).parent
            folder.rename(str(folder) + ".away")
            folder.write_text("not a folder: the store is down\n")
        elif kind in ("sqlite", "postgresql"):
            self._sql(f'ALTER TABLE "{spec.name}" RENAME TO "{spec.name}_away"')
        elif kind == "redis":
            self._acl("-@all")
        self.down_now = True

    def up(self) -> None:
        if not self.down_now:
            return
        kind, spec = self.spec.kind, self.spec
        if kind == "json":
            folder = Path(spec.where).parent
            folder.unlink()
            Path(str(folder) + ".away").rename(folder)
        elif kind in ("sqlite", "postgresql"):
            self._sql(f'ALTER TABLE "{spec.name}_away" RENAME TO "{spec.name}"')
        elif kind == "redis":
            self._acl("+@all")
        self.down_now = False

    def _sql(self, statement: str) -> None:
        if self.spec.kind == "sqlite":
            connection = sqlite3.connect(self.spec.where[len("sqlite:///"):], timeout=BOUND)
            try:
                connection.execute(statement)
                connection.commit()
            finally:
                connection.close()
            return
        import sqlalchemy as sa

        engine = sa.create_engine(self.spec.where.replace("postgresql://",
                                                          "postgresql+psycopg://", 1))
        try:
            with engine.begin() as connection:
                connection.execute(sa.text(statement))
        finally:
            engine.dispose()

    def _acl(self, rule: str) -> None:
        import redis

        user = self.spec.name.split(":")[1]
        client = redis.Redis.from_url(self.spec.admin)
        try:
            client.execute_command("ACL", "SETUSER", user, rule)
        finally:
            client.close()


# -- the emulator -----------------------------------------------------------------------------

class Emulator(XEmulator):
    """The X emulator, with a hook run when X has rotated a pair (before it answers): where
    a test makes something happen "while X is answering"."""

    on_rotate: Callable[[], None] | None = None

    def _refresh_token(self, form: Any, client_id: str) -> Any:
        answer = super()._refresh_token(form, client_id)
        hook = self.on_rotate
        if answer.status == 200 and hook is not None:
            hook()
        return answer

    def in_flight(self) -> int:
        """Token requests received and not yet decided."""
        s = self.stats
        return s.token_requests - s.exchanges - s.refreshes - s.invalid_refresh_tokens

    def live_refresh_tokens(self) -> set[str]:
        return {secret for secret in self.issued_secrets()
                if self.refresh_token_state(secret) == "live"}


# -- front ends -------------------------------------------------------------------------------

class Front:
    """One front end of ``kind`` (requests, httpx sync or async, aiohttp) on a store: what
    a program of that kind would build, and a blocking ``get`` through it."""

    def __init__(self, kind: str, **arguments: Any) -> None:
        self.kind = kind
        if kind == "requests":
            self.front: Any = RefreshingSession(arguments.pop("client_id"), **arguments)
        elif kind in ("httpx", "httpx-async"):
            from refresher.httpx import RefreshingAuth

            self.front = RefreshingAuth(**arguments)
        elif kind == "aiohttp":
            from refresher.aiohttp import RefreshingMiddleware

            self.front = RefreshingMiddleware(**arguments)
        else:
            raise ValueError(f"unknown front end {kind!r}")

    @property
    def coordinator(self) -> Any:
        return self.front.coordinator

    @property
    def token(self) -> dict[str, Any]:
        return dict(self.front.token or {})

    def get(self, url: str) -> int:
        """GET ``url`` through the front end; its status (a refresh failure raises)."""
        if self.kind == "requests":
            return int(self.front.get(url, timeout=BOUND).status_code)
        if self.kind == "httpx":
            import httpx

            with httpx.Client(auth=self.front, timeout=BOUND) as client:
                return int(client.get(url).status_code)
        return asyncio.run(self._async_get(url))

    async def _async_get(self, url: str) -> int:
        if self.kind == "httpx-async":
            import httpx

            async with httpx.AsyncClient(auth=self.front, timeout=BOUND) as client:
                return int((await client.get(url)).status_code)
        import aiohttp

        async with aiohttp.ClientSession(middlewares=[self.front]) as session:
            async with session.get(url) as response:
                return int(response.status)

    def close(self) -> None:
        self.front.close()


# -- a cell's lab -----------------------------------------------------------------------------

class NotExercised(AssertionError):
    """The scenario ran, but the fault did not happen as it should have: the cell proves
    nothing (it fails rather than pass vacuously)."""


@dataclass
class Count:
    """What a cell ends with: pairs X granted that nothing holds (``lost``), refresh tokens
    sent again after X spent them (``reused``, X's count), and the facts behind them."""

    lost: int
    reused: int
    facts: dict[str, Any] = field(default_factory=dict)


class Lab:
    """One cell's world: its emulator, its store (``spec``: open as many store objects on it
    as there are processes in the story), its front ends; :meth:`count` at the end."""

    def __init__(self, store: str, front: str | None, servers: Servers, cell: str,
                 **emulator: Any) -> None:
        self.kind, self.front_kind, self.servers, self.cell = store, front or "requests", \
            servers, cell
        self.spec = servers.spec(store, cell)
        self.x = Emulator(**emulator).start()
        self.api = self.x.api_url + "/2/users/me"
        self._fronts: list[Front] = []
        self._stores: list[TokenStore] = []
        self.events: list[str] = []
        self._lock = threading.Lock()
        self.folder = Path(self.spec.where).parent if store == "json" else \
            servers.folder / cell

    # -- making things --------------------------------------------------------------

    def store(self, **options: Any) -> TokenStore:
        """A new store object on the cell's store (another process's, or host's, view)."""
        made = self.spec.open(**options)
        self._stores.append(made)
        return made

    def seed(self, *, expired: bool = True, left: float | None = None,
             lifetime: int = 100) -> dict[str, Any]:
        """A pair from X: its access token already refused (``expired``), or ``left``
        seconds before its ``lifetime`` ends."""
        token = self.x.issue_token()
        if expired:
            self.x.expire_access_token(token["access_token"])
            return dict(token, expires_at=time.time() - 1)
        if left is not None:
            return dict(token, expires_in=lifetime, expires_at=time.time() + left)
        return token

    def front(self, kind: str | None = None, *, store: TokenStore | None = None,
              token: dict[str, Any] | None = None, **arguments: Any) -> Front:
        """A front end (the cell's kind unless given) on a new store object, or ``store``."""
        arguments.setdefault("client_id", DEFAULT_CLIENT_ID)
        arguments.setdefault("token_url", self.x.token_url)
        arguments.setdefault("api_url", self.x.api_url)
        chosen = arguments.setdefault("policy", policy())
        if store is None:  # the shortest lease the policy's deadline allows
            store = self.store(lock_ttl=max(LOCK_TTL, chosen.token_deadline + 5.0))
        made = Front(kind or self.front_kind, store=store, account=ACCOUNT, token=token,
                     **arguments)
        self._fronts.append(made)
        return made

    def note(self, event: str) -> None:
        """Say what happened (kept with the cell's result)."""
        with self._lock:
            self.events.append(event)

    # -- the end --------------------------------------------------------------------

    def settle(self) -> None:
        """Wait until nothing this cell started is still on its way: X has decided every
        token request, and every answer that came after its caller gave up was handled."""
        end = time.monotonic() + BOUND
        while self.x.in_flight() > 0 and time.monotonic() < end:
            time.sleep(0.01)
        for made in self._fronts:
            made.coordinator.endpoint.wait_for_late_answers(BOUND)

    def count(self) -> Count:
        """Lost pairs and reused refresh tokens, after a last refresh through a fresh
        session on a fresh store object (a process that comes afterwards).

        Lost: each refresh token live at X that the store does not hold (X granted that
        pair, and nothing has it), or one if there is none and the account cannot refresh
        any more (the stored pair spent, or refused to the right process)."""
        self.settle()
        final = self.front("requests", policy=policy(token_deadline=10.0),
                           store=self.store(lock_ttl=30.0))
        refused = None
        for attempt in range(3):
            try:
                final.front.refresh()
                refused = None
                break
            except RefresherError as exc:
                refused = f"{type(exc).__name__}: {exc}"[:300]
                if type(exc).__name__ == "ReauthorizationRequired":
                    break
                time.sleep(0.5 * (attempt + 1))
        self.settle()
        stored = (self.store(lock_ttl=30.0).load(ACCOUNT) or {}).get("refresh_token")
        live = self.x.live_refresh_tokens()
        orphans = len(live - {stored})
        lost = orphans or (1 if refused is not None else 0)
        stats = self.x.stats
        return Count(lost, stats.reused_refresh_tokens, {
            "refreshes": stats.refreshes, "token_requests": stats.token_requests,
            "stored": self.x.refresh_token_state(stored) if stored else "none",
            "live_not_stored": orphans, "last_refresh": refused or "ok",
            "events": list(self.events)})

    def close(self) -> None:
        for made in self._fronts:
            try:
                made.close()
            except Exception:  # noqa: S110 - closing after the count; nothing to report
                pass
        for store in self._stores:
            close = getattr(store, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: S110
                    pass
        self.x.stop()
        if self.kind == "redis" and self.spec.admin:
            import redis

            client = redis.Redis.from_url(self.spec.admin)
            try:
                client.acl_deluser(self.spec.name.split(":")[1])
            finally:
                client.close()
        if self.kind in ("json", "sqlite"):
            shutil.rmtree(self.folder, ignore_errors=True)


def exercised(condition: bool, what: str) -> None:
    """Fail the cell unless ``condition``: the fault ``what`` did not happen as staged."""
    if not condition:
        raise NotExercised(f"the fault was not staged: {what}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    """Poll ``condition`` until it holds; :class:`NotExercised` naming ``what`` after
    ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise NotExercised(f"timed out waiting for {what}")
        time.sleep(0.005)


def clean_environment() -> dict[str, str]:
    """This process's environment without REFRESHER_* or OAUTHLIB_* settings: for children."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("REFRESHER_", "OAUTHLIB_"))}
