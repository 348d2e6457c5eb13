"""docs/reference/settings.rst, claim by claim: which settings each entry point reads, and in
which order (an argument, what ``refresher login`` recorded in the store, a ``REFRESHER_*``
variable, X's default). The orders already tested elsewhere (the record over a variable
for ``open_session`` and the command line, in tests/test_refusal.py; ``LoginFlow`` and the
variables, in tests/test_login.py) are not repeated here.

Nothing here is sent anywhere: building a session reads its store, and that is all these
tests look at.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from doc_blocks import doc_block

import refresher
from refresher import (
    X_API_URL,
    X_AUTHORIZE_URL,
    X_REVOKE_URL,
    X_TOKEN_URL,
    ConfigurationError,
    JSONTokenStore,
    LoginFlow,
    MemoryTokenStore,
    RefreshingSession,
    open_session,
)
from refresher.cli import main
from refresher.testing import DEFAULT_CLIENT_ID

RECORDED = {"client_id": "recorded-client", "confidential": False,
            "token_url": "https://recorded.example/token", "api_url": "https://recorded.example",
            "revoke_url": "https://recorded.example/revoke"}
VARIABLES = {"REFRESHER_CLIENT_ID": "variable-client",
             "REFRESHER_CLIENT_SECRET": "variable-secret",
             "REFRESHER_TOKEN_URL": "https://variable.example/token",
             "REFRESHER_API_URL": "https://variable.example",
             "REFRESHER_REVOKE_URL": "https://variable.example/revoke",
             "REFRESHER_AUTHORIZE_URL": "https://variable.example/authorize",
             "REFRESHER_REDIRECT_URI": "http://127.0.0.1:9999/callback",
             "REFRESHER_ACCOUNT": "bob"}


@pytest.fixture
def no_settings(monkeypatch, tmp_path):
    """No REFRESHER_* variable, and a config folder of the test's own."""
    for name in list(VARIABLES) + ["REFRESHER_STORE", "REFRESHER_KEY"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return monkeypatch


def _token() -> dict[str, Any]:
    return {"access_token": "at-settings", "refresh_token": "rt-settings",
            "token_type": "bearer", "expires_at": time.time() + 7200}


def _logged_in(store: refresher.TokenStore, account: str = "alice",
               metadata: dict[str, Any] | None = None) -> refresher.TokenStore:
    """``store`` as ``refresher login`` leaves it: the token, and the record beside it."""
    with store.lock(account):
        store.save(account, _token())
    store.save_metadata(account, dict(RECORDED if metadata is None else metadata))
    return store


def _front_ends() -> list[Callable[..., Any]]:
    """RefreshingSession and the async front ends, as ``make(**arguments)``."""
    fronts: list[Callable[..., Any]] = [RefreshingSession]
    httpx_front = pytest.importorskip("refresher.httpx")
    aiohttp_front = pytest.importorskip("refresher.aiohttp")
    fronts += [httpx_front.RefreshingAuth, aiohttp_front.RefreshingMiddleware]
    return fronts


def _urls(front: Any) -> tuple[str, str]:
    """The token and API URLs a front end was built with."""
    assert front.coordinator is not None
    return front.coordinator.endpoint.token_url, front.api_url


# -- RefreshingSession(...), RefreshingAuth(...), RefreshingMiddleware(...) ------------------

@pytest.mark.parametrize("index", [0, 1, 2], ids=["session", "httpx", "aiohttp"])
def test_the_constructors_ignore_the_recorded_urls_and_the_variables(index, no_settings):
    """Built directly, a front end uses its arguments and X's defaults for the token and API
    URLs: neither what the login recorded nor REFRESHER_TOKEN_URL/REFRESHER_API_URL. The
    store and account are the arguments' (in memory, ``"default"``), never REFRESHER_STORE
    or REFRESHER_ACCOUNT; the secret is the argument's, never REFRESHER_CLIENT_SECRET."""
    make = _front_ends()[index]
    for name, value in VARIABLES.items():
        no_settings.setenv(name, value)
    no_settings.setenv("REFRESHER_STORE", "/nonexistent/refresher/tokens.json")
    store = _logged_in(MemoryTokenStore())
    front = make(store=store, account="alice")
    assert _urls(front) == (X_TOKEN_URL, X_API_URL)
    assert front.coordinator.endpoint.client_id == "recorded-client"   # the record's
    assert not front.coordinator.endpoint.confidential                 # no secret read
    front.close()
    given = make(store=store, account="alice", token_url="https://given.example/token",
                 api_url="https://given.example")
    assert _urls(given) == ("https://given.example/token", "https://given.example")
    given.close()
    bare = make(on_token_update=lambda token: None)  # no store given: memory, "default"
    assert isinstance(bare.store, MemoryTokenStore) and bare.account == "default"
    assert bare.coordinator.endpoint.client_id == "variable-client"   # no record: the variable
    bare.close()


@pytest.mark.parametrize("index", [0, 1, 2], ids=["session", "httpx", "aiohttp"])
def test_the_constructors_client_id_argument_then_record_then_variable(index, no_settings):
    make = _front_ends()[index]
    store = _logged_in(MemoryTokenStore())
    no_settings.setenv("REFRESHER_CLIENT_ID", "variable-client")
    front = make("given-client", store=store, account="alice")
    assert front.coordinator.endpoint.client_id == "given-client"
    front.close()
    front = make(store=store, account="alice")
    assert front.coordinator.endpoint.client_id == "recorded-client"
    front.close()
    _logged_in(store, "carol", metadata={})
    front = make(store=store, account="carol")
    assert front.coordinator.endpoint.client_id == "variable-client"
    front.close()
    no_settings.delenv("REFRESHER_CLIENT_ID")
    with pytest.raises(ConfigurationError, match="client id"):
        make(store=store, account="carol")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["session", "httpx", "aiohttp"])
def test_the_revoke_url_argument_then_record_then_variable_then_xs(index, no_settings):
    """Read when a revoke is asked for (``revoke()``), not when the front end is built."""
    make = _front_ends()[index]
    store = _logged_in(MemoryTokenStore())
    _logged_in(store, "carol", metadata={"client_id": "recorded-client"})

    def revoke_url(account: str, **given: Any) -> str:
        front = make(store=store, account=account, **given)
        try:
            return str(front.options.resolved_revoke_url(store))
        finally:
            front.close()

    no_settings.setenv("REFRESHER_REVOKE_URL", "https://variable.example/revoke")
    assert revoke_url("alice", revoke_url="https://given.example/revoke") \
        == "https://given.example/revoke"
    assert revoke_url("alice") == "https://recorded.example/revoke"
    assert revoke_url("carol") == "https://variable.example/revoke"
    no_settings.delenv("REFRESHER_REVOKE_URL")
    assert revoke_url("carol") == X_REVOKE_URL


def test_a_plain_session_reads_nothing(no_settings):
    """Without a store or on_token_update it is an OAuth2Session: no variable is read."""
    for name, value in VARIABLES.items():
        no_settings.setenv(name, value)
    session = RefreshingSession()
    assert session.client_id is None and not session.manages_tokens
    assert session.api_url == X_API_URL and session.token_url == X_TOKEN_URL


def test_a_store_given_as_a_path_reads_refresher_key(no_settings, tmp_path):
    pytest.importorskip("cryptography")
    no_settings.setenv("REFRESHER_KEY", refresher.new_key())
    session = RefreshingSession("a-client", store=str(tmp_path / "tokens.json"),
                                token=_token())
    assert isinstance(session.store, refresher.EncryptedTokenStore)
    session.close()
    plain = RefreshingSession("a-client", store=JSONTokenStore(tmp_path / "plain.json"),
                              token=_token())
    assert isinstance(plain.store, JSONTokenStore)  # a store object: used as it is
    plain.close()


# -- open_session(...), RefreshingAuth.open(...), RefreshingMiddleware.open(...) -------------

def _openers() -> list[Callable[..., Any]]:
    httpx_front = pytest.importorskip("refresher.httpx")
    aiohttp_front = pytest.importorskip("refresher.aiohttp")
    return [open_session, httpx_front.RefreshingAuth.open,
            aiohttp_front.RefreshingMiddleware.open]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["open_session", "httpx", "aiohttp"])
def test_open_uses_the_urls_the_login_recorded(index, no_settings, tmp_path):
    """The token and API URLs: an argument, else the record, else REFRESHER_*, else X's."""
    open_ = _openers()[index]
    path = tmp_path / "tokens.json"
    store = _logged_in(JSONTokenStore(path))
    _logged_in(store, "carol", metadata={"client_id": "recorded-client"})
    no_settings.setenv("REFRESHER_TOKEN_URL", "https://variable.example/token")
    no_settings.setenv("REFRESHER_API_URL", "https://variable.example")

    def urls(account: str, **given: Any) -> tuple[str, str]:
        front = open_(account, store=str(path), **given)
        try:
            return _urls(front)
        finally:
            front.close()

    assert urls("alice", token_url="https://given.example/token",
                api_url="https://given.example") \
        == ("https://given.example/token", "https://given.example")
    assert urls("alice") == ("https://recorded.example/token", "https://recorded.example")
    assert urls("carol") == ("https://variable.example/token", "https://variable.example")
    no_settings.delenv("REFRESHER_TOKEN_URL")
    no_settings.delenv("REFRESHER_API_URL")
    assert urls("carol") == (X_TOKEN_URL, X_API_URL)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["open_session", "httpx", "aiohttp"])
def test_open_finds_the_store_and_account_and_never_takes_a_secret_from_the_record(
        index, no_settings, tmp_path):
    open_ = _openers()[index]
    path = tmp_path / "tokens.json"
    store = _logged_in(JSONTokenStore(path))
    no_settings.setenv("REFRESHER_STORE", str(path))
    front = open_()                       # REFRESHER_STORE, and its only account
    assert front.account == "alice" and front.store.path == path
    assert not front.coordinator.endpoint.confidential
    front.close()
    _logged_in(store, "bob", metadata=dict(RECORDED, confidential=True))
    with pytest.raises(ConfigurationError, match="several accounts"):
        open_()
    no_settings.setenv("REFRESHER_ACCOUNT", "bob")
    with pytest.raises(ConfigurationError, match="REFRESHER_CLIENT_SECRET"):
        open_()                           # a confidential client: the record has no secret
    no_settings.setenv("REFRESHER_CLIENT_SECRET", "variable-secret")
    front = open_()
    assert front.account == "bob" and front.coordinator.endpoint.confidential
    front.close()


def test_open_session_default_store_is_in_the_config_folder(no_settings, tmp_path):
    path = tmp_path / "config" / "refresher" / "tokens.json"
    path.parent.mkdir(parents=True)
    _logged_in(JSONTokenStore(path))
    session = open_session()
    assert session.store is not None and session.store.path == path  # type: ignore[attr-defined]
    session.close()


# -- LoginFlow(...) ------------------------------------------------------------------------

def test_login_flow_defaults_are_xs_and_the_loopback_callback(no_settings):
    flow = LoginFlow("a-client")
    assert (flow.authorize_url, flow.token_url, flow.api_url, flow.revoke_url) == (
        X_AUTHORIZE_URL, X_TOKEN_URL, X_API_URL, X_REVOKE_URL)
    assert flow.redirect_uri == "http://127.0.0.1:8765/callback"
    assert flow.scopes == refresher.DEFAULT_SCOPES
    no_settings.setenv("REFRESHER_REDIRECT_URI", "http://127.0.0.1:9999/callback")
    assert LoginFlow("a-client").redirect_uri == "http://127.0.0.1:9999/callback"


def test_flow_session_carries_the_flows_settings_not_the_variables(no_settings):
    flow = LoginFlow("a-client", "a-secret", token_url="https://given.example/token",
                     api_url="https://given.example")
    for name, value in VARIABLES.items():
        no_settings.setenv(name, value)
    session = flow.session(_token())
    assert _urls(session) == ("https://given.example/token", "https://given.example")
    assert session.coordinator is not None and session.coordinator.endpoint.confidential
    assert session.account == "default" and isinstance(session.store, MemoryTokenStore)
    session.close()


# -- the command line ----------------------------------------------------------------------

@pytest.fixture
def cli_logging_undone() -> Any:
    """``main`` sets up refresher's loggers for a command: undone afterwards, so the tests
    that follow in this process hear refresher's warnings as before."""
    loggers = [logging.getLogger(name) for name in ("refresher", "refresher.settings")]
    saved = [(logger.level, list(logger.handlers)) for logger in loggers]
    yield
    for logger, (level, handlers) in zip(loggers, saved):
        logger.setLevel(level)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)


def test_status_lists_every_account_whatever_refresher_account_says(no_settings, tmp_path,
                                                                    capsys,
                                                                    cli_logging_undone):
    path = tmp_path / "tokens.json"
    store = _logged_in(JSONTokenStore(path))
    _logged_in(store, "bob")
    no_settings.setenv("REFRESHER_STORE", str(path))
    no_settings.setenv("REFRESHER_ACCOUNT", "bob")
    assert main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [row["account"] for row in shown["accounts"]] == ["alice", "bob"]
    assert main(["status", "--json", "--account", "bob"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [row["account"] for row in shown["accounts"]] == ["bob"]


# -- the page's example, as printed --------------------------------------------------------

def test_the_pages_example_open_session_reads_the_record_the_constructor_does_not(
        x_emulator, tmp_path, no_settings) -> None:
    """On a store where ``alice`` was logged in against the emulator (the token and the
    record ``refresher login`` writes), the page's block prints the emulator's token URL
    for open_session and X's for RefreshingSession."""
    store = JSONTokenStore(tmp_path / "tokens.json")
    with store.lock("alice"):
        store.save("alice", x_emulator.issue_token())
    store.save_metadata("alice", {"client_id": DEFAULT_CLIENT_ID, "confidential": False,
                                  "token_url": x_emulator.token_url,
                                  "api_url": x_emulator.api_url})
    code = doc_block("docs/reference/settings.rst", "saved ``alice`` against the\nemulator:")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("REFRESHER_")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [x_emulator.token_url, X_TOKEN_URL]
    shown = doc_block("docs/reference/settings.rst",
                      "# X's: arguments and X's defaults only\n").splitlines()
    assert shown[1] == X_TOKEN_URL
    assert shown[0].rpartition(":")[2].partition("/")[2] \
        == x_emulator.token_url.rpartition(":")[2].partition("/")[2]  # the same path
