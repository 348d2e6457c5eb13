"""A throw-away PostgreSQL server on loopback, for tests of code that uses SQLTokenStore.

Needs the PostgreSQL server binaries (Debian: ``apt-get install postgresql``, which puts
``initdb``, ``postgres``, ``pg_isready`` and ``psql`` under
``/usr/lib/postgresql/<version>/bin``); nothing else, no Python driver. The cluster lives in
a new temporary folder, listens on 127.0.0.1 and a free port only (no Unix socket), and is
built for speed rather than durability (``fsync=off``): a test server. Its data survives
``stop()`` and ``start()``, as a real database's does.

Authentication: every user is trusted from 127.0.0.1, except the users made with
:meth:`PostgresServer.create_user`, which must give their password (SCRAM).

PostgreSQL refuses to run as root, so when the tests run as root (CI, containers) the
server runs as the ``postgres`` user (or ``nobody``), which owns the folder; the process
is started directly (no ``pg_ctl``, no ``runuser``) so its PID is the postmaster's.

>>> with PostgresServer() as server:  # doctest: +SKIP
...     store = SQLTokenStore(server.create_database("tokens"))
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from refresher.testing._server_process import ServerProcess

__all__ = ["PostgresServer", "find_bin_dir"]

#: The group role whose members log in with a password (every other user is trusted).
PASSWORD_GROUP = "password_users"
#: The superuser initdb makes.
SUPERUSER = "postgres"


def _version(path: str) -> tuple[int, ...]:
    name = Path(path).parent.parent.name  # /usr/lib/postgresql/<version>/bin/initdb
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def find_bin_dir() -> Path | None:
    """The folder of the newest PostgreSQL server binaries, or ``None`` when there are none.

    Debian's ``/usr/lib/postgresql/<version>/bin`` first (its ``postgres`` is not on PATH),
    then an ``initdb`` on PATH with ``postgres`` beside it.
    """
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version,
                         reverse=True):
        folder = Path(initdb).parent
        if (folder / "postgres").exists():
            return folder
    on_path = shutil.which("initdb")
    if on_path is not None:
        folder = Path(os.path.realpath(on_path)).parent
        if (folder / "postgres").exists():
            return folder
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user "
                       "exists to run PostgreSQL as")


class PostgresServer(ServerProcess):
    """One PostgreSQL cluster on 127.0.0.1, in a folder of its own.

    ``start()`` (or ``with``) makes the cluster the first time and starts the server on a
    free port; ``stop()`` ends it (a fast shutdown: clients are disconnected) and ``kill()``
    as a crash would (an immediate shutdown); ``start()`` again serves the same data on the
    same port. ``cleanup()`` removes the folder. ``bin_dir`` defaults to
    :func:`find_bin_dir`.
    """

    name = "postgres"
    start_timeout = 30.0
    end_timeout = 30.0
    #: A fast shutdown (clients are cut off, data is kept); an immediate one, as a crash.
    stop_signal = signal.SIGINT
    kill_signal = signal.SIGQUIT
    escalation = signal.SIGQUIT
    log_tail = 3000

    def __init__(self, bin_dir: Path | str | None = None) -> None:
        super().__init__()
        found = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        if found is None:
            raise FileNotFoundError("PostgreSQL server binaries not found "
                                    "(Debian/Ubuntu: apt-get install postgresql)")
        self.bin_dir = found
        self.user = _server_user()
        # Not under pytest's tmp_path: its folders are 0700 root, closed to the server user.
        self.workdir = Path(tempfile.mkdtemp(prefix="refresher-postgres-"))
        self._chown(self.workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, workdir={str(self.workdir)!r})"

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.cleanup()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The superuser's URL to the ``postgres`` database."""
        return self.url_for()

    def url_for(self, database: str = "postgres", user: str = SUPERUSER,
                password: str | None = None) -> str:
        """A ``postgresql://`` URL (SQLAlchemy's form) for ``database`` as ``user``."""
        name = quote(user, safe="")
        auth = f"{name}:{quote(password, safe='')}@" if password else f"{name}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database}"

    # -- running -------------------------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``command`` as the server user (ourselves unless we are root)."""
        if self.user is None:
            return subprocess.Popen(command, cwd=self.workdir, env=self._env(),  # noqa: S603
                                    **kwargs)
        return subprocess.Popen(command, cwd=self.workdir, env=self._env(),  # noqa: S603
                                user=self.user.pw_uid, group=self.user.pw_gid,
                                extra_groups=[], **kwargs)

    def _run(self, *args: str) -> None:
        process = self._popen([str(self.bin_dir / args[0]), *args[1:]],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({process.returncode}):\n"
                               f"{output.decode(errors='replace')}")

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        if self.user is not None:
            env["HOME"] = str(self.workdir)
        return env

    def _init_cluster(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        # Users of the password group give a password; everyone else is trusted, on
        # 127.0.0.1 only (no other line: other addresses and Unix sockets are refused).
        (self.data_dir / "pg_hba.conf").write_text(
            f"host all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n", encoding="utf-8")

    def _command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=300", "-c", "logging_collector=off",
        ]

    def _log_file(self) -> Path:
        return self.log_path

    def _spawn(self, command: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return self._popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _answers(self) -> bool:
        return self.ready()

    def start(self) -> PostgresServer:
        """Start (making the cluster and picking a free port the first time)."""
        first = not self.data_dir.exists()
        if first:
            self._init_cluster()
        super().start()
        if first:
            self.psql(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")
        return self

    def ready(self) -> bool:
        """True when the server accepts connections (``pg_isready``)."""
        done = subprocess.run(  # noqa: S603
            [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
             "-t", "1"], capture_output=True, timeout=10)
        return done.returncode == 0

    def cleanup(self) -> None:
        """Remove the cluster's folder (stop the server first)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- SQL, through psql ---------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser; the unaligned, tuples-only output."""
        done = subprocess.run(  # noqa: S603
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-c", sql], capture_output=True, timeout=60, env=self._env())
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def create_database(self, name: str) -> str:
        """Make an empty database; its superuser URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, cutting off whoever is still connected to it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_user(self, name: str, password: str, database: str | None = None) -> str:
        """Make a user that logs in with ``password`` (and owns ``database``, if given);
        a URL with the password, to ``database`` or ``postgres``."""
        literal = password.replace("'", "''")
        self.psql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{literal}' IN ROLE "
                  f"{PASSWORD_GROUP}")
        if database is not None:
            self.psql(f'ALTER DATABASE "{database}" OWNER TO "{name}"')
            self.psql(f'GRANT ALL ON SCHEMA public TO "{name}"', database=database)
        return self.url_for(database or "postgres", user=name, password=password)
