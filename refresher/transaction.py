"""RefreshTransaction: one refresh under the store's lock, from reading the store to saving.

The :class:`~refresher.RefreshCoordinator` decides *whether* to refresh and holds the
thread lock; this class does the refresh itself, the part where a single-use refresh token
is at stake, top to bottom in :meth:`RefreshTransaction.run`:

1. wait for an answer of ours that may still come (the refresh token it spent is not sent
   again meanwhile), then take the store's lock for the account. When a sibling holds it,
   look at the store first, and adopt a usable replacement that sibling already saved
   (reading spends nothing: processes whose tokens expire together do not queue for the
   lock only to read the pair); else wait for the lock (or, without waiting, give up);
2. write back a pair that waits to be saved; read the store with its version: if a sibling
   already replaced the token being replaced, adopt theirs; if X already refused the
   stored refresh token to this client id at this token URL, say a login is needed;
3. run ``on_refresh_start``, then check the store's lock is still held, and spend the
   *stored* refresh token: nothing stands between that check and the token request;
4. save the granted pair before anything else (a compare-and-set on the version read in
   2); a pair the store could not take is kept and written back first thing.

Words (spend, adopt, sibling, write back, lease): see ``docs/explanation/glossary.rst``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Protocol, TypeAlias

from .clock import Clock
from .errors import LockTimeout, ReauthorizationRequired, RefreshError, TokenStoreError
from .inflight import AnswerWaits
from .pending import WriteBack
from .policy import RefreshPolicy, TokenState
from .stores.guarded import GuardedAccount
from .token import Token, fingerprint, seconds_left

__all__ = ["Endpoint", "RefreshTransaction", "Replacing", "replaced"]

# The coordinator's logger: these lines are about its refreshes, and keep the name they had.
log = logging.getLogger("refresher.coordinator")


#: What a refresh replaces: the access token that failed or is expiring (``""`` for a pair
#: that has none), or ``None``: a refresh asked for as such, replacing nothing in particular.
#: Another live access token "replaced" it (:func:`replaced`): that one is adopted instead.
Replacing: TypeAlias = "str | None"


class Endpoint(Protocol):
    """What the coordinator needs from a token endpoint
    (:class:`~refresher.endpoint.TokenEndpoint` is the one refresher builds)."""

    client_id: str | None
    token_url: str
    #: The longest a grant may take, in seconds: a store lock that lapses by itself must
    #: outlive it.
    deadline: float
    #: The longest wait for one socket operation, in seconds.
    timeout: float

    def refresh(self, refresh_token: str, *,
                on_late_grant: Callable[[Token], None] | None = None) -> Token:
        """Spend ``refresh_token``; the granted pair. A pair granted after the call gave up
        goes to ``on_late_grant``."""
        ...

    def wait_for_late_answers(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for answers that may still come; True when none
        may."""
        ...

    def revoke(self, revoke_url: str, token: str,
               token_type_hint: str = "refresh_token") -> None:
        """Revoke ``token`` at ``revoke_url``."""
        ...

    def close(self) -> None:
        """Close the HTTP session, if the endpoint created it."""
        ...


class RefreshTransaction:
    """Refreshes of one account: ``run`` one under the store's lock.

    ``adopt(token, fresh)`` makes a token the live one (``fresh``: granted or adopted now);
    ``starting()`` runs the ``on_refresh_start`` hook.
    """

    def __init__(self, account: GuardedAccount, endpoint: Endpoint, policy: RefreshPolicy,
                 clock: Clock, *, write_back: WriteBack, adopt: Callable[[Token, bool], None],
                 starting: Callable[[], None]) -> None:
        self.account, self.endpoint, self.policy, self.clock = account, endpoint, policy, clock
        self.write_back = write_back
        self.answers = AnswerWaits(account.account, endpoint, policy, clock)
        self._adopt, self._starting = adopt, starting
        self.refreshes = 0  # pairs granted to this process (late ones too)

    def run(self, replacing: Replacing, live: Token | None, wait: bool,
            retry_refused: bool) -> Token | None:
        """Refresh; the granted pair, or ``None`` when a sibling's token was adopted (or,
        with ``wait=False``, when another holder is refreshing or an answer may still
        come: the live token still works)."""
        if not self.answers.ours_done(wait):
            return None
        with contextlib.ExitStack() as held:
            if not self._locked(held, replacing, wait):
                return None  # a sibling's token adopted, or (no wait) a sibling refreshes
            self.write_back.locked()
            stored = self.account.load_versioned()
            if self._adopted(stored.token, replacing):
                return None
            refresh_token = (stored.token or live or {}).get("refresh_token")
            if not refresh_token:
                raise ReauthorizationRequired(
                    f"account {self.account.account!r} has no refresh token in "
                    f"{self.account.store!r} (was offline.access in the scopes?); log in again"
                )
            self.account.check_refusals(stored.token, retry=retry_refused)
            self.account.check_answer_pending(stored.token, self.clock.time())
            self._starting()  # for metrics: the token call starts now
            # A holder whose lock lapsed (a hook that blocked, a paused process) must not
            # spend the token: the next holder may be. Nothing runs between this and the send.
            self.account.verify_lock()
            try:
                granted = self.endpoint.refresh(
                    refresh_token, on_late_grant=lambda pair: self._late_grant(pair, refresh_token))
            except ReauthorizationRequired:
                if self._adopted_after_refusal(refresh_token):
                    return None
                raise
            except RefreshError as exc:
                if exc.request_sent is not False and not self.endpoint.wait_for_late_answers(0):
                    # X may still answer (and this process save the pair): siblings must
                    # not resend the token meanwhile. Recorded before the lock is released.
                    self.account.mark_answer_pending(refresh_token, self.answers.until())
                raise
            # X has rotated the pair: saving it comes before anything else that can fail.
            self.refreshes += 1
            self._save_or_keep(granted, parent=refresh_token, expected=stored.version)
            self.account.forget_refusals()  # X granted: a recorded refusal of it is moot
            log.info("account %r: refreshed, access token %s, expires in %.0f s",
                     self.account.account, fingerprint(granted.get("access_token")),
                     seconds_left(granted, now=self.clock.time()) or 0.0)
            if not granted.get("access_token"):
                raise RefreshError(
                    f"{self.endpoint.token_url} answered 200 with a new refresh token but no "
                    "usable access token; the new refresh token is saved, and the next request "
                    "refreshes again"
                )
            return granted

    def _locked(self, held: contextlib.ExitStack, replacing: Replacing, wait: bool) -> bool:
        """Take the store's lock for ``held``: True. When a sibling holds it, look first
        (without it: reading spends nothing) whether the store already has a usable
        replacement for ``replacing`` (that sibling refreshed, and may still be letting
        the lock go), and adopt it: False. Otherwise wait for the lock, or with ``wait``
        off give up: False (the current token still works)."""
        try:
            held.enter_context(self.account.lock(0))
            return True
        except LockTimeout:
            if self._adopted_unlocked(replacing) or not wait:
                return False
        held.enter_context(self.account.lock(self.policy.lock_timeout))
        return True

    def _adopted_unlocked(self, replacing: Replacing) -> bool:
        """Whether the stored token, read without the store's lock, was adopted (see
        :meth:`_adopted`). Not while a pair of ours waits to be written back: that is done
        under the lock, before anything else."""
        if replacing is None or self.write_back.waiting:
            return False
        return self._adopted(self.account.load(), replacing)

    def _adopted(self, stored: Token | None, replacing: Replacing) -> bool:
        """Adopt ``stored`` when it is a usable replacement for ``replacing``; whether it was."""
        if not self._usable_replacement(stored, replacing):
            return False
        assert stored is not None
        log.info("account %r: adopting token %s refreshed by a sibling",
                 self.account.account, fingerprint(stored.get("access_token")))
        self._adopt(stored, True)
        return True

    def _usable_replacement(self, candidate: Token | None, replacing: Replacing) -> bool:
        """``candidate`` is a token other than the one being replaced, and not expiring."""
        return replaced(candidate, replacing) and candidate is not None and (
            self.policy.state(candidate, self.clock.time()) is TokenState.FRESH)

    def _adopted_after_refusal(self, refresh_token: str) -> bool:
        """X refused ``refresh_token`` as spent: adopt a sibling's pair, or record the loss."""
        # A sibling whose lock lapsed may have saved the new pair meanwhile.
        again = self.account.load()
        if again is not None and again.get("refresh_token") != refresh_token:
            log.info("account %r: refresh token was spent by a sibling; adopting its pair",
                     self.account.account)
            self._adopt(again, True)
            return True
        # Nobody holds a newer pair: record it, so siblings stop resending the dead token.
        try:
            self.account.mark_needs_login(refresh_token)
        except TokenStoreError as exc:
            log.error("account %r: could not record that a login is needed: %s",
                      self.account.account, exc)
        return False

    def _save_or_keep(self, granted: Token, *, parent: str, expected: str | None) -> None:
        try:
            self.account.save_versioned(granted, expected)
        except TokenStoreError:
            # The old refresh token is spent: this pair is now the only way into the
            # account. Keep it and write it back as soon as the store answers again.
            self.write_back.pending.keep(granted, parent)
            log.error("account %r: could not save the new token; keeping it in memory "
                      "and retrying the save before the next request", self.account.account)
            raise
        finally:
            self._adopt(granted, True)

    def _late_grant(self, granted: Token, parent: str) -> None:
        self.refreshes += 1
        self.write_back.late(granted, parent)


def replaced(current: Token | None, replacing: Replacing) -> bool:
    """Whether ``current`` replaced the access token ``replacing``: it carries an access
    token, and another one. ``replacing`` is the access token that failed or is expiring
    (``""`` for a pair that has none); ``None`` replaces nothing in particular (a refresh
    asked for as such), so nothing counts as its replacement."""
    if current is None or replacing is None:
        return False
    access = current.get("access_token")
    return bool(access) and access != replacing
