"""The pooled PostgreSQL recipe at the edges: lost answers, caller bugs, exhaustion by other
users of the pool, unnoticed restarts, secrets and checkpoints, tiny statement timeouts.

Everything runs against the suite's real PostgreSQL 15 (password auth); a lost answer is
made by a real TCP proxy that drops the connection right after the server replied.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from act_operator_lib.cookbook.pg_stream import CursorStreamPolicy
from act_operator_lib.cookbook.postgres import (
    ConnectionLostError,
    PoolExhaustedError,
    PostgresPool,
    PostgresSettings,
    QueryRows,
    dsn_from,
    is_connection_error,
    is_read_only,
    postgres_checkpointer,
)
from langgraph.graph import StateGraph

from act_operator_lib import metrics
from tests.pg_server import PostgresServer


class CuttingProxy:
    """A TCP proxy to the test server that can drop one connection the moment the server's
    reply contains ``marker``: the server did the work, the client never hears of it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.marker: bytes | None = None
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def dsn(self, dsn: str) -> str:
        """``dsn`` pointed at this proxy."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut_next_answer(self) -> None:
        """Drop the connection that next receives an executed statement's answer.

        asyncpg sends Bind, Execute and Sync together and the server flushes its reply,
        starting with BindComplete, only after Sync has committed: so the statement ran.
        """
        self.marker = b"2\x00\x00\x00\x04"  # BindComplete

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.add(up_writer)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_server: bool
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if from_server and self.marker is not None and self.marker in data:
                        self.marker = None
                        self.cuts += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        finally:
            writer.transport.abort()
            up_writer.transport.abort()
            self._writers.discard(writer)
            self._writers.discard(up_writer)


@pytest.fixture
async def proxy(pg_server: PostgresServer) -> Any:
    async with CuttingProxy(pg_server.port) as running:
        yield running


# --- 1. retries depend on what the statement does ---------------------------------------


async def test_a_write_whose_answer_was_lost_runs_once_and_reads_are_retried(
    pg_server: PostgresServer, pg_database: str, proxy: CuttingProxy
) -> None:
    db = PostgresPool(PostgresSettings(dsn=proxy.dsn(pg_database), max_size=2))
    await db.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")

    # The server commits the INSERT and answers; the answer never arrives.
    proxy.cut_next_answer()
    with pytest.raises(ConnectionLostError, match="may or may not have committed") as caught:
        await db.fetchrow("INSERT INTO orders (item) VALUES ($1) RETURNING id", "book")
    assert proxy.cuts == 1
    assert "pass idempotent=True" in str(caught.value)
    assert pg_server.password not in str(caught.value)
    assert is_connection_error(caught.value)
    assert await db.fetchval("SELECT count(*) FROM orders") == 1  # committed, exactly once

    # A read whose answer was lost is run again on a fresh connection.
    proxy.cut_next_answer()
    assert await db.fetchval("SELECT item FROM orders WHERE item = $1", "book") == "book"
    assert proxy.cuts == 2

    # So is a write the caller marks idempotent.
    proxy.cut_next_answer()
    row = await db.fetchrow(
        "INSERT INTO orders (id, item) VALUES (100, $1) ON CONFLICT (id) DO NOTHING RETURNING id",
        "pen",
        idempotent=True,
    )
    assert proxy.cuts == 3
    assert row is None  # the first run inserted it; the retry found it there
    assert await db.fetchval("SELECT count(*) FROM orders WHERE id = 100") == 1

    # A SELECT with a side effect is not a read.
    proxy.cut_next_answer()
    with pytest.raises(ConnectionLostError, match="may or may not have committed"):
        await db.fetchval("SELECT nextval('orders_id_seq')")
    # And idempotent=False turns the retry of a read off.
    proxy.cut_next_answer()
    with pytest.raises(ConnectionLostError, match="may or may not have committed"):
        await db.fetchval("SELECT count(*) FROM orders", idempotent=False)
    assert proxy.cuts == 5
    await db.aclose()


@pytest.mark.parametrize(
    ("query", "read_only"),
    [
        ("SELECT id, name FROM users WHERE team = $1 ORDER BY id", True),
        ("  -- the count\n  select count(*) FROM users WHERE id = ANY($1::int[])", True),
        ("(SELECT 1) UNION (SELECT 2)", True),
        ("WITH t AS (SELECT lower(name) AS n FROM users) SELECT n FROM t", True),
        ("VALUES (1), (2)", True),
        ("SHOW statement_timeout", True),
        ("INSERT INTO orders (item) VALUES ($1) RETURNING id", False),
        ("WITH moved AS (DELETE FROM queue RETURNING *) SELECT * FROM moved", False),
        ("SELECT * INTO backup FROM users", False),
        ("SELECT id FROM jobs WHERE state = 'new' FOR UPDATE SKIP LOCKED", False),
        ("SELECT nextval('orders_id_seq')", False),
        ("SELECT my_schema.archive_user($1)", False),
        ("SELECT pg_terminate_backend($1)", False),
        ("SELECT 1; DELETE FROM users", False),
        ("/* SELECT */ UPDATE users SET team = $1", False),
        ("CREATE TABLE t (x int)", False),
    ],
)
def test_read_only_classification_is_conservative(query: str, read_only: bool) -> None:
    assert is_read_only(query) is read_only


# --- 2. only a connection that is really gone is dropped -------------------------------


async def test_caller_bugs_and_user_errors_keep_the_healthy_connection(pg_database: str) -> None:
    with metrics.collecting():
        db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=1), name="healthy-pg")
        pid = await db.fetchval("SELECT pg_backend_pid()")

        with pytest.raises(asyncpg.InterfaceError, match="expects 1 argument") as caught:
            await db.fetchval("SELECT $1::int", 1, 2)
        assert not isinstance(caught.value, ConnectionLostError)
        assert not is_connection_error(caught.value)
        assert await db.fetchval("SELECT pg_backend_pid()") == pid  # not terminated

        user_errors = [
            TimeoutError("the upstream HTTP call timed out"),
            ConnectionResetError("the upstream peer reset"),
            OSError("disk full"),
        ]

        async def fail_inside(error: Exception) -> None:
            async with db.transaction() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == pid
                await conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
                raise error

        for error in user_errors:
            with pytest.raises(type(error)):
                await fail_inside(error)
            assert not is_connection_error(error)
            assert await db.fetchval("SELECT pg_backend_pid()") == pid
        assert await db.fetchval("SELECT to_regclass('t') IS NULL")  # rolled back
        assert metrics.snapshot().value("pg_read_retries", name="healthy-pg") == 0
    await db.aclose()


# --- 3. every acquire is bounded ------------------------------------------------------------


async def test_acquire_is_bounded_when_the_raw_pool_holds_every_connection(
    pg_database: str,
) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2, acquire_timeout=0.3))
    pool = await db.pool()
    held = [await pool.acquire() for _ in range(2)]  # e.g. pg_stream's stream_batches users
    try:
        with pytest.raises(
            PoolExhaustedError, match=r"acquire_timeout=0.3s \(max_size=2, all in use"
        ):
            await asyncio.wait_for(db.fetchval("SELECT 1"), 20)

        async def use_a_connection() -> None:
            async with db.connection() as conn:
                await conn.fetchval("SELECT 1")

        with pytest.raises(PoolExhaustedError):
            await asyncio.wait_for(use_a_connection(), 20)
    finally:
        for conn in held:
            await pool.release(conn)
    assert await db.fetchval("SELECT 1") == 1
    await db.aclose()


# --- 4. the first read after an unnoticed restart ---------------------------------------


@pytest.mark.allow_blocking  # the restart stalls the loop so the pool cannot see its connections die
async def test_first_read_after_an_unnoticed_restart_succeeds_and_a_write_is_not_retried(
    pg_server: PostgresServer, pg_database: str
) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, min_size=0, max_size=3))
    await db.execute("CREATE TABLE notes (body text)")
    pool = await db.pool()

    async def open_three() -> None:
        await asyncio.gather(*(db.fetchval("SELECT pg_sleep(0.1)") for _ in range(3)))
        assert pool.get_size() == pool.get_idle_size() == 3

    await open_three()
    # Called without awaiting: the loop is blocked for the whole restart, so the pool
    # cannot see its three connections die.
    pg_server.restart()
    assert await db.fetchval("SELECT count(*) FROM notes") == 0

    await open_three()
    pg_server.restart()
    with pytest.raises(ConnectionLostError, match="may or may not have committed"):
        await db.execute("INSERT INTO notes VALUES ($1)", "first")
    # Not retried; the pool replaced its dead connections, so the next write works.
    await db.execute("INSERT INTO notes VALUES ($1)", "second")
    assert [r["body"] for r in await db.fetch("SELECT body FROM notes")] == ["second"]
    await db.aclose()


# --- 5. passwords never reach a checkpoint ------------------------------------------------


class Teams(TypedDict, total=False):
    team: str
    rows: list[dict[str, Any]]


@dataclass
class Ctx:
    database_url: str


async def test_no_checkpoint_row_holds_the_password(
    pg_server: PostgresServer, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = pg_server.password
    setup = PostgresPool(PostgresSettings(dsn=pg_database))
    await setup.execute("CREATE TABLE users (name text, team text)")
    await setup.execute("INSERT INTO users VALUES ('ada', 'red'), ('bob', 'blue')")
    db = PostgresPool(PostgresSettings())  # no DSN of its own: the run supplies it
    builder = StateGraph(Teams, context_schema=Ctx)
    builder.add_node(QueryRows(db, "SELECT name FROM users WHERE team = $1", ["team"]))
    builder.add_edge("__start__", "QueryRows")

    async with postgres_checkpointer(pg_database) as saver:
        graph = builder.compile(checkpointer=saver)
        by_context = {"configurable": {"thread_id": "by-context"}}
        result = await graph.ainvoke(
            {"team": "red"}, by_context, context=Ctx(pg_database), durability="sync"
        )
        assert result["rows"] == [{"name": "ada"}]

        monkeypatch.setenv("DATABASE_URL", pg_database)
        by_env = {"configurable": {"thread_id": "by-env"}}
        result = await graph.ainvoke({"team": "blue"}, by_env, context=Ctx(""))
        assert result["rows"] == [{"name": "bob"}]
        monkeypatch.delenv("DATABASE_URL")

        # A secret in configurable is refused, and masked in what was saved meanwhile.
        by_configurable = {"configurable": {"thread_id": "bad", "database_url": pg_database}}
        with pytest.raises(
            ValueError, match=r"configurable\.database_url must not carry a password"
        ):
            await graph.ainvoke({"team": "red"}, by_configurable, durability="sync")
        for config in (by_context, by_env, by_configurable):
            state = await graph.aget_state(config)
            assert password not in repr(state)
        history = [s async for s in graph.aget_state_history(by_configurable)]
        assert history
        assert all(password not in repr(s.metadata) for s in history)

    conn = await asyncpg.connect(pg_database)
    try:
        for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs"):
            rows = await conn.fetch(f"SELECT * FROM {table}")
            assert rows, table
            for row in rows:
                for value in row.values():
                    if isinstance(value, bytes | memoryview):
                        assert password.encode() not in bytes(value), table
                    else:
                        assert password not in str(value), table
    finally:
        await conn.close()
    await db.aclose()
    await setup.aclose()


def test_a_password_free_dsn_may_still_come_from_configurable() -> None:
    url = "postgresql://app@db.internal:5432/app"  # the password comes from ~/.pgpass
    assert dsn_from({"configurable": {"database_url": url}}) == url
    with pytest.raises(ValueError, match=r"got 'postgresql://app:\*\*\*@db/app'") as caught:
        dsn_from({"configurable": {"database_url": "postgresql://app:s3cret@db/app"}})
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match="must not carry a password"):
        dsn_from({"configurable": {"database_url": "postgresql://db/app?password=s3cret"}})


# --- 6. statement_timeout never becomes "no limit" -------------------------------------


@pytest.mark.parametrize("seconds", [0.0004, 1e-9, 0.0009])
def test_statement_timeout_below_a_millisecond_is_refused(seconds: float) -> None:
    refused = r"statement_timeout must be a finite number of seconds >= 0\.001"
    with pytest.raises(ValueError, match=refused) as pool:
        PostgresSettings(statement_timeout=seconds)
    assert repr(seconds) in str(pool.value)
    with pytest.raises(ValueError, match=refused):
        CursorStreamPolicy(statement_timeout=seconds)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"statement_timeout": float("nan")}, ValueError, "statement_timeout must be .*, got nan"),
        ({"acquire_timeout": float("inf")}, ValueError, "acquire_timeout must be .*, got inf"),
        ({"acquire_timeout": True}, TypeError, "acquire_timeout must be a finite .*, got True"),
        ({"connect_timeout": "5"}, TypeError, "connect_timeout must be a finite .*, got '5'"),
    ],
)
def test_timeouts_must_be_finite_numbers(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        PostgresSettings(**kwargs)


async def test_a_fractional_millisecond_rounds_up(pg_database: str) -> None:
    # Whole milliseconds on the server, rounded up (a generous limit: this machine is loaded).
    db = PostgresPool(PostgresSettings(dsn=pg_database, statement_timeout=1.0015))
    assert await db.fetchval("SHOW statement_timeout") == "1002ms"
    await db.aclose()
    db = PostgresPool(PostgresSettings(dsn=pg_database, statement_timeout=0.2))
    assert await db.fetchval("SHOW statement_timeout") == "200ms"
    await db.aclose()
