"""No access token, refresh token or client secret in any log line, repr, str or message."""

from __future__ import annotations

import json
import logging

import pytest

import refresher
from refresher import JSONTokenStore, MemoryTokenStore
from refresher.testing import DEFAULT_CLIENT_SECRET, DEFAULT_CONFIDENTIAL_CLIENT_ID


def _secrets_in(text: str, secrets) -> list:
    return [s for s in secrets if s and s in text]


def test_a_whole_life_at_debug_logs_no_secret(x_emulator, make_session, all_logs,
                                              tmp_path, me_url) -> None:
    all_logs.set_level(logging.DEBUG, logger="urllib3")  # put back after the test
    token = x_emulator.issue_token(client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID)
    seen = [token["access_token"], token["refresh_token"], DEFAULT_CLIENT_SECRET]
    session = make_session(store=JSONTokenStore(tmp_path / "t.json"), token=token,
                           client_id=DEFAULT_CONFIDENTIAL_CLIENT_ID,
                           client_secret=DEFAULT_CLIENT_SECRET)
    me = me_url(x_emulator)
    session.get(me)
    seen += [session.token["access_token"], session.token["refresh_token"]]
    session.refresh()                                          # explicit refresh
    seen += [session.token["access_token"], session.token["refresh_token"]]
    x_emulator.expire_access_token(session.token["access_token"])
    session.get(me)                                            # 401 -> refresh -> replay
    seen += [session.token["access_token"], session.token["refresh_token"]]
    x_emulator.fail_token_endpoint(times=3, status=503)
    with pytest.raises(refresher.RefreshError) as failed:
        session.refresh()                                      # retried, then failed
    x_emulator.revoke_all()
    with pytest.raises(refresher.ReauthorizationRequired) as spent:
        session.refresh()
    assert any("refreshed" in r.getMessage() for r in all_logs.records)  # INFO with fingerprint
    everything = "\n".join(
        [r.getMessage() for r in all_logs.records] + [all_logs.text, repr(session), str(session),
         str(failed.value), repr(failed.value), str(spent.value), repr(spent.value),
         repr(session.store), repr(session.coordinator.endpoint)])
    assert _secrets_in(everything, seen) == []


def test_refresh_is_logged_at_info_with_a_fingerprint(x_emulator, make_session, all_logs):
    session = make_session(store=MemoryTokenStore())
    session.refresh()
    infos = [r for r in all_logs.records
             if r.levelno == logging.INFO and r.name.startswith("refresher")]
    assert any("sha256:" in r.getMessage() for r in infos)


def test_an_error_description_that_echoes_the_token_is_scrubbed(x_emulator, make_session):
    session = make_session()
    refresh_token = session.token["refresh_token"]
    x_emulator.fail_token_endpoint(
        times=1, status=400,
        body=json.dumps({"error": "invalid_request",
                         "error_description": f"bad token {refresh_token}"}))
    with pytest.raises(refresher.RefreshError) as raised:
        session.refresh()
    assert refresh_token not in str(raised.value)
    assert "[redacted]" in str(raised.value)
