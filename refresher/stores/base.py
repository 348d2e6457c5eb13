"""The TokenStore interface, and the in-memory store."""

from __future__ import annotations

import abc
import copy
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

from .._fork import register
from ..errors import LockTimeout, StaleTokenError
from ..refusal import NEEDS_LOGIN, Refusal, record_refusal, refusals_of, without_refusals
from ..token import Token
from .reserved import accounts_only

__all__ = ["TokenStore", "MemoryTokenStore", "Versioned", "NEEDS_LOGIN", "content_version"]


class Versioned(NamedTuple):
    """An account's token with the version it had when read.

    ``version`` is opaque: compare it for equality only, and hand it back to
    :meth:`TokenStore.save_versioned` as ``expected_version``. It is ``None`` when the
    account has no token.
    """

    token: Token | None
    version: str | None


class TokenStore(abc.ABC):
    """Where tokens live between refreshes, keyed by account name.

    A store holds, per account, the current token dict and a small metadata dict (client
    id, endpoints: never a secret). ``lock(account)`` serialises refreshes of that account
    among everyone who shares the store: threads, processes, hosts, depending on the store.

    To write your own store, subclass it (:mod:`refresher.testing.contract` checks the
    result):

    - Implement ``load``, ``save``, ``delete``, ``accounts`` and ``lock``: that is a whole
      store. ``load`` returns a copy; ``lock`` is exclusive among everyone sharing the
      store, re-entrant within a thread, and raises :class:`~refresher.LockTimeout`.
    - ``load_versioned`` / ``save_versioned``, the compare-and-set the coordinator uses,
      then derive from ``load`` and ``save``: the version is a digest of the stored token,
      checked under the lock. A store that can check a version atomically (a counter and
      one conditional write, as the JSON, Redis and SQL stores do) implements the versioned
      pair too, ``_load_versioned(account)`` and ``_save_versioned(account, token,
      expected_version)``, with the promises of the public methods.
    - To keep metadata (where :meth:`mark_needs_login` records X's refusals), implement
      ``load_metadata`` and ``save_metadata``. :attr:`keeps_metadata` says whether a store
      does.
    - ``verify_lock``, for locks that can lapse.

    Which pair serves ``load_versioned`` / ``save_versioned`` is settled once, when the
    class is created (:meth:`__init_subclass__`), by the methods the class itself defines:
    ``_load_versioned`` or ``_save_versioned``, the versioned pair; else ``load`` or
    ``save``, the simple pair; else its base's choice. So a subclass of a built-in store that
    overrides ``load`` and ``save`` (to audit, to encrypt) is called for every read and
    write, a refresh's included, and trades the store's atomic check for the digest one.

    >>> store = MemoryTokenStore()
    >>> with store.lock("alice"):
    ...     store.save("alice", {"access_token": "a", "refresh_token": "r"})
    >>> store.accounts()
    ['alice']
    """

    #: Whether the store records metadata beside the token (``save_metadata`` works). Set
    #: at class creation for a class that defines ``save_metadata``; a class may set it
    #: itself. A store without metadata records no refusal; the contract checks it claims none.
    keeps_metadata: ClassVar[bool] = False
    # Set at class creation: whether the versioned methods use _load_versioned and
    # _save_versioned (True) or derive from load and save (False). See the class docstring.
    _versioned_natively: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Record which pair ``cls`` defines (see the class docstring), and whether it keeps
        metadata unless it says so itself."""
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "_load_versioned" in own or "_save_versioned" in own:
            cls._versioned_natively = True
        elif "load" in own or "save" in own:
            cls._versioned_natively = False
        if "save_metadata" in own and "keeps_metadata" not in own:
            cls.keeps_metadata = True

    @abc.abstractmethod
    def load(self, account: str) -> Token | None:
        """The account's token (a fresh copy), or ``None`` if the store has none."""

    @abc.abstractmethod
    def save(self, account: str, token: Token) -> None:
        """Store ``token`` for ``account``, replacing the previous one. Call under ``lock``."""

    def load_versioned(self, account: str) -> Versioned:
        """The account's token and its version (``Versioned(None, None)`` when none)."""
        if self._versioned_natively:
            return self._load_versioned(account)
        token = self.load(account)
        return Versioned(token, None if token is None else content_version(token))

    def save_versioned(self, account: str, token: Token,
                       expected_version: str | None = None) -> str:
        """Store ``token`` unless the account moved on since ``expected_version``; call
        under ``lock(account)``. Returns the new version.

        ``expected_version=None`` writes unconditionally (a new login). A stale expected
        version raises :class:`~refresher.StaleTokenError` and keeps what is stored. Saving
        the very token already stored is not a conflict (a save retried after its answer
        was lost).
        """
        if self._versioned_natively:
            return self._save_versioned(account, token, expected_version)
        if expected_version is not None:
            current = self.load_versioned(account)
            if current.version is not None and current.version != expected_version \
                    and current.token != dict(token):
                raise StaleTokenError(
                    f"account {account!r} in {self!r} was saved by someone else since it was "
                    "read; the newer token is kept"
                )
        self.save(account, token)
        return self.load_versioned(account).version or content_version(token)

    def _load_versioned(self, account: str) -> Versioned:
        """The versioned pair's read, for stores that check versions atomically."""
        raise NotImplementedError(f"{type(self).__name__} defines _save_versioned only")

    def _save_versioned(self, account: str, token: Token, expected_version: str | None) -> str:
        """The versioned pair's compare-and-set, for stores that check versions atomically."""
        raise NotImplementedError(f"{type(self).__name__} defines _load_versioned only")

    @abc.abstractmethod
    def delete(self, account: str) -> None:
        """Forget the account (token and metadata). Unknown accounts are ignored."""

    @abc.abstractmethod
    def accounts(self) -> list[str]:
        """The names of the accounts that have a token, sorted.

        Names starting with ``refresher:`` are refresher's own entries, not accounts (see
        :mod:`refresher.stores.reserved`): the built-in stores leave them out, and so should
        yours (refresher leaves them out of what it lists either way)."""

    @abc.abstractmethod
    def lock(self, account: str, timeout: float | None = None) -> Any:
        """A context manager that holds the account's refresh lock.

        Raises :class:`~refresher.LockTimeout` when it is not had within ``timeout``
        seconds (``None``: wait for ever).
        """

    def load_metadata(self, account: str) -> dict[str, Any]:
        """What was recorded beside the token (client id, endpoints); ``{}`` if nothing."""
        return {}

    def save_metadata(self, account: str, metadata: dict[str, Any]) -> None:
        """Record ``metadata`` beside the account's token. Never put a secret in it."""
        raise NotImplementedError(f"{type(self).__name__} does not keep metadata")

    def verify_lock(self, account: str) -> None:
        """Raise :class:`~refresher.LockLost` if this thread no longer holds ``lock(account)``.

        Called right before a refresh token is spent, so a holder whose lock lapsed (a Redis
        lock past its lifetime, a lock file deleted by a cleaner) never sends it. Stores whose
        locks cannot lapse keep this default, which checks nothing.
        """

    def mark_needs_login(self, account: str, refresh_token: str, *,
                         client_id: str | None = None, token_url: str | None = None) -> None:
        """Record that X refused ``refresh_token`` as spent when it was sent as
        ``client_id`` to ``token_url``; call under ``lock(account)``.

        Siblings that would send it the same way then stop resending it (see
        :meth:`needs_login` and :mod:`refresher.refusal`). Kept in the metadata; a store
        without metadata records nothing.
        """
        try:
            metadata = dict(self.load_metadata(account))
            metadata.pop("updated_at", None)
            self.save_metadata(account, record_refusal(
                metadata, refresh_token, client_id=client_id, token_url=token_url,
                at=time.time()))
        except NotImplementedError:
            pass

    def refusals(self, account: str, token: Token | None = None) -> list[Refusal]:
        """X's recorded refusals of the account's current refresh token (``[]``: none).

        ``token`` is the account's stored token, when the caller has just loaded it.
        """
        metadata = self.load_metadata(account)  # first: a JSON store answers from one parse
        if NEEDS_LOGIN not in metadata:
            return []
        if token is None:
            token = self.load(account)
        return refusals_of(metadata, (token or {}).get("refresh_token"))

    def needs_login(self, account: str, token: Token | None = None, *,
                    client_id: str | None = None, token_url: str | None = None) -> bool:
        """True when X refused the account's current refresh token: a person must log in.

        With ``client_id`` and ``token_url``, only a refusal to that client at that URL
        counts (another client's or server's refusal says nothing about this one); without,
        any refusal does. ``token`` is the account's stored token, when the caller has just
        loaded it.
        """
        return any(refusal.binds(client_id, token_url)
                   for refusal in self.refusals(account, token))

    def clear_needs_login(self, account: str) -> None:
        """Forget the account's refusal record (X granted a refresh after all); call under
        ``lock(account)``. A store without metadata has nothing to forget."""
        try:
            metadata = dict(self.load_metadata(account))
            if NEEDS_LOGIN in metadata:
                metadata.pop("updated_at", None)
                self.save_metadata(account, without_refusals(metadata))
        except NotImplementedError:
            pass

    def close(self) -> None:
        """Release connections or file handles the store holds. Safe to call twice."""


def content_version(token: Token) -> str:
    """A version for stores that keep no counter: a digest of the token's canonical JSON."""
    text = json.dumps(token, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class MemoryTokenStore(TokenStore):
    """Tokens in a dict: one process, many threads. Useful for tests and short scripts."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._metadata: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()
        register(self)

    def _after_fork_in_child(self) -> None:
        # The child has its own copy of the tokens; locks held by parent threads at the fork
        # would stay held here for ever.
        self._locks = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryTokenStore(accounts={self.accounts()!r})"

    def load(self, account: str) -> Token | None:
        with self._guard:
            token = self._tokens.get(account)
            return copy.deepcopy(token) if token is not None else None

    def save(self, account: str, token: Token) -> None:
        with self._guard:
            self._tokens[account] = copy.deepcopy(dict(token))

    def delete(self, account: str) -> None:
        with self._guard:
            self._tokens.pop(account, None)
            self._metadata.pop(account, None)

    def accounts(self) -> list[str]:
        with self._guard:
            return sorted(accounts_only(self._tokens))

    def load_metadata(self, account: str) -> dict[str, Any]:
        with self._guard:
            return copy.deepcopy(self._metadata.get(account, {}))

    def save_metadata(self, account: str, metadata: dict[str, Any]) -> None:
        with self._guard:
            self._metadata[account] = copy.deepcopy(dict(metadata))

    @contextmanager
    def lock(self, account: str, timeout: float | None = None) -> Iterator[None]:
        with self._guard:
            account_lock = self._locks.setdefault(account, threading.RLock())
        if not account_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise LockTimeout(
                f"could not lock account {account!r} of the memory store within {timeout} s"
            )
        try:
            yield
        finally:
            account_lock.release()
