"""The effects ledger in real graphs: identities, replays, unknown outcomes, backends, upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import asyncpg
import pytest
from act_operator_lib.cookbook.effects import (
    NOT_DONE,
    EffectLedger,
    EffectLedgerError,
    EffectNode,
    EffectNotPerformed,
    EffectOutcomeUnknown,
    EffectRecord,
    PostgresBackend,
    RedisEffectBackend,
    StoreBackend,
)
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings
from act_operator_lib.cookbook.redis_backend import RedisBackend
from act_operator_lib.cookbook.resources import Resources
from aiohttp import web
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.runtime import ExecutionInfo, Runtime
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, RetryPolicy, Send, interrupt

from act_operator_lib import metrics
from tests.helpers import run_example


class State(TypedDict, total=False):
    item: int
    results: Annotated[list[Any], operator.add]


def config(thread: str = "t") -> Any:
    return {"configurable": {"thread_id": thread}}


def one_node_graph(node: Any, **compile_kwargs: Any) -> Any:
    builder = StateGraph(State)
    builder.add_node("work", node, retry_policy=compile_kwargs.pop("retry", None))
    builder.add_edge(START, "work")
    return builder.compile(**compile_kwargs)


async def test_each_occurrence_runs_once_across_an_interrupt_and_resume() -> None:
    ledger = EffectLedger()
    keys: list[str] = []

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        results = []
        for i in range(3):  # the k-th "charge" of the execution is its own effect
            results.append(
                await ledger.once(
                    "charge", lambda key, i=i: keys.append(key) or f"r{i}", runtime=runtime
                )
            )
        interrupt("confirm")
        return {"results": results}

    graph = one_node_graph(work, checkpointer=InMemorySaver(), store=InMemoryStore())
    await graph.ainvoke({"results": []}, config())
    final = await graph.ainvoke(Command(resume=True), config())
    assert final["results"] == ["r0", "r1", "r2"]  # the replay returned the stored results
    assert len(keys) == 3
    assert len(set(keys)) == 3


async def test_a_graph_without_a_checkpointer_fails_at_the_first_effect() -> None:
    called = []

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        await EffectLedger().once("charge", called.append, runtime=runtime)
        return {}

    graph = one_node_graph(work, store=InMemoryStore())
    with pytest.raises(EffectLedgerError, match="checkpointer"):
        await graph.ainvoke({"results": []})
    assert called == []


async def test_no_backend_and_no_store_is_a_clear_error() -> None:
    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        await EffectLedger().once("charge", lambda key: 1, runtime=runtime)
        return {}

    graph = one_node_graph(work, checkpointer=InMemorySaver())
    with pytest.raises(EffectLedgerError, match="no store"):
        await graph.ainvoke({"results": []}, config())


async def test_each_send_task_has_its_own_identity() -> None:
    ledger = EffectLedger()
    calls: list[tuple[int, str]] = []

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        item = state["item"]
        await ledger.once("mail", lambda key: calls.append((item, key)), runtime=runtime)
        interrupt("after the effect")
        return {"results": [item]}

    builder = StateGraph(State)
    builder.add_node("fan", lambda s: Command(goto=[Send("work", {"item": i}) for i in range(5)]))
    builder.add_node("work", work)
    builder.add_edge(START, "fan")
    graph = builder.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    await graph.ainvoke({"results": []}, config())
    state = await graph.aget_state(config())
    await graph.ainvoke(Command(resume={i.id: True for i in state.interrupts}), config())
    assert sorted(item for item, _ in calls) == [0, 1, 2, 3, 4]  # five sends, each once
    assert len({key for _, key in calls}) == 5


async def test_a_fork_from_an_earlier_checkpoint_runs_the_effect_again() -> None:
    ledger = EffectLedger()
    keys: list[str] = []

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        await ledger.once("charge", keys.append, runtime=runtime)
        return {"results": ["done"]}

    graph = one_node_graph(work, checkpointer=InMemorySaver(), store=InMemoryStore())
    await graph.ainvoke({"results": []}, config())
    history = [s async for s in graph.aget_state_history(config())]
    before_work = next(s for s in history if s.next == ("work",))
    await graph.ainvoke(None, before_work.config)  # time travel: a new task
    assert len(keys) == 2
    assert keys[0] != keys[1]


async def test_a_subgraph_node_has_its_own_checkpoint_namespace() -> None:
    ledger = EffectLedger()
    keys: list[str] = []

    async def effect(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        await ledger.once("charge", keys.append, runtime=runtime)
        return {}

    inner = StateGraph(State)
    inner.add_node("effect", effect)
    inner.add_edge(START, "effect")
    builder = StateGraph(State)
    builder.add_node("effect", effect)
    builder.add_node("sub", inner.compile())
    builder.add_edge(START, "effect")
    builder.add_edge("effect", "sub")
    graph = builder.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    await graph.ainvoke({"results": []}, config())
    assert len(keys) == 2
    assert keys[0] != keys[1]


class Flaky(Exception):
    pass


RETRY = RetryPolicy(retry_on=Flaky, max_attempts=2, initial_interval=0.01, jitter=False)


def failing_once_graph(**once: Any) -> tuple[Any, list[str]]:
    """A node whose effect's call raises on its first try (the outcome is then unknown)."""
    ledger = EffectLedger()
    keys: list[str] = []

    def call(key: str) -> str:
        keys.append(key)
        if len(keys) == 1:
            raise Flaky("the connection dropped after the request was sent")
        return "ok"

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        return {"results": [await ledger.once("charge", call, runtime=runtime, **once)]}

    graph = one_node_graph(work, checkpointer=InMemorySaver(), store=InMemoryStore(), retry=RETRY)
    return graph, keys


async def test_an_unknown_outcome_is_never_called_again_silently() -> None:
    graph, keys = failing_once_graph()
    with pytest.raises(EffectOutcomeUnknown) as raised:
        await graph.ainvoke({"results": []}, config())
    assert keys == [raised.value.key]  # called once; the retry refused to call again
    assert raised.value.effect == "charge"


async def test_performed_replayed_and_unknown_effects_are_metrics() -> None:
    ledger = EffectLedger(name="metered-payments")

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        await ledger.once("charge", lambda key: 1, runtime=runtime)
        interrupt("confirm")
        return {}

    graph = one_node_graph(work, checkpointer=InMemorySaver(), store=InMemoryStore())
    with metrics.collecting():
        await graph.ainvoke({"results": []}, config())
        await graph.ainvoke(Command(resume=True), config())
        recorded = metrics.snapshot()
    assert recorded.value("effects_performed", name="metered-payments") == 1
    assert recorded.value("effects_replayed", name="metered-payments") == 1


async def test_an_idempotent_effect_is_called_again_with_the_same_key() -> None:
    graph, keys = failing_once_graph(idempotent=True)
    assert (await graph.ainvoke({"results": []}, config()))["results"] == ["ok"]
    assert len(keys) == 2
    assert keys[0] == keys[1]


async def test_reconcile_decides_an_unknown_outcome() -> None:
    asked: list[str] = []

    async def happened(key: str) -> Any:
        asked.append(key)
        return "found by reconcile"

    graph, keys = failing_once_graph(reconcile=happened)
    assert (await graph.ainvoke({"results": []}, config()))["results"] == ["found by reconcile"]
    assert asked == keys  # asked about the key the lost call was given, not called again

    graph, keys = failing_once_graph(reconcile=lambda key: NOT_DONE)
    assert (await graph.ainvoke({"results": []}, config()))["results"] == ["ok"]
    assert len(keys) == 2


async def test_effect_not_performed_releases_the_record() -> None:
    ledger = EffectLedger()
    tries: list[str] = []

    def call(key: str) -> str:
        tries.append(key)
        if len(tries) == 1:
            raise EffectNotPerformed("refused before anything happened")
        return "ok"

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        try:
            return {"results": [await ledger.once("charge", call, runtime=runtime)]}
        except EffectNotPerformed as exc:
            raise Flaky from exc

    graph = one_node_graph(work, checkpointer=InMemorySaver(), store=InMemoryStore(), retry=RETRY)
    assert (await graph.ainvoke({"results": []}, config()))["results"] == ["ok"]
    assert len(tries) == 2


def test_once_sync_in_a_sync_node_with_retries() -> None:
    ledger = EffectLedger()
    calls: list[str] = []

    def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        result = ledger.once_sync("mail", lambda key: calls.append(key) or "sent", runtime=runtime)
        if runtime.execution_info is not None and runtime.execution_info.node_attempt == 1:
            raise Flaky("a later step failed")
        return {"results": [result]}

    graph = one_node_graph(work, checkpointer=InMemorySaver(), store=InMemoryStore(), retry=RETRY)
    assert graph.invoke({"results": []}, config())["results"] == ["sent"]
    assert len(calls) == 1


async def test_effect_node_writes_the_result_once() -> None:
    calls: list[str] = []

    async def send(state: Any, key: str) -> list[str]:
        calls.append(key)
        return ["sent"]

    builder = StateGraph(State)
    builder.add_node("notify", EffectNode(EffectLedger(), "mail", send, output_key="results"))
    builder.add_edge(START, "notify")
    graph = builder.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    result = await graph.ainvoke({"results": []}, config())
    assert result["results"] == ["sent"]
    assert len(calls) == 1


async def test_store_records_expire_and_go_with_their_thread() -> None:
    store = InMemoryStore()
    kept = EffectLedger(StoreBackend(store), retention=3600)
    brief = EffectLedger(StoreBackend(store), retention=0.001)

    def graph_for(ledger: EffectLedger) -> Any:
        async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
            await ledger.once("charge", lambda key: 1, runtime=runtime)
            return {}

        return one_node_graph(work, checkpointer=InMemorySaver(), store=store)

    for thread in ("a", "b"):
        await graph_for(kept).ainvoke({"results": []}, config(thread))
    await graph_for(brief).ainvoke({"results": []}, config("c"))
    assert await kept.delete_thread("a") == 1
    await asyncio.sleep(0.01)
    assert await kept.purge_expired() == 1  # c's record; b's is kept for an hour
    assert [item.namespace for item in await store.asearch(("act_effects",))] == [
        ("act_effects", "b")
    ]


@pytest.fixture
async def db(pg_database: str) -> AsyncIterator[PostgresPool]:
    async with Resources() as resources:
        pool = PostgresPool(PostgresSettings(dsn=pg_database, max_size=4), resources=resources)
        await PostgresBackend(pool).setup()
        await pool.execute("CREATE TABLE invoices (id serial PRIMARY KEY, amount int)")
        yield pool


async def test_pg_transaction_commits_the_effect_and_its_record_together(
    db: PostgresPool,
) -> None:
    ledger = EffectLedger(PostgresBackend(db))
    firsts: list[bool] = []

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        async with ledger.transaction("invoice", runtime=runtime) as tx:
            firsts.append(tx.first)
            if tx.first:
                tx.result = await tx.conn.fetchval(
                    "INSERT INTO invoices (amount) VALUES (10) RETURNING id"
                )
        if runtime.execution_info is not None and runtime.execution_info.node_attempt == 1:
            raise Flaky("a later step failed")
        interrupt("confirm")
        return {"results": [tx.result]}

    graph = one_node_graph(work, checkpointer=InMemorySaver(), retry=RETRY)
    await graph.ainvoke({"results": []}, config())
    final = await graph.ainvoke(Command(resume=True), config())
    assert await db.fetchval("SELECT count(*) FROM invoices") == 1
    assert final["results"] == [await db.fetchval("SELECT id FROM invoices")]
    # attempt 1 commits then fails, its retry replays; the resume runs attempts 1 and 2 again
    assert firsts == [True, False, False, False]


async def test_pg_transaction_rolled_back_leaves_no_record(db: PostgresPool) -> None:
    ledger = EffectLedger(PostgresBackend(db))

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        async with ledger.transaction("invoice", runtime=runtime) as tx:
            if tx.first:
                await tx.conn.execute("INSERT INTO invoices (amount) VALUES (10)")
                if runtime.execution_info is not None and runtime.execution_info.node_attempt == 1:
                    raise Flaky("failed inside the transaction")
        return {"results": ["ok"]}

    graph = one_node_graph(work, checkpointer=InMemorySaver(), retry=RETRY)
    assert (await graph.ainvoke({"results": []}, config()))["results"] == ["ok"]
    assert await db.fetchval("SELECT count(*) FROM invoices") == 1
    assert await db.fetchval("SELECT count(*) FROM act_effects") == 1


async def test_pg_claims_are_atomic_and_records_are_bounded(db: PostgresPool) -> None:
    backend = PostgresBackend(db)
    claims = await asyncio.gather(*(backend.claim("k", "t", "e", 1e10) for _ in range(8)))
    assert sum(claim is None for claim in claims) == 1  # exactly one claimer wins
    await backend.finish("k", "t", b'"x"', 1.0)  # expires at 1970
    await backend.claim("k2", "t2", "e", 1e10)
    assert await backend.purge_expired() == 1
    assert await backend.delete_thread("t2") == 1
    assert await db.fetchval("SELECT count(*) FROM act_effects") == 0


def node_runtime(task_id: str = "task-1", thread_id: str = "t") -> Runtime[Any]:
    """The runtime LangGraph gives one execution of a task (the same task_id on a re-run)."""
    info = ExecutionInfo(
        checkpoint_id="c", checkpoint_ns="work:c", task_id=task_id, thread_id=thread_id
    )
    return Runtime(execution_info=info)


class ExchangeCountingPool(PostgresPool):
    """A PostgresPool recording each exchange with the server (asyncpg's query logger)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    @asynccontextmanager
    async def connection(self, dsn: str | None = None) -> AsyncIterator[Any]:
        async with super().connection(dsn) as conn:
            log = lambda query: self.sent.append(query.query)  # noqa: E731
            conn.add_query_logger(log)
            try:
                yield conn
            finally:
                conn.remove_query_logger(log)


async def test_pg_transaction_costs_the_round_trips_of_a_bare_transaction(
    pg_database: str,
) -> None:
    async with Resources() as resources:
        # One connection, so the statements asyncpg prepares once are prepared by the warm-up.
        db = ExchangeCountingPool(
            PostgresSettings(dsn=pg_database, max_size=1), resources=resources
        )
        await PostgresBackend(db).setup()
        await db.execute("CREATE TABLE invoices (id serial PRIMARY KEY, amount int)")
        ledger = EffectLedger(PostgresBackend(db))
        insert = "INSERT INTO invoices (amount) VALUES (10) RETURNING id"

        async def exchanges(task: str, result: Any = None, thread: str = "t") -> int:
            db.sent.clear()
            async with ledger.transaction("invoice", runtime=node_runtime(task, thread)) as tx:
                if tx.first:
                    await tx.conn.fetchval(insert)
                    tx.result = result
            return len(db.sent)

        for warm in ("warm-1", "warm-2"):
            await exchanges(warm, result="r")
            await exchanges(warm)  # a replay
        db.sent.clear()
        async with db.transaction() as conn:
            await conn.fetchval(insert)
        assert len(db.sent) == 3  # BEGIN, INSERT, COMMIT

        assert await exchanges("a") == 3  # BEGIN and the claim, the INSERT, COMMIT
        assert await exchanges("b", result={"id": 2}) == 3  # the result rides on the COMMIT
        assert await exchanges("b") == 3  # a replay: claim, read the record, end; none of yours
        assert await exchanges("c", result="x" * 20_000) == 4  # a large result: its own UPDATE
        assert await exchanges("d", thread="it's; a thread") == 4  # bound, not inlined
        assert await db.fetchval("SELECT count(*) FROM act_effects") == 6


async def test_pg_transaction_prepares_its_statements_on_each_connection(
    pg_database: str,
) -> None:
    async with Resources() as resources:
        db = ExchangeCountingPool(
            PostgresSettings(dsn=pg_database, max_size=1), resources=resources
        )
        await PostgresBackend(db).setup()
        ledger = EffectLedger(PostgresBackend(db))

        async def effect(task: str) -> list[str]:
            db.sent.clear()
            async with ledger.transaction("e", runtime=node_runtime(task)) as tx:
                assert tx.first
                tx.result = task
            return [query.split(" (")[0] for query in db.sent]  # up to the arguments

        claim, result = "BEGIN; EXECUTE act_effects_claim", "EXECUTE act_effects_result"
        prepare = "ROLLBACK; PREPARE act_effects_claim"
        # The first use prepares: the claim fails, then ROLLBACK and PREPARE, then it again.
        assert await effect("a") == [claim, prepare, claim, result]
        assert await effect("b") == [claim, result]
        await db.execute("DEALLOCATE act_effects_claim; DEALLOCATE act_effects_result")
        assert await effect("c") == [claim, prepare, claim, result]
        rows = await db.fetch("SELECT key, result FROM act_effects ORDER BY result")
        assert [bytes(row[1]) for row in rows] == [b'"a"', b'"b"', b'"c"']


async def test_pg_transaction_takes_any_thread_id_effect_name_and_result(
    db: PostgresPool,
) -> None:
    ledger = EffectLedger(PostgresBackend(db))
    thread = "it's a \\ thread'); DROP TABLE invoices; --"
    results = ["small 'quoted' \\ result", "large " * 5000]
    for n, result in enumerate(results):
        for _ in range(2):  # the first run, then a replay
            rt = node_runtime(f"task-{n}", thread)
            async with ledger.transaction("naïve 'effect'", runtime=rt) as tx:
                if tx.first:
                    await tx.conn.execute("INSERT INTO invoices (amount) VALUES ($1)", n)
                    tx.result = result
            assert tx.result == result
    assert await db.fetchval("SELECT count(*) FROM invoices") == 2
    rows = await db.fetch("SELECT DISTINCT thread_id, name FROM act_effects")
    assert [tuple(row) for row in rows] == [(thread, "naïve 'effect'")]
    assert await ledger.delete_thread(thread) == 2


async def test_pg_transaction_cancelled_at_each_await_leaves_nothing(pg_database: str) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with Resources() as resources:
            db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=1), resources=resources)
            await PostgresBackend(db).setup()
            await db.execute("CREATE TABLE invoices (id serial PRIMARY KEY, amount int)")
            ledger = EffectLedger(PostgresBackend(db))

            async def effect(sleep: float) -> bool:
                async with ledger.transaction("invoice", runtime=node_runtime()) as tx:
                    if tx.first:
                        await tx.conn.execute("INSERT INTO invoices (amount) VALUES (1)")
                        await tx.conn.execute("SELECT pg_sleep($1)", sleep)
                return tx.first

            # Cancelled while the claim waits on a lock another session holds.
            other = await asyncpg.connect(pg_database)
            try:
                await other.execute("BEGIN; LOCK TABLE act_effects IN EXCLUSIVE MODE")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(effect(0), 0.5)
                await other.execute("ROLLBACK")
            finally:
                await other.close()
            # Cancelled while a statement of the block runs.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(effect(30), 0.5)
            async with db.connection() as conn:
                assert not conn.is_in_transaction()  # returned clean, rolled back
            assert await db.fetchval("SELECT count(*) FROM invoices") == 0
            assert await db.fetchval("SELECT count(*) FROM act_effects") == 0
            assert await effect(0) is True  # nothing was recorded: the effect runs now
            assert await effect(0) is False
    finally:
        loop.set_exception_handler(previous)
    assert reported == []  # asyncpg never had to roll back a transaction left open


async def test_pg_transaction_whose_failed_statement_was_caught_is_not_reported_done(
    db: PostgresPool,
) -> None:
    ledger = EffectLedger(PostgresBackend(db))

    async def swallowing() -> None:
        async with ledger.transaction("invoice", runtime=node_runtime()) as tx:
            await tx.conn.execute("INSERT INTO invoices (amount) VALUES (1)")
            # The transaction is aborted: PostgreSQL turns its COMMIT into a ROLLBACK.
            with contextlib.suppress(asyncpg.DivisionByZeroError):
                await tx.conn.execute("SELECT 1 / 0")

    with pytest.raises(EffectLedgerError, match=r"rolled back"):
        await swallowing()
    assert await db.fetchval("SELECT count(*) FROM invoices") == 0
    async with ledger.transaction("invoice", runtime=node_runtime()) as tx:
        assert tx.first  # nothing was recorded, so the effect runs


async def test_redis_claims_are_atomic_and_records_expire_and_go_with_the_thread(
    redis_url: str,
) -> None:
    shared = RedisBackend(redis_url, prefix="test:")
    try:
        backend = RedisEffectBackend(shared)
        far = time.time() + 3600
        claims = await asyncio.gather(*(backend.claim("k", "t", "e", far) for _ in range(8)))
        assert sum(claim is None for claim in claims) == 1  # exactly one claimer wins
        assert {claim for claim in claims if claim is not None} == {EffectRecord("pending", None)}
        await backend.finish("k", "t", b'"x"', far)
        assert await backend.claim("k", "t", "e", far) == EffectRecord("done", b'"x"')
        await backend.claim("gone", "t2", "e", time.time() + 0.05)  # a 50 ms retention
        await backend.claim("k2", "t", "e", far)
        assert await backend.delete_thread("t") == 2
        assert await backend.claim("k", "t", "e", far) is None  # deleted with its thread
        await asyncio.sleep(0.2)
        assert await backend.claim("gone", "t2", "e", far) is None  # expired by Redis
    finally:
        await shared.aclose()


async def test_redis_backend_in_a_graph_replays_after_a_retry(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    try:
        ledger = EffectLedger(RedisEffectBackend(shared))
        calls: list[str] = []

        async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
            result = await ledger.once(
                "mail", lambda key: calls.append(key) or "sent", runtime=runtime
            )
            if runtime.execution_info is not None and runtime.execution_info.node_attempt == 1:
                raise Flaky("a later step failed")
            return {"results": [result]}

        graph = one_node_graph(work, checkpointer=InMemorySaver(), retry=RETRY)
        assert (await graph.ainvoke({"results": []}, config()))["results"] == ["sent"]
        assert len(calls) == 1
    finally:
        await shared.aclose()


async def test_request_sends_the_key_as_idempotency_key() -> None:
    seen: list[str] = []

    async def charge(request: web.Request) -> web.Response:
        seen.append(request.headers["Idempotency-Key"])
        return web.json_response({"charged": True})

    app = web.Application()
    app.router.add_post("/charge", charge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with Resources() as resources:
            http = HttpClient(HttpSettings(base_url=f"http://127.0.0.1:{runner.addresses[0][1]}"))
            resources.add(http)
            ledger = EffectLedger()

            async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
                result = await ledger.request("charge", http, "POST", "/charge", runtime=runtime)
                interrupt("confirm")
                return {"results": [result]}

            graph = one_node_graph(work, checkpointer=InMemorySaver(), store=InMemoryStore())
            await graph.ainvoke({"results": []}, config())
            final = await graph.ainvoke(Command(resume=True), config())
    finally:
        await runner.cleanup()
    assert final["results"] == [{"charged": True}]
    assert len(seen) == 1  # sent once, with a 40-hex-digit key
    assert len(seen[0]) == 40


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"EffectLedger retention must be > 0 and finite, got -1"):
        EffectLedger(retention=-1)
    with pytest.raises(TypeError, match=r"EffectLedger retention must be a number"):
        EffectLedger(retention="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"EffectLedger backend must be an EffectBackend"):
        EffectLedger(backend=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"EffectLedger serializer must have dumps"):
        EffectLedger(serializer=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"StoreBackend store must be a BaseStore"):
        StoreBackend({})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"RedisEffectBackend shared must be a RedisBackend"):
        RedisEffectBackend(object())
    with pytest.raises(TypeError, match=r"PostgresBackend db must be a PostgresPool"):
        PostgresBackend(object())  # type: ignore[arg-type]


async def test_raw_asyncpg_sees_the_ledger_table(pg_database: str, db: PostgresPool) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'act_effects'"
        )
    finally:
        await conn.close()
    assert {row[0] for row in columns} >= {"key", "thread_id", "state", "result", "expires_at"}


def test_example_runs() -> None:
    out = run_example("effects")
    assert "charged 1 time(s) across 2 runs of the node" in out
