"""JSONTokenStore with many accounts: a lock per account, so refreshes of different accounts
run side by side (threads, processes) while each account still has one refresher at a time;
any string names an account; a refresh parses the file twice and writes it once."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from refresher import JSONTokenStore, LockLost, LockTimeout, RefreshingSession
from refresher.testing import DEFAULT_CLIENT_ID

TOKEN = {"access_token": "a" * 40, "refresh_token": "r" * 40, "token_type": "bearer",
         "expires_in": 7200, "expires_at": 1.0e10, "scope": "tweet.read users.read"}


def _token(n: int) -> dict:
    return dict(TOKEN, access_token=f"at-{n}", refresh_token=f"rt-{n}")


# A child process that holds store.lock(argv[2]) until its stdin closes; each line read
# before that ("save N") saves _token(N) for that account, under the lock, and says "saved".
_HOLD = textwrap.dedent("""
    import sys
    from refresher import JSONTokenStore
    store = JSONTokenStore(sys.argv[1])
    account = sys.argv[2]
    with store.lock(account, timeout=30):
        print("locked", flush=True)
        for line in sys.stdin:
            n = line.split()[1]
            store.save(account, {"access_token": "at-" + n, "refresh_token": "rt-" + n})
            print("saved", flush=True)
""")

# A child process that tries an account's lock for 0.2 s and prints what happened.
_TRY = textwrap.dedent("""
    import sys
    from refresher import JSONTokenStore, LockTimeout
    try:
        with JSONTokenStore(sys.argv[1]).lock(sys.argv[2], timeout=0.2):
            print("acquired")
    except LockTimeout:
        print("timed out")
""")


def _another_process_tries(path, account: str) -> str:
    done = subprocess.run([sys.executable, "-c", _TRY, str(path), account],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _hold_in_thread(store: JSONTokenStore, account: str):
    """Hold ``store.lock(account)`` in a thread; returns (release, join)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock(account, timeout=5):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)
    return release, thread


# -- one account's lock keeps out that account's refreshers, and nobody else ----------------


def test_a_thread_holding_a_does_not_block_b_and_still_excludes_a(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    release, holder = _hold_in_thread(JSONTokenStore(path), "A")
    try:
        other = JSONTokenStore(path)  # another object, as another part of the program has
        started = time.monotonic()
        with other.lock("B", timeout=0.2):
            other.save("B", _token(1))  # the file lock is free too: B's save goes through
        assert time.monotonic() - started < 5  # no wait for A (a bound, not a benchmark)
        with pytest.raises(LockTimeout) as raised:
            with other.lock("A", timeout=0.2):
                pass
        assert "account 'A'" in str(raised.value) and str(path) in str(raised.value)
    finally:
        release.set()
        holder.join(10)
    with other.lock("A", timeout=5):  # free again
        pass
    assert other.load("B") == _token(1)


@pytest.mark.integration
def test_a_process_holding_a_does_not_block_b_and_still_excludes_a(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("A", _token(0))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), "A"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with store.lock("B", timeout=0.2):  # not blocked by A's holder
            # writes of both accounts interleave, each under its own lock: none is lost
            holder.stdin.write("save 1\n")
            holder.stdin.flush()
            store.save("B", _token(2))
            assert holder.stdout.readline().strip() == "saved"
            assert _another_process_tries(path, "B") == "timed out"  # B is ours now
        with pytest.raises(LockTimeout):
            with store.lock("A", timeout=0.2):  # A stays the holder's, for this process...
                pass
        assert _another_process_tries(path, "A") == "timed out"  # ...and for any other
        assert _another_process_tries(path, "B") == "acquired"
        holder.stdin.close()
        assert holder.wait(30) == 0
    finally:
        holder.kill()
        holder.wait()
    assert store.load("A") == {"access_token": "at-1", "refresh_token": "rt-1"}
    assert store.load("B") == _token(2)
    assert _another_process_tries(path, "A") == "acquired"  # the holder's exit freed it


def test_locks_of_different_accounts_nest_and_each_is_re_entrant(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    with store.lock("A", timeout=1):
        with store.lock("B", timeout=1), store.lock("A", timeout=0.1):
            store.verify_lock("A")
            store.verify_lock("B")
            store.save("A", _token(1))
        store.verify_lock("A")
        with pytest.raises(LockLost, match="does not hold"):
            store.verify_lock("B")  # released with its block; A's hold says nothing of B
    with pytest.raises(LockLost):
        store.verify_lock("A")


# -- any string names an account --------------------------------------------------------


NAMES = ["", "alice", "Alice", "../../etc/passwd", "a/b\\c", ".lock", "Zoë ✓", " ",
         "x" * 10_000, "\udcff"]


def test_any_string_names_an_account_lock_file_of_its_own(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "new" / "tokens.json")
    paths = {store.account_lock_path(name) for name in NAMES}
    assert len(paths) == len(NAMES)  # one file each
    assert {p.parent for p in paths} == {store.locks_folder}  # all inside the folder
    assert all(len(p.name) == len("0" * 64 + ".lock") for p in paths)
    for name in NAMES:
        release, holder = _hold_in_thread(store, name)
        try:
            with pytest.raises(LockTimeout):
                with store.lock(name, timeout=0.05):
                    pass
        finally:
            release.set()
            holder.join(10)
    assert sorted(p.name for p in store.locks_folder.iterdir()) == sorted(p.name for p in paths)
    assert stat.S_IMODE(store.locks_folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
    for name in NAMES[:-1]:  # a lone surrogate can name a lock, not a JSON key
        with store.lock(name):
            store.save(name, _token(len(name)))
    assert store.accounts() == sorted(NAMES[:-1])


def test_lock_files_stay_when_an_account_is_deleted(tmp_path) -> None:
    """Another process may hold (or be opening) the lock file of an account being deleted:
    removing it would let a newcomer lock a new file beside that holder."""
    store = JSONTokenStore(tmp_path / "tokens.json")
    with store.lock("gone"):
        store.save("gone", _token(1))
        store.delete("gone")
        store.verify_lock("gone")  # still the file at the path
    assert store.account_lock_path("gone").exists()
    assert store.accounts() == []


def test_a_lock_folder_removed_between_holds_is_made_again(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    with store.lock("a"):
        pass
    store.account_lock_path("a").unlink()
    store.locks_folder.rmdir()  # what a cleaner of empty folders does
    with store.lock("a", timeout=1):
        store.verify_lock("a")
    assert stat.S_IMODE(store.locks_folder.stat().st_mode) == 0o700


# -- one parse to decide, one inside the save ----------------------------------------------


class CountingStore(JSONTokenStore):
    """Counts the parses (every read of the file goes through ``_read``) and the writes."""

    reads = writes = 0

    def _read(self) -> dict:
        self.reads += 1
        return super()._read()

    def _write(self, document: dict) -> None:
        self.writes += 1
        super()._write(document)


def test_a_refresh_parses_the_file_twice_and_writes_it_once(x_emulator, tmp_path) -> None:
    store = CountingStore(tmp_path / "tokens.json")
    for n in range(5):
        store.save(f"other{n}", _token(n))
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, account="a",
                                token=dict(x_emulator.issue_token(), expires_at=time.time() - 1),
                                token_url=x_emulator.token_url, api_url=x_emulator.api_url)
    session.coordinator.load()
    store.reads = store.writes = 0
    session.me()  # expired: the coordinator refreshes under the account's lock, then sends
    # load_versioned under the lock (needs_login answers from the same parse), then the
    # fenced save's re-read under the file lock: nothing else reads
    assert (store.reads, store.writes) == (2, 1)
    assert x_emulator.stats.refreshes == 1
    store.reads = store.writes = 0
    session.refresh()
    assert (store.reads, store.writes) == (2, 1)


def test_needs_login_still_sees_a_marker_recorded_after_the_read(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    with store.lock("a"):
        store.save("a", _token(1))
        token = store.load_versioned("a").token
        store.mark_needs_login("a", "rt-1")  # a write in between: the next read is fresh
        assert store.needs_login("a", token)
        token = store.load_versioned("a").token
        assert store.needs_login("a", token)  # from the same parse: the marker is in it
    with store.lock("a"):
        store.save("a", _token(2))  # a new login
        assert not store.needs_login("a", store.load_versioned("a").token)


def test_the_file_is_compact_sorted_json_and_indented_files_still_read(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    old = {"format": "refresher/1", "accounts": {
        "b": {"token": _token(2), "updated_at": 1.0, "version": 3},
        "a": {"token": _token(1), "updated_at": 1.0, "version": 7, "metadata": {"x": 1}}}}
    path.write_text(json.dumps(old, indent=2))  # as versions before 0.x wrote it
    store = JSONTokenStore(path)
    assert store.load_versioned("a") == (_token(1), "7")
    assert store.load_metadata("a")["x"] == 1
    with store.lock("b"):
        store.save_versioned("b", _token(3), "3")
    text = path.read_text()
    assert "\n" not in text and ": " not in text and ", " not in text
    assert text == json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)
    assert store.load("a") == _token(1) and store.load("b") == _token(3)


# -- many processes, many accounts, against the emulator ------------------------------------

# A worker process: one session per account given, each in its own thread; at "go" on
# stdin, each calls /2/users/me with its (expired) token, so it refreshes or adopts.
_WORKER = textwrap.dedent("""
    import sys, threading
    from refresher import JSONTokenStore, RefreshingSession
    path, token_url, api_url, client_id, *accounts = sys.argv[1:]
    store = JSONTokenStore(path)
    sessions = [RefreshingSession(client_id, store=store, account=account,
                                  token_url=token_url, api_url=api_url)
                for account in accounts]
    errors = []

    def call(session):
        try:
            session.me()
        except Exception as exc:
            errors.append(f"{session.coordinator.account}: {type(exc).__name__}: {exc}")

    print("ready", flush=True)
    sys.stdin.readline()
    threads = [threading.Thread(target=call, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    print("errors: " + repr(errors) if errors else "ok", flush=True)
""")


@pytest.mark.integration
def test_16_processes_refresh_16_accounts_each_exactly_once(x_emulator_factory,
                                                             tmp_path) -> None:
    """Process i refreshes accounts i and i+1: every account has two refreshers in two
    processes, and every process refreshes two accounts at once."""
    x = x_emulator_factory(token_delay=0.1)
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    accounts = [f"acct{i:02d}" for i in range(16)]
    seeds = {}
    for account in accounts:
        seeds[account] = dict(x.issue_token(), expires_at=time.time() - 1)  # expired
        store.save(account, seeds[account])
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(path), x.token_url, x.api_url,
                          DEFAULT_CLIENT_ID, accounts[i], accounts[(i + 1) % 16]],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(16)]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        answers = [worker.stdout.readline().strip() for worker in workers]
        assert [worker.wait(60) for worker in workers] == [0] * 16
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert answers == ["ok"] * 16
    stats = x.stats
    assert stats.refreshes == 16  # every account once: its second refresher adopted the pair
    assert stats.reused_refresh_tokens == 0
    assert store.accounts() == accounts
    for account in accounts:
        token = store.load(account)
        assert token["refresh_token"] != seeds[account]["refresh_token"]
        assert x.refresh_token_state(token["refresh_token"]) == "live"
