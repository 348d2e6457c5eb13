"""RedisTokenStore against a real redis-server: the store, its lock, its fencing, and the
multi-process runs and faults of the Redis issue (processes stand for hosts: they share
nothing but the Redis URL)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import refresher
from refresher import (
    LockTimeout,
    RedisTokenStore,
    RefreshingSession,
    StaleTokenError,
    TokenStoreError,
    open_store,
)
from refresher.endpoint import DEFAULT_TIMEOUT
from refresher.stores.redis import DEFAULT_LOCK_TTL
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
from refresher.testing.net import free_port
from refresher.testing.redis_server import RedisServer

pytestmark = pytest.mark.redis

ACCOUNT = "alice"
TOKEN = {"access_token": "at-1", "refresh_token": "rt-1", "token_type": "bearer",
         "expires_in": 7200, "expires_at": 2_000_000_000.0, "scope": "tweet.read"}


@pytest.fixture
def make_store(redis_server: RedisServer) -> Iterator[Callable[..., RedisTokenStore]]:
    """``make_store(url=None, **options)``: a RedisTokenStore on the test's server."""
    made: list[RedisTokenStore] = []

    def make(url: str | None = None, **options: Any) -> RedisTokenStore:
        store = RedisTokenStore(url or redis_server.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test's server, to look behind the store's back."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _session(x: XEmulator, store: RedisTokenStore, token: Any = None,
             **kw: Any) -> RefreshingSession:
    return RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=ACCOUNT, token=token,
                             token_url=x.token_url, api_base_url=x.api_url, **kw)


# -- the lock's lifetime ---------------------------------------------------------------------

def test_the_token_endpoint_timeout_is_well_under_the_lock_ttl() -> None:
    # A refresh must end long before its lock can lapse; fencing is the safety net only.
    assert DEFAULT_TIMEOUT * 3 <= DEFAULT_LOCK_TTL
    assert RedisTokenStore.__init__.__defaults__ is not None
    assert DEFAULT_LOCK_TTL in RedisTokenStore.__init__.__defaults__


# -- the store -------------------------------------------------------------------------------

def test_open_store_makes_a_redis_store_from_a_url(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url, prefix="app:", lock_ttl=25)
    try:
        assert isinstance(store, RedisTokenStore)
        assert store.prefix == "app:" and store.lock_ttl == 25
        assert repr(store) == f"RedisTokenStore('{redis_server.url}', prefix='app:')"
        with store.lock(ACCOUNT):
            store.save(ACCOUNT, TOKEN)
        assert open_store(redis_server.url, prefix="app:").load(ACCOUNT) == TOKEN
    finally:
        store.close()


def test_tokens_round_trip_as_json_under_prefix_plus_account(make_store, raw) -> None:
    store = make_store()
    assert store.load(ACCOUNT) is None
    assert store.accounts() == []
    with store.lock(ACCOUNT):
        store.save(ACCOUNT, TOKEN)
    assert store.load(ACCOUNT) == TOKEN
    assert json.loads(raw.hget("refresher:" + ACCOUNT, "token")) == TOKEN
    assert int(raw.hget("refresher:" + ACCOUNT, "version")) == 1
    assert store.load(ACCOUNT) is not store.load(ACCOUNT)  # a fresh copy each time


def test_accounts_lists_only_tokens_of_this_prefix(make_store, raw) -> None:
    store, other = make_store(), make_store(prefix="other:")
    for name in ("carol", "bob", "alice"):
        store.save(name, TOKEN)
    other.save("zed", TOKEN)
    store.save_metadata("dave", {"client_id": "c"})  # metadata alone is not an account
    raw.set("refresher:junk", "not a hash")          # someone else's key under our prefix
    with store.lock("alice"):                        # a lock key is not an account
        assert store.accounts() == ["alice", "bob", "carol"]
    assert other.accounts() == ["zed"]
    assert other.load("alice") is None


def test_metadata_sits_beside_the_token_and_delete_forgets_both(make_store) -> None:
    store = make_store()
    assert store.load_metadata(ACCOUNT) == {}
    store.save(ACCOUNT, TOKEN)
    store.save_metadata(ACCOUNT, {"client_id": "my-client", "token_url": "https://x"})
    metadata = store.load_metadata(ACCOUNT)
    assert metadata["client_id"] == "my-client"
    assert abs(metadata["updated_at"] - time.time()) < 60
    assert store.load(ACCOUNT) == TOKEN
    store.delete(ACCOUNT)
    store.delete("nobody")
    assert store.load(ACCOUNT) is None
    assert store.load_metadata(ACCOUNT) == {}
    assert store.accounts() == []


def test_account_names_may_not_end_like_lock_keys(make_store) -> None:
    store = make_store()
    for call in (lambda: store.save("alice:lock", TOKEN), lambda: store.load("alice:lock"),
                 lambda: store.lock("alice:lock").__enter__()):
        with pytest.raises(refresher.ConfigurationError, match="choose another account name"):
            call()


def test_a_corrupt_value_is_reported_and_left_untouched(make_store, raw) -> None:
    store = make_store()
    raw.hset("refresher:" + ACCOUNT, "token", "{not json")
    with pytest.raises(TokenStoreError, match="not valid JSON") as caught:
        store.load(ACCOUNT)
    assert "refresher:alice" in str(caught.value)
    assert raw.hget("refresher:" + ACCOUNT, "token") == b"{not json"
    raw.set("refresher:bob", "a string, not a hash")
    with pytest.raises(TokenStoreError, match="WRONGTYPE"):
        store.load("bob")


# -- the lock --------------------------------------------------------------------------------

def test_lock_timeout_raises_LockTimeout_naming_server_and_account(make_store,
                                                                   redis_server) -> None:
    holder, waiter = make_store(), make_store()
    with holder.lock(ACCOUNT):
        with pytest.raises(LockTimeout) as caught:
            with waiter.lock(ACCOUNT, timeout=0.2):
                pass
    message = str(caught.value)
    assert isinstance(caught.value, TokenStoreError)
    assert f"127.0.0.1:{redis_server.port}/0" in message and "'alice'" in message
    with waiter.lock(ACCOUNT, timeout=0.2):  # released: had at once
        pass


def test_lock_is_reentrant_within_a_thread(make_store) -> None:
    store = make_store()
    with store.lock(ACCOUNT, timeout=1):
        with store.lock(ACCOUNT, timeout=1):
            store.save(ACCOUNT, TOKEN)
        with pytest.raises(LockTimeout):  # still held after the inner block
            with make_store().lock(ACCOUNT, timeout=0):
                pass


_INCREMENTS = """
import sys, time
import redis
from refresher import open_store
url, times, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store, raw = open_store(url, lock_ttl=20), redis.Redis.from_url(url)
while time.time() < start_at:
    time.sleep(0.001)
for _ in range(times):
    with store.lock("shared", timeout=30):
        value = int(raw.get("counter") or 0)   # read, wait, write: loses updates unless
        time.sleep(0.002)                      # the lock really is exclusive
        raw.set("counter", value + 1)
"""


@pytest.mark.integration
def test_lock_is_exclusive_across_processes(redis_server, raw) -> None:
    processes, times = 3, 30
    start_at = str(time.time() + 2.0)
    workers = [subprocess.Popen([sys.executable, "-c", _INCREMENTS, redis_server.url,
                                 str(times), start_at], stderr=subprocess.PIPE)
               for _ in range(processes)]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err.decode()
    assert int(raw.get("counter")) == processes * times


def test_an_expired_lock_is_not_released_by_its_former_owner(make_store, raw, caplog) -> None:
    slow, fast = make_store(lock_ttl=0.3), make_store()
    with slow.lock(ACCOUNT):
        time.sleep(0.5)                        # the lock expires under the slow holder
        later = fast.lock(ACCOUNT, timeout=1)
        later.__enter__()                      # ... and someone else takes it
    assert raw.exists("refresher:alice:lock")  # the slow holder's exit left it alone
    assert "lapsed" in caplog.text
    with pytest.raises(LockTimeout):
        with make_store().lock(ACCOUNT, timeout=0):
            pass
    later.__exit__(None, None, None)
    assert not raw.exists("refresher:alice:lock")


_HOLD_LOCK = """
import sys, time
from refresher import open_store
store = open_store(sys.argv[1], lock_ttl=float(sys.argv[2]))
with store.lock(sys.argv[3], timeout=10):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
def test_a_sigkilled_lock_holder_frees_the_lock_after_lock_ttl(x_emulator, redis_server,
                                                                make_store, raw, me_url) -> None:
    lock_ttl = 2.5  # the dead holder's; this session's store keeps the default
    store = make_store()
    seed = x_emulator.issue_token()
    session = _session(x_emulator, store, seed, lock_timeout=15)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, redis_server.url,
                               str(lock_ttl), ACCOUNT], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    # The dead holder's lock is still there, and expires by itself.
    assert 0 < raw.pttl("refresher:alice:lock") <= lock_ttl * 1000
    with pytest.raises(LockTimeout):
        with store.lock(ACCOUNT, timeout=0):
            pass
    x_emulator.expire_access_token(seed["access_token"])
    response = session.get(me_url(x_emulator))  # 401, waits, refreshes
    assert response.status_code == 200
    assert x_emulator.stats.refreshes == 1
    assert x_emulator.stats.reused_refresh_tokens == 0
    assert store.load(ACCOUNT)["access_token"] == session.token["access_token"]
    session.close()


# -- fencing ---------------------------------------------------------------------------------

def test_fencing_refuses_the_write_of_a_holder_whose_lock_expired(make_store) -> None:
    slow, fast = make_store(lock_ttl=0.3), make_store()
    slow.save(ACCOUNT, TOKEN)
    newer = dict(TOKEN, access_token="at-newer", refresh_token="rt-newer")
    older = dict(TOKEN, access_token="at-older", refresh_token="rt-older")
    with slow.lock(ACCOUNT):
        assert slow.load(ACCOUNT) == TOKEN     # version 1, remembered for the save
        time.sleep(0.5)                        # the lock lapses while this holder is slow
        with fast.lock(ACCOUNT, timeout=1):
            fast.load(ACCOUNT)
            fast.save(ACCOUNT, newer)          # version 2
        with pytest.raises(StaleTokenError) as caught:
            slow.save(ACCOUNT, older)
    assert fast.load(ACCOUNT) == newer          # the newer token stays
    assert fast.version(ACCOUNT) == 2
    message = str(caught.value)
    assert "newer token is kept" in message and "lock_ttl" in message
    assert "at-" not in message and "rt-" not in message


def test_a_holder_whose_lock_lapsed_still_saves_when_nobody_else_wrote(make_store) -> None:
    store = make_store(lock_ttl=0.3)
    store.save(ACCOUNT, TOKEN)
    granted = dict(TOKEN, access_token="at-2", refresh_token="rt-2")
    with store.lock(ACCOUNT):
        store.load(ACCOUNT)
        time.sleep(0.5)
        store.save(ACCOUNT, granted)  # the only live pair: it must not be refused
    assert store.load(ACCOUNT) == granted


def test_saves_are_a_compare_and_set_on_the_version_loaded_under_the_lock(make_store) -> None:
    store, other = make_store(), make_store()
    with store.lock(ACCOUNT):
        assert store.load(ACCOUNT) is None
        store.save(ACCOUNT, TOKEN)                               # version 1
        store.save(ACCOUNT, dict(TOKEN, access_token="at-2"))    # 2: follows its own save
    assert store.version(ACCOUNT) == 2
    other.save(ACCOUNT, dict(TOKEN, access_token="at-3"))        # no lock, no load: a plain write
    assert store.version(ACCOUNT) == 3
    with store.lock(ACCOUNT):
        store.load(ACCOUNT)
        other.save(ACCOUNT, dict(TOKEN, access_token="at-4"))
        with pytest.raises(StaleTokenError):
            store.save(ACCOUNT, dict(TOKEN, access_token="at-5"))
        # The same token again (a save retried after its reply was lost) is not a conflict.
        store.save(ACCOUNT, dict(TOKEN, access_token="at-4"))
    assert store.load(ACCOUNT)["access_token"] == "at-4"


def test_a_session_refuses_a_redis_lock_that_a_grant_could_outlive(x_emulator,
                                                                   make_store) -> None:
    store = make_store(lock_ttl=10)  # the token endpoint may take 15 s
    with pytest.raises(refresher.ConfigurationError, match=r"lock_ttl >= 20"):
        _session(x_emulator, store, x_emulator.issue_token())
    assert make_store().load(ACCOUNT) is None  # refused before anything was saved


class _PausingStore(RedisTokenStore):
    """A host that stalls (a GC pause, SIGSTOP) after reading the store under its lock."""

    pause = 0.0

    def load(self, account: str) -> Any:
        token = super().load(account)
        if self.pause and account in self._holds:
            pause, self.pause = self.pause, 0.0
            time.sleep(pause)
        return token


def test_a_holder_whose_lock_lapsed_does_not_spend_the_refresh_token(
        x_emulator_factory, redis_server, make_store, raw, me_url, in_thread, wait_for) -> None:
    """Host A stalls under its lock past lock_ttl; host B takes the lock and refreshes. A
    must not send the same refresh token: it notices before the token call, takes the lock
    again and adopts B's pair."""
    x = x_emulator_factory()
    seed = x.issue_token()
    stalled = _PausingStore(redis_server.url)
    host_a = _session(x, stalled, seed)
    host_b = _session(x, make_store())
    stalled.lock_ttl = 0.4  # from now on its locks lapse quickly (the session checked 30 s)
    stalled.pause = 1.0
    x.expire_access_token(seed["access_token"])
    url = me_url(x)
    first = in_thread(lambda: host_a.get(url))
    wait_for(lambda: raw.exists("refresher:alice:lock"), "host A's lock")
    wait_for(lambda: not raw.exists("refresher:alice:lock"), "host A's lock to lapse")
    assert host_b.get(url).status_code == 200  # B refreshes while A is stalled
    assert first().status_code == 200          # A wakes, sees the lapse, adopts B's pair
    assert x.stats.refreshes == 1
    assert x.stats.reused_refresh_tokens == 0
    assert host_a.token["access_token"] == host_b.token["access_token"]
    stalled.close()


def test_a_login_during_a_slow_refresh_waits_for_it_and_wins(
        x_emulator_factory, make_store, me_url, in_thread, wait_for) -> None:
    x = x_emulator_factory()
    seed = x.issue_token()
    slow = _session(x, make_store(), seed)
    other = _session(x, make_store())
    x.token_delay = 1.0
    x.expire_access_token(seed["access_token"])
    url = me_url(x)
    pending = in_thread(lambda: slow.get(url))
    wait_for(lambda: x.stats.token_requests == 1, "the slow refresh")
    login = x.issue_token()
    other.token = login  # a new login: it waits for the refresh under way, then replaces it
    assert pending().status_code == 200
    assert make_store().load(ACCOUNT)["access_token"] == login["access_token"]
    x.token_delay = 0
    assert slow.refresh()["refresh_token"] != login["refresh_token"]  # the login's pair, spent
    assert x.stats.reused_refresh_tokens == 0


# -- Redis down, wrong, or restarted -------------------------------------------------------

def test_unreachable_redis_is_a_TokenStoreError_naming_the_server_not_the_password(
        make_store, caplog) -> None:
    port = free_port()  # nothing listens there
    store = make_store(f"redis://:s3cret-pw@127.0.0.1:{port}/2")
    assert "s3cret-pw" not in repr(store)
    calls: dict[str, Callable[[], Any]] = {
        "load": lambda: store.load(ACCOUNT),
        "save": lambda: store.save(ACCOUNT, TOKEN),
        "accounts": store.accounts,
        "delete": lambda: store.delete(ACCOUNT),
        "load_metadata": lambda: store.load_metadata(ACCOUNT),
        "save_metadata": lambda: store.save_metadata(ACCOUNT, {"a": 1}),
        "lock": lambda: store.lock(ACCOUNT, timeout=1).__enter__(),
    }
    for name, call in calls.items():
        with pytest.raises(TokenStoreError) as caught:
            call()
        error = caught.value
        assert type(error) is TokenStoreError, name
        assert f"redis://127.0.0.1:{port}/2" in str(error), name
        assert "s3cret-pw" not in str(error), name
        assert error.__cause__ is None and error.__suppress_context__, name
    assert "s3cret-pw" not in caplog.text


def test_a_wrong_password_is_a_TokenStoreError_without_the_password(
        redis_server_factory, make_store) -> None:
    server = redis_server_factory("--requirepass", "right-pw-123")
    with pytest.raises(TokenStoreError) as caught:
        make_store(server.url_for(password="wrong-pw-456")).load(ACCOUNT)
    assert "wrong-pw-456" not in str(caught.value)
    assert "right-pw-123" not in str(caught.value)
    assert f"127.0.0.1:{server.port}/0" in str(caught.value)
    with pytest.raises(TokenStoreError):
        make_store(server.url).load(ACCOUNT)  # no password at all
    store = make_store(server.url_for(password="right-pw-123"))
    store.save(ACCOUNT, TOKEN)
    assert store.load(ACCOUNT) == TOKEN


def test_a_bad_url_is_a_TokenStoreError_without_the_password() -> None:
    with pytest.raises(TokenStoreError) as caught:
        RedisTokenStore("redis://:pw-in-url@127.0.0.1:notaport/0")
    assert "pw-in-url" not in str(caught.value)
    assert "redis://127.0.0.1:notaport/0" in str(caught.value)


def test_redis_restarted_during_a_refresh_the_granted_pair_is_written_back(
        x_emulator_factory, redis_server, make_store, me_url, in_thread, wait_for) -> None:
    """Redis dies while a refresh is at X: the new pair cannot be saved, and the old refresh
    token is already spent. The session keeps the pair, requests needing the store fail with
    TokenStoreError while Redis is down, and the pair is saved once Redis is back (empty:
    this server persists nothing)."""
    x = x_emulator_factory()
    store = make_store()
    seed = x.issue_token()
    session = _session(x, store, seed)
    url = me_url(x)
    assert session.get(url).status_code == 200
    x.token_delay = 1.0
    x.expire_access_token(seed["access_token"])
    pending = in_thread(lambda: session.get(url))
    wait_for(lambda: x.stats.token_requests == 1, "the refresh to reach X")
    redis_server.kill()
    with pytest.raises(TokenStoreError) as caught:
        pending()
    assert f"127.0.0.1:{redis_server.port}/0" in str(caught.value)
    assert x.stats.refreshes == 1  # X granted a pair; only this process knows it
    granted = session.token
    assert granted["refresh_token"] != seed["refresh_token"]
    # While Redis is down, each request first tries to save the pair, and says why it can't.
    with pytest.raises(TokenStoreError):
        session.get(url)
    redis_server.start()  # same port, empty
    assert store.load(ACCOUNT) is None
    assert session.get(url).status_code == 200  # writes the pair back first
    assert store.load(ACCOUNT)["refresh_token"] == granted["refresh_token"]
    # ... and that pair is the live one: the account goes on.
    x.token_delay = 0
    x.expire_access_token(granted["access_token"])
    assert session.get(url).status_code == 200
    assert x.stats.refreshes == 2
    assert x.stats.reused_refresh_tokens == 0
    assert x.stats.invalid_refresh_tokens == 0
    session.close()


# -- many processes --------------------------------------------------------------------------

@pytest.mark.integration
def test_4_processes_x_3_threads_share_one_redis_store_with_1_second_tokens(
        x_emulator_factory, redis_server, workload) -> None:
    x = x_emulator_factory(access_ttl=1.0)
    workload.assert_coordinated(workload.run(x, redis_server.url, processes=4, threads=3,
                                             seconds=3))


@pytest.mark.integration
def test_redis_restarted_in_the_middle_of_a_multi_process_run(
        x_emulator_factory, redis_server, raw, workload) -> None:
    """Redis goes away between two refreshes and comes back empty: requests that need the
    store fail with TokenStoreError while it is down, every process recovers after, and no
    refresh token is spent twice."""
    x = x_emulator_factory(access_ttl=2.0)
    outage = workload.outage(
        x, redis_server.url, processes=3, threads=2,
        stored_expiry=lambda: json.loads(raw.hget("refresher:shared", "token"))["expires_at"],
        stop=redis_server.kill, start=redis_server.start)
    errors = outage.users.errors()  # some requests needed the store while it was down
    assert errors and all(
        e.startswith("TokenStoreError: Redis token store at redis://127.0.0.1:")
        for e in errors), errors[:5]
    outage.assert_nothing_spent_twice(x)
    outage.assert_recovered()
    assert raw.hexists("refresher:shared", "token")  # written again after the restart


@pytest.mark.soak
@pytest.mark.integration
def test_soak_6_processes_x_4_threads_share_one_redis_store_for_60_seconds(
        x_emulator_factory, redis_server, workload) -> None:
    x = x_emulator_factory(access_ttl=1.0)
    workload.assert_coordinated(workload.run(x, redis_server.url, processes=6, threads=4,
                                             seconds=60))


def test_a_client_of_your_own_is_used_as_is_and_left_open(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisTokenStore(client, prefix="mine:")
    with store.lock(ACCOUNT, timeout=1):
        assert store.load(ACCOUNT) is None
        store.save(ACCOUNT, TOKEN)
    assert store.load(ACCOUNT) == TOKEN and store.accounts() == [ACCOUNT]
    assert repr(store) == f"RedisTokenStore('{redis_server.url}', prefix='mine:')"
    store.close()
    assert client.hget("mine:alice", "version") == "1"  # still usable: not the store's to close
    with pytest.raises(TypeError):
        RedisTokenStore(client, socket_timeout=1)
    client.close()
