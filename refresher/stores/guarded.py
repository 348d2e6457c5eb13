"""GuardedAccount: one account of a store, and its locks, as the coordinator uses them.

A store may be the user's own, whose driver raises its own exceptions
(``sqlite3.OperationalError``, a connection reset). Whatever it raises reaches the
coordinator as a :class:`~refresher.TokenStoreError` with the original chained, so the rule
"a granted pair is kept whatever the store does" needs one ``except`` clause, not one per
driver. The thread lock in front of the store's lock (one refresh per process at a time)
lives here too, with the same bounded wait; and X's recorded refusals of the account's
refresh token as they bind this sender, one client id at one token URL (the record and its
rules are :mod:`refresher.refusal`'s).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .._fork import register
from ..errors import LockTimeout, ReauthorizationRequired, RefresherError, TokenStoreError
from ..inflight import AnswerPending, pending_until, with_pending
from ..refusal import Refusal, binding
from ..shutdown import in_flight
from ..token import Token
from .base import TokenStore, Versioned
from .reserved import check_account_name
from .sealed import refuse_sealed

__all__ = ["GuardedAccount"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class GuardedAccount:
    """``store``'s methods for ``account``, each failure a :class:`~refresher.TokenStoreError`;
    and the process's thread lock for the account. ``sender`` is the client id and token URL
    this process sends the refresh token with (what a refusal is recorded against)."""

    def __init__(self, store: TokenStore, account: str, *,
                 sender: tuple[str | None, str | None] = (None, None)) -> None:
        self.store = store
        self.account = check_account_name(account)  # every front end comes through here
        self.thread_lock = threading.Lock()
        self.sender = sender
        self._refusals: list[Refusal] = []  # as read by the last check_refusals
        register(self)

    def _after_fork_in_child(self) -> None:
        # A parent thread (a background refresh) may have held it at the fork: the thread
        # stayed in the parent, and nothing would ever release the copy held here.
        self.thread_lock = threading.Lock()

    def acquire_thread_lock(self, timeout: float | None, *, wait: bool = True) -> bool:
        """Take the thread lock: False at once when ``wait`` is off and it is taken;
        :class:`~refresher.LockTimeout` after ``timeout`` seconds (``None``: no limit)."""
        if not wait:
            return self.thread_lock.acquire(blocking=False)
        if self.thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            return True
        raise LockTimeout(
            f"account {self.account!r}: another thread of this process has been refreshing "
            f"for more than lock_timeout={timeout:g} s (a slow token endpoint?); "
            "the stored token is kept, try again later"
        )

    @contextlib.contextmanager
    def thread_held(self, timeout: float | None) -> Iterator[None]:
        """The thread lock, held for the block."""
        self.acquire_thread_lock(timeout)
        try:
            yield
        finally:
            self.thread_lock.release()

    def __repr__(self) -> str:
        return f"GuardedAccount({self.store!r}, {self.account!r})"

    def load(self) -> Token | None:
        return self._readable(self._call("read", self.store.load, self.account))

    def load_versioned(self) -> Versioned:
        stored = self._call("read", self.store.load_versioned, self.account)
        self._readable(stored.token)
        return stored

    def save_versioned(self, token: Token, expected_version: str | None) -> str:
        if expected_version is None:  # a new login: never in the clear over a sealed token
            self.load()
        return self._call("save", self.store.save_versioned, self.account, token,
                          expected_version)

    def _readable(self, token: Token | None) -> Token | None:
        """``token``, unless it is sealed (an encrypted store opened without its key):
        :class:`~refresher.EncryptionKeyError` then, before anything is sent or saved."""
        refuse_sealed(token, self.account, repr(self.store))
        return token

    def delete(self) -> None:
        self._call("delete", self.store.delete, self.account)

    def check_refusals(self, token: Token | None, *, retry: bool) -> None:
        """Raise :class:`~refresher.ReauthorizationRequired` when X refused ``token``'s
        refresh token (the stored one) to this sender; with ``retry`` (a probe on purpose),
        only say so. Another client id's or token URL's refusal does not bind this sender."""
        self._refusals = [] if token is None else self._call(
            "read", self.store.refusals, self.account, token)
        refused = binding(self._refusals, *self.sender)
        if refused is None:
            return
        if not retry:
            raise ReauthorizationRequired(refused.login_needed(self.account, repr(self.store)))
        log.warning("account %r: sending once more, on purpose, a refresh token X refused (%s)",
                    self.account, refused.describe())

    def mark_needs_login(self, refresh_token: str) -> None:
        client_id, token_url = self.sender
        self._call("record the refusal in", self.store.mark_needs_login, self.account,
                   refresh_token, client_id=client_id, token_url=token_url)

    def forget_refusals(self) -> None:
        """X granted a refresh: a refusal :meth:`check_refusals` found is moot, and goes. A
        failure is only logged (the record names the spent refresh token: it binds nobody)."""
        if not self._refusals:
            return
        self._refusals = []
        try:
            self._call("forget the refusal in", self.store.clear_needs_login, self.account)
        except TokenStoreError as exc:
            log.warning("account %r: %s", self.account, exc)

    def check_answer_pending(self, token: Token | None, now: float) -> None:
        """Raise :class:`~refresher.inflight.AnswerPending` when a sibling sent ``token``'s
        refresh token (the stored one) and its answer may still come (at epoch ``now``)."""
        metadata = self._call("read", self.store.load_metadata, self.account)
        until = pending_until(metadata, token, now)
        if until is not None:
            raise AnswerPending(self.account, until)

    def mark_answer_pending(self, refresh_token: str, until: float) -> None:
        """Record that the answer for ``refresh_token`` may still come until ``until``;
        call under the store's lock. A store without metadata records nothing; a failure
        is only logged (siblings then resend the token, as without the record)."""
        try:
            metadata = self._call("read", self.store.load_metadata, self.account)
            self._call("record the answer awaited in", self.store.save_metadata, self.account,
                       with_pending(metadata, refresh_token, until))
        except TokenStoreError as exc:
            if not isinstance(exc.__cause__, NotImplementedError):
                log.warning("account %r: %s", self.account, exc)

    def verify_lock(self) -> None:
        self._call("check the lock of", self.store.verify_lock, self.account)

    @contextlib.contextmanager
    def lock(self, timeout: float | None) -> Iterator[None]:
        """The store's lock for the account. An error that ends the block is the one
        reported: a failure to release then is only logged.

        Held, it is a refresh in flight (:func:`refresher.shutdown.in_flight`): SIGTERM waits
        until it is let go (within the bound while X's answer is awaited)."""
        manager = self._call("lock", self.store.lock, self.account, timeout=timeout)
        self._call("lock", manager.__enter__)
        try:
            with in_flight():
                yield
        except BaseException:
            try:
                manager.__exit__(*sys.exc_info())
            except Exception:
                log.exception("account %r: releasing the store's lock failed", self.account)
            raise
        self._call("unlock", manager.__exit__, None, None, None)

    def _call(self, doing: str, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            return call(*args, **kwargs)
        except RefresherError:
            raise
        except Exception as exc:
            raise TokenStoreError(
                f"token store {self.store!r} failed to {doing} account {self.account!r}: "
                f"{type(exc).__name__}"
            ) from exc
