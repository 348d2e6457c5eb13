"""The Redis store's connection: redis-py imported on demand, the client made from a URL (or
the user's own), the server's name, errors and replies as the store reports and reads them.
A password never reaches a message.

Nothing here imports redis-py at import time: :func:`import_redis` does, when a
:class:`~refresher.stores.redis.RedisTokenStore` is made, so ``import refresher`` works
without the optional dependency.
"""

from __future__ import annotations

from typing import Any

from ..errors import MissingStoreExtra, TokenStoreError
from ._urls import scrub_url, url_password

__all__ = ["import_redis", "open_client", "client_password",
           "describe_server", "server_failure", "decode_reply", "glob_escape"]

# Defaults for clients made from a URL: fail in seconds, not never, when Redis is gone,
# and retry twice, quickly, so a connection broken by a Redis restart is replaced.
_SOCKET_TIMEOUT = 5.0
_RETRIES = 2


def import_redis() -> Any:
    """The redis package; when it is absent, an error that says how to install it."""
    try:
        import redis
    except ImportError:
        raise MissingStoreExtra("RedisTokenStore needs the redis package", extra="redis",
                                name="redis") from None
    return redis


def open_client(redis: Any, client_or_url: Any, options: dict[str, Any]) -> tuple[Any, bool]:
    """The store's client, and whether the store owns it (and so closes it).

    A URL gives a new client (``options`` go to it); a client is used as it is, and then
    ``options`` are a :class:`TypeError`.
    """
    if isinstance(client_or_url, str):
        return _client_from_url(redis, client_or_url, options), True
    if options:
        raise TypeError(
            f"options {sorted(options)} apply only when a URL is given, not a client"
        )
    return client_or_url, False


def _client_from_url(redis: Any, url: str, options: dict[str, Any]) -> Any:
    """A :class:`redis.Redis` for ``url``, with refresher's timeout and retry defaults
    under ``options``; an invalid URL is a :class:`~refresher.TokenStoreError` that does
    not show its password."""
    options = dict(options)
    options.setdefault("socket_timeout", _SOCKET_TIMEOUT)
    options.setdefault("socket_connect_timeout", _SOCKET_TIMEOUT)
    if "retry" not in options:
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        options["retry"] = Retry(ExponentialBackoff(cap=0.25, base=0.025), _RETRIES)
    try:
        return redis.Redis.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        detail = str(exc)
        password = url_password(url)
        if password:
            detail = detail.replace(password, "***")
        shown = scrub_url(url, "Redis URL")
        raise TokenStoreError(f"invalid Redis URL {shown}: {detail}") from None


def client_password(client: Any) -> str | None:
    """The password ``client`` connects with, if any: to keep it out of messages."""
    try:
        kwargs = dict(client.connection_pool.connection_kwargs)
    except AttributeError:
        return None
    password: str | None = kwargs.get("password")
    return password


def describe_server(client: Any) -> str:
    """``redis://host:port/db`` (or ``unix:///path?db=N``) for messages; no credentials."""
    try:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        db = kwargs.get("db", 0)
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}?db={db}"
        scheme = "rediss" if "SSL" in getattr(pool.connection_class, "__name__", "") else "redis"
        return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
    except AttributeError:
        return type(client).__name__


def server_failure(server: str, password: str | None, doing: str,
                   exc: BaseException) -> TokenStoreError:
    """A TokenStoreError for ``exc``, naming ``server`` and never ``password``.

    >>> print(server_failure("redis://db:6379/0", "s3cret", "save 'k'",
    ...                      ConnectionError("AUTH s3cret refused")))
    Redis token store at redis://db:6379/0 failed to save 'k': ConnectionError: AUTH *** refused
    """
    detail = str(exc) or type(exc).__name__
    if password:
        detail = detail.replace(password, "***")
    return TokenStoreError(
        f"Redis token store at {server} failed to {doing}: {type(exc).__name__}: {detail}"
    )


def decode_reply(raw: Any) -> str | None:
    """A Redis reply as text (redis-py returns bytes unless the client decodes them)."""
    if raw is None:
        return None
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN ``MATCH`` pattern.

    >>> glob_escape("app[1]:")
    'app\\\\[1\\\\]:'
    """
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
