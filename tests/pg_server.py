"""A real PostgreSQL 15 for the test suite and the benchmarks, in a temporary directory.

    with PostgresServer() as pg:          # initdb + start on a free 127.0.0.1 port
        asyncpg.connect(pg.dsn)           # postgresql://app:<password>@127.0.0.1:PORT/postgres
        pg.restart()                      # stop + start, same port and data directory

As a pytest plugin (``pytest_plugins = ["tests.pg_server"]``) it provides the
session-scoped ``pg_server`` fixture and the function-scoped ``pg_database`` fixture
(the DSN of a fresh, empty database per test).

The server refuses to run as root: when the suite runs as root, ``initdb``/``pg_ctl`` run
as the ``postgres`` user through ``runuser``. Nothing touches a system-wide cluster.
Host connections need a password (scram-sha-256), so password redaction is tested for real.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PostgresServer", "find_pg_bin", "free_port"]

USER = "app"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_pg_bin() -> Path:
    """The directory holding ``initdb``/``pg_ctl``: PATH first, then /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or /usr/lib/postgresql"
    )


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``start()``, ``stop()``, ``restart()``, ``close()``."""

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self._as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="act-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False
        try:
            if self._as_root:
                shutil.chown(self.root, "postgres", "postgres")
            self._initdb()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def dsn(self) -> str:
        """The DSN of the ``postgres`` database, password included."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The DSN of ``database`` on this server, password included."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr}{result.stdout}\n{log}"
            )

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, roll back open transactions)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still in it."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, sql: str) -> None:
        # Over the unix socket (trust auth): no password needed for the suite's own admin work.
        self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", USER,
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql)  # fmt: skip

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, running={self.running})"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session: ``.dsn``, ``.restart()``, ``.stop()``, ``.start()``."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    pg_server.start()  # a previous test may have left it stopped
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.start()
    pg_server.drop_database(name)
