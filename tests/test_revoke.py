"""Revoke from the library: ``session.revoke()``, the async front ends' ``revoke()`` and
``await arevoke()``, ``LoginFlow.revoke(token)``; the revoke URL from the argument, the
login's record, ``$REFRESHER_REVOKE_URL`` or X's. Real HTTP to the emulator, real stores."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from doc_blocks import doc_block
from test_cli import CLI
from test_readme_story import bash

from refresher import (
    JSONTokenStore,
    LoginFlow,
    ReauthorizationRequired,
    RefreshingSession,
    RevokeError,
    open_session,
    open_store,
)
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator

ACCOUNT = "alice"
FRONTS = ["requests", "httpx", "httpx-async", "aiohttp"]


def _front(kind: str, x: XEmulator, store: Any, **kw: Any) -> Any:
    kw = dict(dict(client_id=DEFAULT_CLIENT_ID, store=store, account=ACCOUNT,
                   token=x.issue_token(), token_url=x.token_url, api_url=x.api_url), **kw)
    if kind == "requests":
        return RefreshingSession(**kw)
    if kind.startswith("httpx"):
        pytest.importorskip("httpx")
        from refresher.httpx import RefreshingAuth

        return RefreshingAuth(**kw)
    pytest.importorskip("aiohttp")
    from refresher.aiohttp import RefreshingMiddleware

    return RefreshingMiddleware(**kw)


def _revoke(kind: str, front: Any) -> None:
    if kind in ("httpx-async", "aiohttp"):
        asyncio.run(front.arevoke())
    else:
        front.revoke()


def _request(kind: str, front: Any, url: str) -> int:
    if kind == "requests":
        return int(front.get(url, timeout=10).status_code)
    if kind == "httpx":
        import httpx

        with httpx.Client(auth=front, timeout=10) as client:
            return client.get(url).status_code

    async def run() -> int:
        if kind == "httpx-async":
            import httpx

            async with httpx.AsyncClient(auth=front, timeout=10) as client:
                return (await client.get(url)).status_code
        import aiohttp

        async with aiohttp.ClientSession(middlewares=[front]) as session:
            async with session.get(url) as response:
                return response.status

    return asyncio.run(run())


@pytest.mark.parametrize("kind", FRONTS)
def test_revoke_revokes_at_x_removes_the_account_and_later_requests_need_a_login(
        kind, x_emulator, tmp_path) -> None:
    x = x_emulator
    store = JSONTokenStore(tmp_path / "tokens.json")
    front = _front(kind, x, store, revoke_url=x.revoke_url)
    me = x.api_url + "/2/users/me"
    assert _request(kind, front, me) == 200
    pair = store.load(ACCOUNT)
    _revoke(kind, front)
    assert x.refresh_token_state(pair["refresh_token"]) == "revoked"
    assert ACCOUNT not in store.accounts() and store.load(ACCOUNT) is None
    with pytest.raises(ReauthorizationRequired):
        _request(kind, front, me)
    assert x.stats.refreshes == 0
    front.close()


@pytest.mark.parametrize("kind", ["requests", "httpx-async"])
def test_a_revoke_x_did_not_take_keeps_the_account(kind, x_emulator, tmp_path) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/2/oauth2/revoke"
    store = JSONTokenStore(tmp_path / "tokens.json")
    front = _front(kind, x_emulator, store, revoke_url=dead)
    pair = store.load(ACCOUNT)
    with pytest.raises(RevokeError):
        _revoke(kind, front)
    assert store.load(ACCOUNT) == pair  # kept, and still live at X
    assert x_emulator.refresh_token_state(pair["refresh_token"]) == "live"
    assert _request(kind, front, x_emulator.api_url + "/2/users/me") == 200
    front.close()


def test_the_revoke_url_the_login_recorded_is_used(x_emulator, tmp_path, monkeypatch) -> None:
    """open_session on an account ``refresher login`` saved: no revoke URL given, none in
    the environment; the one recorded with the account (the emulator's) is used, not X's."""
    for name in ("REFRESHER_REVOKE_URL", "REFRESHER_CLIENT_ID", "REFRESHER_TOKEN_URL"):
        monkeypatch.delenv(name, raising=False)
    x = x_emulator
    location = str(tmp_path / "tokens.json")
    store = open_store(location)
    token = x.issue_token()
    store.save(ACCOUNT, token)
    store.save_metadata(ACCOUNT, {"client_id": DEFAULT_CLIENT_ID, "token_url": x.token_url,
                                  "api_url": x.api_url, "revoke_url": x.revoke_url})
    session = open_session(ACCOUNT, store=location)
    session.revoke()
    assert x.refresh_token_state(token["refresh_token"]) == "revoked"
    assert open_store(location).accounts() == []


def test_the_environments_revoke_url_is_used_when_nothing_else_says(x_emulator, tmp_path,
                                                                     monkeypatch) -> None:
    x = x_emulator
    monkeypatch.setenv("REFRESHER_REVOKE_URL", x.revoke_url)
    store = JSONTokenStore(tmp_path / "tokens.json")
    front = _front("requests", x, store)
    pair = store.load(ACCOUNT)
    front.revoke()
    assert x.refresh_token_state(pair["refresh_token"]) == "revoked"


def test_login_flow_revokes_a_pair_the_app_holds(x_emulator) -> None:
    x = x_emulator
    flow = LoginFlow(DEFAULT_CLIENT_ID, redirect_uri="http://127.0.0.1:8080/callback",
                     authorize_url=x.authorize_url, token_url=x.token_url,
                     revoke_url=x.revoke_url)
    token = x.issue_token()
    flow.revoke(token)
    assert x.refresh_token_state(token["refresh_token"]) == "revoked"
    answer = requests.get(x.api_url + "/2/users/me", timeout=10,
                          headers={"Authorization": f"Bearer {token['access_token']}"})
    assert answer.status_code == 401  # the access token went with it


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        request.getfixturevalue("sqlalchemy_installed")
        return f"sqlite:///{tmp_path / 'tokens.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("redis_server").url)


def test_revoke_on_a_shared_store_removes_the_account_for_every_process(store_url,
                                                                        x_emulator) -> None:
    """Two sessions on one SQL or Redis store (two hosts): one revokes, the other's next
    request needs a login too; nothing was refreshed, nothing sent twice."""
    x = x_emulator
    first = _front("requests", x, open_store(store_url), revoke_url=x.revoke_url)
    second = _front("requests", x, open_store(store_url), token=None)
    me = x.api_url + "/2/users/me"
    assert _request("requests", second, me) == 200
    pair = first.store.load(ACCOUNT)
    first.revoke()
    assert x.refresh_token_state(pair["refresh_token"]) == "revoked"
    assert second.store.load(ACCOUNT) is None and ACCOUNT not in second.store.accounts()
    x.expire_access_token(pair["access_token"])  # its cached token is refused from now on
    with pytest.raises(ReauthorizationRequired):
        _request("requests", second, me)
    assert (x.stats.refreshes, x.stats.reused_refresh_tokens) == (0, 0)
    for session in (first, second):
        session.close()


def test_the_howto_recipe_as_printed(x_emulator, tmp_path) -> None:
    """The how-to's revoke block, run as printed in a fresh interpreter, on a store holding
    an account as ``refresher login`` leaves it (with the emulator's URLs recorded)."""
    block = doc_block("docs/howto/revoke.rst", "until the user logs in again:")
    x, location = x_emulator, str(tmp_path / "tokens.json")
    store = open_store(location)
    token = x.issue_token()
    store.save(ACCOUNT, token)
    store.save_metadata(ACCOUNT, {"client_id": DEFAULT_CLIENT_ID, "token_url": x.token_url,
                                  "api_url": x.api_url, "revoke_url": x.revoke_url})
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env["REFRESHER_STORE"] = location
    done = subprocess.run([sys.executable, "-c", block], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "alice is disconnected: send her to the login page\n"
    assert x.refresh_token_state(token["refresh_token"]) == "revoked"
    assert open_store(location).accounts() == []


# -- refresher logout, as the how-to prints it ---------------------------------------------------


def test_the_howtos_logout_commands_as_printed(tmp_path, x_emulator) -> None:
    """``refresher logout`` revokes and removes; with X out of reach it keeps the account and
    says so, and ``--forget-only`` then removes it without revoking (the pair stays live)."""
    cli, x = CLI(tmp_path), x_emulator
    shell = dict(cli.emulated(x), PATH=os.pathsep.join(
        [str(Path(sys.executable).parent), cli.env.get("PATH", "")]))
    cli.login(x, "--account", ACCOUNT)
    pair = JSONTokenStore(cli.store).load(ACCOUNT)
    logout = doc_block("docs/howto/revoke.rst", "runs the same code for an account of the store:")
    assert logout == "refresher logout --account alice\n"
    done = bash(shell, logout)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Logged out account 'alice' (@emulated_user): revoked at "
                                  f"{x.revoke_url}")
    assert x.refresh_token_state(pair["refresh_token"]) == "revoked"
    assert JSONTokenStore(cli.store).accounts() == []

    cli.login(x, "--account", ACCOUNT)
    pair = JSONTokenStore(cli.store).load(ACCOUNT)
    x.stop()  # X out of reach: the account is kept, and the message says what to do
    done = bash(shell, logout)
    assert done.returncode == 1 and "--forget-only" in done.stderr
    assert JSONTokenStore(cli.store).accounts() == [ACCOUNT]
    forget = doc_block("docs/howto/revoke.rst", "To remove\nit from the store anyway")
    assert forget == "refresher logout --account alice --forget-only\n"
    done = bash(shell, forget)
    assert done.returncode == 0 and "(not revoked at X)" in done.stdout, done.stderr
    assert JSONTokenStore(cli.store).accounts() == []
    x.start()  # back on the same port: the forgotten pair is still good there
    assert x.refresh_token_state(pair["refresh_token"]) == "live"
