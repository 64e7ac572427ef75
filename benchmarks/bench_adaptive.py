"""Adaptive concurrency against a dependency of unknown capacity: vs a sweep of fixed limits.

    python benchmarks/bench_adaptive.py

Starts its own aiohttp server in a separate process (so it does not share the GIL with the
client). Its ``GET /work`` has a hidden capacity of 32 concurrent requests: 20 ms each
below it, queueing above it (a request waits for one of the 32 workers), and an immediate
429 with ``Retry-After: 1`` when more than 64 are in the server. The client maps 2 000
items through ``bounded_map`` and the cookbook ``HttpClient`` (Retry-After honoured, up to
3 attempts per item, as the client does by default), once per fixed limit 4, 8, ... 256
and once with a fresh ``AdaptiveLimiter`` (``AdaptiveLimit(max_limit=256)``, starting at
10, knowing nothing) on the client, so that every attempt is a signal and a Retry-After
wait holds no slot. Prints:

    adaptive_vs_best_fixed=   adaptive goodput / the best fixed limit's, same run   (target >= 0.90)
    adaptive_rejected_pct=    share of the adaptive run's requests answered 429      (target <= 5)
    adaptive_vs_too_high=     adaptive goodput / fixed 256's (with its retries)      (target >= 1.5)

Goodput is items that succeeded per second of the whole map. Each fixed limit and the
adaptive run are measured BENCH_ROUNDS times (default 3) in interleaved order; medians.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _servers import serve_app, start_local_server  # noqa: E402
from act_operator_lib.cookbook.adaptive import AdaptiveLimit, AdaptiveLimiter  # noqa: E402
from act_operator_lib.cookbook.fanout import FanoutPolicy, bounded_map  # noqa: E402
from act_operator_lib.cookbook.http_client import (  # noqa: E402
    HttpClient,
    HttpSettings,
    HTTPStatusError,
)

ITEMS = 2_000
CAPACITY = 32
WORK_SECONDS = 0.02
FIXED = (4, 8, 16, 32, 64, 128, 256)
ATTEMPTS = 3
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def serve(port: int) -> None:
    """The dependency, in this process (``--serve PORT``)."""
    from aiohttp import web

    state = {"active": 0, "requests": 0, "rejected": 0}

    async def work(request: web.Request) -> web.Response:
        state["requests"] += 1
        if state["active"] >= 2 * CAPACITY:
            state["rejected"] += 1
            return web.Response(status=429, text="busy", headers={"Retry-After": "1"})
        state["active"] += 1
        try:
            async with request.app[WORKERS]:
                await asyncio.sleep(WORK_SECONDS)
        finally:
            state["active"] -= 1
        return web.json_response({"item": request.query.get("i")})

    async def stats(request: web.Request) -> web.Response:
        seen = dict(state)
        if "reset" in request.query:
            state["requests"] = state["rejected"] = 0
        return web.json_response(seen)

    WORKERS = web.AppKey("workers", asyncio.Semaphore)

    app = web.Application()
    app[WORKERS] = asyncio.Semaphore(CAPACITY)
    app.router.add_get("/work", work)
    app.router.add_get("/stats", stats)
    serve_app(app, port, backlog=1024)


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    return start_local_server(sys.executable, __file__, "--serve")


async def run_map(
    http: HttpClient, workers: int, stats_http: HttpClient
) -> tuple[float, dict[str, int]]:
    """Goodput (items/s) of mapping ITEMS through ``http`` with ``workers`` at once."""
    await stats_http.get_json("/stats?reset=1")  # not through the limiter: another cost

    async def fetch(i: int) -> Any:
        return await http.get_json("/work", params={"i": i})

    started = time.perf_counter()
    outcome = await bounded_map(
        fetch, range(ITEMS), FanoutPolicy(limit=workers, on_error="collect")
    )
    elapsed = time.perf_counter() - started
    for error in outcome.errors:
        assert isinstance(error.error, HTTPStatusError), error.error
    stats: dict[str, int] = await stats_http.get_json("/stats")
    return (ITEMS - len(outcome.errors)) / elapsed, stats


async def main() -> None:
    server, base = start_server()
    settings = HttpSettings(base_url=base, limit=400, timeout=60, max_attempts=ATTEMPTS)
    fixed_http = HttpClient(settings)
    try:
        await run_map(fixed_http, 32, fixed_http)  # warm up: connections, imports
        goodput: dict[str, list[float]] = {str(n): [] for n in FIXED} | {"adaptive": []}
        rejected: list[float] = []
        limits: list[int] = []
        for round_index in range(ROUNDS):
            order = list(goodput) if round_index % 2 == 0 else list(reversed(goodput))
            for name in order:
                gc.collect()
                await asyncio.sleep(1.2)  # every Retry-After of the previous run has passed
                if name == "adaptive":
                    limiter = AdaptiveLimiter(AdaptiveLimit(max_limit=256), name="bench")
                    http = HttpClient(settings, limiter=limiter)
                    try:
                        rate, stats = await run_map(http, 256, fixed_http)
                    finally:
                        await http.aclose()
                    rejected.append(100 * stats["rejected"] / stats["requests"])
                    limits.append(limiter.limit)
                else:
                    rate, stats = await run_map(fixed_http, int(name), fixed_http)
                goodput[name].append(rate)
        medians = {name: statistics.median(rates) for name, rates in goodput.items()}
        best = max(FIXED, key=lambda n: medians[str(n)])
        for name, rate in medians.items():
            print(f"# {name}: {rate:,.0f} items/s")
        print(f"# best fixed limit: {best}; adaptive limit at the end: {limits}")
        print(f"adaptive_vs_best_fixed={medians['adaptive'] / medians[str(best)]:.2f}")
        print(f"adaptive_rejected_pct={statistics.median(rejected):.1f}")
        print(f"adaptive_vs_too_high={medians['adaptive'] / medians['256']:.2f}")
    finally:
        await fixed_http.aclose()
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        asyncio.run(main())
