"""A throw-away ``redis-server`` on loopback, for tests of code that uses RedisTokenStore.

Needs the ``redis-server`` binary (Debian: ``apt-get install redis-server``); nothing else.
Persistence is off, so a stopped or killed server comes back empty, like a crashed cache.

>>> with RedisServer() as server:  # doctest: +SKIP
...     store = RedisTokenStore(server.url)
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

from refresher.testing._server_process import ServerProcess
from refresher.testing.net import free_port

__all__ = ["RedisServer", "free_port"]  # free_port: where it was first, for older imports


class RedisServer(ServerProcess):
    """One ``redis-server`` process on 127.0.0.1, without RDB snapshots or an AOF.

    ``start()`` (or ``with``) starts it on a free port; ``stop()`` (SIGTERM) and ``kill()``
    (SIGKILL, as a crash would) end it; ``start()`` again serves on the same port, empty,
    which is how a Redis restart is tested. ``binary`` defaults to ``redis-server`` on PATH,
    ``workdir`` (its folder and log) to a new temporary folder.
    """

    name = "redis-server"
    start_timeout = 10.0
    poll_interval = 0.02

    def __init__(self, binary: str | None = None, workdir: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        super().__init__()
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed "
                                    "(Debian/Ubuntu: apt-get install redis-server)")
        self.binary = found
        self.workdir = workdir if workdir is not None else Path(
            tempfile.mkdtemp(prefix="refresher-redis-"))
        self.extra_args = list(extra_args)

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

    def _log_file(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def _answers(self) -> bool:
        return self.ping()

    def ping(self) -> bool:
        """True when something on the port answers PING (with PONG or an auth error)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                answer = conn.recv(64)
        except OSError:
            return False
        return answer.startswith((b"+PONG", b"-NOAUTH"))
