"""Shared fixtures: sessions wired to the emulator (served by the refresher pytest plugin)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, List

import pytest

from refresher import MemoryTokenStore, RefreshingSession, TokenStore
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator


@pytest.fixture
def make_session(x_emulator: XEmulator) -> Iterator[Callable[..., RefreshingSession]]:
    """``make_session(store=None, token=None, emulator=None, **kw)``: a RefreshingSession.

    Wired to ``x_emulator`` (or the given emulator), seeded with a fresh emulator token
    unless ``token`` is given; closed after the test.
    """
    made: List[RefreshingSession] = []

    def make(store: TokenStore | None = None, token: Any = "fresh",
             emulator: XEmulator | None = None, **kw: Any) -> RefreshingSession:
        x = emulator or x_emulator
        if isinstance(token, str) and token == "fresh":
            token = x.issue_token()
        kw.setdefault("client_id", DEFAULT_CLIENT_ID)
        kw.setdefault("token_url", x.token_url)
        kw.setdefault("api_base_url", x.api_url)
        session = RefreshingSession(
            store=store if store is not None else MemoryTokenStore(), token=token, **kw
        )
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record from every logger, at DEBUG (to prove no secret is ever logged)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Tests that run the ``refresher`` command as a process (the ``cli`` fixture) are
    integration tests, like those marked so by hand: ``-m "not integration"`` is the fast
    loop."""
    for item in items:
        if "cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
