"""Pooled clients vs a connection per call vs the bare library, against local servers.

    python benchmarks/bench_clients.py

Starts its own aiohttp server (in a separate process, so it does not share the GIL with
the client) and its own PostgreSQL (tests/pg_server.py), then times, in interleaved
rounds, the same work done three ways and prints medians as ratios:

    http_pooled_vs_per_request=  FetchJSON on a shared HttpClient / a new session per request
    http_pooled_vs_raw=          FetchJSON on a shared HttpClient / a node on a bare shared ClientSession
    http_guarded_vs_unguarded=   FetchJSON with an egress policy / the same client without it
    pg_pooled_vs_per_query=      QueryRows on a PostgresPool / asyncpg.connect per query
    pg_pooled_vs_raw=            QueryRows on a PostgresPool / a node on a bare asyncpg pool

Targets: >= 3, >= 0.9, >= 0.95, >= 10, >= 0.9. The pooled FetchJSON runs guarded (an
egress policy allowing the local server), as a node taking URLs from state does.
Every alternative is the node a user would write instead: an AsyncBaseNode taking the
same state and returning the same update, so a ratio measures what the recipe adds and
not what calling a node costs (bench_nodes measures that). The bare asyncpg pool asks
the server for what PostgresPool's default settings ask (application_name and a 30 s
statement_timeout), so both sides give the server the same work.
The machine is shared and noisy: each ratio is the median of per-round ratios of A-B / B-A paired rounds (so it need not equal the
ratio of the median rates printed beside it); read the ratios, not the absolute rates.
BENCH_ROUNDS (default 10) and BENCH_LOOP (asyncio or uvloop) tune a run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from _servers import start_local_server  # noqa: E402
from act_operator_lib.cookbook.http_client import (  # noqa: E402
    EgressPolicy,
    FetchJSON,
    FetchSettings,
    HttpClient,
    HttpSettings,
)
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings, QueryRows  # noqa: E402

from act_operator_lib.base_node import AsyncBaseNode  # noqa: E402
from tests.pg_server import PostgresServer  # noqa: E402

HTTP_REQUESTS, HTTP_CONCURRENCY = 2000, 50
PG_QUERIES, PG_CONCURRENCY = 2000, 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
# Pooled vs bare library, a ratio near 1: many short blocks (500 calls, ~40 ms) side by
# side, so that the machine's drift touches both sides of a pair alike.
FAST_ROUNDS = 6 * ROUNDS
FAST_BLOCK = 500
LOOP = os.environ.get("BENCH_LOOP", "asyncio")  # or "uvloop"


async def compare(
    pooled: Callable[[int], Awaitable[Any]],
    other: Callable[[int], Awaitable[Any]],
    sizes: tuple[int, int],
    concurrency: int,
    rounds: int = ROUNDS,
    settle: float = 0.2,
) -> tuple[float, float, float]:
    """Median pooled/other throughput ratio over ``rounds`` paired rounds, and median rates.

    The pair runs A-B, then B-A, ... so neither always goes first or follows the other.
    ``settle``: seconds to wait before each block, for the previous block's closed
    connections (none when both sides keep their connections open).
    """
    for call in (pooled, other):  # warm up: connections, imports, caches
        await throughput(call, 100, concurrency)
    ratios: list[float] = []
    rates: tuple[list[float], list[float]] = ([], [])
    for round_index in range(rounds):
        pair = [(0, pooled), (1, other)]
        for which, call in pair if round_index % 2 == 0 else reversed(pair):
            await asyncio.sleep(settle)
            gc.collect()  # the previous block's garbage is not collected during the next
            rates[which].append(await throughput(call, sizes[which], concurrency))
        ratios.append(rates[0][-1] / rates[1][-1])
    return statistics.median(ratios), statistics.median(rates[0]), statistics.median(rates[1])


async def throughput(call: Callable[[int], Awaitable[Any]], total: int, concurrency: int) -> float:
    """Calls per second for ``total`` calls made by ``concurrency`` workers."""
    next_index = iter(range(total))

    async def worker() -> None:
        for i in next_index:
            await call(i)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(worker())
    return total / (time.perf_counter() - started)


class FetchJSONNewSession(AsyncBaseNode):
    """The naive node: a new ClientSession (and TCP connection) for every request."""

    async def execute(self, state: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(state["url"]) as response:
            response.raise_for_status()
            return {"response": await response.json()}


class FetchJSONSharedSession(AsyncBaseNode):
    """The bare library: one shared ClientSession, no recipe."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        super().__init__()
        self.session = session

    async def execute(self, state: dict[str, Any]) -> dict[str, Any]:
        async with self.session.get(state["url"]) as response:
            response.raise_for_status()
            return {"response": await response.json()}


class QueryBarePool(AsyncBaseNode):
    """The bare library: one asyncpg pool, no recipe."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__()
        self.pool = pool

    async def execute(self, state: dict[str, Any]) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT $1::int AS v", state["n"])
        return {"rows": [dict(row) for row in rows]}


class QueryConnectPerCall(AsyncBaseNode):
    """The naive node: asyncpg.connect for every query."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn

    async def execute(self, state: dict[str, Any]) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT $1::int AS v", state["n"])
        finally:
            await conn.close()
        return {"rows": [dict(row) for row in rows]}


async def bench_http(base: str) -> dict[str, float]:
    url = base + "/json"
    # The benchmark server is on loopback: allowed by address, every other check still runs.
    local = EgressPolicy(allow=("127.0.0.1",), allow_networks=("127.0.0.1/32",))
    pooled = FetchJSON(HttpClient(HttpSettings(limit=100, egress=local)))
    unguarded = FetchJSON(HttpClient(HttpSettings(limit=100)), FetchSettings(trust_state_urls=True))
    naive = FetchJSONNewSession()
    raw_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    bare = FetchJSONSharedSession(raw_session)

    def raw(_: int) -> Awaitable[Any]:
        return bare({"url": url})

    def pooled_call(_: int) -> Awaitable[Any]:
        return pooled({"url": url})

    def per_request(_: int) -> Awaitable[Any]:
        return naive({"url": url})

    def unguarded_call(_: int) -> Awaitable[Any]:
        return unguarded({"url": url})

    size, fast = (HTTP_REQUESTS, HTTP_REQUESTS), (FAST_BLOCK, FAST_BLOCK)
    vs_raw, pooled_rps, raw_rps = await compare(
        pooled_call, raw, fast, HTTP_CONCURRENCY, FAST_ROUNDS, settle=0
    )
    vs_naive, _, naive_rps = await compare(pooled_call, per_request, size, HTTP_CONCURRENCY)
    vs_unguarded, _, unguarded_rps = await compare(
        pooled_call, unguarded_call, fast, HTTP_CONCURRENCY, FAST_ROUNDS, settle=0
    )
    await raw_session.close()
    await pooled.client.aclose()
    await unguarded.client.aclose()
    return {
        "http_pooled_rps": pooled_rps,
        "http_per_request_rps": naive_rps,
        "http_raw_rps": raw_rps,
        "http_pooled_vs_per_request": vs_naive,
        "http_pooled_vs_raw": vs_raw,
        "http_unguarded_rps": unguarded_rps,
        "http_guarded_vs_unguarded": vs_unguarded,
    }


async def bench_pg(dsn: str) -> dict[str, float]:
    db = PostgresPool(PostgresSettings(dsn=dsn, min_size=PG_CONCURRENCY, max_size=PG_CONCURRENCY))
    pooled = QueryRows(db, "SELECT $1::int AS v", ["n"])
    naive = QueryConnectPerCall(dsn)
    raw_pool = await asyncpg.create_pool(
        dsn,
        min_size=PG_CONCURRENCY,
        max_size=PG_CONCURRENCY,
        # What PostgresPool sends with PostgresSettings' defaults (name "postgres").
        server_settings={"application_name": "postgres", "statement_timeout": "30000"},
    )
    bare = QueryBarePool(raw_pool)

    def raw(i: int) -> Awaitable[Any]:
        return bare({"n": i})

    def pooled_call(i: int) -> Awaitable[Any]:
        return pooled({"n": i})

    def per_query(i: int) -> Awaitable[Any]:
        return naive({"n": i})

    vs_raw, pooled_qps, raw_qps = await compare(
        pooled_call, raw, (FAST_BLOCK, FAST_BLOCK), PG_CONCURRENCY, FAST_ROUNDS, settle=0
    )
    # connect-per-query is ~30x slower: PG_QUERIES / ROUNDS per round keeps the run short
    # and still makes PG_QUERIES connect-per-query SELECTs in all.
    vs_naive, _, naive_qps = await compare(
        pooled_call, per_query, (PG_QUERIES, -(-PG_QUERIES // ROUNDS)), PG_CONCURRENCY
    )
    await raw_pool.close()
    await db.aclose()
    return {
        "pg_pooled_qps": pooled_qps,
        "pg_per_query_qps": naive_qps,
        "pg_raw_qps": raw_qps,
        "pg_pooled_vs_per_query": vs_naive,
        "pg_pooled_vs_raw": vs_raw,
    }


def run(main: Coroutine[Any, Any, dict[str, float]]) -> dict[str, float]:
    """Run on the default asyncio loop, or on uvloop with BENCH_LOOP=uvloop."""
    loop_factory = None
    if LOOP == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def main() -> None:
    started = time.perf_counter()
    http_server = str(REPO / "tests" / "http_server.py")
    server, base = start_local_server(
        sys.executable, http_server, "--uvloop", "--port", stdout=subprocess.DEVNULL
    )
    try:
        http = run(bench_http(base))
    finally:
        server.terminate()
        server.wait(10)
    with PostgresServer() as pg:
        pg_rates = run(bench_pg(pg.dsn))
    for key, value in {**http, **pg_rates}.items():
        print(f"{key}={value:.0f}" if key.endswith("ps") else f"{key}={value:.2f}")
    print(f"rounds={ROUNDS} fast_rounds={FAST_ROUNDS} fast_block={FAST_BLOCK}")
    print(f"loop={LOOP}")
    print(f"bench_seconds={time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
