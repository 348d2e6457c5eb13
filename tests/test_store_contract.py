"""Every built-in store, and a minimal third-party one, passes the public store contract
(:mod:`refresher.testing.contract`)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from refresher import JSONTokenStore, LockTimeout, MemoryTokenStore, TokenStore
from refresher.testing.contract import TokenStoreContract
from refresher.testing.redis_server import RedisServer


class TestMemoryTokenStore(TokenStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[TokenStore]:
        yield MemoryTokenStore()


class TestJSONTokenStore(TokenStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Any) -> Iterator[TokenStore]:
        yield JSONTokenStore(tmp_path / "tokens.json")

    @pytest.fixture
    def other(self, tmp_path: Any) -> TokenStore:
        return JSONTokenStore(tmp_path / "tokens.json")  # a second object on the same file


@pytest.mark.redis
class TestRedisTokenStore(TokenStoreContract):
    @pytest.fixture
    def store(self, redis_server: RedisServer) -> Iterator[TokenStore]:
        from refresher import RedisTokenStore

        store = RedisTokenStore(redis_server.url)
        yield store
        store.close()

    @pytest.fixture
    def other(self, redis_server: RedisServer) -> Iterator[TokenStore]:
        from refresher import RedisTokenStore

        other = RedisTokenStore(redis_server.url)  # another client, as another host has
        yield other
        other.close()


class TestSQLTokenStoreOnSQLite(TokenStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Any, sqlalchemy_installed: None) -> Iterator[TokenStore]:
        from refresher import SQLTokenStore

        store = SQLTokenStore(f"sqlite:///{tmp_path / 'tokens.db'}")
        yield store
        store.close()

    @pytest.fixture
    def other(self, store: TokenStore, tmp_path: Any) -> Iterator[TokenStore]:
        from refresher import SQLTokenStore

        other = SQLTokenStore(f"sqlite:///{tmp_path / 'tokens.db'}")  # as another process
        yield other
        other.close()


class TestSQLTokenStoreOnPostgreSQL(TokenStoreContract):
    @pytest.fixture
    def store(self, postgres_url: str) -> Iterator[TokenStore]:
        from refresher import SQLTokenStore

        store = SQLTokenStore(postgres_url)
        yield store
        store.close()

    @pytest.fixture
    def other(self, store: TokenStore, postgres_url: str) -> Iterator[TokenStore]:
        from refresher import SQLTokenStore

        other = SQLTokenStore(postgres_url)  # another engine, as another host has
        yield other
        other.close()


class DictStore(TokenStore):
    """What a user writes for their own database: the five methods, nothing more."""

    def __init__(self) -> None:
        self._tokens: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, threading.RLock] = {}

    def load(self, account: str) -> dict[str, Any] | None:
        token = self._tokens.get(account)
        return copy.deepcopy(token) if token is not None else None

    def save(self, account: str, token: dict[str, Any]) -> None:
        self._tokens[account] = copy.deepcopy(token)

    def delete(self, account: str) -> None:
        self._tokens.pop(account, None)

    def accounts(self) -> list[str]:
        return sorted(self._tokens)

    @contextmanager
    def lock(self, account: str, timeout: float | None = None) -> Iterator[None]:
        lock = self._locks.setdefault(account, threading.RLock())
        if not lock.acquire(timeout=-1 if timeout is None else timeout):
            raise LockTimeout(f"account {account!r} is locked")
        try:
            yield
        finally:
            lock.release()


class TestAMinimalThirdPartyStore(TokenStoreContract):
    """The defaults of TokenStore (versions as digests, checked under the lock) suffice."""

    @pytest.fixture
    def store(self) -> Iterator[TokenStore]:
        yield DictStore()
