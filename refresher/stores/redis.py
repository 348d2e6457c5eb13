"""RedisTokenStore: tokens in Redis, shared by processes on many hosts.

Layout, per account, under ``prefix + account`` (a hash):

- ``token``: the token dict as JSON;
- ``version``: a counter, bumped by every save (the fencing token, see below);
- ``updated_at``: epoch seconds of the last save;
- ``metadata``: the metadata dict as JSON (client id, endpoints; never a secret).

The refresh lock is redis-py's :class:`redis.lock.Lock` at ``prefix + account + ":lock"``:
``SET NX PX`` with a random owner token, so a holder that dies frees it after ``lock_ttl``
seconds, and a Lua release that deletes it only for its owner.

Fencing. A holder can outlive its lock (a pause, a slow network); the next holder then
refreshes and saves, and the first one's save must not put the older pair back. So
:meth:`RedisTokenStore.load`, called by a thread that holds the account's lock, remembers
the version it read (per thread and per account, for as long as the lock is held), and
:meth:`RedisTokenStore.save` writes only if the stored version is still that one — a
compare-and-set in one Lua script. A lost race raises :class:`~refresher.StaleTokenError`
and the newer token stays. The check is on the version, not on who owns the lock: a
holder whose lock lapsed while nobody else wrote still saves its pair, which after a
refresh is the only live pair of the account. A save with no load before it under the
lock (a new login, meant to replace whatever is stored) is a plain write, and so is a
save onto an account that has no token (there is nothing newer to protect).

redis (the Python client) is an optional dependency, imported when a store is made: the
``[redis]`` extra (:class:`~refresher.errors.MissingStoreExtra` says how to install it).

Words (fencing, lapse): see ``docs/explanation/glossary.rst``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, LockLost, LockTimeout, StaleTokenError, TokenStoreError
from ..policy import checked_lock_ttl
from ..token import Token
from ._holds import ThreadHolds
from .base import TokenStore, Versioned
from .redis_connection import (
    client_password,
    decode_reply,
    describe_server,
    glob_escape,
    import_redis,
    open_client,
    server_failure,
)
from .reserved import accounts_only

if TYPE_CHECKING:
    import redis as redis_py

__all__ = ["RedisTokenStore", "DEFAULT_LOCK_TTL"]

log = logging.getLogger(__name__)

#: Seconds a lock lives unless released: longer than a whole grant (the token endpoint's
#: deadline, 15 s, plus a margin of 5 s), short enough that a dead holder does not stall
#: everyone for long. A session refuses a store whose lock_ttl is shorter than that.
DEFAULT_LOCK_TTL = 30.0
#: The suffix of lock keys; account names may not end with it.
LOCK_SUFFIX = ":lock"
# Waiters poll SET NX; short polls keep queued requests close to the refresh's round trip.
_LOCK_POLL_INTERVAL = 0.005

# KEYS[1]: the account's hash. ARGV: expected version ("" = any), token JSON, updated_at.
# Returns {1, new version} or {0, stored version}. The write goes through when the version
# is the expected one, when no token is stored (nothing newer to protect), or when the
# stored token is this very one (a save retried after its reply was lost).
_COMPARE_AND_SET = """
local stored = redis.call('HMGET', KEYS[1], 'token', 'version')
local version = tonumber(stored[2]) or 0
if ARGV[1] ~= '' and stored[1] and version ~= tonumber(ARGV[1]) then
  if stored[1] == ARGV[2] then
    return {1, version}
  end
  return {0, version}
end
version = version + 1
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'version', version, 'updated_at', ARGV[3])
return {1, version}
"""


@dataclass
class _Hold:
    """A lock this thread holds: the redis-py lock, and the version loaded under it."""

    lock: Any
    version: int | None = None


class RedisTokenStore(TokenStore):
    """Tokens in Redis: every process on every host that shares the server shares the token.

    ``client_or_url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL (the store then
    owns the client; ``redis_options`` go to :meth:`redis.Redis.from_url`), or a
    :class:`redis.Redis` client of your own. Keys start with ``prefix``. ``lock_ttl`` is
    how long a refresh lock lives when its holder dies without releasing it; keep it well
    above the token endpoint's timeout (10 s), as the default (30 s) is.

    Each save is a compare-and-set on a version read by :meth:`load` under the lock: a
    holder whose lock expired while another process saved a newer pair gets
    :class:`~refresher.StaleTokenError`, and the newer pair stays. Any Redis failure is a
    :class:`~refresher.TokenStoreError` naming the server (never its password); waiting
    longer than ``timeout`` for a lock is :class:`~refresher.LockTimeout`.

    The lock is re-entrant within a thread, for one store object. A child forked from a
    process that used the store holds none of its parent's locks, and connects anew
    (redis-py's pool notices the fork).

    >>> store = RedisTokenStore("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> session = RefreshingSession("my-client-id", store=store, account="alice")  # doctest: +SKIP
    """

    def __init__(
        self,
        client_or_url: str | redis_py.Redis,
        prefix: str = "refresher:",
        lock_ttl: float = DEFAULT_LOCK_TTL,
        **redis_options: Any,
    ) -> None:
        redis = import_redis()
        self.lock_ttl = checked_lock_ttl(lock_ttl, log)
        self.prefix = prefix
        self._redis_error: type[Exception] = redis.exceptions.RedisError
        self._lock_not_owned: type[Exception] = redis.exceptions.LockNotOwnedError
        self._lock_class: Any = redis.lock.Lock
        self._client, self._owns_client = open_client(redis, client_or_url, redis_options)
        self.server = describe_server(self._client)
        self._password = client_password(self._client)
        self._compare_and_set = self._client.register_script(_COMPARE_AND_SET)
        # A forked child holds none of its parent's locks (their owner tokens are the
        # parent's): the holds start over there. The connections need nothing: redis-py's
        # pool notices the new pid and starts over.
        self._holds: ThreadHolds[_Hold] = ThreadHolds()

    def __repr__(self) -> str:
        return f"RedisTokenStore({self.server!r}, prefix={self.prefix!r})"

    # -- keys and plumbing ---------------------------------------------------------------

    def _key(self, account: str) -> str:
        if account.endswith(LOCK_SUFFIX):
            raise ConfigurationError(
                f"account name {account!r} ends in {LOCK_SUFFIX!r}, which the Redis store "
                "keeps for its lock keys: choose another account name"
            )
        return self.prefix + account

    def _lock_key(self, account: str) -> str:
        return self._key(account) + LOCK_SUFFIX

    def _failure(self, doing: str, exc: BaseException) -> TokenStoreError:
        """A TokenStoreError for ``exc``, naming the server and never the password."""
        return server_failure(self.server, self._password, doing, exc)

    @contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._redis_error as exc:
            raise self._failure(doing, exc) from None

    def _json(self, raw: Any, key: str, field: str) -> Any:
        text = decode_reply(raw)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise TokenStoreError(
                f"Redis token store at {self.server}: field {field!r} of key {key!r} is not "
                "valid JSON; it was left untouched. Delete the key and log in again."
            ) from None

    # -- reading -------------------------------------------------------------------------

    def _read(self, account: str) -> tuple[Token | None, int]:
        key = self._key(account)
        with self._talking(f"read {key!r}"):
            raw_token, raw_version = self._client.hmget(key, ["token", "version"])
        token = self._json(raw_token, key, "token")
        if token is not None and not isinstance(token, dict):
            raise TokenStoreError(
                f"Redis token store at {self.server}: key {key!r} holds no token object; "
                "log in again for that account."
            )
        try:
            version = int(decode_reply(raw_version) or 0)
        except ValueError:
            raise TokenStoreError(
                f"Redis token store at {self.server}: key {key!r} has a version that is not "
                "a number; it was left untouched."
            ) from None
        return token, version

    def _read_under_lock(self, account: str) -> tuple[Token | None, int]:
        """:meth:`_read`; under this thread's lock, the version is the next save's expected."""
        token, version = self._read(account)
        hold = self._holds.get(account)
        if hold is not None:
            hold.version = version
        return token, version

    def load(self, account: str) -> Token | None:
        """The account's token; under the lock, also the version the next save expects."""
        return self._read_under_lock(account)[0]

    def _load_versioned(self, account: str) -> Versioned:
        """The account's token and its version (the counter every save bumps)."""
        token, version = self._read_under_lock(account)
        return Versioned(token, None if token is None else str(version))

    def _save_versioned(self, account: str, token: Token, expected_version: str | None) -> str:
        """Store ``token`` if the account's version is still ``expected_version`` (one Lua
        compare-and-set); :class:`~refresher.StaleTokenError` otherwise."""
        return str(self._save(account, token, "" if expected_version is None
                              else str(expected_version)))

    def version(self, account: str) -> int:
        """The stored version of the account's token: 0 before the first save."""
        return self._read(account)[1]

    def accounts(self) -> list[str]:
        pattern = glob_escape(self.prefix) + "*"
        with self._talking("list accounts"):
            keys = [
                decode_reply(key) or ""
                for key in self._client.scan_iter(match=pattern, count=500)
            ]
            keys = [key for key in keys if not key.endswith(LOCK_SUFFIX)]
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hexists(key, "token")
            found = pipe.execute(raise_on_error=False)
        return sorted(accounts_only(
            key[len(self.prefix):] for key, has in zip(keys, found, strict=True) if has is True
        ))

    def load_metadata(self, account: str) -> dict[str, Any]:
        key = self._key(account)
        with self._talking(f"read {key!r}"):
            raw_metadata, raw_updated = self._client.hmget(key, ["metadata", "updated_at"])
        metadata = self._json(raw_metadata, key, "metadata")
        result = dict(metadata) if isinstance(metadata, dict) else {}
        updated = decode_reply(raw_updated)
        if updated is not None:
            try:
                result.setdefault("updated_at", float(updated))
            except ValueError:
                pass
        return result

    # -- writing -------------------------------------------------------------------------

    def save(self, account: str, token: Token) -> None:
        """Store ``token``; a compare-and-set when this thread loaded under the lock.

        Raises :class:`~refresher.StaleTokenError` when another holder saved since that
        load (this thread's lock had lapsed); the newer token is kept.
        """
        hold = self._holds.get(account)
        self._save(account, token,
                   "" if hold is None or hold.version is None else str(hold.version))

    def _save(self, account: str, token: Token, expected: str) -> int:
        key = self._key(account)
        hold = self._holds.get(account)
        data = json.dumps(dict(token), sort_keys=True)
        with self._talking(f"save {key!r}"):
            done, version = self._compare_and_set(
                keys=[key], args=[expected, data, repr(time.time())]
            )
        if not int(done):
            raise StaleTokenError(
                f"account {account!r} in Redis token store at {self.server}: another holder "
                f"saved a newer token (version {int(version)}, this save expected {expected}) "
                f"after this one's lock lapsed (lock_ttl={self.lock_ttl:g} s); the newer "
                "token is kept. If refreshes take that long, raise lock_ttl."
            )
        if hold is not None:
            hold.version = int(version)
        return int(version)

    def save_metadata(self, account: str, metadata: dict[str, Any]) -> None:
        key = self._key(account)
        data = json.dumps(dict(metadata), sort_keys=True)
        with self._talking(f"save metadata of {key!r}"):
            self._client.hset(key, "metadata", data)

    def delete(self, account: str) -> None:
        key = self._key(account)
        with self._talking(f"delete {key!r}"):
            self._client.delete(key)

    # -- locking -------------------------------------------------------------------------

    def _take(self, account: str, timeout: float | None) -> _Hold:
        key = self._lock_key(account)
        lock = self._lock_class(
            self._client, key, timeout=self.lock_ttl, sleep=_LOCK_POLL_INTERVAL,
            blocking=True, blocking_timeout=timeout, thread_local=False,
        )
        with self._talking(f"lock {key!r}"):
            acquired = lock.acquire()
        if not acquired:
            raise LockTimeout(
                f"could not lock account {account!r} in Redis token store at {self.server} "
                f"within {timeout} s (key {key!r}); another process is refreshing it, or "
                f"died holding it (the lock frees itself after lock_ttl={self.lock_ttl:g} s)"
            )
        return _Hold(lock)

    def _release(self, account: str, hold: _Hold) -> None:
        try:
            hold.lock.release()
        except self._lock_not_owned:
            log.warning(
                "account %r: the Redis lock lapsed before it was released (held longer than "
                "lock_ttl=%g s); saves were fenced by version", account, self.lock_ttl,
            )
        except self._redis_error as exc:
            # Raising here would hide the error that ended the block, if any.
            log.warning("%s; the lock frees itself within lock_ttl=%g s",
                        self._failure(f"release the lock of {account!r}", exc), self.lock_ttl)

    def lock(self, account: str, timeout: float | None = None) -> Any:
        return self._holds.held(account, take=lambda: self._take(account, timeout),
                                give_back=lambda hold: self._release(account, hold))

    def verify_lock(self, account: str) -> None:
        """Check this thread still owns the account's lock, and give it a full ``lock_ttl``.

        One atomic step (redis-py's ``reacquire``: the TTL is reset only if the lock's
        value is still this holder's). Raises :class:`~refresher.LockLost` when the lock
        lapsed: another holder may be spending the same refresh token right now.
        """
        hold = self._holds.get(account)
        if hold is None:
            raise LockLost(f"account {account!r}: this thread does not hold its Redis lock")
        try:
            hold.lock.reacquire()
        except self._lock_not_owned:
            raise LockLost(
                f"account {account!r} in Redis token store at {self.server}: the lock lapsed "
                f"(held longer than lock_ttl={self.lock_ttl:g} s: a paused process?) before "
                "the refresh token was sent; it was not sent. Raise lock_ttl if this repeats"
            ) from None
        except self._redis_error as exc:
            raise self._failure(f"renew the lock of {account!r}", exc) from None

    def close(self) -> None:
        """Close the connections, when this store made the client. Safe to call twice."""
        if self._owns_client:
            try:
                self._client.close()
            except self._redis_error:
                pass
