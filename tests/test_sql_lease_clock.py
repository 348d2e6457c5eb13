"""SQL leases that a wall-clock step cannot break.

On SQLite the lease's time is each client's own wall clock, which no other process may
trust: another's lease is taken only once the waiting store has watched it unchanged for
the holder's lock_ttl on its own monotonic clock. PostgreSQL judges leases on the server's
clock. Processes and stores whose wall clock runs 45 s (or lock_ttl + 1 s) ahead stand for
a clock step.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from refresher import Clock, LockLost, LockTimeout, RefreshingSession, SQLTokenStore
from refresher.stores.sql import DEFAULT_LOCK_TTL
from refresher.testing import DEFAULT_CLIENT_ID

ACCOUNT = "alice"
TOKEN = {"access_token": "at-1", "refresh_token": "rt-1", "token_type": "bearer",
         "expires_in": 7200, "expires_at": 2_000_000_000.0, "scope": "tweet.read"}
#: Clock steps past the lease: far past it, and just past it (the default run's one for the
#: multi-process case; ``-m soak`` adds the other).
STEPS = [45.0, DEFAULT_LOCK_TTL + 1]


class Shifted(Clock):
    """The real clock, its wall time ``seconds`` ahead (a step NTP or a person made)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return time.time() + self.seconds


class Stopped(Shifted):
    """A shifted wall clock whose monotonic clock moves only when the test moves it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def sqlite_url(tmp_path: Any, sqlalchemy_installed: None) -> str:
    return f"sqlite:///{tmp_path / 'tokens.db'}"


@pytest.fixture
def make_store() -> Iterator[Callable[..., SQLTokenStore]]:
    made: list[SQLTokenStore] = []

    def make(url: str, **options: Any) -> SQLTokenStore:
        made.append(SQLTokenStore(url, **options))
        return made[-1]

    yield make
    for store in made:
        store.close()


def _lease(url: str) -> tuple[Any, Any]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.text(
                "SELECT lease_owner, lease_until FROM refresher_tokens WHERE account = :a"),
                {"a": ACCOUNT}).first()
    finally:
        engine.dispose()
    return (row[0], row[1]) if row is not None else (None, None)


# -- two stores, one of them stepped ---------------------------------------------------------

@pytest.mark.parametrize("step", STEPS)
def test_a_store_whose_clock_stepped_ahead_cannot_take_a_live_lease(
        db_url, make_store, step) -> None:
    holder, stepped = make_store(db_url), make_store(db_url, clock=Shifted(step))
    with holder.lock(ACCOUNT):
        holder.save(ACCOUNT, TOKEN)
        with pytest.raises(LockTimeout):
            with stepped.lock(ACCOUNT, timeout=1.0):
                pass
        holder.verify_lock(ACCOUNT)           # still the holder's: nothing was taken
        stepped.delete(ACCOUNT)               # a logout meanwhile keeps the lease
        holder.verify_lock(ACCOUNT)
        assert stepped.load(ACCOUNT) is None
    with stepped.lock(ACCOUNT, timeout=0):    # a free lease is taken at once
        holder_sees = make_store(db_url)
        with pytest.raises(LockTimeout):
            with holder_sees.lock(ACCOUNT, timeout=0.3):
                pass


def test_on_sqlite_a_lease_is_taken_only_after_this_store_watched_it_unchanged_for_lock_ttl(
        sqlite_url, make_store) -> None:
    """The watch: remembered across waits (a lock_timeout shorter than lock_ttl), started
    again by every renewal, and only then a takeover; the former holder then sends nothing."""
    clock = Stopped(45.0)
    holder, waiter = make_store(sqlite_url), make_store(sqlite_url, clock=clock)

    def attempt() -> bool:
        try:
            with waiter.lock(ACCOUNT, timeout=0):
                return True
        except LockTimeout:
            return False

    with holder.lock(ACCOUNT):
        assert not attempt()                  # first look: the watch starts
        clock.now += 20.0
        holder.verify_lock(ACCOUNT)           # the holder renews before a token call
        assert not attempt()                  # changed: the watch starts again
        clock.now += DEFAULT_LOCK_TTL - 1
        assert not attempt()                  # unchanged, but not for lock_ttl yet
        with pytest.raises(LockTimeout, match=r"unchanged for 30 s, 29\.0 s so far"):
            with waiter.lock(ACCOUNT, timeout=0):
                pass
        clock.now += 1.5
        taken = waiter.lock(ACCOUNT, timeout=0)
        taken.__enter__()                     # unchanged for lock_ttl: a dead holder's
        with pytest.raises(LockLost, match="not sent"):
            holder.verify_lock(ACCOUNT)       # a holder that only hung finds it gone
    owner, _ = _lease(sqlite_url)
    assert owner is not None and owner.endswith(":ttl=30")  # the successor's, kept
    taken.__exit__(None, None, None)


def test_on_sqlite_a_dead_holders_lease_waits_the_holders_lock_ttl_whatever_the_clock_says(
        sqlite_url, make_store) -> None:
    """A lease whose holder died long ago (lease_until far in the past, e.g. before a
    reboot) is still watched for its holder's lock_ttl; a waiter whose lock_timeout is that
    long takes it in one wait."""
    dead = make_store(sqlite_url, lock_ttl=1.0, clock=Shifted(-3600.0))
    held = dead.lock(ACCOUNT)
    held.__enter__()                          # taken, never released: its holder "died"
    assert _lease(sqlite_url)[1] < time.time() - 3000
    started = time.monotonic()
    with make_store(sqlite_url, clock=Shifted(45.0)).lock(ACCOUNT, timeout=1.0):
        waited = time.monotonic() - started
    assert waited >= 1.0                      # watched for the holder's lock_ttl, not less
    assert waited < 30                        # (did not hang)
    assert held is not None


# -- real processes, one of them stepped -------------------------------------------------------

_STEPPED_REFRESH = """
import sys, time
_real = time.time
time.time = lambda: _real() + float(sys.argv[1])   # this whole process's wall clock
from refresher import RefreshingSession, open_store
url, client_id, token_url = sys.argv[2:5]
store = open_store(url)
session = RefreshingSession(client_id, store=store, account="alice", token_url=token_url)
print(session.token["access_token"], flush=True)
sys.stdin.readline()                                 # go
try:
    print("refreshed", session.refresh()["access_token"], flush=True)
except Exception as exc:
    print("failed", type(exc).__name__, flush=True)
session.close()
store.close()
"""


@pytest.mark.integration
@pytest.mark.parametrize("step", [STEPS[1], pytest.param(STEPS[0], marks=pytest.mark.soak)])
def test_a_process_whose_clock_stepped_ahead_spends_no_refresh_token_twice(
        db_url, make_store, x_emulator_factory, in_thread, wait_for, step) -> None:
    """Process A refreshes (the token endpoint answers after 2 s); process B, its clock
    ahead, refreshes meanwhile. B waits for A's lease, then refreshes A's new pair: no
    refresh token sent twice, and the stored pair is live. (On SQLite before the watch, B
    took A's live lease at once and sent the same refresh token: the account was lost.)"""
    x = x_emulator_factory()
    seed = x.issue_token()
    store = make_store(db_url)
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=ACCOUNT, token=seed,
                                token_url=x.token_url)
    other = subprocess.Popen(
        [sys.executable, "-c", _STEPPED_REFRESH, str(step), db_url, DEFAULT_CLIENT_ID,
         x.token_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == seed["access_token"]
        x.token_delay = 2.0
        refreshing = in_thread(session.refresh)
        wait_for(lambda: x.stats.token_requests == 1, "A's token request")
        owner, _ = _lease(db_url)
        assert owner is not None              # A holds the lease while X answers
        other.stdin.write("go\n")
        other.stdin.flush()
        refreshing()
        out, err = other.communicate(timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
    assert other.returncode == 0, err
    assert out.split()[0] == "refreshed", out + err
    assert x.stats.reused_refresh_tokens == 0
    assert x.stats.invalid_refresh_tokens == 0
    stored = store.load(ACCOUNT)
    assert out.split()[1] == stored["access_token"]
    assert x.refresh_token_state(stored["refresh_token"]) == "live"
    session.close()

