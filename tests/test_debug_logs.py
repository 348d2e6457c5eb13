"""No secret in any log record at DEBUG, refresher's own or a library's underneath.

The root logger and every logger of the libraries refresher runs on (SQLAlchemy, psycopg,
redis-py, urllib3, httpx, httpcore, aiohttp, requests-oauthlib, oauthlib, filelock) are set
to DEBUG with a capturing handler; then an account lives a whole life on each store (JSON,
SQLite, PostgreSQL, Redis) through each front end (requests, httpx sync and async,
aiohttp): a login through the authorize page, requests with 1-second tokens (so several
refreshes, ahead of expiry and after a 401), an explicit refresh, a refresh retried and
failed, a refresh refused by X, store reads and writes, and ``refresher status``. No
record, its message formatted with its arguments and any traceback it carries, holds an
access token, refresh token, authorization code or client secret the emulator issued.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import refresher
from refresher import LoginFlow, TokenStore, open_store
from refresher.cli import main as cli_main
from refresher.testing import DEFAULT_CLIENT_SECRET, DEFAULT_CONFIDENTIAL_CLIENT_ID, XEmulator

ACCOUNT = "alice"
LIBRARIES = ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool", "psycopg", "redis",
             "urllib3", "requests", "httpx", "httpcore", "aiohttp", "asyncio",
             "requests_oauthlib", "oauthlib", "filelock", "refresher")
STORES = ["json", "sqlite", "postgresql", "redis"]
FRONTS = ["requests", "httpx-sync", "httpx-async", "aiohttp"]
# Whose records each store and front end must show, so that a quiet run proves nothing.
EXPECTED = {"sqlite": "sqlalchemy.engine", "postgresql": "sqlalchemy.engine",
            "requests": "urllib3", "httpx-sync": "httpx", "httpx-async": "httpx"}
# The default run pairs each store with one front end so that every store and every front
# end lives a whole life (what a store and a front end log do not depend on each other);
# ``-m soak`` runs every other pair too.
DEFAULT_PAIRS = set(zip(STORES, FRONTS, strict=True))
PAIRS = [pytest.param(store, front, id=f"{store}-{front}",
                      marks=[] if (store, front) in DEFAULT_PAIRS else [pytest.mark.soak])
         for store in STORES for front in FRONTS]


class Capture(logging.Handler):
    """Every record that reaches it, once."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: dict[int, logging.LogRecord] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records[id(record)] = record


@pytest.fixture
def debug_logs() -> Iterator[Capture]:
    """Root and every library logger at DEBUG, each with the capturing handler (also the
    ones that do not propagate); all put back afterwards."""
    capture = Capture()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in LIBRARIES]
    before = [(logger, logger.level, list(logger.handlers)) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(capture)
    yield capture
    for logger, level, handlers in before:
        logger.setLevel(level)
        logger.handlers[:] = handlers


def _text(record: logging.LogRecord) -> str:
    """The record as any formatter could show it: message with arguments, traceback, stack."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a record whose arguments do not fit its message: show both
        parts = [str(record.msg), repr(record.args)]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    parts += [record.exc_text or "", record.stack_info or ""]
    return "\n".join(parts)


def _leaks(texts: list[tuple[str, str]], secrets: set[str]) -> list[str]:
    """``where: what kind of secret`` for each text holding one (never the secret)."""
    found = []
    for where, text in texts:
        held = [secret for secret in secrets if secret in text]
        for secret in held:
            text = text.replace(secret, "***")
        found += [f"{where}: {_kind(secret)} in {text[:80]!r}" for secret in held]
    return found


def _kind(secret: str) -> str:
    if secret == DEFAULT_CLIENT_SECRET:
        return "client secret"
    import base64

    try:  # the emulator's tokens are base64 of "random:millis:1:0:KIND:1"
        kind = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)).split(b":")[4]
    except (ValueError, IndexError):
        return "secret"
    return {b"at": "access token", b"rt": "refresh token", b"ac": "authorization code"}.get(
        kind, "secret")


@pytest.fixture(autouse=True)
def _no_refresher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The login and the CLI read REFRESHER_*: a shell's must not leak in."""
    for name in [n for n in os.environ if n.startswith("REFRESHER_")]:
        monkeypatch.delenv(name)


# -- the stores ----------------------------------------------------------------------------

@pytest.fixture
def store_location(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    kind = request.param
    if kind == "json":
        return str(tmp_path / "tokens.json")
    if kind == "sqlite":
        request.getfixturevalue("sqlalchemy_installed")
        return f"sqlite:///{tmp_path / 'tokens.db'}"
    if kind == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return str(request.getfixturevalue("redis_server").url)


# -- the front ends: the same few moves through each ---------------------------------------

class Front:
    """One front end on ``store``, seeded with a login's ``token``: ``get(url)`` answers a
    status, ``refresh()`` refreshes now."""

    def __init__(self, kind: str, x: XEmulator, store: TokenStore, flow: LoginFlow,
                 token: dict[str, Any]) -> None:
        self.kind = kind
        if kind == "requests":
            self.front: Any = flow.session(token, store=store, account=ACCOUNT)
            return
        if kind.startswith("httpx"):
            pytest.importorskip("httpx")
            from refresher.httpx import RefreshingAuth as cls
        else:
            pytest.importorskip("aiohttp")
            from refresher.aiohttp import RefreshingMiddleware as cls  # type: ignore[assignment]
        self.front = cls(DEFAULT_CONFIDENTIAL_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET,
                         store=store, account=ACCOUNT, token=token, token_url=x.token_url,
                         api_url=x.api_url)

    def get_for(self, url: str, seconds: float) -> list[int]:
        """GET ``url`` again and again for ``seconds``, at least once (a loaded machine may
        take longer than ``seconds`` to open a client); the statuses."""
        until = time.monotonic() + seconds
        if self.kind == "requests":
            statuses = []
            statuses.append(self.front.get(url, timeout=10).status_code)
            while time.monotonic() < until:
                statuses.append(self.front.get(url, timeout=10).status_code)
            return statuses
        if self.kind == "httpx-sync":
            import httpx

            with httpx.Client(auth=self.front, timeout=10) as client:
                statuses = [client.get(url).status_code]
                while time.monotonic() < until:
                    statuses.append(client.get(url).status_code)
                return statuses
        return asyncio.run(self._get_async(url, until))

    async def _get_async(self, url: str, until: float) -> list[int]:
        statuses: list[int] = []

        async def worker(get: Callable[[], Any]) -> None:
            statuses.append(await get())
            while time.monotonic() < until:
                statuses.append(await get())

        if self.kind == "httpx-async":
            import httpx

            async with httpx.AsyncClient(auth=self.front, timeout=10) as client:
                async def get() -> int:
                    return (await client.get(url)).status_code

                await asyncio.gather(*(worker(get) for _ in range(3)))
            return statuses
        import aiohttp

        async with aiohttp.ClientSession(middlewares=[self.front]) as session:
            async def get_aiohttp() -> int:
                async with session.get(url) as response:
                    await response.read()
                    return response.status

            await asyncio.gather(*(worker(get_aiohttp) for _ in range(3)))
        return statuses

    def refresh(self) -> Any:
        return self.front.refresh()

    def close(self) -> None:
        self.front.close()


def _log_in(x: XEmulator) -> tuple[LoginFlow, dict[str, Any]]:
    """A login as ``refresher login`` runs it: the authorize page (a browser that does not
    log, standing in for the user's), the loopback callback, the code exchange."""
    flow = LoginFlow(DEFAULT_CONFIDENTIAL_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET,
                     redirect_uri="http://127.0.0.1:0/callback",
                     authorize_url=x.authorize_url, token_url=x.token_url, api_url=x.api_url)

    def browser(url: str) -> None:
        urllib.request.urlopen(url, timeout=10).read()  # noqa: S310 (loopback)

    token = flow.run_local_server(port=0, open_browser=browser, timeout=30, out=_Quiet())
    return flow, dict(token)


class _Quiet:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


# -- the test ------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize(("store_location", "front_kind"), PAIRS, indirect=["store_location"])
def test_a_whole_life_at_debug_logs_no_secret_anywhere(
        store_location, front_kind, debug_logs, x_emulator_factory, capsys,
        request) -> None:
    x = x_emulator_factory(access_ttl=1.0)
    me = x.api_url + "/2/users/me"
    flow, token = _log_in(x)
    store = open_store(store_location)
    front = Front(front_kind, x, store, flow, token)
    store.save_metadata(ACCOUNT, {"client_id": DEFAULT_CONFIDENTIAL_CLIENT_ID,
                                  "token_url": x.token_url, "api_url": x.api_url})
    errors: list[BaseException] = []
    try:
        statuses = front.get_for(me, 2.5)                 # 1-second tokens: refreshes
        front.refresh()                                   # an explicit one
        x.expire_access_token(front.front.token["access_token"])
        statuses += front.get_for(me, 0.3)                # a 401, a refresh, a replay
        x.fail_token_endpoint(times=3, status=503)
        with pytest.raises(refresher.RefreshError) as failed:
            front.refresh()                               # retried, then failed
        errors.append(failed.value)
        x.revoke_all()
        with pytest.raises(refresher.ReauthorizationRequired) as refused:
            front.refresh()                               # refused by X: needs a login
        errors.append(refused.value)
        with pytest.raises(refresher.ReauthorizationRequired) as seen:
            front.get_for(me, 0.2)                        # what the app sees then
        errors.append(seen.value)
    finally:
        front.close()
    # Store reads and writes, as the CLI and a status page make them.
    store.load(ACCOUNT)
    store.load_versioned(ACCOUNT)
    store.load_metadata(ACCOUNT)
    store.accounts()
    if hasattr(store, "close"):
        store.close()
    assert cli_main(["status", "--store", store_location, "--json", "--debug"]) == 0
    shown = capsys.readouterr()
    assert ACCOUNT in json.dumps(json.loads(shown.out))
    assert x.stats.refreshes >= 2 and 200 in statuses

    secrets = x.issued_secrets()
    assert DEFAULT_CLIENT_SECRET in secrets and x.stats.exchanges == 1
    records = sorted(debug_logs.records.values(), key=lambda r: r.created)
    texts = [(f"{r.name} {r.levelname}", _text(r)) for r in records]
    texts += [("stdout of status", shown.out), ("stderr of status", shown.err)]
    texts += [(f"{type(e).__name__}", f"{e}\n{e!r}") for e in errors]
    assert _leaks(texts, secrets) == []
    # The run was really logged: the libraries underneath spoke at DEBUG.
    names = {r.name for r in records}
    for kind in (request.node.callspec.params["store_location"], front_kind):
        if kind in EXPECTED:
            assert any(name.startswith(EXPECTED[kind]) for name in names), (kind, names)
    assert any(r.levelno == logging.DEBUG for r in records if r.name.startswith("refresher"))
    # refresher never goes through OAuth2Session.request or its refresh_token, which log
    # whole tokens at DEBUG: not one record of requests-oauthlib's.
    assert not [name for name in names if name.startswith("requests_oauthlib")]


@pytest.mark.parametrize("echo", [None, True, "debug"])
def test_sqlalchemy_logs_no_row_of_the_store_even_on_an_engine_echoing_rows(
        echo, debug_logs, tmp_path, sqlalchemy_installed) -> None:
    """An engine of the caller's, with ``echo="debug"`` (rows) and ``hide_parameters`` off:
    its own statements log their rows, the store's never do (nor their parameters)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}", echo=echo)
    store = refresher.SQLTokenStore(engine)
    token = {"access_token": "AT-secret-1", "refresh_token": "RT-secret-1",
             "token_type": "bearer", "expires_at": 2_000_000_000.0}
    store.save(ACCOUNT, token)
    with store.lock(ACCOUNT):
        assert store.load(ACCOUNT) == token
    assert store.load_versioned(ACCOUNT).token == token
    with engine.connect() as connection:  # the app's own query: SQLAlchemy's rules, untouched
        assert connection.execute(sa.text("SELECT 'app-row-7'")).scalar() == "app-row-7"
    engine.dispose()
    texts = [(r.name, _text(r)) for r in debug_logs.records.values()]
    assert _leaks(texts, {"AT-secret-1", "RT-secret-1"}) == []
    store_statements = [t for name, t in texts if name == "sqlalchemy.engine.Engine.refresher"]
    assert any("SELECT refresher_tokens.token" in t for t in store_statements)
    if echo != True:  # noqa: E712 (echo=True logs statements, not rows)
        assert any("app-row-7" in t and "Row" in t for name, t in texts
                   if name == "sqlalchemy.engine.Engine")

