"""The adaptive concurrency limit: it grows on flat latency, shrinks on overload, in real graphs."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.adaptive import (
    AdaptiveLimit,
    AdaptiveLimiter,
    adaptive_limiter,
    is_overload,
)
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings, HTTPStatusError
from langgraph.graph import START, StateGraph

from act_operator_lib import metrics
from tests.helpers import run_example
from tests.http_server import HttpTestServer


class Calls(TypedDict, total=False):
    items: list[int]
    results: list[Any]


class Dependency:
    """A service doing `capacity` calls at once in `delay` s each; queueing beyond that."""

    def __init__(self, capacity: int = 1000, delay: float = 0.01) -> None:
        self.workers = asyncio.Semaphore(capacity)
        self.delay = delay
        self.active = 0
        self.peak = 0

    async def __call__(self, item: int) -> int:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            async with self.workers:
                await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return item


def graph_calling(limiter: AdaptiveLimiter, call: Any) -> Any:
    """A graph whose one node makes a call per item, all at once, through the limiter."""

    async def work(state: Calls) -> dict[str, Any]:
        results = await asyncio.gather(
            *(limiter.call(call, item) for item in state["items"]), return_exceptions=True
        )
        return {"results": results}

    builder = StateGraph(Calls)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    return builder.compile()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"min_limit": 0}, ValueError, "AdaptiveLimit min_limit must be an int >= 1, got 0"),
        ({"max_limit": 2.5}, TypeError, "AdaptiveLimit max_limit must be an int >= 1, got 2.5"),
        ({"initial_limit": True}, TypeError, "AdaptiveLimit initial_limit must be an int"),
        (
            {"min_limit": 5, "max_limit": 4, "initial_limit": 4},
            ValueError,
            "AdaptiveLimit max_limit must be >= min_limit 5, got 4",
        ),
        (
            {"initial_limit": 300},
            ValueError,
            "AdaptiveLimit initial_limit must be between min_limit 1 and max_limit 200, got 300",
        ),
        ({"backoff": 1.0}, ValueError, "backoff must be a finite number > 0 and < 1, got 1.0"),
        ({"backoff": math.nan}, ValueError, "backoff must be a finite number > 0 and < 1, got nan"),
        ({"backoff": "half"}, TypeError, "AdaptiveLimit backoff must be a finite number"),
        ({"baseline_window": math.inf}, ValueError, "baseline_window must be a finite number"),
        ({"baseline_window": 0}, ValueError, "number of seconds > 0, got 0"),
        ({"tolerance": 1}, ValueError, "AdaptiveLimit tolerance must be a finite number > 1"),
        ({"tolerance": math.inf}, ValueError, "AdaptiveLimit tolerance must be a finite number"),
    ],
)
def test_invalid_limits_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        AdaptiveLimit(**kwargs)


def test_misuse_names_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="AdaptiveLimiter policy must be an AdaptiveLimit"):
        AdaptiveLimiter({"max_limit": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AdaptiveLimiter is_overload must be a callable"):
        AdaptiveLimiter(is_overload=429)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="adaptive_limiter name must be a non-empty string"):
        adaptive_limiter("")


def test_overload_signals_are_429_503_and_timeouts() -> None:
    assert is_overload(HTTPStatusError(429, "GET", "http://x/"))
    assert is_overload(HTTPStatusError(503, "GET", "http://x/"))
    assert is_overload(TimeoutError())
    assert not is_overload(HTTPStatusError(404, "GET", "http://x/"))
    assert not is_overload(HTTPStatusError(500, "GET", "http://x/"))
    assert not is_overload(ValueError("bad input"))


async def test_the_limit_rises_while_latency_stays_flat_up_to_max_limit() -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=2, max_limit=16))
    dependency = Dependency(capacity=1000, delay=0.02)
    graph = graph_calling(limiter, dependency)
    seen = []

    for _ in range(4):
        await graph.ainvoke({"items": list(range(100))})
        seen.append(limiter.limit)

    assert seen[-1] == 16
    assert seen == sorted(seen)  # never lowered: nothing said the dependency was loaded
    assert dependency.peak <= 16


async def test_the_limit_settles_near_capacity_when_latency_rises_above_baseline() -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=4, max_limit=500), name="knee")
    dependency = Dependency(capacity=8, delay=0.01)
    graph = graph_calling(limiter, dependency)

    with metrics.collecting():
        metrics.reset()
        for _ in range(4):
            await graph.ainvoke({"items": list(range(400))})
        snapshot = metrics.snapshot()

    # Grown past its start, but held near the knee instead of queueing all 400 items.
    assert 8 <= limiter.limit <= 40
    assert dependency.peak <= 60
    assert snapshot.value("adaptive_limit_changes", name="knee", direction="up") > 0
    assert snapshot.value("adaptive_limit_size", name="knee") == limiter.limit


async def test_429_and_503_from_the_http_client_lower_the_limit(
    http_server: HttpTestServer,
) -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=40, min_limit=2), name="http")
    http = HttpClient(HttpSettings(base_url=http_server.url, max_attempts=1))
    try:
        graph = graph_calling(limiter, lambda code: http.get_json(f"/status/{code}"))
        with metrics.collecting():
            metrics.reset()
            out = await graph.ainvoke({"items": [429]})
            after_429 = limiter.limit
            await graph.ainvoke({"items": [503]})
            after_503 = limiter.limit
            await graph.ainvoke({"items": [404]})  # says nothing about capacity
            snapshot = metrics.snapshot()
    finally:
        await http.aclose()

    assert isinstance(out["results"][0], HTTPStatusError)
    assert after_429 == 36  # 40 * 0.9
    assert after_503 == 32
    assert limiter.limit == 32
    assert snapshot.value("adaptive_overloads", name="http", reason="429") == 1
    assert snapshot.value("adaptive_overloads", name="http", reason="503") == 1
    assert limiter.in_flight == 0


async def test_timeouts_lower_the_limit_down_to_min_limit(http_server: HttpTestServer) -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=4, min_limit=2, backoff=0.5))
    http = HttpClient(HttpSettings(base_url=http_server.url))
    try:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await limiter.call(http.get_json, "/slow?delay=2", request_timeout=0.05)
    finally:
        await http.aclose()

    assert limiter.limit == 2  # 4 -> 2, then held at min_limit


async def test_a_burst_of_rejections_from_one_window_is_one_decrease() -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=20))
    release = asyncio.Event()

    async def rejected(item: int) -> None:
        await release.wait()
        raise HTTPStatusError(429, "GET", "http://api/")

    calls = [asyncio.create_task(limiter.call(rejected, i)) for i in range(20)]
    await asyncio.sleep(0.01)  # all 20 admitted under the limit of 20
    release.set()
    await asyncio.gather(*calls, return_exceptions=True)

    assert limiter.limit == 18  # once, not 20 times


async def test_in_flight_never_exceeds_the_limit_and_waiters_are_served_in_order() -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=3, min_limit=3, max_limit=3))
    dependency = Dependency(delay=0.01)
    order: list[int] = []

    async def call(item: int) -> None:
        order.append(item)
        await dependency(item)

    graph = graph_calling(limiter, call)
    await graph.ainvoke({"items": list(range(30))})

    assert dependency.peak == 3
    assert order == list(range(30))


async def test_a_cancelled_call_frees_its_slot_and_teaches_nothing() -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=2, min_limit=1, max_limit=2))
    started = asyncio.Event()

    async def forever(item: int) -> None:
        started.set()
        await asyncio.sleep(60)

    holding = [asyncio.create_task(limiter.call(forever, i)) for i in range(2)]
    await started.wait()
    queued = asyncio.create_task(limiter.call(forever, 99))  # waits: no slot free
    await asyncio.sleep(0.01)
    assert limiter.in_flight == 2

    queued.cancel()  # cancelled while queued: takes no slot
    holding[0].cancel()  # cancelled while running: frees its slot
    await asyncio.gather(queued, holding[0], return_exceptions=True)

    assert limiter.in_flight == 1
    assert limiter.limit == 2  # neither a success nor an overload
    assert await limiter.call(asyncio.sleep, 0, "free slot") == "free slot"
    holding[1].cancel()
    await asyncio.gather(holding[1], return_exceptions=True)
    assert limiter.in_flight == 0


def test_one_limit_is_shared_by_name_across_event_loops_and_threads() -> None:
    policy = AdaptiveLimit(initial_limit=1, min_limit=1, max_limit=1)
    limiter = adaptive_limiter("test-shared-adaptive", policy)
    assert adaptive_limiter("test-shared-adaptive", policy) is limiter
    with pytest.raises(ValueError, match="already exists with"):
        adaptive_limiter("test-shared-adaptive", AdaptiveLimit(initial_limit=1, max_limit=5))

    held = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        async with limiter.slot():
            held.set()
            await asyncio.to_thread(release.wait, 10)

    other = threading.Thread(target=asyncio.run, args=(hold(),))
    other.start()
    assert held.wait(10)

    async def here() -> str:
        waiting = asyncio.create_task(limiter.call(asyncio.sleep, 0, "served"))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the other thread's loop holds the only slot
        release.set()
        return await asyncio.wait_for(waiting, 10)

    assert asyncio.run(here()) == "served"
    other.join(10)
    assert limiter.in_flight == 0


def test_example_runs() -> None:
    out = run_example("adaptive")
    assert "limit: started at 2" in out
    assert "2000 calls by 200 workers" in out


async def test_a_nested_slot_of_the_same_limiter_passes_through() -> None:
    # A fan-out and its HTTP client may share one limiter: the inner slot must not wait
    # for a slot its own task holds.
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=1, min_limit=1, max_limit=1))

    async def inner() -> str:
        async with limiter.slot():
            return "inner ran"

    assert await asyncio.wait_for(limiter.call(inner), 10) == "inner ran"
    assert limiter.in_flight == 0


async def test_a_timeout_around_the_slot_is_reported_as_one_overload() -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=20), name="outside")

    async def timed_out(item: int) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(0.02):
                await limiter.call(asyncio.sleep, 10)
        except TimeoutError:
            limiter.record_overload(started)

    await asyncio.gather(*(timed_out(i) for i in range(10)))

    assert limiter.limit == 18  # ten timeouts of one window: one decrease
    assert limiter.in_flight == 0


class Mapped(TypedDict, total=False):
    items: list[int]
    results: list[Any]
    errors: list[dict[str, Any]]


async def test_a_fanout_node_whose_limit_is_adaptive_stays_within_it() -> None:
    from act_operator_lib.cookbook.fanout import FanoutNode, FanoutPolicy

    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=4, max_limit=12), name="fanout")
    dependency = Dependency(capacity=1000, delay=0.01)
    peaks: list[tuple[int, int]] = []

    async def item(n: int) -> int:
        peaks.append((dependency.active + 1, limiter.limit))
        if n == 150:
            raise HTTPStatusError(429, "GET", "http://api/")
        return await dependency(n)

    builder = StateGraph(Mapped)
    builder.add_node(FanoutNode(item, FanoutPolicy(limit=limiter, on_error="collect")))
    builder.add_edge(START, "FanoutNode")
    graph = builder.compile()

    out = await graph.ainvoke({"items": list(range(300))})

    assert out["results"][:3] == [0, 1, 2]
    assert [e["index"] for e in out["errors"]] == [150]
    assert all(active <= 12 for active, _ in peaks)  # never above max_limit
    assert max(limit for _, limit in peaks) > 4  # it grew while latency was flat
    assert limiter.in_flight == 0


async def test_a_fanout_item_timeout_is_an_overload_signal() -> None:
    from act_operator_lib.cookbook.fanout import FanoutPolicy, bounded_map

    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=10), name="fanout-timeouts")
    policy = FanoutPolicy(limit=limiter, item_timeout=0.05, on_error="collect")

    outcome = await bounded_map(asyncio.sleep, [10] * 10, policy)

    assert len(outcome.errors) == 10
    assert limiter.limit == 9  # ten timeouts of one window: one decrease
    assert limiter.in_flight == 0


async def test_an_http_client_limiter_learns_from_every_attempt(
    http_server: HttpTestServer,
) -> None:
    limiter = AdaptiveLimiter(AdaptiveLimit(initial_limit=50), name="client")
    http = HttpClient(HttpSettings(base_url=http_server.url, max_attempts=3), limiter=limiter)
    try:
        # Two 429s (Retry-After: 0.01 s), then an answer: each attempt is a signal, and the
        # second attempt began after the first decrease, so it decreases again.
        answer = await http.get_json("/retry-after?fails=2&after=0.01&key=adaptive")
    finally:
        await http.aclose()

    assert answer["calls"] == 3
    assert limiter.limit == 40  # 50 * 0.9 * 0.9 = 40.5
    assert limiter.in_flight == 0
