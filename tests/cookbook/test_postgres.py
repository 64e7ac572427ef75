"""The pooled PostgreSQL recipe against the suite's real PostgreSQL 15."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import asyncpg
import psycopg
import pytest
import uvloop
from act_operator_lib.cookbook.postgres import (
    ConnectionLostError,
    PoolExhaustedError,
    PostgresPool,
    PostgresSettings,
    QueryRows,
    TemporaryPostgres,
    dsn_from,
    is_connection_error,
    postgres_checkpointer,
    redact_dsn,
    temporary_postgres,
)
from act_operator_lib.cookbook.resources import Resources
from langgraph.graph import StateGraph
from langgraph.types import RetryPolicy

from act_operator_lib import metrics
from tests.helpers import run_example
from tests.pg_server import PostgresServer

REPO = Path(__file__).resolve().parents[2]


class State(TypedDict, total=False):
    team: str
    rows: list[dict[str, Any]]


def pools_on_this_loop() -> list[asyncpg.Pool]:
    loop = asyncio.get_running_loop()
    return [shared.pool for lp, _, shared in PostgresPool.pools.items() if lp is loop]


async def seed_users(db: PostgresPool) -> None:
    await db.execute("CREATE TABLE users (name text PRIMARY KEY, team text NOT NULL)")
    await db.executemany(
        "INSERT INTO users VALUES ($1, $2)", [("ada", "red"), ("bob", "blue"), ("cy", "red")]
    )


def users_graph(db: PostgresPool) -> Any:
    builder = StateGraph(State)
    builder.add_node(
        QueryRows(db, "SELECT name FROM users WHERE team = $1 ORDER BY name", ["team"])
    )
    builder.add_edge("__start__", "QueryRows")
    return builder.compile()


async def test_query_helpers_and_transactions(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=3))
    await seed_users(db)
    assert [r["name"] for r in await db.fetch("SELECT name FROM users ORDER BY name")] == [
        "ada",
        "bob",
        "cy",
    ]
    row = await db.fetchrow("SELECT name, team FROM users WHERE name = $1", "bob")
    assert row is not None
    assert dict(row) == {"name": "bob", "team": "blue"}
    assert await db.fetchrow("SELECT name FROM users WHERE name = $1", "nobody") is None
    assert await db.fetchval("SELECT count(*) FROM users WHERE team = $1", "red") == 2
    assert (
        await db.execute("UPDATE users SET team = $1 WHERE name = $2", "blue", "cy") == "UPDATE 1"
    )

    async with db.transaction() as conn:
        await conn.execute("INSERT INTO users VALUES ($1, $2)", "dee", "red")

    async def eve_then_duplicate() -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO users VALUES ($1, $2)", "eve", "red")
            await conn.execute("INSERT INTO users VALUES ($1, $2)", "ada", "red")  # duplicate

    with pytest.raises(asyncpg.UniqueViolationError):
        await eve_then_duplicate()
    names = [r["name"] for r in await db.fetch("SELECT name FROM users ORDER BY name")]
    assert names == ["ada", "bob", "cy", "dee"]  # "eve" rolled back with the failed transaction

    # executemany is atomic: a failing row leaves none of the batch behind.
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.executemany("INSERT INTO users VALUES ($1, $2)", [("fay", "red"), ("ada", "x")])
    assert await db.fetchval("SELECT count(*) FROM users WHERE name = 'fay'") == 0
    # Values are parameters, never SQL: a hostile value is just a value.
    hostile = "x'); DROP TABLE users; --"
    await db.execute("INSERT INTO users VALUES ($1, $2)", hostile, "red")
    assert await db.fetchval("SELECT name FROM users WHERE name = $1", hostile) == hostile
    await db.aclose()


async def test_graph_takes_the_dsn_from_context_or_environment(
    pg_server: PostgresServer, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = PostgresPool(PostgresSettings(dsn=pg_database))
    await seed_users(setup)
    db = PostgresPool(PostgresSettings())  # no DSN of its own
    graph = users_graph(db)

    # configurable is copied into checkpoints: a password there is refused ...
    with pytest.raises(ValueError, match="must not carry a password"):
        await graph.ainvoke({"team": "red"}, {"configurable": {"database_url": pg_database}})
    # ... and a password-free DSN (here the server's unix socket, trust auth) is fine.
    database = pg_database.rsplit("/", 1)[1]
    socket_dsn = f"postgresql://app@/{database}?host={pg_server.root}&port={pg_server.port}"
    by_config = await graph.ainvoke({"team": "red"}, {"configurable": {"database_url": socket_dsn}})
    assert by_config["rows"] == [{"name": "ada"}, {"name": "cy"}]

    @dataclass
    class Ctx:
        database_url: str

    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node(QueryRows(db, "SELECT name FROM users WHERE team = $1", ["team"]))
    builder.add_edge("__start__", "QueryRows")
    by_context = await builder.compile().ainvoke({"team": "blue"}, context=Ctx(pg_database))
    assert by_context["rows"] == [{"name": "bob"}]

    monkeypatch.setenv("DATABASE_URL", pg_database)
    assert (await graph.ainvoke({"team": "blue"}))["rows"] == [{"name": "bob"}]
    assert dsn_from(None, None) == pg_database
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ValueError, match="no PostgreSQL DSN; pass dsn="):
        await db.fetchval("SELECT 1")
    await db.aclose()
    await setup.aclose()


async def test_one_pool_per_loop_and_dsn(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=4))
    values = await asyncio.gather(*(db.fetchval("SELECT $1::int", i) for i in range(40)))
    assert values == list(range(40))
    assert len(pools_on_this_loop()) == 1
    pool = await db.pool()
    assert pool.get_size() <= 4
    # Another client with equal settings shares the pool.
    assert await PostgresPool(PostgresSettings(dsn=pg_database, max_size=4)).pool() is pool
    await db.aclose()
    assert pools_on_this_loop() == []


async def test_metrics_pool_size_and_waits(pg_database: str) -> None:
    with metrics.collecting():
        db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2), name="metered-pg")
        await asyncio.gather(*(db.fetchval("SELECT pg_sleep(0.05)") for _ in range(6)))
        during = metrics.snapshot()
        await db.aclose()
        after = metrics.snapshot()
    assert during.value("pool_size", name="metered-pg") == 2
    assert during.value("pool_waits", name="metered-pg") >= 4  # 6 queries, 2 connections
    assert after.value("pool_size", name="metered-pg") == 0


async def test_statement_timeout(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, statement_timeout=0.2))
    started = time.monotonic()
    with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
        await db.fetchval("SELECT pg_sleep(5)")
    assert time.monotonic() - started < 2
    assert await db.fetchval("SELECT 1") == 1
    await db.aclose()


async def test_pool_exhaustion_is_a_clear_error_and_cancellation_releases(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2, acquire_timeout=0.2))
    pool = await db.pool()
    before = len(asyncio.all_tasks())
    release = asyncio.Event()
    both_held = asyncio.Event()

    async def hold() -> None:
        async with db.connection() as conn:
            await conn.execute("SELECT 1")
            if pool.get_idle_size() == 0 and pool.get_size() == 2:
                both_held.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.wait_for(both_held.wait(), 5)
    with pytest.raises(PoolExhaustedError) as caught:
        await db.fetchval("SELECT 1")
    message = str(caught.value)
    assert "acquire_timeout=0.2s (max_size=2, all in use)" in message
    assert isinstance(caught.value, TimeoutError)
    assert is_connection_error(caught.value)

    # Cancel the holders and a caller stuck waiting in acquire, and one mid-query.
    waiting = asyncio.create_task(db.fetchval("SELECT 1"))
    await asyncio.sleep(0.05)
    for task in [*holders, waiting]:
        task.cancel()
    await asyncio.gather(*holders, waiting, return_exceptions=True)
    mid_query = asyncio.create_task(db.fetchval("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.2)
    mid_query.cancel()
    await asyncio.gather(mid_query, return_exceptions=True)
    assert len(asyncio.all_tasks()) == before
    # Every slot is back: two connections at once, immediately.
    assert await asyncio.gather(db.fetchval("SELECT 1"), db.fetchval("SELECT 2")) == [1, 2]
    assert pool.get_idle_size() == pool.get_size() == 2
    await db.aclose()


async def test_a_burst_beyond_the_pool_times_out_too(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2, acquire_timeout=0.2))
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(db.fetchval("SELECT pg_sleep(1)") for _ in range(5)), return_exceptions=True
    )
    exhausted = [o for o in outcomes if isinstance(o, PoolExhaustedError)]
    assert len(exhausted) == 3  # two ran; the other three waited 0.2 s, not for a slot
    assert outcomes[:2] == [None, None]  # pg_sleep returns void: None
    assert time.monotonic() - started < 3
    await db.aclose()


async def test_restart_mid_run_recovers_and_loses_no_committed_write(
    pg_server: PostgresServer, pg_database: str
) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, min_size=0, max_size=3))
    await db.execute("CREATE TABLE events (id int PRIMARY KEY)")
    failures: list[BaseException] = []

    def retry_on(exc: BaseException) -> bool:
        failures.append(exc)
        return is_connection_error(exc)

    class Rows(TypedDict):
        count: int

    async def write_rows(state: Rows) -> dict[str, Any]:
        # Idempotent writes (ON CONFLICT) make a whole-node retry safe.
        for i in range(state["count"]):
            await db.execute("INSERT INTO events VALUES ($1) ON CONFLICT DO NOTHING", i)
            await asyncio.sleep(0.01)
        return {}

    builder = StateGraph(Rows)
    builder.add_node(
        "write_rows",
        write_rows,
        retry_policy=RetryPolicy(
            max_attempts=20, initial_interval=0.1, max_interval=0.5, retry_on=retry_on
        ),
    )
    builder.add_edge("__start__", "write_rows")
    graph = builder.compile()

    async def restart_soon() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(pg_server.restart)

    restart = asyncio.create_task(restart_soon())
    await graph.ainvoke({"count": 80})
    await restart
    assert failures, "the restart should have interrupted the run"
    assert all(isinstance(f, ConnectionLostError) for f in failures), failures
    assert all(pg_server.password not in str(f) for f in failures)
    assert await db.fetchval("SELECT count(*) FROM events") == 80
    assert await db.fetchval("SELECT min(id) + max(id) FROM events") == 79

    # Idle pooled connections died with the server: the next read still succeeds.
    await asyncio.to_thread(pg_server.restart)
    assert await db.fetchval("SELECT count(*) FROM events") == 80
    await db.aclose()


def kill_backends(dsn: str, application_name: str) -> None:
    """Terminate the server side of a pool's connections, blocking the event loop meanwhile
    so the pool cannot notice before its next query."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )
    time.sleep(0.3)  # the backends exit; their sockets close unseen by the blocked loop


@pytest.mark.allow_blocking  # kill_backends stalls the loop so the pool cannot see its connection die
async def test_a_dead_pooled_connection_retries_a_read_and_reports_a_write(
    pg_database: str,
) -> None:
    with metrics.collecting():
        db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=1), name="doomed")
        assert await db.fetchval("SELECT 1") == 1
        kill_backends(pg_database, "doomed")
        assert await db.fetchval("SELECT 2") == 2  # retried once on a new connection
        assert metrics.snapshot().value("pg_read_retries", name="doomed") == 1

        kill_backends(pg_database, "doomed")
        with pytest.raises(ConnectionLostError, match="it may or may not have committed"):
            await db.execute("CREATE TABLE t (x int)")
        assert metrics.snapshot().value("pg_read_retries", name="doomed") == 1  # never retried
        assert await db.fetchval("SELECT 3") == 3  # the pool recovered
    await db.aclose()


async def test_password_never_in_errors_reprs_or_logs(
    pg_server: PostgresServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = pg_server.password
    settings = PostgresSettings(dsn=pg_database)
    db = PostgresPool(settings, name="users-db")
    graph = users_graph(db)
    await seed_users(db)
    await graph.ainvoke({"team": "red"})
    assert password not in repr(settings)
    assert password not in repr(db)
    assert "***" in repr(settings)

    wrong = PostgresPool(PostgresSettings(dsn=pg_database.replace(password, "wrong-pw-42")))
    with pytest.raises(ConnectionLostError) as caught:
        await wrong.fetchval("SELECT 1")
    assert "InvalidPasswordError" in str(caught.value)
    assert "wrong-pw-42" not in str(caught.value)

    await asyncio.to_thread(pg_server.stop)
    try:
        with pytest.raises(ConnectionLostError) as down:
            await users_graph(PostgresPool(PostgresSettings(dsn=pg_database, min_size=0))).ainvoke(
                {"team": "red"}
            )
    finally:
        await asyncio.to_thread(pg_server.start)
    assert "postgresql://app:***@127.0.0.1" in str(down.value)
    for text in (str(down.value), caplog.text):
        assert password not in text
    assert redact_dsn("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"
    assert redact_dsn("host=h password=abc user=u") == "host=h password=*** user=u"
    await db.aclose()


def test_several_asyncio_runs_and_uvloop(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2))
    pools: list[asyncpg.Pool] = []

    async def one_run() -> int:
        pools.append(await db.pool())
        value: int = await db.fetchval("SELECT 41 + 1")
        return value

    assert asyncio.run(one_run()) == 42
    assert asyncio.run(one_run()) == 42
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(one_run()) == 42
    assert len({id(p) for p in pools}) == 3
    assert all(p.is_closing() for p in pools)  # each closed when its loop shut down


@metrics.collecting()
def test_a_loop_closed_without_shutdown_leaves_nothing_behind(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=1), name="forgotten-pg")

    async def use_then_close_by_hand() -> None:
        assert await db.fetchval("SELECT 1") == 1
        await (await db.pool()).close()  # closed, but not through PostgresPool

    loop = asyncio.new_event_loop()
    loop.run_until_complete(use_then_close_by_hand())
    loop.close()  # no shutdown_asyncgens: the loop-shutdown close never ran
    assert metrics.snapshot().value("pool_size", name="forgotten-pg") == 1
    assert asyncio.run(db.fetchval("SELECT 2")) == 2
    # The next pool creation forgot the dead loop's pool: both counted down.
    assert metrics.snapshot().value("pool_size", name="forgotten-pg") == 0
    assert not [lp for lp, _, _ in PostgresPool.pools.items() if lp is loop]


async def test_a_pool_closed_by_hand_is_replaced(pg_database: str) -> None:
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=1))
    first = await db.pool()
    await first.close()  # closed, but not through PostgresPool
    assert await db.fetchval("SELECT 3") == 3
    assert await db.pool() is not first
    assert pools_on_this_loop() == [await db.pool()]
    await db.aclose()
    assert pools_on_this_loop() == []


async def test_resources_close_the_pool(pg_database: str) -> None:
    async with Resources() as resources:
        db = PostgresPool(PostgresSettings(dsn=pg_database), resources=resources)
        assert await db.fetchval("SELECT 1") == 1
        pool = await db.pool()
    assert pool.is_closing()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_size": 0}, "PostgresSettings max_size must be an int >= 1, got 0"),
        ({"min_size": 5, "max_size": 2}, "min_size must be <= max_size, got 5 > 2"),
        ({"acquire_timeout": 0}, "acquire_timeout must be a finite number of seconds > 0, got 0"),
        (
            {"statement_timeout": -1},
            "statement_timeout must be a finite number of seconds >= 0.001 .* or None, got -1",
        ),
        (
            {"dsn": "mysql://u:hunter2@h/db"},
            r"must be a postgresql:// or postgres:// URL, got .*u:\*\*\*@h",
        ),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        PostgresSettings(**kwargs)
    assert "hunter2" not in str(caught.value)


def test_invalid_arguments() -> None:
    with pytest.raises(TypeError, match="PostgresPool settings must be PostgresSettings, got str"):
        PostgresPool("postgresql://x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="QueryRows db must be a PostgresPool"):
        QueryRows(None, "SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="QueryRows query must be a non-empty SQL string"):
        QueryRows(PostgresPool(), "  ")


DURABLE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, operator, os, sys, time
    from typing import Annotated, TypedDict
    from langgraph.graph import StateGraph
    from act_operator_lib.cookbook.postgres import postgres_checkpointer

    dsn, marks, mode, durability = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

    class State(TypedDict):
        done: Annotated[list[str], operator.add]

    def mark(name):
        with open(marks, "a") as f:
            f.write(name + "\\n")
            f.flush()
            os.fsync(f.fileno())

    def make(name):
        async def node(state: State) -> dict:
            mark(name)
            if name == "step2" and mode == "first":
                print("step2 started", flush=True)
                await asyncio.sleep(60)  # killed here
            return {"done": [name]}
        return node

    async def main():
        builder = StateGraph(State)
        for name in ("step1", "step2", "step3"):
            builder.add_node(name, make(name))
        builder.add_edge("__start__", "step1")
        builder.add_edge("step1", "step2")
        builder.add_edge("step2", "step3")
        config = {"configurable": {"thread_id": "job-1"}}
        async with postgres_checkpointer(dsn) as saver:
            graph = builder.compile(checkpointer=saver)
            if mode == "first":
                await graph.ainvoke({"done": []}, config, durability=durability)
            else:
                before = await graph.aget_state(config)
                try:
                    result = await graph.ainvoke(None, config, durability=durability)
                except Exception as exc:  # nothing to resume
                    result = {"done": type(exc).__name__}
                print(json.dumps({"next_before": list(before.next), "done": result["done"]}))

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("durability", "resumed_at", "done", "runs"),
    [
        # As postgres_checkpointer's docstring says: "sync" resumes at the node that was
        # running (step1 ran once) ...
        ("sync", ["step2"], ["step1", "step2", "step3"], ["step1", "step2", "step2", "step3"]),
        # ... "exit" saved nothing of the killed run: there is nothing to resume.
        ("exit", [], "EmptyInputError", ["step1", "step2"]),
    ],
)
def test_killed_graph_process_resumes_from_checkpoint(
    pg_database: str,
    tmp_path: Path,
    durability: str,
    resumed_at: list[str],
    done: list[str] | str,
    runs: list[str],
) -> None:
    script = tmp_path / "durable.py"
    script.write_text(DURABLE_SCRIPT)
    marks = tmp_path / "marks.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, str(script), pg_database, str(marks), "first", durability],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert first.stdout is not None
        line = first.stdout.readline()
        assert line.strip() == "step2 started", first.stderr.read() if first.stderr else ""
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for stream in (first.stdout, first.stderr):
            if stream is not None:
                stream.close()
    assert first.returncode == -signal.SIGKILL
    assert marks.read_text().split() == ["step1", "step2"]

    resumed = subprocess.run(
        [sys.executable, str(script), pg_database, str(marks), "resume", durability],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    outcome = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert outcome == {"next_before": resumed_at, "done": done}
    assert marks.read_text().split() == runs


def test_checkpointer_docstring_explains_durability_for_side_effects() -> None:
    doc = postgres_checkpointer.__doc__ or ""
    for mode in ('"exit"', '"async"', '"sync"'):
        assert mode in doc
    assert 'durability="sync"' in doc
    assert "side effects" in doc


def test_example_runs() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    out = run_example("postgres", env=env)
    assert "red: ['ada', 'cy']" in out
    assert "blue: ['bob']" in out


def test_temporary_postgres_starts_a_throwaway_server_or_uses_database_url(
    pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The suite's server is the recipe's launcher: one for the examples and the tests.
    assert isinstance(pg_server, TemporaryPostgres)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with temporary_postgres() as dsn:
        assert re.fullmatch(r"postgresql://app:[^@:]+@127\.0\.0\.1:\d+/postgres", dsn)
        db = PostgresPool(PostgresSettings(dsn=dsn, min_size=0))
        assert asyncio.run(db.fetchval("SELECT 1")) == 1  # the pool closes with the loop
        without_password = re.sub(r":[^@:]+@", "@", dsn)
        with pytest.raises(asyncpg.InvalidPasswordError):  # host logins need the password
            asyncio.run(asyncpg.connect(without_password))
    with pytest.raises(ConnectionRefusedError):  # stopped and removed on exit
        asyncio.run(asyncpg.connect(dsn, timeout=5))
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db.example/app")
    with temporary_postgres() as given:
        assert given == "postgresql://someone@db.example/app"
