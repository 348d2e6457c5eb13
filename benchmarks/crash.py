"""kill -9 in the middle of a refresh: what survives in a JSONTokenStore?

X's refresh tokens are single-use and rotate: once X has answered a refresh, the old
refresh token is spent and the new pair exists only in the answer. A process killed
between that answer and the save of the new pair loses the account. This script measures
how often that happens, and what the processes that come after do about it.

The parent runs the bundled X emulator on 127.0.0.1 (short access tokens, a token
endpoint that takes ``--token-delay`` seconds to answer, so the window is wide) and seeds
one account in a JSONTokenStore in a temporary folder. Each trial:

1. starts a *child* process that opens a RefreshingSession on the store and calls
   ``session.refresh()`` in a loop, writing a marker and its clock to its stdout at each
   step (refresh begun, token endpoint called, answer received, saving, saved). The first
   refresh runs to the end (a warm process); the kill falls in a later one;
2. aims at one phase, in turn (a random order every three trials): before the token call,
   the token call, the save. It waits for the child's marker opening that phase, sleeps
   a random 0 to 1.25 of its usual length, and sends SIGKILL. The phase the kill really
   fell in is read back from the markers; a token call is split by what the emulator
   saw: it had the whole request (it rotates the pair; the answer goes nowhere), or not;
3. once the emulator has finished any refresh the child left in flight, checks the store
   file: *torn* (not refresher's JSON), *lost pair* (its refresh token is no longer live
   at the emulator and the account is not marked as needing a login: X rotated, and the
   new pair never reached the file), and any *leftover* files beside it (temporary files
   of an interrupted save; whether one holds the lost pair);
4. runs ``--survivors`` processes at once on the same store, as a normal program would:
   ``GET /2/users/me``, then ``session.refresh()``. The emulator counts the reused
   refresh tokens they send; a failed request or refresh is a *failed survivor request*;
5. when the store's refresh token is still not live afterwards, the account cannot go on:
   a fresh emulator token is saved (a *re-seed*, as a new login would) so later trials
   measure again.

Every child and survivor is a fresh interpreter, started ahead of its turn (imports done,
waiting for a "go" line) so that start-up does not dominate the time.

    python benchmarks/crash.py                      # 200 trials
    python benchmarks/crash.py --trials 50 --seed 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, format_table, median, progress  # noqa: E402

ACCOUNT = "crash"
LOOPBACK = "127.0.0.1"

# Markers the child writes (one line each): warm (imports done), ready (session open), then
# in the order of a refresh, and error.
WARM, READY, BEGIN, CALL, ANSWERED, SAVING, SAVED, ERROR = "WRBCASDE"

BEFORE, TOKEN, SAVE, FAILED = "before token call", "token call", "saving", "child failed"
PHASES = (BEFORE, TOKEN, SAVE)
# The token call, split by whether X had the whole request when the child died (a request
# cut off between its headers and its body is refused by X, and spends nothing).
NOT_SENT, AT_X = "token call, X without it", "token call, X answering"
REPORTED_PHASES = (BEFORE, NOT_SENT, AT_X, SAVE, FAILED)
# The marker that opens each target phase, and the marker that closes it.
_OPENS = {BEFORE: BEGIN, TOKEN: CALL, SAVE: ANSWERED}
_CLOSES = {BEFORE: CALL, TOKEN: ANSWERED, SAVE: SAVED}

CHILD_LOOP_SECONDS = 10.0   # a child refreshes this long at most if nobody kills it
SURVIVOR_TIMEOUT = 30.0
MARKER_TIMEOUT = 10.0


# -- the child and survivor processes -------------------------------------------------------


def _mark(marker: str, text: str = "") -> None:
    """One marker line: the marker, this process's monotonic clock, and any text."""
    line = f"{marker} {time.monotonic():.6f} {text}".rstrip().replace("\n", " ") + "\n"
    os.write(1, line.encode("utf-8", "replace"))


def _open_session(args: argparse.Namespace) -> tuple[Any, Any]:
    from refresher import RefreshingSession
    from refresher.stores import JSONTokenStore
    from refresher.testing import DEFAULT_CLIENT_ID

    store = JSONTokenStore(args.store)
    session = RefreshingSession(
        DEFAULT_CLIENT_ID, store=store, account=ACCOUNT, token_url=args.token_url,
        api_base_url=args.api_url, lock_timeout=10.0,
    )
    return store, session


def _wait_for_go() -> bool:
    """Tell the parent the imports are done, then block until it says go (False: EOF)."""
    import refresher.stores  # noqa: F401 - the imports happen before "go"
    import refresher.testing  # noqa: F401

    _mark(WARM)
    return sys.stdin.readline().strip() == "go"


def _child(args: argparse.Namespace) -> int:
    from refresher.stores import JSONTokenStore

    if not _wait_for_go():
        return 0
    try:
        # Markers around the store's save and the token endpoint's refresh, as the
        # coordinator calls them (patched in this throw-away process only).
        original_save = JSONTokenStore.save

        def save(self: Any, account: str, token: dict[str, Any]) -> None:
            _mark(SAVING)
            original_save(self, account, token)
            _mark(SAVED)

        JSONTokenStore.save = save  # type: ignore[method-assign]
        store, session = _open_session(args)
        coordinator = session.coordinator
        endpoint_refresh = coordinator.endpoint.refresh

        def refresh(refresh_token: str, **options: Any) -> dict[str, Any]:
            _mark(CALL)
            granted: dict[str, Any] = endpoint_refresh(refresh_token, **options)
            _mark(ANSWERED)
            return granted

        coordinator.endpoint.refresh = refresh
        _mark(READY)
        deadline = time.monotonic() + CHILD_LOOP_SECONDS
        while time.monotonic() < deadline:
            _mark(BEGIN)
            session.refresh()
    except Exception as exc:
        _mark(ERROR, f"{type(exc).__name__}: {exc}")
        return 3
    return 0


def _survivor(args: argparse.Namespace) -> int:
    if not _wait_for_go():
        return 0
    result: dict[str, Any] = {"requests": 2, "failed": 0, "errors": []}

    def failure(what: str, detail: str) -> None:
        result["failed"] += 1
        result["errors"].append(f"{what}: {detail}"[:300])

    try:
        store, session = _open_session(args)
    except Exception as exc:
        result["failed"] = 2
        result["errors"].append(f"open: {type(exc).__name__}: {exc}"[:300])
    else:
        try:
            response = session.get(args.api_url + "/2/users/me", timeout=10)
            if response.status_code != 200:
                failure("GET /2/users/me", f"HTTP {response.status_code}")
        except Exception as exc:
            failure("GET /2/users/me", f"{type(exc).__name__}: {exc}")
        try:
            session.refresh()
        except Exception as exc:
            failure("refresh", f"{type(exc).__name__}: {exc}")
        session.close()
        store.close()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the parent's handles on them -----------------------------------------------------------


def _role_argv(role: str, store: Path, token_url: str, api_url: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--role", role, "--store", str(store),
            "--token-url", token_url, "--api-url", api_url]


def _parse(line: str, received: float) -> tuple[float, str, str]:
    marker, _, rest = line.partition(" ")
    stamp, _, text = rest.partition(" ")
    try:
        return float(stamp), marker, text
    except ValueError:
        return received, marker, rest


class Child:
    """A refreshing child process; a thread records its markers as they arrive."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        # (monotonic clock when the child wrote it, marker, text); CLOCK_MONOTONIC is one
        # clock for every process of the machine.
        self.markers: list[tuple[float, str, str]] = []
        self.eof = False
        self._condition = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 4096)
            now = time.monotonic()
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            with self._condition:
                self.markers.extend(_parse(line.decode("utf-8", "replace"), now)
                                    for line in lines)
                self._condition.notify_all()
        with self._condition:
            self.eof = True
            self._condition.notify_all()

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def wait_for(self, marker: str, nth: int, timeout: float) -> float | None:
        """When the child wrote ``marker`` the ``nth`` time (monotonic), or ``None`` if it
        ended first."""

        def found() -> float | None:
            times = [at for at, name, _ in self.markers if name == marker]
            return times[nth - 1] if len(times) >= nth else None

        with self._condition:
            self._condition.wait_for(lambda: self.eof or found() is not None, timeout)
            return found()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.reap()

    def reap(self) -> None:
        self.process.wait()
        self._reader.join(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def dismiss(self) -> None:
        """An unused process: close its stdin (it exits at EOF), kill it if it lingers."""
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
        self.reap()


class Survivor:
    """A process that uses the store after a crash: one request, one refresh."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            return {"requests": 2, "failed": 2, "errors": [f"no answer within {timeout:g} s"]}
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return dict(json.loads(line[len("RESULT "):]))
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return {"requests": 2, "failed": 2,
                "errors": [f"exit {self.process.returncode}: {tail[:300]}"]}

    def dismiss(self) -> None:
        try:
            self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


# -- looking at the store -------------------------------------------------------------------


def read_store(store: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(token, None), or (None, why the file is torn): not refresher's JSON, or no pair."""
    from refresher.errors import TokenStoreError

    if not store.path.exists():
        return None, "the store file is gone"
    try:
        token = store.load(ACCOUNT)
    except TokenStoreError as exc:
        return None, str(exc)
    if not token or not token.get("refresh_token"):
        return None, "the account has no refresh token"
    return token, None


def marked_needs_login(store: Any, token: dict[str, Any] | None) -> bool:
    """Whether the store says a person must log in (stores without the marker: no)."""
    check = getattr(store, "needs_login", None)
    if check is None:
        return False
    try:
        return bool(check(ACCOUNT, token))
    except Exception:
        return False


def leftovers(store: Any) -> list[Path]:
    """Files beside the store other than the store, its lock file and its account locks."""
    keep = {store.path.name, store.lock_path.name, store.locks_folder.name}
    return sorted(p for p in store.path.parent.iterdir() if p.name not in keep)


def refresh_token_in(path: Path) -> str | None:
    """The account's refresh token in a leftover file, if it is a readable store."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        token = document["accounts"][ACCOUNT]["token"]["refresh_token"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return token if isinstance(token, str) else None


def seed_account(emulator: Any, store: Any) -> None:
    """A fresh pair from the emulator, saved as a new login would (a torn file is replaced)."""
    from refresher.errors import TokenStoreError

    token = emulator.issue_token()
    with store.lock(ACCOUNT):
        try:
            store.save(ACCOUNT, token)
        except TokenStoreError:
            store.path.unlink()
            store.save(ACCOUNT, token)


def in_flight(emulator: Any) -> int:
    """Token requests the emulator has received and not yet answered."""
    s = emulator.stats
    return int(s.token_requests - s.exchanges - s.refreshes - s.invalid_refresh_tokens)


def settle(emulator: Any, baseline: int, token_delay: float, expected_requests: int,
           limit: float = 3.0) -> int:
    """Wait until a refresh the dead child left in flight is done at X; the new baseline.

    ``expected_requests`` is the emulator's token request count if every token call the
    child began reached it: a request still in a socket buffer gets a moment to arrive.
    """
    arrival = time.monotonic() + 0.25
    while emulator.stats.token_requests < expected_requests and time.monotonic() < arrival:
        time.sleep(0.005)
    time.sleep(token_delay + 0.01)
    deadline = time.monotonic() + limit
    while in_flight(emulator) > baseline and time.monotonic() < deadline:
        time.sleep(0.005)
    # A request that ends without any of those counts (a torn request) raises the baseline.
    return in_flight(emulator)


# -- one trial ------------------------------------------------------------------------------


def classify(markers: Sequence[tuple[float, str, str]]) -> str:
    """The phase the child was in when it died, from its last marker."""
    last = ""
    for _, marker, _ in markers:
        if marker == ERROR:
            return FAILED
        if marker in (BEGIN, CALL, ANSWERED, SAVING, SAVED):
            last = marker
    if last == CALL:
        return TOKEN
    if last in (ANSWERED, SAVING):
        return SAVE
    return BEFORE


def phase_lengths(markers: Sequence[tuple[float, str, str]]) -> dict[str, list[float]]:
    """How long each phase of the child's refreshes after the first took, by its clock.

    The first refresh of a process is slower (a connection to open, code run for the first
    time) and is left out: the kills fall in later ones.
    """
    lengths: dict[str, list[float]] = {phase: [] for phase in PHASES}
    opened: dict[str, float] = {}
    names = [marker for _, marker, _ in markers]
    first_end = names.index(SAVED) if SAVED in names else len(names)
    for at, marker, _ in markers[first_end + 1:]:
        for phase in PHASES:
            if marker == _OPENS[phase]:
                opened[phase] = at
            elif marker == _CLOSES[phase] and phase in opened:
                lengths[phase].append(at - opened.pop(phase))
    return lengths


def calibrate(folder: Path, token_delay: float, rounds: int = 5) -> dict[str, float]:
    """Phase lengths to aim at before the children have measured any: a store's lock and
    read, and its save, timed on a scratch store in its own folder (same file system)."""
    from refresher.stores import JSONTokenStore

    scratch = JSONTokenStore(folder / "calibration" / "tokens.json")
    token = {"access_token": "a", "refresh_token": "r", "expires_in": 1, "token_type": "bearer"}
    scratch.save(ACCOUNT, token)
    reads, saves = [], []
    for _ in range(rounds):
        began = time.monotonic()
        with scratch.lock(ACCOUNT):
            scratch.load(ACCOUNT)
            read = time.monotonic()
            scratch.save(ACCOUNT, token)
        reads.append(read - began)
        saves.append(time.monotonic() - read)
    return {BEFORE: median(reads), TOKEN: token_delay + 0.002, SAVE: median(saves)}


class Trials:
    """The state kept from trial to trial: processes started ahead, phase lengths, files."""

    def __init__(self, args: argparse.Namespace, emulator: Any, store: Any,
                 defaults: dict[str, float]) -> None:
        self.args = args
        self.emulator = emulator
        self.store = store
        self.rng = random.Random(args.seed)
        self.targets: list[str] = []
        self.lengths: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self.defaults = defaults
        self.seen: dict[str, int] = {}  # leftover file name -> trial that first saw it
        self.baseline = 0
        self.child: Child | None = None
        self.survivors: list[Survivor] = []

    def argv(self, role: str) -> list[str]:
        x = self.emulator
        return _role_argv(role, self.store.path, x.token_url, x.api_url)

    def start_child(self) -> None:
        self.child = Child(self.argv("child"))

    def start_survivors(self) -> None:
        self.survivors = [Survivor(self.argv("survivor")) for _ in range(self.args.survivors)]

    def close(self) -> None:
        if self.child is not None:
            self.child.dismiss()
        for survivor in self.survivors:
            survivor.dismiss()

    def length(self, phase: str) -> float:
        recent = self.lengths[phase][-50:]
        return median(recent) if len(recent) >= 3 else self.defaults[phase]

    def next_target(self) -> str:
        """The phases in a fresh random order every three trials: each gets a third."""
        if not self.targets:
            self.targets = list(PHASES)
            self.rng.shuffle(self.targets)
        return self.targets.pop()

    def run(self, index: int) -> dict[str, Any]:
        x, store, args = self.emulator, self.store, self.args
        before = x.stats
        target = self.next_target()
        child = self.child
        assert child is not None
        child.go()
        # The child's first refresh runs to the end (it times the phases, and warms the
        # process up as a long-running program would be); the kill falls in the second.
        opened = child.wait_for(_OPENS[target], 2, MARKER_TIMEOUT)
        delay = None
        if opened is not None:
            # A quarter past the usual end, so that the whole phase is covered.
            delay = self.rng.uniform(0.0, 1.25 * self.length(target))
            pause = opened + delay - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        child.kill()
        self.start_child()  # the next trial's, starting while this one is checked
        phase = classify(child.markers)
        for name, values in phase_lengths(child.markers).items():
            self.lengths[name].extend(values)
        errors = [text for _, marker, text in child.markers if marker == ERROR]
        calls = sum(marker == CALL for _, marker, _ in child.markers)
        self.baseline = settle(x, self.baseline, args.token_delay,
                               before.token_requests + calls)
        if phase == TOKEN:
            after = x.stats
            answered = (after.refreshes + after.invalid_refresh_tokens
                        - before.refreshes - before.invalid_refresh_tokens)
            phase = AT_X if answered >= calls else NOT_SENT

        # Right after the kill: the file, the files beside it, the pair at X.
        token, torn = read_store(store)
        state = x.refresh_token_state(token["refresh_token"]) if token else None
        marked = marked_needs_login(store, token)
        lost = token is not None and state != "live" and not marked
        new_files = []
        for path in leftovers(store):
            if path.name not in self.seen:
                self.seen[path.name] = index
                new_files.append(path)
        in_temp_file = lost and any(
            (rt := refresh_token_in(path)) is not None and x.refresh_token_state(rt) == "live"
            for path in new_files
        )

        # Survivors use the store as a normal program would.
        for survivor in self.survivors:
            survivor.go()
        results = [survivor.result(SURVIVOR_TIMEOUT) for survivor in self.survivors]
        self.start_survivors()
        reused = x.stats.reused_refresh_tokens - before.reused_refresh_tokens

        # Afterwards: can the account go on? If not, a new login (re-seed).
        after, torn_after = read_store(store)
        state_after = x.refresh_token_state(after["refresh_token"]) if after else None
        marked_after = marked_needs_login(store, after)
        reseeded = state_after != "live"
        if reseeded:
            seed_account(x, store)
        return {
            "trial": index,
            "target": target,
            "phase": phase,
            "kill_delay_ms": None if delay is None else round(delay * 1000, 3),
            "markers": "".join(marker for _, marker, _ in child.markers),
            "torn": torn is not None,
            "torn_reason": torn,
            "stored_refresh_token": state,
            "lost": lost,
            "lost_pair_in_temp_file": in_temp_file,
            "recovered": lost and state_after == "live",
            "new_leftover_files": [path.name for path in new_files],
            "survivor_requests": sum(r["requests"] for r in results),
            "survivor_failed": sum(r["failed"] for r in results),
            "survivor_errors": [e for r in results for e in r["errors"]][:4],
            "reused_refresh_tokens": reused,
            "torn_after_survivors": torn_after is not None,
            "marked_needs_login_after_survivors": marked_after,
            "reseeded": reseeded,
            "child_errors": errors,
        }


# -- the report -----------------------------------------------------------------------------


def tally(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kills": len(samples),
        "torn_files": sum(s["torn"] for s in samples),
        "lost_pairs": sum(s["lost"] for s in samples),
        "lost_pairs_in_temp_files": sum(s["lost_pair_in_temp_file"] for s in samples),
        "lost_pairs_recovered": sum(s["recovered"] for s in samples),
        "reused_refresh_tokens": sum(s["reused_refresh_tokens"] for s in samples),
        "survivor_requests": sum(s["survivor_requests"] for s in samples),
        "failed_survivor_requests": sum(s["survivor_failed"] for s in samples),
        "marked_needs_login": sum(s["marked_needs_login_after_survivors"] for s in samples),
        "reseeds": sum(s["reseeded"] for s in samples),
        "leftover_temp_files": sum(len(s["new_leftover_files"]) for s in samples),
    }


PHASE_COLUMNS = [
    ("kills", "kills"), ("torn_files", "torn"), ("lost_pairs", "lost pairs"),
    ("lost_pairs_in_temp_files", "in a temp file"), ("lost_pairs_recovered", "recovered"),
    ("reused_refresh_tokens", "reused RT"), ("failed_survivor_requests", "failed survivor"),
    ("marked_needs_login", "needs login"), ("reseeds", "re-seeds"),
    ("leftover_temp_files", "leftovers"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="SIGKILL a process at random moments of a refresh of a JSONTokenStore "
        "account (against the local X emulator), then count torn files, lost pairs, reused "
        "refresh tokens and leftover temporary files, and let survivor processes carry on.",
    )
    parser.add_argument("--trials", type=int, default=200,
                        help="kill -9 trials (default 200)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the kill targets and delays (default: a random one, "
                        "printed)")
    parser.add_argument("--survivors", type=int, default=2,
                        help="processes that use the store after each kill (default 2)")
    parser.add_argument("--ttl", type=float, default=1.0,
                        help="seconds an access token lives (default 1)")
    parser.add_argument("--token-delay", type=float, default=0.05,
                        help="seconds the emulator's token endpoint takes to answer "
                        "(default 0.05)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="start no trial after this many seconds (default 300)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # The processes the parent starts run this script again in one of these roles.
    parser.add_argument("--role", choices=["child", "survivor"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--token-url", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "child":
        return _child(args)
    if args.role == "survivor":
        return _survivor(args)
    if args.trials < 1 or args.survivors < 0 or args.ttl <= 0 or args.token_delay < 0 \
            or args.max_seconds <= 0:
        parser.error("trials must be at least 1, survivors not negative, ttl and "
                     "max-seconds positive, token-delay not negative")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)

    from refresher.stores import JSONTokenStore
    from refresher.testing import XEmulator

    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    stopped_early = False
    with tempfile.TemporaryDirectory(prefix="refresher-crash-") as folder, \
            XEmulator(host=LOOPBACK, port=0, access_ttl=args.ttl,
                      token_delay=args.token_delay) as x:
        defaults = calibrate(Path(folder), args.token_delay)
        store = JSONTokenStore(Path(folder) / "store" / "tokens.json")
        seed_account(x, store)
        trials = Trials(args, x, store, defaults)
        progress(f"crash: {args.trials} trials, seed {args.seed}, token endpoint answering "
                 f"in {args.token_delay * 1000:g} ms, {args.survivors} survivors per trial")
        try:
            trials.start_child()
            trials.start_survivors()
            for index in range(args.trials):
                if time.monotonic() - started > args.max_seconds:
                    stopped_early = True
                    progress(f"stopping after {index} trials: --max-seconds "
                             f"{args.max_seconds:g} reached")
                    break
                samples.append(trials.run(index))
                if (index + 1) % 25 == 0:
                    done = tally(samples)
                    progress(f"  {index + 1} trials: {done['lost_pairs']} lost pairs, "
                             f"{done['reused_refresh_tokens']} reused refresh tokens, "
                             f"{time.monotonic() - started:.0f} s")
        except Exception:
            trials.close()
            raise
        trials.close()
        left_at_end = [path.name for path in leftovers(store)]
    total = time.monotonic() - started

    overall = tally(samples)
    by_phase = {phase: tally([s for s in samples if s["phase"] == phase])
                for phase in REPORTED_PHASES}
    if not by_phase[FAILED]["kills"]:
        del by_phase[FAILED]
    summary = {
        "trials": len(samples),
        "torn_files": overall["torn_files"],
        "lost_pairs": overall["lost_pairs"],
        "lost_pairs_in_temp_files": overall["lost_pairs_in_temp_files"],
        "lost_pairs_recovered": overall["lost_pairs_recovered"],
        "reused_refresh_tokens": overall["reused_refresh_tokens"],
        "survivor_requests": overall["survivor_requests"],
        "failed_survivor_requests": overall["failed_survivor_requests"],
        "marked_needs_login": overall["marked_needs_login"],
        "reseeds": overall["reseeds"],
        "leftover_temp_files": overall["leftover_temp_files"],
        "leftover_files_at_end": len(left_at_end),
        "child_errors": sum(bool(s["child_errors"]) for s in samples),
        "total_seconds": round(total, 2),
        "stopped_early": stopped_early,
        "seed": args.seed,
        "settings": {"trials_asked": args.trials, "survivors": args.survivors,
                     "access_ttl": args.ttl, "token_delay": args.token_delay,
                     "max_seconds": args.max_seconds},
        "phase_ms": {phase: round(trials.length(phase) * 1000, 2) for phase in PHASES},
        "phases": by_phase,
        "samples": samples,
    }
    notes = [
        f"seed {args.seed}; the token endpoint answers in {args.token_delay * 1000:g} ms; "
        f"access tokens live {args.ttl:g} s; {args.survivors} survivor processes per trial "
        "(GET /2/users/me, then a refresh).",
        "Median phase lengths (children's clocks, refreshes after their first): " + ", ".join(
            f"{phase} {summary['phase_ms'][phase]:.1f} ms" for phase in PHASES) + ".",
        "lost pairs: after the kill the store's refresh token was no longer live at X and "
        "the account was not marked as needing a login (X rotated; the new pair never "
        "reached the file). in a temp file: the lost pair was in a file left beside the "
        "store. recovered: the survivors ended with a live pair in the store.",
        "Every trial whose store was left without a live refresh token was re-seeded (a new "
        "login) before the next one.",
    ]
    if stopped_early:
        notes.append(f"Stopped early: --max-seconds {args.max_seconds:g} reached.")
    errors = [e for s in samples for e in s["survivor_errors"]]
    for error in sorted(set(errors))[:3]:
        notes.append(f"  survivor error: {error[:160]}")
    for error in sorted({e for s in samples for e in s["child_errors"]})[:3]:
        notes.append(f"  child error: {error[:160]}")
    title = "crash: kill -9 during refreshes of a JSONTokenStore"
    rows = [[phase] + [counts[key] for key, _ in PHASE_COLUMNS]
            for phase, counts in [*by_phase.items(), ("all", overall)]]
    columns = ["kill during"] + [name for _, name in PHASE_COLUMNS]
    if args.json:
        emit(True, title, columns, rows, notes, extra=summary)
        return 0
    print(title)
    print()
    print(format_table(["measure", "value"], [
        ["trials", summary["trials"]],
        ["torn files", summary["torn_files"]],
        ["lost pairs", summary["lost_pairs"]],
        ["  in a temp file", summary["lost_pairs_in_temp_files"]],
        ["  recovered by survivors", summary["lost_pairs_recovered"]],
        ["reused refresh tokens", summary["reused_refresh_tokens"]],
        ["failed survivor requests",
         f"{summary['failed_survivor_requests']} of {summary['survivor_requests']}"],
        ["marked needs login", summary["marked_needs_login"]],
        ["re-seeds", summary["reseeds"]],
        ["leftover temp files seen", summary["leftover_temp_files"]],
        ["  still there at the end", summary["leftover_files_at_end"]],
        ["total time", f"{total:.1f} s"],
    ]))
    print()
    emit(False, "by the phase the kill fell in:", columns, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
