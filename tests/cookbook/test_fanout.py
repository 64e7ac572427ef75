"""Bounded fan-out inside real compiled graphs."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.deadline import with_deadline
from act_operator_lib.cookbook.fanout import FanoutNode, FanoutPolicy, ItemError, bounded_map
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import RetryPolicy

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

    @contextmanager
    def running(self, item: Any) -> Iterator[None]:
        """Counts ``item`` in flight for the block, and as cancelled if the block is."""
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.append(item)
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
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
        with tracker.running(n):
            for _ in range(3):
                await asyncio.sleep(0)
            return n

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
        with tracker.running(n):
            if tracker.in_flight == 5:
                tracker.all_started.set()
            if n == 3:
                await tracker.all_started.wait()  # fail only once the others are mid-flight
                raise ValueError("item 3 is bad")
            await blocked.wait()
            return n

    graph = fanout_graph(work, FanoutPolicy(limit=5))
    before = asyncio.all_tasks()
    with pytest.raises(ValueError, match="item 3 is bad") as caught:  # the item's own error
        await graph.ainvoke({"items": list(range(50))})
    assert "fan-out item 3 failed" in caught.value.__notes__[0]
    assert sorted(tracker.cancelled) == [0, 1, 2, 4]
    assert tracker.started == [0, 1, 2, 3, 4]  # nothing started after the failure
    assert tracker.in_flight == 0
    assert asyncio.all_tasks() == before


async def test_cancelling_the_run_mid_flight_leaks_nothing() -> None:
    tracker = Tracker()

    async def work(n: int) -> int:
        with tracker.running(n):
            if tracker.in_flight == 4:
                tracker.all_started.set()
            await asyncio.Event().wait()
            return n

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
        ({"limit": 0}, ValueError, "FanoutPolicy limit must be an int >= 1, got 0"),
        ({"limit": -3}, ValueError, "limit must be an int >= 1, got -3"),
        ({"limit": 2.5}, TypeError, "limit must be an int >= 1, got 2.5"),
        (
            {"item_timeout": 0},
            ValueError,
            "item_timeout must be a finite number of seconds > 0 or None, got 0",
        ),
        ({"item_timeout": -1.0}, ValueError, "item_timeout must be a finite number of seconds > 0"),
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


def counted_graph(
    fn: Callable[[Any], Any], policy: FanoutPolicy, retry: RetryPolicy
) -> tuple[CompiledStateGraph[Any], list[int]]:
    """A FanoutNode under a node RetryPolicy, and the list its attempts are counted in."""
    attempts: list[int] = []

    async def counted(item: Any) -> Any:
        if item == 0:
            attempts.append(1)
        return await fn(item)

    builder = StateGraph(State)
    builder.add_node(FanoutNode(counted, policy), retry_policy=retry)
    builder.add_edge(START, "FanoutNode")
    builder.add_edge("FanoutNode", END)
    return builder.compile(), attempts


async def test_a_node_retry_policy_reads_fail_fasts_error_like_a_plain_nodes() -> None:
    async def parse(item: Any) -> int:
        await asyncio.sleep(0)
        return int(item)

    # LangGraph's default_retry_on does not retry a ValueError: one attempt, as a plain node.
    graph, attempts = counted_graph(
        parse, FanoutPolicy(limit=2), RetryPolicy(initial_interval=0.01)
    )
    with pytest.raises(ValueError, match="invalid literal"):
        await graph.ainvoke({"items": [0, 1, "x", 3]})
    assert len(attempts) == 1

    # retry_on=ConnectionError matches an item's ConnectionError: every attempt is made.
    async def fetch(item: Any) -> int:
        await asyncio.sleep(0)
        if item == 2:
            raise ConnectionError("mirror unreachable")
        return int(item)

    retry = RetryPolicy(
        initial_interval=0.01, max_attempts=3, jitter=False, retry_on=ConnectionError
    )
    graph, attempts = counted_graph(fetch, FanoutPolicy(limit=2), retry)
    with pytest.raises(ConnectionError, match="mirror unreachable"):
        await graph.ainvoke({"items": [0, 1, 2, 3]})
    assert len(attempts) == 3


async def test_fail_fast_notes_the_other_items_that_failed_while_stopping() -> None:
    started = asyncio.Event()
    others = 0

    async def work(n: int) -> int:
        nonlocal others
        if n == 1:
            await started.wait()  # fail once items 0 and 2 are in flight
            raise ValueError("item 1 is bad")
        others += 1
        if others == 2:
            started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise OSError(f"item {n} could not clean up") from None
        return n

    with pytest.raises(ValueError, match="item 1 is bad") as caught:
        await fanout_graph(work, FanoutPolicy(limit=3)).ainvoke({"items": [0, 1, 2]})
    notes = caught.value.__notes__
    assert notes[0] == "fan-out item 1 failed; the other items were cancelled"
    assert "fan-out item 0 also raised OSError: item 0 could not clean up" in notes
    assert "fan-out item 2 also raised OSError: item 2 could not clean up" in notes


def endless(limit: int = 50_000) -> Any:
    """Numbers for ever, or until ``limit`` were taken (a fan-out must stop long before)."""
    for n in itertools.count():
        if n == limit:
            raise AssertionError("the fan-out kept taking items past its deadline")
        yield n


async def test_at_the_deadline_collect_stops_taking_items_and_returns() -> None:
    async def work(n: int) -> int:
        await asyncio.sleep(0.01)
        return n

    graph = fanout_graph(work, FanoutPolicy(limit=4, on_error="collect"))
    out = await asyncio.wait_for(graph.ainvoke({"items": endless()}, with_deadline(0.3)), 30)
    taken = len(out["results"])
    assert out["results"][:8] == list(range(8))
    assert taken < 1000
    last = out["errors"][-1]
    assert last == {
        "index": taken - 1,
        "error": f"TimeoutError: deadline passed before fan-out item {taken - 1} started;"
        " no later item was taken",
    }
    assert len(out["errors"]) <= 5  # the 4 in flight at the deadline and the one not started


async def test_at_the_deadline_fail_fast_raises_at_once() -> None:
    async def work(n: int) -> int:
        await asyncio.sleep(0.01)
        return n

    graph = fanout_graph(work, FanoutPolicy(limit=4))
    with pytest.raises(TimeoutError, match="deadline"):
        await asyncio.wait_for(graph.ainvoke({"items": endless()}, with_deadline(0.3)), 30)


async def test_a_long_list_past_its_deadline_is_not_drained() -> None:
    async def slow(n: int) -> int:
        await asyncio.sleep(10)
        return n

    graph = fanout_graph(slow, FanoutPolicy(limit=8, on_error="collect"))
    out = await graph.ainvoke({"items": list(range(100_000))}, with_deadline(0.1))
    assert len(out["results"]) == 9  # 8 cut off at the deadline, the 9th never started
    assert len(out["errors"]) == 9
    assert "(deadline)" in out["errors"][0]["error"]
