"""The rate limiter shared through Redis: one budget for every worker process."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from act_operator_lib.cookbook.rate_limit import RateLimit, rate_limiter
from act_operator_lib.cookbook.redis_backend import RedisBackend, RedisUnavailableError
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from tests.helpers import other_tasks_after
from tests.redis_server import RedisServer
from tests.workers import start_shared_workers, worker_summaries


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def aggregate_grants(redis_url: str, *, shared: bool) -> int:
    """Grants in a 5 s window at 40/s, summed over 4 processes of 20 waiters each."""
    mode = "shared" if shared else "local"
    workers = start_shared_workers(4, "rate", redis_url, "20", "40", "5", mode, start_in=6)
    return sum(worker_summaries(workers))


@pytest.mark.slow
def test_four_processes_share_one_quota_and_without_redis_they_do_not(redis_url: str) -> None:
    expected = 40 * 5
    shared = aggregate_grants(redis_url, shared=True)
    assert abs(shared - expected) <= expected * 0.05, shared
    alone = aggregate_grants(redis_url, shared=False)
    assert alone > expected * 3.5, alone  # each process had its own budget: ~4x the quota


async def test_a_cancelled_waiter_gives_its_place_back(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    limiter = rate_limiter(unique("cancel"), RateLimit(rate=2, capacity=1), shared=backend)
    before = asyncio.all_tasks()
    try:
        await limiter.aacquire()  # the burst: the next token is 0.5 s away
        doomed = asyncio.create_task(limiter.aacquire())
        await asyncio.sleep(0.05)  # it reserved the token at +0.5 s and sleeps
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        loop = asyncio.get_running_loop()
        started = loop.time()
        await limiter.aacquire()  # takes the place the cancelled waiter gave back
        waited = loop.time() - started
        assert waited < 0.75  # not 0.5 s behind the cancelled waiter's reservation
        assert not await other_tasks_after(before)
    finally:
        await backend.aclose()


async def test_non_blocking_acquires_take_nothing_when_refused(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    limiter = rate_limiter(unique("try"), RateLimit(rate=1, capacity=2), shared=backend)
    try:
        assert await limiter.aacquire(blocking=False)
        # The sync API makes a blocking round trip to Redis: in a thread, as sync code would.
        assert await asyncio.to_thread(limiter.try_acquire)
        assert not await asyncio.to_thread(limiter.try_acquire)
        assert not await limiter.aacquire(blocking=False)
    finally:
        await backend.aclose()
        backend.close_sync()


def test_a_chat_model_gets_one_rate_from_invoke_and_ainvoke(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    limiter = rate_limiter(unique("model"), RateLimit(rate=10, capacity=1), shared=backend)
    model = GenericFakeChatModel(
        messages=iter([AIMessage(content=f"answer {i}") for i in range(6)]),
        rate_limiter=limiter,
    )

    async def three_async() -> None:
        try:
            for _ in range(3):
                await model.ainvoke("hi")
        finally:
            await backend.aclose()

    started = time.monotonic()
    try:
        for _ in range(3):
            model.invoke("hi")
        asyncio.run(three_async())
    finally:
        backend.close_sync()
    # six calls at 10/s, one budget: at least five intervals
    assert time.monotonic() - started >= 0.5 - 0.02


async def test_an_outage_raises_or_falls_back_and_recovers(own_redis: RedisServer) -> None:
    server = own_redis  # stopped and started in threads: they wait for the process
    strict = RedisBackend(server.url, timeout=0.5)
    lenient = RedisBackend(server.url, timeout=0.5, fallback="local")
    policy = RateLimit(rate=100, capacity=5)
    strict_limiter = rate_limiter(unique("strict"), policy, shared=strict)
    lenient_limiter = rate_limiter(unique("lenient"), policy, shared=lenient)
    try:
        assert await strict_limiter.aacquire()
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisUnavailableError):
            await strict_limiter.aacquire()
        assert await lenient_limiter.aacquire()  # this process's own budget meanwhile
        await asyncio.to_thread(server.start)
        assert await strict_limiter.aacquire()  # back, with no code change
    finally:
        await strict.aclose()
        await lenient.aclose()


def test_one_name_one_store() -> None:
    name = unique("store")
    backend = RedisBackend("redis://127.0.0.1:1/0")
    limiter = rate_limiter(name, RateLimit(rate=1), shared=backend)
    assert rate_limiter(name, RateLimit(rate=1), shared=backend) is limiter
    with pytest.raises(ValueError, match="already exists with shared="):
        rate_limiter(name, RateLimit(rate=1))
    with pytest.raises(TypeError, match="RateLimiter shared must be a shared store"):
        rate_limiter(unique("bad"), RateLimit(rate=1), shared=object())  # type: ignore[arg-type]
