"""Encryption at rest from the outside: the ``refresher`` command with ``REFRESHER_KEY``
(``key new``, ``key rotate``, ``status`` with a key, without one, with a wrong one), worker
processes sharing an encrypted store, and the recipes of docs/howto/encryption.rst run as
printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from doc_blocks import doc_block
from test_cli import CLI
from test_readme_story import bash

from refresher import EncryptedTokenStore, JSONTokenStore, new_key, open_store
from refresher.keys import key_id, parse_keys
from refresher.pending_logins import PENDING_LOGINS
from refresher.stores.sealed import is_sealed

pytestmark = pytest.mark.integration  # runs the command, spawns workers


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def _tokens_of(token: dict[str, Any] | None) -> list[str]:
    return [str(token[k]) for k in ("access_token", "refresh_token") if token and k in token]


def _no_token_in(path: Path, store: EncryptedTokenStore) -> None:
    raw = path.read_text()
    for account in store.accounts():
        token = store.load(account)
        assert is_sealed(store.inner.load(account))
        assert [t for t in _tokens_of(token) if t in raw] == []


def test_key_new_prints_the_export_line_of_a_new_key(cli: CLI) -> None:
    first, second = cli.run("key", "new"), cli.run("key", "new")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("export REFRESHER_KEY=")
    key = lines[0].split("=", 1)[1]
    assert len(parse_keys(key)) == 1 and key not in second.stdout
    assert "keep this key" in first.stderr


def test_login_status_and_refresh_with_a_key_and_without(cli: CLI, x_emulator: Any) -> None:
    key = new_key()
    cli.login(x_emulator, "--account", "alice", REFRESHER_KEY=key)
    store = open_store(cli.store, key=key)
    assert isinstance(store, EncryptedTokenStore)
    _no_token_in(cli.store, store)

    status = cli.run("status", env=cli.emulated(x_emulator, REFRESHER_KEY=key))
    assert status.returncode == 0, status.stderr
    assert re.search(r"^alice +@emulated_user .* in (2h 00m|1h 59m) ", status.stdout, re.M)
    refresh = cli.run("refresh", env=cli.emulated(x_emulator, REFRESHER_KEY=key))
    assert refresh.returncode == 0 and "Refreshed account 'alice'" in refresh.stdout
    _no_token_in(cli.store, store)

    before = cli.store.read_bytes()
    for env, says in (({}, "is encrypted, and no key was given"),
                      ({"REFRESHER_KEY": new_key()}, "a key is wrong or missing")):
        for command in (["status"], ["refresh"], ["logout"]):
            done = cli.run(*command, env=cli.emulated(x_emulator, **env))
            assert done.returncode in (1, 2), (command, done.stdout)
            assert says in done.stderr + done.stdout, (command, done.stderr)
            assert key not in done.stdout + done.stderr
    assert cli.store.read_bytes() == before


def test_key_rotate_re_encrypts_every_account_under_the_first_key(cli: CLI) -> None:
    old, new = new_key(), new_key()
    token = {"access_token": "AT-1", "refresh_token": "RT-1", "expires_at": 2e9}
    under_old = open_store(cli.store, key=old)
    plain = JSONTokenStore(cli.store)
    for name in ("alice", "bob"):
        with under_old.lock(name):
            under_old.save(name, dict(token, access_token=f"AT-{name}"))
    with plain.lock("carol"):
        plain.save("carol", dict(token, access_token="AT-carol"))  # from before the key
    with under_old.lock(PENDING_LOGINS):  # LoginFlow(pending=...)'s logins under way
        under_old.save(PENDING_LOGINS, {"logins": {}})

    env = dict(cli.env, REFRESHER_STORE=str(cli.store))
    assert cli.run("key", "rotate", env=env).returncode == 2  # which key? none set
    done = cli.run("key", "rotate", env=dict(env, REFRESHER_KEY=f"{new},{old}"))
    assert done.returncode == 0, done.stderr
    new_id = key_id(parse_keys(new)[0])
    assert f"Re-encrypted 3 accounts of {cli.store} under key {new_id} (0 already were)." \
        in done.stdout
    assert "the old keys can be dropped" in done.stdout
    assert "Re-encrypted the logins under way" in done.stdout
    only_new = open_store(cli.store, key=new)
    assert [(only_new.load(n) or {}).get("access_token") for n in ("alice", "bob", "carol")] \
        == ["AT-alice", "AT-bob", "AT-carol"]
    assert isinstance(only_new, EncryptedTokenStore)
    assert only_new.load(PENDING_LOGINS) == {"logins": {}}
    _no_token_in(cli.store, only_new)
    again = cli.run("key", "rotate", env=dict(env, REFRESHER_KEY=new))
    assert "Re-encrypted 0 accounts" in again.stdout and "(3 already were)" in again.stdout


@pytest.mark.parametrize("kind", ["json", "sqlite"])
def test_worker_processes_share_an_encrypted_store(kind: str, x_emulator_factory: Any,
                                                   tmp_path: Path, workload: Any,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   request: pytest.FixtureRequest) -> None:
    key = new_key()
    monkeypatch.setenv("REFRESHER_KEY", key)  # the spawned workers open the store with it
    if kind == "json":
        location = str(tmp_path / "tokens.json")
    else:
        request.getfixturevalue("sqlalchemy_installed")
        location = f"sqlite:///{tmp_path / 'tokens.db'}"
    x = x_emulator_factory(access_ttl=1.0)
    result = workload.run(x, location, processes=3, threads=2, seconds=3)
    workload.assert_coordinated(result)
    store = open_store(location)
    assert isinstance(store, EncryptedTokenStore)
    final = store.load("shared")
    assert final is not None and is_sealed(store.inner.load("shared"))
    raw = (tmp_path / ("tokens.json" if kind == "json" else "tokens.db")).read_bytes()
    assert [t for t in _tokens_of(final) if t.encode() in raw] == []
    store.close()


# -- the how-to's recipes, as printed -----------------------------------------------------------


def _shell(cli: CLI, tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "work").mkdir(exist_ok=True)
    path = os.pathsep.join([str(Path(sys.executable).parent), cli.env.get("PATH", "")])
    return dict(cli.env, REFRESHER_STORE=str(cli.store), PATH=path, **extra)


def test_the_howto_recipe_encrypts_a_store_from_before_the_key(cli: CLI,
                                                               tmp_path: Path) -> None:
    plain = JSONTokenStore(cli.store)
    with plain.lock("alice"):
        plain.save("alice", {"access_token": "AT-old", "refresh_token": "RT-old",
                             "expires_at": 2e9})
    block = doc_block("docs/howto/encryption.rst",
                      "(``refresher key rotate`` does them all at once):")
    assert block.startswith('eval "$(refresher key new)"')
    done = bash(_shell(cli, tmp_path), *block.splitlines(), "echo \"KEY=$REFRESHER_KEY\"")
    assert done.returncode == 0, done.stderr
    assert "Re-encrypted 1 account of" in done.stdout and "alice" in done.stdout
    key = re.search(r"^KEY=(\S+)$", done.stdout, re.M)[1]  # type: ignore[index]
    assert key not in done.stdout.replace(f"KEY={key}", "")  # printed by us only
    raw = cli.store.read_text()
    assert "AT-old" not in raw and "RT-old" not in raw
    assert (open_store(cli.store, key=key).load("alice") or {})["refresh_token"] == "RT-old"


def test_the_howto_rotation_recipe_leaves_only_the_new_key(cli: CLI, tmp_path: Path) -> None:
    old = new_key()
    store = open_store(cli.store, key=old)
    with store.lock("alice"):
        store.save("alice", {"access_token": "AT-1", "refresh_token": "RT-1"})
    block = doc_block("docs/howto/encryption.rst", "re-encrypt, then drop the old one:")
    done = bash(_shell(cli, tmp_path, REFRESHER_KEY=old), *block.splitlines(),
                "echo \"KEY=$REFRESHER_KEY\"")
    assert done.returncode == 0, done.stderr
    new = re.search(r"^KEY=(\S+)$", done.stdout, re.M)[1]  # type: ignore[index]
    assert "," not in new and new != old
    assert (open_store(cli.store, key=new).load("alice") or {})["refresh_token"] == "RT-1"
    document = json.loads(cli.store.read_text())
    assert document["accounts"]["alice"]["token"]["key_id"] == key_id(parse_keys(new)[0])


def test_the_howto_python_recipe_runs_as_printed(tmp_path: Path) -> None:
    script = tmp_path / "recipe.py"
    script.write_text(doc_block("docs/howto/encryption.rst",
                                "or give ``open_store`` the key:")
                      + "with store.lock('a'):\n"
                        "    store.save('a', {'access_token': 'AT-x', 'refresh_token': 'RT-x'})\n"
                        "assert same.load('a')['refresh_token'] == 'RT-x'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"RT-x" not in (tmp_path / "tokens.db").read_bytes()
