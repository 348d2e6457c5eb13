"""The Redis and SQL how-tos (``docs/howto/redis.rst``, ``docs/howto/sql.rst``) as printed:
``refresher login --store URL`` against the emulator (its ``REFRESHER_*`` exports set, as
the tutorial leaves a shell), then ``open_session`` in fresh interpreters with no
``REFRESHER_*`` variable at all, so the client id and URLs can only come from what the
login recorded in the store (issue 19: a ``RefreshingSession`` built by hand sent them to
api.x.com).

The servers are real and throw-away (``redis-server``, a PostgreSQL cluster of the test's
own, a SQLite file); they listen on free ports, so the printed URLs' port is the one thing
replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import doc_block
from test_cli import CLI
from test_readme_story import bash

import refresher
from refresher import X_TOKEN_URL, RefreshingSession, open_store
from refresher.testing import XEmulator
from refresher.testing.net import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://app:PASSWORD@127.0.0.1:5432/app"


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def _shell(cli: CLI, x: XEmulator) -> dict[str, str]:
    """The reader's shell: the emulator's exports (a callback port of the test's own), no
    REFRESHER_STORE (the commands name their store), the venv's ``refresher`` on PATH."""
    env = cli.emulated(x, REFRESHER_REDIRECT_URI=f"http://127.0.0.1:{free_port()}/callback")
    del env["REFRESHER_STORE"]
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _pointed(block: str, url: str, real_url: str) -> str:
    """``block`` as printed, its URL pointed at the test's server."""
    assert url in block, block
    return block.replace(url, real_url)


def _run_commands(env: dict[str, str], block: str, cwd: Path) -> list[str]:
    """Each line of ``block`` in bash, in ``cwd``; what each printed."""
    outputs = []
    for line in block.splitlines():
        done = bash(dict(env, PWD=str(cwd)), f"cd {cwd}", line)
        assert done.returncode == 0, (line, done.stderr)
        outputs.append(done.stdout)
    return outputs


def _python(cli: CLI, code: str, cwd: Path, processes: int = 1, **extra: str) -> list[str]:
    """``code`` as a script in ``processes`` fresh interpreters at once, with no
    ``REFRESHER_*`` set; what each printed (each must exit 0)."""
    script = cwd / "script.py"
    script.write_text(code)
    env = dict(cli.env, **extra)
    assert not any(name.startswith("REFRESHER_") for name in env)
    runs = [subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(processes)]
    results = [run.communicate(timeout=90) for run in runs]
    assert [run.returncode for run in runs] == [0] * processes, results
    return [out for out, _ in results]


def _assert_shared_cleanly(x: XEmulator, processes: int) -> None:
    """Every worker's calls reached the emulator; tokens expired and were refreshed, and no
    refresh token was spent twice."""
    stats = x.stats
    assert stats.api_requests >= processes * 31
    assert stats.refreshes >= 1 and stats.reused_refresh_tokens == 0


# -- Redis -----------------------------------------------------------------------------------


def test_redis_login_then_open_session_in_many_processes(cli, x_emulator_factory, redis_server,
                                                          tmp_path):
    x = x_emulator_factory(access_ttl=1.0)
    url = redis_server.url
    login = _pointed(doc_block("docs/howto/redis.rst", "the server's URL as the store:"),
                     REDIS_URL, url)
    _, status = _run_commands(_shell(cli, x), login, tmp_path)
    assert any(line.startswith("alice ") for line in status.splitlines()), status
    recorded = open_store(url).load_metadata("alice")
    assert (recorded["client_id"], recorded["token_url"], recorded["api_url"]) == (
        "emulator-client", x.token_url, x.api_url)
    assert "client_secret" not in recorded

    worker = _pointed(doc_block("docs/howto/redis.rst", "which reads what the login recorded:"),
                      REDIS_URL, url)
    outputs = _python(cli, worker, tmp_path, processes=3)
    assert outputs == ["@emulated_user is still logged in\n"] * 3
    _assert_shared_cleanly(x, processes=3)

    # The warning's claim: built by hand, a session takes the recorded client id but X's
    # token URL, whatever the login used.
    by_hand = RefreshingSession(store=open_store(url), account="alice")
    assert by_hand.coordinator.endpoint.token_url == X_TOKEN_URL
    assert by_hand.coordinator.endpoint.client_id == "emulator-client"
    by_hand.close()


def test_redis_options_reach_the_store(cli, x_emulator, redis_server, tmp_path):
    url = redis_server.url
    login = _pointed(doc_block("docs/howto/redis.rst", "the server's URL as the store:"),
                     REDIS_URL, url)
    _run_commands(_shell(cli, x_emulator), login.splitlines()[0], tmp_path)
    code = _pointed(doc_block("docs/howto/redis.rst", "hand the store to ``open_session``:"),
                    REDIS_URL, url)
    assert _python(cli, code, tmp_path) == ["emulated_user\n"]
    store = open_store(url, lock_ttl=60.0, socket_timeout=5.0)
    assert store.lock_ttl == 60.0  # type: ignore[attr-defined]


# -- SQLite ----------------------------------------------------------------------------------


def test_sqlite_login_then_open_session(cli, x_emulator, sqlalchemy_installed, tmp_path):
    login = doc_block("docs/howto/sql.rst", "the machine with :func:`refresher.open_session`:")
    assert login == "refresher login --account alice --store sqlite:///tokens.db\n"
    _run_commands(_shell(cli, x_emulator), login, tmp_path)
    assert oct((tmp_path / "tokens.db").stat().st_mode & 0o777) == "0o600"
    code = doc_block("docs/howto/sql.rst",
                     "refresher login --account alice --store sqlite:///tokens.db\n")
    assert _python(cli, code, tmp_path) == ["emulated_user\n"]
    before = x_emulator.stats.api_requests

    own_engine = doc_block("docs/howto/sql.rst",
                           "table is created beside your own when it is missing:")
    assert _python(cli, own_engine, tmp_path) == ["emulated_user\n"]
    assert x_emulator.stats.api_requests == before + 1  # at the emulator, not at X


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def app_database(postgres_server_factory) -> str:
    """A server of the test's own with the database ``app``, owned by the user ``app``
    whose password is ``PASSWORD``, as the page prints; its URL."""
    server = postgres_server_factory()
    server.create_database("app")
    url = server.create_user("app", "PASSWORD", "app")
    assert url == POSTGRES_URL.replace("5432", str(server.port))
    return url


def test_postgresql_login_then_workers_on_many_hosts(cli, x_emulator_factory, app_database,
                                                     tmp_path):
    x = x_emulator_factory(access_ttl=1.0)
    login = _pointed(doc_block("docs/howto/sql.rst", "with the database's URL:"),
                     POSTGRES_URL, app_database)
    _run_commands(_shell(cli, x), login, tmp_path)
    worker = _pointed(doc_block("docs/howto/sql.rst", "--store postgresql://app:PASSWORD@"),
                      POSTGRES_URL, app_database)
    outputs = _python(cli, worker, tmp_path, processes=3)
    assert outputs == ["@emulated_user is still logged in\n"] * 3
    _assert_shared_cleanly(x, processes=3)


def test_postgresql_password_from_pgpassword(cli, x_emulator, app_database, tmp_path):
    """The page's advice: leave the password out of the URL, libpq reads PGPASSWORD."""
    _run_commands(_shell(cli, x_emulator), "refresher login --account alice --store "
                  f"{app_database}\n", tmp_path)
    bare = app_database.replace(":PASSWORD@", "@")
    code = ("import refresher\n"
            f"with refresher.open_session('alice', store={bare!r}) as x:\n"
            "    print(x.me()['username'])\n")
    assert _python(cli, code, tmp_path, PGPASSWORD="PASSWORD") == ["emulated_user\n"]
    with pytest.raises(refresher.TokenStoreError):  # and without it, the server refuses
        open_store(bare).accounts()
