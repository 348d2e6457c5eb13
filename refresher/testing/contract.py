"""The contract every :class:`~refresher.TokenStore` honours, as a pytest suite.

The built-in stores pass it, and so can yours: subclass :class:`TokenStoreContract` in a
test module and give it a ``store`` fixture (and, when your store can be opened twice on the
same data, an ``other`` fixture returning a second handle, the way another process would
see it)::

    import pytest
    from refresher.testing.contract import TokenStoreContract

    class TestMyStore(TokenStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            store = MyStore(tmp_path / "tokens.db")
            yield store
            store.close()

What it checks: load/save/delete/accounts; ``load`` returns a copy; the versioned read and
the compare-and-set save (:meth:`~refresher.TokenStore.save_versioned` refuses a stale
version with :class:`~refresher.StaleTokenError` and keeps the newer token); the lock
(exclusive between threads and handles, re-entrant in a thread, :class:`~refresher.LockTimeout`
within its timeout, ``verify_lock`` quiet while held); metadata and the needs-login marker,
with who was refused (:mod:`refresher.refusal`), when the store says it keeps metadata
(:attr:`~refresher.TokenStore.keeps_metadata`).

This module imports pytest: import it from tests only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from refresher.errors import LockTimeout, StaleTokenError
from refresher.stores.base import TokenStore

__all__ = ["TokenStoreContract"]

#: A token as X issues it, with a few values a store must keep exactly.
TOKEN: dict[str, Any] = {
    "access_token": "at-contract-1",
    "refresh_token": "rt-contract-1",
    "token_type": "bearer",
    "expires_in": 7200,
    "expires_at": 1_800_007_200.25,
    "scope": "tweet.read users.read offline.access",
}


def _token(n: int, **extra: Any) -> dict[str, Any]:
    return dict(TOKEN, access_token=f"at-contract-{n}", refresh_token=f"rt-contract-{n}",
                **extra)


class TokenStoreContract:
    """Subclass it with a ``store`` fixture (and optionally ``other``); pytest runs the rest."""

    @pytest.fixture
    def store(self) -> Iterator[TokenStore]:
        raise NotImplementedError("give the TokenStoreContract subclass a `store` fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def other(self, store: TokenStore) -> TokenStore:
        """A second handle on the same data; by default the same object."""
        return store

    # -- tokens ----------------------------------------------------------------------------

    def test_an_unknown_account_has_no_token(self, store: TokenStore) -> None:
        assert store.load("nobody") is None
        assert store.load_versioned("nobody") == (None, None)
        assert "nobody" not in store.accounts()

    def test_a_saved_token_loads_back_as_it_was(self, store: TokenStore,
                                                other: TokenStore) -> None:
        token = _token(1, extra={"nested": [1, "two", None]}, name="Zoë ✓")
        with store.lock("alice"):
            store.save("alice", token)
        assert store.load("alice") == token
        assert other.load("alice") == token

    def test_load_returns_a_copy(self, store: TokenStore) -> None:
        with store.lock("alice"):
            store.save("alice", _token(1))
        loaded = store.load("alice")
        assert loaded is not None
        loaded["access_token"] = "mangled"
        assert store.load("alice") == _token(1)

    def test_accounts_are_listed_sorted_and_kept_apart(self, store: TokenStore) -> None:
        for n, name in enumerate(["carol", "alice", "bob"]):
            with store.lock(name):
                store.save(name, _token(n))
        assert store.accounts() == ["alice", "bob", "carol"]
        assert store.load("carol") == _token(0)
        assert store.load("alice") == _token(1)

    def test_delete_forgets_the_account_and_ignores_unknown_ones(self,
                                                                 store: TokenStore) -> None:
        with store.lock("alice"):
            store.save("alice", _token(1))
        store.delete("alice")
        store.delete("nobody")
        assert store.load("alice") is None
        assert store.accounts() == []

    # -- versions: the compare-and-set the coordinator relies on ------------------------------

    def test_every_save_gives_a_new_version(self, store: TokenStore) -> None:
        with store.lock("alice"):
            first = store.save_versioned("alice", _token(1))
            assert store.load_versioned("alice") == (_token(1), first)
            second = store.save_versioned("alice", _token(2), first)
        assert second != first
        assert store.load_versioned("alice") == (_token(2), second)

    def test_a_stale_version_is_refused_and_the_newer_token_kept(self, store: TokenStore,
                                                                 other: TokenStore) -> None:
        with store.lock("alice"):
            store.save("alice", _token(1))
        read = store.load_versioned("alice")
        with other.lock("alice"):
            other.save("alice", _token(2))  # someone else saved since `read`
        with store.lock("alice"):
            with pytest.raises(StaleTokenError):
                store.save_versioned("alice", _token(3), read.version)
        assert store.load("alice") == _token(2)

    def test_saving_the_stored_token_again_is_not_a_conflict(self, store: TokenStore,
                                                             other: TokenStore) -> None:
        with store.lock("alice"):
            store.save("alice", _token(1))
        read = store.load_versioned("alice")
        with other.lock("alice"):
            other.save("alice", _token(2))
        with store.lock("alice"):  # a save retried after its answer was lost
            store.save_versioned("alice", _token(2), read.version)
        assert store.load("alice") == _token(2)

    def test_no_expected_version_writes_whatever_is_stored(self, store: TokenStore) -> None:
        with store.lock("alice"):
            store.save("alice", _token(1))
            store.save_versioned("alice", _token(9), None)  # a new login
        assert store.load("alice") == _token(9)

    # -- the lock ------------------------------------------------------------------------------

    def test_the_lock_keeps_other_threads_out(self, store: TokenStore,
                                              other: TokenStore) -> None:
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.lock("alice"):
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(10)
            with pytest.raises(LockTimeout):
                with other.lock("alice", timeout=0.2):
                    pass
        finally:
            release.set()
            holder.join(10)
        with other.lock("alice", timeout=5):
            pass  # free again

    def test_the_lock_is_re_entrant_in_a_thread(self, store: TokenStore) -> None:
        with store.lock("alice", timeout=5):
            with store.lock("alice", timeout=0.2):
                store.save("alice", _token(1))
        assert store.load("alice") == _token(1)

    def test_verify_lock_is_quiet_while_the_lock_is_held(self, store: TokenStore) -> None:
        with store.lock("alice", timeout=5):
            store.verify_lock("alice")

    # -- metadata and the needs-login marker ----------------------------------------------------

    def test_metadata_is_kept_beside_the_token(self, store: TokenStore) -> None:
        if not store.keeps_metadata:
            pytest.skip(f"{type(store).__name__} keeps no metadata (optional)")
        with store.lock("alice"):
            store.save("alice", _token(1))
        store.save_metadata("alice", {"client_id": "cid", "api_url": "https://api.x.com"})
        metadata = store.load_metadata("alice")
        assert metadata["client_id"] == "cid" and metadata["api_url"] == "https://api.x.com"
        assert store.load("alice") == _token(1)

    def test_the_needs_login_marker_follows_the_refresh_token(self, store: TokenStore) -> None:
        with store.lock("alice"):
            store.save("alice", _token(1))
            store.mark_needs_login("alice", _token(1)["refresh_token"])
        if not store.keeps_metadata:
            assert not store.needs_login("alice")  # nowhere to record it: never claimed
            return
        assert store.needs_login("alice")
        with store.lock("alice"):
            store.save("alice", _token(2))  # a new login: a new refresh token
        assert not store.needs_login("alice")

    def test_a_refusal_is_recorded_with_who_was_refused_and_binds_only_them(
            self, store: TokenStore) -> None:
        url = "https://api.x.com/2/oauth2/token"
        with store.lock("alice"):
            store.save("alice", _token(1))
            store.mark_needs_login("alice", _token(1)["refresh_token"], client_id="other-app",
                                   token_url="http://127.0.0.1:8000/2/oauth2/token")
            store.mark_needs_login("alice", _token(1)["refresh_token"], client_id="my-app",
                                   token_url=url)
        if not store.keeps_metadata:
            assert store.refusals("alice") == []
            return
        refusals = store.refusals("alice")
        assert [(r.client_id, r.token_url) for r in refusals] == [
            ("other-app", "http://127.0.0.1:8000/2/oauth2/token"), ("my-app", url)]
        assert store.needs_login("alice", client_id="my-app", token_url=url)
        assert not store.needs_login("alice", client_id="my-app",
                                     token_url="https://example.com/token")
        assert not store.needs_login("alice", client_id="a-third-app", token_url=url)
        with store.lock("alice"):
            store.clear_needs_login("alice")  # X granted a refresh after all
        assert store.refusals("alice") == [] and "needs_login" not in store.load_metadata(
            "alice")

    def test_close_may_be_called_twice(self, store: TokenStore) -> None:
        store.close()
        store.close()
