"""The Redis backend's atomic steps, against a real redis-server the suite starts."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import socket
import time
import weakref
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
import redis
import redis.asyncio
import uvloop
from act_operator_lib.cookbook.rate_limit import RateLimit, rate_limiter
from act_operator_lib.cookbook.redis_backend import _RESERVE, RedisBackend, RedisUnavailableError
from langgraph.errors import NodeTimeoutError
from langgraph.graph import START, StateGraph
from langgraph.types import RetryPolicy, TimeoutPolicy

from tests.helpers import HANG_SECONDS, run_example, unique
from tests.redis_server import RedisServer


async def test_reservations_are_spaced_by_the_rate_after_the_burst(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    grants = []
    try:
        for _ in range(6):
            wait = await shared.reserve("api", rate=20, capacity=2, tokens=1, blocking=True)
            assert wait is not None
            grants.append(time.monotonic() + wait)  # when this caller may go
    finally:
        await shared.aclose()
    # two at once (the burst), then one every 50 ms: the last goes 4 intervals after the first
    assert grants[5] - grants[0] >= 0.2 - 0.01
    for earlier, later in itertools.pairwise(grants[1:]):
        assert later - earlier >= 0.05 - 0.01


async def test_a_non_blocking_acquire_takes_nothing_when_refused(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    try:
        assert await shared.reserve("api", rate=1, capacity=1, tokens=1, blocking=False) == 0
        assert await shared.reserve("api", rate=1, capacity=1, tokens=1, blocking=False) is None
        # the refusal reserved nothing: a blocking caller waits one interval, not two
        wait = await shared.reserve("api", rate=1, capacity=1, tokens=1, blocking=True)
    finally:
        await shared.aclose()
    assert wait is not None
    assert 0.9 < wait <= 1.0


async def test_a_refund_gives_the_place_back(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    try:
        await shared.reserve("api", rate=10, capacity=1, tokens=1, blocking=True)
        waited = await shared.reserve("api", rate=10, capacity=1, tokens=1, blocking=True)
        await shared.refund("api", rate=10, tokens=1)
        again = await shared.reserve("api", rate=10, capacity=1, tokens=1, blocking=True)
    finally:
        await shared.aclose()
    assert waited is not None
    assert again is not None
    assert again <= waited + 0.001


def test_sync_and_async_callers_share_one_bucket(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    try:
        assert shared.reserve_sync("llm", rate=1, capacity=1, tokens=1, blocking=True) == 0

        async def main() -> float | None:
            try:
                return await shared.reserve("llm", rate=1, capacity=1, tokens=1, blocking=False)
            finally:
                await shared.aclose()

        assert asyncio.run(main()) is None
    finally:
        shared.close_sync()


async def test_breaker_opens_half_opens_admits_its_probes_and_closes(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    timing = {"reset_timeout": 0.2, "probe_timeout": 5.0}
    try:
        for _ in range(2):
            ticket = await shared.breaker_before("svc", half_open_probes=1, **timing)
            assert ticket.admitted
            assert ticket.state == "closed"
            await shared.breaker_after("svc", ticket, "failure", failure_threshold=2, **timing)
        refused = await shared.breaker_before("svc", half_open_probes=1, **timing)
        assert not refused.admitted
        assert refused.state == "open"
        assert 0 < refused.retry_after <= 0.2
        await asyncio.sleep(0.25)
        probe = await shared.breaker_before("svc", half_open_probes=1, **timing)
        assert probe.admitted
        assert probe.probe
        assert probe.state == "half_open"
        second = await shared.breaker_before("svc", half_open_probes=1, **timing)
        assert not second.admitted
        assert second.state == "half_open"
        assert await shared.breaker_after(
            "svc", probe, "success", failure_threshold=2, **timing
        ) == ("closed")
        assert await shared.breaker_state("svc") == ("closed", 0)
    finally:
        await shared.aclose()


async def test_a_probe_that_outlives_its_timeout_reopens_the_circuit(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    timing = {"reset_timeout": 0.1, "probe_timeout": 0.1}
    try:
        ticket = await shared.breaker_before("svc", half_open_probes=1, **timing)
        await shared.breaker_after("svc", ticket, "failure", failure_threshold=1, **timing)
        await asyncio.sleep(0.15)
        probe = await shared.breaker_before("svc", half_open_probes=1, **timing)
        assert probe.probe
        await asyncio.sleep(0.15)  # the probe hangs past its timeout
        after = await shared.breaker_before("svc", half_open_probes=1, **timing)
        assert not after.admitted
        assert after.state == "open"
    finally:
        await shared.aclose()


async def test_cache_lock_store_and_unlock(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    try:
        assert await shared.cache_get("act:cache:k") is None
        assert await shared.cache_lock("act:cache:k", "a", 5)
        assert not await shared.cache_lock("act:cache:k", "b", 5)
        await shared.cache_unlock("act:cache:k", "b")  # not b's lock: still held
        assert await shared.cache_locked("act:cache:k")
        await shared.cache_store("act:cache:k", b"42", 10, "a")
        assert not await shared.cache_locked("act:cache:k")
        assert await shared.cache_get("act:cache:k") == b"42"
    finally:
        await shared.aclose()


async def test_a_restart_fails_fast_then_recovers_with_no_code_change(
    own_redis: RedisServer,
) -> None:
    server = own_redis  # stopped and started in threads: they wait for the process
    shared = RedisBackend(server.url, timeout=0.5)
    try:
        await shared.reserve("api", rate=10, capacity=5, tokens=1, blocking=True)
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisUnavailableError, match=f"127.0.0.1:{server.port}"):
            await shared.reserve("api", rate=10, capacity=5, tokens=1, blocking=True)
        await asyncio.to_thread(server.start)
        assert await shared.reserve("api", rate=10, capacity=5, tokens=1, blocking=True) == 0
    finally:
        await shared.aclose()


async def test_scripts_flushed_from_the_server_are_loaded_again(redis_url: str) -> None:
    shared = RedisBackend(redis_url, prefix="flush-test:")
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await shared.reserve("api", rate=10, capacity=5, tokens=1, blocking=True) == 0
        await admin.script_flush()  # what a restart or a failover to a fresh replica does
        assert await shared.reserve("api", rate=10, capacity=5, tokens=1, blocking=True) == 0
        assert await admin.script_exists(hashlib.sha1(_RESERVE.encode()).hexdigest()) == [True]
    finally:
        await admin.aclose()
        await shared.aclose()


def test_sync_calls_use_the_script_digest_and_reload_it(redis_url: str) -> None:
    shared = RedisBackend(redis_url, prefix="flush-sync:")
    admin = redis.Redis.from_url(redis_url)
    digest = hashlib.sha1(_RESERVE.encode()).hexdigest()
    try:
        admin.script_flush()
        assert shared.reserve_sync("api", rate=10, capacity=5, tokens=1, blocking=True) == 0
        # The first call loaded the script; the next is one EVALSHA (the server counts them).
        calls = admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        assert shared.reserve_sync("api", rate=10, capacity=5, tokens=1, blocking=True) == 0
        after = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
        assert after == calls + 1
        assert admin.script_exists(digest) == [True]
    finally:
        admin.close()
        shared.close_sync()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


async def test_a_server_that_never_answers_fails_within_the_timeout(silent_url: str) -> None:
    shared = RedisBackend(silent_url, timeout=0.2)
    try:
        start = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="TimeoutError"):
            await shared.reserve("api", rate=10, capacity=5, tokens=1, blocking=True)
        # Not before the timeout; the upper bound only catches a hang (1.25 x when idle).
        assert 0.2 <= time.monotonic() - start < 5
    finally:
        await shared.aclose()


async def test_concurrent_calls_to_a_silent_server_each_fail_and_leave_no_timer(
    silent_url: str,
) -> None:
    shared = RedisBackend(silent_url, timeout=0.2)
    try:
        calls = [shared.cache_get(f"k{i}") for i in range(20)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RedisUnavailableError) for r in results), results
        deadlines = shared._async_client().deadlines
        # The shared timer stops at its next tick (every 0.05 s here) once no call is in
        # flight; a timer due earlier always runs before this sleep's own.
        await asyncio.sleep(0.2)
        assert deadlines.pending() == 0
    finally:
        await shared.aclose()


async def test_a_cancellation_from_outside_stays_a_cancellation(silent_url: str) -> None:
    # A bound the test never reaches, so only the outside cancellations can end these calls.
    patient = RedisBackend(silent_url, timeout=60)
    quick = RedisBackend(silent_url, timeout=0.2)
    try:
        call = asyncio.create_task(patient.cache_get("k"))
        await asyncio.sleep(0.1)  # the call is waiting for an answer
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # A caller's own shorter bound ends the call with its own TimeoutError.
        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(0.05):
                await patient.cache_get("k")
        assert not isinstance(caught.value, RedisUnavailableError)
        # The backend's own bound still works in the same task afterwards, and leaves the
        # task's cancellation count as it found it.
        with pytest.raises(RedisUnavailableError):
            await quick.cache_get("k")
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    finally:
        await patient.aclose()
        await quick.aclose()


class Limited(TypedDict, total=False):
    done: bool


def limited_graph(limiter: Any, **node_policies: Any) -> Any:
    """A graph whose one node takes a token from ``limiter`` (shared through Redis)."""

    async def call(state: Limited) -> Limited:
        await limiter.aacquire()
        return {"done": True}

    builder = StateGraph(Limited)
    builder.add_node("call", call, **node_policies)
    builder.add_edge(START, "call")
    return builder.compile()


async def test_a_silent_server_under_a_nodes_retry_policy(silent_url: str) -> None:
    shared = RedisBackend(silent_url, timeout=0.1)
    limiter = rate_limiter(unique("silent"), RateLimit(rate=10, capacity=5), shared=shared)
    attempts = 0

    def retry_on(error: Exception) -> bool:
        nonlocal attempts
        attempts += 1
        return isinstance(error, RedisUnavailableError)

    policy = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=retry_on)
    try:
        with pytest.raises(RedisUnavailableError, match="TimeoutError"):
            await limited_graph(limiter, retry_policy=policy).ainvoke({})
        assert attempts == 3  # every attempt ended with the typed, retryable error
    finally:
        await shared.aclose()


async def test_a_node_timeout_shorter_than_the_backends_wins(silent_url: str) -> None:
    shared = RedisBackend(silent_url, timeout=1.0)
    limiter = rate_limiter(unique("silent"), RateLimit(rate=10, capacity=5), shared=shared)
    before = asyncio.all_tasks()
    try:
        # LangGraph cancels the node: a cancellation from outside, never RedisUnavailableError.
        with pytest.raises(NodeTimeoutError):
            await limited_graph(limiter, timeout=TimeoutPolicy(run_timeout=0.1)).ainvoke({})
        # The cancelled waiter gives its reservation back in a task of its own, bounded by
        # the backend's timeout against this silent server.
        giving_back = asyncio.all_tasks() - before
        assert giving_back
        await asyncio.wait(giving_back, timeout=HANG_SECONDS)
        # Every call has left the loop's deadlines, whose timer (a tick every 0.25 s, due
        # before this sleep ends) then stopped.
        await asyncio.sleep(0.5)
        assert shared._async_client().deadlines.pending() == 0
    finally:
        await shared.aclose()


def test_the_url_is_validated_and_its_password_never_shown() -> None:
    shared = RedisBackend("redis://user:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(shared)
    assert "hunter2" not in shared.url
    with pytest.raises(ValueError, match="RedisBackend url must be"):
        RedisBackend("http://127.0.0.1:6379")
    with pytest.raises(TypeError, match="RedisBackend timeout must be a number"):
        RedisBackend("redis://127.0.0.1:1/0", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RedisBackend timeout must be > 0"):
        RedisBackend("redis://127.0.0.1:1/0", timeout=float("nan"))


def test_example_runs() -> None:
    out = run_example("redis_backend")
    assert "6 calls at 5/s across two workers took" in out
    took = float(out.rsplit("took ", 1)[1].rstrip().rstrip("s"))
    assert took >= 0.95  # five intervals of 0.2 s: one budget across both workers


def test_each_loop_gets_a_client_closed_when_the_loop_shuts_down(redis_url: str) -> None:
    shared = RedisBackend(redis_url)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def ping_twice() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await asyncio.gather(shared.ping(), shared.ping())

    for _ in range(2):
        asyncio.run(ping_twice())  # no aclose(): the loop's shutdown closes its client
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(ping_twice())
    gc.collect()
    # Nothing of the finished loops is kept (a weak-keyed dict kept them alive through
    # the clients), and no ResourceWarning for an unclosed client was raised.
    assert [ref() for ref in loops] == [None, None, None]


async def test_every_key_a_run_leaves_expires(redis_url: str) -> None:
    from act_operator_lib.cookbook.cache import AsyncCache, CacheSettings
    from act_operator_lib.cookbook.circuit_breaker import BreakerPolicy, CircuitBreaker
    from act_operator_lib.cookbook.rate_limit import RateLimit, RateLimiter

    shared = RedisBackend(redis_url, prefix="ttl-test:")
    limiter = RateLimiter(RateLimit(rate=5, capacity=1), name="ttl-limiter", shared=shared)
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1), name="ttl-circuit", shared=shared)
    cache: AsyncCache[int] = AsyncCache(CacheSettings(ttl=60, name="ttl-cache"), shared=shared)

    async def load() -> int:
        return 1

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for _ in range(3):
            await limiter.aacquire()
        with pytest.raises(ConnectionError):
            async with breaker.guard():
                raise ConnectionError("down")
        await cache.get_or_load("k", load)
        keys = [key async for key in client.scan_iter("ttl-test:*")]
        assert len(keys) == 3  # one bucket, one circuit, one value; no lock left behind
        for key in keys:
            assert await client.pttl(key) > 0, key
    finally:
        await client.aclose()
        await shared.aclose()
