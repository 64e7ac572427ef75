"""PgCursorStreamNode against a real PostgreSQL: batches as progress, bounded memory, faults."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import asyncpg
import pytest
from act_operator_lib.cookbook.pg_stream import (
    CursorStreamPolicy,
    PgCursorStreamNode,
    stream_batches,
)
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import NodeTimeoutError
from langgraph.graph import START, StateGraph
from langgraph.types import TimeoutPolicy

from tests.helpers import cancel_after_first_chunk, other_tasks_after, run_example


class State(TypedDict, total=False):
    upto: int
    rows_read: int


@pytest.fixture
async def db(pg_database: str) -> AsyncIterator[PostgresPool]:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2), name="stream-test")
    yield db
    await db.aclose()


def build(node: PgCursorStreamNode, *, checkpointer: Any = None) -> Any:
    builder = StateGraph(State)
    builder.add_node(node)
    builder.add_edge(START, node.name)
    return builder.compile(checkpointer=checkpointer)


async def all_connections_idle(db: PostgresPool) -> bool:
    pool = await db.pool()
    for _ in range(100):
        if pool.get_idle_size() == pool.get_size():
            return True
        await asyncio.sleep(0.01)
    return False


SERIES = "SELECT i, 'row ' || i AS label FROM generate_series(1, $1::int) AS i ORDER BY i"


async def test_batches_arrive_as_progress_and_the_count_lands_in_state(
    db: PostgresPool,
) -> None:
    node = PgCursorStreamNode(
        db,
        SERIES,
        args=lambda state: (state["upto"],),
        policy=CursorStreamPolicy(batch_size=4),
    )
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    async for mode, chunk in build(node).astream({"upto": 10}, stream_mode=["custom", "values"]):
        if mode == "custom":
            events.append(chunk)
        else:
            final = chunk
    assert [(e["batch"], e["rows_so_far"], len(e["rows"])) for e in events] == [
        (1, 4, 4),
        (2, 8, 4),
        (3, 10, 2),
    ]
    assert events[0]["node"] == "PgCursorStreamNode"
    assert events[2]["rows"] == [{"i": 9, "label": "row 9"}, {"i": 10, "label": "row 10"}]
    assert final == {"upto": 10, "rows_read": 10}
    assert await all_connections_idle(db)


async def test_handle_batch_sees_every_row_and_counts_only_events(db: PostgresPool) -> None:
    seen: list[int] = []

    async def index(rows: list[asyncpg.Record]) -> None:
        seen.extend(row["i"] for row in rows)

    node = PgCursorStreamNode(
        db,
        SERIES,
        args=lambda state: (state["upto"],),
        handle_batch=index,
        policy=CursorStreamPolicy(batch_size=100, emit_rows=False, output_key="count"),
    )
    builder = StateGraph(dict)
    builder.add_node(node)
    builder.add_edge(START, node.name)
    events = [c async for c in builder.compile().astream({"upto": 250}, stream_mode="custom")]
    assert seen == list(range(1, 251))
    assert [("rows" in e, e["rows_so_far"]) for e in events] == [
        (False, 100),
        (False, 200),
        (False, 250),
    ]


async def test_a_failing_handle_batch_surfaces_and_returns_the_connection_rolled_back(
    db: PostgresPool,
) -> None:
    async def index(rows: list[asyncpg.Record]) -> None:
        if rows[0]["i"] > 100:
            raise ValueError("the index is full")

    node = PgCursorStreamNode(
        db,
        SERIES,
        args=lambda state: (state["upto"],),
        handle_batch=index,
        policy=CursorStreamPolicy(batch_size=100),
    )
    with pytest.raises(ValueError, match="the index is full"):
        await build(node).ainvoke({"upto": 1000})
    assert await all_connections_idle(db)
    pool = await db.pool()
    async with pool.acquire() as conn:  # max_size=2: the same connections, none mid-transaction
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM pg_cursors WHERE name <> ''") == 0


async def test_memory_stays_bounded_over_a_large_result(db: PostgresPool) -> None:
    node = PgCursorStreamNode(
        db,
        "SELECT i, repeat('x', 100) AS pad FROM generate_series(1, $1::int) AS i",
        args=lambda state: (state["upto"],),
        policy=CursorStreamPolicy(batch_size=500),
    )
    graph = build(node)
    await graph.ainvoke({"upto": 1000})  # warm-up: statement cache, imports
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        batches = 0
        async for event in graph.astream({"upto": 100_000}, stream_mode="custom"):
            batches += 1
            assert len(event["rows"]) == 500
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert batches == 200
    # 100 000 rows of ~100 bytes fetched at once would be > 20 MB of Python objects.
    assert peak < 3 * 1024 * 1024, f"peak grew by {peak / 1e6:.1f} MB"


async def test_statement_timeout_mid_cursor_fails_clearly_and_returns_the_connection(
    db: PostgresPool,
) -> None:
    # The first 30 rows are instant; row 31 sleeps past the 0.3 s statement timeout.
    slow_tail = (
        "SELECT i, CASE WHEN i > 30 THEN pg_sleep(2) END AS nap"
        " FROM generate_series(1, 100) AS i ORDER BY i"
    )
    node = PgCursorStreamNode(
        db, slow_tail, policy=CursorStreamPolicy(batch_size=10, statement_timeout=0.3)
    )
    graph = build(node, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "timeout"}}
    events: list[dict[str, Any]] = []
    before = asyncio.all_tasks()

    async def run() -> None:
        async for chunk in graph.astream({"upto": 0}, config, stream_mode="custom"):
            events.append(chunk)

    with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout") as caught:
        await run()
    assert [e["rows_so_far"] for e in events] == [10, 20, 30]
    assert "PgCursorStreamNode: stopped after 30 rows in 3 batches" in caught.value.__notes__
    assert await other_tasks_after(before) == set()
    assert await all_connections_idle(db)
    state = await graph.aget_state(config)
    assert state.values == {"upto": 0}
    assert state.next == ("PgCursorStreamNode",)
    # SET LOCAL ended with the transaction: the pool's own default is back.
    async with db.connection() as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "30s"


async def test_cancelling_the_run_mid_fetch_returns_the_connection(db: PostgresPool) -> None:
    slow = "SELECT i, pg_sleep(0.05) FROM generate_series(1, 1000) AS i"
    graph = build(PgCursorStreamNode(db, slow, policy=CursorStreamPolicy(batch_size=2)))
    before = asyncio.all_tasks()
    assert await cancel_after_first_chunk(graph.astream({"upto": 0}, stream_mode="custom"))
    assert await other_tasks_after(before) == set()
    assert await all_connections_idle(db)
    async with db.connection() as conn:  # the connection is usable, not stuck in the transaction
        assert await conn.fetchval("SELECT 1") == 1
        assert not conn.is_in_transaction()


async def test_a_heartbeat_per_batch_bounds_the_time_between_batches(db: PostgresPool) -> None:
    def build_with_idle_timeout(query: str) -> Any:
        builder = StateGraph(State)
        node = PgCursorStreamNode(db, query, policy=CursorStreamPolicy(batch_size=1))
        builder.add_node(node, timeout=TimeoutPolicy(idle_timeout=0.35, refresh_on="heartbeat"))
        builder.add_edge(START, node.name)
        return builder.compile()

    # Six one-row batches 0.1 s apart: 0.6 s in all, longer than the idle timeout, never idle.
    steady = "SELECT i, pg_sleep(0.1) FROM generate_series(1, 6) AS i"
    assert await build_with_idle_timeout(steady).ainvoke({"upto": 0}) == {
        "upto": 0,
        "rows_read": 6,
    }
    stalled = "SELECT i, CASE WHEN i = 3 THEN pg_sleep(2) END FROM generate_series(1, 6) AS i"
    with pytest.raises(NodeTimeoutError) as caught:
        await build_with_idle_timeout(stalled).ainvoke({"upto": 0})
    assert caught.value.kind == "idle"
    assert await all_connections_idle(db)


async def test_the_cursor_runs_in_a_read_only_transaction(db: PostgresPool) -> None:
    async with db.connection() as conn:
        await conn.execute("CREATE TABLE notes (body text)")
    writes = "INSERT INTO notes VALUES ('written by a read') RETURNING body"
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError, match="read-only transaction"):
        await build(PgCursorStreamNode(db, writes)).ainvoke({"upto": 0})
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM notes") == 0
    assert await all_connections_idle(db)


async def test_the_dsn_can_come_from_the_runs_context(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(max_size=1), name="dsn-from-context")
    try:
        node = PgCursorStreamNode(db, SERIES, args=lambda state: (state["upto"],))
        result = await build(node).ainvoke({"upto": 5}, context={"database_url": pg_database})
        assert result == {"upto": 5, "rows_read": 5}
        # Never from configurable with a password: LangGraph would copy it into checkpoints.
        config = {"configurable": {"database_url": pg_database}}
        with pytest.raises(ValueError, match="must not carry a password"):
            await build(node).ainvoke({"upto": 5}, config)
    finally:
        await db.aclose()


async def test_stream_batches_alone(db: PostgresPool) -> None:
    async with db.connection() as conn:
        sizes = [len(rows) async for rows in stream_batches(conn, SERIES, 7, batch_size=3)]
        assert not conn.is_in_transaction()
    assert sizes == [3, 3, 1]


async def test_stream_batches_never_sends_a_zero_statement_timeout(db: PostgresPool) -> None:
    query = "SELECT current_setting('statement_timeout') AS limit_now"
    async with db.connection() as conn:
        batches = [rows async for rows in stream_batches(conn, query, statement_timeout=1.0025)]
        assert batches[0][0]["limit_now"] == "1003ms"  # rounded up, never down to 0
        with pytest.raises(ValueError, match=r"statement_timeout must be >= 0\.001 seconds"):
            async for _ in stream_batches(conn, query, statement_timeout=0.0004):
                pass  # pragma: no cover - refused before the first batch
        assert not conn.is_in_transaction()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        (
            {"statement_timeout": -1},
            "statement_timeout must be a finite number of seconds >= 0.001 .* or None, got -1",
        ),
        ({"output_key": ""}, "output_key must be a non-empty str or None, got ''"),
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CursorStreamPolicy(**kwargs)


def test_node_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="db must be a PostgresPool, got str"):
        PgCursorStreamNode("postgresql://", "SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query must be a non-empty SQL string, got ' '"):
        PgCursorStreamNode(PostgresPool(), " ")
    with pytest.raises(TypeError, match="args must be callable or None, got tuple"):
        PgCursorStreamNode(PostgresPool(), "SELECT $1", args=(1,))  # type: ignore[arg-type]


def test_example_runs_against_database_url(pg_database: str) -> None:
    # Without DATABASE_URL the example starts a throwaway cluster itself; the suite's own
    # server is quicker and exercises the same graph.
    stdout = run_example("pg_stream", env={**os.environ, "DATABASE_URL": pg_database})
    assert "values {'upto': 100000, 'rows_read': 100000}" in stdout
