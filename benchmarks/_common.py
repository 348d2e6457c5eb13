"""Helpers shared by the benchmark scripts: statistics, tables, and local servers.

Run as a script it is the fast HTTP server of ``overhead.py``::

    python benchmarks/_common.py serve-http     # prints the port, serves until stdin closes
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "median",
    "percentile",
    "format_table",
    "emit",
    "FastHTTPServer",
    "redis_unavailable",
    "sql_unavailable",
    "postgres_unavailable",
]

# -- statistics -----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile by the nearest-rank method (p99 of 100 values is the 99th)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- output ---------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.2f}"
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; the first column left-aligned, the others right-aligned.

    A row shorter than ``columns`` ends in a note (``"skipped: ..."``): its last cell is
    written after the others as it is, spanning the remaining columns, and does not widen them.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        counted = row if len(row) >= len(columns) else row[:-1]
        counted = counted + [""] * (len(columns) - len(counted))
        widths = [max(w, len(c)) for w, c in zip(widths, counted, strict=True)]

    def line(values: Sequence[str]) -> str:
        note = None
        if len(values) < len(widths):
            values, note = list(values[:-1]), values[-1]
        parts = [values[0].ljust(widths[0])] if values else []
        parts += [v.rjust(w) for v, w in zip(values[1:], widths[1:len(values)], strict=True)]
        if note is not None:
            parts.append(note)
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(columns)), rule] + [line(r) for r in cells])


def _row_object(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A row as JSON: its cells by column title; a short row's last cell as ``note``."""
    if len(row) >= len(columns):
        return dict(zip(columns, row, strict=True))
    named = dict(zip(columns, row[:-1], strict=False))
    named["note"] = row[-1]
    return named


def emit(as_json: bool, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
         notes: Sequence[str] = (), extra: dict[str, Any] | None = None) -> None:
    """Print the result: a titled table with notes, or one JSON document with ``--json``."""
    if as_json:
        document: dict[str, Any] = {
            "title": title,
            "columns": list(columns),
            "rows": [_row_object(columns, row) for row in rows],
            "notes": list(notes),
        }
        document.update(extra or {})
        print(json.dumps(document, indent=2, default=_json_default))
        return
    print(title)
    print()
    print(format_table(columns, rows))
    if notes:
        print()
        for note in notes:
            print(note)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def progress(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the result."""
    print(message, file=sys.stderr, flush=True)


# -- servers --------------------------------------------------------------------------------


_BODY = b'{"data":{"id":"1000000001","name":"Emulated User","username":"emulated_user"}}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n"
    b"\r\n" + _BODY
)


class _KeepAliveProtocol(asyncio.Protocol):
    """Answers every HTTP/1.1 request with the same 200, headers and body in one write.

    One write per request (and asyncio's TCP_NODELAY on every connection) keeps Nagle's
    algorithm and delayed ACKs from adding 40 ms stalls to keep-alive requests.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for header in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length:]
            answers += 1
        if answers and self.transport is not None:
            self.transport.write(_RESPONSE * answers)


async def _serve_http(host: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_KeepAliveProtocol, host, 0, backlog=128)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    # Serve until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


class FastHTTPServer:
    """A minimal keep-alive HTTP/1.1 server in a child process (asyncio, one write per answer).

    Every request gets ``200`` with a small JSON body shaped like ``/2/users/me``. It runs
    in its own process so that its work does not share the client's interpreter lock.

    >>> with FastHTTPServer() as server:  # doctest: +SKIP
    ...     requests.get(server.url + "/2/users/me").json()["data"]["username"]
    'emulated_user'
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> FastHTTPServer:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve-http", self.host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip():
            self.process.kill()
            raise RuntimeError("the benchmark HTTP server did not start")
        self.port = int(line)
        return self

    def __exit__(self, *exc_info: object) -> None:
        process = self.process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_unavailable() -> str | None:
    """Why the Redis row cannot run (``None`` when it can)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis Python client is not installed"
    try:
        import refresher.stores.redis  # noqa: F401
    except ImportError as exc:
        return f"refresher.stores.redis cannot be imported ({exc})"
    return None


def sql_unavailable() -> str | None:
    """Why the SQL rows cannot run (``None`` when they can): SQLTokenStore and SQLAlchemy."""
    try:
        import refresher.stores.sql  # noqa: F401
    except ImportError as exc:
        if "sqlalchemy" in str(exc).lower():
            return f"SQLAlchemy is not installed ({exc})"
        return "SQL store not available"
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        return "SQLAlchemy is not installed (pip install -e '.[sql]')"
    return None


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL rows cannot run (``None`` when they can): the SQL store, the
    psycopg driver, refresher.testing.postgres_server and the server binaries."""
    why = sql_unavailable()
    if why is not None:
        return why
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install -e '.[sql]')"
    try:
        from refresher.testing.postgres_server import find_bin_dir
    except ImportError:
        return "refresher.testing.postgres_server is not available"
    if find_bin_dir() is None:
        return "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
    return None


def _main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "serve-http":
        asyncio.run(_serve_http(argv[1] if len(argv) > 1 else "127.0.0.1"))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
