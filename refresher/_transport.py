"""Which URLs may carry a token: https anywhere, plain http only to this machine."""

from __future__ import annotations

import functools
import ipaddress
import os
from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from .errors import InsecureTransport

__all__ = ["OriginCheck", "is_allowed_transport", "is_loopback_host",
           "require_secure_transport"]


def is_allowed_transport(url: str) -> bool:
    """As oauthlib's ``is_secure_transport``, but plain http to a loopback address is fine.

    The loopback exception is what lets the emulator (and a local callback server) work
    without anyone setting ``OAUTHLIB_INSECURE_TRANSPORT``: such traffic never leaves
    the machine. Runs on every request: https is decided without parsing, and the verdict
    for any other origin is cached.
    """
    if url[:8].lower() == "https://":
        return True
    scheme, _, rest = url.partition("://")
    origin = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    # The environment last: os.environ.get costs more than the cached verdict.
    return _allowed_origin(scheme.lower(), origin) or bool(
        os.environ.get("OAUTHLIB_INSECURE_TRANSPORT"))


@functools.lru_cache(maxsize=256)
def _allowed_origin(scheme: str, netloc: str) -> bool:
    if scheme != "http":
        return False
    # The host as urllib3 reads it, since urllib3 is what connects: for
    # "http://evil.com\\@127.0.0.1/" that is evil.com, where urlsplit says 127.0.0.1.
    try:
        host = (parse_url(f"http://{netloc}").host or "").lower().strip("[]")
    except LocationParseError:
        return False
    return is_loopback_host(host) or host.endswith(".localhost")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure_transport(url: str) -> None:
    """Raise :class:`~refresher.InsecureTransport` (an oauthlib ``InsecureTransportError``)
    for a URL that may not carry a token."""
    if not is_allowed_transport(url):
        raise InsecureTransport(
            f"OAuth 2 requires https (plain http only to this machine): {_origin(url)}; "
            "use an https URL, or a loopback address (127.0.0.1, localhost) for a local server"
        )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


class OriginCheck:
    """:func:`require_secure_transport` for the URL objects of httpx and aiohttp, on every
    request: https passes at once; any other origin is checked in full once, and when it
    passed on its own merits (not because ``OAUTHLIB_INSECURE_TRANSPORT`` is set) its
    scheme, host and port are remembered (at most 64), so a loopback server costs no
    string and no parse per request."""

    __slots__ = ("_passed",)

    def __init__(self) -> None:
        self._passed: set[tuple[str, Any, Any]] = set()

    def __call__(self, url: Any) -> None:
        scheme = url.scheme
        if scheme == "https":
            return
        key = (scheme, url.host, url.port)
        if key in self._passed:
            return
        require_secure_transport(str(url))
        if not os.environ.get("OAUTHLIB_INSECURE_TRANSPORT") and len(self._passed) < 64:
            self._passed.add(key)

