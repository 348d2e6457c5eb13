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
  queue instead of failing with "database is locked"). The store's own transactions wait
  for another writer in steps of a few milliseconds, within that timeout (on any SQLite
  engine, within its own). How: :mod:`refresher.stores.sqlite_tuning`.
- PostgreSQL: ``postgresql://`` uses psycopg 3 (the ``[sql]`` extra installs it, not
  psycopg2 or asyncpg); a 5 s connect timeout; ``pool_pre_ping``, so connections broken by a
  server restart are replaced instead of failing once each.
- Both: ``hide_parameters``, so SQLAlchemy's error messages never show a token.

Logging. The store's statements run on a view of the engine (``engine.execution_options()``:
the same pool, dialect and events) that logs on :data:`ENGINE_LOGGER` with its parameters
hidden and never a row, even on an engine of the caller's and with ``sqlalchemy.engine``
at DEBUG or ``echo="debug"``: SQLAlchemy logs the rows it reads at DEBUG, whatever
``hide_parameters`` says, and a token row is a whole token pair. Statements still show at
INFO (or with ``echo=True``), without their parameters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from .._fork import register
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, MissingStoreExtra, TokenStoreError
from . import sqlite_tuning
from ._urls import scrub_url, url_password

if TYPE_CHECKING:
    import sqlalchemy

__all__ = ["Database", "ENGINE_LOGGER", "import_sqlalchemy", "describe_server",
           "server_failure"]

_T = TypeVar("_T")

#: Seconds to connect to a database server before it counts as unreachable.
CONNECT_TIMEOUT = 5
# What of a driver's message goes into ours: its first line, this long at most.
_DETAIL_LIMIT = 300
#: The logger SQLAlchemy logs the store's statements on (never their parameters or rows).
ENGINE_LOGGER = "sqlalchemy.engine.Engine.refresher"


class _NoRows(logging.Filter):
    """Drops what SQLAlchemy logs below INFO on :data:`ENGINE_LOGGER`: the rows it read."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO


def _quiet_logger() -> None:
    logger = logging.getLogger(ENGINE_LOGGER)
    if not any(isinstance(f, _NoRows) for f in logger.filters):
        logger.addFilter(_NoRows())
        # With echo=True SQLAlchemy gives a logger without handlers a stdout one of its
        # own: this one lets the records go up to the engine's instead (printed once).
        logger.addHandler(logging.NullHandler())


_quiet_logger()


def import_sqlalchemy() -> Any:
    """The sqlalchemy package; when it is absent, an error that says how to install it."""
    try:
        import sqlalchemy
    except ImportError:
        raise MissingStoreExtra("SQLTokenStore needs SQLAlchemy 2", extra="sql",
                                name="sqlalchemy") from None
    return sqlalchemy


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


def _engine_from_url(sa: Any, text: str, options: dict[str, Any]) -> sqlalchemy.Engine:
    """An engine for ``text`` with refresher's defaults under ``options``."""
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise TokenStoreError(f"invalid database URL {scrub_url(text, 'database URL')}: "
                              f"{_detail(exc, url_password(text))}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # the driver the [sql] extra installs
    backend = url.get_backend_name()
    _refuse_async_driver(url)
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
        connect_args.setdefault("timeout", sqlite_tuning.SQLITE_BUSY_TIMEOUT)
        if not url.query.get("uri"):
            try:
                sqlite_tuning.prepare_file(database)
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
        raise _missing_driver(url, exc) from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
        raise server_failure(describe_server(url), url.password, "start", exc) from None
    if backend == "sqlite":
        sa.event.listen(engine, "connect", sqlite_tuning.on_connect)
    return engine


def _refuse_async_driver(url: sqlalchemy.URL) -> None:
    """A :class:`~refresher.ConfigurationError` for an asyncio driver (asyncpg, aiosqlite,
    psycopg_async...): the store talks to its database synchronously, and the async front
    ends call it from a worker thread, so such a driver could only fail."""
    try:
        is_async = bool(url.get_dialect().is_async)
    except Exception:  # an unknown dialect: create_engine says so, in its words
        return
    if is_async:
        raise ConfigurationError(
            f"SQLTokenStore cannot use {url.drivername}:// ({url.get_driver_name()} is an "
            "asyncio driver, and the store talks to its database synchronously; async "
            f"programs use it too, from a worker thread): use {_sync_form(url)}"
        )


def _sync_form(url: sqlalchemy.URL) -> str:
    """What to write instead of ``url``'s scheme, in words."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        return ("postgresql:// (or postgresql+psycopg://): psycopg 3, which refresher's "
                "[sql] extra installs")
    if backend == "sqlite":
        return "sqlite:///PATH (Python's own sqlite3)"
    return f"{backend}:// with a synchronous driver"


def _missing_driver(url: sqlalchemy.URL, exc: ImportError) -> MissingStoreExtra:
    """The error for a database driver that is not installed: the extra that installs it
    (psycopg 3, for postgresql:// and postgresql+psycopg://), or that no extra does."""
    where = f"SQLTokenStore at {describe_server(url)}"
    driver = exc.name or url.get_driver_name()
    if url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg":
        return MissingStoreExtra(f"{where} needs the database driver psycopg 3", extra="sql",
                                 name=driver)
    return MissingStoreExtra(
        f"{where} needs the database driver {driver}, which is not installed, and which "
        "refresher's [sql] extra does not install (it installs psycopg 3, for postgresql:// "
        f"and postgresql+psycopg://): use one of those, or install {driver} yourself",
        extra=None, name=driver)


def _quiet_view(engine: sqlalchemy.Engine) -> sqlalchemy.Engine:
    """``engine`` as the store talks through it: the same pool, dialect and events, logged
    on :data:`ENGINE_LOGGER` with parameters hidden; ``echo="debug"`` (rows) becomes
    ``echo=True`` (statements)."""
    view = engine.execution_options()
    view.hide_parameters = True
    view.logging_name = ENGINE_LOGGER.rpartition(".")[2]
    view.echo = bool(engine.echo)  # the setter makes its logger anew, under that name
    return view


class Database:
    """The store's engine, with its name, its clock, and its errors translated.

    ``url_or_engine`` is a URL (the engine is then made here, owned, and disposed of by
    :meth:`dispose`; ``options`` go to :func:`sqlalchemy.create_engine`) or an
    :class:`sqlalchemy.Engine` of the caller's, used as it is and left open.

    ``now`` is the SQL expression leases and ``updated_at`` are written on, in epoch
    seconds: the server's clock on PostgreSQL (``clock_timestamp()``: every host that
    shares the database agrees on it; ``clock`` is ``"database"``), ``wall.time()``
    elsewhere (``clock`` is ``"client"``: a clock no other process may trust, see
    :mod:`~refresher.stores.sql_lease`).
    """

    def __init__(self, url_or_engine: str | sqlalchemy.Engine, options: dict[str, Any],
                 wall: Clock = SYSTEM_CLOCK) -> None:
        sa = import_sqlalchemy()
        self._error: type[Exception] = sa.exc.SQLAlchemyError
        if isinstance(url_or_engine, str):
            self.engine = _engine_from_url(sa, url_or_engine, options)
            self.owned = True
        elif isinstance(url_or_engine, sa.Engine):
            if options:
                raise TypeError(f"options {sorted(options)} apply only when a URL is given, "
                                "not an engine")
            self.engine, self.owned = url_or_engine, False
        else:
            raise TypeError(f"a database URL or a SQLAlchemy Engine, not "
                            f"{type(url_or_engine).__name__}")
        self._view = _quiet_view(self.engine)
        self.server = describe_server(self.engine.url)
        self._password: str | None = self.engine.url.password
        register(self)  # a forked child opens connections of its own
        self.dialect: str = self.engine.dialect.name
        self.now: sqlalchemy.ColumnElement[float]
        if self.dialect == "postgresql":
            self.clock = "database"
            self.now = sa.literal_column(
                "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)", sa.Double)
        else:
            self.clock = "client"
            self.now = sa.bindparam("refresher_now", callable_=wall.time, type_=sa.Double)

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

    def run(self, doing: str, work: Callable[[sqlalchemy.Connection], _T]) -> _T:
        """``work(connection)`` in a transaction, committed when it returns; its result. A
        database error is a :class:`~refresher.TokenStoreError` saying what was being done.

        On SQLite, a transaction that meets another writer's lock is rolled back and run
        again every millisecond or so, for as long as the connection's busy timeout says
        (:func:`~refresher.stores.sqlite_tuning.short_busy_waits`); so ``work`` must do
        nothing but talk to the database.
        """
        if self.dialect != "sqlite":
            try:
                with self._view.begin() as connection:
                    return work(connection)
            except self._error as exc:
                raise self.failure(doing, exc) from None
        give_up: float | None = None
        while True:
            try:
                with self._view.begin() as connection, \
                        sqlite_tuning.short_busy_waits(connection) as patience:
                    if give_up is None:
                        give_up = time.monotonic() + patience
                    return work(connection)
            except self._error as exc:
                if (not sqlite_tuning.busy(exc) or give_up is None
                        or time.monotonic() >= give_up):
                    raise self.failure(doing, exc) from None
            time.sleep(sqlite_tuning.BUSY_RETRY)

    def _after_fork_in_child(self) -> None:
        # SQLAlchemy's advice for a forked child: a new pool, the parent's connections
        # dropped unused (close=False: closing them would end the parent's sessions too).
        # Done for an engine of the caller's as well: its pool must not cross the fork.
        self.engine.dispose(close=False)

    def dispose(self) -> None:
        """Close the pooled connections, when the engine is ours. Safe to call twice."""
        if self.owned:
            with contextlib.suppress(self._error):
                self.engine.dispose()
