"""examples/flask_app.py, the web-app recipe, through Flask's test client with the emulator as X."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest
import requests

import refresher
from refresher import SQLTokenStore
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
from refresher.testing.net import free_port

pytest.importorskip("flask")

REDIRECT_URI = "http://127.0.0.1:5000/callback"


def _example() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "examples" / "flask_app.py"
    spec = importlib.util.spec_from_file_location("flask_app_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_app(tmp_path):
    example = _example()
    stores: list[SQLTokenStore] = []

    def make(x: XEmulator):
        store = SQLTokenStore(f"sqlite:///{tmp_path / 'web-tokens.db'}")
        stores.append(store)
        app = example.create_app(client_id=DEFAULT_CLIENT_ID, redirect_uri=REDIRECT_URI,
                                 store=store, authorize_url=x.authorize_url,
                                 token_url=x.token_url, api_url=x.api_url,
                                 secret_key="test-only")
        return app, store

    yield make
    for store in stores:
        store.close()


def _to_x_and_back(client) -> str:
    """/login, then X's authorize page (the emulator) sends the browser back: its URL."""
    login = client.get("/login")
    assert login.status_code == 302
    authorize = login.headers["Location"]
    back = requests.get(authorize, allow_redirects=False, timeout=10)
    assert back.status_code == 302
    location = back.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    return location


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_a_user_logs_in_and_the_app_keeps_their_token_alive(make_app, x_emulator_factory):
    x = x_emulator_factory(access_ttl=1.0)
    app, store = make_app(x)
    client = app.test_client()
    assert "Log in with X" in client.get("/").get_data(as_text=True)

    location = _to_x_and_back(client)
    with client.session_transaction() as cookie:  # the verifier never rides in the cookie
        assert set(cookie) == {"login_state"}
    done = client.get(_path(location))
    assert done.status_code == 302 and done.headers["Location"] == "/"

    assert store.accounts() == ["1000000001"]            # saved under the user's X id
    assert store.load_metadata("1000000001")["token_url"] == x.token_url  # as login records
    first = store.load("1000000001")
    assert "Hello @emulated_user" in client.get("/").get_data(as_text=True)

    time.sleep(1.1)                                       # the access token expires
    assert "Hello @emulated_user" in client.get("/").get_data(as_text=True)
    assert store.load("1000000001")["refresh_token"] != first["refresh_token"]
    stats = x.stats
    # One refresh for the page after the sleep; a busy machine that took 0.9 s to show the
    # first page refreshed there too (one per page at most, never reusing a token).
    assert stats.exchanges == 1 and 1 <= stats.refreshes <= 2
    assert stats.reused_refresh_tokens == 0

    client.get("/logout")
    assert "Log in with X" in client.get("/").get_data(as_text=True)
    assert store.accounts() == ["1000000001"]  # kept for the app's background jobs


def test_a_callback_from_another_browser_or_replayed_is_refused(make_app, x_emulator):
    app, store = make_app(x_emulator)
    mine = app.test_client()
    location = _to_x_and_back(mine)

    theirs = app.test_client()                    # no login_state cookie: login CSRF
    refused = theirs.get(_path(location))
    assert refused.status_code == 400 and "another browser" in refused.get_data(as_text=True)

    again = app.test_client()
    location = _to_x_and_back(again)
    assert again.get(_path(location)).status_code == 302
    replay = again.get(_path(location))           # the state was spent
    assert replay.status_code == 400
    assert x_emulator.stats.exchanges == 1 and store.accounts() == ["1000000001"]


def test_a_refusal_at_x_shows_a_login_failed_page(make_app, x_emulator_factory):
    x = x_emulator_factory(auto_approve=False)
    app, store = make_app(x)
    client = app.test_client()
    location = _to_x_and_back(client)
    assert "error=access_denied" in location
    page = client.get(_path(location))
    assert page.status_code == 400
    assert "Login failed" in page.get_data(as_text=True)
    assert "access_denied" in page.get_data(as_text=True)
    assert store.accounts() == []


def test_a_user_whose_token_was_revoked_is_sent_to_log_in_again(make_app, x_emulator):
    app, store = make_app(x_emulator)
    client = app.test_client()
    client.get(_path(_to_x_and_back(client)))
    x_emulator.revoke_all()
    answer = client.get("/")
    assert answer.status_code == 302 and answer.headers["Location"] == "/login"


def test_the_users_tokens_live_in_the_apps_sqlite_database(tmp_path, monkeypatch,
                                                          x_emulator):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    app = _example().create_app(client_id=DEFAULT_CLIENT_ID, redirect_uri=REDIRECT_URI,
                                authorize_url=x_emulator.authorize_url,
                                token_url=x_emulator.token_url, api_url=x_emulator.api_url,
                                secret_key="test-only")
    store = app.extensions["refresher"]["store"]
    assert isinstance(store, SQLTokenStore)
    client = app.test_client()
    client.get(_path(_to_x_and_back(client)))
    with sqlite3.connect(tmp_path / "app.db") as db:  # one row per user, under their X id
        rows = db.execute("SELECT account, version FROM refresher_tokens").fetchall()
    assert rows == [("1000000001", 1)]
    assert "Hello @emulated_user" in client.get("/").get_data(as_text=True)
    store.close()


# -- two worker processes: one serves /login, the other /callback --------------------------

WORKER = r'''
import importlib.util, json, sys
import refresher

config = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location("flask_app_example", config["example"])
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
app = example.create_app(client_id=config["client_id"], redirect_uri=config["redirect_uri"],
                         store=refresher.SQLTokenStore(config["database"]),
                         authorize_url=config["authorize_url"], token_url=config["token_url"],
                         api_url=config["api_url"], secret_key="shared-by-the-workers")
app.run(host="127.0.0.1", port=config["port"])
'''


class Worker:
    """The example app served by a process of its own (as gunicorn -w 2 would run it)."""

    def __init__(self, config: dict[str, object], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REFRESHER_", "X_"))}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps({**config, "port": port})], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.communicate()[1]
            try:
                requests.get(self.url + "/", timeout=5)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f"the worker at {self.url} never answered")

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=30)


@pytest.mark.integration
def test_one_worker_serves_login_and_another_the_callback(x_emulator, tmp_path):
    database = f"sqlite:///{tmp_path / 'web-tokens.db'}"
    first, second = free_port(), free_port()
    config = {"example": str(Path(__file__).resolve().parent.parent / "examples"
                             / "flask_app.py"),
              "client_id": DEFAULT_CLIENT_ID, "database": database,
              "redirect_uri": f"http://127.0.0.1:{second}/callback",
              "authorize_url": x_emulator.authorize_url, "token_url": x_emulator.token_url,
              "api_url": x_emulator.api_url}
    workers = [Worker(config, first), Worker(config, second)]
    try:
        for worker in workers:
            worker.wait_ready()
        browser = requests.Session()
        login = browser.get(workers[0].url + "/login", allow_redirects=False, timeout=10)
        assert login.status_code == 302
        back = browser.get(login.headers["Location"], allow_redirects=False, timeout=10)
        callback = back.headers["Location"]
        assert callback.startswith(workers[1].url + "/callback?")   # the other worker
        done = browser.get(callback, allow_redirects=False, timeout=10)
        assert done.status_code == 302 and done.headers["Location"] == "/", done.text
        for worker in workers:                      # logged in, whichever worker answers
            assert "Hello @emulated_user" in browser.get(worker.url + "/", timeout=10).text
        replay = browser.get(callback, allow_redirects=False, timeout=10)
        assert replay.status_code == 400            # the login was spent
    finally:
        for worker in workers:
            worker.stop()
    store = SQLTokenStore(database)
    assert store.accounts() == ["1000000001"]        # saved, and no login left under way
    assert store.load("refresher:pending-logins") is None
    store.close()
    assert x_emulator.stats.exchanges == x_emulator.stats.token_requests == 1


# -- what it needs, and REFRESHER_* ---------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask_app.py"


def test_the_example_says_what_it_needs_at_its_top() -> None:
    top = "\n".join(EXAMPLE.read_text().splitlines()[:8])
    assert "pip install flask" in top
    assert "pip install -e '.[sql]' flask" in top      # a checkout: the one spelling, quoted
    assert "refresher-0.1.0-py3-none-any.whl[sql]' flask" in top


def test_pointed_at_the_emulator_by_the_export_lines_refresher_emulator_prints(
        x_emulator_factory, monkeypatch, tmp_path) -> None:
    """Nothing given to create_app: the client id, the URLs, the callback and the store
    come from the ``export REFRESHER_...`` lines ``refresher emulator --redirect-uri
    http://127.0.0.1:5000/callback`` prints (the store moved into this test's folder). The
    login is recorded as refresher login records one, so a background job's
    ``open_session(user_id, store=...)`` needs nothing more."""
    from refresher.cli.offline import banner

    for name in [k for k in os.environ if k.startswith(("REFRESHER_", "X_"))]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    x = x_emulator_factory(redirect_uris=[REDIRECT_URI])
    printed = banner(x, [REDIRECT_URI], REDIRECT_URI)
    exports = dict(re.findall(r"^ +export (REFRESHER_\w+)=(\S+)$", printed, re.MULTILINE))
    assert {"REFRESHER_CLIENT_ID", "REFRESHER_TOKEN_URL", "REFRESHER_STORE"} <= set(exports)
    exports["REFRESHER_STORE"] = str(tmp_path / "tokens.json")
    for name, value in exports.items():
        monkeypatch.setenv(name, value)

    app = _example().create_app(secret_key="test-only")
    store = app.extensions["refresher"]["store"]
    assert store.path == tmp_path / "tokens.json"
    client = app.test_client()
    location = _to_x_and_back(client)               # the callback REFRESHER_REDIRECT_URI says
    assert client.get(_path(location)).status_code == 302
    assert "Hello @emulated_user" in client.get("/").get_data(as_text=True)
    assert x.stats.exchanges == 1

    for name in ("REFRESHER_CLIENT_ID", "REFRESHER_TOKEN_URL", "REFRESHER_API_URL"):
        monkeypatch.delenv(name)                    # the login's record is enough
    with refresher.open_session("1000000001", store=str(tmp_path / "tokens.json")) as job:
        assert job.token_url == x.token_url and job.api_url == x.api_url
        assert job.me()["username"] == "emulated_user"
        job.refresh()
    assert x.stats.refreshes == 1 and x.stats.reused_refresh_tokens == 0
