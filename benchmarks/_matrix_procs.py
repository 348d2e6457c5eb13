"""The fault-matrix scenarios that need processes: kill -9 in the token call and in the save,
SIGTERM in the token call, a process whose wall clock stepped, fork after use and during
a background refresh, and a process with another client id or token URL.

A child process is this file run with a role (``python _matrix_procs.py ROLE CONFIG``): it
imports everything, says ``W``, waits for ``go`` on stdin, and writes a marker line at
each step of its refresh (``C`` the token call begins, ``S`` the save begins, ``R`` the JSON
store's rename begins) so that the parent can kill it there. The parent holds the emulator,
so it also knows when X has the request. Survivors, and "the other process" of a story,
are store objects of their own in the parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _matrix_env import (  # noqa: E402
    ACCOUNT,
    BOUND,
    DEADLINE,
    LOCK_TTL,
    Lab,
    StoreSpec,
    clean_environment,
    exercised,
    policy,
    wait_until,
)

from refresher import RefresherError  # noqa: E402
from refresher.testing import DEFAULT_CLIENT_ID  # noqa: E402

#: Another public client X knows (the emulator of a foreign-client cell registers it).
OTHER_CLIENT_ID = "another-app"
#: How long X holds a token request before acting on it, when a kill or a signal must fall
#: while X has it.
HELD_AT_X = 1.0


# -- the child ------------------------------------------------------------------------------

def _mark(marker: str, text: str = "") -> None:
    os.write(1, f"{marker} {text}".rstrip().replace("\n", " ").encode() + b"\n")


def _child(role: str, config: dict[str, Any]) -> int:
    if config.get("step"):
        real = time.time
        time.time = lambda: real() + float(config["step"])  # this whole process's wall clock
    import refresher
    from refresher import RefreshingSession

    spec = StoreSpec.from_json(config["spec"])
    deadline = float(config.get("deadline", DEADLINE))
    store = spec.open(lock_ttl=max(LOCK_TTL, deadline + 5.0))
    if role == "sigterm":
        refresher.graceful_shutdown()  # type: ignore[attr-defined]  # issue 15, item 10
    session = RefreshingSession(DEFAULT_CLIENT_ID, store=store, account=ACCOUNT,
                                token_url=config["token_url"], api_url=config["api_url"],
                                policy=policy(token_deadline=deadline))
    hold = config.get("hold")
    _instrument(session, store, spec, hold)
    _mark("W")
    if sys.stdin.readline().strip() != "go":
        return 0
    try:
        token = session.refresh()
    except Exception as exc:
        _mark("E", f"{type(exc).__name__}: {exc}")
        return 3
    _mark("O", token["access_token"])
    return 0


def _instrument(session: Any, store: Any, spec: StoreSpec, hold: str | None) -> None:
    """Markers at the token call, the save and (JSON) the rename; a hang at ``hold``."""
    endpoint = session.coordinator.endpoint
    real_refresh, real_save, real_replace = endpoint.refresh, store.save_versioned, os.replace

    def hang_at(marker: str) -> None:
        _mark(marker)
        if hold == marker:
            time.sleep(BOUND)  # the parent kills this process here

    def refresh(refresh_token: str, **options: Any) -> Any:
        hang_at("C")
        return real_refresh(refresh_token, **options)

    def save_versioned(*args: Any, **kwargs: Any) -> Any:
        hang_at("S")
        return real_save(*args, **kwargs)

    def replace(source: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        if spec.kind == "json" and os.fspath(target) == str(store.real_path):
            hang_at("R")  # the new pair is whole in the temporary file, not yet renamed
        return real_replace(source, target, *args, **kwargs)

    endpoint.refresh = refresh
    store.save_versioned = save_versioned
    os.replace = replace


class Child:
    """A child process in ``role`` on ``lab``'s store, imports done, waiting for go."""

    def __init__(self, lab: Lab, role: str, **config: Any) -> None:
        config = dict(config, spec=lab.spec.to_json(), token_url=config.get(
            "token_url", lab.x.token_url), api_url=lab.x.api_url)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), role, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=clean_environment())
        self.lines: list[str] = []
        self._buffer = b""
        self.wait_for("W", timeout=60)

    def wait_for(self, marker: str, timeout: float = BOUND) -> str:
        """The text of the child's next ``marker`` line (its errors raised)."""
        assert self.process.stdout is not None
        end = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if line.split(" ", 1)[0] == marker:
                    self.lines.remove(line)
                    return line[2:]
                if line.startswith("E "):
                    raise AssertionError(f"the child failed: {line[2:]}")
            left = end - time.monotonic()
            fd = self.process.stdout.fileno()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no {marker!r} from the child within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                err = self.process.stderr.read().decode()[-800:] if self.process.stderr else ""
                raise AssertionError(f"the child ended before {marker!r}: {err}")
            self._buffer += chunk
            *done, self._buffer = self._buffer.split(b"\n")
            self.lines.extend(line.decode() for line in done)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def signal(self, number: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, number)

    def reap(self, timeout: float = BOUND) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


# -- kill -9 ----------------------------------------------------------------------------------

def _survivors(lab: Lab) -> None:
    """Two processes that come after a crash, one after the other: a request, then a
    refresh, each (the refresh whatever the state of the access token)."""
    for n in (1, 2):
        survivor = lab.front()
        for step, call in (("GET", survivor.get), ("refresh", survivor.front.refresh)):
            try:
                call(*([lab.api] if step == "GET" else []))
                lab.note(f"survivor {n}: {step} ok")
            except RefresherError as exc:
                lab.note(f"survivor {n}: {step} {type(exc).__name__}")


def _killed(lab: Lab, hold: str | None, at_x: bool = False) -> None:
    """A child refreshes; SIGKILL where it hangs (``hold``), or while X has its request."""
    before = lab.x.stats
    if at_x:
        lab.x.token_delay = HELD_AT_X
    child = Child(lab, "refresh", hold=hold)
    child.go()
    try:
        if at_x:
            wait_until(lambda: lab.x.stats.token_requests > before.token_requests,
                       "X to have the child's request")
        else:
            child.wait_for(hold or "")
        child.signal(signal.SIGKILL)
    finally:
        child.reap()
    lab.settle()  # X acts on a request it holds, and its answer goes nowhere
    lab.x.token_delay = 0.0
    _survivors(lab)


def _seeded(lab: Lab) -> None:
    """The account's pair in the store (as a login leaves it), its access token expired."""
    lab.front(token=lab.seed())


def kill_in_token_call(lab: Lab) -> None:
    """kill -9 in the token call: before the request left (nothing spent: nothing may be
    lost), then while X has it (X rotates, the answer dies with the process: the physical
    limit, one lost pair and at most one reused token)."""
    _seeded(lab)
    _killed(lab, hold="C")
    exercised(lab.x.stats.refreshes >= 1, "a survivor refreshed after the first kill")
    _killed(lab, hold=None, at_x=True)


def kill_in_save(lab: Lab) -> None:
    """kill -9 in the save: JSON, after the new pair is written whole to its temporary
    file (the next holder adopts it: nothing lost); every store, as the save begins (the
    pair only in the dead process's memory: the physical limit)."""
    _seeded(lab)
    if lab.kind == "json":
        _killed(lab, hold="R")
        stored = lab.store().load(ACCOUNT) or {}
        exercised(lab.x.refresh_token_state(stored.get("refresh_token", "")) == "live",
                  "the pair left in the temporary file was adopted")
    _killed(lab, hold="S")


# -- the clock --------------------------------------------------------------------------------

def clock_step(lab: Lab) -> None:
    """A process whose wall clock is 45 s ahead refreshes while another holds the lock in
    its token call: it waits for the lock (JSON: a flock; SQLite: its own monotonic clock;
    PostgreSQL: the server's clock; Redis: the key's TTL on the server), then refreshes
    the pair the holder saved."""
    holder = lab.front(token=lab.seed(), policy=policy(token_deadline=5.0))
    stepped = Child(lab, "refresh", step=45.0)
    lab.x.token_delay = 2.0
    holding: list[Any] = []
    import threading

    thread = threading.Thread(target=lambda: holding.append(holder.front.refresh()))
    thread.start()
    wait_until(lambda: lab.x.stats.token_requests == 1, "the holder's token request")
    lab.x.token_delay = 0.0
    stepped.go()
    try:
        stepped.wait_for("O")
    finally:
        code = stepped.reap()
    thread.join(BOUND)
    exercised(bool(holding) and code == 0, "both refreshed")
    exercised(lab.x.stats.refreshes == 2, "the stepped process refreshed the holder's pair")


# -- fork ---------------------------------------------------------------------------------------

def _in_child(work: Any) -> dict[str, Any]:
    """Fork; the child runs ``work()`` and sends back what it returns (or its traceback)."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(reading)
            message = {"done": work()}
        except BaseException:
            message = {"failed": traceback.format_exc()}
        try:
            os.write(writing, json.dumps(message).encode())
        finally:
            os._exit(0)
    os.close(writing)
    received = b""
    end = time.monotonic() + BOUND
    try:
        while time.monotonic() < end:
            if select.select([reading], [], [], max(0.0, end - time.monotonic()))[0]:
                chunk = os.read(reading, 65536)
                if not chunk:
                    break
                received += chunk
    finally:
        os.close(reading)
        if not received:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if not received:
        raise AssertionError(f"the forked child said nothing within {BOUND} s: it hangs")
    message: dict[str, Any] = json.loads(received)
    if "failed" in message:
        raise AssertionError("the forked child failed:\n" + message["failed"])
    return dict(message["done"])


def fork_after_use(lab: Lab) -> None:
    """A child forked from a process that used the front end and the store refreshes and
    saves through them; the parent then adopts its pair."""
    front = lab.front(token=lab.seed(expired=False))
    assert front.get(lab.api) == 200
    front.front.refresh()  # the parent used the store's locks and the token endpoint
    lab.x.expire_access_token(front.token["access_token"])
    done = _in_child(lambda: {"status": front.get(lab.api), "token": front.token})
    exercised(done["status"] == 200 and lab.x.stats.refreshes == 2, "the child refreshed")
    assert front.get(lab.api) == 200
    assert front.token["access_token"] == done["token"]["access_token"]


def fork_mid_refresh(lab: Lab) -> None:
    """Forked while a background refresh holds the coordinator's thread lock and the
    store's lock: the child starts free, waits for the parent's lock, adopts its pair."""
    lab.x.token_delay = HELD_AT_X
    seed = lab.seed(expired=False, left=8.0)  # in the leeway, outside the wait margin
    front = lab.front(token=seed, policy=policy(token_deadline=HELD_AT_X + 5.0))
    assert front.get(lab.api) == 200  # goes out with the token; a background run refreshes
    wait_until(lambda: lab.x.stats.token_requests == 1, "the background refresh at X")
    coordinator = front.coordinator

    def child() -> dict[str, Any]:
        phantom = coordinator._background.running  # noqa: SLF001 - what the fork left
        status = front.get(lab.api)
        coordinator.wait_for_background(BOUND)
        token = coordinator.refresh(replacing=seed["access_token"])
        return {"phantom": phantom, "status": status, "token": token["refresh_token"]}

    done = _in_child(child)
    exercised(coordinator.wait_for_background(BOUND), "the parent's refresh ended")
    lab.x.token_delay = 0.0
    assert done["status"] == 200 and not done["phantom"], done
    assert done["token"] == front.token["refresh_token"]
    exercised(lab.x.stats.refreshes == 1, "one refresh, in the parent")


# -- SIGTERM, and a refusal to another client -----------------------------------------------

def sigterm_in_token_call(lab: Lab) -> None:
    """SIGTERM (docker stop, systemd) while X has the token request, SIGKILL 10 s later: a
    process that opted in (``refresher.graceful_shutdown()``) saves the pair and exits as
    SIGTERM asks (143); so does the ``refresher refresh`` command (JSON cell)."""
    _seeded(lab)
    children: list[Any] = [lambda: Child(lab, "sigterm", deadline=DEADLINE + HELD_AT_X + 1.0)]
    if lab.kind == "json":
        children.append(lambda: _Command(lab))
    for start in children:
        before = lab.x.stats.token_requests
        lab.x.token_delay = HELD_AT_X
        child = start()
        child.go()
        try:
            wait_until(lambda: lab.x.stats.token_requests > before,  # noqa: B023
                       "X to have the child's request")
            child.signal(signal.SIGTERM)
            code = child.reap(timeout=10.0)  # then SIGKILL, as docker's grace period ends
        finally:
            child.reap()
        lab.x.token_delay = 0.0
        lab.settle()
        # The command exits 143; a library process may also end by the signal itself.
        allowed = (143,) if isinstance(child, _Command) else (143, -signal.SIGTERM)
        exercised(code in allowed,
                  f"{type(child).__name__} exited 143 after SIGTERM (it exited {code})")
        lab.x.expire_access_token(lab.store().load(ACCOUNT)["access_token"])


class _Command(Child):
    """``refresher refresh`` on the cell's JSON store, started at once (no "go" needed)."""

    def __init__(self, lab: Lab) -> None:
        env = dict(clean_environment(), REFRESHER_CLIENT_ID=DEFAULT_CLIENT_ID,
                   REFRESHER_TOKEN_URL=lab.x.token_url, REFRESHER_API_URL=lab.x.api_url)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "refresher", "refresh", "--store", lab.spec.where,
             "--account", ACCOUNT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env)
        self.lines, self._buffer = [], b""

    def go(self) -> None:
        pass


def foreign_client_refusal(lab: Lab) -> None:
    """One process with another client id, one with a token URL left from an emulator: X
    (or the other server) refuses each with 400 "Value passed for the token was invalid".
    The right process must still refresh."""
    seed = lab.seed()
    right = lab.front(token=seed)
    from refresher.testing import XEmulator

    with XEmulator() as elsewhere:
        for wrong in (dict(client_id=OTHER_CLIENT_ID),
                      dict(token_url=elsewhere.token_url)):
            try:
                lab.front(**wrong).get(lab.api)
            except RefresherError as exc:
                lab.note(f"{sorted(wrong)[0]}: {type(exc).__name__}")
    exercised(lab.x.stats.invalid_refresh_tokens == 1, "X refused the other client id")
    assert right.get(lab.api) == 200


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], json.loads(sys.argv[2])))
