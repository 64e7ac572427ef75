"""State shared by several worker processes through one local redis-server, one run.

    python benchmarks/bench_shared.py

    shared_rate_error_pct=     aggregate rate vs 200/s over 5 s, 4 processes x 100 waiters (<= 2)
    shared_acquire_vs_ping=    median uncontended acquire / bare PING round trip           (<= 1.30)
    shared_acquire_vs_floor=   median uncontended acquire / bare EVALSHA of a minimal GCRA (<= 1.10)
    shared_vs_limits=          median acquire / the `limits` library's fastest async Redis
                               strategy that limits a rolling window (moving or sliding
                               window), on the same server                                  (<= 1.0)
    shared_breaker_extra_calls= calls reaching the dependency after the breaker opened,
                               summed over 4 processes                                      (<= 4)
    shared_cache_loads=        loader runs for 200 concurrent callers of one key, 4 processes (= 1)

`limits`' fixed window is printed too but not compared: it lets twice the rate through
around each window boundary, a weaker promise than a rolling limit or GCRA's even spacing.

The latency figures interleave the contenders call by call (each round makes one call of
every contender in turn, PER_ROUND times) and take the median of the per-round ratios, so
a noisy machine moves the compared calls together.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis.asyncio  # noqa: E402
from act_operator_lib.cookbook.rate_limit import RateLimit, rate_limiter  # noqa: E402
from act_operator_lib.cookbook.redis_backend import RedisBackend  # noqa: E402
from limits import RateLimitItemPerSecond  # noqa: E402
from limits.aio.storage import RedisStorage  # noqa: E402
from limits.aio.strategies import (  # noqa: E402
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)

from tests.redis_server import RedisServer  # noqa: E402
from tests.workers import start_shared_workers, worker_summaries  # noqa: E402

# The floor: the least a shared GCRA acquire can be, one EVALSHA of a minimal script.
FLOOR_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], new_tat, 'PX', 60000)
return 0
"""

ROUNDS = 15
PER_ROUND = 200


async def one_round(contenders: dict[str, Callable[[], Awaitable[object]]]) -> dict[str, float]:
    """Seconds per call of each contender, their calls taken in turn PER_ROUND times."""
    totals = dict.fromkeys(contenders, 0.0)
    clock = time.perf_counter
    for _ in range(PER_ROUND):
        for name, operation in contenders.items():
            start = clock()
            await operation()
            totals[name] += clock() - start
    return {name: total / PER_ROUND for name, total in totals.items()}


async def latencies(url: str) -> list[dict[str, float]]:
    """Each round's seconds per call of every contender."""
    shared = RedisBackend(url)
    # a rate no benchmark round can exhaust: every acquire is uncontended
    limiter = rate_limiter("bench-uncontended", RateLimit(rate=1e7, capacity=10**6), shared=shared)
    client = redis.asyncio.Redis.from_url(url)
    sha = await client.script_load(FLOOR_GCRA)
    storage = RedisStorage(url.replace("redis://", "async+redis://"), implementation="redispy")
    item = RateLimitItemPerSecond(10**6)
    strategies = {
        "moving": MovingWindowRateLimiter(storage),
        "fixed": FixedWindowRateLimiter(storage),
        "sliding": SlidingWindowCounterRateLimiter(storage),
    }

    async def ping() -> None:
        await client.ping()

    async def floor() -> None:
        await client.evalsha(sha, 1, "bench:floor", 1)

    async def acquire() -> None:
        await limiter.aacquire()

    def limits_hit(name: str, strategy: object) -> Callable[[], Awaitable[object]]:
        # each strategy keeps its own kind of key: one identifier each
        return lambda: strategy.hit(item, f"bench-{name}")  # type: ignore[attr-defined]

    contenders: dict[str, Callable[[], Awaitable[object]]] = {
        "ping": ping,
        "floor": floor,
        "acquire": acquire,
        **{f"limits_{name}": limits_hit(name, s) for name, s in strategies.items()},
    }
    try:
        await one_round(contenders)  # warm-up: connections, scripts
        return [await one_round(contenders) for _ in range(ROUNDS)]
    finally:
        await client.aclose()
        await shared.aclose()


def median_ratio(
    rounds: list[dict[str, float]], over: Callable[[dict[str, float]], float]
) -> float:
    """The median over rounds of a round's acquire time / ``over(round)``."""
    return statistics.median(r["acquire"] / over(r) for r in rounds)


def run_workers(mode: str, url: str, count: int, *args: str) -> list[object]:
    """The workers' summaries, then the lines they logged."""
    log = Path(tempfile.mkdtemp(prefix="bench-shared-")) / "events.log"
    workers = start_shared_workers(count, mode, url, *args, log=log, start_in=6)
    results = worker_summaries(workers, timeout=180)
    results.append(log.read_text().splitlines() if log.exists() else [])
    return results


def main() -> None:
    with RedisServer() as server:
        # 4 processes x 100 waiters share 200/s for 5 s
        *counts, _ = run_workers("rate", server.url, 4, "100", "200", "5", "shared", "bare")
        granted = sum(int(c) for c in counts)  # type: ignore[call-overload]
        expected = 200 * 5
        print(f"shared_rate_error_pct={abs(granted - expected) / expected * 100:.2f}", flush=True)

        server.flush()
        rounds = asyncio.run(latencies(server.url))
        vs_limits = median_ratio(rounds, lambda r: min(r["limits_moving"], r["limits_sliding"]))
        print(f"shared_acquire_vs_ping={median_ratio(rounds, lambda r: r['ping']):.3f}")
        print(f"shared_acquire_vs_floor={median_ratio(rounds, lambda r: r['floor']):.3f}")
        print(f"shared_vs_limits={vs_limits:.3f}")
        figures = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        print(
            f"# per call: ping={figures['ping'] * 1e6:.1f}us floor={figures['floor'] * 1e6:.1f}us"
            f" acquire={figures['acquire'] * 1e6:.1f}us"
            + "".join(
                f" {k}={v * 1e6:.1f}us" for k, v in figures.items() if k.startswith("limits_")
            ),
            flush=True,
        )

        server.flush()
        *_, events = run_workers("breaker", server.url, 4, "5")
        opened = min(float(e.split()[1]) for e in events if e.startswith("open"))  # type: ignore[union-attr]
        extra = sum(
            1
            for e in events
            if e.startswith("call") and float(e.split()[1]) > opened  # type: ignore[union-attr]
        )
        print(f"shared_breaker_extra_calls={extra}", flush=True)

        server.flush()
        *_, loads = run_workers("cache", server.url, 4, "50", "1.0", "ok")
        print(f"shared_cache_loads={len(loads)}", flush=True)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
