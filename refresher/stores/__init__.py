"""Token stores: where the live token pair is kept and who may refresh it."""

from __future__ import annotations

import os
from typing import Any

from .base import MemoryTokenStore, TokenStore, Versioned
from .jsonfile import JSONTokenStore

__all__ = ["TokenStore", "MemoryTokenStore", "JSONTokenStore", "Versioned", "open_store"]


def open_store(location: str | os.PathLike[str], **options: Any) -> TokenStore:
    """A store from a location: a file path (JSON), or ``redis://`` / ``rediss://`` URL.

    >>> open_store("tokens.json")  # doctest: +SKIP
    JSONTokenStore('/home/me/tokens.json')
    >>> open_store("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    """
    text = os.fspath(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisTokenStore  # optional dependency: imported on demand

        store: TokenStore = RedisTokenStore(text, **options)
        return store
    if options:
        raise TypeError(f"options {sorted(options)} apply to Redis stores only")
    if text == ":memory:":
        return MemoryTokenStore()
    return JSONTokenStore(text)
