"""The cache shared through Redis: one load across processes, crashes, outages, expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio
from act_operator_lib.cookbook.cache import AsyncCache, CacheSettings
from act_operator_lib.cookbook.redis_backend import RedisBackend, RedisUnavailableError

from tests.redis_server import RedisServer
from tests.workers import finish_workers, start_shared_workers


def test_four_processes_of_fifty_callers_load_a_key_once(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "loads.log"
    workers = start_shared_workers(4, "cache", redis_url, "50", "1.0", "ok", log=log)
    results = finish_workers(workers)
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    loads = log.read_text().splitlines()
    assert len(loads) == 1, loads
    # every caller of every process got the one loaded value
    values = {value for _, found in results for value in found}
    assert len(values) == 1


def test_a_loader_killed_mid_load_frees_the_key_within_the_lock_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "loads.log"
    crashing = start_shared_workers(1, "cache", redis_url, "1", "0.5", "crash", log=log, start_in=0)
    try:
        # the others start once the doomed loader holds the key's lock
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text()):
            assert time.monotonic() < deadline, "the first worker never started loading"
            time.sleep(0.01)
        waiting = start_shared_workers(
            3, "cache", redis_url, "20", "0.1", "ok", log=log, start_in=0
        )
    finally:
        assert crashing[0].wait(timeout=60) == 3
        crashing[0].communicate()
    results = finish_workers(waiting)
    assert [code for code, _ in results] == [0, 0, 0], results
    loads = log.read_text().splitlines()
    assert len(loads) == 2, loads  # the crashed load, then exactly one more
    assert len({value for _, found in results for value in found}) == 1
    # the waiters were stuck behind the dead loader's lock for at most its 2 s timeout
    crashed_pid = loads[0].split()[1]
    assert crashed_pid != loads[1].split()[1]


async def test_failures_are_not_cached_and_values_expire(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    cache: AsyncCache[dict[str, int]] = AsyncCache(CacheSettings(ttl=30, name="fx"), shared=shared)
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("rate service down")
        return {"eur": calls}

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        with pytest.raises(ConnectionError, match="rate service down"):
            await cache.get_or_load("eur", load)
        assert await client.exists("act:cache:fx:eur:lock") == 0  # the lock was freed at once
        assert await cache.get_or_load("eur", load) == {"eur": 2}
        assert await cache.get_or_load("eur", load) == {"eur": 2}  # a hit
        assert calls == 2
        ttl = await client.pttl("act:cache:fx:eur")
        assert 0 < ttl <= 30_000
        await cache.ainvalidate("eur")
        assert await cache.aget("eur") is None
    finally:
        await client.aclose()
        await shared.aclose()


async def test_a_down_redis_raises_a_typed_error_or_falls_back_when_asked(
    own_redis: RedisServer,
) -> None:
    server = own_redis  # stopped and started in threads: they wait for the process
    strict = RedisBackend(server.url, timeout=0.5)
    lenient = RedisBackend(server.url, timeout=0.5, fallback="local")
    strict_cache: AsyncCache[int] = AsyncCache(CacheSettings(ttl=5), shared=strict)
    lenient_cache: AsyncCache[int] = AsyncCache(CacheSettings(ttl=5), shared=lenient)

    async def load() -> int:
        return 7

    try:
        assert await strict_cache.get_or_load("k", load) == 7
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisUnavailableError, match=f"127.0.0.1:{server.port}"):
            await strict_cache.get_or_load("k", load)
        assert await lenient_cache.get_or_load("k", load) == 7  # loaded in this process
        await asyncio.to_thread(server.start)
        assert await strict_cache.get_or_load("k", load) == 7  # works again, no code change
    finally:
        await strict.aclose()
        await lenient.aclose()


async def test_a_cancelled_loader_frees_the_key(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    cache: AsyncCache[int] = AsyncCache(CacheSettings(ttl=5, name="slow"), shared=shared)
    started = asyncio.Event()

    async def slow() -> int:
        started.set()
        await asyncio.sleep(30)
        return 1

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        task = asyncio.create_task(cache.get_or_load("k", slow))
        await started.wait()
        assert await client.exists("act:cache:slow:k:lock") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await client.exists("act:cache:slow:k:lock") == 0
    finally:
        await client.aclose()
        await shared.aclose()


def test_a_shared_cache_needs_a_ttl() -> None:
    shared = RedisBackend("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="needs CacheSettings ttl"):
        AsyncCache(CacheSettings(ttl=None), shared=shared)
    with pytest.raises(TypeError, match="AsyncCache shared must be a shared store"):
        AsyncCache(CacheSettings(), shared=object())  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="CacheSettings lock_timeout must be a finite number of seconds > 0, got 0"
    ):
        CacheSettings(lock_timeout=0)
