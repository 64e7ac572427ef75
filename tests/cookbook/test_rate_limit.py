"""The rate-limit recipe: a FIFO token bucket shared by name, in real graphs."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.rate_limit import (
    RateLimit,
    RateLimitedNode,
    RateLimiter,
    rate_limiter,
)
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from act_operator_lib import metrics, run_sync
from tests.helpers import (
    HANG_SECONDS,
    VirtualClock,
    run_example,
    run_in_fresh_loops,
    run_in_virtual_time,
    unique,
)

# A timer may fire up to a clock tick early; never faster than the rate minus this.
EARLY = 0.005

# Tests about time run in virtual time (tests.helpers.run_in_virtual_time): the limiter and
# the event loop share a clock that moves only while the loop idles, so the times asserted
# are exact on any machine. Tests that span threads and several loops run on the real
# clock and assert only what load cannot break: lower bounds, measured from before the
# first acquire, and the order of service.


class Calls(TypedDict, total=False):
    items: list[int]
    item: int
    stamps: Annotated[list[float], operator.add]


async def stamp(state: Calls) -> dict[str, Any]:
    # The loop's clock: the virtual one under run_in_virtual_time, else time.monotonic().
    return {"stamps": [asyncio.get_running_loop().time()]}


def fanout_graph(limiter: RateLimiter) -> Any:
    """One Send per item, each through the rate-limited node."""
    builder = StateGraph(Calls)
    builder.add_node("call", RateLimitedNode(stamp, limiter))
    builder.add_conditional_edges(START, lambda s: [Send("call", {"item": i}) for i in s["items"]])
    builder.add_edge("call", END)
    return builder.compile()


def assert_paced(
    stamps: list[float], rate: float, capacity: int, *, since: float | None = None
) -> None:
    """Call k (0-based, sorted) starts no earlier than (k - capacity + 1) / rate after ``since``.

    ``since`` defaults to the first call, which is exact in virtual time only; on the real
    clock pass a time taken before the first acquire (a late first stamp proves nothing).
    """
    stamps = sorted(stamps)
    origin = stamps[0] if since is None else since
    for k, at in enumerate(stamps):
        floor = max(0, k - capacity + 1) / rate
        assert at - origin >= floor - EARLY, (k, at - origin, floor)


def wait_until_queued(limiter: RateLimiter, waiters: int) -> None:
    """Block until ``waiters`` callers are queued (the queue is private: no public count)."""
    deadline = time.monotonic() + HANG_SECONDS
    while len(limiter._queue) < waiters:
        assert time.monotonic() < deadline, f"{waiters} waiters never queued"
        time.sleep(0.001)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"rate": 0},
            ValueError,
            "RateLimit rate must be a finite number of tokens per second > 0, got 0",
        ),
        ({"rate": -1.5}, ValueError, "RateLimit rate must be a finite number .*, got -1.5"),
        ({"rate": float("inf")}, ValueError, "RateLimit rate must be a finite number .*, got inf"),
        ({"rate": "10"}, TypeError, "RateLimit rate must be a finite number .*, got '10'"),
        ({"rate": 1, "capacity": 0}, ValueError, "RateLimit capacity must be an int >= 1, got 0"),
        ({"rate": 1, "capacity": 2.5}, TypeError, "RateLimit capacity must be an int"),
    ],
)
def test_invalid_rate_limit_is_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        RateLimit(**kwargs)


async def test_misuse_names_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="RateLimiter policy must be a RateLimit"):
        RateLimiter(10)  # type: ignore[arg-type]
    limiter = RateLimiter(RateLimit(rate=10, capacity=2), name="api")
    with pytest.raises(ValueError, match="'api' tokens must be between 1 and capacity 2, got 3"):
        await limiter.aacquire(tokens=3)
    with pytest.raises(ValueError, match="'api' tokens must be between 1 and capacity 2, got 0"):
        limiter.try_acquire(tokens=0)
    with pytest.raises(ValueError, match="tokens must be between 1 and the limiter's capacity"):
        RateLimitedNode(stamp, limiter, tokens=5)
    name = unique("conflict")
    rate_limiter(name, RateLimit(rate=1))
    with pytest.raises(ValueError, match="already exists with policy=RateLimit"):
        rate_limiter(name, RateLimit(rate=2))
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        rate_limiter("", RateLimit(rate=2))


def test_graph_calls_never_exceed_the_rate() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=50, capacity=3), clock=clock)
        started = clock()
        result = await fanout_graph(limiter).ainvoke({"items": list(range(15))})
        assert len(result["stamps"]) == 15
        assert_paced(result["stamps"], rate=50, capacity=3)
        # 3 at once, then 12 more at 50/s: 0.24 s, and not a tick more.
        assert clock() - started == pytest.approx(0.24)

    run_in_virtual_time(main)


async def test_waiters_are_served_in_arrival_order_even_when_a_big_one_waits() -> None:
    limiter = RateLimiter(RateLimit(rate=100, capacity=3))
    assert await limiter.aacquire(tokens=3)  # empty the bucket
    served: list[int] = []

    async def waiter(index: int, tokens: int) -> None:
        await limiter.aacquire(tokens=tokens)
        served.append(index)

    # Waiter 1 needs three tokens; the single-token waiters behind it must not overtake it.
    costs = [1, 3, 1, 1, 2, 1]
    tasks = []
    for index, tokens in enumerate(costs):
        tasks.append(asyncio.create_task(waiter(index, tokens)))
        await asyncio.sleep(0)  # arrive in this order
    await asyncio.gather(*tasks)
    assert served == list(range(len(costs)))


def test_non_blocking_acquire_does_not_jump_the_queue() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=20, capacity=1), clock=clock)
        assert await limiter.aacquire(blocking=False)
        assert not await limiter.aacquire(blocking=False)  # empty
        queued = asyncio.create_task(limiter.aacquire())
        await asyncio.sleep(0)  # queued
        clock.advance(0.08)  # a token is due by now, and it belongs to the queued waiter
        assert not limiter.try_acquire()
        assert await queued

    run_in_virtual_time(main)


def test_a_cancelled_waiter_takes_no_token() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=10, capacity=1), clock=clock)
        before = len(asyncio.all_tasks())
        assert await limiter.aacquire()
        started = clock()
        first = asyncio.create_task(limiter.aacquire())
        second = asyncio.create_task(limiter.aacquire())
        await asyncio.sleep(0.03)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # The token due at 0.1 s goes to the second waiter, not 0.2 s as if the first took one.
        assert await second
        assert clock() - started == pytest.approx(0.1)
        assert len(asyncio.all_tasks()) == before

    run_in_virtual_time(main)


def test_a_waiter_cancelled_after_being_granted_gives_the_token_back() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=10, capacity=1), clock=clock)
        assert await limiter.aacquire()
        waiter = asyncio.create_task(limiter.aacquire())
        await asyncio.sleep(0)  # queued
        # Stall the loop past the token's due time so no timer runs: try_acquire then
        # grants the queued waiter its token, and the waiter is cancelled before it resumes.
        clock.advance(0.12)
        assert not limiter.try_acquire()  # the token went to the waiter, first in line
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.try_acquire()  # so the token is still there

    run_in_virtual_time(main)


def test_a_cancelled_waiter_already_dropped_from_the_queue_just_leaves() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=1, capacity=1), clock=clock)
        before = len(asyncio.all_tasks())
        assert limiter.try_acquire()
        waiter = asyncio.create_task(limiter.aacquire())
        await asyncio.sleep(0)  # queued, alone
        waiter.cancel()
        # Before the waiter resumes, try_acquire drops its cancelled entry: the queue is empty.
        assert not limiter.try_acquire()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(asyncio.all_tasks()) == before
        second = asyncio.create_task(limiter.aacquire())
        await asyncio.sleep(0)
        assert not second.done()  # queued for the token due at 1 s, not served twice
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second

    run_in_virtual_time(main)


def test_a_waiter_timed_out_by_asyncio_timeout_takes_no_token() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=10, capacity=1), clock=clock)
        assert await limiter.aacquire()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.03):
                await limiter.aacquire()
        await asyncio.sleep(0.1)
        assert limiter.try_acquire()  # the token that came due is still in the bucket

    run_in_virtual_time(main)


def test_cancelling_many_waiters_mid_flight_leaks_nothing() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=200, capacity=1), clock=clock)
        before = len(asyncio.all_tasks())
        tasks = [asyncio.create_task(limiter.aacquire()) for _ in range(60)]
        await asyncio.sleep(0.0475)  # ten served: at 0, 5, ..., 45 ms
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # The five even-numbered waiters already served keep their token; the rest leave.
        assert [isinstance(r, asyncio.CancelledError) for r in results] == [
            index % 2 == 0 and index >= 10 for index in range(60)
        ]
        assert sum(r is True for r in results) == 35
        assert len(asyncio.all_tasks()) == before
        await asyncio.sleep(0.01)
        assert limiter.try_acquire()  # nobody left queued; the bucket refills as usual

    run_in_virtual_time(main)


async def test_nodes_and_concurrent_runs_share_a_named_limiter() -> None:
    name = unique("shared")
    policy = RateLimit(rate=40, capacity=1)

    class Pair(TypedDict, total=False):
        stamps: Annotated[list[float], operator.add]

    builder = StateGraph(Pair)
    # Two node instances built from separate rate_limiter() calls: one budget.
    builder.add_node("a", RateLimitedNode(stamp, rate_limiter(name, policy), name="a"))
    builder.add_node("b", RateLimitedNode(stamp, rate_limiter(name, policy), name="b"))
    builder.add_edge(START, "a")
    builder.add_edge(START, "b")
    graph = builder.compile()

    started = time.monotonic()
    results = await asyncio.gather(*(graph.ainvoke({"stamps": []}) for _ in range(4)))
    stamps = [at for result in results for at in result["stamps"]]
    assert len(stamps) == 8
    assert rate_limiter(name, policy) is rate_limiter(name, RateLimit(rate=40, capacity=1))
    assert_paced(stamps, rate=40, capacity=1, since=started)


def run_twice(runner_factory: Callable[[], asyncio.Runner]) -> None:
    """The same compiled graph and named limiter, run from two separate event loops."""
    graph = fanout_graph(rate_limiter(unique("loops"), RateLimit(rate=50, capacity=2)))

    async def run() -> tuple[float, list[float]]:
        started = time.monotonic()
        return started, (await graph.ainvoke({"items": list(range(6))}))["stamps"]

    for started, stamps in run_in_fresh_loops(runner_factory, run, run):
        assert len(stamps) == 6
        assert_paced(stamps, rate=50, capacity=2, since=started)


def test_the_same_graph_runs_from_two_asyncio_run_calls() -> None:
    run_twice(asyncio.Runner)


def test_it_works_on_uvloop() -> None:
    run_twice(lambda: asyncio.Runner(loop_factory=uvloop.new_event_loop))


def test_waiting_is_reported_on_the_custom_stream() -> None:
    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=30, capacity=1), name="slow-api", clock=clock)
        graph = fanout_graph(limiter)
        chunks = [c async for c in graph.astream({"items": [1, 2, 3]}, stream_mode="custom")]
        assert len(chunks) == 2  # the first call found a token waiting
        assert all(chunk["rate_limited"] == "slow-api" for chunk in chunks)
        assert sorted(c["waited"] for c in chunks) == pytest.approx([1 / 30, 2 / 30])

    run_in_virtual_time(main)


class Chat(TypedDict):
    messages: Annotated[list[Any], operator.add]


def chat_graph(model: GenericFakeChatModel, *, is_async: bool) -> Any:
    builder = StateGraph(Chat)
    if is_async:

        async def respond(state: Chat) -> dict[str, Any]:
            return {"messages": [await model.ainvoke(state["messages"])]}

        builder.add_node("respond", respond)
    else:

        def respond_sync(state: Chat) -> dict[str, Any]:
            return {"messages": [model.invoke(state["messages"])]}

        builder.add_node("respond", respond_sync)
    builder.add_edge(START, "respond")
    return builder.compile()


async def test_a_chat_model_is_rate_limited_through_rate_limiter() -> None:
    limiter = rate_limiter(unique("llm"), RateLimit(rate=25, capacity=1))
    replies = iter([AIMessage(content=f"reply {i}") for i in range(4)])
    model = GenericFakeChatModel(messages=replies, rate_limiter=limiter)
    graph = chat_graph(model, is_async=True)

    started = time.monotonic()
    results = await asyncio.gather(
        *(graph.ainvoke({"messages": [HumanMessage(content=f"q{i}")]}) for i in range(4))
    )
    elapsed = time.monotonic() - started
    assert sorted(r["messages"][-1].content for r in results) == [f"reply {i}" for i in range(4)]
    assert elapsed >= 3 / 25 - EARLY  # four calls at 25/s: the last starts at 0.12 s


def test_a_sync_chat_model_is_rate_limited_too() -> None:
    limiter = rate_limiter(unique("llm-sync"), RateLimit(rate=25, capacity=2))
    model = GenericFakeChatModel(
        messages=iter([AIMessage(content=f"reply {i}") for i in range(5)]), rate_limiter=limiter
    )
    graph = chat_graph(model, is_async=False)
    started = time.monotonic()
    contents = [graph.invoke({"messages": [HumanMessage(content="hi")]}) for _ in range(5)]
    elapsed = time.monotonic() - started
    assert [c["messages"][-1].content for c in contents] == [f"reply {i}" for i in range(5)]
    assert elapsed >= 3 / 25 - EARLY  # two at once, then three at 25/s


def test_the_example_runs() -> None:
    out = run_example("rate_limit")
    assert "12 rate-limited calls in" in out
    seconds = float(out.split(" in ")[1].split("s")[0])
    assert seconds >= 0.35 - EARLY


def test_waits_are_recorded_as_metrics() -> None:
    async def main(clock: VirtualClock) -> None:
        name = unique("metered")
        limiter = RateLimiter(RateLimit(rate=50, capacity=1), name=name, clock=clock)
        with metrics.collecting():
            await fanout_graph(limiter).ainvoke({"items": [1, 2, 3]})
            recorded = metrics.snapshot()
        assert recorded.count("rate_limiter_wait_seconds", name=name) == 3
        # Three calls at 50/s: the second waits 0.02 s and the third 0.04 s.
        assert recorded.value("rate_limiter_wait_seconds", name=name) == pytest.approx(0.06)

    run_in_virtual_time(main)


# One name is one budget, whatever event loop, thread or sync caller draws from it.


def test_successive_asyncio_run_and_run_sync_calls_share_one_budget() -> None:
    limiter = rate_limiter(unique("one-budget"), RateLimit(rate=20, capacity=1))
    started = time.monotonic()
    for index in range(5):  # each call on a fresh event loop, as scripts do
        if index % 2:
            assert run_sync(limiter.aacquire())
        else:
            assert asyncio.run(limiter.aacquire())
    elapsed = time.monotonic() - started
    # One token to start with, then four more at 20/s: the fifth is due at 0.2 s (a fresh
    # budget per loop would have let all five through at once).
    assert elapsed >= 4 / 20 - EARLY


def test_a_chat_model_invoked_sync_and_async_gets_one_rate() -> None:
    limiter = rate_limiter(unique("llm-both"), RateLimit(rate=20, capacity=1))
    model = GenericFakeChatModel(
        messages=iter([AIMessage(content=f"reply {i}") for i in range(6)]), rate_limiter=limiter
    )
    started = time.monotonic()
    replies = []
    for index in range(6):
        if index % 2:
            replies.append(asyncio.run(model.ainvoke("hi")).content)
        else:
            replies.append(model.invoke("hi").content)
    elapsed = time.monotonic() - started
    assert replies == [f"reply {i}" for i in range(6)]
    assert elapsed >= 5 / 20 - EARLY  # not twice the rate


def test_threads_with_their_own_loops_and_sync_callers_share_one_budget() -> None:
    limiter = rate_limiter(unique("threads"), RateLimit(rate=40, capacity=2))
    stamps: list[float] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        for _ in range(3):
            if index % 2:
                asyncio.run(limiter.aacquire())
            else:
                limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert len(stamps) == 12
    # Two at once, then ten more at 40/s: the last is due at 0.25 s.
    assert elapsed >= 10 / 40 - EARLY
    assert_paced(stamps, rate=40, capacity=2, since=started)


def test_waiters_from_different_loops_and_threads_are_served_in_arrival_order() -> None:
    # A clock that stands still until the test moves it: nobody is served early, whatever
    # the load, and each token is handed out by the test's try_acquire.
    clock = VirtualClock()
    limiter = RateLimiter(RateLimit(rate=10, capacity=1), clock=clock)
    assert limiter.acquire(blocking=False)  # empty the bucket
    served: list[str] = []

    def on_own_loop(label: str) -> None:
        asyncio.run(limiter.aacquire())
        served.append(label)

    def sync_caller(label: str) -> None:
        limiter.acquire()
        served.append(label)

    threads = [
        threading.Thread(target=on_own_loop, args=("loop-a",)),
        threading.Thread(target=sync_caller, args=("sync-b",)),
        threading.Thread(target=on_own_loop, args=("loop-c",)),
    ]
    for queued, thread in enumerate(threads, 1):
        thread.start()
        wait_until_queued(limiter, queued)  # each is queued before the next arrives
    for granted in range(1, 4):
        clock.advance(0.1)  # one more token
        assert not limiter.try_acquire()  # it goes to the head of the queue
        threads[granted - 1].join(30)
        assert len(served) == granted, served
    assert served == ["loop-a", "sync-b", "loop-c"]


def test_a_waiter_cancelled_on_another_loop_takes_no_token_from_the_next() -> None:
    clock = VirtualClock()  # stands still until the test moves it
    limiter = RateLimiter(RateLimit(rate=2, capacity=1), clock=clock)
    assert limiter.acquire(blocking=False)  # the next token is due 0.5 s from now
    queued = threading.Event()
    holder: dict[str, Any] = {}

    async def first_in_line() -> None:
        holder["loop"] = asyncio.get_running_loop()
        holder["task"] = asyncio.current_task()
        queued.set()
        await limiter.aacquire()

    def run_first() -> None:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(first_in_line())

    first = threading.Thread(target=run_first)
    first.start()
    assert queued.wait(30)
    wait_until_queued(limiter, 1)  # the first waiter is queued on its loop
    waited: list[float] = []
    second = threading.Thread(target=lambda: waited.append(float(limiter.acquire())))
    second.start()
    wait_until_queued(limiter, 2)  # the sync caller is queued behind it
    holder["loop"].call_soon_threadsafe(holder["task"].cancel)
    first.join(30)
    assert not first.is_alive()
    # The token due at 0.5 s goes to the sync caller; had the cancelled waiter taken
    # it, the caller would still wait for the one due at 1 s.
    clock.advance(0.5)
    assert not limiter.try_acquire()
    second.join(30)
    assert waited == [1.0]


# After a stall, never more than `capacity` at once.


@pytest.mark.parametrize("capacity", [1, 3])
def test_an_event_loop_stall_releases_at_most_capacity_at_once(capacity: int) -> None:
    rate = 50.0

    async def main(clock: VirtualClock) -> None:
        limiter = RateLimiter(RateLimit(rate=rate, capacity=capacity), clock=clock)
        assert await limiter.aacquire(tokens=capacity)  # empty
        stamps: list[float] = []

        async def call() -> None:
            await limiter.aacquire()
            stamps.append(clock())

        tasks = [asyncio.create_task(call()) for _ in range(10)]
        await asyncio.sleep(0)  # all queued
        clock.advance(0.2)  # a stall: every token is overdue after it
        await asyncio.gather(*tasks)
        stamps.sort()
        # A full bucket (capacity) goes at once; the rest are spaced at the rate again, not
        # released together to make up for the stall (the late grace keeps 5 ms of it).
        assert stamps[capacity - 1] == stamps[0]
        for k in range(capacity, len(stamps)):
            assert stamps[k] - stamps[0] == pytest.approx((k - capacity + 1) / rate - 0.005)

    run_in_virtual_time(main)


# A shared queue must not let one blocked event loop hold up everyone.


@contextlib.contextmanager
def fail_after(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread if the block is still running after ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def test_a_sync_caller_blocking_the_loop_still_gets_its_token() -> None:
    limiter = RateLimiter(RateLimit(rate=20, capacity=1))
    assert limiter.try_acquire()
    first = asyncio.create_task(limiter.aacquire())
    await asyncio.sleep(0)  # queued first; its wake-up is a timer on this very loop
    started = time.monotonic()
    with fail_after(HANG_SECONDS):
        # A chat model's sync invoke made on the loop thread: the loop cannot run its
        # timer, so the sync caller serves the waiter ahead of it and then itself.
        assert limiter.acquire()
    assert time.monotonic() - started >= 2 / 20 - EARLY  # after the first waiter's token
    assert await first


async def test_run_sync_inside_a_loop_with_a_waiter_queued_still_gets_its_token() -> None:
    limiter = rate_limiter(unique("run-sync-inside"), RateLimit(rate=20, capacity=1))
    assert limiter.try_acquire()
    first = asyncio.create_task(limiter.aacquire())
    await asyncio.sleep(0)  # queued first, on this loop, which run_sync is about to block
    with fail_after(HANG_SECONDS):
        assert run_sync(limiter.aacquire())  # on the background loop, behind `first`
    assert await first


def test_many_loops_threads_and_cancellations_share_the_queue_without_loss_or_leak() -> None:
    limiter = rate_limiter(unique("stress"), RateLimit(rate=200, capacity=2))
    granted: list[float] = []
    lock = threading.Lock()

    async def loop_worker() -> None:
        async def one(cancel_after: float | None) -> None:
            task = asyncio.current_task()
            assert task is not None
            if cancel_after is not None:
                asyncio.get_running_loop().call_later(cancel_after, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await limiter.aacquire()
                with lock:
                    granted.append(time.monotonic())

        before = asyncio.all_tasks()
        # Every third waiter is cancelled while it may still be queued.
        await asyncio.gather(*(one(0.01 * (i % 5) if i % 3 == 0 else None) for i in range(15)))
        assert asyncio.all_tasks() == before

    def sync_worker() -> None:
        for _ in range(10):
            limiter.acquire()
            with lock:
                granted.append(time.monotonic())

    threads = [threading.Thread(target=asyncio.run, args=(loop_worker(),)) for _ in range(3)]
    threads += [threading.Thread(target=sync_worker) for _ in range(2)]
    started = time.monotonic()
    with fail_after(HANG_SECONDS):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.monotonic() - started
    assert 65 - 15 <= len(granted) <= 65  # 20 sync calls, 45 waiters of which 15 cancelled
    # However many were granted, no more than the rate allows (two at once to start with).
    assert elapsed >= (len(granted) - 2) / 200 - EARLY
