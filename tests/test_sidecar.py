"""A sidecar refreshes, the workers adopt: ``refresher refresh --within [--every]`` and
``RefreshingSession.refresh(within=...)``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from doc_blocks import doc_block
from test_cli import CLI, COMMAND

from refresher import RefreshingSession
from refresher.demo.workload import WorkloadSpec, run_workers
from refresher.shutdown import EXIT_STATUS
from refresher.stores import JSONTokenStore
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator
from refresher.token import fingerprint


def _expiring_in(store: JSONTokenStore, account: str, seconds: float) -> None:
    """Make the stored token of ``account`` expire ``seconds`` from now (as if time passed)."""
    with store.lock(account):
        token = store.load(account)
        assert token is not None
        store.save(account, dict(token, expires_at=time.time() + seconds))


def _wait_for_a_new_pair(store: JSONTokenStore, account: str, old: dict,
                         sidecar: subprocess.Popen) -> None:
    """Until the stored pair of ``account`` is no longer ``old`` (30 s at most, while the
    sidecar runs)."""
    deadline = time.monotonic() + 30
    while store.load(account)["refresh_token"] == old["refresh_token"]:
        assert time.monotonic() < deadline and sidecar.poll() is None
        time.sleep(0.05)


def _session(x: XEmulator, store: JSONTokenStore, account: str) -> RefreshingSession:
    return RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=account,
                             token_url=x.token_url, api_url=x.api_url)


def test_refresh_within_leaves_a_fresh_token_and_refreshes_an_expiring_one(
        tmp_path: Path, x_emulator: XEmulator) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    store.save("alice", x_emulator.issue_token())
    session = _session(x_emulator, store, "alice")
    before = store.load("alice")
    assert session.refresh(within=600) == before  # 2 hours left: nothing sent
    assert x_emulator.stats.token_requests == 0

    _expiring_in(store, "alice", 300)
    after = session.refresh(within=600)
    assert after["refresh_token"] != before["refresh_token"]
    assert store.load("alice") == after and session.token["access_token"] == after["access_token"]
    assert x_emulator.stats.refreshes == 1
    assert session.refresh(within=600) == after  # fresh again: nothing sent
    assert x_emulator.stats.token_requests == 1

    for bad in (-1, float("nan"), float("inf"), True, "600"):
        with pytest.raises(ValueError, match="within must be a number of seconds"):
            session.refresh(within=bad)  # type: ignore[arg-type]
    assert x_emulator.stats.token_requests == 1 and store.load("alice") == after
    session.close()


def test_refresh_within_adopts_a_pair_a_sibling_saved_meanwhile(
        tmp_path: Path, x_emulator: XEmulator) -> None:
    store = JSONTokenStore(tmp_path / "tokens.json")
    store.save("alice", x_emulator.issue_token())
    _expiring_in(store, "alice", 30)
    sidecar, sibling = _session(x_emulator, store, "alice"), _session(x_emulator, store, "alice")
    coordinator = sidecar.coordinator
    assert coordinator is not None
    real_load = coordinator.load
    granted: dict[str, str] = {}

    def load_then_sibling_refreshes(seed=None):
        expiring = real_load(seed)  # the sidecar reads the expiring token...
        granted.update(sibling.refresh())  # ...and a sibling refreshes before its lock
        return expiring

    coordinator.load = load_then_sibling_refreshes  # type: ignore[method-assign]
    assert sidecar.refresh(within=600)["access_token"] == granted["access_token"]
    assert store.load("alice")["refresh_token"] == granted["refresh_token"]
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.reused_refresh_tokens == 0
    sidecar.close()
    sibling.close()


def test_cli_within_refreshes_only_the_accounts_about_to_expire(tmp_path: Path,
                                                                 x_emulator: XEmulator) -> None:
    cli = CLI(tmp_path)
    store = JSONTokenStore(cli.store)
    for name in ("alice", "bob"):
        store.save(name, x_emulator.issue_token())
    _expiring_in(store, "bob", 120)
    alice, bob = store.load("alice"), store.load("bob")
    env = cli.emulated(x_emulator)

    done = cli.run("refresh", "--all", "--within", "600", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"Account 'alice' is fresh, not refreshed: access token "
                               f"{fingerprint(alice['access_token'])} expires in ")
    assert lines[1].startswith("Refreshed account 'bob': access token sha256:")
    assert len(lines) == 2
    assert store.load("alice") == alice
    assert store.load("bob")["refresh_token"] != bob["refresh_token"]
    assert x_emulator.stats.refreshes == 1

    as_json = cli.run("refresh", "--all", "--within", "600", "--json", env=env)
    rows = {row["account"]: row for row in json.loads(as_json.stdout)["accounts"]}
    assert as_json.returncode == 0
    assert rows["bob"]["fresh"] is True and rows["bob"]["refreshed"] is False
    assert x_emulator.stats.refreshes == 1  # both fresh now

    one = cli.run("refresh", "--account", "alice", "--within", "0", env=env)
    assert one.returncode == 0 and "is fresh, not refreshed" in one.stdout
    for text in (store.load("alice")["access_token"], store.load("bob")["refresh_token"]):
        assert text not in done.stdout + done.stderr + as_json.stdout + one.stdout


@pytest.mark.parametrize("argv, message", [
    (["--every", "60"], "--every refreshes again and again: give --within SECONDS too"),
    (["--within", "-1"], "must be a number of seconds, 0 or more"),
    (["--within", "nan"], "must be a number of seconds, 0 or more"),
    (["--within", "60", "--every", "0"], "must be more than 0 seconds"),
    (["--within", "60", "--every", "5", "--retry-refused"], "not with --every"),
])
def test_cli_within_and_every_refuse_what_cannot_work(tmp_path: Path, x_emulator: XEmulator,
                                                      argv: list[str], message: str) -> None:
    cli = CLI(tmp_path)
    JSONTokenStore(cli.store).save("alice", x_emulator.issue_token())
    done = cli.run("refresh", *argv, env=cli.emulated(x_emulator))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert x_emulator.stats.token_requests == 0


@pytest.mark.parametrize("invalidate", [False, True], ids=["old-access-lives", "old-access-dies"])
def test_a_sidecar_refreshes_and_worker_processes_only_adopt(
        tmp_path: Path, x_emulator_factory, invalidate: bool) -> None:
    """Real processes: ``refresher refresh --all --within 2.5 --every 0.2`` beside two worker
    processes of 3 threads whose 4-second tokens they would refresh in their last 0.4 s:
    the workers never refresh, no request fails, no refresh token is spent twice. Also when
    a refresh ends the old access token (X does not say whether it does): the workers' 401s
    are cured by adopting the sidecar's pair."""
    x = x_emulator_factory(access_ttl=4, invalidate_access_on_refresh=invalidate)
    cli = CLI(tmp_path)
    store = JSONTokenStore(cli.store)
    store.save("bot", x.issue_token())
    sidecar = subprocess.Popen(
        [*COMMAND, "refresh", "--all", "--within", "2.5", "--every", "0.2"],
        env=cli.emulated(x), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sidecar.stderr is not None  # up (however slowly a busy machine started it)
        first = sidecar.stderr.readline()  # before the workers, who would refresh otherwise
        spec = WorkloadSpec(store=str(cli.store), account="bot", client_id=DEFAULT_CLIENT_ID,
                            token_url=x.token_url, api_url=x.api_url, threads=3, seconds=5.0,
                            pause=0.01)
        reports = run_workers(spec, 2)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        out, err = sidecar.communicate(timeout=30)
    err = first + err
    assert sidecar.returncode == EXIT_STATUS, err
    assert sum(r.failed for r in reports) == 0, [r.errors for r in reports]
    assert sum(r.requests for r in reports) > 0
    assert [r.refreshes for r in reports] == [0, 0]  # they adopted the sidecar's pairs
    refreshed = [line for line in out.splitlines() if line.startswith("Refreshed account 'bot'")]
    assert len(refreshed) >= 2 and x.stats.refreshes == len(refreshed)  # one line a refresh
    assert x.stats.reused_refresh_tokens == 0
    assert "fresh, not refreshed" not in out  # --every prints what changed only
    assert err.startswith("Refreshing the tokens of ") and "terminated (SIGTERM)" in err
    assert store.load("bot")["refresh_token"] not in out + err


SIDECAR = "refresher refresh --all --within 600 --every 60 --store tokens.json"


def test_the_documented_sidecar_command_refreshes_what_expires_and_stops_on_sigterm(
        tmp_path: Path, x_emulator: XEmulator) -> None:
    assert doc_block("docs/howto/sidecar.rst", "The sidecar is the command") == f"{SIDECAR}\n"
    cli = CLI(tmp_path)
    store = JSONTokenStore(tmp_path / "tokens.json")
    for name in ("alice", "bob"):
        store.save(name, x_emulator.issue_token())
    _expiring_in(store, "bob", 300)  # within 10 minutes: refreshed at once
    bob = store.load("bob")
    env = dict(cli.emulated(x_emulator))
    del env["REFRESHER_STORE"]
    argv = SIDECAR.split()
    sidecar = subprocess.Popen([*COMMAND, *argv[1:]], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_a_new_pair(store, "bob", bob, sidecar)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        out, err = sidecar.communicate(timeout=30)
    assert sidecar.returncode == EXIT_STATUS, err
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"Refreshed account 'bob': access token "
        f"{fingerprint(store.load('bob')['access_token'])} expires in ")
    assert "that expire within 10m 00s, every 1m 00s" in err
    assert x_emulator.stats.refreshes == 1 and x_emulator.stats.reused_refresh_tokens == 0


def test_the_sidecar_reports_a_corrupt_store_once_keeps_it_and_goes_on_when_fixed(
        tmp_path: Path, x_emulator: XEmulator) -> None:
    cli = CLI(tmp_path)
    cli.store.write_text('{"accounts": {"bob": ')  # cut short: a crash of some other tool
    sidecar = subprocess.Popen(
        [*COMMAND, "refresh", "--all", "--within", "600", "--every", "0.1"],
        env=cli.emulated(x_emulator), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sidecar.stderr is not None
        said = [sidecar.stderr.readline(), sidecar.stderr.readline()]  # its first pass...
        assert said[1].startswith("refresher: could not list the accounts (")
        time.sleep(1.0)  # ...and ten or so more
        assert sidecar.poll() is None  # still running
        assert cli.store.read_text() == '{"accounts": {"bob": '  # reported, never replaced
        cli.store.unlink()  # the operator puts a good file back
        store = JSONTokenStore(cli.store)
        store.save("bob", x_emulator.issue_token())
        _expiring_in(store, "bob", 60)
        _wait_for_a_new_pair(store, "bob", store.load("bob"), sidecar)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        out, err = sidecar.communicate(timeout=30)
    err = "".join(said) + err
    assert sidecar.returncode == EXIT_STATUS, err
    assert err.count("refresher: could not list the accounts (") == 1, err
    assert out.startswith("Refreshed account 'bob'")
    assert x_emulator.stats.refreshes == 1


def test_every_with_json_prints_one_object_a_change_and_a_standing_problem_once(
        tmp_path: Path, x_emulator: XEmulator) -> None:
    cli = CLI(tmp_path)
    store = JSONTokenStore(cli.store)
    for name in ("alice", "bob"):
        store.save(name, x_emulator.issue_token())
    with store.lock("alice"):  # X refused alice's refresh token earlier: she needs a login
        store.mark_needs_login("alice", store.load("alice")["refresh_token"])
    _expiring_in(store, "alice", 60)
    _expiring_in(store, "bob", 60)
    bob = store.load("bob")
    sidecar = subprocess.Popen(
        [*COMMAND, "refresh", "--all", "--within", "600", "--every", "0.1", "--json"],
        env=cli.emulated(x_emulator), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_a_new_pair(store, "bob", bob, sidecar)
        time.sleep(1.0)  # ten passes or so more
    finally:
        sidecar.send_signal(signal.SIGTERM)
        out, err = sidecar.communicate(timeout=30)
    assert sidecar.returncode == EXIT_STATUS, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(row["account"], row["refreshed"], row["needs_login"]) for row in rows] == [
        ("alice", False, True), ("bob", True, False)]  # alice said once, bob fresh since
    assert rows[1]["fingerprint"] == fingerprint(store.load("bob")["access_token"])
    assert x_emulator.stats.token_requests == 1  # alice's refused token was never sent
    for text in (store.load("bob")["access_token"], store.load("alice")["refresh_token"]):
        assert text not in out + err
