"""A subclass of a built-in store that overrides ``load`` and ``save`` is called for every
read and write: by ``load_versioned`` / ``save_versioned`` and by a session's refresh (the
override points of :class:`refresher.TokenStore`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from refresher import JSONTokenStore, MemoryTokenStore, StaleTokenError, TokenStore
from refresher.testing.emulator import XEmulator

TOKEN = {"access_token": "a" * 40, "refresh_token": "r" * 40, "token_type": "bearer",
         "expires_at": 1_800_000_000.0}


def audited(base: type[TokenStore]) -> Any:
    """``base`` with ``load`` and ``save`` wrapped: each call is noted, then ``super()``'s."""

    class Audited(base):  # type: ignore[valid-type,misc]
        calls: list[str]

        def load(self, account: str) -> Any:
            self.calls.append("load")
            return super().load(account)

        def save(self, account: str, token: Any) -> None:
            self.calls.append("save")
            super().save(account, token)

    Audited.calls = []
    return Audited


@pytest.fixture(params=["memory", "json", pytest.param("redis", marks=pytest.mark.redis),
                        "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Any
           ) -> Iterator[tuple[Any, Callable[[], TokenStore]]]:
    """(an audited subclass of the store, a maker of plain handles on the same data)."""
    made: list[TokenStore] = []

    def kept(store: TokenStore) -> TokenStore:
        made.append(store)
        return store

    if request.param == "memory":
        memory = kept(audited(MemoryTokenStore)())
        yield memory, lambda: memory  # one process: the same object
    elif request.param == "json":
        path = tmp_path / "tokens.json"
        yield kept(audited(JSONTokenStore)(path)), lambda: kept(JSONTokenStore(path))
    elif request.param == "redis":
        from refresher import RedisTokenStore

        url = request.getfixturevalue("shared_redis_server").url
        prefix = f"override-{uuid.uuid4().hex[:8]}:"
        yield (kept(audited(RedisTokenStore)(url, prefix=prefix)),
               lambda: kept(RedisTokenStore(url, prefix=prefix)))
    else:
        request.getfixturevalue("sqlalchemy_installed")
        from refresher import SQLTokenStore

        url = f"sqlite:///{tmp_path / 'tokens.db'}"
        yield kept(audited(SQLTokenStore)(url)), lambda: kept(SQLTokenStore(url))
    for store in made:
        store.close()


def test_the_versioned_methods_go_through_the_subclass(stores) -> None:
    store, plain = stores
    with store.lock("alice"):
        first = store.save_versioned("alice", TOKEN)
        assert store.calls[0] == "save"
        store.calls.clear()
        assert store.load_versioned("alice") == (TOKEN, first)
        assert store.calls == ["load"]
        newer = dict(TOKEN, access_token="b" * 40)
        plain().save("alice", newer)  # someone else, after `first` was read
        with pytest.raises(StaleTokenError):
            store.save_versioned("alice", dict(TOKEN, access_token="c" * 40), first)
    assert plain().load("alice") == newer  # the subclass still fences its saves


def test_a_sessions_refresh_goes_through_the_subclass(stores, x_emulator: XEmulator,
                                                     make_session) -> None:
    store, plain = stores
    session = make_session(store=store, account="alice")
    store.calls.clear()
    session.refresh()
    assert "load" in store.calls and "save" in store.calls
    assert plain().load("alice") == session.token
    assert x_emulator.stats.refreshes == 1


def test_a_store_says_whether_it_keeps_metadata() -> None:
    from refresher import RedisTokenStore, SQLTokenStore

    builtin = [MemoryTokenStore, JSONTokenStore, RedisTokenStore, SQLTokenStore]
    assert all(cls.keeps_metadata for cls in builtin)
    assert not TokenStore.keeps_metadata  # the five methods only: nowhere to record

    class ReadOnlyMetadata(MemoryTokenStore):
        keeps_metadata = False  # said by the class itself: kept, whatever it defines

        def save_metadata(self, account: str, metadata: dict[str, Any]) -> None:
            raise NotImplementedError("read-only")

    assert not ReadOnlyMetadata.keeps_metadata
