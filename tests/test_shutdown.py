"""SIGTERM is not kill -9: the `refresher` commands, and programs that call
`refresher.graceful_shutdown()`, exit with status 143 after a refresh in flight has saved
its pair. (The demo's SIGTERM is tested with its Ctrl-C, in test_cli.py.)

The shape of issue 15: SIGTERM while the token request is at the emulator (held back by
``token_delay``), then SIGKILL 10 s later, as docker does. The pair X granted must be in the
store (its refresh token is the emulator's live one), and the next refresh must succeed
without reusing a refresh token.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from doc_blocks import doc_block
from test_cli import CLI, COMMAND

import refresher
from refresher import ConfigurationError, JSONTokenStore, RefreshingSession
from refresher.shutdown import EXIT_STATUS, sigterm_handled
from refresher.testing import DEFAULT_CLIENT_ID, XEmulator

#: docker's grace period between SIGTERM and SIGKILL.
GRACE = 10.0


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def _finish(child: subprocess.Popen[str]) -> tuple[str, str]:
    """What a child signalled with SIGTERM printed; SIGKILL after the grace period, as
    docker does (and then the test fails on the status: -9, not 143)."""
    try:
        return child.communicate(timeout=GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.communicate()


def _term_in_token_call(x: XEmulator, child: subprocess.Popen[str], calls: int = 1) -> None:
    """SIGTERM once the emulator holds the child's token request (``token_delay``)."""
    deadline = time.monotonic() + 30
    while x.stats.token_requests < calls:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never called the token endpoint"
        time.sleep(0.005)
    child.send_signal(signal.SIGTERM)


def _pair_saved_and_usable(x: XEmulator, store: Path, account: str, refreshes: int) -> None:
    """The store holds the pair X granted last, and the next refresh spends it cleanly."""
    token = JSONTokenStore(store).load(account)
    assert token is not None
    assert x.refresh_token_state(token["refresh_token"]) == "live"
    x.token_delay = 0
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=str(store), account=account,
                                token_url=x.token_url, api_url=x.api_url)
    session.refresh()
    session.close()
    assert x.stats.refreshes == refreshes + 1
    assert x.stats.reused_refresh_tokens == 0


def _seed(x: XEmulator, store: Path, *accounts: str) -> dict[str, str]:
    """Accounts with a live pair each; their refresh tokens."""
    saved = {}
    for account in accounts:
        token = x.issue_token()
        JSONTokenStore(store).save(account, token)
        saved[account] = token["refresh_token"]
    return saved


# -- the refresher command -------------------------------------------------------------------


def test_refresh_saves_the_pair_in_flight_then_exits_143(cli, x_emulator_factory):
    x = x_emulator_factory(token_delay=1.0)
    _seed(x, cli.store, "a")
    child = subprocess.Popen([*COMMAND, "refresh", "--account", "a"], env=cli.emulated(x),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _term_in_token_call(x, child)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    assert err == "refresher: terminated (SIGTERM)\n" and out == ""
    _pair_saved_and_usable(x, cli.store, "a", refreshes=1)


def test_refresh_all_finishes_the_account_in_flight_and_starts_no_other(
        cli, x_emulator_factory):
    x = x_emulator_factory(token_delay=1.0)
    seeded = _seed(x, cli.store, "a", "b", "c")
    child = subprocess.Popen([*COMMAND, "refresh", "--all"], env=cli.emulated(x),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _term_in_token_call(x, child, calls=2)  # in b's
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    assert re.fullmatch(r"Refreshed account 'a': access token sha256:\w+ expires in \S+ \S+\.\n"
                        r"Account 'b': SIGTERM came while it was being refreshed; refresher "
                        r"status shows where it stands\.\n", out), out
    assert x.stats.token_requests == 2  # c was not started
    assert JSONTokenStore(cli.store).load("c")["refresh_token"] == seeded["c"]
    token_a = JSONTokenStore(cli.store).load("a")
    assert x.refresh_token_state(token_a["refresh_token"]) == "live"
    _pair_saved_and_usable(x, cli.store, "b", refreshes=2)


class _SlowRevoke(http.server.BaseHTTPRequestHandler):
    """Holds each revoke back a second, then hands it to the emulator (X, slow)."""

    target = ""
    received: threading.Event

    def do_POST(self) -> None:  # noqa: N802 — http.server's name
        self.received.set()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(1.0)
        answer = requests.post(self.target, data=body, timeout=10,
                               headers={"Content-Type": self.headers["Content-Type"]})
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers["Content-Type"])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_revoke(x_emulator: XEmulator) -> Iterator[tuple[str, threading.Event]]:
    """A revoke URL whose answers take a second, and the event it sets on a request."""
    received = threading.Event()
    handler = type("Handler", (_SlowRevoke,),
                   {"target": x_emulator.revoke_url, "received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/2/oauth2/revoke", received
    server.shutdown()
    server.server_close()


def test_logout_finishes_the_revoke_and_the_delete_then_exits_143(cli, x_emulator, slow_revoke):
    url, received = slow_revoke
    seeded = _seed(x_emulator, cli.store, "a")
    child = subprocess.Popen([*COMMAND, "logout", "--account", "a", "--revoke-url", url],
                             env=cli.emulated(x_emulator), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert received.wait(30), child.communicate()
    child.send_signal(signal.SIGTERM)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    # Not a pair revoked at X left in the store: revoked, and removed.
    assert x_emulator.refresh_token_state(seeded["a"]) == "revoked"
    assert JSONTokenStore(cli.store).accounts() == []


def test_idle_command_exits_143_at_once(cli, x_emulator):
    """`login --no-browser` waiting for the pasted URL: nothing in flight."""
    child = subprocess.Popen([*COMMAND, "login", "--no-browser", "--port", "0"],
                             env=cli.emulated(x_emulator), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    while "http" not in (line := child.stderr.readline()):
        assert line, child.communicate()
    child.send_signal(signal.SIGTERM)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    assert err.endswith("refresher: terminated (SIGTERM)\n")


# -- graceful_shutdown() in a program --------------------------------------------------------

PROGRAM = textwrap.dedent("""\
    import os, sys, threading, time
    import refresher
    from refresher.shutdown import terminating

    mode = sys.argv[1]
    print("installed", refresher.graceful_shutdown(wait=float(os.environ["WAIT"])), flush=True)


    class SlowSave(refresher.JSONTokenStore):
        def save_versioned(self, account, token, expected_version=None):
            print("saving", flush=True)
            time.sleep(2)
            return super().save_versioned(account, token, expected_version)


    def session(account="a"):
        store = (SlowSave if mode == "slow save" else refresher.JSONTokenStore)(
            os.environ["STORE"])
        return refresher.RefreshingSession(
            os.environ["CLIENT_ID"], store=store, account=account,
            token_url=os.environ["TOKEN_URL"], api_url=os.environ["API_URL"])


    if mode in ("main thread", "slow save"):
        session().refresh()
    elif mode == "bound":
        try:
            session().refresh()
        except refresher.Terminated:
            print("terminated while waiting", flush=True)
            raise
    elif mode in ("worker thread", "nothing new"):
        # A daemon thread (a server's request thread): the exit does not wait for it.
        threading.Thread(target=session().refresh, daemon=True).start()
        if mode == "nothing new":
            while not terminating():
                time.sleep(0.005)
            try:
                session("b").refresh()
            except refresher.RefreshError as exc:
                print("refused, request_sent", exc.request_sent, flush=True)
    print("idle", flush=True)
    time.sleep(60)
    print("slept", flush=True)
    """)


@pytest.fixture
def program(tmp_path: Path) -> Callable[..., subprocess.Popen[str]]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)

    def start(x: XEmulator, mode: str, wait: float = 5.0) -> subprocess.Popen[str]:
        env = dict(os.environ, STORE=str(tmp_path / "tokens.json"), CLIENT_ID=DEFAULT_CLIENT_ID,
                   TOKEN_URL=x.token_url, API_URL=x.api_url, WAIT=str(wait),
                   PYTHONUNBUFFERED="1")
        child = subprocess.Popen([sys.executable, str(script), mode], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline() == "installed True\n", child.communicate()
        return child

    return start


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["main thread", "worker thread"])
def test_graceful_shutdown_saves_the_pair_in_flight_then_exits_143(
        mode, program, x_emulator_factory, tmp_path):
    """The refresh in the main thread, or in a daemon thread (SIGTERM goes to the main
    thread, which waits for it: the exit would not)."""
    x = x_emulator_factory(token_delay=1.0)
    _seed(x, tmp_path / "tokens.json", "a")
    child = program(x, mode)
    _term_in_token_call(x, child)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    assert "slept" not in out and "Traceback" not in err
    _pair_saved_and_usable(x, tmp_path / "tokens.json", "a", refreshes=1)


@pytest.mark.integration
def test_graceful_shutdown_saves_a_pair_that_arrived_whatever_the_bound(
        program, x_emulator, tmp_path):
    """X answered; the save takes 2 s, the bound is 0.2 s: the save ends first."""
    _seed(x_emulator, tmp_path / "tokens.json", "a")
    child = program(x_emulator, "slow save", wait=0.2)
    assert child.stdout is not None
    assert child.stdout.readline() == "saving\n"
    child.send_signal(signal.SIGTERM)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    _pair_saved_and_usable(x_emulator, tmp_path / "tokens.json", "a", refreshes=1)


@pytest.mark.integration
def test_graceful_shutdown_waits_for_x_at_most_the_bound(program, x_emulator_factory,
                                                         tmp_path):
    """X holds its answer 4 s; with wait=0.3 the program stops waiting before X answers.
    Its exit still takes the answer as a late grant (within the request's own bound)."""
    x = x_emulator_factory(token_delay=4.0)
    _seed(x, tmp_path / "tokens.json", "a")
    child = program(x, "bound", wait=0.3)
    _term_in_token_call(x, child)
    assert child.stdout is not None
    assert child.stdout.readline() == "terminated while waiting\n"
    assert x.stats.refreshes == 0  # X had not answered yet
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    _pair_saved_and_usable(x, tmp_path / "tokens.json", "a", refreshes=1)


@pytest.mark.integration
def test_after_sigterm_no_new_refresh_starts(program, x_emulator_factory, tmp_path):
    x = x_emulator_factory(token_delay=1.0)
    seeded = _seed(x, tmp_path / "tokens.json", "a", "b")
    child = program(x, "nothing new")
    _term_in_token_call(x, child)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    assert "refused, request_sent False\n" in out
    assert x.stats.token_requests == 1  # only a's
    assert JSONTokenStore(tmp_path / "tokens.json").load("b")["refresh_token"] == seeded["b"]
    _pair_saved_and_usable(x, tmp_path / "tokens.json", "a", refreshes=1)


@pytest.mark.integration
def test_graceful_shutdown_idle_exits_143_at_once(program, x_emulator):
    child = program(x_emulator, "idle")
    assert child.stdout is not None
    assert child.stdout.readline() == "idle\n"
    child.send_signal(signal.SIGTERM)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    assert out == "" and err == ""


# -- graceful_shutdown() in this process -----------------------------------------------------


@pytest.fixture
def default_sigterm() -> Iterator[None]:
    """SIGTERM at its default disposition for the test, put back as it was afterwards."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, before)


def test_graceful_shutdown_installs_only_over_the_default(default_sigterm):
    assert refresher.graceful_shutdown() is True
    installed = signal.getsignal(signal.SIGTERM)
    assert installed not in (signal.SIG_DFL, signal.SIG_IGN)
    assert refresher.graceful_shutdown(wait=1) is True  # again: only the bound changes
    assert signal.getsignal(signal.SIGTERM) is installed
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the documented undo

    def mine(signum: int, frame: Any) -> None:
        pass

    for handler in (mine, signal.SIG_IGN):
        signal.signal(signal.SIGTERM, handler)
        assert refresher.graceful_shutdown() is False
        assert signal.getsignal(signal.SIGTERM) is handler


def test_graceful_shutdown_wants_the_main_thread_and_a_number(default_sigterm, in_thread):
    with pytest.raises(ConfigurationError, match="must be called from the main thread"):
        in_thread(refresher.graceful_shutdown)()
    for wait in (-1, float("nan"), "5", True):
        with pytest.raises(ConfigurationError, match="give a number of seconds"):
            refresher.graceful_shutdown(wait=wait)  # type: ignore[arg-type]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_commands_handler_is_theirs_for_the_command_only(default_sigterm):
    with sigterm_handled() as installed:
        assert installed and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # started with SIGTERM ignored: kept so
    with sigterm_handled() as installed:
        assert not installed and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_after_sigterm_saves_go_on_and_no_refresh_token_is_sent(x_emulator, monkeypatch,
                                                                in_thread):
    """A pair to write back, a login to save, a sibling's pair to adopt still need the
    store's lock after the signal; only spending a refresh token stops. (In a thread other
    than the main one, where the exit itself is not raised.)"""
    from refresher import RefreshError, shutdown

    session = RefreshingSession(DEFAULT_CLIENT_ID, store=refresher.MemoryTokenStore(),
                                token=x_emulator.issue_token(), token_url=x_emulator.token_url,
                                api_url=x_emulator.api_url)
    monkeypatch.setattr(shutdown._state, "requested", True)  # as the handler leaves it
    in_thread(lambda: session.coordinator.replace(x_emulator.issue_token()))()  # saved
    with pytest.raises(RefreshError, match="shutting down") as refused:
        in_thread(session.refresh)()
    assert refused.value.request_sent is False
    assert x_emulator.stats.token_requests == 0


@pytest.mark.integration
def test_a_demo_worker_stopped_by_sigterm_saves_its_pair_and_reports(
        x_emulator_factory, tmp_path, in_thread):
    """What `refresher demo` does to its workers when it is stopped: SIGTERM to each. A
    worker in the middle of a refresh saves the pair, ends its threads and reports."""
    import multiprocessing

    from refresher.demo.workload import WorkloadSpec, run_workers

    x = x_emulator_factory(access_ttl=2.0, token_delay=1.0)
    store = tmp_path / "tokens.json"
    _seed(x, store, "demo")
    spec = WorkloadSpec(store=str(store), account="demo", client_id=DEFAULT_CLIENT_ID,
                        token_url=x.token_url, api_url=x.api_url, threads=2, seconds=30)
    before = set(multiprocessing.active_children())
    join = in_thread(lambda: run_workers(spec, 1))
    deadline = time.monotonic() + 30
    while x.stats.token_requests < 1:
        assert time.monotonic() < deadline, "the worker never refreshed"
        time.sleep(0.005)
    for worker in set(multiprocessing.active_children()) - before:
        os.kill(worker.pid, signal.SIGTERM)
    reports = join(timeout=GRACE + 5)
    assert not any("sent no report" in error for error in reports[0].errors), reports
    assert reports[0].requests > 0
    token = JSONTokenStore(store).load("demo")
    assert x.refresh_token_state(token["refresh_token"]) == "live"
    assert x.stats.reused_refresh_tokens == 0


# -- the how-to (docs/howto/shutdown.rst), as printed -------------------------------------------


@pytest.mark.integration
def test_the_howtos_worker_saves_the_pair_in_flight_then_exits_143(cli, x_emulator_factory):
    """The page's worker, on an account ``refresher login`` saved: SIGTERM while X holds its
    refresh; exit status 143 once the pair is saved, and the next refresh reuses nothing."""
    x = x_emulator_factory(access_ttl=2.0)
    cli.login(x, "--account", "alice")
    x.token_delay = 1.0  # from here on, X takes a second to answer a refresh
    script = cli.home / "worker.py"
    script.write_text(doc_block("docs/howto/shutdown.rst", "before the work starts:"))
    child = subprocess.Popen([sys.executable, str(script)], text=True,
                             env=dict(cli.env, REFRESHER_STORE=str(cli.store)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _term_in_token_call(x, child, calls=x.stats.token_requests + 1)
    out, err = _finish(child)
    assert child.returncode == EXIT_STATUS, err
    assert out == "" and "Traceback" not in err
    _pair_saved_and_usable(x, cli.store, "alice", refreshes=1)
