"""Token stores: where the live token pair is kept and who may refresh it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..keys import KeySpec, keys_from_environment, parse_keys
from .base import MemoryTokenStore, TokenStore, Versioned
from .jsonfile import JSONTokenStore

__all__ = ["TokenStore", "MemoryTokenStore", "JSONTokenStore", "Versioned", "open_store",
           "store_folder"]

# URL schemes of the stores open_store knows (SQL ones with or without a "+driver").
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")
# A location's URL scheme: two characters at least, so "C:\tokens.json" stays a Windows path;
# "_" too, as SQLAlchemy's driver names have it (postgresql+psycopg_async).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+._-]+):(//)?")


def open_store(location: str | os.PathLike[str], key: KeySpec | None = None,
               **options: Any) -> TokenStore:
    """A store from a location: a file path (JSON), a ``redis://`` / ``rediss://`` /
    ``unix://`` URL, or a database URL (``sqlite:///tokens.db``, ``postgresql://...``,
    ``postgresql+psycopg://...``).

    With ``key`` (one key, several comma-separated or in a list: see
    :class:`~refresher.EncryptedTokenStore`), or else when ``REFRESHER_KEY`` is set, the
    store is wrapped in an :class:`~refresher.EncryptedTokenStore`. A key that cannot be
    had (malformed, a ``keyring:NAME`` with no keyring backend) raises
    :class:`~refresher.ConfigurationError` before anything is opened: never a store in
    the clear instead.

    Any other URL (``mysql://``, ``https://``, ``file://``...) raises
    :class:`~refresher.ConfigurationError`, naming its scheme and the ones refresher knows
    (never the rest of the URL, which may hold a password), before anything is created. A
    path with a colon further in (``C:\\tokens.json``, ``backup:1.json``) is a JSON file.
    ``options`` go to the store's class (``RedisTokenStore``, ``SQLTokenStore``).

    >>> open_store("tokens.json")  # doctest: +SKIP
    JSONTokenStore('/home/me/tokens.json')
    >>> open_store("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> open_store("sqlite:///tokens.db")  # doctest: +SKIP
    SQLTokenStore('sqlite:////home/me/tokens.db', table='refresher_tokens')
    """
    keys = keys_from_environment() if key is None else parse_keys(key)
    if keys is None:
        return _open_plain(location, options)
    from .encrypted import EncryptedTokenStore, require_cryptography

    require_cryptography()  # before the store is opened: without it, nothing is
    return EncryptedTokenStore(_open_plain(location, options), keys)


def _open_plain(location: str | os.PathLike[str], options: dict[str, Any]) -> TokenStore:
    """The store at ``location``, as it is (see :func:`open_store`)."""
    text = os.fspath(location)
    kind = _kind(text)
    store: TokenStore
    if kind == "redis":
        from .redis import RedisTokenStore  # optional dependency: imported on demand

        store = RedisTokenStore(text, **options)
        return store
    if kind == "sql":
        from .sql import SQLTokenStore  # optional dependency: imported on demand

        store = SQLTokenStore(text, **options)
        return store
    if options:
        raise TypeError(f"options {sorted(options)} apply to Redis and SQL stores only")
    if text == ":memory:":
        return MemoryTokenStore()
    return JSONTokenStore(text)


def store_folder(location: str | os.PathLike[str]) -> Path | None:
    """The folder on this machine that the store at ``location`` keeps its file in (a
    JSON file's, a SQLite database's), or ``None`` (a server, or no file). Creates nothing.

    >>> str(store_folder("/srv/bot/tokens.json"))
    '/srv/bot'
    """
    text = os.fspath(location)
    kind = _kind(text)
    if kind == "json":
        return Path(os.path.expanduser(text)).absolute().parent if text != ":memory:" else None
    if kind != "sql" or not text.lower().startswith("sqlite"):
        return None
    rest = text.split("://", 1)[1] if "://" in text else ""
    path, _, query = rest[1:].partition("?") if rest.startswith("/") else ("", "", "")
    if not path or path == ":memory:" or "uri=true" in query.lower():
        return None
    return Path(path).absolute().parent


def _kind(text: str) -> str:
    """``"redis"``, ``"sql"`` or ``"json"`` (a path); ConfigurationError for an unknown URL."""
    match = _SCHEME.match(text)
    if match is None:
        return "json"
    scheme = match.group(1).lower()
    if scheme in _REDIS_SCHEMES and match.group(2):
        return "redis"
    if scheme.split("+", 1)[0] in _SQL_SCHEMES:
        return "sql"
    if match.group(2) is None:
        return "json"  # "backup:1.json": a file name with a colon, not a URL
    hint = " (for a JSON file, give its path itself)" if scheme == "file" else ""
    raise ConfigurationError(
        f"{scheme}:// is not a token store refresher knows{hint}: a store is a JSON file's "
        "path, a redis://, rediss:// or unix:// URL (Redis), or a sqlite:///, postgresql:// "
        "or postgres:// URL (SQL, also with a +driver, as postgresql+psycopg://)"
    )
