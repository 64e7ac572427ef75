"""A real PostgreSQL 15 for the test suite and the benchmarks, in a temporary directory.

    with PostgresServer() as pg:          # initdb + start on a free 127.0.0.1 port
        asyncpg.connect(pg.dsn)           # postgresql://app:<password>@127.0.0.1:PORT/postgres
        pg.restart()                      # stop + start, same port and data directory

``PostgresServer`` is the postgres recipe's ``TemporaryPostgres``: the suite, the benchmarks
and the recipes' examples share one launcher. As a pytest plugin
(``pytest_plugins = ["tests.pg_server"]``) this module provides the session-scoped
``pg_server`` fixture and the function-scoped ``pg_database`` fixture (the DSN of a fresh,
empty database per test).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
from act_operator_lib.cookbook.postgres import TemporaryPostgres as PostgresServer

__all__ = ["PostgresServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
