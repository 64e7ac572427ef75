"""StreamPipelineNode in real graphs: backpressure, live results, errors once, no leaks, flat memory."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.stream_pipeline import (
    PipelinePolicy,
    StreamPipelineNode,
    run_pipeline,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import NodeTimeoutError
from langgraph.graph import START, StateGraph
from langgraph.types import TimeoutPolicy

from act_operator_lib import metrics
from tests.helpers import other_tasks_after, run_example


class State(TypedDict, total=False):
    upto: int
    processed: int


def build(node: StreamPipelineNode[Any, Any], *, checkpointer: Any = None) -> Any:
    builder = StateGraph(State)
    builder.add_node(node)
    builder.add_edge(START, node.name)
    return builder.compile(checkpointer=checkpointer)


async def numbers(state: State) -> AsyncIterator[int]:
    for n in range(state["upto"]):
        yield n


async def double(n: int) -> int:
    return 2 * n


async def test_results_and_progress_stream_live_and_the_count_lands_in_state() -> None:
    graph = build(StreamPipelineNode(numbers, double, PipelinePolicy(progress_every=4)))
    chunks: list[Any] = []
    final: dict[str, Any] = {}
    async for mode, chunk in graph.astream({"upto": 10}, stream_mode=["custom", "values"]):
        if mode == "custom":
            chunks.append(chunk)
        else:
            final = chunk
    progress = {"node": "StreamPipelineNode"}
    assert chunks == [
        *(0, 2, 4, 6),
        {**progress, "processed": 4},
        *(8, 10, 12, 14),
        {**progress, "processed": 8},
        *(16, 18),
        {**progress, "processed": 10},
    ]
    assert final == {"upto": 10, "processed": 10}


async def test_progress_names_the_graph_node_so_two_pipelines_are_told_apart() -> None:
    class Halves(TypedDict, total=False):
        upto: int
        evens: int
        odds: int

    async def evens(state: Halves) -> AsyncIterator[int]:
        for n in range(0, state["upto"], 2):
            yield n

    async def odds(state: Halves) -> AsyncIterator[int]:
        for n in range(1, state["upto"], 2):
            yield n

    async def nothing(n: int) -> None:
        return None

    builder = StateGraph(Halves)
    for name, source in (("evens", evens), ("odds", odds)):
        policy = PipelinePolicy(progress_every=2, count_key=name)
        builder.add_node(name, StreamPipelineNode(source, nothing, policy))  # one class, twice
        builder.add_edge(START, name)
    graph = builder.compile()
    metrics.reset()
    with metrics.collecting():
        chunks = [chunk async for chunk in graph.astream({"upto": 8}, stream_mode="custom")]
        recorded = metrics.snapshot()
    metrics.reset()
    by_node: dict[str, list[int]] = {}
    for chunk in chunks:
        by_node.setdefault(chunk["node"], []).append(chunk["processed"])
    assert by_node == {"evens": [2, 4], "odds": [2, 4]}
    # The same names the per-node metrics (and the blocking detector) use.
    assert {"evens", "odds"} <= set(recorded.nodes)
    assert recorded.value("stream_pipeline_items", node="evens") == 4
    assert recorded.value("stream_pipeline_items", node="odds") == 4

    # Called directly, outside a graph, the node reports under its own name.
    node = StreamPipelineNode(numbers, double, name="direct")
    assert node.name == "direct"
    assert await node({"upto": 3}) == {"processed": 3}


async def test_a_slow_consumer_slows_the_producer_to_the_queue_size() -> None:
    produced = consumed = lead = 0

    async def fast(state: State) -> AsyncIterator[int]:
        nonlocal produced, lead
        for n in range(200):
            produced += 1
            lead = max(lead, produced - consumed)
            yield n

    async def slow(n: int) -> None:
        nonlocal consumed
        await asyncio.sleep(0.001)
        consumed += 1

    node = StreamPipelineNode(fast, slow, PipelinePolicy(queue_size=8, count_key="processed"))
    assert await build(node).ainvoke({"upto": 0}) == {"upto": 0, "processed": 200}
    # queue_size in the queue, one in the consumer's hands, one being put by the producer.
    assert lead <= 8 + 2


async def test_items_are_processed_as_they_arrive() -> None:
    events: list[str] = []

    async def trickle(state: State) -> AsyncIterator[int]:
        for n in range(3):
            events.append(f"made {n}")
            yield n
            await asyncio.sleep(0.02)

    async def note(n: int) -> str:
        events.append(f"used {n}")
        return f"item {n}"

    graph = build(StreamPipelineNode(trickle, note, PipelinePolicy(progress_every=0)))
    received = []
    async for chunk in graph.astream({"upto": 3}, stream_mode="custom"):
        received.append(chunk)
        events.append(f"caller got {chunk}")
    assert received == ["item 0", "item 1", "item 2"]
    assert events[:3] == ["made 0", "used 0", "caller got item 0"]
    assert events.index("caller got item 0") < events.index("made 1")


async def test_producer_error_mid_stream_cancels_consumer_and_surfaces_once() -> None:
    stages: list[str] = []

    async def breaks(state: State) -> AsyncIterator[int]:
        try:
            for n in range(100):
                if n == 5:
                    raise ValueError("source row 5 is corrupt")
                yield n
        finally:
            stages.append("producer closed")

    async def waits(n: int) -> int:
        try:
            await asyncio.sleep(0.01 if n < 2 else 10)
        except asyncio.CancelledError:
            stages.append("consumer cancelled")
            raise
        return n

    graph = build(StreamPipelineNode(breaks, waits), checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "p1"}}
    before = asyncio.all_tasks()
    with pytest.raises(ValueError, match="source row 5 is corrupt") as caught:
        await graph.ainvoke({"upto": 100}, config)
    assert type(caught.value) is ValueError  # the error itself, not an ExceptionGroup
    assert sorted(stages) == ["consumer cancelled", "producer closed"]
    assert await other_tasks_after(before) == set()
    state = await graph.aget_state(config)
    assert state.values == {"upto": 100}  # no count written by the failed node
    assert state.next == ("StreamPipelineNode",)


async def test_consumer_error_closes_the_producer_and_surfaces_once() -> None:
    closed: list[int] = []

    async def endless(state: State) -> AsyncIterator[int]:
        n = 0
        try:
            while True:
                yield n
                n += 1
        finally:
            closed.append(n)

    async def picky(n: int) -> int:
        if n == 50:
            raise LookupError("no rule for item 50")
        return n

    before = asyncio.all_tasks()
    received: list[Any] = []

    async def run() -> None:
        graph = build(StreamPipelineNode(endless, picky, PipelinePolicy(queue_size=4)))
        async for chunk in graph.astream({"upto": 0}, stream_mode="custom"):
            received.append(chunk)

    with pytest.raises(LookupError, match="no rule for item 50"):
        await run()
    assert received == list(range(50))
    assert len(closed) == 1
    assert closed[0] <= 50 + 4 + 2  # the producer was held back, then closed
    assert await other_tasks_after(before) == set()


async def test_cancelling_the_run_while_the_consumer_waits_leaks_nothing() -> None:
    stages: list[str] = []
    started = asyncio.Event()

    async def endless(state: State) -> AsyncIterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            stages.append("producer closed")

    async def stuck(n: int) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stages.append("consumer cancelled")
            raise

    graph = build(StreamPipelineNode(endless, stuck))
    before = asyncio.all_tasks()
    run = asyncio.create_task(graph.ainvoke({"upto": 0}))
    await asyncio.wait_for(started.wait(), 5)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sorted(stages) == ["consumer cancelled", "producer closed"]
    assert await other_tasks_after(before) == set()


async def test_a_consumer_cancelled_by_its_own_timeout_surfaces_as_timeout() -> None:
    async def slow(n: int) -> int:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1 if n == 3 else 0)
        return n

    before = asyncio.all_tasks()
    with pytest.raises(TimeoutError):
        await build(StreamPipelineNode(numbers, slow)).ainvoke({"upto": 10})
    assert await other_tasks_after(before) == set()


async def test_each_streamed_result_is_progress_for_langgraphs_idle_timeout() -> None:
    async def slow(n: int) -> int:
        await asyncio.sleep(0.1)
        return n

    async def slow_and_silent(n: int) -> None:
        await asyncio.sleep(0.1)

    def build_with_idle_timeout(consume: Any) -> Any:
        builder = StateGraph(State)
        node = StreamPipelineNode(numbers, consume, PipelinePolicy(progress_every=0))
        builder.add_node(node, timeout=TimeoutPolicy(idle_timeout=0.35))
        builder.add_edge(START, node.name)
        return builder.compile()

    # Eight results 0.1 s apart: 0.8 s in all, longer than the idle timeout, but never idle.
    assert await build_with_idle_timeout(slow).ainvoke({"upto": 8}) == {"upto": 8, "processed": 8}
    # The same work streaming nothing makes no observable progress, so the timeout trips.
    with pytest.raises(NodeTimeoutError) as caught:
        await build_with_idle_timeout(slow_and_silent).ainvoke({"upto": 8})
    assert caught.value.kind == "idle"


async def test_a_consumer_whose_awaited_future_is_cancelled_fails_instead_of_hanging() -> None:
    shared: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def waits_on_shared(n: int) -> int:
        if n == 3:
            asyncio.get_running_loop().call_later(0.01, shared.cancel)  # someone else cancels it
            return await shared
        return n

    before = asyncio.all_tasks()
    with pytest.raises(RuntimeError, match="consumer got CancelledError at item 4 without being"):
        await asyncio.wait_for(
            build(StreamPipelineNode(numbers, waits_on_shared)).ainvoke({"upto": 1000}), 5
        )
    assert await other_tasks_after(before) == set()


async def test_a_producer_whose_awaited_future_is_cancelled_fails_instead_of_hanging() -> None:
    async def source(state: State) -> AsyncIterator[int]:
        yield 1
        doomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        doomed.cancel()
        await doomed

    with pytest.raises(RuntimeError, match="producer got CancelledError at item 1 without being"):
        await asyncio.wait_for(build(StreamPipelineNode(source, double)).ainvoke({"upto": 0}), 5)


@pytest.mark.slow
async def test_memory_stays_flat_over_a_million_items() -> None:
    async def every_100k(n: int) -> int | None:
        return n if n % 100_000 == 0 else None

    graph = build(StreamPipelineNode(numbers, every_100k, PipelinePolicy(progress_every=250_000)))
    await graph.ainvoke({"upto": 1_000})  # warm up imports and caches outside the measurement
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        chunks = [c async for c in graph.astream({"upto": 1_000_000}, stream_mode="custom")]
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert [c for c in chunks if isinstance(c, int)] == list(range(0, 1_000_000, 100_000))
    assert chunks[-1] == {"node": "StreamPipelineNode", "processed": 1_000_000}
    # A list of a million ints alone would be ~40 MB; the pipeline holds a few kB of queue.
    assert peak < 2 * 1024 * 1024, f"peak grew by {peak / 1e6:.1f} MB"


async def test_run_pipeline_takes_any_async_iterable() -> None:
    class Countdown:
        def __init__(self, start: int) -> None:
            self.left = start

        def __aiter__(self) -> Countdown:
            return self

        async def __anext__(self) -> int:
            if self.left == 0:
                raise StopAsyncIteration
            self.left -= 1
            return self.left

    out: list[int] = []
    progress: list[int] = []
    count = await run_pipeline(
        Countdown(5), double, queue_size=1, emit=out.append, on_progress=progress.append
    )
    assert (count, out, progress) == (5, [8, 6, 4, 2, 0], [5])


async def test_produce_must_return_an_async_iterable() -> None:
    def rows(state: State) -> list[int]:
        return [1, 2]

    with pytest.raises(TypeError, match=r"produce\(state\) must return an async iterable"):
        await build(StreamPipelineNode(rows, double)).ainvoke({"upto": 2})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"queue_size": 0}, ValueError, "queue_size must be an int >= 1, got 0"),
        ({"queue_size": 2.5}, TypeError, "queue_size must be an int >= 1, got 2.5"),
        ({"progress_every": -1}, ValueError, "progress_every must be an int >= 0"),
        ({"count_key": ""}, ValueError, "count_key must be a non-empty str or None, got ''"),
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        PipelinePolicy(**kwargs)


async def test_run_pipeline_refuses_an_unbounded_queue() -> None:
    with pytest.raises(ValueError, match="queue_size must be an int >= 1, got 0"):
        await run_pipeline(numbers({"upto": 1}), double, queue_size=0)


def test_node_rejects_stages_that_are_not_callable() -> None:
    with pytest.raises(TypeError, match="consume must be callable, got int"):
        StreamPipelineNode(numbers, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy must be a PipelinePolicy, got int"):
        StreamPipelineNode(numbers, double, 64)  # type: ignore[arg-type]


def test_example_runs() -> None:
    stdout = run_example("stream_pipeline")
    assert "custom {'node': 'StreamPipelineNode', 'processed': 1000000}" in stdout
    assert "values {'upto': 1000000, 'processed': 1000000}" in stdout
