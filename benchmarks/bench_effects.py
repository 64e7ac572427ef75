"""What the effects ledger costs, against its own PostgreSQL, and a short fault-injection run.

    python benchmarks/bench_effects.py

Prints:

    ledger_pg_vs_bare=          an INSERT through ledger.transaction / the same INSERT in a bare
                                transaction (BEGIN, INSERT, COMMIT); target <= 1.4
    one_more_statement_vs_bare= the floor: the bare transaction with one more plain INSERT /
                                the bare transaction (read ledger_pg_vs_bare against it)
    ledger_roundtrips_first=    round trips the PostgreSQL backend makes per ``once`` effect the
                                first time (claim, done), counted; target <= 2
    ledger_roundtrips_replay=   the same for a replayed effect (the claim reads it); <= 1
    ledger_tx_roundtrips_first= round trips of one INSERT through ledger.transaction, counted
                                (BEGIN with the claim, the INSERT, COMMIT)
    ledger_tx_roundtrips_replay=the same on a replay (claim, read, end; the INSERT not run)
    bare_tx_roundtrips=         round trips of the bare transaction (BEGIN, INSERT, COMMIT)
    ledger_store_added_us=      median added time per effect with InMemoryStore; <= 100
    effects_trials=             fault-injection trials run (SIGKILL at random points); >= 50
    effects_duplicates=         effects delivered more than once in them; target 0

Each ratio is the median of per-round ratios of interleaved A-B / B-A rounds; the machine is
shared and noisy, read the ratios rather than absolute times. BENCH_ROUNDS (default 7),
BENCH_PG_PAIRS (default 41 paired batches of 40 transactions) and
BENCH_TRIALS (default 60) tune a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from act_operator_lib.cookbook.effects import (  # noqa: E402
    EffectLedger,
    PostgresBackend,
    StoreBackend,
)
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings  # noqa: E402
from act_operator_lib.cookbook.resources import Resources  # noqa: E402
from langgraph.runtime import ExecutionInfo, Runtime  # noqa: E402
from langgraph.store.memory import InMemoryStore  # noqa: E402

from tests.cookbook.test_effects_faults import (  # noqa: E402
    random_trial,
    run_suite,
    running_sink,
    running_workers,
)
from tests.pg_server import PostgresServer  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
# The PostgreSQL comparison runs many short paired batches: on a loaded machine the load
# drifts within seconds, and short A-B / B-A pairs see the same load.
PG_PAIRS = int(os.environ.get("BENCH_PG_PAIRS", "41"))
TRIALS = int(os.environ.get("BENCH_TRIALS", "60"))
INSERT = "INSERT INTO bench_rows (n) VALUES ($1)"


def runtime(store: Any = None, task_id: str | None = None) -> Runtime[Any]:
    """A node execution's runtime, as LangGraph builds it for a task."""
    info = ExecutionInfo(
        checkpoint_id="bench",
        checkpoint_ns="work:bench",
        task_id=task_id or uuid.uuid4().hex,
        thread_id="bench",
    )
    return Runtime(store=store, execution_info=info)


class CountingPool(PostgresPool):
    """A PostgresPool counting its round trips with the server.

    asyncpg's query logger sees each exchange a connection makes (a simple-protocol query
    of several statements is one; asyncpg's Transaction BEGIN and COMMIT are one each); a
    one-statement helper (``db.execute``) is one. Counted after a warm-up, when asyncpg has
    prepared the statements (a first use per connection costs one more, to prepare).
    """

    counter: ClassVar[list[int]] = [0]

    async def _call(self, *args: Any) -> Any:
        self.counter[0] += 1
        return await super()._call(*args)

    @asynccontextmanager
    async def connection(self, dsn: str | None = None) -> AsyncIterator[Any]:
        def count(_query: Any) -> None:
            self.counter[0] += 1

        async with super().connection(dsn) as conn:
            conn.add_query_logger(count)
            try:
                yield conn
            finally:
                conn.remove_query_logger(count)


async def paired(
    first: Callable[[], Awaitable[float]], second: Callable[[], Awaitable[float]]
) -> float:
    """Median over rounds of first/second, alternating which runs first."""
    ratios = []
    for i in range(PG_PAIRS):
        if i % 2:
            b = await second()
            a = await first()
        else:
            a = await first()
            b = await second()
        ratios.append(a / b)
    return statistics.median(ratios)


async def bench_pg(dsn: str) -> dict[str, float]:
    async with Resources() as resources:
        # Timed on a plain pool; counted on its own counting pool (logging costs time).
        db = PostgresPool(PostgresSettings(dsn=dsn, max_size=2), resources=resources)
        backend = PostgresBackend(db)
        await backend.setup()
        await db.execute("CREATE TABLE IF NOT EXISTS bench_rows (n int)")
        ledger = EffectLedger(backend)
        n = 40

        async def through_ledger() -> float:
            # LangGraph hands a node its runtime; building this stand-in is not the ledger's.
            runtimes = [runtime() for _ in range(n)]
            started = time.perf_counter()
            for i, rt in enumerate(runtimes):
                async with ledger.transaction("insert", runtime=rt) as tx:
                    if tx.first:
                        await tx.conn.execute(INSERT, i)
            return time.perf_counter() - started

        async def bare() -> float:
            started = time.perf_counter()
            for i in range(n):
                async with db.transaction() as conn:
                    await conn.execute(INSERT, i)
            return time.perf_counter() - started

        async def one_more_statement() -> float:
            # The floor: the same transaction with one more plain INSERT (no index, no claim).
            started = time.perf_counter()
            for i in range(n):
                async with db.transaction() as conn:
                    await conn.execute("INSERT INTO bench_floor (n) VALUES ($1)", i)
                    await conn.execute(INSERT, i)
            return time.perf_counter() - started

        await db.execute("CREATE TABLE IF NOT EXISTS bench_floor (n int)")
        await through_ledger()  # warm: prepared statements, pool
        await bare()
        await one_more_statement()
        ratio = await paired(through_ledger, bare)
        floor = await paired(one_more_statement, bare)

        counts = await count_round_trips(dsn, resources)
    return {
        "ledger_pg_vs_bare": ratio,
        "one_more_statement_vs_bare": floor,
        **counts,
    }


async def count_round_trips(dsn: str, resources: Resources) -> dict[str, float]:
    # One connection, so the warm-up prepares every statement the counted runs use.
    db = CountingPool(PostgresSettings(dsn=dsn, max_size=1), name="counted", resources=resources)
    ledger = EffectLedger(PostgresBackend(db))
    counter = db.counter

    async def counted(work: Callable[[], Awaitable[Any]]) -> int:
        counter[0] = 0
        await work()
        return counter[0]

    def once(task: str) -> Callable[[], Awaitable[Any]]:
        return lambda: ledger.once("count", lambda key: 1, runtime=runtime(task_id=task))

    def through_ledger(task: str) -> Callable[[], Awaitable[Any]]:
        async def work() -> None:
            async with ledger.transaction("insert", runtime=runtime(task_id=task)) as tx:
                if tx.first:
                    await tx.conn.execute(INSERT, 1)

        return work

    async def bare() -> None:
        async with db.transaction() as conn:
            await conn.execute(INSERT, 1)

    for warm in ("warm-1", "warm-2"):  # first runs and replays, each statement prepared
        for _ in range(2):
            await once(warm)()
            await through_ledger(warm)()
    await bare()
    task = uuid.uuid4().hex
    return {
        "ledger_roundtrips_first": await counted(once(task)),
        "ledger_roundtrips_replay": await counted(once(task)),  # a re-run of the same task
        "ledger_tx_roundtrips_first": await counted(through_ledger(task)),
        "ledger_tx_roundtrips_replay": await counted(through_ledger(task)),
        "bare_tx_roundtrips": await counted(bare),
    }


async def bench_store() -> float:
    store = InMemoryStore()
    ledger = EffectLedger(StoreBackend(store))
    n = 2000
    added = []

    def call(key: str) -> int:
        return 1

    for _ in range(ROUNDS):
        runtimes = [runtime(store) for _ in range(n)]
        started = time.perf_counter()
        for rt in runtimes:
            await ledger.once("effect", call, runtime=rt)
        with_ledger = time.perf_counter() - started
        started = time.perf_counter()
        for _ in runtimes:
            await asyncio.sleep(0)  # the await a node's own call would cost
            call("key")
        bare = time.perf_counter() - started
        added.append((with_ledger - bare) / n * 1e6)
    return statistics.median(added)


async def bench_faults(dsn: str, redis_url: str) -> tuple[int, int, int]:
    rng = random.Random(2024)
    trials = [random_trial(rng, n) for n in range(TRIALS)]
    async with running_sink() as sink, running_workers(dsn) as workers:
        kills, duplicates = await run_suite(
            workers, sink, dsn, "on", trials, redis_url=redis_url, verify=False
        )
    return len(trials), kills, duplicates


def main() -> None:
    started = time.perf_counter()
    with PostgresServer() as pg, RedisServer() as redis:
        results = asyncio.run(bench_pg(pg.dsn))
        results["ledger_store_added_us"] = asyncio.run(bench_store())
        trials, kills, duplicates = asyncio.run(bench_faults(pg.dsn, redis.url))
    for key, value in results.items():
        print(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}")
    print(f"effects_trials={trials}")
    print(f"effects_kills={kills}")
    print(f"effects_duplicates={duplicates}")
    print(f"rounds={ROUNDS} pg_pairs={PG_PAIRS}")
    print(f"bench_seconds={time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
