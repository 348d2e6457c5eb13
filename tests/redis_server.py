"""Fixtures around :class:`refresher.testing.redis_server.RedisServer` (loopback, a free port,
no persistence).

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
from typing import Callable, Iterator, List

import pytest

from refresher.testing.redis_server import RedisServer, free_port

__all__ = ["RedisServer", "free_port", "redis_binary", "redis_server", "redis_server_factory"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


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
