"""A throw-away ``redis-server`` on loopback, for tests of code that uses RedisTokenStore.

Needs the ``redis-server`` binary (Debian: ``apt-get install redis-server``); nothing else.
Persistence is off, so a stopped or killed server comes back empty, like a crashed cache.

>>> with RedisServer() as server:  # doctest: +SKIP
...     store = RedisTokenStore(server.url)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from refresher.testing.net import free_port

__all__ = ["RedisServer", "free_port"]  # free_port: where it was first, for older imports

_START_TIMEOUT = 10.0


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, without RDB snapshots or an AOF.

    ``start()`` (or ``with``) starts it on a free port; ``stop()``/``kill()`` end it;
    ``start()`` again serves on the same port, empty, which is how a Redis restart is
    tested. ``binary`` defaults to ``redis-server`` on PATH, ``workdir`` (its folder and
    log) to a new temporary folder.
    """

    def __init__(self, binary: str | None = None, workdir: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed "
                                    "(Debian/Ubuntu: apt-get install redis-server)")
        self.binary = found
        self.workdir = workdir if workdir is not None else Path(
            tempfile.mkdtemp(prefix="refresher-redis-"))
        self.extra_args = list(extra_args)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def _command(self) -> list[str]:
        return [
            self.binary, "--save", "", "--appendonly", "no",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--logfile", "", "--daemonize", "no",
            *self.extra_args,
        ]

    def start(self) -> RedisServer:
        """Start (on a new free port the first time, on the same port after that)."""
        fresh_port = self.port == 0
        for _ in range(5):
            if fresh_port:
                self.port = free_port()
            with open(self.workdir / f"redis-{self.port}.log", "ab") as log:
                self.process = subprocess.Popen(self._command(), stdout=log,  # noqa: S603
                                                stderr=subprocess.STDOUT)
            if self._wait_ready():
                return self
            self._end(signal.SIGKILL)
            if not fresh_port:
                break
        text = (self.workdir / f"redis-{self.port}.log").read_text(errors="replace")
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{text[-2000:]}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        return False

    def ping(self) -> bool:
        """True when something on the port answers PING (with PONG or an auth error)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                answer = conn.recv(64)
        except OSError:
            return False
        return answer.startswith((b"+PONG", b"-NOAUTH"))

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        """End it (SIGTERM); with no persistence configured, its data is gone."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """End it as a crash would (SIGKILL)."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()
