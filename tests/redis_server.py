"""A real ``redis-server`` for the tests: loopback only, a free port, no persistence.

Fixtures (import them into a test module to use them):

- ``redis_server``: a started :class:`RedisServer`, stopped after the test;
- ``redis_server_factory(*extra_args)``: start more, with extra ``redis-server`` arguments
  (for example ``"--requirepass", "pw"``).

Where the ``redis-server`` binary is missing the tests are skipped, except in CI
(``CI=true``), where a missing binary fails them: CI installs the Debian package
``redis-server``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import pytest

_START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, without RDB snapshots or an AOF.

    ``stop()``/``kill()`` end it; ``start()`` starts it again on the same port (empty,
    since nothing was persisted), which is how the tests restart Redis.
    """

    def __init__(self, binary: str, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.port = 0
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, db: int = 0, password: Optional[str] = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def _command(self) -> List[str]:
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
                self.port = _free_port()
            with open(self.workdir / f"redis-{self.port}.log", "ab") as log:
                self.process = subprocess.Popen(self._command(), stdout=log,
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


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The path of ``redis-server``; skip (fail in CI) when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = ("redis-server is not installed (Debian/Ubuntu: apt-get install "
                   "redis-server); the Redis store tests need a real server")
        if _in_ci():
            pytest.fail(message + " — and CI=true, where it must be", pytrace=False)
        pytest.skip(message)
    return binary


@pytest.fixture
def redis_server_factory(redis_binary: str, tmp_path_factory: pytest.TempPathFactory
                         ) -> Iterator[Callable[..., RedisServer]]:
    """``make(*extra_args)``: a started RedisServer; all are stopped after the test."""
    servers: List[RedisServer] = []

    def make(*extra_args: str) -> RedisServer:
        server = RedisServer(redis_binary, tmp_path_factory.mktemp("redis"), extra_args)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A started redis-server on 127.0.0.1 and a free port, no persistence."""
    return redis_server_factory()
