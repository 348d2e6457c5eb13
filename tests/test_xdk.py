"""X's own Python SDK (``xdk``) over a RefreshingSession: ``client.session = session``.

xdk puts ``Authorization: Bearer <its access_token>`` on every call; the session's adapter
replaces it with the current token, refreshed before expiry and after a 401. Given no
token and no client id, xdk holds no refresh token, so its own ``refresh_token()`` has
nothing to spend behind refresher's back; given them, it spends the pair (shown below).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from doc_blocks import doc_block

from refresher import JSONTokenStore, LoginFlow, MemoryTokenStore, ReauthorizationRequired
from refresher.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_CONFIDENTIAL_CLIENT_ID,
    FakeClock,
)

xdk = pytest.importorskip("xdk")


def _client(session):
    """The docs' way (docs/howto/xdk.rst): xdk aimed at the session's API URL, holding
    nothing to refresh."""
    client = xdk.Client(base_url=session.api_url, access_token="unused: the session supplies it")
    client.session = session
    return client


def test_xdk_calls_survive_expired_and_refused_tokens(x_emulator_factory, make_session):
    clock = FakeClock()
    x = x_emulator_factory(access_ttl=60, clock=clock)
    session = make_session(store=MemoryTokenStore(), emulator=x, clock=clock)
    client = _client(session)
    for _ in range(3):  # tokens that expire: refreshed before the call goes out
        clock.advance(61)
        assert client.users.get_me().data.username == "emulated_user"
    assert x.stats.refreshes == 3 and x.stats.unauthorized == 0
    for _ in range(2):  # tokens X refuses early: a 401, refreshed and replayed, never seen
        x.expire_access_token(session.token["access_token"])
        assert client.users.get_me().data.username == "emulated_user"
    stats = x.stats
    assert stats.refreshes == 5 and stats.unauthorized == 2
    assert stats.reused_refresh_tokens == 0 and stats.api_requests == 7


def test_xdks_own_refresh_token_has_nothing_to_spend(x_emulator, make_session):
    session = make_session()
    client = _client(session)
    assert client.users.get_me().data.username == "emulated_user"
    stored = session.token
    with pytest.raises(ValueError, match="OAuth2 credentials not configured"):
        client.refresh_token()
    assert x_emulator.stats.token_requests == 0  # nothing was sent to the token endpoint
    assert session.token == stored
    session.refresh()  # the pair refresher holds is whole: it refreshes, and calls work
    assert client.users.get_me().data.username == "emulated_user"
    assert x_emulator.stats.reused_refresh_tokens == 0


def test_why_the_recipe_gives_xdk_no_token(x_emulator, make_session, monkeypatch):
    """Handed the token (and a confidential client's id and secret), xdk refreshes by
    itself, with the refresh token in that dict: X rotates the pair behind refresher's back,
    and the stored refresh token is spent. (xdk refreshes through requests-oauthlib, which
    refuses plain http, as to the emulator, without this variable.)"""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    session = make_session(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID,
                           client_secret=DEFAULT_CLIENT_SECRET,
                           token=x_emulator.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID))
    trap = xdk.Client(base_url=session.api_url, client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID,
                      client_secret=DEFAULT_CLIENT_SECRET, token=session.token)
    trap.refresh_token()
    assert x_emulator.stats.refreshes == 1  # xdk spent the pair the store holds
    with pytest.raises(ReauthorizationRequired):
        session.refresh()
    assert x_emulator.stats.reused_refresh_tokens == 1


@pytest.mark.integration
def test_the_docs_recipe_as_printed(x_emulator_factory, tmp_path):
    x = x_emulator_factory()
    store = tmp_path / "tokens.json"
    flow = LoginFlow(DEFAULT_CLIENT_ID, redirect_uri="http://127.0.0.1:0/callback",
                     authorize_url=x.authorize_url, token_url=x.token_url, api_url=x.api_url)
    token = flow.run_local_server(open_browser=lambda url: requests.get(url, timeout=10))
    flow.session(token, store=str(store), account="alice").close()
    JSONTokenStore(store).save_metadata("alice", {  # what `refresher login` records
        "client_id": DEFAULT_CLIENT_ID, "token_url": x.token_url, "api_url": x.api_url})
    script = tmp_path / "xdk_bot.py"
    script.write_text(doc_block("docs/howto/xdk.rst", "The recipe\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env["REFRESHER_STORE"] = str(store)
    for _ in range(2):  # the second run after X stopped taking the access token
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ("@emulated_user via xdk\n"
                               "xdk: OAuth2 credentials not configured\n")
        x.expire_access_token(JSONTokenStore(store).load("alice")["access_token"])
    stats = x.stats
    assert stats.refreshes == 1 and stats.reused_refresh_tokens == 0
    assert stats.unauthorized == 1  # X refused the expired token once; the script never saw it
