"""Pooled clients vs a connection per call vs the bare library, against local servers.

    python benchmarks/bench_clients.py

Starts its own aiohttp server (in a separate process, so it does not share the GIL with
the client) and its own PostgreSQL (tests/pg_server.py), then times, in interleaved
rounds, the same work done three ways and prints medians as ratios:

    http_pooled_vs_per_request=  FetchJSON on a shared HttpClient / a new session per request
    http_pooled_vs_raw=          FetchJSON on a shared HttpClient / a bare shared ClientSession
    pg_pooled_vs_per_query=      QueryRows on a PostgresPool / asyncpg.connect per query
    pg_pooled_vs_raw=            QueryRows on a PostgresPool / a bare asyncpg pool

Targets: >= 3, >= 0.9, >= 10, >= 0.9. The machine is shared and noisy: ratios of
interleaved rounds are what to read, not the absolute rates.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from act_operator_lib.cookbook.http_client import FetchJSON, HttpClient, HttpSettings  # noqa: E402
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings, QueryRows  # noqa: E402

from act_operator_lib.base_node import AsyncBaseNode  # noqa: E402
from tests.pg_server import PostgresServer, free_port  # noqa: E402

HTTP_REQUESTS, HTTP_CONCURRENCY = 2000, 50
PG_QUERIES, PG_CONCURRENCY = 2000, 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))


async def compare(
    contenders: dict[str, Callable[[int], Awaitable[Any]]],
    sizes: dict[str, int],
    concurrency: int,
) -> dict[str, float]:
    """Median calls/s of each contender over ``ROUNDS`` rounds, the order rotating each round."""
    for call in contenders.values():  # warm up: connections, imports, caches
        await throughput(call, 100, concurrency)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(ROUNDS):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            await asyncio.sleep(0.2)  # let the previous block's closed connections settle
            rates[name].append(await throughput(contenders[name], sizes[name], concurrency))
    return {name: statistics.median(values) for name, values in rates.items()}


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


def start_http_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "http_server.py"), "--port", str(port), "--uvloop"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("the benchmark HTTP server did not start")


async def bench_http(base: str) -> dict[str, float]:
    url = base + "/json"
    pooled = FetchJSON(HttpClient(HttpSettings(limit=100)))
    naive = FetchJSONNewSession()
    raw_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def raw(_: int) -> Any:
        async with raw_session.get(url) as response:
            response.raise_for_status()
            return await response.json()

    contenders: dict[str, Callable[[int], Awaitable[Any]]] = {
        "pooled": lambda _: pooled({"url": url}),
        "per_request": lambda _: naive({"url": url}),
        "raw": raw,
    }
    sizes = dict.fromkeys(contenders, HTTP_REQUESTS)
    rates = await compare(contenders, sizes, HTTP_CONCURRENCY)
    await raw_session.close()
    await pooled.client.aclose()
    return rates


async def bench_pg(dsn: str) -> dict[str, float]:
    db = PostgresPool(PostgresSettings(dsn=dsn, min_size=PG_CONCURRENCY, max_size=PG_CONCURRENCY))
    pooled = QueryRows(db, "SELECT $1::int AS v", ["n"])
    naive = QueryConnectPerCall(dsn)
    raw_pool = await asyncpg.create_pool(dsn, min_size=PG_CONCURRENCY, max_size=PG_CONCURRENCY)

    async def raw(i: int) -> Any:
        async with raw_pool.acquire() as conn:
            return [dict(row) for row in await conn.fetch("SELECT $1::int AS v", i)]

    contenders: dict[str, Callable[[int], Awaitable[Any]]] = {
        "pooled": lambda i: pooled({"n": i}),
        "per_query": lambda i: naive({"n": i}),
        "raw": raw,
    }
    # connect-per-query runs ~30x slower: PG_QUERIES / ROUNDS per round keeps the run
    # short and still makes PG_QUERIES connect-per-query SELECTs in all.
    sizes = {"pooled": PG_QUERIES, "per_query": PG_QUERIES // ROUNDS, "raw": PG_QUERIES}
    rates = await compare(contenders, sizes, PG_CONCURRENCY)
    await raw_pool.close()
    await db.aclose()
    return rates


def main() -> None:
    started = time.perf_counter()
    server, base = start_http_server()
    try:
        http = asyncio.run(bench_http(base))
    finally:
        server.terminate()
        server.wait(10)
    with PostgresServer() as pg:
        pg_rates = asyncio.run(bench_pg(pg.dsn))
    print(f"http_pooled_rps={http['pooled']:.0f}")
    print(f"http_per_request_rps={http['per_request']:.0f}")
    print(f"http_raw_rps={http['raw']:.0f}")
    print(f"http_pooled_vs_per_request={http['pooled'] / http['per_request']:.2f}")
    print(f"http_pooled_vs_raw={http['pooled'] / http['raw']:.2f}")
    print(f"pg_pooled_qps={pg_rates['pooled']:.0f}")
    print(f"pg_per_query_qps={pg_rates['per_query']:.0f}")
    print(f"pg_raw_qps={pg_rates['raw']:.0f}")
    print(f"pg_pooled_vs_per_query={pg_rates['pooled'] / pg_rates['per_query']:.2f}")
    print(f"pg_pooled_vs_raw={pg_rates['pooled'] / pg_rates['raw']:.2f}")
    print(f"rounds={ROUNDS}")
    print(f"bench_seconds={time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
