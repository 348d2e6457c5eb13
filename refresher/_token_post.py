"""One token POST as a pool thread runs it, the sessions it goes through, and what its
failure says about the request.

The endpoint's own session is gated (:mod:`refresher._sendgate`): nothing is written once the
caller gave up, and the gate says whether anything was. A session of the caller's cannot be
hooked below ``Session.post``; for it the worker resolves the host name itself first (the
step that cannot be interrupted and that hiccups), checks the gate, and commits when it
hands the request over. What remains open there: the session's own second lookup (instant
with a caching resolver, as slow as the first without one) and its connect (bounded by the
deadline). A request that goes out late that way is a late answer, handed on as any other;
its error says ``request_sent=None``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import parse_url

from ._fork import PerProcess, register
from ._sendgate import GatedHTTPAdapter, GateState, SendGate

__all__ = ["TokenPost", "BodyCutOff", "was_sent", "why_unreached", "gated_session",
           "fresh_pools", "MIN_TIMEOUT", "SharedSessions", "SHARED_SESSIONS"]

log = logging.getLogger(__name__)

#: The shortest timeout a connect or a read gets.
MIN_TIMEOUT = 0.1
# An answer larger than this is not a token: reading stops (a misconfigured URL, a hostile server).
MAX_ANSWER_BYTES = 1 << 20


class BodyCutOff(Exception):  # noqa: N818 — an outcome the endpoint words
    """The answer's headers came, and its body stopped or broke before its end."""


class SharedSessions:
    """This process's gated sessions, one per token URL: every endpoint of a URL (a
    thousand users' sessions on one server) shares one connection pool, so each keeps no
    connection of its own. Thread-safe (the gate is per attempt, in its worker thread);
    a child forked after use makes its own on first use; as many as the process has token
    URLs (a handful)."""

    def __init__(self) -> None:
        self._by_url: dict[str, PerProcess[requests.Session]] = {}
        self._guard = threading.Lock()
        register(self)

    def _after_fork_in_child(self) -> None:
        self._guard = threading.Lock()  # a parent thread may have held it at the fork

    def get(self, url: str) -> requests.Session:
        """The session for ``url`` in this process."""
        holder = self._by_url.get(url)
        if holder is None:
            with self._guard:
                holder = self._by_url.setdefault(url, PerProcess(gated_session))
        return holder.get()

    def close(self) -> None:
        """Close this process's sessions (their idle connections); the next use makes new
        ones."""
        with self._guard:
            holders, self._by_url = list(self._by_url.values()), {}
        for holder in holders:
            session = holder.peek()
            if session is not None:
                session.close()


def gated_session() -> requests.Session:
    """A :class:`requests.Session` whose http and https connections are gated."""
    session = requests.Session()
    adapter = GatedHTTPAdapter()  # no retries below ours: each try is one gated request
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


#: This process's token sessions, one per token URL.
SHARED_SESSIONS = SharedSessions()


class TokenPost:
    """The POST of one attempt: :meth:`work` is what the pool thread runs.

    Connecting must end by ``ends``, the caller's deadline (time spent queued counts); each
    read may take ``timeout`` seconds, past that deadline too: a sent request's answer is
    still wanted after its caller gave up. ``read_until`` (``time.monotonic()``) ends the
    body read at the latest, whether or not the caller still waits.
    """

    def __init__(self, session: requests.Session, url: str, data: dict[str, str],
                 auth: requests.auth.AuthBase | None, *, timeout: float, ends: float,
                 read_until: float) -> None:
        self._session, self._url, self._data, self._auth = session, url, data, auth
        self._timeout, self._ends, self._read_until = timeout, ends, read_until

    def work(self, gate: SendGate) -> requests.Response:
        """Resolve (ungated sessions), POST, read the whole body within its bounds."""
        # Here, not in the caller: finding the proxy may resolve names on some platforms.
        proxy = _proxy_for(self._session, self._url)
        adapter = self._session.get_adapter(self._url)
        gate.exact = isinstance(adapter, GatedHTTPAdapter) and adapter.gates(proxy)
        if not gate.exact:
            _resolve(proxy or self._url)  # in the worker, where a slow lookup may stay
            gate.commit()
        connect = max(MIN_TIMEOUT, min(self._timeout, self._ends - time.monotonic()))
        response = self._session.post(
            self._url, data=self._data, auth=self._auth,
            headers={"Accept": "application/json"}, timeout=(connect, self._timeout),
            allow_redirects=False, stream=True,
        )
        try:
            self._read_body(response)
        finally:
            response.close()
        return response

    def _read_body(self, response: requests.Response) -> None:
        body = bytearray()
        try:
            for chunk in response.iter_content(chunk_size=8192):
                body += chunk
                if time.monotonic() > self._read_until:
                    raise BodyCutOff("the deadline passed while the body was arriving")
                if len(body) > MAX_ANSWER_BYTES:
                    raise BodyCutOff(f"more than {MAX_ANSWER_BYTES} bytes: not a token answer")
        except requests.RequestException as exc:
            raise BodyCutOff(type(exc).__name__) from None
        response._content = bytes(body)
        setattr(response, "_content_consumed", True)  # noqa: B010 — not in requests' stubs


def fresh_pools(session: requests.Session) -> None:
    """New, empty connection pools for ``session``'s HTTPAdapters (as requests does when it
    unpickles one), so a forked child does not reuse the parent's sockets. The old pools are
    dropped unused: closing them could take a lock a parent thread held at the fork."""
    for adapter in list(session.adapters.values()):
        if not isinstance(adapter, HTTPAdapter):
            continue
        try:
            adapter.init_poolmanager(getattr(adapter, "_pool_connections", DEFAULT_POOLSIZE),
                                     getattr(adapter, "_pool_maxsize", DEFAULT_POOLSIZE),
                                     block=getattr(adapter, "_pool_block", DEFAULT_POOLBLOCK))
            adapter.proxy_manager = {}
        except Exception:  # a subclass of the caller's: its pools stay as they are
            log.warning("could not give %s new connection pools after a fork", adapter,
                        exc_info=True)


def _proxy_for(session: requests.Session, url: str) -> str | None:
    settings = session.merge_environment_settings(url, {}, None, None, None)
    proxy = requests.utils.select_proxy(url, settings.get("proxies") or {})
    return proxy or None


def _resolve(url: str) -> None:
    parsed = parse_url(url)
    host = (parsed.host or "").strip("[]")
    if host:
        socket.getaddrinfo(host, parsed.port or 443, type=socket.SOCK_STREAM)


def was_sent(gate: SendGate, error: BaseException | None,
             session: requests.Session, url: str) -> bool | None:
    """Whether the request of an attempt that ended in ``error`` reached the socket.

    Gated: the gate knows. Handed over to a caller's session: a failure to connect proves
    nothing was written by the last try, and by earlier ones too when the session never
    resends a POST after writing it (its retries, if any, do not allow POST).
    """
    if gate.state is not GateState.SENT:
        return False
    if gate.exact:
        return True
    if isinstance(error, (requests.Timeout, BodyCutOff)) and not isinstance(
            error, requests.ConnectTimeout):
        return True
    if _connect_failure(error) is not None and _never_resends_post(session, url):
        return False
    return None


def why_unreached(error: BaseException | None) -> str | None:
    """A plain reason when ``error`` is a failure to resolve or connect, else ``None``."""
    reason = _connect_failure(error)
    if isinstance(reason, NameResolutionError):
        host = getattr(getattr(reason, "conn", None), "host", None)
        return f"the name {host!r} did not resolve" if host else "the host name did not resolve"
    if isinstance(reason, socket.gaierror):
        return f"the name did not resolve ({reason})"
    if isinstance(reason, NewConnectionError):
        return "connection refused" if "refused" in str(reason).lower() else \
            f"cannot connect ({str(reason).rsplit(': ', 1)[-1]})"
    if reason is not None:
        return "connecting timed out"
    return None


def _connect_failure(error: BaseException | None) -> BaseException | None:
    """The urllib3 error (or the worker's own lookup's) behind a failure to connect."""
    if isinstance(error, socket.gaierror):
        return error
    if isinstance(error, requests.ConnectTimeout) and not _reason(error):
        return error
    reason = _reason(error)
    return reason if isinstance(reason, (NewConnectionError, ConnectTimeoutError)) else None


def _reason(error: BaseException | None) -> BaseException | None:
    inner: Any = error.args[0] if isinstance(error, requests.RequestException) and \
        error.args else None
    reason = getattr(inner, "reason", inner)
    return reason if isinstance(reason, BaseException) else None


def _never_resends_post(session: requests.Session, url: str) -> bool:
    retry: Any = getattr(session.get_adapter(url), "max_retries", None)
    if retry is None:
        return False
    if not retry.total and retry.total is not None:  # 0 or False: one try only
        return True
    allowed: Any = getattr(retry, "allowed_methods", None)  # None or False: every method
    return bool(allowed) and "POST" not in {str(m).upper() for m in allowed}
