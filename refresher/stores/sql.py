"""SQLTokenStore: tokens in a SQL database (SQLite, PostgreSQL), one row per account.

The table (``refresher_tokens`` unless told otherwise; created when missing):

=============  =================  ==============================================================
column         type               holds
=============  =================  ==============================================================
account        VARCHAR(255), key  the account name
token          TEXT, null         the token dict as JSON (canonical: sorted keys); NULL: none
version        BIGINT             a counter every token save bumps: the fencing token
updated_at     DOUBLE, null       epoch seconds of the last token save
metadata       TEXT, null         the metadata dict as JSON (client id, endpoints; no secret)
lease_owner    VARCHAR(100), null who holds the account's refresh lock (see ``sql_lease``)
lease_until    DOUBLE, null       until when, in epoch seconds
=============  =================  ==============================================================

Fencing. A save made under the lock is a compare-and-set on the version read under it:
``UPDATE ... SET token = :data, version = version + 1 WHERE account = :a AND (version =
:expected OR token IS NULL)``, one statement. When it changes no row and the stored token
is another one, a newer pair was saved since (this holder's lease had lapsed):
:class:`~refresher.StaleTokenError`, and the newer pair stays. When the stored token is
this very one (a save retried after its answer was lost), it is not a conflict. The check
is on the version, not on who holds the lease: a holder whose lease lapsed while nobody
else wrote still saves its pair, which after a refresh is the only live one.

Leases are judged on the database server's clock on PostgreSQL, and on each waiting
store's monotonic clock elsewhere (see :mod:`~refresher.stores.sql_lease`): a wall clock
that steps cannot hand a live lease to another process. ``updated_at`` is written on the
server's clock on PostgreSQL, the machine's on SQLite.

SQLAlchemy (and psycopg, for PostgreSQL) is an optional dependency, imported when a store
is made: the ``[sql]`` extra (:class:`~refresher.errors.MissingStoreExtra` says how to
install it). The store is synchronous: an asyncio driver (``postgresql+asyncpg://``) is a
:class:`~refresher.ConfigurationError`; async programs use ``postgresql://`` too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._fork import register
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import StaleTokenError, TokenStoreError
from ..policy import checked_lock_ttl
from ..token import Token
from .base import TokenStore, Versioned
from .reserved import accounts_only
from .sql_connection import Database, import_sqlalchemy
from .sql_lease import Leases

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["SQLTokenStore", "DEFAULT_LOCK_TTL", "DEFAULT_TABLE"]

log = logging.getLogger(__name__)

#: Seconds a lease lives unless renewed or released: longer than a whole grant (the token
#: endpoint's deadline, 15 s, plus a margin of 5 s), short enough that a dead holder does
#: not stall everyone for long. A session refuses a store whose lock_ttl is shorter.
DEFAULT_LOCK_TTL = 30.0
DEFAULT_TABLE = "refresher_tokens"


def token_table(sa: Any, name: str, schema: str | None = None) -> sqlalchemy.Table:
    """The table's definition (see the module's docstring); ``meta`` is the key of the
    ``metadata`` column."""
    table: sqlalchemy.Table = sa.Table(
        name, sa.MetaData(),
        sa.Column("account", sa.String(255), primary_key=True),
        sa.Column("token", sa.Text, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False, default=0,
                  server_default=sa.text("0")),
        sa.Column("updated_at", sa.Double, nullable=True),
        sa.Column("metadata", sa.Text, nullable=True, key="meta"),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        schema=schema,
    )
    return table


class SQLTokenStore(TokenStore):
    """Tokens in a SQL database: every process that shares the database shares the tokens.

    ``url_or_engine`` is a SQLAlchemy URL (``sqlite:///tokens.db``,
    ``postgresql://user:pw@host/db``; the store then owns the engine and :meth:`close`
    disposes of it, and ``engine_options`` go to :func:`sqlalchemy.create_engine`) or an
    :class:`sqlalchemy.Engine` of your own, used as it is and left open. ``table`` is
    created when missing (``schema``: its PostgreSQL schema). ``lock_ttl`` is how long an
    account's lease (its refresh lock) lives when its holder dies without releasing it;
    keep it above the token endpoint's deadline plus 5 s, as the default (30 s) is.
    ``clock`` is the :class:`~refresher.Clock` leases wait on (and, on SQLite, are
    stamped with); tests hand one whose wall clock is shifted.

    SQLite suits many accounts and several processes on one machine; PostgreSQL, workers
    on many hosts. Any database failure is a :class:`~refresher.TokenStoreError` naming the
    server (never its password); waiting longer than ``timeout`` for a lease is
    :class:`~refresher.LockTimeout`. The lease is re-entrant within a thread, for one
    store object. A child forked from a process that used the store opens connections of
    its own (on an engine of yours too: its pool is replaced in the child, as SQLAlchemy
    advises) and holds none of its parent's leases.

    >>> store = SQLTokenStore("sqlite:///tokens.db")  # doctest: +SKIP
    >>> session = RefreshingSession("my-client-id", store=store, account="alice")  # doctest: +SKIP
    """

    def __init__(
        self,
        url_or_engine: str | sqlalchemy.Engine,
        table: str = DEFAULT_TABLE,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        *,
        schema: str | None = None,
        clock: Clock | None = None,
        **engine_options: Any,
    ) -> None:
        sa = import_sqlalchemy()
        seconds = checked_lock_ttl(lock_ttl, log)
        clock = SYSTEM_CLOCK if clock is None else clock
        self._db = Database(url_or_engine, engine_options, clock)
        self.server = self._db.server
        self._table = token_table(sa, table, schema)
        self.table = table
        self._table_ready = False
        self._table_guard = threading.Lock()
        self._leases = Leases(self._db, self._table, seconds, clock)
        self._build_statements(sa)
        register(self)  # a forked child: a guard of its own (the pool and leases reset theirs)

    def _after_fork_in_child(self) -> None:
        # A parent thread may have been creating the table (holding the guard) at the fork.
        self._table_guard = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLTokenStore({self.server!r}, table={self.table!r})"

    @property
    def lock_ttl(self) -> float:
        """Seconds an account's lease lives unless renewed or released."""
        return self._leases.lock_ttl

    @lock_ttl.setter
    def lock_ttl(self, seconds: float) -> None:
        self._leases.lock_ttl = float(seconds)

    @property
    def engine(self) -> sqlalchemy.Engine:
        """The SQLAlchemy engine the store talks through."""
        return self._db.engine

    # -- set-up ----------------------------------------------------------------------------

    def _ensure_table(self) -> None:
        """Create the table if it is missing, once per store object; on first use rather
        than in ``__init__``, so a store can be made while its database is down."""
        if self._table_ready:
            return
        with self._table_guard:
            if self._table_ready:
                return
            doing = f"create table {self.table!r}"
            try:
                self._db.run(doing, lambda connection: self._table.create(connection,
                                                                          checkfirst=True))
            except TokenStoreError:
                # Another process may have created it at the same moment: fine if it is.
                sa = import_sqlalchemy()
                if not self._db.run(doing, lambda connection: sa.inspect(connection).has_table(
                        self.table, schema=self._table.schema)):
                    raise
            self._table_ready = True

    def _build_statements(self, sa: Any) -> None:
        t, c, now = self._table, self._table.c, self._db.now
        account = sa.bindparam("a", type_=sa.String)
        data = sa.bindparam("data", type_=sa.Text)
        self._select_token = sa.select(c.token, c.version).where(c.account == account)
        self._select_meta = sa.select(c.meta, c.updated_at).where(c.account == account)
        self._select_accounts = sa.select(c.account).where(c.token.is_not(None))
        write = {"token": data, "version": c.version + 1, "updated_at": now}
        self._update_token = t.update().where(c.account == account).values(write)
        self._update_token_if = t.update().where(
            c.account == account,
            sa.or_(c.version == sa.bindparam("expected", type_=sa.BigInteger),
                   c.token.is_(None)),
        ).values(write)
        self._insert_token = self._db.insert_new(
            t, {"account": account, "token": data, "version": 1, "updated_at": now})
        meta = sa.bindparam("meta_json", type_=sa.Text)
        self._update_meta = t.update().where(c.account == account).values(meta=meta)
        self._insert_meta = self._db.insert_new(
            t, {"account": account, "version": 0, "meta": meta})
        # An account whose lease someone holds (or a dead holder left) keeps its row (the
        # lease), emptied: no clock decides whether a lease may be deleted.
        self._delete_row = t.delete().where(c.account == account, c.lease_owner.is_(None))
        self._empty_row = t.update().where(c.account == account).values(
            token=None, meta=None, updated_at=None, version=c.version + 1)

    # -- reading -------------------------------------------------------------------------

    def _json(self, text: str | None, account: str, column: str) -> Any:
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise TokenStoreError(
                f"SQL token store at {self.server}: column {column!r} of account {account!r} "
                f"in table {self.table!r} is not valid JSON; it was left untouched. Delete "
                "the account and log in again."
            ) from None

    def _read(self, account: str) -> tuple[Token | None, int]:
        self._ensure_table()
        row = self._db.run(f"read account {account!r}", lambda connection: connection.execute(
            self._select_token, {"a": account}).first())
        if row is None:
            return None, 0
        token = self._json(row[0], account, "token")
        if token is not None and not isinstance(token, dict):
            raise TokenStoreError(
                f"SQL token store at {self.server}: account {account!r} in table "
                f"{self.table!r} holds no token object; log in again for that account."
            )
        return token, int(row[1])

    def load(self, account: str) -> Token | None:
        """The account's token (a fresh copy), or ``None``."""
        return self._read(account)[0]

    def _load_versioned(self, account: str) -> Versioned:
        """The account's token and its version (the counter every save bumps)."""
        token, version = self._read(account)
        return Versioned(token, None if token is None else str(version))

    def version(self, account: str) -> int:
        """The stored version of the account's row: 0 before the first save."""
        return self._read(account)[1]

    def accounts(self) -> list[str]:
        self._ensure_table()
        names = self._db.run("list accounts", lambda connection: connection.execute(
            self._select_accounts).scalars().all())
        return sorted(accounts_only(str(name) for name in names))

    def load_metadata(self, account: str) -> dict[str, Any]:
        """The account's metadata, with ``updated_at`` (epoch seconds of the last token
        save) when there was one; ``{}`` for an unknown account."""
        self._ensure_table()
        row = self._db.run(f"read the metadata of {account!r}",
                           lambda connection: connection.execute(
                               self._select_meta, {"a": account}).first())
        if row is None:
            return {}
        metadata = self._json(row[0], account, "metadata")
        result = dict(metadata) if isinstance(metadata, dict) else {}
        if row[1] is not None:
            result.setdefault("updated_at", float(row[1]))
        return result

    # -- writing -------------------------------------------------------------------------

    def save(self, account: str, token: Token) -> None:
        """Store ``token`` for ``account``, whatever is stored (call under ``lock``)."""
        self._write(account, token, None)

    def _save_versioned(self, account: str, token: Token, expected_version: str | None) -> str:
        """Store ``token`` if the account's version is still ``expected_version`` (one
        conditional UPDATE); :class:`~refresher.StaleTokenError` otherwise, and the newer
        token stays. ``None`` writes whatever is stored (a new login)."""
        if expected_version is None:
            return str(self._write(account, token, None))
        try:
            expected = int(expected_version)
        except ValueError:
            expected = -1  # not one of ours: only the very same token is not a conflict
        return str(self._write(account, token, expected))

    def _write(self, account: str, token: Token, expected: int | None) -> int:
        token = dict(token)
        params = {"a": account, "data": json.dumps(token, sort_keys=True),
                  "expected": expected}
        update = self._update_token if expected is None else self._update_token_if
        self._ensure_table()

        def write(connection: sqlalchemy.Connection) -> int:
            for _ in range(3):  # a row inserted by someone else meanwhile: try again
                if connection.execute(update, params).rowcount == 1:
                    row = connection.execute(self._select_token, params).first()
                    return int(row[1]) if row is not None else 1
                row = connection.execute(self._select_token, params).first()
                if row is None:
                    if self._db.inserted(connection, self._insert_token, params):
                        return 1
                    continue
                if self._json(row[0], account, "token") == token:
                    return int(row[1])  # already stored: a save retried after its answer
                raise StaleTokenError(
                    f"account {account!r} in SQL token store at {self.server}: another "
                    f"holder saved a newer token (version {int(row[1])}, this save expected "
                    f"{expected}) after this one's lease lapsed (lock_ttl={self.lock_ttl:g} "
                    "s); the newer token is kept. If refreshes take that long, raise lock_ttl."
                )
            raise TokenStoreError(f"SQL token store at {self.server}: account {account!r} "
                                  "kept appearing and disappearing while it was saved; try again")

        return self._db.run(f"save account {account!r}", write)

    def save_metadata(self, account: str, metadata: dict[str, Any]) -> None:
        params = {"a": account, "meta_json": json.dumps(dict(metadata), sort_keys=True)}
        self._ensure_table()

        def write(connection: sqlalchemy.Connection) -> None:
            for _ in range(2):
                if connection.execute(self._update_meta, params).rowcount == 1:
                    return
                if self._db.inserted(connection, self._insert_meta, params):
                    return

        self._db.run(f"save the metadata of {account!r}", write)

    def delete(self, account: str) -> None:
        """Forget the account's token and metadata (its row; a lease someone holds on it
        stays until released)."""
        self._ensure_table()

        def delete(connection: sqlalchemy.Connection) -> None:
            if connection.execute(self._delete_row, {"a": account}).rowcount == 0:
                connection.execute(self._empty_row, {"a": account})

        self._db.run(f"delete account {account!r}", delete)

    # -- locking -------------------------------------------------------------------------

    def lock(self, account: str, timeout: float | None = None) -> Any:
        """The account's lease, for a ``with`` block (see :mod:`refresher.stores.sql_lease`)."""
        return self._held(account, timeout)

    @contextlib.contextmanager
    def _held(self, account: str, timeout: float | None) -> Iterator[None]:
        self._ensure_table()
        with self._leases.held(account, timeout):
            yield

    def verify_lock(self, account: str) -> None:
        """Check this thread's lease on the account is still its own and renew it to a full
        ``lock_ttl``, in one statement; :class:`~refresher.LockLost` when another holder
        took it (this one was paused past ``lock_ttl``)."""
        self._leases.verify(account)

    def close(self) -> None:
        """Dispose of the engine's connections, when this store made the engine. Safe to
        call twice."""
        self._db.dispose()
