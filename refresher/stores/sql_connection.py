"""The SQL store's connection: SQLAlchemy imported on demand, the engine made from a URL (or
the user's own), the server's name, the clock leases are read on, and database errors as
the store reports them. A password never reaches a message.

Nothing here imports SQLAlchemy at import time: :class:`Database` does, when a
:class:`~refresher.stores.sql.SQLTokenStore` is made, so ``import refresher`` works
without the optional dependency.

Engines made from a URL get refresher's defaults (the caller's ``engine_options`` win):

- SQLite: the file is created mode 0600 (its folder 0700) when missing, as token files
  are; WAL mode (readers never wait for a writer); ``synchronous=FULL`` (every committed
  token is on disk: a lost save can lose an account); a busy timeout of 10 s (writers
  queue instead of failing with "database is locked").
- PostgreSQL: ``postgresql://`` uses psycopg 3 (``refresher[sql]`` installs it, not
  psycopg2); a 5 s connect timeout; ``pool_pre_ping``, so connections broken by a server
  restart are replaced instead of failing once each.
- Both: ``hide_parameters``, so SQLAlchemy's own messages and logs never show a token.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..errors import ConfigurationError, TokenStoreError

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["Database", "import_sqlalchemy", "describe_server", "server_failure"]

#: Seconds a SQLite writer waits for another's transaction before "database is locked".
SQLITE_BUSY_TIMEOUT = 10.0
#: Seconds to connect to a database server before it counts as unreachable.
CONNECT_TIMEOUT = 5
# What of a driver's message goes into ours: its first line, this long at most.
_DETAIL_LIMIT = 300


class _MissingSQLAlchemy(TokenStoreError, ImportError):
    """SQLAlchemy or the database driver is not installed (a TokenStoreError and an
    ImportError)."""


def import_sqlalchemy() -> Any:
    """The sqlalchemy package; when it is absent, an error that says how to install it."""
    try:
        import sqlalchemy
    except ImportError:
        raise _MissingSQLAlchemy(
            "SQLTokenStore needs SQLAlchemy 2: pip install refresher[sql]"
        ) from None
    return sqlalchemy


def _scrub_url(url: str) -> str:
    """``url`` without its user name, password and query: safe to print.

    >>> _scrub_url("postgresql://app:s3cret@db.internal:5432/tokens?sslmode=require")
    'postgresql://db.internal:5432/tokens'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=netloc, query="").geturl()
    except ValueError:
        return "<unparseable database URL>"


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def describe_server(url: sqlalchemy.URL) -> str:
    """``dialect://host:port/database``, or ``sqlite:///absolute/path``: no credentials.

    >>> from sqlalchemy import make_url  # doctest: +SKIP
    >>> describe_server(make_url("postgresql+psycopg://u:pw@db:5432/app"))  # doctest: +SKIP
    'postgresql://db:5432/app'
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:":
            return "sqlite://"
        return "sqlite:///" + os.path.abspath(database)
    port = f":{url.port}" if url.port else ""
    return f"{backend}://{url.host or 'localhost'}{port}/{url.database or ''}"


def server_failure(server: str, password: str | None, doing: str,
                   exc: BaseException) -> TokenStoreError:
    """A TokenStoreError for ``exc``, naming ``server`` and never ``password``.

    The driver's own error is used (SQLAlchemy's wrapper would add the statement and its
    parameters: a token), first line only.

    >>> print(server_failure("postgresql://db/app", "s3cret", "read 'a'",
    ...                      ConnectionError("password s3cret refused\\nDETAIL: ...")))
    SQL token store at postgresql://db/app failed to read 'a': ConnectionError: password *** refused
    """
    original = getattr(exc, "orig", None) or exc
    return TokenStoreError(f"SQL token store at {server} failed to {doing}: "
                           f"{type(original).__name__}: {_detail(original, password)}")


def _detail(exc: BaseException, password: str | None) -> str:
    """The first line of ``exc``'s message, short, without ``password``."""
    lines = str(exc).strip().splitlines()
    detail = lines[0].strip() if lines else type(exc).__name__
    if password:
        for form in {password, quote(password, safe="")}:
            detail = detail.replace(form, "***")
    if len(detail) > _DETAIL_LIMIT:
        detail = detail[:_DETAIL_LIMIT] + "..."
    return detail


def _prepare_sqlite_file(path: str) -> None:
    """Create the database file mode 0600 (SQLite gives its WAL the same mode), and its
    folder 0700, when missing: a token database is as secret as a token file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _engine_from_url(sa: Any, text: str, options: dict[str, Any]) -> sqlalchemy.Engine:
    """An engine for ``text`` with refresher's defaults under ``options``."""
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise TokenStoreError(f"invalid database URL {_scrub_url(text)}: "
                              f"{_detail(exc, _url_password(text))}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # the driver refresher[sql] installs
    backend = url.get_backend_name()
    options = dict(options)
    options.setdefault("hide_parameters", True)
    connect_args = dict(options.pop("connect_args", {}))
    if backend == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:" or url.query.get("mode") == "memory":
            raise ConfigurationError(
                "an in-memory SQLite database is private to one connection, so it cannot "
                "share tokens or locks: give a file (sqlite:///tokens.db), or use "
                "MemoryTokenStore"
            )
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        if not url.query.get("uri"):
            try:
                _prepare_sqlite_file(database)
            except OSError as exc:
                raise TokenStoreError(
                    f"SQL token store at {describe_server(url)}: cannot create the database "
                    f"file: {exc.strerror or exc}"
                ) from None
    elif backend == "postgresql":
        connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT)
        options.setdefault("pool_pre_ping", True)
    try:
        engine: sqlalchemy.Engine = sa.create_engine(url, connect_args=connect_args,
                                                     **options)
    except ImportError as exc:
        raise _MissingSQLAlchemy(
            f"SQLTokenStore at {describe_server(url)} needs the database driver "
            f"({exc.name or exc}): pip install refresher[sql]"
        ) from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
        raise server_failure(describe_server(url), url.password, "start", exc) from None
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _forget_pool_after_fork(engine: sqlalchemy.Engine) -> None:
    """A child process made by ``fork`` (gunicorn's ``--preload``, multiprocessing) opens
    connections of its own instead of sharing its parent's, as SQLAlchemy advises."""
    if not hasattr(os, "register_at_fork"):
        return
    reference = weakref.ref(engine)

    def forget() -> None:
        forked = reference()
        if forked is not None:
            forked.dispose(close=False)

    os.register_at_fork(after_in_child=forget)


class Database:
    """The store's engine, with its name, its clock, and its errors translated.

    ``url_or_engine`` is a URL (the engine is then made here, owned, and disposed of by
    :meth:`dispose`; ``options`` go to :func:`sqlalchemy.create_engine`) or an
    :class:`sqlalchemy.Engine` of the caller's, used as it is and left open.

    ``now`` is the SQL expression leases and ``updated_at`` are read on, in epoch seconds:
    the server's clock on PostgreSQL (``clock_timestamp()``: every host that shares the
    database agrees on it), the client's wall clock elsewhere (on SQLite that is the clock
    of the one machine the file lives on).
    """

    def __init__(self, url_or_engine: str | sqlalchemy.Engine, options: dict[str, Any]) -> None:
        sa = import_sqlalchemy()
        self._error: type[Exception] = sa.exc.SQLAlchemyError
        if isinstance(url_or_engine, str):
            self.engine = _engine_from_url(sa, url_or_engine, options)
            self.owned = True
            _forget_pool_after_fork(self.engine)
        elif isinstance(url_or_engine, sa.Engine):
            if options:
                raise TypeError(f"options {sorted(options)} apply only when a URL is given, "
                                "not an engine")
            self.engine, self.owned = url_or_engine, False
        else:
            raise TypeError(f"a database URL or a SQLAlchemy Engine, not "
                            f"{type(url_or_engine).__name__}")
        self.server = describe_server(self.engine.url)
        self._password: str | None = self.engine.url.password
        self.dialect: str = self.engine.dialect.name
        self.now: sqlalchemy.ColumnElement[float]
        if self.dialect == "postgresql":
            self.clock = "database"
            self.now = sa.literal_column(
                "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)", sa.Double)
        else:
            self.clock = "client"
            self.now = sa.bindparam("refresher_now", callable_=time.time, type_=sa.Double)

    def insert_new(self, table: sqlalchemy.Table,
                   values: dict[str, Any]) -> sqlalchemy.Insert:
        """An INSERT of ``values`` that does nothing when the row exists (``ON CONFLICT DO
        NOTHING`` on PostgreSQL and SQLite); run it with :meth:`inserted`."""
        statement: sqlalchemy.Insert
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            # RETURNING says whether a row went in (SQLAlchemy keeps no rowcount for an
            # INSERT on psycopg, unless told to, and only since 2.0.28).
            statement = postgresql.insert(table).values(values).on_conflict_do_nothing() \
                .returning(*table.primary_key.columns)
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            statement = sqlite.insert(table).values(values).on_conflict_do_nothing()
        else:
            statement = table.insert().values(values)
        return statement

    def inserted(self, connection: sqlalchemy.Connection, statement: sqlalchemy.Insert,
                 params: dict[str, Any]) -> bool:
        """Run an :meth:`insert_new` statement: False when the row was there already."""
        if self.dialect == "postgresql":
            return connection.execute(statement, params).first() is not None
        if self.dialect == "sqlite":
            return connection.execute(statement, params).rowcount == 1
        from sqlalchemy.exc import IntegrityError

        try:  # other databases: the duplicate key error, contained in a savepoint
            with connection.begin_nested():
                connection.execute(statement, params)
        except IntegrityError:
            return False
        return True

    def failure(self, doing: str, exc: BaseException) -> TokenStoreError:
        """A TokenStoreError for ``exc``, naming the server and never the password."""
        return server_failure(self.server, self._password, doing, exc)

    @contextlib.contextmanager
    def begin(self, doing: str) -> Iterator[sqlalchemy.Connection]:
        """A connection in a transaction, committed at the end of the block; a database
        error is a :class:`~refresher.TokenStoreError` saying what was being done."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except self._error as exc:
            raise self.failure(doing, exc) from None

    def dispose(self) -> None:
        """Close the pooled connections, when the engine is ours. Safe to call twice."""
        if self.owned:
            with contextlib.suppress(self._error):
                self.engine.dispose()
