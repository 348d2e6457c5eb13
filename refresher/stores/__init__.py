"""Token stores: where the live token pair is kept and who may refresh it."""

from __future__ import annotations

import os
from typing import Any

from .base import MemoryTokenStore, TokenStore, Versioned
from .jsonfile import JSONTokenStore

__all__ = ["TokenStore", "MemoryTokenStore", "JSONTokenStore", "Versioned", "open_store"]

# Locations that are database URLs, for SQLTokenStore.
_SQL_SCHEMES = ("sqlite:", "sqlite+", "postgresql:", "postgresql+", "postgres:")


def open_store(location: str | os.PathLike[str], **options: Any) -> TokenStore:
    """A store from a location: a file path (JSON), a ``redis://`` / ``rediss://`` URL, or a
    database URL (``sqlite:///tokens.db``, ``postgresql://...``, ``postgresql+psycopg://...``).

    ``options`` go to the store's class (``RedisTokenStore``, ``SQLTokenStore``).

    >>> open_store("tokens.json")  # doctest: +SKIP
    JSONTokenStore('/home/me/tokens.json')
    >>> open_store("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> open_store("sqlite:///tokens.db")  # doctest: +SKIP
    SQLTokenStore('sqlite:////home/me/tokens.db', table='refresher_tokens')
    """
    text = os.fspath(location)
    store: TokenStore
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisTokenStore  # optional dependency: imported on demand

        store = RedisTokenStore(text, **options)
        return store
    if text.startswith(_SQL_SCHEMES):
        from .sql import SQLTokenStore  # optional dependency: imported on demand

        store = SQLTokenStore(text, **options)
        return store
    if options:
        raise TypeError(f"options {sorted(options)} apply to Redis and SQL stores only")
    if text == ":memory:":
        return MemoryTokenStore()
    return JSONTokenStore(text)
