"""The `refresher` console script, run as a real process against an emulator served here.

Logins are completed by a stand-in browser ($BROWSER: a script that follows the
authorize URL, which the emulator approves with a redirect to the CLI's callback server),
or by pasting the redirected URL on stdin (--no-browser).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from doc_blocks import doc_block

from refresher import JSONTokenStore, ReauthorizationRequired
from refresher.endpoint import TokenEndpoint
from refresher.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_CONFIDENTIAL_CLIENT_ID,
    XEmulator,
)
from refresher.testing.emulator import DEFAULT_USER
from refresher.testing.net import free_port
from refresher.token import fingerprint

_SCRIPT = shutil.which("refresher", path=os.path.dirname(sys.executable))
COMMAND = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "refresher"]
JSON_KEYS = ["requests", "failed", "refreshes", "windows", "reused_refresh_tokens",
             "processes", "threads", "seconds", "access_ttl"]


class CLI:
    """Runs `refresher ...` with a clean environment: a private HOME, no REFRESHER_* set."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.store = tmp_path / "tokens.json"
        browser = tmp_path / "browser"
        # A browser that follows the authorize URL; exit 0 whatever the page said, so that
        # the webbrowser module does not go on to try another browser.
        browser.write_text(textwrap.dedent(f"""\
            #!{sys.executable}
            import sys, requests
            requests.get(sys.argv[1], timeout=10)
            """))
        browser.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("REFRESHER_", "XDG_", "BROWSER", "DISPLAY"))}
        self.env.update(HOME=str(self.home), BROWSER=str(browser), PYTHONUNBUFFERED="1")

    def emulated(self, x: XEmulator, **extra: str) -> dict[str, str]:
        env = dict(self.env, REFRESHER_CLIENT_ID=DEFAULT_CLIENT_ID,
                   REFRESHER_AUTHORIZE_URL=x.authorize_url, REFRESHER_TOKEN_URL=x.token_url,
                   REFRESHER_REVOKE_URL=x.revoke_url, REFRESHER_API_URL=x.api_url,
                   REFRESHER_STORE=str(self.store))
        env.update(extra)
        return env

    def run(self, *args: str, env: dict[str, str] | None = None, input: str = "",
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*COMMAND, *args], env=env or self.env, input=input,
                              capture_output=True, text=True, timeout=timeout)

    def login(self, x: XEmulator, *args: str, **extra: str) -> subprocess.CompletedProcess:
        done = self.run("login", "--port", "0", *args, env=self.emulated(x, **extra))
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def _tokens(store: Path) -> list[str]:
    """Every token string in a JSON store file."""
    document = json.loads(store.read_text())
    return [entry["token"][k] for entry in document["accounts"].values()
            for k in ("access_token", "refresh_token") if k in entry["token"]]


def _no_secret_in(texts: list[str], secrets: list[str]) -> None:
    joined = "\n".join(texts)
    assert [s for s in secrets if s and s in joined] == []


# -- login -------------------------------------------------------------------------------------


def test_login_in_the_browser_saves_the_account_and_never_prints_the_token(cli, x_emulator):
    done = cli.login(x_emulator)
    assert "Logged in as @emulated_user (Emulated User, id 1000000001)." in done.stdout
    assert f"Saved as account 'emulated_user' in {cli.store}." in done.stdout
    assert re.search(r"expires in (2h 00m|1h 59m);", done.stdout)
    store = JSONTokenStore(cli.store)
    assert store.accounts() == ["emulated_user"]
    token = store.load("emulated_user")
    assert fingerprint(token["access_token"]) in done.stdout
    meta = store.load_metadata("emulated_user")
    assert meta["client_id"] == DEFAULT_CLIENT_ID and meta["confidential"] is False
    assert meta["token_url"] == x_emulator.token_url and meta["api_url"] == x_emulator.api_url
    assert meta["revoke_url"] == x_emulator.revoke_url
    assert meta["authorize_url"] == x_emulator.authorize_url
    assert meta["scopes"] == ["tweet.read", "users.read", "offline.access"]
    assert meta["username"] == "emulated_user" and meta["user_id"] == "1000000001"
    assert stat.S_IMODE(cli.store.stat().st_mode) == 0o600
    _no_secret_in([done.stdout, done.stderr], _tokens(cli.store))


def test_login_without_store_uses_the_config_folder_made_private(cli, x_emulator):
    env = cli.emulated(x_emulator)
    del env["REFRESHER_STORE"]
    done = cli.run("login", "--port", "0", "--account", "me", env=env)
    assert done.returncode == 0, done.stderr
    folder = cli.home / ".config" / "refresher"
    assert JSONTokenStore(folder / "tokens.json").accounts() == ["me"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    env["XDG_CONFIG_HOME"] = str(cli.home / "xdg")
    done = cli.run("status", "--json", env=env)
    assert json.loads(done.stdout)["accounts"] == []  # a different config folder: empty


def test_login_no_browser_takes_the_url_pasted_on_stdin(cli, x_emulator):
    child = subprocess.Popen(
        [*COMMAND, "login", "--no-browser", "--port", "0", "--account", "headless"],
        env=cli.emulated(x_emulator), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert child.stderr is not None and child.stdin is not None
        url, seen = "", ""
        while "paste here" not in seen:
            line = child.stderr.readline()
            assert line, "the CLI ended before asking for the URL"
            seen += line
            url = url or next((w for w in line.split() if "/i/oauth2/authorize?" in w), "")
        location = requests.get(url, allow_redirects=False, timeout=10).headers["Location"]
        out, err = child.communicate(location + "\n", timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "Saved as account 'headless'" in out
    assert JSONTokenStore(cli.store).accounts() == ["headless"]


def test_login_of_a_confidential_client_reads_the_secret_from_stdin(cli, x_emulator):
    env = cli.emulated(x_emulator, REFRESHER_CLIENT_ID=DEFAULT_CONFIDENTIAL_CLIENT_ID)
    done = cli.run("login", "--port", "0", "--client-secret", "-", env=env,
                   input=DEFAULT_CLIENT_SECRET + "\n")
    assert done.returncode == 0, done.stderr
    meta = JSONTokenStore(cli.store).load_metadata("emulated_user")
    assert meta["client_id"] == DEFAULT_CONFIDENTIAL_CLIENT_ID and meta["confidential"] is True
    assert DEFAULT_CLIENT_SECRET not in cli.store.read_text()
    _no_secret_in([done.stdout, done.stderr], [DEFAULT_CLIENT_SECRET])

    env = cli.emulated(x_emulator)
    del env["REFRESHER_CLIENT_ID"]  # recorded in the store: not needed again
    refused = cli.run("refresh", env=env)
    assert refused.returncode == 2
    assert "confidential client" in refused.stderr and "Traceback" not in refused.stderr
    env["REFRESHER_CLIENT_SECRET"] = DEFAULT_CLIENT_SECRET
    done = cli.run("refresh", env=env)
    assert done.returncode == 0, done.stderr
    assert x_emulator.stats.refreshes == 1


def test_a_secret_on_the_command_line_works_but_is_warned_about(cli, x_emulator):
    done = cli.run("login", "--port", "0", "--client-secret", DEFAULT_CLIENT_SECRET,
                   env=cli.emulated(x_emulator,
                                    REFRESHER_CLIENT_ID=DEFAULT_CONFIDENTIAL_CLIENT_ID))
    assert done.returncode == 0, done.stderr
    assert "visible to `ps`" in done.stderr
    _no_secret_in([done.stdout, done.stderr], [DEFAULT_CLIENT_SECRET])


class SlowUsersMe(XEmulator):
    """An emulator whose /2/users/me takes the request and does not answer until stopped."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.released = threading.Event()

    def _handle(self, request: Any) -> Any:
        if request.path == "/2/users/me":
            self.released.wait(120)
        return super()._handle(request)

    def stop(self) -> None:
        self.released.set()
        super().stop()


def test_the_login_timeout_bounds_the_users_me_question(cli):
    with SlowUsersMe(host="127.0.0.1", port=0) as x:
        started = time.monotonic()
        done = cli.run("login", "--port", "0", "--timeout", "2", env=cli.emulated(x),
                       timeout=30)
        took = time.monotonic() - started
        _ends_with_one_clear_line(done, 1, "/2/users/me failed (no answer within")
        assert "the login's --timeout of 2 s" in done.stderr and took < 15
        assert not cli.store.exists() or JSONTokenStore(cli.store).accounts() == []

        # Named by --account, the login is saved without the username, in time all the same.
        started = time.monotonic()
        done = cli.run("login", "--port", "0", "--timeout", "2", "--account", "me",
                       env=cli.emulated(x), timeout=30)
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "warning: logged in, but" in done.stderr and "--timeout of 2 s" in done.stderr
    assert took < 15 and JSONTokenStore(cli.store).accounts() == ["me"]
    assert "Logged in as an unnamed user" in done.stdout


def test_the_login_timeout_bounds_a_slow_code_exchange(cli, x_emulator_factory):
    x = x_emulator_factory(token_delay=20)
    started = time.monotonic()
    done = cli.run("login", "--port", "0", "--timeout", "2", env=cli.emulated(x), timeout=30)
    assert time.monotonic() - started < 15
    _ends_with_one_clear_line(done, 1, "code exchange at")
    assert "did not finish within" in done.stderr and "timeout" in done.stderr


def test_a_wrong_client_id_says_what_to_check_instead_of_waiting_in_silence(cli, x_emulator):
    started = time.monotonic()
    done = cli.run("login", "--port", "0", "--timeout", "3",
                   env=cli.emulated(x_emulator, REFRESHER_CLIENT_ID="not-my-client"))
    assert time.monotonic() - started < 15
    _ends_with_one_clear_line(done, 1, "no login within 3 s: nobody came back to")
    assert done.stderr.count("Still waiting for the browser") == 1  # after half the timeout
    for text in (done.stderr.splitlines()[-1], done.stderr):
        assert "the client id (not-my-client: the app's OAuth 2.0 Client ID" in text
        assert "the callback URL registered with the app, which must be exactly" in text
        assert "what the authorize page in the browser says" in text


def test_refresh_with_an_unknown_client_id_says_both_possibilities(cli, x_emulator):
    cli.login(x_emulator)
    done = cli.run("refresh", "--store", str(cli.store), "--client-id", "not-my-client")
    _one_clear_line(done, 1, "HTTP 401 unauthorized_client")
    assert ("X does not know this client id, or it is a confidential client's: check the "
            "client id, or pass client_secret") in done.stderr


def _refreshable(x: XEmulator, refresh_token: str) -> bool:
    try:
        TokenEndpoint(x.token_url, DEFAULT_CLIENT_ID).refresh(refresh_token)
    except ReauthorizationRequired:
        return False
    return True


def test_logging_in_again_replaces_the_account_and_revokes_nothing(cli, x_emulator, me_url):
    cli.login(x_emulator)
    old = JSONTokenStore(cli.store).load("emulated_user")
    again = cli.login(x_emulator)
    assert "Replaced the account's previous token (not revoked:" in again.stdout
    assert "--revoke-previous" in again.stdout
    assert x_emulator.stats.revocations == 0  # no revoke request was sent at all
    new = JSONTokenStore(cli.store).load("emulated_user")
    assert new["refresh_token"] != old["refresh_token"]
    me = requests.get(me_url(x_emulator), timeout=5,
                      headers={"Authorization": f"Bearer {new['access_token']}"})
    assert me.status_code == 200
    assert _refreshable(x_emulator, new["refresh_token"])  # the new pair lives


def test_revoke_previous_spares_a_pair_of_the_same_user_and_client(cli, x_emulator):
    cli.login(x_emulator)
    again = cli.login(x_emulator, "--revoke-previous")
    assert ("not revoked, despite --revoke-previous: it belongs to the same X user (id "
            f"{DEFAULT_USER['id']}) and client ({DEFAULT_CLIENT_ID})") in again.stdout
    assert x_emulator.stats.revocations == 0
    assert _refreshable(x_emulator, JSONTokenStore(cli.store).load("emulated_user")
                        ["refresh_token"])


def test_revoke_previous_revokes_the_pair_of_another_client(cli, x_emulator):
    cli.login(x_emulator, "--account", "alice")
    old = JSONTokenStore(cli.store).load("alice")
    env = cli.emulated(x_emulator, REFRESHER_CLIENT_ID=DEFAULT_CONFIDENTIAL_CLIENT_ID)
    again = cli.run("login", "--port", "0", "--account", "alice", "--revoke-previous",
                    "--client-secret", "-", env=env, input=DEFAULT_CLIENT_SECRET + "\n")
    assert again.returncode == 0, again.stderr
    assert ("Replaced the account's previous token, and revoked it (it belonged to another "
            "client).") in again.stdout
    assert x_emulator.stats.revocations == 2  # its refresh token, then its access token
    assert not _refreshable(x_emulator, old["refresh_token"])
    new = JSONTokenStore(cli.store).load("alice")
    TokenEndpoint(x_emulator.token_url, DEFAULT_CONFIDENTIAL_CLIENT_ID,
                  DEFAULT_CLIENT_SECRET).refresh(new["refresh_token"])  # the new pair lives


def test_revoke_previous_revokes_the_pair_of_another_user(cli, x_emulator, x_emulator_factory):
    cli.login(x_emulator, "--account", "shared")
    old = JSONTokenStore(cli.store).load("shared")
    other = x_emulator_factory(users=[{"id": "2000000002", "name": "Other",
                                       "username": "other_user"}])
    again = cli.login(other, "--account", "shared", "--revoke-previous")
    assert "Logged in as @other_user" in again.stdout
    assert "and revoked it (it belonged to another X user)." in again.stdout
    # Revoked where it was issued: the URLs the first login recorded.
    assert x_emulator.stats.revocations == 2 and other.stats.revocations == 0
    assert not _refreshable(x_emulator, old["refresh_token"])
    assert _refreshable(other, JSONTokenStore(cli.store).load("shared")["refresh_token"])


def test_login_help_explains_why_the_previous_pair_is_not_revoked(cli):
    done = cli.run("login", "--help", env=dict(cli.env, COLUMNS="200"))
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "does not revoke the old one: X's revoke may end every login of the same user" \
        in text
    assert "--revoke-previous" in text and "another X user or another client id" in text
    assert "--timeout bounds the whole login" in text


# -- status, refresh, logout -------------------------------------------------------------------


def test_status_lists_accounts_as_a_table_and_as_json(cli, x_emulator):
    cli.login(x_emulator)
    cli.login(x_emulator, "--account", "work", "--scope", "tweet.read users.read",
              "--scope", "tweet.write", "--scope", "offline.access")
    env = cli.emulated(x_emulator)
    table = cli.run("status", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"Store: {cli.store}"
    assert lines[1].split() == ["ACCOUNT", "USER", "SCOPES", "EXPIRES", "LAST", "REFRESH",
                                "FINGERPRINT"]
    store = JSONTokenStore(cli.store)
    work = next(line for line in lines if line.startswith("work "))
    assert "@emulated_user" in work and "tweet.write" in work
    assert re.search(r" in (2h 00m|1h 59m) ", work)
    assert fingerprint(store.load("work")["access_token"]) in work
    assert "s ago" in work

    as_json = cli.run("status", "--json", env=env)
    document = json.loads(as_json.stdout)
    assert document["store"] == str(cli.store)
    rows = {row["account"]: row for row in document["accounts"]}
    assert set(rows) == {"emulated_user", "work"}
    assert rows["work"]["scopes"] == ["tweet.read", "users.read", "tweet.write",
                                      "offline.access"]
    assert 7000 < rows["work"]["expires_in"] <= 7200
    assert rows["work"]["user"] == "emulated_user" and rows["work"]["refreshable"] is True
    assert rows["work"]["fingerprint"] == fingerprint(store.load("work")["access_token"])
    _no_secret_in([table.stdout, as_json.stdout], _tokens(cli.store))

    one = cli.run("status", "--json", "--account", "work", env=env)
    assert [row["account"] for row in json.loads(one.stdout)["accounts"]] == ["work"]


def test_status_of_an_empty_store_says_how_to_log_in(cli):
    done = cli.run("status", "--store", str(cli.store))
    assert done.returncode == 0
    assert "No accounts in" in done.stdout and "refresher login" in done.stdout
    assert not cli.store.exists()


def test_refresh_rotates_the_pair_now_with_nothing_but_the_store(cli, x_emulator):
    cli.login(x_emulator)
    before = JSONTokenStore(cli.store).load("emulated_user")
    # Only the store is named: client id and URLs come from what login recorded.
    done = cli.run("refresh", "--store", str(cli.store))
    assert done.returncode == 0, done.stderr
    after = JSONTokenStore(cli.store).load("emulated_user")
    assert after["refresh_token"] != before["refresh_token"]
    assert f"Refreshed account 'emulated_user' (@emulated_user): access token " \
           f"{fingerprint(after['access_token'])} expires in" in done.stdout
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.reused_refresh_tokens == 0
    _no_secret_in([done.stdout, done.stderr], [*_tokens(cli.store), before["refresh_token"]])


def _refresh_tokens(store: Path) -> dict[str, str]:
    return {name: JSONTokenStore(store).load(name)["refresh_token"]
            for name in JSONTokenStore(store).accounts()}


def test_refresh_all_refreshes_every_account_not_waiting_for_a_login(cli, x_emulator):
    for name in ("alice", "bob", "carol", "dave"):
        cli.login(x_emulator, "--account", name)
    store = JSONTokenStore(cli.store)
    with store.lock("carol"):  # X refused it earlier: marked, and not sent again
        store.mark_needs_login("carol", store.load("carol")["refresh_token"])
    # dave's pair was revoked at X (on another machine, say): found out by refreshing it
    TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID).revoke(
        x_emulator.revoke_url, store.load("dave")["refresh_token"], "refresh_token")
    before = _refresh_tokens(cli.store)
    x_emulator.reset_stats()

    done = cli.run("refresh", "--all", "--store", str(cli.store))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith(
        "Refreshed account 'alice' (@emulated_user): access token sha256:")
    assert lines[1].startswith("Refreshed account 'bob' (@emulated_user)")
    assert lines[2] == ("Account 'carol' (@emulated_user) needs a login, not refreshed: X "
                        "refused its refresh token (spent or revoked); log in again: "
                        "refresher login --account carol")
    assert lines[3] == ("Account 'dave' (@emulated_user) needs a login, not refreshed: log "
                        "in again: refresher login --account dave")
    _one_clear_line(done, 1, "2 of 4 accounts not refreshed (carol, dave)")
    after = _refresh_tokens(cli.store)
    assert [name for name in before if after[name] != before[name]] == ["alice", "bob"]
    stats = x_emulator.stats
    assert stats.refreshes == 2 and stats.reused_refresh_tokens == 0
    assert stats.token_requests == 3  # carol's refresh token was not even sent
    assert JSONTokenStore(cli.store).needs_login("dave")  # marked for the other processes
    _no_secret_in([done.stdout, done.stderr], [*before.values(), *after.values()])

    as_json = cli.run("refresh", "--all", "--json", "--store", str(cli.store))
    assert as_json.returncode == 1
    rows = {row["account"]: row for row in json.loads(as_json.stdout)["accounts"]}
    assert rows["alice"]["refreshed"] is True and 7000 < rows["alice"]["expires_in"] <= 7200
    assert rows["alice"]["fingerprint"] == fingerprint(store.load("alice")["access_token"])
    assert rows["carol"] == {"account": "carol", "user": "emulated_user", "refreshed": False,
                             "fresh": False, "needs_login": True,
                             "error": "X refused its refresh token (spent or revoked)",
                             "fingerprint": None, "expires_in": None}
    assert rows["dave"]["needs_login"] is True and rows["bob"]["error"] is None

    for name in ("carol", "dave"):  # logged in again: everything refreshes, exit 0
        cli.login(x_emulator, "--account", name)
    done = cli.run("refresh", "--all", "--store", str(cli.store))
    assert done.returncode == 0, done.stderr
    assert [line.split()[2] for line in done.stdout.splitlines()] == [
        "'alice'", "'bob'", "'carol'", "'dave'"]
    assert cli.run("refresh", "--all", "--account", "alice").returncode == 2
    one = cli.run("refresh", "--json", "--account", "bob", "--store", str(cli.store))
    assert [row["account"] for row in json.loads(one.stdout)["accounts"]] == ["bob"]
    empty = cli.run("refresh", "--all", "--store", str(cli.store) + ".empty")
    assert empty.returncode == 0 and empty.stdout.startswith("No accounts in ")


def test_refresh_all_in_two_processes_at_once_never_reuses_a_refresh_token(cli, x_emulator):
    for name in ("a", "b", "c"):
        cli.login(x_emulator, "--account", name)
    x_emulator.reset_stats()
    runs = [subprocess.Popen([*COMMAND, "refresh", "--all", "--store", str(cli.store)],
                             env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    assert x_emulator.stats.refreshes == 6 and x_emulator.stats.reused_refresh_tokens == 0


WEEKLY_CRON = "0 4 * * 1  cd /srv/bot && .venv/bin/refresher refresh --all --store tokens.json"


def test_weekly_cron_recipe_keeps_untouched_accounts_alive(cli, x_emulator, tmp_path):
    assert doc_block("docs/howto/idle-accounts.rst", "every Monday at 04:00:") == \
        f"{WEEKLY_CRON}\n"
    folder = tmp_path / "srv-bot"
    folder.mkdir()
    for name in ("alice", "bob"):
        cli.login(x_emulator, "--account", name, REFRESHER_STORE=str(folder / "tokens.json"))
    before = _refresh_tokens(folder / "tokens.json")
    argv = WEEKLY_CRON.split("&& ", 1)[1].split()
    assert argv[0] == ".venv/bin/refresher"
    for _week in range(3):  # cron's environment: none of the REFRESHER_* variables
        done = subprocess.run([*COMMAND, *argv[1:]], cwd=folder, env=cli.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 2
    after = _refresh_tokens(folder / "tokens.json")
    assert all(after[name] != before[name] for name in before)
    assert x_emulator.stats.refreshes == 6 and x_emulator.stats.reused_refresh_tokens == 0
    for name in after:  # every pair still works
        assert _refreshable(x_emulator, after[name])


def test_the_web_apps_keep_alive_job_as_printed(x_emulator, tmp_path):
    """The how-to's job for accounts a web app saved (no login record): each is refreshed
    with the app's client from REFRESHER_*, and one X refused is reported, not fatal."""
    import refresher

    x = x_emulator
    store = refresher.open_store(f"sqlite:///{tmp_path / 'app.db'}")
    flow = refresher.LoginFlow(DEFAULT_CLIENT_ID, token_url=x.token_url, api_url=x.api_url,
                               revoke_url=x.revoke_url, pending=store)
    flow.authorization_url()  # a login under way: not an account
    pairs = {user_id: x.issue_token() for user_id in ("1001", "1002")}
    for user_id, pair in pairs.items():
        flow.session(pair, store=store, account=user_id).close()
    flow.revoke(pairs["1002"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env.update(REFRESHER_CLIENT_ID=DEFAULT_CLIENT_ID, REFRESHER_TOKEN_URL=x.token_url,
               REFRESHER_API_URL=x.api_url)
    script = tmp_path / "keep_alive.py"
    script.write_text(doc_block("docs/howto/idle-accounts.rst", "as they can for the app):"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1002 needs to log in again\n"
    fresh = store.load("1001")
    assert fresh is not None and fresh["refresh_token"] != pairs["1001"]["refresh_token"]
    assert x.refresh_token_state(fresh["refresh_token"]) == "live"
    assert x.stats.refreshes == 1 and x.stats.reused_refresh_tokens == 0
    store.close()


def test_logout_revokes_at_x_and_removes_the_account(cli, x_emulator):
    cli.login(x_emulator)
    cli.login(x_emulator, "--account", "other")
    token = JSONTokenStore(cli.store).load("other")
    done = cli.run("logout", "--account", "other", "--store", str(cli.store))
    assert done.returncode == 0, done.stderr
    assert "Logged out account 'other' (@emulated_user): revoked at" in done.stdout
    assert JSONTokenStore(cli.store).accounts() == ["emulated_user"]
    with pytest.raises(ReauthorizationRequired):
        TokenEndpoint(x_emulator.token_url, DEFAULT_CLIENT_ID).refresh(token["refresh_token"])


def test_logout_keeps_the_account_when_x_cannot_be_reached(cli, x_emulator):
    cli.login(x_emulator)
    dead = f"http://127.0.0.1:{free_port()}/2/oauth2/revoke"
    done = cli.run("logout", "--store", str(cli.store), "--revoke-url", dead)
    assert done.returncode == 1
    assert "cannot reach" in done.stderr and "--forget-only" in done.stderr
    assert JSONTokenStore(cli.store).accounts() == ["emulated_user"]
    done = cli.run("logout", "--store", str(cli.store), "--forget-only")
    assert done.returncode == 0 and "not revoked" in done.stdout
    assert JSONTokenStore(cli.store).accounts() == []


# -- bad input: one line, the right status, no traceback unless --debug --------------------------


def _one_clear_line(done: subprocess.CompletedProcess, status: int, text: str) -> None:
    assert done.returncode == status, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("refresher: error: ") and text in lines[0]


def _ends_with_one_clear_line(done: subprocess.CompletedProcess, status: int, text: str) -> None:
    """After the login's instructions (on stderr too), one error line and no traceback."""
    assert done.returncode == status, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("refresher: error: ")]
    assert errors == lines[-1:] and text in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_account_is_a_usage_error(cli, x_emulator):
    cli.login(x_emulator)
    for command in ("status", "refresh", "logout"):
        done = cli.run(command, "--account", "nobody", "--store", str(cli.store))
        _one_clear_line(done, 2, f"no account 'nobody' in {cli.store}; the accounts there are "
                                 "emulated_user: pick one of them (--account NAME, or "
                                 "REFRESHER_ACCOUNT), or log 'nobody' in with: refresher "
                                 "login --account nobody")
        _no_secret_in([done.stderr], _tokens(cli.store))


def test_a_configuration_error_from_the_library_is_one_line_and_exit_2(cli, x_emulator):
    """LoginFlow refuses a redirect URI it cannot serve: ConfigurationError, not a traceback."""
    env = cli.emulated(x_emulator)
    done = cli.run("login", "--redirect-uri", "https://app.example.com/callback", env=env)
    _one_clear_line(done, 2, "run_local_server needs a loopback http redirect URI")
    debug = cli.run("login", "--debug", "--redirect-uri", "https://app.example.com/callback",
                    env=env)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert "ConfigurationError" in debug.stderr


def test_an_empty_account_is_refused_but_an_empty_variable_means_unset(cli, x_emulator):
    cli.login(x_emulator)
    env = cli.emulated(x_emulator)
    for command in ("login", "status", "refresh", "logout"):
        for empty in ("", "  "):
            done = cli.run(command, "--account", empty, env=env)
            assert done.returncode == 2, (command, done.stdout, done.stderr)
            assert "argument --account: must not be empty" in done.stderr
            assert "Traceback" not in done.stderr
    assert JSONTokenStore(cli.store).accounts() == ["emulated_user"]  # nothing was done
    unset = dict(env, REFRESHER_ACCOUNT="")
    done = cli.run("refresh", env=unset)  # the store's only account
    assert done.returncode == 0, done.stderr
    assert "Refreshed account 'emulated_user'" in done.stdout


def _edit_token(store: Path, account: str, **changes: Any) -> None:
    """Change a stored token behind refresher's back, as a person editing the file would."""
    document = json.loads(store.read_text())
    document["accounts"][account]["token"].update(changes)
    store.write_text(json.dumps(document))


def test_status_shows_an_invalid_expiry_and_goes_on(cli, x_emulator):
    cli.login(x_emulator, "--account", "a")
    cli.login(x_emulator, "--account", "b")
    _edit_token(cli.store, "a", expires_at="2030-01-01T00:00:00Z")
    env = cli.emulated(x_emulator)
    table = cli.run("status", env=env)
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("a "))
    assert " invalid " in row
    other = next(line for line in table.stdout.splitlines() if line.startswith("b "))
    assert re.search(r" in (2h 00m|1h 59m) ", other)
    assert "Account 'a': its expires_at is not a number" in table.stdout
    as_json = cli.run("status", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["account"]: row for row in json.loads(as_json.stdout)["accounts"]}
    assert rows["a"]["expiry_invalid"] is True and rows["a"]["expires_in"] is None
    assert rows["a"]["expires_at"] is None
    assert rows["b"]["expiry_invalid"] is False and rows["b"]["expires_in"] > 7000


def test_status_shows_an_account_that_needs_login(cli, x_emulator):
    cli.login(x_emulator, "--account", "a")
    cli.login(x_emulator, "--account", "b")
    store = JSONTokenStore(cli.store)
    with store.lock("a"):  # what a refresher does when X refuses the refresh token as spent
        store.mark_needs_login("a", store.load("a")["refresh_token"])
    env = cli.emulated(x_emulator)
    table = cli.run("status", env=env)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("a "))
    assert " needs login " in row
    assert "log in again: refresher login --account a" in table.stdout
    rows = {row["account"]: row for row in
            json.loads(cli.run("status", "--json", env=env).stdout)["accounts"]}
    assert rows["a"]["needs_login"] is True and rows["b"]["needs_login"] is False
    cli.login(x_emulator, "--account", "a")  # a new login: a new refresh token, marker moot
    rows = {row["account"]: row for row in
            json.loads(cli.run("status", "--json", env=env).stdout)["accounts"]}
    assert rows["a"]["needs_login"] is False


@pytest.fixture
def cli_in_process() -> Any:
    """refresher.cli, run in this process; its logging set-up undone afterwards."""
    from refresher import cli as cli_module

    logger = logging.getLogger("refresher")
    level, handlers = logger.level, list(logger.handlers)
    yield cli_module
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)


def test_any_refresher_error_or_bug_is_one_line(cli_in_process, monkeypatch, capsys):
    """The top-level handler: ConfigurationError (as Redis refuses an account named
    'x:lock') exits 2, another RefresherError 1, a bug 1 and never its message."""
    from refresher import ConfigurationError, TokenStoreError

    cli_module = cli_in_process

    def refuse(location: str) -> None:
        raise ConfigurationError("account name 'x:lock' ends in ':lock', which the Redis "
                                 "store keeps for its locks: choose another name")

    monkeypatch.setattr(cli_module.common, "open_store", refuse)
    assert cli_module.main(["status", "--store", "redis://127.0.0.1:1/0"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["refresher: error: account name 'x:lock' ends in ':lock', "
                                "which the Redis store keeps for its locks: choose another "
                                "name"]

    def unreachable(location: str) -> None:
        raise TokenStoreError("cannot reach Redis at 127.0.0.1:1\n(connection refused)")

    monkeypatch.setattr(cli_module.common, "open_store", unreachable)
    assert cli_module.main(["status"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "refresher: error: cannot reach Redis at 127.0.0.1:1 (connection refused)"]

    def bug(location: str) -> None:
        raise KeyError("at-secret-looking-value")

    monkeypatch.setattr(cli_module.common, "open_store", bug)
    assert cli_module.main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["refresher: error: unexpected KeyError; run the command again "
                                "with --debug for the traceback, and report it"]
    assert cli_module.main(["status", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_several_accounts_need_one_chosen(cli, x_emulator):
    cli.login(x_emulator, "--account", "a")
    cli.login(x_emulator, "--account", "b")
    done = cli.run("refresh", "--store", str(cli.store))
    _one_clear_line(done, 2, "several accounts (a, b)")


def test_a_missing_client_id_is_a_usage_error(cli):
    done = cli.run("login", "--store", str(cli.store))
    _one_clear_line(done, 2, "missing client id: pass --client-id or set REFRESHER_CLIENT_ID")


def test_a_corrupt_store_is_named_and_left_alone(cli):
    cli.store.write_text("{not json")
    for command in ("status", "refresh"):
        done = cli.run(command, "--store", str(cli.store))
        _one_clear_line(done, 1, f"token store {cli.store} is not valid JSON")
    assert cli.store.read_text() == "{not json"


def test_a_port_in_use_fails_clearly(cli, x_emulator):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        done = cli.run("login", "--port", port, env=cli.emulated(x_emulator))
        _one_clear_line(done, 1, f"cannot listen for the login callback on 127.0.0.1:{port}")
        done = cli.run("emulator", "--port", port)
        _one_clear_line(done, 1, f"cannot serve the emulator on 127.0.0.1:{port}")


def test_an_unreachable_token_url_fails_clearly_and_debug_shows_the_traceback(cli, x_emulator):
    cli.login(x_emulator)
    dead = f"http://127.0.0.1:{free_port()}/2/oauth2/token"
    done = cli.run("refresh", "--store", str(cli.store), "--token-url", dead)
    _one_clear_line(done, 1, f"cannot reach {dead}")
    debug = cli.run("refresh", "--debug", "--store", str(cli.store), "--token-url", dead)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert JSONTokenStore(cli.store).accounts() == ["emulated_user"]  # the pair is kept
    _no_secret_in([done.stderr, debug.stderr], _tokens(cli.store))


def test_argparse_errors_exit_2(cli):
    assert cli.run("demo", "--processes", "0").returncode == 2
    assert cli.run("no-such-command").returncode == 2
    assert cli.run().returncode == 2
    assert cli.run("--help").returncode == 0


# -- emulator and demo -------------------------------------------------------------------------


def test_emulator_serves_until_interrupted_and_prints_the_urls(cli):
    child = subprocess.Popen([*COMMAND, "emulator", "--port", "0", "--access-ttl", "5"],
                             env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        settings: dict[str, str] = {}
        while "REFRESHER_API_URL" not in settings:
            line = child.stdout.readline()
            assert line, "the emulator ended before printing its URLs"
            if line.strip().startswith("export "):
                name, _, value = line.strip()[len("export "):].partition("=")
                settings[name] = value
        assert settings["REFRESHER_CLIENT_ID"] == DEFAULT_CLIENT_ID
        api = settings["REFRESHER_API_URL"]
        assert requests.get(api + "/emulator/stats", timeout=5).json()["api_requests"] == 0
        assert requests.get(api + "/2/users/me", timeout=5).status_code == 401
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    from refresher.testing import DEFAULT_CLIENT_SECRET

    assert DEFAULT_CLIENT_SECRET not in out + err  # not even the emulator's test secret
    with pytest.raises(requests.ConnectionError):
        requests.get(api + "/emulator/stats", timeout=2)


def _serve(argv: list[str], env: dict[str, str], until: str) -> tuple[subprocess.Popen, str]:
    """Start an emulator main; what it printed up to the line starting with ``until``."""
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    printed = ""
    while not printed.splitlines() or not printed.splitlines()[-1].startswith(until):
        line = child.stdout.readline()
        if not line:
            child.kill()
            pytest.fail(f"the emulator ended before printing {until!r}: {printed}")
        printed += line
    return child, printed


def _authorize(url: str, redirect_uri: str) -> requests.Response:
    """The emulator's authorize page, for a link to ``redirect_uri`` (no browser: one step)."""
    from refresher import LoginFlow

    link = LoginFlow(DEFAULT_CLIENT_ID, authorize_url=url + "/i/oauth2/authorize",
                     redirect_uri=redirect_uri).authorization_url()
    return requests.get(link.url, allow_redirects=False, timeout=5)


@pytest.mark.parametrize("options, accepted, refused", [
    ([], ["http://127.0.0.1:8765/callback"],
     ["http://127.0.0.1:8766/callback", "http://localhost:8765/callback",
      "http://127.0.0.1:8765/other"]),
    (["--redirect-uri", "http://127.0.0.1:9000/cb", "--redirect-uri", "http://localhost:9001/"],
     ["http://127.0.0.1:8765/callback", "http://127.0.0.1:9000/cb", "http://localhost:9001/"],
     ["http://127.0.0.1:9001/", "http://127.0.0.1:9000/cb/"]),
    (["--any-loopback-redirect"], ["http://127.0.0.1:8766/callback", "http://localhost:1/x"],
     ["https://example.com/callback"]),
], ids=["default", "redirect-uri", "any-loopback"])
def test_the_emulator_accepts_only_registered_callback_urls_as_x_does(cli, options, accepted,
                                                                     refused):
    child, banner = _serve([*COMMAND, "emulator", "--port", "0", *options], cli.env,
                           until="Counters: ")
    try:
        url = re.search(r"serving on (http://\S+) ", banner)[1]  # type: ignore[index]
        for uri in accepted:
            answer = _authorize(url, uri)
            assert answer.status_code == 302 and answer.headers["Location"].startswith(uri)
        for uri in refused:
            assert _authorize(url, uri).status_code == 400, uri
    finally:
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=10)
    if options == ["--any-loopback-redirect"]:
        assert "Callback URLs: any http one on this machine" in banner
        assert "export REFRESHER_REDIRECT_URI=http://127.0.0.1:8765/callback" in banner
    else:
        assert f"Registered callback URL{'s' if options else ''}: {', '.join(accepted)} (" \
            in banner
        # The login is pointed at the first one asked for, else the default.
        assert f"export REFRESHER_REDIRECT_URI={accepted[1 if options else 0]}\n" in banner


def test_python_m_refresher_testing_registers_callback_urls_too(cli):
    child, line = _serve([sys.executable, "-m", "refresher.testing", "--port", "0",
                          "--redirect-uri", "http://127.0.0.1:9000/cb"], cli.env, until="{")
    try:
        info = json.loads(line)
        assert info["redirect_uris"] == ["http://127.0.0.1:8765/callback",
                                         "http://127.0.0.1:9000/cb"]
        assert _authorize(info["url"], "http://127.0.0.1:9000/cb").status_code == 302
        assert _authorize(info["url"], "http://127.0.0.1:9001/cb").status_code == 400
    finally:
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=10)
    assert cli.run("emulator", "--redirect-uri", "http://127.0.0.1:1/",
                   "--any-loopback-redirect").returncode == 2  # one or the other


@pytest.mark.parametrize("option, limit", [(["--rate-limits"], "75 calls per 900 s"),
                                           (["--rate-limits", "2/5"], "2 calls per 5 s")])
def test_the_emulator_enforces_rate_limits_when_asked(cli, option, limit):
    child, banner = _serve([*COMMAND, "emulator", "--port", "0", *option], cli.env,
                           until="Counters: ")
    child.send_signal(signal.SIGINT)
    child.communicate(timeout=10)
    assert f"Rate limits enforced: {limit} per user and endpoint" in banner
    refused = cli.run("emulator", "--rate-limits", "2/x")
    assert refused.returncode == 2 and "takes CALLS/SECONDS" in refused.stderr
    python_m = subprocess.run([sys.executable, "-m", "refresher.testing", "--rate-limits", "0/5"],
                              env=cli.env, capture_output=True, text=True, timeout=30)
    assert python_m.returncode == 2 and "at least 1 call" in python_m.stderr


def test_login_help_says_only_the_emulator_takes_any_port(cli):
    text = " ".join(cli.run("login", "--help", env=dict(cli.env, COLUMNS="200")).stdout.split())
    assert ("0: any free port — only the emulator accepts it (refresher emulator "
            "--any-loopback-redirect); X needs the registered callback exactly") in text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("main", ["refresher emulator", "python -m refresher.testing"])
def test_both_emulator_mains_stop_on_either_signal_even_with_sigint_ignored(cli, main, signum):
    """One serving loop behind both: SIGINT or SIGTERM stops it with exit 0, even in a
    process started with SIGINT ignored, as every background job of a non-interactive shell
    is (`pytest &` included): Python raises no KeyboardInterrupt there, so the loop installs
    its own handler before it prints anything."""
    argv = ([*COMMAND, "emulator", "--port", "0"] if main.startswith("refresher ")
            else [sys.executable, "-m", "refresher.testing", "--port", "0"])
    ignoring = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]  # exec keeps SIG_IGN
    child = subprocess.Popen(ignoring, env=cli.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline(), "the emulator ended before announcing itself"
        child.send_signal(signum)
        out, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "Traceback" not in err


def test_demo_with_the_defaults_and_no_environment(cli, tmp_path):
    """What a new user runs first (the tutorial's first command, as printed): no variable
    set, a table, exit 0."""
    command = doc_block("docs/tutorial/emulator.rst", "Watch the demo")
    assert command == "refresher demo\n"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cli.home)}
    started = time.monotonic()
    done = subprocess.run([*COMMAND, *command.split()[1:]], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    print(done.stdout, done.stderr, f"{time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == ("refresher demo: 4 processes x 3 threads, 10 s, access tokens living "
                      "2 s, one shared store")
    numbers = {line[:24].strip(): line[24:].strip() for line in out[1:-1]}
    assert list(numbers) == ["requests", "failed", "refreshes", "expiry windows",
                             "refreshes per window", "reused refresh tokens"]
    assert int(numbers["requests"]) > 0 and numbers["failed"] == "0"
    assert numbers["reused refresh tokens"] == "0" and numbers["expiry windows"] == "5"
    # Never one refresh per process per window: refreshes through the store are at least
    # 0.9 of a 2 s lifetime apart (1 + 10 / 1.8 in all, ~1.3 a window). Fewer only mean
    # fewer requests on a busy machine, not a fault: no lower bound.
    assert int(numbers["refreshes"]) >= 1 and float(numbers["refreshes per window"]) <= 1.6
    assert out[-1].startswith("OK:")
    shown = doc_block("docs/tutorial/emulator.rst", "    refresher demo\n\n").splitlines()
    table = shown[shown.index(out[0]):]  # the page shows the same table, with its numbers
    assert [line[:24].strip() for line in table[1:-1]] == list(numbers)
    assert table[-1] == out[-1]
    progress = [line for line in done.stderr.splitlines() if " requests " in line]
    assert len(progress) >= 3 and "\r" not in done.stderr  # plain lines when not a terminal
    assert "Logged in as @emulated_user" in done.stderr
    assert not list(cli.home.iterdir())  # nothing left in the user's home


def test_demo_json_via_python_m_refresher(cli, tmp_path):
    store = tmp_path / "demo-tokens.json"
    done = subprocess.run(
        [sys.executable, "-m", "refresher", "demo", "--processes", "2", "--threads", "2",
         "--seconds", "3", "--access-ttl", "1", "--json", "--store", str(store)],
        env=cli.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # the only thing on stdout: one JSON object
    assert list(result) == JSON_KEYS
    assert result["processes"] == 2 and result["seconds"] == 3 and result["windows"] == 3
    assert result["threads"] == 2 and result["access_ttl"] == 1
    assert result["failed"] == 0 and result["reused_refresh_tokens"] == 0
    # The login's pair has expired when the workers start; then at most one refresh per 0.9 s
    assert result["requests"] > 0 and 1 <= result["refreshes"] <= 6
    assert JSONTokenStore(store).accounts() == ["demo"]  # --store: the login went there


def test_demo_never_touches_a_real_account_nor_makes_folders(cli, x_emulator, tmp_path):
    cli.login(x_emulator, "--account", "demo")  # someone's real account, named 'demo'
    kept = cli.store.read_text()
    small = ["--processes", "1", "--threads", "1", "--seconds", "1"]
    done = cli.run("demo", *small, "--store", str(cli.store))
    _one_clear_line(done, 2, f"{cli.store} already holds an account named 'demo', which the "
                             "demo would replace: choose another store, or pass --force")
    assert cli.store.read_text() == kept
    forced = cli.run("demo", *small, "--store", str(cli.store), "--force")
    assert forced.returncode == 0, forced.stderr
    # The demo's login replaced the account, and its record: its own emulator's URLs now.
    record = JSONTokenStore(cli.store).load_metadata("demo")
    assert record["client_id"] == DEFAULT_CLIENT_ID and "username" not in record
    assert record["token_url"].startswith("http://127.0.0.1:")
    assert record["token_url"] != x_emulator.token_url

    missing = tmp_path / "nonexistent" / "dir"
    done = cli.run("demo", *small, "--store", str(missing / "tokens.json"))
    _one_clear_line(done, 2, f"the folder of {missing / 'tokens.json'} does not exist; the "
                             "demo creates no folder")
    assert not (tmp_path / "nonexistent").exists()
    text = " ".join(cli.run("demo", "--help", env=dict(cli.env, COLUMNS="200")).stdout.split())
    assert "the demo writes an account named 'demo' there, and refuses a store that already " \
        "holds one (--force)" in text


@pytest.mark.parametrize("how", ["ctrl-c", "kill -INT, SIGINT ignored", "kill -TERM"])
def test_demo_interrupted_prints_the_counts_so_far_and_exits_130(cli, how):
    """Ctrl-C at a terminal sends SIGINT to the whole process group, workers included;
    `kill -INT` to a background job of a script reaches a process that ignores SIGINT;
    `docker stop` sends SIGTERM to the demo alone, which stops its workers in order and
    exits 143."""
    argv = [*COMMAND, "demo", "--processes", "2", "--threads", "1", "--seconds", "60"]
    if how == "kill -INT, SIGINT ignored":
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]  # exec keeps SIG_IGN
    child = subprocess.Popen(argv, env=cli.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stderr is not None
        seen = 0
        while not seen:  # a progress line that counted requests
            line = child.stderr.readline()
            assert line, "the demo ended before its progress lines"
            match = re.search(r" (\d+) requests ", line)
            seen = int(match[1]) if match else 0
        sent = time.monotonic()
        if how == "ctrl-c":
            os.killpg(child.pid, signal.SIGINT)
        else:
            child.send_signal(signal.SIGTERM if how == "kill -TERM" else signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    term = how == "kill -TERM"
    assert child.returncode == (143 if term else 130), err
    assert time.monotonic() - sent < 15
    numbers = {line[:24].strip(): line[24:].strip() for line in out.splitlines()[1:-1]}
    assert int(numbers["requests"]) >= seen and numbers["reused refresh tokens"] == "0"
    assert re.fullmatch(rf"{'TERMINATED' if term else 'INTERRUPTED'} after \d+(\.\d)? s: "
                        r"the counts so far\.", out.splitlines()[-1])
    assert err.splitlines()[-1].startswith(
        "refresher: terminated (SIGTERM) after " if term else "refresher: interrupted after ")
    assert "Traceback" not in err and err.endswith("\n")


def test_demo_progress_is_plain_lines_ending_in_a_newline_off_a_terminal(x_emulator):
    from refresher.demo import _ProgressLine

    log = io.StringIO()  # stderr redirected to a file or a pipe
    line = _ProgressLine(log, 2, x_emulator)
    line(5, 0, 0.5)
    line(10, 1, 2.0)
    line.finish()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text and text.endswith(" reused\n")
    assert len(text.splitlines()) == 2 and (line.done, line.failed) == (10, 1)


def test_demo_progress_rewrites_one_line_on_a_terminal(x_emulator):
    from refresher.demo import _ProgressLine

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    line = _ProgressLine(terminal, 10, x_emulator)
    line(5, 0, 0.5)
    line(10, 1, 1.0)
    line.finish()
    text = terminal.getvalue()
    assert text.count("\r") == 2 and text.endswith("\x1b[K\n")
    assert "10 requests  1 failed  0 refreshes  0 reused" in text


def test_a_demo_with_failures_or_reused_tokens_is_not_ok():
    from refresher.demo import DemoResult, format_table

    good = {"requests": 10, "failed": 0, "refreshes": 2, "windows": 2,
            "refreshes_per_window": 1.0, "reused_refresh_tokens": 0, "processes": 1,
            "seconds": 2}
    assert DemoResult(good, 1, 1.0).ok
    for bad in ({"failed": 1}, {"reused_refresh_tokens": 1}):
        result = DemoResult(dict(good, **bad), 1, 1.0)
        assert not result.ok and "FAILED" in format_table(result)
        assert list(result.public()) == JSON_KEYS


# -- the recipes: a sync script and a cron job whose runs overlap (the tutorial), rate limits --


#: The tutorial's scripts, as printed (docs/tutorial/first-script.rst, docs/tutorial/cron.rst).
SYNC_SCRIPT = doc_block("docs/tutorial/first-script.rst", "Save this as ``sync.py``:")
CRON_SCRIPT = doc_block("docs/tutorial/cron.rst", "Save this as ``cron_job.py``:")


def test_sync_script_recipe(cli, x_emulator, tmp_path):
    cli.login(x_emulator, "--account", "alice", "--scope",
              "tweet.read tweet.write users.read offline.access")
    script = tmp_path / "sync.py"
    script.write_text(SYNC_SCRIPT)
    env = dict(cli.env, REFRESHER_STORE=str(cli.store))  # as `refresher login` left it
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("@emulated_user posted tweet ")


def test_cron_recipe_overlapping_runs_share_one_store(cli, x_emulator_factory, tmp_path):
    x = x_emulator_factory(access_ttl=1.0)
    cli.login(x, "--account", "alice")
    script = tmp_path / "cron_job.py"
    script.write_text(CRON_SCRIPT)
    env = dict(cli.env, REFRESHER_STORE=str(cli.store))
    runs = []
    started = time.monotonic()
    for _ in range(5):  # cron starts a run while the previous ones are still going
        runs.append(subprocess.Popen([sys.executable, str(script)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.4)
    results = [(run.wait(timeout=60), run.stderr.read() if run.stderr else "") for run in runs]
    span = time.monotonic() - started
    for run in runs:
        for stream in (run.stdout, run.stderr):
            if stream:
                stream.close()
    assert [status for status, _ in results] == [0] * 5, results
    stats = x.stats
    print(stats)  # a 401 now and then is a token that ran out in flight on a busy machine,
    # cured by a refresh and a replay the job never saw (its exit status says so)
    assert stats.api_requests >= 150 and stats.reused_refresh_tokens == 0
    # One per token lifetime (refreshed 0.1 s early: every ~0.9 s), not one per run per expiry.
    assert 1 <= stats.refreshes <= span / 0.9 + 2


def test_rate_limit_recipe_waits_out_the_429s(cli, x_emulator_factory, tmp_path):
    x = x_emulator_factory(enforce_rate_limits=True, rate_limit=2, rate_window=1.0)
    cli.login(x, "--account", "alice")
    script = tmp_path / "patient.py"
    script.write_text(doc_block("docs/howto/rate-limits.rst",
                                "plus a second, then goes out once more:"))
    env = dict(cli.env, REFRESHER_STORE=str(cli.store))
    before = x.stats.api_requests
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["emulated_user"] * 3
    stats = x.stats  # 3 calls in a second or so: one 429 at least, unless a window ends
    assert stats.api_requests - before == 3 + stats.rate_limited  # each 429 replayed once


def test_the_recipes_these_tests_run_are_the_pages_blocks():
    """The scripts come from the pages (doc_block), so the pages show exactly what runs."""
    assert "open_session(\"alice\")" in SYNC_SCRIPT and "for _ in range(30)" in CRON_SCRIPT


@pytest.mark.integration
def test_version_flag():
    done = subprocess.run([sys.executable, "-m", "refresher", "--version"],
                          capture_output=True, text=True, timeout=60)
    import refresher

    assert done.returncode == 0 and done.stdout.strip() == f"refresher {refresher.__version__}"


def test_commands_take_a_redis_url_as_the_store(cli, x_emulator, redis_server):
    url = redis_server.url
    cli.login(x_emulator, "--account", "alice", REFRESHER_STORE=url)
    status = cli.run("status", "--json", "--store", url, env=cli.emulated(x_emulator))
    assert status.returncode == 0, status.stderr
    assert [a["account"] for a in json.loads(status.stdout)["accounts"]] == ["alice"]
    done = cli.run("refresh", "--store", url, env=cli.emulated(x_emulator))
    assert done.returncode == 0, done.stderr
    assert x_emulator.stats.refreshes == 1
