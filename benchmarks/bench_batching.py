"""Micro-batching against a local bulk-lookup endpoint: batched vs one request per key vs aiodataloader.

    python benchmarks/bench_batching.py

Starts its own aiohttp server in a separate process (so it does not share the GIL with the
client). Its ``POST /users`` takes ``{"ids": [...]}`` and costs ~2 ms per request plus 20 us
per id, served by 8 workers at a time (a dependency's capacity: requests beyond it queue).
10 000 concurrent callers each load one user, all at once. Prints:

    batched_vs_unbatched=       BatchLoader throughput / one request per load           (target >= 10)
    batching_vs_aiodataloader=  BatchLoader throughput / aiodataloader's, same batch cap (target >= 1.0)
    lone_caller_added_ms=       median extra latency of one load alone, max_delay 5 ms (target <= 6)

and, for reference, ``batching_vs_aiodataloader_spread=``: the same callers reaching their
``load`` after an upstream step of their own, spread over 100 ms, as independent graph runs
do, with the mean batch sizes each loader formed. Both loaders use ``max_batch`` 64 (the
endpoint's own limit) over one pooled ``HttpClient``; aiodataloader runs with
``cache=False`` (the comparison is of batching, not of memoising) and sends every batch at
once, while the BatchLoader keeps ``max_in_flight=16`` (twice the endpoint's workers, so a
worker that frees finds the next batch already there). Rounds interleave the variants;
medians of per-round ratios are printed. In a pure burst the client is CPU-bound and most
of its time is the callers' own (their tasks and wakeups, the HTTP calls, and one full
garbage collection over the burst's live objects, about half of it); per load the loader
adds one future and its ``load`` coroutine, as aiodataloader adds a future and a tuple,
so the burst ratio measures that small share and sits a few percent above parity.
BENCH_ROUNDS (default 7) tunes a run. The
machine is shared: read the ratios, not the absolute rates. aiodataloader is a
benchmark-only dependency (the dev extra).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _servers import serve_app, start_local_server  # noqa: E402
from act_operator_lib.cookbook.batching import BatchLoader, BatchPolicy  # noqa: E402
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings  # noqa: E402
from aiodataloader import DataLoader  # noqa: E402

CALLERS = 10_000
SPREAD = 0.1  # seconds over which callers reach their load
MAX_BATCH = 64
MAX_DELAY = 0.005
WORKERS = 8
PER_REQUEST, PER_ITEM = 0.002, 0.00002
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
IN_FLIGHT = 16
LONE_SAMPLES = 60


def serve(port: int) -> None:
    """The endpoint, in this process (``--serve PORT``)."""
    from aiohttp import web

    async def users(request: web.Request) -> web.Response:
        ids = (await request.json())["ids"]
        if len(ids) > MAX_BATCH:
            return web.json_response({"error": f"at most {MAX_BATCH} ids"}, status=413)
        async with request.app[WORKERS_KEY]:
            await asyncio.sleep(PER_REQUEST + PER_ITEM * len(ids))
        return web.json_response([{"id": i, "name": f"user {i}"} for i in ids])

    WORKERS_KEY = web.AppKey("workers", asyncio.Semaphore)

    app = web.Application()
    app[WORKERS_KEY] = asyncio.Semaphore(WORKERS)
    app.router.add_post("/users", users)
    serve_app(app, port)


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    return start_local_server(sys.executable, __file__, "--serve")


async def concurrent_loads(
    load: Callable[[int], Awaitable[Any]], spread: float, offset: int
) -> float:
    """Loads per second for CALLERS concurrent callers arriving over ``spread`` seconds."""
    rng = random.Random(offset)
    arrivals = [rng.uniform(0, spread) for _ in range(CALLERS)]

    async def caller(i: int) -> None:
        if spread:
            await asyncio.sleep(arrivals[i])  # the caller's own upstream step
        user = await load(offset + i)
        assert user["id"] == offset + i

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for i in range(CALLERS):
            group.create_task(caller(i))
    return CALLERS / (time.perf_counter() - started)


async def main() -> None:
    server, base = start_server()
    http = HttpClient(HttpSettings(base_url=base, limit=100, timeout=60))
    calls: dict[str, list[int]] = {"batch": [], "aiodataloader": []}

    async def fetch(ids: list[int]) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = await http.request("POST", "/users", json={"ids": ids})
        return users

    async def fetch_counted(which: str, ids: list[int]) -> list[dict[str, Any]]:
        calls[which].append(len(ids))
        return await fetch(ids)

    async def fetch_batch(ids: list[int]) -> list[dict[str, Any]]:
        return await fetch_counted("batch", ids)

    async def fetch_aiodataloader(ids: list[int]) -> list[dict[str, Any]]:
        return await fetch_counted("aiodataloader", ids)

    async def unbatched(key: int) -> Any:
        return (await fetch([key]))[0]

    try:
        policy = BatchPolicy(max_batch=MAX_BATCH, max_delay=MAX_DELAY, max_in_flight=IN_FLIGHT)
        loader = BatchLoader(fetch_batch, policy)
        aiodl: DataLoader[int, Any] = DataLoader(
            fetch_aiodataloader, max_batch_size=MAX_BATCH, cache=False
        )
        variants: dict[str, Callable[[int], Awaitable[Any]]] = {
            "batched": loader.load,
            "aiodataloader": aiodl.load,
            "unbatched": unbatched,
        }
        for load in variants.values():  # warm up: connections, imports
            for spread in (SPREAD, 0.0):
                await concurrent_loads(load, spread, 0)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        spread: dict[str, list[float]] = {"batched": [], "aiodataloader": []}
        for round_index in range(ROUNDS):
            order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            for name in order:
                gc.collect()
                await asyncio.sleep(0.1)
                rates[name].append(await concurrent_loads(variants[name], 0.0, round_index))
            calls["batch"].clear()
            calls["aiodataloader"].clear()
            for name in order:
                if name in spread:
                    gc.collect()
                    await asyncio.sleep(0.1)
                    rate = await concurrent_loads(variants[name], SPREAD, round_index)
                    spread[name].append(rate)
            mean_sizes = {k: statistics.fmean(v) for k, v in calls.items()}
        ratio = statistics.median(
            b / u for b, u in zip(rates["batched"], rates["unbatched"], strict=True)
        )
        versus = statistics.median(
            b / a for b, a in zip(rates["batched"], rates["aiodataloader"], strict=True)
        )
        versus_spread = statistics.median(
            b / a for b, a in zip(spread["batched"], spread["aiodataloader"], strict=True)
        )
        for name, values in rates.items():
            print(f"# {name}: {statistics.median(values):,.0f} loads/s")
        print(
            f"# mean batch size (spread arrivals): BatchLoader {mean_sizes['batch']:.1f},"
            f" aiodataloader {mean_sizes['aiodataloader']:.1f}"
        )
        print(f"batched_vs_unbatched={ratio:.1f}")
        print(f"batching_vs_aiodataloader={versus:.2f}")
        print(f"batching_vs_aiodataloader_spread={versus_spread:.2f}")
        sys.stdout.flush()

        # One caller alone: how much the batching window adds to a lone request.
        direct: list[float] = []
        batched: list[float] = []
        for i in range(LONE_SAMPLES):
            for which, call in ((direct, unbatched), (batched, loader.load))[:: 1 - 2 * (i % 2)]:
                await asyncio.sleep(0.01)
                started = time.perf_counter()
                await call(i)
                which.append(time.perf_counter() - started)
        added = (statistics.median(batched) - statistics.median(direct)) * 1000
        print(
            f"# lone caller: direct {statistics.median(direct) * 1000:.2f} ms, via loader"
            f" {statistics.median(batched) * 1000:.2f} ms (max_delay {MAX_DELAY * 1000:g} ms)"
        )
        print(f"lone_caller_added_ms={added:.2f}")
    finally:
        await http.aclose()
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        asyncio.run(main())
