"""The HTTP/1.1 server under an emulator: it frames requests (``Content-Length`` or chunked),
hands each to the emulator as a :class:`Request`, and writes the :class:`Response` back, at
once or trickled a byte at a time. It keeps connections alive, sets ``TCP_NODELAY``, tracks
open connections so that stopping cuts them, and never logs a query string.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from refresher.testing.emulator._messages import Request, Response, problem

logger = logging.getLogger("refresher.testing")


class Server(http.server.ThreadingHTTPServer):
    """A thread per connection, each request answered by ``answer(request)``."""

    daemon_threads = True
    # The default backlog of 5 drops connections when tests open dozens at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], answer: Callable[[Request], Response]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.answer = answer
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer, or stop() cutting a connection, is no failure of ours.
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)

    def track(self, connection: socket.socket) -> None:
        """Remember an open connection, for :meth:`close_connections`."""
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a closed connection."""
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Cut every open connection (kept-alive ones would otherwise go on being served)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and
        # the client's delayed ACK hold the body back ~40 ms on every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(problem(400, "Bad Request", "Malformed request body framing."))
            return
        parts = urllib.parse.urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.answer(request)
        except Exception:
            logger.exception("X emulator failed on %s %s", self.command, parts.path)
            response = problem(500, "Internal Server Error", "The emulator failed.")
        self._write(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537).strip():
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.trickle <= 0:
            self.wfile.write(response.body)
            return
        self.wfile.flush()
        for index in range(len(response.body)):
            # Real time, whatever the emulator's clock: it is the client's socket that waits.
            time.sleep(response.trickle)
            try:
                self.wfile.write(response.body[index:index + 1])
                self.wfile.flush()
            except OSError:  # the client gave up, or the emulator stopped
                self.close_connection = True
                return

    # Request lines are logged without their query: it may carry codes or tokens.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urllib.parse.urlsplit(getattr(self, "path", "")).path
        logger.debug("%s %s -> %s", getattr(self, "command", "-"), path, code)

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("malformed request from %s", self.address_string())

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s", format % args)
