"""JSONTokenStore under faults from outside: a symlinked store, temp files left by a writer
killed mid-write, a lock file (an account's, or the file lock) deleted or replaced while it
is held."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import filelock
import pytest

import refresher
from refresher import JSONTokenStore, LockLost, LockTimeout

OLD = {"access_token": "old-access", "refresh_token": "old-refresh", "expires_at": 1.0e10}
NEW = {"access_token": "new-access", "refresh_token": "new-refresh", "expires_at": 1.0e10}


def _document(path) -> dict:
    return json.loads(path.read_text())


# A child process that holds store.lock("a") on the path it is given until its stdin closes.
_HOLD_UNTIL_STDIN_CLOSES = textwrap.dedent("""
    import sys
    from refresher import JSONTokenStore
    store = JSONTokenStore(sys.argv[1])
    with store.lock("a", timeout=30):
        print("locked", flush=True)
        sys.stdin.read()
""")


class _Holder:
    """A child process holding ``JSONTokenStore(path).lock("a")`` while in the with block."""

    def __init__(self, path) -> None:
        self.path = path

    def __enter__(self) -> _Holder:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLD_UNTIL_STDIN_CLOSES, str(self.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stdin.close()
        try:
            assert self.process.wait(30) == 0
        finally:
            self.process.kill()
            self.process.wait()


# A child process that tries to take the lock for 0.2 s and prints what happened.
_TRY_LOCK = textwrap.dedent("""
    import sys
    from refresher import JSONTokenStore, LockTimeout
    try:
        with JSONTokenStore(sys.argv[1]).lock("a", timeout=0.2):
            print("acquired")
    except LockTimeout:
        print("timed out")
""")


def _other_process_tries_the_lock(path) -> str:
    done = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- 1. a symlinked store ------------------------------------------------------------------


def test_saving_through_a_symlink_keeps_the_link_and_writes_the_target(tmp_path) -> None:
    real_folder = tmp_path / "real"
    real_folder.mkdir()
    target = real_folder / "tokens.json"
    JSONTokenStore(target).save("a", OLD)
    link = tmp_path / "tokens.json"
    link.symlink_to(target)

    store = JSONTokenStore(link)
    with store.lock("a"):
        assert store.load("a") == OLD
        store.save("a", NEW)

    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _document(target)["accounts"]["a"]["token"] == NEW  # the pair is where the link points
    assert JSONTokenStore(target).load("a") == NEW  # a program using the real path sees it
    assert store.lock_path == real_folder / "tokens.json.lock"
    assert store.account_lock_path("a").parent == real_folder / "tokens.json.locks"
    # temp files were made (and removed) beside the target; nothing beside the link but it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "tokens.json"]
    assert sorted(p.name for p in real_folder.iterdir()) == [
        "tokens.json", "tokens.json.lock", "tokens.json.locks"]
    assert str(link) in repr(store)


def test_a_dangling_symlink_is_created_where_it_points(tmp_path) -> None:
    target = tmp_path / "elsewhere" / "tokens.json"
    link = tmp_path / "tokens.json"
    link.symlink_to(target)
    store = JSONTokenStore(link)
    store.save("a", NEW)
    assert link.is_symlink()
    assert _document(target)["accounts"]["a"]["token"] == NEW
    assert store.lock_path == target.parent / "tokens.json.lock"
    with store.lock("a"):
        assert store.account_lock_path("a").parent == target.parent / "tokens.json.locks"
        assert store.account_lock_path("a").exists()


@pytest.mark.integration
def test_the_link_and_the_real_path_share_one_lock(tmp_path) -> None:
    target = tmp_path / "tokens.json"
    JSONTokenStore(target).save("a", OLD)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert JSONTokenStore(link).lock_path == JSONTokenStore(target).lock_path
    assert JSONTokenStore(link).account_lock_path("a") == \
        JSONTokenStore(target).account_lock_path("a")

    with _Holder(link):  # another process holds the lock through the link...
        with pytest.raises(LockTimeout) as raised:  # ...which blocks us on the real path
            with JSONTokenStore(target).lock("a", timeout=0.2):
                pass
    assert str(target) in str(raised.value)
    with _Holder(target):  # and the other way round
        with pytest.raises(LockTimeout) as raised:
            with JSONTokenStore(link).lock("a", timeout=0.2):
                pass
    assert str(link) in str(raised.value)  # named by the path the user gave


# -- 2. temp files left by a writer killed mid-write ---------------------------------------

# A child process that saves NEW for account "a" and is killed (SIGKILL, by itself) at the
# moment its temp file is complete and fsynced, just before the rename.
_KILLED_BEFORE_RENAME = textwrap.dedent("""
    import os, signal, sys
    from refresher import JSONTokenStore
    store = JSONTokenStore(sys.argv[1])
    os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    with store.lock("a"):
        store.save("a", {"access_token": "new-access", "refresh_token": "new-refresh",
                         "expires_at": 1.0e10})
""")


def _temps(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _leftover(path, accounts, suffix="k1ll3d_x") -> os.PathLike:
    """A temp file as a writer that died would leave it: a whole document, mode 0600."""
    temp = path.parent / f".{path.name}.{suffix}.tmp"
    temp.write_text(json.dumps({"format": "refresher/1", "accounts": accounts}))
    temp.chmod(0o600)
    return temp


@pytest.mark.integration
def test_a_newer_pair_left_by_a_writer_killed_before_its_rename_is_adopted(tmp_path, caplog):
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    store.save("b", OLD)
    store.save_metadata("a", {"client_id": "cid"})
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_RENAME, str(path)],
                            timeout=60)
    assert killed.returncode == -9
    [temp] = _temps(tmp_path)  # the dead writer's complete temp file...
    assert _document(path)["accounts"]["a"]["token"] == OLD  # ...never renamed over the store

    with caplog.at_level("WARNING", logger="refresher.stores.jsonfile"):
        with store.lock("a"):
            assert store.load("a") == NEW
    assert _temps(tmp_path) == []
    assert store.load("b") == OLD
    assert store.load_metadata("a")["client_id"] == "cid"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(temp in message and "'a'" in message for message in warnings)
    secrets = [OLD["access_token"], OLD["refresh_token"], NEW["access_token"],
               NEW["refresh_token"]]
    assert not any(secret in message for secret in secrets for message in warnings)


def test_an_account_only_a_leftover_holds_is_adopted(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("b", OLD)
    _leftover(path, {"a": {"token": NEW, "updated_at": 1.0}, "b": _document(path)["accounts"]["b"]})
    with store.lock("b"):
        assert store.accounts() == ["a", "b"] and store.load("a") == NEW
    assert _temps(tmp_path) == []


@pytest.mark.parametrize("kind", ["older", "same age", "truncated", "not a store",
                                  "no refresh token", "empty", "binary"])
def test_older_or_broken_leftovers_are_removed_and_ignored(tmp_path, kind) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    stored_at = _document(path)["accounts"]["a"]["updated_at"]
    whole = {"format": "refresher/1",
             "accounts": {"a": {"token": NEW, "updated_at": stored_at - 10}}}
    temp = tmp_path / ".tokens.json.abc_1234.tmp"
    if kind == "older":
        temp.write_text(json.dumps(whole))
    elif kind == "same age":
        whole["accounts"]["a"]["updated_at"] = stored_at
        temp.write_text(json.dumps(whole))
    elif kind == "truncated":
        whole["accounts"]["a"]["updated_at"] = stored_at + 10
        text = json.dumps(whole)
        temp.write_text(text[: len(text) // 2])
    elif kind == "not a store":
        temp.write_text(json.dumps({"accounts": {"a": {"token": NEW, "updated_at": 1e12}}}))
    elif kind == "no refresh token":
        whole["accounts"]["a"] = {"token": {"access_token": "x"}, "updated_at": 1e12}
        temp.write_text(json.dumps(whole))
    elif kind == "empty":
        temp.write_text("")
    else:
        temp.write_bytes(b"\xff\xfe\x00garbage")
    before = path.read_bytes()
    with store.lock("a"):
        assert store.load("a") == OLD
    assert path.read_bytes() == before  # not rewritten
    assert _temps(tmp_path) == []


def test_leftovers_are_kept_when_the_store_itself_is_corrupt(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    temp = _leftover(path, {"a": {"token": NEW, "updated_at": 1.0}})
    store = JSONTokenStore(path)
    with store.lock("a"):  # the lock itself works...
        with pytest.raises(refresher.TokenStoreError, match="not valid JSON"):
            store.load("a")  # ...the store is still reported...
    assert path.read_text() == "{not json"  # ...and never replaced
    assert temp.exists()  # the leftover may be what a person restores from


def test_temp_files_of_other_stores_in_the_folder_are_not_touched(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    others = [tmp_path / ".tokens.json.bak.abcdefgh.tmp",  # store "tokens.json.bak"
              tmp_path / ".other.json.abcdefgh.tmp",
              tmp_path / "tokens.json.abcdefgh.tmp"]
    for other in others:
        other.write_text(json.dumps({"format": "refresher/1",
                                     "accounts": {"a": {"token": NEW, "updated_at": 1e12}}}))
    with store.lock("a"):
        assert store.load("a") == OLD
    assert all(other.exists() for other in others)


def test_the_leftover_scan_is_one_listdir_per_lock_or_write_and_none_per_read(
        tmp_path, monkeypatch) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    listed = []
    real_listdir = os.listdir

    def counting_listdir(folder=".") -> list:
        if os.fspath(folder) == str(tmp_path):
            listed.append(folder)
        return real_listdir(folder)

    monkeypatch.setattr(os, "listdir", counting_listdir)
    with store.lock("a"):  # an outermost lock of an account: one look for leftovers
        assert len(listed) == 1
        with JSONTokenStore(path).lock("a"):  # re-entrant: shares the held lock, no look
            assert store.load("a") == OLD and store.load_metadata("a") == \
                {"updated_at": _document(path)["accounts"]["a"]["updated_at"]}
            store.accounts()
            assert len(listed) == 1  # reads never look
            store.save("a", NEW)  # each write takes the file lock: one scan
            store.save_metadata("a", {"client_id": "cid"})
        assert len(listed) == 3
    with store.lock("b"):
        pass
    assert len(listed) == 4


def test_a_lock_takes_the_file_lock_only_to_adopt_leftovers(tmp_path) -> None:
    """Without temp files beside the store, lock(account) leaves the file lock alone, so it
    never waits for another account's write; with one, it adopts under the file lock."""
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    file_lock = filelock.FileLock(str(store.lock_path), is_singleton=False)
    file_lock.acquire()  # a writer of another account, mid-write (another fd: another holder)
    try:
        with store.lock("a", timeout=0.2):
            assert store.load("a") == OLD
        _leftover(path, {"a": {"token": NEW, "updated_at": 1e12}})
        with pytest.raises(LockTimeout, match=r"tokens\.json\.lock\b"):
            with store.lock("a", timeout=0.2):  # must adopt first: waits for the file lock
                pass
        assert not store._lock_object().is_locked
    finally:
        file_lock.release()
    with store.lock("a", timeout=5):
        assert store.load("a") == NEW
    assert _temps(tmp_path) == []


# -- 3. the lock file deleted or replaced while held ---------------------------------------


def _clean_up(lock_path, how) -> None:
    """What a tmp cleaner (or a careless script) does to a lock file."""
    if how == "deleted":
        os.unlink(lock_path)
    elif how == "moved aside":
        os.rename(lock_path, str(lock_path) + ".old")
    else:  # replaced by a new file of the same name
        fresh = str(lock_path) + ".new"
        with open(fresh, "w"):
            pass
        os.replace(fresh, lock_path)


def test_verify_lock_passes_while_the_lock_file_is_in_place(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    with store.lock("a"):
        store.verify_lock("a")
        with store.lock("a"):  # re-entrant
            store.verify_lock("a")
        store.verify_lock("a")


def test_verify_lock_raises_when_the_lock_is_not_held(tmp_path) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    with pytest.raises(LockLost, match="nothing was spent"):
        store.verify_lock("a")


@pytest.mark.parametrize("how", ["deleted", "moved aside", "replaced"])
def test_verify_lock_raises_when_the_lock_file_goes_while_held(tmp_path, how) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    lock_path = store.account_lock_path("a")
    with store.lock("a"):
        store.save("a", OLD)
        _clean_up(lock_path, how)
        # the hazard: another process now locks a new file at the path, while we hold ours
        assert _other_process_tries_the_lock(path) == "acquired"
        with pytest.raises(LockLost) as raised:
            store.verify_lock("a")
    message = str(raised.value)
    assert str(lock_path) in message and "removed" in message
    assert "nothing was spent" in message and "tmp cleaners" in message
    with store.lock("a"):  # taken again: on the file now at the path, which keeps others out
        store.verify_lock("a")
        assert _other_process_tries_the_lock(path) == "timed out"


# A child process that holds the lock, and on each line read from stdin calls verify_lock and
# prints "ok" or the LockLost it raised.
_HOLD_AND_VERIFY = textwrap.dedent("""
    import sys
    from refresher import JSONTokenStore, LockLost
    store = JSONTokenStore(sys.argv[1])
    with store.lock("a", timeout=30):
        print("locked", flush=True)
        for line in sys.stdin:
            try:
                store.verify_lock("a")
                print("ok", flush=True)
            except LockLost as lost:
                print("LockLost: " + str(lost), flush=True)
""")


@pytest.mark.integration
def test_a_holder_whose_lock_file_was_deleted_learns_it_before_spending(tmp_path) -> None:
    path = tmp_path / "tokens.json"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_AND_VERIFY, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.stdin.write("check\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "ok"
        store = JSONTokenStore(path)
        os.unlink(store.account_lock_path("a"))  # a tmp cleaner
        with store.lock("a", timeout=5):  # we get a lock too, on a new file...
            store.verify_lock("a")  # ...which is the current one: ours is good
            holder.stdin.write("check\n")
            holder.stdin.flush()
            answer = holder.stdout.readline().strip()
        assert answer.startswith("LockLost: ") and "removed" in answer  # theirs is not
        holder.stdin.close()
        assert holder.wait(30) == 0
    finally:
        holder.kill()
        holder.wait()


def _cleaner_after_acquiring(monkeypatch, lock_path, how, *, every_time=False) -> list:
    """Run the cleaner on ``lock_path`` right after filelock's own acquisition of it, where
    the race (a waiter winning the flock of a file it opened just before a cleaner removed
    it) would put it: once, or at every acquisition. Returns the list of cleanings."""
    real_acquire = filelock.FileLock._acquire
    cleaned = []

    def acquire_then_the_cleaner_runs(lock) -> None:
        real_acquire(lock)
        if (lock.is_locked and (every_time or not cleaned)
                and lock.lock_file == str(lock_path)):
            cleaned.append(how)
            _clean_up(lock_path, how)

    monkeypatch.setattr(filelock.FileLock, "_acquire", acquire_then_the_cleaner_runs)
    return cleaned


@pytest.mark.parametrize("how", ["deleted", "moved aside", "replaced"])
def test_an_account_lock_won_on_an_orphaned_lock_file_is_taken_again_on_the_current_one(
        tmp_path, monkeypatch, caplog, how) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    lock_path = store.account_lock_path("a")
    cleaned = _cleaner_after_acquiring(monkeypatch, lock_path, how)
    with caplog.at_level("WARNING", logger="refresher.stores.jsonfile"):
        with store.lock("a", timeout=5):
            assert cleaned == [how]
            store.verify_lock("a")  # the lock is on the file now at the path...
            assert _other_process_tries_the_lock(path) == "timed out"  # ...so others wait
            store.save("a", NEW)
    assert store.load("a") == NEW
    assert any(str(lock_path) in r.getMessage() and "removed or replaced" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("how", ["deleted", "moved aside", "replaced"])
def test_a_file_lock_won_on_an_orphaned_lock_file_is_taken_again_on_the_current_one(
        tmp_path, monkeypatch, caplog, how) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    cleaned = _cleaner_after_acquiring(monkeypatch, store.lock_path, how)
    with caplog.at_level("WARNING", logger="refresher.stores.jsonfile"):
        store.save("a", NEW)  # the write goes on, under the lock on the current file
    assert cleaned == [how]
    assert store.load("a") == NEW
    assert any(str(store.lock_path) in r.getMessage()
               and "removed or replaced" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("which", ["account", "file"])
def test_a_lock_file_removed_at_every_acquisition_ends_in_lock_timeout(tmp_path, monkeypatch,
                                                                      which) -> None:
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    if which == "file":
        _leftover(path, {})  # lock("a") must take the file lock, to deal with it
    lock_path = store.account_lock_path("a") if which == "account" else store.lock_path
    _cleaner_after_acquiring(monkeypatch, lock_path, "deleted", every_time=True)
    with pytest.raises(LockTimeout, match="kept being removed"):
        with store.lock("a", timeout=0.3):
            pass
    assert not store._lock_object().is_locked  # released, not leaked
    monkeypatch.undo()
    assert _other_process_tries_the_lock(path) == "acquired"  # the account's lock too


def test_a_write_whose_file_lock_was_removed_meanwhile_writes_nothing(tmp_path) -> None:
    """The file lock's file deleted while a write holds it: another writer may be holding a
    new one, so the write is refused before its rename, and the old file stays."""
    path = tmp_path / "tokens.json"
    store = JSONTokenStore(path)
    store.save("a", OLD)
    before = path.read_bytes()
    with store._file_held():  # a write in progress...
        os.unlink(store.lock_path)  # ...when a tmp cleaner strikes
        with pytest.raises(refresher.TokenStoreError, match="removed .* during a write"):
            store.save("a", NEW)
    assert path.read_bytes() == before
    assert _temps(tmp_path) == []
    store.save("a", NEW)  # on a lock file in place, writes go on
    assert store.load("a") == NEW
