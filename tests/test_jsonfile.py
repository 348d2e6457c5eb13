"""JSONTokenStore: atomic writes, mode 0600, corrupt files reported and left alone, an OS
lock that a killed holder releases, LockTimeout when it is held too long. (Many accounts and
their locks: test_jsonfile_accounts.py; faults from outside: test_jsonfile_faults.py.)"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import refresher
from refresher import JSONTokenStore, LockTimeout, TokenStoreError

TOKEN = {"access_token": "a" * 40, "refresh_token": "r" * 40, "token_type": "bearer",
         "expires_in": 7200, "expires_at": 1.0e10, "scope": "tweet.read users.read"}


def test_round_trip_of_many_accounts_and_metadata(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    assert store.load("alice") is None and store.accounts() == []
    store.save("alice", TOKEN)
    store.save("bob", dict(TOKEN, access_token="b" * 40))
    store.save_metadata("alice", {"client_id": "cid", "username": "alice_x"})
    assert store.accounts() == ["alice", "bob"]
    assert store.load("alice") == TOKEN
    assert JSONTokenStore(tmp_path / "tokens.json").load("bob")["access_token"] == "b" * 40
    metadata = store.load_metadata("alice")
    assert metadata["client_id"] == "cid" and metadata["updated_at"] > 0
    store.delete("alice")
    assert store.accounts() == ["bob"]
    store.delete("nobody")  # unknown accounts are ignored


def test_open_store_picks_the_store_from_the_location(tmp_path) -> None:
    assert isinstance(refresher.open_store(tmp_path / "t.json"), JSONTokenStore)
    assert isinstance(refresher.open_store(":memory:"), refresher.MemoryTokenStore)


def test_files_are_created_mode_0600_and_a_missing_folder_0700(tmp_path) -> None:
    path = tmp_path / "new" / "folder" / "tokens.json"
    store = JSONTokenStore(path)
    with store.lock("alice"):
        store.save("alice", TOKEN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.lock_path.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(store.locks_folder.stat().st_mode) == 0o700  # the accounts' locks
    assert stat.S_IMODE(store.account_lock_path("alice").stat().st_mode) == 0o600
    store.save("alice", TOKEN)  # a rewrite stays 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_temporary_files_are_left_behind(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    for i in range(20):
        with store.lock(f"acct{i % 3}"):
            store.save(f"acct{i % 3}", TOKEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tokens.json", "tokens.json.lock", "tokens.json.locks"]
    assert len(list(store.locks_folder.iterdir())) == 3  # one lock file per account


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"accounts": 5}', ""])
def test_a_corrupt_file_is_reported_by_path_and_left_untouched(tmp_path, content) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    store = JSONTokenStore(path)
    with pytest.raises(TokenStoreError) as raised:
        store.load("alice")
    assert str(path) in str(raised.value)
    with pytest.raises(TokenStoreError):
        store.save("alice", TOKEN)
    assert path.read_text() == content


def test_unreadable_file_raises_token_store_error(tmp_path) -> None:
    folder = tmp_path / "tokens.json"
    folder.mkdir()  # a folder where the file should be
    with pytest.raises(TokenStoreError, match="cannot read"):
        JSONTokenStore(folder).load("alice")


_HOLD = textwrap.dedent("""
    import sys, time
    from refresher import JSONTokenStore
    store = JSONTokenStore(sys.argv[1])
    with store.lock("alice"):
        print("locked", flush=True)
        time.sleep(60)
""")


@pytest.mark.integration
def test_lock_held_by_another_process_times_out_then_a_killed_holder_releases_it(tmp_path):
    path = tmp_path / "tokens.json"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        store = JSONTokenStore(path)
        with pytest.raises(LockTimeout) as raised:
            with store.lock("alice", timeout=0.3):
                pass
        assert str(path) in str(raised.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with store.lock("alice", timeout=5):  # the OS freed the dead holder's lock
            store.save("alice", TOKEN)
    finally:
        holder.kill()
        holder.wait()
    assert store.load("alice") == TOKEN


_WRITER = textwrap.dedent("""
    import sys
    from refresher import JSONTokenStore
    store = JSONTokenStore(sys.argv[1])
    big = "x" * 20000
    i = 0
    print("writing", flush=True)
    while True:
        i += 1
        store.save("acct%d" % (i % 7), {"access_token": str(i), "refresh_token": big,
                                         "expires_at": 1e10})
""")


@pytest.mark.integration
def test_sigkill_at_any_moment_leaves_the_old_or_the_new_file_never_a_torn_one(tmp_path):
    path = tmp_path / "tokens.json"
    JSONTokenStore(path).save("seed", TOKEN)
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        document = json.loads(path.read_text())  # whole, valid JSON every time
        assert document["accounts"]["seed"]["token"] == TOKEN
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # the killed writers may leave a temp file, never a partial tokens.json
    assert JSONTokenStore(path).load("seed") == TOKEN


@pytest.mark.integration
def test_concurrent_writers_of_different_accounts_lose_nothing(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    script = textwrap.dedent("""
        import sys
        from refresher import JSONTokenStore
        store = JSONTokenStore(sys.argv[1])
        for i in range(40):
            with store.lock(sys.argv[2]):
                store.save(sys.argv[2] + str(i), {"access_token": str(i)})
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), name])
               for name in ("p", "q", "r")]
    for writer in writers:
        assert writer.wait(60) == 0
    assert len(JSONTokenStore(path).accounts()) == 120


@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_an_empty_file_is_reported_as_empty_and_left_untouched(tmp_path, content) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    store = JSONTokenStore(path)
    for attempt in (lambda: store.load("alice"), lambda: store.save("alice", TOKEN)):
        with pytest.raises(TokenStoreError) as raised:
            attempt()
        message = str(raised.value)
        assert f"token store {path} is empty" in message
        assert "not valid JSON" not in message
        assert "Delete it" in message and "backup" in message and "log in" in message
    assert path.read_text() == content


class AuditedStore(JSONTokenStore):
    """A subclass that wraps load and save, calling the store's own with super()."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.calls: list[str] = []

    def load(self, account):
        self.calls.append("load")
        return super().load(account)

    def save(self, account, token) -> None:
        self.calls.append("save")
        super().save(account, token)


def test_a_subclass_wrapping_load_and_save_is_called_and_does_not_recurse(tmp_path) -> None:
    store = AuditedStore(tmp_path / "tokens.json")
    with store.lock("alice"):
        first = store.save_versioned("alice", TOKEN)
        assert store.load_versioned("alice") == (TOKEN, first)
        newer = dict(TOKEN, access_token="b" * 40)
        JSONTokenStore(tmp_path / "tokens.json").save("alice", newer)  # someone else
        with pytest.raises(refresher.StaleTokenError):
            store.save_versioned("alice", dict(TOKEN, access_token="c" * 40), first)
    assert store.load("alice") == newer
    assert "load" in store.calls and "save" in store.calls  # the versioned ones went through
