"""One bad process cannot lock everyone out (issue 15, item 5).

X's refusal of a refresh token is recorded with who was refused (client id, token URL, the
refresh token's fingerprint, when) and binds only processes that would send it the same way;
``retry_refused`` probes once on purpose; ``refresher status`` says who was refused; and the
client id and URLs an account was logged in with outrank ``REFRESHER_*`` variables that
disagree. Against real emulators over loopback; the command line as a real process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refresher import JSONTokenStore, MemoryTokenStore, ReauthorizationRequired, RefreshingSession
from refresher.login import open_session
from refresher.settings import resolve_setting
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
from refresher.token import fingerprint

_SCRIPT = shutil.which("refresher", path=os.path.dirname(sys.executable))
COMMAND = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "refresher"]


def logged_in(path: Path, x: XEmulator, account: str = "alice",
              client_id: str = DEFAULT_CLIENT_ID) -> JSONTokenStore:
    """A store as `refresher login` leaves it: the pair, and the client and URLs beside it."""
    store = JSONTokenStore(path)
    with store.lock(account):
        store.save(account, x.issue_token(client_id=client_id))
    store.save_metadata(account, {"client_id": client_id, "confidential": False,
                                  "token_url": x.token_url, "api_url": x.api_url,
                                  "revoke_url": x.revoke_url,
                                  "authorize_url": x.authorize_url})
    return store


def session_at(path: Path, x: XEmulator, client_id: str = DEFAULT_CLIENT_ID,
               account: str = "alice") -> RefreshingSession:
    return RefreshingSession(client_id, store=str(path), account=account,
                             token_url=x.token_url, api_url=x.api_url)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no REFRESHER_* setting and a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFRESHER_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    return env


# -- the record, and whom it binds ------------------------------------------------------------


def test_a_refusal_at_another_token_url_binds_only_that_url(x_emulator_factory, tmp_path):
    right, leftover = x_emulator_factory(), x_emulator_factory()
    path = tmp_path / "tokens.json"
    spent = logged_in(path, right).load("alice")["refresh_token"]

    with session_at(path, leftover) as misconfigured:  # an emulator's URL left in a shell
        with pytest.raises(ReauthorizationRequired):
            misconfigured.refresh()
    [refusal] = JSONTokenStore(path).refusals("alice")
    assert (refusal.client_id, refusal.token_url, refusal.refresh_token) == (
        DEFAULT_CLIENT_ID, leftover.token_url, fingerprint(spent))
    assert abs(refusal.at - time.time()) < 60
    with session_at(path, leftover) as same_mistake:  # bound: nothing sent again
        with pytest.raises(ReauthorizationRequired, match="already refused"):
            same_mistake.refresh()
    assert leftover.stats.token_requests == 1

    with session_at(path, right) as good:  # the right server is not bound by it
        good.refresh()
        assert good.me()["username"] == "emulated_user"
    assert right.stats.refreshes == 1 and right.stats.reused_refresh_tokens == 0
    assert "needs_login" not in JSONTokenStore(path).load_metadata("alice")  # a grant clears it


def test_a_refusal_to_another_client_id_does_not_bind_the_accounts_client(x_emulator_factory,
                                                                       tmp_path):
    x = x_emulator_factory(clients={"app-a": None, "app-b": None})
    path = tmp_path / "tokens.json"
    logged_in(path, x, client_id="app-a")
    with session_at(path, x, client_id="app-b") as other_app:
        with pytest.raises(ReauthorizationRequired):
            other_app.refresh()  # X refuses app-a's refresh token to app-b
    assert [r.client_id for r in JSONTokenStore(path).refusals("alice")] == ["app-b"]
    assert JSONTokenStore(path).needs_login("alice", client_id="app-b", token_url=x.token_url)
    assert not JSONTokenStore(path).needs_login("alice", client_id="app-a",
                                                token_url=x.token_url)
    with session_at(path, x, client_id="app-a") as own_app:
        own_app.refresh()
    assert x.stats.refreshes == 1 and x.stats.reused_refresh_tokens == 0


def test_a_record_from_before_refusals_named_their_client_binds_every_process(x_emulator,
                                                                              tmp_path):
    path = tmp_path / "tokens.json"
    store = logged_in(path, x_emulator)
    metadata = store.load_metadata("alice")
    metadata["needs_login"] = {"refresh_token": fingerprint(store.load("alice")["refresh_token"]),
                               "since": time.time() - 3600}  # as an older refresher wrote it
    store.save_metadata("alice", metadata)
    [refusal] = store.refusals("alice")
    assert (refusal.client_id, refusal.token_url) == (None, None)
    with session_at(path, x_emulator) as session:
        with pytest.raises(ReauthorizationRequired, match="an unrecorded client id"):
            session.refresh()
        assert x_emulator.stats.token_requests == 0
        session.refresh(retry_refused=True)
    assert JSONTokenStore(path).refusals("alice") == [] and x_emulator.stats.refreshes == 1


def test_retry_refused_probes_once_and_a_grant_clears_the_record(x_emulator, tmp_path):
    path = tmp_path / "tokens.json"
    store = logged_in(path, x_emulator)
    with store.lock("alice"):  # recorded by a process that was refused by mistake
        store.mark_needs_login("alice", store.load("alice")["refresh_token"],
                               client_id=DEFAULT_CLIENT_ID, token_url=x_emulator.token_url)
    with session_at(path, x_emulator) as session:
        with pytest.raises(ReauthorizationRequired) as caught:
            session.refresh()
        message = str(caught.value)
        assert x_emulator.token_url in message and "retry-refused" in message
        assert x_emulator.stats.token_requests == 0  # bound: not sent
        session.refresh(retry_refused=True)
    assert x_emulator.stats.refreshes == 1
    assert "needs_login" not in JSONTokenStore(path).load_metadata("alice")


def test_a_probe_that_x_refuses_again_is_one_request_and_updates_the_record(x_emulator,
                                                                           tmp_path):
    path = tmp_path / "tokens.json"
    store = logged_in(path, x_emulator)
    _revoke(x_emulator, store.load("alice")["refresh_token"])  # at X, by another machine
    with session_at(path, x_emulator) as session:
        with pytest.raises(ReauthorizationRequired):
            session.refresh()
        [first] = JSONTokenStore(path).refusals("alice")
        with pytest.raises(ReauthorizationRequired):
            session.refresh()  # bound
        assert x_emulator.stats.token_requests == 1
        with pytest.raises(ReauthorizationRequired):
            session.refresh(retry_refused=True)
    assert x_emulator.stats.token_requests == 2
    [again] = JSONTokenStore(path).refusals("alice")  # the same client and URL: one entry
    assert again.at >= first.at and again.token_url == x_emulator.token_url


def _revoke(x: XEmulator, refresh_token: str) -> None:
    from refresher.endpoint import TokenEndpoint

    TokenEndpoint(x.token_url, DEFAULT_CLIENT_ID).revoke(x.revoke_url, refresh_token,
                                                        "refresh_token")


# -- the async front ends offer the same probe ---------------------------------------------


@pytest.mark.parametrize("module, name", [("refresher.httpx", "RefreshingAuth"),
                                          ("refresher.aiohttp", "RefreshingMiddleware")])
def test_the_async_front_ends_probe_on_purpose_too(x_emulator, make_wired, module, name):
    cls = getattr(pytest.importorskip(module), name)
    store = MemoryTokenStore()
    front = make_wired(cls, store=store)
    with store.lock("default"):
        store.mark_needs_login("default", store.load("default")["refresh_token"],
                               client_id=DEFAULT_CLIENT_ID, token_url=x_emulator.token_url)
    with pytest.raises(ReauthorizationRequired):
        front.refresh()
    with pytest.raises(ReauthorizationRequired):
        asyncio.run(front.tokens.refresh())
    assert x_emulator.stats.token_requests == 0
    front.refresh(retry_refused=True)  # blocking, as RefreshingSession.refresh
    assert store.refusals("default") == [] and x_emulator.stats.refreshes == 1
    with store.lock("default"):
        store.mark_needs_login("default", store.load("default")["refresh_token"],
                               client_id=DEFAULT_CLIENT_ID, token_url=x_emulator.token_url)
    asyncio.run(front.tokens.refresh(retry_refused=True))  # from a coroutine
    assert store.refusals("default") == [] and x_emulator.stats.refreshes == 2


# -- settings: the account's record outranks REFRESHER_*, an argument outranks both -----------


def test_the_accounts_record_outranks_the_environment_and_says_so(x_emulator_factory, tmp_path,
                                                                  monkeypatch, caplog):
    right, leftover = x_emulator_factory(), x_emulator_factory()
    path = tmp_path / "tokens.json"
    logged_in(path, right)
    monkeypatch.setenv("REFRESHER_TOKEN_URL", leftover.token_url)
    monkeypatch.setenv("REFRESHER_CLIENT_ID", "an-emulator-client")
    monkeypatch.setenv("REFRESHER_API_URL", leftover.api_url)
    caplog.set_level(logging.WARNING, logger="refresher.settings")
    with open_session("alice", store=path) as session:
        session.refresh()
        assert session.me()["username"] == "emulated_user"
    assert right.stats.refreshes == 1 and leftover.stats.token_requests == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(leftover.token_url in w and right.token_url in w for w in warnings)
    assert any("an-emulator-client" in w and DEFAULT_CLIENT_ID in w for w in warnings)
    token = JSONTokenStore(path).load("alice")
    assert not [w for w in warnings for t in token.values() if isinstance(t, str)
                and len(t) > 20 and t in w]
    # An explicit argument outranks both.
    with open_session("alice", store=path, token_url=leftover.token_url) as explicit:
        assert explicit.coordinator is not None
        assert explicit.coordinator.endpoint.token_url == leftover.token_url


def test_resolve_setting_order(monkeypatch):
    record = {"token_url": "https://recorded/token", "client_id": "recorded-app"}
    monkeypatch.setenv("REFRESHER_TOKEN_URL", "http://127.0.0.1:8000/2/oauth2/token")
    assert resolve_setting("token_url", None, record) == "https://recorded/token"
    assert resolve_setting("token_url", "https://given/token", record) == "https://given/token"
    assert resolve_setting("token_url", None, {}) == "http://127.0.0.1:8000/2/oauth2/token"
    # A new login chooses its server anew: the variable outranks the old record.
    assert resolve_setting("token_url", None, record, new_login=True) \
        == "http://127.0.0.1:8000/2/oauth2/token"
    monkeypatch.delenv("REFRESHER_TOKEN_URL")
    assert resolve_setting("token_url", None, {}) == "https://api.x.com/2/oauth2/token"


# -- the command line: the issue's reproduction, status, --retry-refused ----------------------


def test_the_command_line_is_not_locked_out_by_a_misconfigured_process(
        x_emulator_factory, tmp_path, clean_env):
    right, leftover = x_emulator_factory(), x_emulator_factory()
    path = tmp_path / "tokens.json"
    spent = logged_in(path, right).load("alice")["refresh_token"]
    env = dict(clean_env, REFRESHER_STORE=str(path))

    wrong = run("refresh", "--account", "alice", "--token-url", leftover.token_url, env=env)
    assert wrong.returncode == 1, wrong.stderr
    status = run("status", "--json", env=env)
    [row] = json.loads(status.stdout)["accounts"]
    assert row["needs_login"] is False  # not for the client and URL alice was logged in with
    [refused] = row["refused"]
    assert refused["token_url"] == leftover.token_url
    assert refused["client_id"] == DEFAULT_CLIENT_ID
    assert refused["refresh_token"] == fingerprint(spent)
    assert abs(refused["at"] - time.time()) < 60
    table = run("status", env=env)
    assert leftover.token_url in table.stdout and "does not bind" in table.stdout
    assert " needs login " not in table.stdout

    # The emulator's URL still in the environment: the account's own server wins, warned.
    fixed = run("refresh", "--account", "alice",
                env=dict(env, REFRESHER_TOKEN_URL=leftover.token_url))
    assert fixed.returncode == 0, fixed.stderr
    assert "WARNING" in fixed.stderr and leftover.token_url in fixed.stderr \
        and right.token_url in fixed.stderr
    assert right.stats.refreshes == 1 and leftover.stats.token_requests == 1
    row = json.loads(run("status", "--json", env=env).stdout)["accounts"][0]
    assert row["refused"] == [] and row["needs_login"] is False
    token = JSONTokenStore(path).load("alice")
    for text in (wrong.stdout, wrong.stderr, status.stdout, table.stdout, fixed.stdout,
                 fixed.stderr):
        assert spent not in text and token["refresh_token"] not in text
        assert token["access_token"] not in text


def test_refresh_retry_refused_on_the_command_line(x_emulator, tmp_path, clean_env):
    path = tmp_path / "tokens.json"
    store = logged_in(path, x_emulator)
    logged_in(path, x_emulator, account="bob")
    for name in ("alice", "bob"):
        with store.lock(name):
            store.mark_needs_login(name, store.load(name)["refresh_token"],
                                   client_id=DEFAULT_CLIENT_ID, token_url=x_emulator.token_url)
    env = dict(clean_env, REFRESHER_STORE=str(path))
    table = run("status", env=env)
    assert table.stdout.count(" needs login ") == 2
    assert f"refused to client id {DEFAULT_CLIENT_ID} at {x_emulator.token_url}" in table.stdout
    assert "refresher refresh --account alice --retry-refused" in table.stdout

    bound = run("refresh", "--account", "alice", env=env)
    assert bound.returncode == 1 and "--retry-refused" in bound.stderr
    assert x_emulator.stats.token_requests == 0
    probed = run("refresh", "--account", "alice", "--retry-refused", env=env)
    assert probed.returncode == 0, probed.stderr
    everyone = run("refresh", "--all", "--retry-refused", env=env)
    assert everyone.returncode == 0, everyone.stderr
    assert x_emulator.stats.refreshes == 3 and x_emulator.stats.reused_refresh_tokens == 0
    rows = json.loads(run("status", "--json", env=env).stdout)["accounts"]
    assert [(r["needs_login"], r["refused"]) for r in rows] == [(False, []), (False, [])]


def test_refresh_all_skips_only_accounts_bound_by_their_own_refusal(x_emulator_factory,
                                                                   tmp_path, clean_env):
    right, leftover = x_emulator_factory(), x_emulator_factory()
    path = tmp_path / "tokens.json"
    store = logged_in(path, right)
    logged_in(path, right, account="bob")
    with store.lock("alice"):  # refused at a leftover URL: says nothing about alice's server
        store.mark_needs_login("alice", store.load("alice")["refresh_token"],
                               client_id=DEFAULT_CLIENT_ID, token_url=leftover.token_url)
    with store.lock("bob"):  # refused at bob's own server: bound
        store.mark_needs_login("bob", store.load("bob")["refresh_token"],
                               client_id=DEFAULT_CLIENT_ID, token_url=right.token_url)
    done = run("refresh", "--all", "--json", env=dict(clean_env, REFRESHER_STORE=str(path)))
    assert done.returncode == 1
    rows = {row["account"]: row for row in json.loads(done.stdout)["accounts"]}
    assert rows["alice"]["refreshed"] is True
    assert rows["bob"]["refreshed"] is False and rows["bob"]["needs_login"] is True
    assert right.stats.token_requests == 1 and leftover.stats.token_requests == 0
