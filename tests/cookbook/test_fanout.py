"""Bounded fan-out inside real compiled graphs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.deadline import with_deadline
from act_operator_lib.cookbook.fanout import FanoutNode, FanoutPolicy, ItemError, bounded_map
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from tests.helpers import run_example


class State(TypedDict, total=False):
    items: list[Any]
    results: list[Any]
    errors: list[dict[str, Any]]


def fanout_graph(fn: Callable[[Any], Any], policy: FanoutPolicy) -> CompiledStateGraph[Any]:
    builder = StateGraph(State)
    builder.add_node(FanoutNode(fn, policy))
    builder.add_edge(START, "FanoutNode")
    builder.add_edge("FanoutNode", END)
    return builder.compile()


class Tracker:
    """Counts items in flight and the peak, and which items were cancelled."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.started: list[Any] = []
        self.cancelled: list[Any] = []
        self.all_started = asyncio.Event()

    def enter(self, item: Any) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.append(item)

    def leave(self) -> None:
        self.in_flight -= 1


async def test_results_come_back_in_input_order() -> None:
    async def double_after(n: int) -> int:
        await asyncio.sleep(0.001 * (20 - n))  # later items finish first
        return n * 2

    graph = fanout_graph(double_after, FanoutPolicy(limit=20))
    out = await graph.ainvoke({"items": list(range(20))})
    assert out["results"] == [n * 2 for n in range(20)]


async def test_concurrency_reaches_the_limit_and_never_exceeds_it() -> None:
    tracker = Tracker()

    async def work(n: int) -> int:
        tracker.enter(n)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            return n
        finally:
            tracker.leave()

    graph = fanout_graph(work, FanoutPolicy(limit=7))
    out = await graph.ainvoke({"items": list(range(100))})
    assert out["results"] == list(range(100))
    assert tracker.peak == 7
    assert tracker.in_flight == 0


async def test_item_timeout_is_reported_per_item_under_collect() -> None:
    never = asyncio.Event()

    async def work(n: int) -> int:
        if n in (2, 5):
            await never.wait()
        return n

    graph = fanout_graph(work, FanoutPolicy(limit=4, item_timeout=0.05, on_error="collect"))
    out = await graph.ainvoke({"items": list(range(8))})
    assert out["results"] == [0, 1, None, 3, 4, None, 6, 7]
    assert [e["index"] for e in out["errors"]] == [2, 5]
    assert all(e["error"].startswith("TimeoutError: fan-out item") for e in out["errors"])
    assert "item_timeout" in out["errors"][0]["error"]


async def test_collect_keeps_partial_results_and_the_errors() -> None:
    async def parse(text: str) -> int:
        return int(text)

    graph = fanout_graph(parse, FanoutPolicy(limit=3, on_error="collect"))
    out = await graph.ainvoke({"items": ["1", "x", "3", "", "5"]})
    assert out["results"] == [1, None, 3, None, 5]
    assert out["errors"] == [
        {"index": 1, "error": "ValueError: invalid literal for int() with base 10: 'x'"},
        {"index": 3, "error": "ValueError: invalid literal for int() with base 10: ''"},
    ]


async def test_primitive_collect_returns_exceptions_with_their_index() -> None:
    async def check(n: int) -> int:
        if n % 3 == 0:
            raise LookupError(n)
        return n

    outcome = await bounded_map(check, iter(range(7)), FanoutPolicy(limit=2, on_error="collect"))
    assert outcome.partial
    assert outcome.results == [None, 1, 2, None, 4, 5, None]
    assert [(e.index, type(e.error)) for e in outcome.errors] == [
        (0, LookupError),
        (3, LookupError),
        (6, LookupError),
    ]
    assert isinstance(outcome.errors[0], ItemError)


async def test_fail_fast_cancels_the_rest_and_leaks_no_task() -> None:
    tracker = Tracker()
    blocked = asyncio.Event()

    async def work(n: int) -> int:
        tracker.enter(n)
        try:
            if tracker.in_flight == 5:
                tracker.all_started.set()
            if n == 3:
                await tracker.all_started.wait()  # fail only once the others are mid-flight
                raise ValueError("item 3 is bad")
            await blocked.wait()
            return n
        except asyncio.CancelledError:
            tracker.cancelled.append(n)
            raise
        finally:
            tracker.leave()

    graph = fanout_graph(work, FanoutPolicy(limit=5))
    before = asyncio.all_tasks()
    with pytest.raises(ExceptionGroup) as caught:
        await graph.ainvoke({"items": list(range(50))})
    assert caught.group_contains(ValueError, match="item 3 is bad")
    error = caught.value.subgroup(ValueError).exceptions[0]  # type: ignore[union-attr]
    assert "fan-out item 3 failed" in error.__notes__[0]
    assert sorted(tracker.cancelled) == [0, 1, 2, 4]
    assert tracker.started == [0, 1, 2, 3, 4]  # nothing started after the failure
    assert tracker.in_flight == 0
    assert asyncio.all_tasks() == before


async def test_cancelling_the_run_mid_flight_leaks_nothing() -> None:
    tracker = Tracker()

    async def work(n: int) -> int:
        tracker.enter(n)
        try:
            if tracker.in_flight == 4:
                tracker.all_started.set()
            await asyncio.Event().wait()
            return n
        except asyncio.CancelledError:
            tracker.cancelled.append(n)
            raise
        finally:
            tracker.leave()

    graph = fanout_graph(work, FanoutPolicy(limit=4))
    before = asyncio.all_tasks()
    run = asyncio.create_task(graph.ainvoke({"items": list(range(1000))}))
    await tracker.all_started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sorted(tracker.cancelled) == [0, 1, 2, 3]
    assert tracker.in_flight == 0
    assert asyncio.all_tasks() == before


async def test_100_000_items_never_have_more_live_tasks_than_the_limit() -> None:
    limit = 50
    baseline = len(asyncio.all_tasks())
    most_tasks = 0

    async def work(n: int) -> int:
        nonlocal most_tasks
        if n % 997 == 0:  # sample: all_tasks() is O(tasks)
            most_tasks = max(most_tasks, len(asyncio.all_tasks()) - baseline)
        await asyncio.sleep(0)
        return n + 1

    graph = fanout_graph(work, FanoutPolicy(limit=limit))
    out = await graph.ainvoke({"items": list(range(100_000))})
    assert out["results"][0] == 1
    assert out["results"][-1] == 100_000
    assert len(out["results"]) == 100_000
    # The workers, plus the few tasks LangGraph runs the node in.
    assert limit <= most_tasks <= limit + 5


async def test_a_generator_is_consumed_lazily() -> None:
    taken = 0
    most_ahead = 0
    done = 0

    def numbers() -> Any:
        nonlocal taken
        for n in range(1000):
            taken += 1
            yield n

    async def work(n: int) -> int:
        nonlocal most_ahead, done
        most_ahead = max(most_ahead, taken - done)
        await asyncio.sleep(0)
        done += 1
        return n

    outcome = await bounded_map(work, numbers(), FanoutPolicy(limit=10))
    assert outcome.results == list(range(1000))
    assert most_ahead <= 10


async def test_item_timeouts_are_clamped_to_the_run_deadline() -> None:
    async def hang(n: int) -> int:
        await asyncio.Event().wait()
        return n

    graph = fanout_graph(hang, FanoutPolicy(limit=2, item_timeout=60, on_error="collect"))
    out = await graph.ainvoke({"items": [1, 2, 3]}, with_deadline(0.3))
    assert out["results"] == [None, None, None]
    messages = [e["error"] for e in out["errors"]]
    assert "timed out after" in messages[0]
    assert "(deadline)" in messages[0]
    assert "(deadline)" in messages[1]
    assert "deadline" in messages[2]  # item 2 could only start once the deadline had passed


def test_the_same_graph_runs_under_several_asyncio_run_calls_and_uvloop() -> None:
    async def square(n: int) -> int:
        await asyncio.sleep(0)
        return n * n

    graph = fanout_graph(square, FanoutPolicy(limit=3, item_timeout=1.0))
    expected = [n * n for n in range(10)]
    for _ in range(3):
        assert asyncio.run(graph.ainvoke({"items": list(range(10))}))["results"] == expected
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(graph.ainvoke({"items": list(range(10))}))["results"] == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"limit": 0}, ValueError, "FanoutPolicy limit must be >= 1, got 0"),
        ({"limit": -3}, ValueError, "limit must be >= 1"),
        ({"limit": 2.5}, TypeError, "limit must be an int, got float"),
        ({"item_timeout": 0}, ValueError, "item_timeout must be > 0 seconds or None, got 0"),
        ({"item_timeout": -1.0}, ValueError, "item_timeout must be > 0"),
        ({"on_error": "ignore"}, ValueError, "on_error must be 'fail_fast' or 'collect'"),
    ],
)
def test_invalid_policy_fails_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        FanoutPolicy(**kwargs)


def test_invalid_node_arguments_fail_at_construction() -> None:
    with pytest.raises(TypeError, match="FanoutNode fn must be an async callable"):
        FanoutNode(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FanoutNode policy must be a FanoutPolicy"):
        FanoutNode(asyncio.sleep, {"limit": 3})  # type: ignore[arg-type]


async def test_a_missing_input_key_is_named() -> None:
    graph = fanout_graph(asyncio.sleep, FanoutPolicy())
    with pytest.raises(KeyError, match="FanoutNode maps over state\\['items'\\], which is missing"):
        await graph.ainvoke({"results": []})


def test_the_recipe_example_runs() -> None:
    out = run_example("fanout")
    assert "first results: [0, 1, 4, 9, 16]" in out
    assert "item 13 timed out" in out
    assert "peak in flight 10" in out
