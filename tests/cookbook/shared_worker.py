"""One worker process of the shared-state tests: runs a compiled graph against one Redis.

    python -m tests.cookbook.shared_worker MODE REDIS_URL START_AT LOG [ARGS...]

Every worker waits until the wall-clock time ``START_AT`` so that several processes really
run at once, then appends one line per event to ``LOG`` (``O_APPEND`` writes of one line
are atomic, so workers never interleave within a line) and prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, TypedDict

from act_operator_lib.cookbook.cache import AsyncCache, CachedNode, CacheSettings
from act_operator_lib.cookbook.circuit_breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitBreakerNode,
    CircuitOpenError,
    circuit_breaker,
)
from act_operator_lib.cookbook.rate_limit import RateLimit, rate_limiter
from act_operator_lib.cookbook.redis_backend import RedisBackend
from langgraph.graph import START, StateGraph


class State(TypedDict, total=False):
    key: str
    value: str
    at: float


def log_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def cache_mode(url: str, log: str, callers: int, load_seconds: float, crash: bool) -> Any:
    shared = RedisBackend(url)
    cache: AsyncCache[dict[str, Any]] = AsyncCache(
        CacheSettings(ttl=60, name="geo", lock_timeout=2.0), shared=shared
    )

    async def geocode(state: State) -> dict[str, Any]:
        log_line(log, f"load {os.getpid()}")
        await asyncio.sleep(load_seconds)
        if crash:
            os._exit(3)  # dies mid-load, holding the lock
        return {"value": f"{state['key']}@{os.getpid()}"}

    builder = StateGraph(State)
    builder.add_node("geocode", CachedNode(geocode, cache, key=lambda s: s["key"]))
    builder.add_edge(START, "geocode")
    graph = builder.compile()
    try:
        results = await asyncio.gather(*(graph.ainvoke({"key": "oslo"}) for _ in range(callers)))
    finally:
        await shared.aclose()
    return sorted({r["value"] for r in results})


async def rate_mode(
    url: str, waiters: int, rate: float, seconds: float, shared: bool, through_graph: bool
) -> int:
    """``waiters`` callers run a graph whose node takes one token each time; grants counted
    while the ``seconds`` window is open."""
    backend = RedisBackend(url)
    limiter = rate_limiter(
        "bench-rate", RateLimit(rate=rate, capacity=1), shared=backend if shared else None
    )

    async def call(state: State) -> dict[str, Any]:
        await limiter.aacquire()
        return {"at": time.time()}

    builder = StateGraph(State)
    builder.add_node("call", call)
    builder.add_edge(START, "call")
    graph = builder.compile()
    end = time.time() + seconds
    granted = 0

    async def waiter() -> None:
        nonlocal granted
        while True:
            if through_graph:
                at = (await graph.ainvoke({}))["at"]
            else:  # the benchmark: only the limiter, so the machine's load matters less
                await limiter.aacquire()
                at = time.time()
            if at >= end:
                return
            granted += 1

    try:
        await asyncio.gather(*(waiter() for _ in range(waiters)))
    finally:
        await backend.aclose()
    return granted


async def breaker_mode(url: str, log: str, threshold: int) -> int:
    """Calls a failing dependency through a shared breaker until the circuit refuses."""
    backend = RedisBackend(url)
    breaker = circuit_breaker(
        "bench-dependency",
        BreakerPolicy(failure_threshold=threshold, reset_timeout=60),
        shared=backend,
    )

    async def dependency() -> None:
        log_line(log, f"call {time.time()!r} {os.getpid()}")
        await asyncio.sleep(0.01)
        raise ConnectionError("dependency down")

    calls = 0
    try:
        while True:
            try:
                async with breaker.guard():
                    calls += 1
                    await dependency()
            except CircuitOpenError:
                return calls
            except ConnectionError:
                if await breaker.astate() == "open":
                    log_line(log, f"open {time.time()!r} {os.getpid()}")
    finally:
        await backend.aclose()


async def open_mode(url: str, name: str, threshold: int) -> int:
    """Fails ``threshold`` calls in a graph node guarded by the shared breaker."""
    backend = RedisBackend(url)
    breaker = CircuitBreaker(
        BreakerPolicy(failure_threshold=threshold, reset_timeout=30), name=name, shared=backend
    )

    async def charge(state: State) -> dict[str, Any]:
        raise ConnectionError("payments down")

    builder = StateGraph(State)
    builder.add_node("charge", CircuitBreakerNode(charge, breaker))
    builder.add_edge(START, "charge")
    graph = builder.compile()
    failures = 0
    try:
        for _ in range(threshold):
            try:
                await graph.ainvoke({})
            except ConnectionError:
                failures += 1
    finally:
        await backend.aclose()
    return failures


async def probe_mode(url: str, name: str, probes: int, reset: float) -> int:
    """Tries one call through a half-open shared breaker; 1 if it was admitted as a probe."""
    backend = RedisBackend(url)
    breaker = CircuitBreaker(
        BreakerPolicy(failure_threshold=1, reset_timeout=reset, half_open_probes=probes),
        name=name,
        shared=backend,
    )
    try:
        async with breaker.guard():
            await asyncio.sleep(1.0)  # a slow probe: the others arrive meanwhile
        return 1
    except CircuitOpenError:
        return 0
    finally:
        await backend.aclose()


def main() -> None:
    mode, url, start_at, log, *args = sys.argv[1:]
    delay = float(start_at) - time.time()
    if delay > 0:
        time.sleep(delay)
    if mode == "cache":
        callers, load_seconds, crash = int(args[0]), float(args[1]), args[2] == "crash"
        result = asyncio.run(cache_mode(url, log, callers, load_seconds, crash))
    elif mode == "rate":
        waiters, rate, seconds = int(args[0]), float(args[1]), float(args[2])
        shared = len(args) < 4 or args[3] != "local"
        through_graph = len(args) < 5 or args[4] != "bare"
        result = asyncio.run(rate_mode(url, waiters, rate, seconds, shared, through_graph))
    elif mode == "breaker":
        result = asyncio.run(breaker_mode(url, log, int(args[0])))
    elif mode == "open":
        result = asyncio.run(open_mode(url, args[0], int(args[1])))
    elif mode == "probe":
        result = asyncio.run(probe_mode(url, args[0], int(args[1]), float(args[2])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
