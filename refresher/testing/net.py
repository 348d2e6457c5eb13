"""Loopback networking for tests: a port to listen on, or one that nobody listens on.

>>> port = free_port()
>>> 0 < port < 65536
True
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago.

    Bound and released at once: a server may listen on it next, or a test may use it as an
    address where nothing answers (connections to it are refused).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
