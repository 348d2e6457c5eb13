"""Mistakes are refused at once, and create nothing (issue 15, item 9).

An unknown store URL, a refreshing front end without a client id, a login URL in plain http
to another machine, a store in a folder that does not exist: each is a clear error before
anything is created, shown or sent. The command line runs as a real process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from refresher import (
    ConfigurationError,
    InsecureTransport,
    JSONTokenStore,
    LoginFlow,
    MemoryTokenStore,
    RefreshingSession,
    open_store,
)
from refresher.testing import DEFAULT_CLIENT_ID

_SCRIPT = shutil.which("refresher", path=os.path.dirname(sys.executable))
COMMAND = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "refresher"]


def run(*args: str, env: dict[str, str], cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """No REFRESHER_* setting, a private HOME, and a $BROWSER that leaves a mark if run."""
    home = tmp_path / "home"
    home.mkdir()
    browser = tmp_path / "browser"
    browser.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        open({str(tmp_path / 'browser-was-opened')!r}, "w").close()
        """))
    browser.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REFRESHER_", "XDG_", "BROWSER", "DISPLAY"))}
    env.update(HOME=str(home), BROWSER=str(browser), PYTHONUNBUFFERED="1")
    return env


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- an unknown store URL ----------------------------------------------------------------------

UNKNOWN = ["mysql://u:pw-s3cret@127.0.0.1/x", "https://u:pw-s3cret@example.com/tokens",
           "redis+sentinel://:pw-s3cret@127.0.0.1:26379/0", "mssql+pyodbc://u:pw-s3cret@h/db",
           "file:///tmp/tokens.json"]


@pytest.mark.parametrize("location", UNKNOWN)
def test_an_unknown_store_url_is_refused_naming_its_scheme_and_creates_nothing(
        location, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        open_store(location)
    message = str(caught.value)
    scheme = location.split("://")[0]
    assert f"{scheme}://" in message
    assert "redis://" in message and "sqlite:///" in message and "postgresql://" in message
    assert "pw-s3cret" not in message
    with pytest.raises(ConfigurationError):
        RefreshingSession(DEFAULT_CLIENT_ID, store=location)
    assert _everything_under(tmp_path) == []


def test_the_command_line_refuses_an_unknown_store_url_and_creates_nothing(tmp_path,
                                                                           clean_env):
    work = tmp_path / "work"
    work.mkdir()
    for command in (["status"], ["login", "--client-id", "app", "--no-browser"],
                    ["refresh", "--account", "a"]):
        done = run(*command, "--store", "mysql://u:pw-s3cret@127.0.0.1/x", env=clean_env,
                   cwd=work)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith("refresher: error: mysql:// is not a token store")
        assert "pw-s3cret" not in done.stdout + done.stderr
    assert _everything_under(work) == []


# -- a lock lifetime that is no number of seconds ------------------------------------------------

@pytest.mark.parametrize("module", ["redis", "sqlalchemy"])
@pytest.mark.parametrize("lock_ttl", [True, 0, -1.0, "30"])
def test_a_store_lock_ttl_that_is_no_positive_number_of_seconds_is_refused(
        module, lock_ttl, tmp_path):
    pytest.importorskip(module)
    location = ("redis://127.0.0.1:6379/0" if module == "redis"
                else f"sqlite:///{tmp_path / 'tokens.db'}")
    with pytest.raises(ConfigurationError, match="lock_ttl must be a positive number"):
        open_store(location, lock_ttl=lock_ttl)
    assert _everything_under(tmp_path) == []


@pytest.mark.parametrize("name", ["C:\\Users\\me\\tokens.json", "backup:1.json",
                                  "tokens.json:v2", "data/t:1.json"])
def test_a_path_with_a_colon_further_in_is_still_a_json_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    store = open_store(name)
    assert isinstance(store, JSONTokenStore)
    with store.lock("a"):
        store.save("a", {"access_token": "x", "refresh_token": "y"})
    assert (tmp_path / name).is_file()


# -- a refreshing front end without a client id -------------------------------------------


def _front_ends() -> list[type]:
    found: list[type] = [RefreshingSession]
    for module, name in (("refresher.httpx", "RefreshingAuth"),
                         ("refresher.aiohttp", "RefreshingMiddleware")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:
            pass
    return found


@pytest.mark.parametrize("cls", _front_ends(), ids=lambda cls: cls.__name__)
def test_a_refreshing_front_end_without_a_client_id_is_refused_when_built(
        cls, x_emulator, tmp_path, monkeypatch):
    monkeypatch.delenv("REFRESHER_CLIENT_ID", raising=False)
    token = x_emulator.issue_token()
    store = JSONTokenStore(tmp_path / "tokens.json")
    with pytest.raises(ConfigurationError, match="client_id.*REFRESHER_CLIENT_ID"):
        cls(store=store, token=token, token_url=x_emulator.token_url)
    assert not (tmp_path / "tokens.json").exists()  # nothing was saved
    with pytest.raises(ConfigurationError, match="REFRESHER_CLIENT_ID"):
        cls(on_token_update=lambda t: None, token=token, token_url=x_emulator.token_url)

    monkeypatch.setenv("REFRESHER_CLIENT_ID", DEFAULT_CLIENT_ID)  # or from the environment
    front = cls(store=store, token=token, token_url=x_emulator.token_url)
    front.refresh()
    front.close()
    assert x_emulator.stats.refreshes == 1


def test_a_session_finds_the_client_id_its_account_was_logged_in_with(x_emulator, tmp_path,
                                                                      monkeypatch):
    monkeypatch.delenv("REFRESHER_CLIENT_ID", raising=False)
    store = JSONTokenStore(tmp_path / "tokens.json")
    with store.lock("alice"):
        store.save("alice", x_emulator.issue_token())
    store.save_metadata("alice", {"client_id": DEFAULT_CLIENT_ID})
    with RefreshingSession(store=store, account="alice",
                           token_url=x_emulator.token_url) as session:
        session.refresh()
    assert x_emulator.stats.refreshes == 1


def test_a_plain_session_still_needs_no_client_id(monkeypatch):
    monkeypatch.delenv("REFRESHER_CLIENT_ID", raising=False)
    assert not RefreshingSession().manages_tokens  # an OAuth2Session, as before


def test_a_refreshing_session_refuses_a_plain_http_token_url_when_built(monkeypatch):
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    with pytest.raises(InsecureTransport, match="https"):
        RefreshingSession(DEFAULT_CLIENT_ID, store=MemoryTokenStore(),
                          token_url="http://example.com/2/oauth2/token")


# -- a login URL in plain http -------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--token-url", "--authorize-url", "--api-url",
                                    "--revoke-url"])
def test_login_with_a_plain_http_url_fails_before_any_browser_or_url(option, tmp_path,
                                                                     clean_env, x_emulator):
    env = dict(clean_env, REFRESHER_CLIENT_ID=DEFAULT_CLIENT_ID,
               REFRESHER_AUTHORIZE_URL=x_emulator.authorize_url,
               REFRESHER_TOKEN_URL=x_emulator.token_url, REFRESHER_API_URL=x_emulator.api_url,
               REFRESHER_REVOKE_URL=x_emulator.revoke_url)
    store = tmp_path / "tokens.json"
    done = run("login", "--port", "0", "--store", str(store), option,
               "http://example.com/2/oauth2/x", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith("refresher: error: ")
    assert "requires https" in done.stderr and option in done.stderr
    assert "unexpected" not in done.stderr
    assert "authorize" not in done.stdout and "oauth2/authorize?" not in done.stderr
    assert not (tmp_path / "browser-was-opened").exists()
    assert not store.exists()
    assert x_emulator.stats.token_requests == 0


def test_a_login_flow_refuses_a_plain_http_url_when_built(monkeypatch):
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    for name in ("token_url", "authorize_url", "api_url", "revoke_url"):
        with pytest.raises(InsecureTransport, match=f"{name}: .*https"):
            LoginFlow("my-client-id", **{name: "http://example.com/x"})
    LoginFlow("my-client-id", token_url="http://127.0.0.1:8000/2/oauth2/token")  # loopback


# -- where the store is ---------------------------------------------------------------------------


def test_a_relative_sqlite_store_is_its_absolute_file_wherever_the_process_goes(
        tmp_path, monkeypatch):
    pytest.importorskip("sqlalchemy")
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    store = open_store("sqlite:///tokens.db")
    absolute = str(tmp_path / "here" / "tokens.db")
    assert repr(store) == f"SQLTokenStore('sqlite:///{absolute}', table='refresher_tokens')"
    monkeypatch.chdir(tmp_path / "elsewhere")
    with store.lock("a"):
        store.save("a", {"access_token": "x", "refresh_token": "y"})
    store.close()
    assert _everything_under(tmp_path / "elsewhere") == []
    assert open_store(f"sqlite:///{absolute}").accounts() == ["a"]


def test_status_shows_a_relative_sqlite_store_by_its_absolute_path(tmp_path, clean_env):
    pytest.importorskip("sqlalchemy")
    done = run("status", "--store", "sqlite:///tokens.db", env=clean_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"sqlite:///{tmp_path / 'tokens.db'}" in done.stdout


@pytest.mark.parametrize("command", [["status"], ["refresh", "--account", "a"],
                                     ["logout", "--account", "a"]])
@pytest.mark.parametrize("store", ["{missing}/t.json", "sqlite:///{missing}/t.db"])
def test_a_store_in_a_folder_that_does_not_exist_is_refused_and_created_nowhere(
        command, store, tmp_path, clean_env):
    pytest.importorskip("sqlalchemy")
    missing = tmp_path / "no" / "such" / "dir"
    done = run(*command, "--store", store.format(missing=missing), env=clean_env,
               cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"the folder {missing} of token store" in done.stderr
    assert "does not exist" in done.stderr
    assert not (tmp_path / "no").exists()
    env = dict(clean_env, REFRESHER_STORE=store.format(missing=missing))  # the same, from there
    assert run(*command, env=env, cwd=tmp_path).returncode == 2
    assert not (tmp_path / "no").exists()


def test_the_default_store_reads_empty_before_the_first_login_and_creates_nothing(clean_env):
    done = run("status", "--json", env=clean_env)  # the default store, before any login
    assert done.returncode == 0 and '"accounts": []' in done.stdout
    assert not (Path(clean_env["HOME"]) / ".config").exists()
