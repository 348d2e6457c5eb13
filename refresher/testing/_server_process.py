"""A throw-away server as a child process on a loopback port: start it, wait until it
answers, stop it by signal. :class:`~refresher.testing.redis_server.RedisServer` and
:class:`~refresher.testing.postgres_server.PostgresServer` keep only what is their own
server's: its command, how it is asked whether it answers, its log, its signals.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import IO, TypeVar

from refresher.testing.net import free_port

__all__ = ["ServerProcess"]

_S = TypeVar("_S", bound="ServerProcess")
# A port found free can be taken by someone else before the server binds it: try others.
_PORT_TRIES = 5


class ServerProcess:
    """One server process on 127.0.0.1: ``start()`` (or ``with``) starts it on a free port
    the first time and on the same port after that; ``stop()`` and ``kill()`` end it;
    ``restart()`` does both. Subclasses say what to run and how to tell it answers.
    """

    #: The server's name in messages.
    name = "server"
    #: Seconds a start may take before the server counts as not started.
    start_timeout = 10.0
    #: Seconds between two "do you answer?" while it starts.
    poll_interval = 0.05
    #: Seconds an ending server is waited for before ``escalation`` is sent.
    end_timeout = 10.0
    #: ``stop()``'s signal; ``kill()``'s (as a crash would end it); the signal that ends
    #: a server that did not start, or did not end in time.
    stop_signal = signal.SIGTERM
    kill_signal = signal.SIGKILL
    escalation = signal.SIGKILL
    #: How much of the log's end a start that failed shows.
    log_tail = 2000

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what a subclass says --------------------------------------------------------------

    def _command(self) -> list[str]:
        """The server's command line, for ``self.port``."""
        raise NotImplementedError

    def _log_file(self) -> Path:
        """Where the server's output goes (appended)."""
        raise NotImplementedError

    def _answers(self) -> bool:
        """Whether the server on ``self.port`` answers."""
        raise NotImplementedError

    def _spawn(self, command: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start ``command`` with its output to ``log``."""
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603

    # -- running -------------------------------------------------------------------------

    def start(self: _S) -> _S:
        """Start (on a new free port the first time, on the same port after that)."""
        fresh_port = self.port == 0
        for _ in range(_PORT_TRIES):
            if fresh_port:
                self.port = free_port()
            with open(self._log_file(), "ab") as log:
                self.process = self._spawn(self._command(), log)
            if self._wait_ready():
                return self
            self._end(self.escalation)
            if not fresh_port:
                break
        text = self._log_file().read_text(errors="replace")
        raise RuntimeError(
            f"{self.name} did not start on port {self.port}:\n{text[-self.log_tail:]}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._answers():
                return True
            time.sleep(self.poll_interval)
        return False

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=self.end_timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(self.escalation)
            process.wait(timeout=self.end_timeout)

    def stop(self) -> None:
        """End the server (``stop_signal``)."""
        self._end(self.stop_signal)

    def kill(self) -> None:
        """End the server as a crash would (``kill_signal``)."""
        self._end(self.kill_signal)

    def restart(self) -> None:
        """Stop, then start on the same port."""
        self.stop()
        self.start()
