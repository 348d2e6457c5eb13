"""One token connection pool per process and token URL: many sessions, few connections to
the token endpoint; a forked child makes its own pool. Real HTTP to the emulator."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from refresher import MemoryTokenStore, RefreshingSession
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator


def _expired(x: XEmulator) -> dict[str, Any]:
    return dict(x.issue_token(), expires_at=time.time() - 10)


def _session(x: XEmulator, store: MemoryTokenStore, account: str, **kw: Any) -> RefreshingSession:
    return RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=account,
                             token=_expired(x), token_url=x.token_url, api_url=x.api_url, **kw)


def _sockets() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir()
               if os.path.exists(fd) and os.readlink(fd).startswith("socket:"))


def test_sessions_of_one_token_url_share_one_pool(x_emulator_factory) -> None:
    x, other = x_emulator_factory(), x_emulator_factory()
    store = MemoryTokenStore()
    a, b = _session(x, store, "a"), _session(x, store, "b")
    c = _session(other, store, "c")
    own = requests.Session()
    d = _session(x, store, "d", refresh_session=own)
    assert a.coordinator.endpoint.session is b.coordinator.endpoint.session
    assert a.coordinator.endpoint.session is not c.coordinator.endpoint.session
    assert d.coordinator.endpoint.session is own  # the caller's stays the caller's
    a.close()  # closing one session leaves the shared pool working for the others
    assert b.get(x.api_url + "/2/users/me", timeout=10).status_code == 200
    assert x.stats.refreshes == 1


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts sockets in /proc")
def test_many_sessions_keep_no_token_connection_each(x_emulator) -> None:
    """60 sessions, each refreshing once and making one API request: the sockets they hold
    are about one each (their API connection), not two (API and token endpoint)."""
    x, store, count = x_emulator, MemoryTokenStore(), 60
    before = _sockets()
    sessions = [_session(x, store, f"user{n}") for n in range(count)]
    for session in sessions:
        assert session.get(x.api_url + "/2/users/me", timeout=10).status_code == 200
    held = _sockets() - before  # both ends of each connection: the emulator serves in here
    assert x.stats.refreshes == count
    assert held <= 2 * (count + 5), f"{held} sockets for {count} sessions"
    for session in sessions:
        session.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_after_use_gets_a_pool_of_its_own(x_emulator) -> None:
    x, store = x_emulator, MemoryTokenStore()
    session = _session(x, store, "alice")
    assert session.get(x.api_url + "/2/users/me", timeout=10).status_code == 200
    parents = session.coordinator.endpoint.session
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: refresh through the pool, report, leave at once
        try:
            fresh = session.coordinator.endpoint.session
            token = session.refresh()
            ok = fresh is not parents and token["access_token"] != ""
            os.write(write, b"ok" if ok else b"shared the parent's pool")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write, repr(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(write)
    said = os.read(read, 256)
    os.waitpid(pid, 0)
    os.close(read)
    assert said == b"ok"
    assert session.coordinator.endpoint.session is parents
    assert x.stats.reused_refresh_tokens == 0
