"""SendGate: a token request whose caller gave up is never written to the socket.

A caller waits for its token request only until the grant's deadline; the request itself runs
in a worker thread that may still be resolving the name or connecting then (``getaddrinfo``
cannot be interrupted). If the worker sent the refresh token afterwards, X would rotate the
pair while nobody waits for it, and the next refresh would resend a spent token.

So each attempt has a gate, switched under a lock: the worker *commits* it
(``WAITING -> SENT``) right before the first byte of the request is written, and the caller
*abandons* it at the deadline (``WAITING -> ABANDONED``). Exactly one of them wins, and the
caller knows for sure whether anything went out.

The endpoint's own :class:`requests.Session` mounts :class:`GatedHTTPAdapter`, whose urllib3
connections consult the gate of the current thread (:func:`active`): before resolving and
connecting (a caller who gave up costs no lookup), and before the request's first byte
(``request()``, and every ``send()``, where http.client writes and connects when it has no
socket yet). A session of the caller's cannot be hooked; its attempts commit when they are
handed over, after the name was resolved in the worker (see the endpoint).
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["GateState", "SendGate", "CallerGaveUp", "active", "GatedHTTPAdapter"]


class GateState(enum.Enum):
    """Where an attempt's request stands."""

    WAITING = "waiting"      # nothing written yet; the caller still waits
    SENT = "sent"            # the worker committed: the request is (being) written
    ABANDONED = "abandoned"  # the caller gave up first: nothing is ever written


class CallerGaveUp(Exception):  # noqa: N818 — a signal, not an error
    """Raised in the worker where it would have written to a gate its caller abandoned.

    Deliberately not an :class:`OSError`: urllib3 and requests let it through unchanged
    (and close the connection), instead of retrying or wrapping it.
    """


class SendGate:
    """One attempt's gate. ``exact`` is False when the commit happens at hand-over to a
    session that may resolve and connect after it (a caller's own session); the worker sets
    it before it commits."""

    def __init__(self, *, exact: bool = True) -> None:
        self.exact = exact
        self._lock = threading.Lock()
        self._state = GateState.WAITING

    @property
    def state(self) -> GateState:
        """The gate's state now."""
        return self._state

    def check(self) -> None:
        """Raise :class:`CallerGaveUp` if the caller abandoned the gate."""
        if self._state is GateState.ABANDONED:
            raise CallerGaveUp()

    def commit(self) -> None:
        """``WAITING -> SENT`` (nothing if already SENT); :class:`CallerGaveUp` if abandoned."""
        with self._lock:
            if self._state is GateState.ABANDONED:
                raise CallerGaveUp()
            self._state = GateState.SENT

    def abandon(self) -> GateState:
        """``WAITING -> ABANDONED``; returns the state the gate is left in (``SENT`` if the
        worker committed first)."""
        with self._lock:
            if self._state is GateState.WAITING:
                self._state = GateState.ABANDONED
            return self._state


_local = threading.local()


@contextlib.contextmanager
def active(gate: SendGate) -> Iterator[SendGate]:
    """Make ``gate`` the one gated connections consult in this thread, for the block."""
    previous = getattr(_local, "gate", None)
    _local.gate = gate
    try:
        yield gate
    finally:
        _local.gate = previous


def _current() -> SendGate | None:
    return getattr(_local, "gate", None)


class _GatedConnectionMixin:
    """Consults the thread's gate before connecting and before the request's first byte."""

    _in_connect = False

    def connect(self) -> None:
        gate = _current()
        if gate is not None:
            gate.check()  # a caller who gave up costs no name lookup, no connection
        self._in_connect = True  # a proxy's CONNECT line is not the request
        try:
            super().connect()  # type: ignore[misc]
        finally:
            self._in_connect = False

    def request(self, *args: Any, **kwargs: Any) -> None:
        gate = _current()
        if gate is not None:
            if getattr(self, "sock", None) is None:
                self.connect()  # resolve and connect first: they may outlast the caller
            gate.commit()
        super().request(*args, **kwargs)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        # Every write goes through here (http.client connects here when it has no socket).
        gate = _current()
        if gate is not None:
            if self._in_connect:
                gate.check()
            else:
                if getattr(self, "sock", None) is None:
                    self.connect()
                gate.commit()
        super().send(data)  # type: ignore[misc]


class GatedHTTPConnection(_GatedConnectionMixin, HTTPConnection):
    """urllib3's HTTP connection, gated."""


class GatedHTTPSConnection(_GatedConnectionMixin, HTTPSConnection):
    """urllib3's HTTPS connection, gated."""


class GatedHTTPConnectionPool(HTTPConnectionPool):
    """A pool of gated HTTP connections."""

    ConnectionCls = GatedHTTPConnection


class GatedHTTPSConnectionPool(HTTPSConnectionPool):
    """A pool of gated HTTPS connections."""

    ConnectionCls = GatedHTTPSConnection


_GATED_POOLS = {"http": GatedHTTPConnectionPool, "https": GatedHTTPSConnectionPool}


class GatedHTTPAdapter(HTTPAdapter):
    """A requests adapter whose connections (direct, or through an http/https proxy)
    consult the thread's :class:`SendGate`. SOCKS proxies are not gated: see
    :meth:`gates`."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_GATED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_GATED_POOLS)
        return manager

    @staticmethod
    def gates(proxy: str | None) -> bool:
        """Whether a request going through ``proxy`` (``None``: direct) is gated."""
        return proxy is None or not proxy.lower().startswith("socks")
