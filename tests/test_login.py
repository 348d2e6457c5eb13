"""LoginFlow over real loopback HTTP: the emulator is X, a requests call is the browser."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from doc_blocks import doc_block

import refresher
from refresher import ConfigurationError, JSONTokenStore, LoginError, LoginFlow, MemoryTokenStore
from refresher.login import AuthorizationLink, default_store_location, open_session
from refresher.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_CONFIDENTIAL_CLIENT_ID,
    XEmulator,
)
from refresher.testing.net import free_port


@pytest.fixture(autouse=True)
def _no_refresher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """LoginFlow reads REFRESHER_*: a shell that exported the emulator's must not leak in."""
    for name in [n for n in os.environ if n.startswith("REFRESHER_")]:
        monkeypatch.delenv(name)


def _flow(x: XEmulator, client_id: str = DEFAULT_CLIENT_ID, **kw: Any) -> LoginFlow:
    kw.setdefault("redirect_uri", "http://127.0.0.1:0/callback")
    return LoginFlow(client_id, authorize_url=x.authorize_url, token_url=x.token_url,
                     api_url=x.api_url, **kw)


class Browser:
    """Follows the authorize URL like a browser would; keeps the pages it was shown."""

    def __init__(self, tamper: Callable[[str], str] | None = None) -> None:
        self.tamper = tamper
        self.pages: list[requests.Response] = []
        self.urls: list[str] = []

    def __call__(self, url: str) -> None:
        self.urls.append(url)
        if self.tamper is None:
            self.pages.append(requests.get(url, timeout=10))  # the emulator 302s to the callback
            return
        back = requests.get(url, allow_redirects=False, timeout=10)
        self.pages.append(requests.get(self.tamper(back.headers["Location"]), timeout=10))


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _redirect_back(link: AuthorizationLink) -> str:
    """Where the emulator sends the browser after approving ``link``."""
    answer = requests.get(link.url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


# -- the link ------------------------------------------------------------------------------


def test_authorization_url_uses_pkce_s256_and_fresh_state_each_time(x_emulator):
    flow = _flow(x_emulator, redirect_uri="http://127.0.0.1:8765/callback")
    first, second = flow.authorization_url(), flow.authorization_url()
    params = _query(first.url)
    assert first.url.startswith(x_emulator.authorize_url + "?")
    assert params["response_type"] == "code"
    assert params["client_id"] == DEFAULT_CLIENT_ID
    assert params["redirect_uri"] == "http://127.0.0.1:8765/callback"
    assert params["scope"] == "tweet.read users.read offline.access"
    assert params["state"] == first.state
    assert params["code_challenge_method"] == "S256"
    digest = hashlib.sha256(first.code_verifier.encode()).digest()
    assert params["code_challenge"] == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert 43 <= len(first.code_verifier) <= 128
    assert first.code_verifier not in first.url
    assert first.state != second.state and first.code_verifier != second.code_verifier
    assert first.code_verifier not in repr(first)


def test_defaults_are_x_and_the_package_re_exports_the_flow():
    link = refresher.LoginFlow("my-client-id").authorization_url()
    assert link.url.startswith("https://x.com/i/oauth2/authorize?")
    assert _query(link.url)["redirect_uri"] == "http://127.0.0.1:8765/callback"
    assert refresher.AuthorizationLink is AuthorizationLink


# -- run_local_server ----------------------------------------------------------------------


def test_run_local_server_logs_in_and_the_token_works(x_emulator):
    flow, browser = _flow(x_emulator), Browser()
    token = flow.run_local_server(port=0, open_browser=browser, timeout=10)
    assert token["access_token"] and token["refresh_token"]
    assert token["expires_at"] == pytest.approx(time.time() + 7200, abs=60)
    assert x_emulator.stats.exchanges == 1
    page = browser.pages[0]
    assert page.status_code == 200 and "Logged in" in page.text
    assert token["access_token"] not in page.text
    # the callback came to a port the flow picked, and the link named it
    assert _query(browser.urls[0])["redirect_uri"] == page.url.split("?")[0]
    assert flow.session(token).me()["username"] == "emulated_user"


def test_the_login_returns_a_token_whose_repr_shows_only_fingerprints(x_emulator, tmp_path):
    import json
    import pickle
    import pprint

    from refresher.token import fingerprint

    token = _flow(x_emulator).run_local_server(port=0, open_browser=Browser(), timeout=10)
    secrets = [token["access_token"], token["refresh_token"]]
    assert isinstance(token, refresher.Token) and isinstance(token, dict)
    shown = [repr(token), str(token), f"{token}", pprint.pformat(token), repr([token]),
             repr(token.copy()), repr(pickle.loads(pickle.dumps(token)))]
    for text in shown:
        assert [s for s in secrets if s in text] == [], text
        assert f"'access_token': <{fingerprint(token['access_token'])}>" in text
        assert f"'refresh_token': <{fingerprint(token['refresh_token'])}>" in text
        assert "'token_type': 'bearer'" in text and "'expires_in': 7200" in text

    class Printer:  # what IPython and Jupyter hand to _repr_pretty_
        def __init__(self) -> None:
            self.shown: list[str] = []

        def text(self, value: str) -> None:
            self.shown.append(value)

    printer = Printer()
    token._repr_pretty_(printer, False)
    assert printer.shown == [repr(token)]
    # Everything else: the dict it always was.
    plain = dict(token)
    assert token == plain and plain == token and type(plain) is dict
    assert json.loads(json.dumps(token)) == plain
    assert pickle.loads(pickle.dumps(token)) == plain
    session = _flow(x_emulator).session(token, store=str(tmp_path / "t.json"), account="me")
    assert json.loads((tmp_path / "t.json").read_text())["accounts"]["me"]["token"][
        "access_token"] == token["access_token"]
    assert session.me()["username"] == "emulated_user"


def test_the_callback_server_is_gone_afterwards(x_emulator):
    port = free_port()
    _flow(x_emulator).run_local_server(port=port, open_browser=Browser(), timeout=10)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/callback", timeout=2)


def test_a_state_mismatch_is_refused_without_exchanging(x_emulator):
    def forge(location: str) -> str:
        params = _query(location)
        params["state"] = "someone-elses-state"
        return location.split("?")[0] + "?" + urlencode(params)

    browser = Browser(tamper=forge)
    with pytest.raises(LoginError, match="state does not match"):
        _flow(x_emulator).run_local_server(port=0, open_browser=browser, timeout=10)
    assert browser.pages[0].status_code == 400
    assert "Login failed" in browser.pages[0].text
    assert x_emulator.stats.exchanges == 0


def test_access_denied_is_a_login_error(x_emulator_factory):
    x = x_emulator_factory(auto_approve=False)
    browser = Browser()
    with pytest.raises(LoginError, match="access_denied"):
        _flow(x).run_local_server(port=0, open_browser=browser, timeout=10)
    assert browser.pages[0].status_code == 400
    assert "refused" in browser.pages[0].text


def test_nobody_coming_back_times_out_and_frees_the_port(x_emulator):
    port = free_port()
    with pytest.raises(LoginError, match=r"no login within 0.3 s"):  # not the 300 s default
        _flow(x_emulator).run_local_server(port=port, open_browser=lambda url: None,
                                          timeout=0.3)
    with socket.create_server(("127.0.0.1", port)):
        pass  # listening again works: the flow closed its server


@pytest.mark.parametrize("why", ["unknown client id", "callback URL not registered"])
def test_a_login_x_never_sends_back_says_what_to_check(x_emulator_factory, why):
    """X shows an error page instead of sending the browser back: the login says, once after
    a while and again when it gives up, what to check, instead of waiting in silence."""
    if why == "unknown client id":
        x, client_id = x_emulator_factory(), "not-my-client"
    else:  # X wants the registered callback URL exactly; port 0 picks another
        x = x_emulator_factory(redirect_uris=["http://127.0.0.1:8765/callback"])
        client_id = DEFAULT_CLIENT_ID
    browser, out = Browser(), io.StringIO()
    with pytest.raises(LoginError) as caught:
        _flow(x, client_id).run_local_server(port=0, open_browser=browser, timeout=1.0,
                                             out=out, remind_after=0.3)
    page = browser.pages[0]
    assert page.status_code == 400 and "Something went wrong" in page.text
    callback = _query(browser.urls[0])["redirect_uri"]
    message = str(caught.value)
    assert message.startswith(f"no login within 1 s: nobody came back to {callback}. Check ")
    for cause in (f"the client id ({client_id}: the app's OAuth 2.0 Client ID",
                  f"must be exactly {callback} (the same host, port and path: localhost is "
                  "not 127.0.0.1)", "what the authorize page in the browser says"):
        assert cause in message and cause in out.getvalue()
    assert out.getvalue().count("Still waiting for the browser to come back") == 1


def test_no_reminder_when_the_login_comes_back_or_none_is_wanted(x_emulator):
    out = io.StringIO()
    _flow(x_emulator).run_local_server(port=0, open_browser=Browser(), timeout=10, out=out,
                                       remind_after=0.01)  # back within it: nothing to say
    with pytest.raises(LoginError):
        _flow(x_emulator).run_local_server(port=0, open_browser=lambda url: None, timeout=0.3,
                                           out=out, remind_after=None)
    assert "Still waiting" not in out.getvalue()


def _in_the_background(url: str) -> None:
    """A browser that comes back on its own time, as a real one does."""
    threading.Thread(target=lambda: requests.get(url, timeout=30), daemon=True).start()


def test_the_timeout_bounds_a_slow_code_exchange_too(x_emulator_factory):
    x = x_emulator_factory(token_delay=10)  # the token endpoint answers after 10 s
    started = time.monotonic()
    # Which of the two clocks of one deadline notices first (the login's wait, or the
    # exchange's own deadline, set to what is left of the login) is up to the scheduler.
    with pytest.raises(LoginError, match=r"code exchange at .* did not finish within (the "
                                         r"login's 1 s|its \d\.\d s) timeout"):
        _flow(x).run_local_server(port=0, open_browser=_in_the_background, timeout=1)
    assert time.monotonic() - started < 6  # not the 10 s answer: slack for a busy machine


def test_exchange_takes_a_timeout(x_emulator_factory):
    x = x_emulator_factory(token_delay=10)
    flow = _flow(x, redirect_uri="http://127.0.0.1:5000/callback")
    link = flow.authorization_url()
    back = _redirect_back(link)
    started = time.monotonic()
    with pytest.raises(LoginError, match=r"did not finish within its 0.5 s timeout"):
        flow.exchange(back, state=link.state, code_verifier=link.code_verifier, timeout=0.5)
    assert time.monotonic() - started < 6  # not the 10 s answer: slack for a busy machine
    with pytest.raises(LoginError, match="timeout ran out"):
        flow.exchange(back, state=link.state, code_verifier=link.code_verifier, timeout=0)


def test_a_browser_command_that_never_returns_does_not_hold_the_login(x_emulator, monkeypatch):
    """webbrowser.open waits for a $BROWSER command (a text browser) to end."""
    stuck = threading.Event()
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: stuck.wait(30))
    started = time.monotonic()
    try:
        with pytest.raises(LoginError, match=r"no login within 0.5 s"):
            _flow(x_emulator).run_local_server(port=0, open_browser=True, timeout=0.5,
                                              out=io.StringIO())
    finally:
        stuck.set()
    assert time.monotonic() - started < 10  # not the browser's 30 s: slack for a busy machine


def test_a_port_in_use_is_a_clear_login_error(x_emulator):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(LoginError, match=f"cannot listen .*127.0.0.1:{port}"):
            _flow(x_emulator).run_local_server(port=port, open_browser=Browser(), timeout=5)


def test_requests_that_are_not_the_callback_do_not_end_the_login(x_emulator):
    seen = []

    def browser(url: str) -> None:
        base = _query(url)["redirect_uri"].rsplit("/", 1)[0]
        seen.append(requests.get(base + "/favicon.ico", timeout=5).status_code)
        seen.append(requests.get(base + "/callback", timeout=5).status_code)  # no query
        requests.get(url, timeout=10)

    token = _flow(x_emulator).run_local_server(port=0, open_browser=browser, timeout=10)
    assert seen == [404, 400] and token["access_token"]


def test_a_non_loopback_redirect_uri_cannot_be_served_locally(x_emulator):
    flow = _flow(x_emulator, redirect_uri="https://app.example.com/callback")
    with pytest.raises(ConfigurationError, match="loopback"):
        flow.run_local_server(open_browser=Browser(), timeout=1)


def test_a_flow_without_client_id_or_scopes_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="client_id is required"):
        LoginFlow("")
    with pytest.raises(ConfigurationError, match="scopes must not be empty"):
        LoginFlow("my-client-id", scopes="")


def test_a_confidential_client_logs_in_with_its_secret(x_emulator):
    flow = _flow(x_emulator, DEFAULT_CONFIDENTIAL_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET)
    token = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    session = flow.session(token)
    assert session.me()["id"] == "1000000001"
    session.refresh()  # the secret carried over to the session
    assert x_emulator.stats.refreshes == 1
    assert DEFAULT_CLIENT_SECRET not in repr(flow) and "confidential" in repr(flow)


def test_a_confidential_client_without_its_secret_is_told_so(x_emulator):
    flow = _flow(x_emulator, DEFAULT_CONFIDENTIAL_CLIENT_ID)
    with pytest.raises(LoginError, match="client_secret"):
        flow.run_local_server(port=0, open_browser=Browser(), timeout=10)


def test_no_browser_accepts_the_redirected_url_pasted_on_a_stream(x_emulator):
    """The headless path: the URL is printed, the user pastes where the browser went."""
    read_fd, write_fd = os.pipe()
    pasted_in = os.fdopen(read_fd, "r")
    paste = os.fdopen(write_fd, "w")
    out = io.StringIO()

    def user() -> None:
        deadline = time.time() + 10
        while "/i/oauth2/authorize?" not in out.getvalue() and time.time() < deadline:
            time.sleep(0.02)
        url = next(w for w in out.getvalue().split() if "/i/oauth2/authorize?" in w)
        location = requests.get(url, allow_redirects=False, timeout=10).headers["Location"]
        paste.write("not a url\n")
        paste.write(location + "\n")
        paste.flush()

    helper = threading.Thread(target=user)
    helper.start()
    try:
        token = _flow(x_emulator).run_local_server(
            port=0, open_browser=False, timeout=15, out=out, paste_from=pasted_in)
    finally:
        helper.join()
        paste.close()
        pasted_in.close()
    assert token["refresh_token"]
    assert "paste here" in out.getvalue() and "not the address" in out.getvalue()
    assert x_emulator.stats.exchanges == 1


# -- exchange, for web apps --------------------------------------------------------------------


def test_exchange_checks_state_and_spends_the_code_once(x_emulator):
    flow = _flow(x_emulator, redirect_uri="http://127.0.0.1:5000/callback")
    link = flow.authorization_url()
    back = _redirect_back(link)
    with pytest.raises(LoginError, match="state"):
        flow.exchange(back, state=flow.authorization_url().state,
                      code_verifier=link.code_verifier)
    token = flow.exchange(back, state=link.state, code_verifier=link.code_verifier)
    assert token["access_token"]
    with pytest.raises(LoginError, match="30 seconds and serves once"):
        flow.exchange(back, state=link.state, code_verifier=link.code_verifier)


def test_exchange_with_the_wrong_verifier_fails(x_emulator):
    flow = _flow(x_emulator, redirect_uri="http://127.0.0.1:5000/callback")
    link, other = flow.authorization_url(), flow.authorization_url()
    with pytest.raises(LoginError, match="code verifier did not match"):
        flow.exchange(_redirect_back(link), state=link.state,
                      code_verifier=other.code_verifier)
    assert x_emulator.stats.exchanges == 0


def test_a_login_without_offline_access_warns(x_emulator, caplog):
    flow = _flow(x_emulator, scopes="tweet.read users.read")
    token = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    assert "refresh_token" not in token
    assert any("offline.access" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


# -- session -----------------------------------------------------------------------------------


def test_session_saves_a_new_login_over_the_accounts_old_token(x_emulator, tmp_path):
    store = JSONTokenStore(tmp_path / "tokens.json")
    flow = _flow(x_emulator)
    old = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    flow.session(old, store=store, account="alice").close()
    new = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    session = flow.session(new, store=store, account="alice")
    assert store.load("alice")["access_token"] == new["access_token"]
    assert session.token["access_token"] == new["access_token"]


def test_a_login_saved_by_the_flow_records_what_open_session_and_the_cli_need(
        x_emulator, tmp_path):
    """flow.session(token, store=...) records the client id and URLs beside the pair (never a
    secret), as `refresher login` does: open_session and `refresher refresh --all` then need
    no REFRESHER_* variable. A new login's record replaces the old one's refusals."""
    store = JSONTokenStore(tmp_path / "tokens.json")
    flow = _flow(x_emulator, DEFAULT_CONFIDENTIAL_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET,
                 revoke_url=x_emulator.revoke_url)
    token = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    store.save("42", {"access_token": "old", "refresh_token": "old-rt", "expires_at": 1})
    store.mark_needs_login("42", "old-rt")
    flow.session(token, store=store, account="42").close()
    record = store.load_metadata("42")
    assert {k: record[k] for k in ("client_id", "confidential", "token_url", "api_url",
                                   "revoke_url")} == {
        "client_id": DEFAULT_CONFIDENTIAL_CLIENT_ID, "confidential": True,
        "token_url": x_emulator.token_url, "api_url": x_emulator.api_url,
        "revoke_url": x_emulator.revoke_url}
    assert DEFAULT_CLIENT_SECRET not in json.dumps(record)
    assert not store.needs_login("42")
    with open_session("42", store=store, client_secret=DEFAULT_CLIENT_SECRET) as session:
        assert session.me()["username"] == "emulated_user"
    cron = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    cron["REFRESHER_CLIENT_SECRET"] = DEFAULT_CLIENT_SECRET  # the one setting cron is given
    done = subprocess.run([sys.executable, "-m", "refresher", "refresh", "--all", "--store",
                           str(tmp_path / "tokens.json")], env=cron, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Refreshed account '42'" in done.stdout
    assert x_emulator.stats.reused_refresh_tokens == 0


def test_session_with_a_spent_dict_keeps_the_stores_newer_pair(x_emulator):
    """Re-running a notebook cell must not put a spent refresh token back in the store."""
    store = MemoryTokenStore()
    flow = _flow(x_emulator)
    token = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    flow.session(token, store=store, account="me").refresh()  # `token` is now spent
    again = flow.session(token, store=store, account="me")
    assert again.token["refresh_token"] != token["refresh_token"]
    again.refresh()
    assert again.me()["username"] == "emulated_user"
    assert x_emulator.stats.reused_refresh_tokens == 0


def test_a_whole_login_logs_and_shows_no_secret(x_emulator_factory, all_logs):
    logging.getLogger("urllib3").setLevel(logging.INFO)  # urllib3 DEBUG prints request lines
    x = x_emulator_factory(access_ttl=1)
    flow = _flow(x, DEFAULT_CONFIDENTIAL_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET)
    links: list[str] = []
    original = flow.authorization_url

    def spy(**kw: Any) -> AuthorizationLink:
        link = original(**kw)
        links.append(link.code_verifier)
        return link

    flow.authorization_url = spy  # type: ignore[method-assign]
    out = io.StringIO()
    browser = Browser()
    token = flow.run_local_server(port=0, open_browser=browser, timeout=10, out=out)
    session = flow.session(token, store=MemoryTokenStore(), account="me")
    time.sleep(1.1)
    session.me()  # refreshed on the way
    secrets = [token["access_token"], token["refresh_token"], DEFAULT_CLIENT_SECRET, *links,
               session.token["access_token"], session.token["refresh_token"]]
    seen = "\n".join([all_logs.text, out.getvalue(), repr(flow), repr(session),
                      browser.pages[0].text])
    assert [s for s in secrets if s in seen] == []


# -- one way to name things: api_url, a store's location, the REFRESHER_* variables -----------

_SETTINGS = ("REFRESHER_CLIENT_ID", "REFRESHER_CLIENT_SECRET", "REFRESHER_REDIRECT_URI",
             "REFRESHER_AUTHORIZE_URL", "REFRESHER_TOKEN_URL", "REFRESHER_API_URL",
             "REFRESHER_REVOKE_URL", "REFRESHER_STORE", "REFRESHER_ACCOUNT")


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_api_url_is_the_name_and_api_base_url_its_alias(x_emulator, no_settings):
    flow = _flow(x_emulator)
    assert flow.api_url == flow.api_base_url == x_emulator.api_url
    old = LoginFlow(DEFAULT_CLIENT_ID, api_base_url=x_emulator.api_url + "/")
    assert old.api_url == x_emulator.api_url
    assert LoginFlow("my-client-id").api_url == "https://api.x.com"
    session = flow.session(x_emulator.issue_token())
    assert session.api_url == x_emulator.api_url and session.me()["username"]
    assert flow.session(x_emulator.issue_token(), api_url="http://127.0.0.1:1").api_url \
        == "http://127.0.0.1:1"  # a keyword of the caller's wins


def test_session_takes_a_stores_path_as_open_store_does(x_emulator, tmp_path, no_settings):
    flow = _flow(x_emulator)
    token = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    session = flow.session(token, store=str(tmp_path / "tokens.json"), account="me")
    assert session.me()["username"] == "emulated_user"
    assert JSONTokenStore(tmp_path / "tokens.json").accounts() == ["me"]
    again = flow.session(store=tmp_path / "tokens.json", account="me")  # a PathLike too
    assert again.token["access_token"] == token["access_token"]


def test_the_flow_reads_the_refresher_variables_like_the_command_line(x_emulator, tmp_path,
                                                                    no_settings):
    monkeypatch = no_settings
    for name, value in (("CLIENT_ID", DEFAULT_CLIENT_ID), ("TOKEN_URL", x_emulator.token_url),
                        ("AUTHORIZE_URL", x_emulator.authorize_url),
                        ("API_URL", x_emulator.api_url), ("REVOKE_URL", x_emulator.revoke_url),
                        ("REDIRECT_URI", "http://127.0.0.1:0/callback")):
        monkeypatch.setenv(f"REFRESHER_{name}", value)
    flow = LoginFlow()  # nothing given: the environment, as `refresher emulator` exports it
    assert (flow.client_id, flow.token_url, flow.authorize_url, flow.api_url,
            flow.revoke_url) == (DEFAULT_CLIENT_ID, x_emulator.token_url,
                                 x_emulator.authorize_url, x_emulator.api_url,
                                 x_emulator.revoke_url)
    token = flow.run_local_server(open_browser=Browser(), timeout=10)
    assert flow.session(token, store=str(tmp_path / "t.json")).me()["username"] \
        == "emulated_user"
    # Arguments win over the variables.
    given = LoginFlow("another-client", token_url="https://example.com/token")
    assert (given.client_id, given.token_url) == ("another-client", "https://example.com/token")
    assert given.authorize_url == x_emulator.authorize_url


def test_the_environments_secret_goes_only_with_the_environments_client_id(
        x_emulator, no_settings):
    monkeypatch = no_settings
    monkeypatch.setenv("REFRESHER_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    assert not LoginFlow("a-public-client").confidential  # another client's secret: unused
    monkeypatch.setenv("REFRESHER_CLIENT_ID", DEFAULT_CONFIDENTIAL_CLIENT_ID)
    flow = LoginFlow(authorize_url=x_emulator.authorize_url, token_url=x_emulator.token_url,
                     api_url=x_emulator.api_url, redirect_uri="http://127.0.0.1:0/callback")
    assert flow.confidential
    token = flow.run_local_server(open_browser=Browser(), timeout=10)
    flow.session(token).refresh()  # Basic auth with the environment's secret
    assert x_emulator.stats.refreshes == 1


def test_no_client_id_anywhere_says_where_to_put_one(no_settings):
    with pytest.raises(ConfigurationError, match="REFRESHER_CLIENT_ID"):
        LoginFlow()


# -- open_session and the default store ----------------------------------------------------------


def test_default_store_location(monkeypatch, tmp_path):
    monkeypatch.delenv("REFRESHER_STORE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_store_location() == str(tmp_path / "cfg" / "refresher" / "tokens.json")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_location() == str(tmp_path / "home" / ".config" / "refresher"
                                           / "tokens.json")
    monkeypatch.setenv("REFRESHER_STORE", "redis://127.0.0.1:6379/0")
    assert default_store_location() == "redis://127.0.0.1:6379/0"


def _logged_in_store(x: XEmulator, path, client_id=DEFAULT_CLIENT_ID, secret=None,
                     account="alice") -> JSONTokenStore:
    """A store as `refresher login` leaves it: the token, and the client and URLs beside it."""
    store = JSONTokenStore(path)
    flow = _flow(x, client_id, client_secret=secret)
    token = flow.run_local_server(port=0, open_browser=Browser(), timeout=10)
    flow.session(token, store=store, account=account).close()
    store.save_metadata(account, {"client_id": client_id, "confidential": secret is not None,
                                  "token_url": x.token_url, "api_url": x.api_url})
    return store


def test_open_session_needs_only_the_store(x_emulator, tmp_path, monkeypatch):
    for name in ("REFRESHER_ACCOUNT", "REFRESHER_CLIENT_ID", "REFRESHER_TOKEN_URL",
                 "REFRESHER_API_URL"):
        monkeypatch.delenv(name, raising=False)
    _logged_in_store(x_emulator, tmp_path / "tokens.json")
    monkeypatch.setenv("REFRESHER_STORE", str(tmp_path / "tokens.json"))
    session = open_session()  # the only account, its client id and URLs from the store
    assert session.account == "alice"
    assert session.me()["username"] == "emulated_user"
    session.refresh()
    assert x_emulator.stats.refreshes == 1
    with pytest.raises(ValueError, match="no account 'bob'"):  # still a ValueError
        open_session("bob")


def test_an_unknown_account_names_the_store_and_its_accounts(x_emulator, tmp_path,
                                                            monkeypatch):
    monkeypatch.delenv("REFRESHER_ACCOUNT", raising=False)
    path = tmp_path / "tokens.json"
    store = _logged_in_store(x_emulator, path)
    _logged_in_store(x_emulator, path, account="carol")
    with pytest.raises(ConfigurationError) as caught:
        open_session("bob", store=path)
    message = str(caught.value)
    assert f"no account 'bob' in {path}" in message
    assert "alice, carol" in message and "pick one" in message
    assert "refresher login --account bob" in message
    tokens = [store.load(a)[k] for a in ("alice", "carol") for k in ("access_token",
                                                                     "refresh_token")]
    assert [t for t in tokens if t in message] == []
    with pytest.raises(ConfigurationError, match=r"several accounts \(alice, carol\); choose"):
        open_session(store=path)
    monkeypatch.setenv("REFRESHER_ACCOUNT", "")  # empty: as if unset
    with pytest.raises(ConfigurationError, match="several accounts"):
        open_session(store=path)
    monkeypatch.setenv("REFRESHER_ACCOUNT", "carol")
    assert open_session(store=path).account == "carol"


def test_open_session_of_a_confidential_client_wants_its_secret(x_emulator, tmp_path,
                                                                  monkeypatch):
    monkeypatch.delenv("REFRESHER_CLIENT_SECRET", raising=False)
    store = _logged_in_store(x_emulator, tmp_path / "t.json", DEFAULT_CONFIDENTIAL_CLIENT_ID,
                             DEFAULT_CLIENT_SECRET)
    with pytest.raises(ValueError, match="REFRESHER_CLIENT_SECRET"):
        open_session("alice", store=store)
    monkeypatch.setenv("REFRESHER_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    open_session("alice", store=store).refresh()
    assert x_emulator.stats.refreshes == 1


# -- the notebook (docs/tutorial/notebook.rst), its cells as printed ------------------------------


def _cell(code: str, kernel: dict[str, Any]) -> Any:
    """Run a notebook cell in ``kernel`` (its globals), as Jupyter does: the cell's value is
    its last line's, when that line is an expression."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), kernel)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), kernel)


def test_notebook_recipe(x_emulator_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = x_emulator_factory(access_ttl=1)
    # The kernel inherits the second shell's exports, and the browser approves at once.
    for name, value in {
        "REFRESHER_CLIENT_ID": DEFAULT_CLIENT_ID, "REFRESHER_AUTHORIZE_URL": x.authorize_url,
        "REFRESHER_TOKEN_URL": x.token_url, "REFRESHER_REVOKE_URL": x.revoke_url,
        "REFRESHER_API_URL": x.api_url,
        "REFRESHER_REDIRECT_URI": f"http://127.0.0.1:{free_port()}/callback",
    }.items():
        monkeypatch.setenv(name, value)
    browser = Browser()
    monkeypatch.setattr(webbrowser, "open", lambda url, *args, **kw: browser(url) is None)
    first = doc_block("docs/tutorial/notebook.rst", "Log in from a cell")
    later = doc_block("docs/tutorial/notebook.rst", "Use it in any cell")
    kernel: dict[str, Any] = {}
    # In [1]: the page's cell, as printed
    shown = repr(_cell(first, kernel))  # what the cell displays
    token = kernel["token"]
    assert browser.urls and "account='me'" in shown and "expires in" in shown
    assert token["access_token"] not in shown and token["refresh_token"] not in shown
    assert (tmp_path / "tokens.json").is_file()
    # In [2]: ... and later cells, long after the first token expired
    assert _cell(later, kernel)["username"] == "emulated_user"
    x.access_ttl = 60  # the pairs granted from now on cannot run out in flight, however busy
    time.sleep(1.1)
    assert _cell(later, kernel)["username"] == "emulated_user"
    # In [1] again, its last two lines only (re-run): the dict `token` is spent, the store's
    # pair wins
    rerun = "\n".join(first.splitlines()[-2:])
    assert rerun.startswith("session = flow.session(token, ")
    _cell(rerun, kernel)
    assert _cell(later, kernel)["username"] == "emulated_user"
    # In [1], in a new kernel: the stored pair, no login
    tomorrow = doc_block("docs/tutorial/notebook.rst", "leave the token out")
    assert _cell(tomorrow, {})["username"] == "emulated_user"
    assert len(browser.urls) == 1
    assert x.stats.refreshes >= 1 and x.stats.reused_refresh_tokens == 0
    assert x.stats.unauthorized == 0
