"""JSONTokenStore under faults from outside: a symlinked store, temp files left by a writer
killed mid-write, a lock file deleted or replaced while it is held."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from refresher import JSONTokenStore, LockTimeout

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
    # temp files were made (and removed) beside the target; nothing beside the link but it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "tokens.json"]
    assert sorted(p.name for p in real_folder.iterdir()) == ["tokens.json", "tokens.json.lock"]
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


def test_the_link_and_the_real_path_share_one_lock(tmp_path) -> None:
    target = tmp_path / "tokens.json"
    JSONTokenStore(target).save("a", OLD)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert JSONTokenStore(link).lock_path == JSONTokenStore(target).lock_path

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
