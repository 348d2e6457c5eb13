"""Logins across workers: ``LoginFlow(pending=store)`` keeps each link's login in the store,
where any process sharing it finishes the login, once; per-link scopes and state.

Against the emulator over loopback, on every kind of store, and with real processes: one
makes the link, another (or two racing) finishes it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from doc_blocks import doc_block

import refresher
from refresher import (
    ConfigurationError,
    JSONTokenStore,
    LoginError,
    LoginFlow,
    MemoryTokenStore,
    RefreshingSession,
    TokenStore,
)
from refresher.login_link import AuthorizationLink, new_link
from refresher.pending_logins import PENDING_LOGINS, PendingLogins
from refresher.settings import choose_account
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
from refresher.testing.clock import FakeClock

REDIRECT_URI = "http://127.0.0.1:8765/callback"
STORES = ["json", "sqlite", "postgresql", "redis"]


@pytest.fixture(autouse=True)
def _no_refresher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("REFRESHER_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store of the kind asked for lives: a path or a URL every process can open."""
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


@pytest.fixture
def store(location: str) -> Any:
    opened = refresher.open_store(location)
    yield opened
    opened.close()


def _flow(x: XEmulator, pending: Any, **kwargs: Any) -> LoginFlow:
    return LoginFlow(DEFAULT_CLIENT_ID, redirect_uri=REDIRECT_URI,
                     authorize_url=x.authorize_url, token_url=x.token_url, api_url=x.api_url,
                     pending=pending, **kwargs)


def _back(link: AuthorizationLink | str) -> str:
    """Where the emulator sends the browser after approving the link."""
    url = link if isinstance(link, str) else link.url
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return str(answer.headers["Location"])


def _pending(store: TokenStore) -> dict[str, Any]:
    return dict((store.load(PENDING_LOGINS) or {}).get("logins", {}))


# -- one process, every store --------------------------------------------------------------

@pytest.mark.parametrize("location", ["memory", *STORES], indirect=True)
def test_a_login_is_kept_in_the_store_and_finished_from_the_callback_alone(
        location: str, x_emulator: XEmulator, request: pytest.FixtureRequest) -> None:
    store = MemoryTokenStore() if location == "memory" else request.getfixturevalue("store")
    link = _flow(x_emulator, store).authorization_url()
    assert len(_pending(store)) == 1
    assert store.accounts() == []                      # a login under way is no account

    other = _flow(x_emulator, store)                   # another worker's flow, same store
    token = other.exchange(_back(link))
    assert token["refresh_token"] and x_emulator.stats.exchanges == 1
    other.session(token, store=store, account="alice").close()
    assert store.accounts() == ["alice"]
    assert store.load(PENDING_LOGINS) is None          # the last one gone: the entry too


@pytest.mark.parametrize("location", ["memory", *STORES], indirect=True)
def test_an_unknown_used_or_expired_state_is_a_login_error_that_spends_no_code(
        location: str, x_emulator: XEmulator, request: pytest.FixtureRequest) -> None:
    store = MemoryTokenStore() if location == "memory" else request.getfixturevalue("store")
    flow = _flow(x_emulator, store)
    # unknown: a link the store never saw (another flow's, or forged)
    stray = _back(_flow(x_emulator, None).authorization_url())
    with pytest.raises(LoginError, match="no login under way has this state"):
        flow.exchange(stray)
    # used: the same callback twice (a reload)
    back = _back(flow.authorization_url())
    flow.exchange(back)
    with pytest.raises(LoginError, match="no login under way has this state"):
        flow.exchange(back)
    assert x_emulator.stats.exchanges == 1
    # expired
    brief = _flow(x_emulator, store, pending_ttl=0.2)
    late = _back(brief.authorization_url())
    time.sleep(0.3)
    with pytest.raises(LoginError, match="expired"):
        brief.exchange(late)
    stats = x_emulator.stats
    assert stats.exchanges == stats.token_requests == 1  # no code sent for any of them
    assert store.load(PENDING_LOGINS) is None          # the expired login went when met
    assert store.accounts() == []


@pytest.mark.parametrize("location", ["memory", *STORES], indirect=True)
def test_two_workers_racing_on_one_callback_spend_its_code_once(
        location: str, x_emulator: XEmulator, request: pytest.FixtureRequest) -> None:
    store = MemoryTokenStore() if location == "memory" else request.getfixturevalue("store")
    back = _back(_flow(x_emulator, store).authorization_url())
    workers = [_flow(x_emulator, store if location == "memory"
                     else refresher.open_store(location)) for _ in range(4)]
    start = threading.Barrier(len(workers))
    outcomes: list[str] = []

    def finish(flow: LoginFlow) -> None:
        start.wait()
        try:
            flow.exchange(back)
            outcomes.append("token")
        except LoginError:
            outcomes.append("LoginError")

    threads = [threading.Thread(target=finish, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["LoginError"] * 3 + ["token"]
    assert x_emulator.stats.exchanges == 1 and x_emulator.stats.token_requests == 1
    for worker in workers:
        if worker.pending is not None and worker.pending.store is not store:
            worker.pending.store.close()


@pytest.mark.parametrize("location", STORES, indirect=True)
def test_no_log_line_or_repr_shows_a_verifier_and_the_file_stays_private(
        location: str, store: TokenStore, x_emulator: XEmulator, all_logs: Any) -> None:
    flow = _flow(x_emulator, location)
    link = flow.authorization_url()
    if "://" not in location:
        assert stat.S_IMODE(os.stat(location).st_mode) == 0o600
    with pytest.raises(LoginError) as refused:
        flow.exchange(_back(_flow(x_emulator, None).authorization_url()))  # unknown state
    assert link.code_verifier not in str(refused.value)
    flow.exchange(_back(link))
    shown = [repr(flow), repr(flow.pending), repr(link), str(all_logs.text)]
    shown += [r.getMessage() for r in all_logs.records]
    assert link.code_verifier not in "".join(shown)
    assert link.state in link.url


def test_the_flask_example_table_is_the_accounts_one(x_emulator: XEmulator,
                                                      tmp_path: Path) -> None:
    """A login under way in a SQL store is a row of its own, gone with the login."""
    pytest.importorskip("sqlalchemy")
    import sqlite3

    url = f"sqlite:///{tmp_path / 'app.db'}"
    flow = _flow(x_emulator, url)
    link = flow.authorization_url()
    with sqlite3.connect(tmp_path / "app.db") as db:
        rows = db.execute("SELECT account FROM refresher_tokens").fetchall()
    assert rows == [(PENDING_LOGINS,)]
    flow.exchange(_back(link))
    with sqlite3.connect(tmp_path / "app.db") as db:
        assert db.execute("SELECT account FROM refresher_tokens").fetchall() == []


# -- per-link scopes and state -------------------------------------------------------------

def test_a_link_may_ask_for_its_own_scopes_and_carry_a_chosen_state(x_emulator: XEmulator
                                                                    ) -> None:
    flow = _flow(x_emulator, MemoryTokenStore())
    state = "return-to=/settings&nonce=Kq3v9XpL2mA7"
    link = flow.authorization_url(scopes="tweet.read users.read", state=state)
    assert link.state == state and link.scopes == ("tweet.read", "users.read")
    back = _back(link)
    token = flow.exchange(back, state=state)             # the state kept with the browser
    assert token["scope"] == "tweet.read users.read"     # no offline.access: no refresh token
    assert "refresh_token" not in token
    wider = flow.authorization_url(scopes=["tweet.read", "tweet.write", "users.read",
                                           "offline.access"])
    assert flow.exchange(_back(wider))["scope"] == "tweet.read tweet.write users.read " \
                                                     "offline.access"
    assert flow.scopes == refresher.LoginFlow(DEFAULT_CLIENT_ID).scopes  # the flow's: unchanged


@pytest.mark.parametrize("state", ["", "short-state-15ch", "x" * 501, 12345678901234567])
def test_a_chosen_state_too_short_or_too_long_is_refused(state: Any) -> None:
    flow = LoginFlow(DEFAULT_CLIENT_ID, pending=MemoryTokenStore())
    if state == "short-state-15ch":
        state = state[:15]
    with pytest.raises(ConfigurationError, match="16 to 500 characters.*unguessable"):
        flow.authorization_url(state=state)
    assert flow.pending is not None and _pending(flow.pending.store) == {}


def test_a_chosen_state_of_sixteen_characters_is_taken_once_per_login() -> None:
    flow = LoginFlow(DEFAULT_CLIENT_ID, pending=MemoryTokenStore())
    assert flow.authorization_url(state="0123456789abcdef").state == "0123456789abcdef"
    with pytest.raises(ConfigurationError, match="already has this state"):
        flow.authorization_url(state="0123456789abcdef")
    with pytest.raises(ConfigurationError, match="scopes must not be empty"):
        flow.authorization_url(scopes=[])


def test_the_cookies_state_refuses_another_browsers_callback_and_keeps_that_login(
        x_emulator: XEmulator) -> None:
    store = MemoryTokenStore()
    flow = _flow(x_emulator, store)
    mine, theirs = flow.authorization_url(), flow.authorization_url()
    with pytest.raises(LoginError, match="does not match"):
        flow.exchange(_back(theirs), state=mine.state)   # login CSRF: refused, nothing taken
    assert len(_pending(store)) == 2
    flow.exchange(_back(mine), state=mine.state)
    assert x_emulator.stats.exchanges == 1 and len(_pending(store)) == 1


# -- exchange as before, and what it needs --------------------------------------------------

def test_explicit_state_and_verifier_work_as_before_and_need_no_store(x_emulator: XEmulator
                                                                      ) -> None:
    flow = _flow(x_emulator, None)
    link = flow.authorization_url()
    assert flow.pending is None
    with pytest.raises(ConfigurationError, match="state= and code_verifier="):
        flow.exchange(_back(link))                       # nothing keeps the verifier
    with pytest.raises(ConfigurationError, match="state= and code_verifier="):
        flow.exchange(_back(link), code_verifier=link.code_verifier)  # whose state?
    assert flow.exchange(_back(link), state=link.state, code_verifier=link.code_verifier)
    assert x_emulator.stats.exchanges == 1


def test_run_local_server_keeps_its_login_to_itself(x_emulator: XEmulator) -> None:
    store = MemoryTokenStore()
    flow = _flow(x_emulator, store)

    def browser(url: str) -> None:  # approves at the emulator, follows it to the callback
        threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 10},
                         daemon=True).start()

    with open(os.devnull, "w") as out:
        token = flow.run_local_server(port=0, open_browser=browser, out=out, timeout=30)
    assert token["access_token"] and store.load(PENDING_LOGINS) is None


# -- the store entry: bounded, pruned, never an account ------------------------------------

def _link(n: int) -> AuthorizationLink:
    return new_link("https://x.com/i/oauth2/authorize", "id", REDIRECT_URI, ("users.read",),
                    state=f"state-number-{n:06d}")


def test_each_new_link_drops_the_logins_past_their_time() -> None:
    clock, store = FakeClock(), MemoryTokenStore()
    pending = PendingLogins(store, ttl=600, clock=clock)
    for n in range(5):
        pending.put(_link(n))
    clock.advance(601)
    pending.put(_link(5))
    assert len(_pending(store)) == 1                     # nobody finished the first five
    with pytest.raises(LoginError, match="no login under way"):
        pending.take(_link(0).state)
    clock.advance(599)
    assert pending.take(_link(5).state).scopes == ("users.read",)


def test_a_store_keeps_a_bounded_number_of_logins_under_way(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: Any) -> None:
    monkeypatch.setattr("refresher.pending_logins.MAX_PENDING_LOGINS", 3)
    clock, store = FakeClock(), MemoryTokenStore()
    pending = PendingLogins(store, clock=clock)
    for n in range(5):
        pending.put(_link(n))
        clock.advance(1)
    assert len(_pending(store)) == 3
    with pytest.raises(LoginError):
        pending.take(_link(0).state)                     # the oldest went first
    assert pending.take(_link(4).state).redirect_uri == REDIRECT_URI
    assert "the 1 oldest were dropped" in caplog.text


def test_a_pending_login_shows_no_verifier() -> None:
    pending = PendingLogins(MemoryTokenStore(), ttl=60)
    link = _link(1)
    pending.put(link)
    login = pending.take(link.state)
    assert link.code_verifier not in repr(login) and link.code_verifier not in repr(link)
    assert login.code_verifier == link.code_verifier
    with pytest.raises(ConfigurationError, match="positive"):
        PendingLogins(MemoryTokenStore(), ttl=0)


def test_no_account_may_take_a_reserved_name(monkeypatch: pytest.MonkeyPatch,
                                             x_emulator: XEmulator) -> None:
    store = MemoryTokenStore()
    with pytest.raises(ConfigurationError, match="keeps for its own entries"):
        RefreshingSession(DEFAULT_CLIENT_ID, token_url=x_emulator.token_url, store=store,
                          account=PENDING_LOGINS)
    with pytest.raises(ConfigurationError, match="keeps for its own entries"):
        _flow(x_emulator, store).session({"access_token": "a"}, store=store,
                                         account="refresher:alice")
    monkeypatch.setenv("REFRESHER_ACCOUNT", PENDING_LOGINS)
    with pytest.raises(ConfigurationError, match="keeps for its own entries"):
        choose_account(store)


class ListsEverything(MemoryTokenStore):
    """A store of a user's own, which lists every name it holds."""

    def accounts(self) -> list[str]:
        return sorted(self._tokens)


def test_a_store_that_lists_every_name_still_shows_no_login_as_an_account(
        x_emulator: XEmulator) -> None:
    store = ListsEverything()
    flow = _flow(x_emulator, store)
    token = flow.exchange(_back(flow.authorization_url()))
    flow.session(token, store=store, account="alice").close()
    flow.authorization_url()                             # another login, under way
    assert PENDING_LOGINS in store.accounts()
    assert choose_account(store) == "alice"              # the only account


def test_the_command_line_lists_no_login_and_refuses_the_name(tmp_path: Path,
                                                              x_emulator: XEmulator) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    flow = _flow(x_emulator, store)
    flow.session(flow.exchange(_back(flow.authorization_url())), store=store,
                 account="alice").close()
    flow.authorization_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    status = subprocess.run([sys.executable, "-m", "refresher", "status", "--json",
                             "--store", str(path)], capture_output=True, text=True, env=env,
                            timeout=60)
    assert status.returncode == 0, status.stderr
    assert [row["account"] for row in json.loads(status.stdout)["accounts"]] == ["alice"]
    refused = subprocess.run([sys.executable, "-m", "refresher", "status", "--store",
                              str(path), "--account", PENDING_LOGINS], capture_output=True,
                             text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "keeps for its own entries" in refused.stderr


# -- separate processes --------------------------------------------------------------------

WORKER = r'''
import json, os, sys, time
import refresher

config = json.loads(sys.argv[1])
flow = refresher.LoginFlow(config["client_id"], redirect_uri=config["redirect_uri"],
                           authorize_url=config["authorize_url"], token_url=config["token_url"],
                           api_url=config["api_url"], pending=config["store"])
if config["do"] == "begin":
    link = flow.authorization_url()
    print(json.dumps({"url": link.url}))
else:
    while not os.path.exists(config["go"]):   # racers start together
        time.sleep(0.005)
    try:
        token = flow.exchange(config["callback"])
    except refresher.LoginError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        flow.session(token, store=config["store"], account="alice").close()
        print(json.dumps({"saved": "alice"}))
'''


def _worker(x: XEmulator, location: str, do: str, **extra: str) -> subprocess.Popen[str]:
    config = dict(client_id=DEFAULT_CLIENT_ID, redirect_uri=REDIRECT_URI,
                  authorize_url=x.authorize_url, token_url=x.token_url, api_url=x.api_url,
                  store=location, do=do, **extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _answer(process: subprocess.Popen[str]) -> dict[str, str]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    answer: dict[str, str] = json.loads(out)
    return answer


@pytest.mark.integration
@pytest.mark.parametrize("location", STORES, indirect=True)
def test_one_process_makes_the_link_and_others_race_to_finish_it(
        location: str, store: TokenStore, x_emulator: XEmulator, tmp_path: Path) -> None:
    url = _answer(_worker(x_emulator, location, "begin"))["url"]
    callback = _back(url)
    go = tmp_path / "go"
    racers = [_worker(x_emulator, location, "finish", callback=callback, go=str(go))
              for _ in range(3)]
    time.sleep(0.2)  # let them reach the start line (correct either way)
    go.touch()
    answers = sorted((_answer(racer) for racer in racers), key=lambda a: "error" in a)
    assert answers[0] == {"saved": "alice"}
    assert all("no login under way has this state" in a["error"] for a in answers[1:])
    assert x_emulator.stats.exchanges == 1 and x_emulator.stats.token_requests == 1
    assert store.accounts() == ["alice"] and store.load(PENDING_LOGINS) is None


# -- the how-to's routes, as printed: /login, /callback and / in three processes ------------


@pytest.mark.integration
def test_the_howto_routes_run_as_printed_in_three_processes(x_emulator: XEmulator,
                                                            tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    (tmp_path / "web_login.py").write_text(
        doc_block("docs/howto/web-apps.rst", "Whatever your web framework, the routes are:"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env.update(REFRESHER_CLIENT_ID=DEFAULT_CLIENT_ID, REFRESHER_REDIRECT_URI=REDIRECT_URI,
               REFRESHER_AUTHORIZE_URL=x_emulator.authorize_url,
               REFRESHER_TOKEN_URL=x_emulator.token_url, REFRESHER_API_URL=x_emulator.api_url)

    def run(code: str, *args: str) -> str:
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    url, cookie = json.loads(run("import json, web_login; cookie = {}; "
                                 "print(json.dumps([web_login.login(cookie), cookie]))"))
    callback = _back(url)
    user_id = run("import json, sys, web_login; "
                  "print(web_login.callback(sys.argv[1], json.loads(sys.argv[2])))",
                  callback, json.dumps(cookie))
    assert user_id == "1000000001\n"
    assert run("import sys, web_login; print(web_login.home(sys.argv[1]))",
               user_id.strip()) == "emulated_user\n"
    store = refresher.open_store(f"sqlite:///{tmp_path / 'app.db'}")
    assert store.accounts() == ["1000000001"] and store.load(PENDING_LOGINS) is None
    store.close()
    assert x_emulator.stats.exchanges == x_emulator.stats.token_requests == 1


def test_a_worker_without_the_key_refuses_encrypted_pending_logins(x_emulator: XEmulator,
                                                                   tmp_path: Any) -> None:
    """One worker keeps pending logins encrypted; a worker whose store has no key is told a
    key is missing, and neither reads them as none nor writes over them."""
    pytest.importorskip("cryptography")
    location = str(tmp_path / "tokens.json")
    key = refresher.new_key()
    keyed = refresher.open_store(location, key=key)
    link = _flow(x_emulator, keyed).authorization_url()
    before = (tmp_path / "tokens.json").read_bytes()
    keyless = _flow(x_emulator, refresher.open_store(location))
    with pytest.raises(refresher.EncryptionKeyError, match="no key was given"):
        keyless.authorization_url()
    with pytest.raises(refresher.EncryptionKeyError):
        keyless.exchange(_back(link))
    assert (tmp_path / "tokens.json").read_bytes() == before
    assert x_emulator.stats.exchanges == 0
    token = _flow(x_emulator, keyed).exchange(_back(link))  # the keyed worker finishes it
    assert token["refresh_token"] and x_emulator.stats.exchanges == 1
