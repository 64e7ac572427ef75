"""Run-wide deadlines flowing across the nodes of real compiled graphs."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.deadline import (
    GatherByDeadline,
    clamp_timeout,
    current_deadline,
    deadline_after,
    deadline_scope,
    gather_by_deadline,
    remaining,
    with_deadline,
)
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import RunControl

from tests.helpers import run_example


class State(TypedDict, total=False):
    seen: list[float | None]
    gathered: dict[str, Any]


@dataclass
class Ctx:
    deadline: float | None = None
    deadline_seconds: float | None = None


def two_step_graph() -> CompiledStateGraph[Any]:
    """Two nodes that each write down the deadline they see."""

    async def first(state: State) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"seen": [current_deadline()]}

    async def second(state: State) -> dict[str, Any]:
        return {"seen": [*state["seen"], current_deadline()]}

    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node("first", first)
    builder.add_node("second", second)
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", END)
    return builder.compile()


async def test_a_configurable_deadline_reaches_every_node() -> None:
    config = with_deadline(5.0, {"configurable": {"thread_id": "t"}})
    out = await two_step_graph().ainvoke({"seen": []}, config)
    assert out["seen"] == [config["configurable"]["deadline"]] * 2
    assert config["configurable"]["thread_id"] == "t"


async def test_a_context_deadline_reaches_every_node() -> None:
    deadline = deadline_after(5.0)
    out = await two_step_graph().ainvoke({"seen": []}, context=Ctx(deadline=deadline))
    assert out["seen"] == [deadline, deadline]


async def test_the_earliest_of_the_context_and_configurable_deadlines_applies() -> None:
    builder = StateGraph(State)  # no context_schema: the context is a plain mapping
    builder.add_node("look", lambda state: {"seen": [current_deadline()]})
    builder.add_edge(START, "look")
    graph = builder.compile()
    deadline = deadline_after(5.0)
    config = with_deadline(60.0)
    out = await graph.ainvoke({"seen": []}, config, context={"deadline": deadline})
    assert out["seen"] == [deadline]
    out = await graph.ainvoke({"seen": []}, config, context={"other": 1})
    assert out["seen"] == [config["configurable"]["deadline"]]
    # A later absolute deadline does not undo an earlier budget, nor the other way round.
    out = await graph.ainvoke({"seen": []}, config, context={"deadline_seconds": 1.0})
    (seen,) = out["seen"]
    assert seen < deadline
    out = await graph.ainvoke({"seen": []}, with_deadline(0.5), context={"deadline_seconds": 60})
    (seen,) = out["seen"]
    assert seen - time.monotonic() <= 0.5


async def test_a_budget_is_anchored_once_per_run() -> None:
    graph = two_step_graph()
    before = time.monotonic()
    first_run = await graph.ainvoke({"seen": []}, {"configurable": {"deadline_seconds": 5}})
    second_run = await graph.ainvoke({"seen": []}, context=Ctx(deadline_seconds=5))
    after = time.monotonic()
    # The second node sees the deadline the first one anchored, though time passed.
    a1, a2 = first_run["seen"]
    b1, b2 = second_run["seen"]
    assert a1 == a2
    assert b1 == b2
    assert before + 5 <= a1 < b1 <= after + 5  # each run gets a fresh budget


async def test_sync_nodes_in_threads_see_the_same_budget_deadline() -> None:
    def sync_step(state: State) -> dict[str, Any]:
        return {"seen": [*state["seen"], current_deadline()]}

    builder = StateGraph(State)
    builder.add_node("first_step", lambda state: {"seen": [current_deadline()]})
    builder.add_node("sync_step", sync_step)
    builder.add_edge(START, "first_step")
    builder.add_edge("first_step", "sync_step")
    graph = builder.compile()
    out = await graph.ainvoke({"seen": []}, {"configurable": {"deadline_seconds": 5}})
    first, second = out["seen"]
    assert first is not None
    assert first == second


async def test_no_deadline_means_no_limit() -> None:
    out = await two_step_graph().ainvoke({"seen": []})
    assert out["seen"] == [None, None]
    assert remaining() is None
    assert clamp_timeout(3.0) == 3.0
    assert clamp_timeout(None) is None


async def test_inner_timeouts_are_clamped_to_the_time_left() -> None:
    clamped: list[float | None] = []

    async def call_slow_service(state: State) -> dict[str, Any]:
        timeout = clamp_timeout(30.0)
        clamped.append(timeout)
        async with asyncio.timeout(timeout):
            await asyncio.Event().wait()
        return {}

    builder = StateGraph(State)
    builder.add_node("call", call_slow_service)
    builder.add_edge(START, "call")
    graph = builder.compile()
    with pytest.raises(TimeoutError):
        await graph.ainvoke({}, with_deadline(0.5))
    assert clamped[0] is not None
    assert 0 < clamped[0] <= 0.5


def slow_and_fast_graph(events: dict[str, asyncio.Event], budget: float | None = None) -> Any:
    async def fast(state: State) -> str:
        return "fast answer"

    async def broken(state: State) -> str:
        raise ConnectionError("source down")

    async def slow(state: State) -> str:
        events["slow_started"].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events["slow_cancelled"].set()
            raise
        return "never"

    builder = StateGraph(State)
    builder.add_node(
        GatherByDeadline({"fast": fast, "broken": broken, "slow": slow}, budget=budget)
    )
    builder.add_edge(START, "GatherByDeadline")
    builder.add_edge("GatherByDeadline", END)
    return builder.compile()


async def test_gather_returns_what_finished_and_cancels_the_rest() -> None:
    events = {"slow_started": asyncio.Event(), "slow_cancelled": asyncio.Event()}
    graph = slow_and_fast_graph(events)
    before = asyncio.all_tasks()
    out = await graph.ainvoke({}, with_deadline(0.5))
    assert out["gathered"] == {
        "results": {"fast": "fast answer"},
        "errors": {"broken": "ConnectionError: source down"},
        "cancelled": ["slow"],
        "partial": True,
    }
    assert events["slow_cancelled"].is_set()
    assert asyncio.all_tasks() == before


async def test_the_node_budget_shortens_a_longer_run_deadline() -> None:
    events = {"slow_started": asyncio.Event(), "slow_cancelled": asyncio.Event()}
    graph = slow_and_fast_graph(events, budget=0.05)
    out = await graph.ainvoke({}, with_deadline(60))
    assert out["gathered"]["cancelled"] == ["slow"]
    assert events["slow_cancelled"].is_set()


async def test_gather_is_complete_when_everything_finishes() -> None:
    async def value(n: int) -> int:
        await asyncio.sleep(0)
        return n

    found = await gather_by_deadline({"a": lambda: value(1), "b": lambda: value(2)})
    assert found.results == {"a": 1, "b": 2}
    assert not found.partial
    assert found.cancelled == ()


async def test_cancelling_a_gathering_run_leaks_nothing() -> None:
    events = {"slow_started": asyncio.Event(), "slow_cancelled": asyncio.Event()}
    graph = slow_and_fast_graph(events)
    before = asyncio.all_tasks()
    run = asyncio.create_task(graph.ainvoke({}))  # no deadline: would wait forever
    await events["slow_started"].wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert events["slow_cancelled"].is_set()
    assert asyncio.all_tasks() == before


async def test_a_scope_narrows_but_never_widens_the_deadline() -> None:
    outer = deadline_after(1.0)
    with deadline_scope(outer):
        assert current_deadline() == outer
        with deadline_scope(outer + 10) as effective:
            assert effective == outer
        inner = deadline_after(0.5)
        with deadline_scope(inner):
            assert current_deadline() == inner
            left = remaining()
            assert left is not None
            assert 0 < left <= 0.5
    assert current_deadline() is None


def test_several_asyncio_runs_and_uvloop_each_get_their_own_budget() -> None:
    graph = two_step_graph()
    config = {"configurable": {"deadline_seconds": 5}}
    seen = [asyncio.run(graph.ainvoke({"seen": []}, config))["seen"] for _ in range(3)]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        seen.append(runner.run(graph.ainvoke({"seen": []}, config))["seen"])
    assert all(first == second for first, second in seen)
    assert len({first for first, _ in seen}) == 4


async def test_invalid_deadlines_are_rejected_naming_the_parameter() -> None:
    with pytest.raises(ValueError, match="deadline seconds must be > 0, got 0"):
        deadline_after(0)
    with pytest.raises(ValueError, match="deadline seconds must be > 0, got -1"):
        with_deadline(-1)
    with pytest.raises(ValueError, match="timeout must be > 0 seconds or None, got 0"):
        clamp_timeout(0)
    with pytest.raises(ValueError, match="GatherByDeadline budget must be > 0 seconds"):
        GatherByDeadline({"a": asyncio.sleep}, budget=0)
    with pytest.raises(ValueError, match="GatherByDeadline operations must name at least one"):
        GatherByDeadline({})
    with pytest.raises(TypeError, match="GatherByDeadline operation 'a' must be an async callable"):
        GatherByDeadline({"a": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="deadline_seconds must be > 0 seconds, got -2"):
        await two_step_graph().ainvoke({"seen": []}, {"configurable": {"deadline_seconds": -2}})


def test_the_recipe_example_runs() -> None:
    out = run_example("deadline")
    assert "'cancelled': ['slow'], 'partial': True" in out
    assert "'quick': 'quick answer about deadlines'" in out


# Nested runs: each invoke that sets a budget gets its own, clamped by its caller's.


class Seen(TypedDict, total=False):
    seen: list[float | None]
    caller: list[float | None]


def budget_subgraph() -> CompiledStateGraph[Any]:
    """A graph whose one node writes down how much of its run's budget is left."""
    builder = StateGraph(Seen)
    builder.add_node("look", lambda state: {"seen": [remaining()]})
    builder.add_edge(START, "look")
    return builder.compile()


def caller_graph(*, ask_first: bool, nested_budgets: list[float]) -> CompiledStateGraph[Any]:
    """A node that invokes the subgraph once per nested budget, then reads its own budget."""
    subgraph = budget_subgraph()

    async def call_subgraphs(state: Seen) -> dict[str, Any]:
        caller = [remaining()] if ask_first else []
        seen = []
        for budget in nested_budgets:
            out = await subgraph.ainvoke({}, {"configurable": {"deadline_seconds": budget}})
            seen += out["seen"]
        return {"seen": seen, "caller": [*caller, remaining()]}

    builder = StateGraph(Seen)
    builder.add_node("call", call_subgraphs)
    builder.add_edge(START, "call")
    return builder.compile()


@pytest.mark.parametrize("ask_first", [False, True])
async def test_each_nested_invoke_gets_its_own_budget_and_the_caller_keeps_its_own(
    ask_first: bool,
) -> None:
    graph = caller_graph(ask_first=ask_first, nested_budgets=[0.5, 0.5, 0.3])
    out = await graph.ainvoke({}, {"configurable": {"deadline_seconds": 30}})
    first, second, third = out["seen"]
    assert 0.4 < first <= 0.5
    assert 0.4 < second <= 0.5  # a fresh 0.5 s, not what the first one left
    assert 0.2 < third <= 0.3
    assert all(25 < left <= 30 for left in out["caller"])  # still its own ~30 s


async def test_a_nested_budget_is_clamped_by_the_callers() -> None:
    graph = caller_graph(ask_first=True, nested_budgets=[5.0])
    out = await graph.ainvoke({}, context={"deadline_seconds": 0.4})
    (nested,) = out["seen"]
    caller_before, caller_after = out["caller"]
    assert nested <= caller_before <= 0.4  # 5 s asked for, but the caller has less
    assert caller_after <= nested


def test_sync_nested_invokes_get_their_own_budgets() -> None:
    subgraph = budget_subgraph()

    def call_subgraphs(state: Seen) -> dict[str, Any]:
        seen = []
        for _ in range(2):
            seen += subgraph.invoke({}, {"configurable": {"deadline_seconds": 0.5}})["seen"]
        return {"seen": seen, "caller": [remaining()]}

    builder = StateGraph(Seen)
    builder.add_node("call", call_subgraphs)
    builder.add_edge(START, "call")
    out = builder.compile().invoke({}, {"configurable": {"deadline_seconds": 30}})
    assert all(0.4 < left <= 0.5 for left in out["seen"])
    (caller,) = out["caller"]
    assert 25 < caller <= 30


async def test_a_subgraph_node_shares_its_parents_budget() -> None:
    subgraph = asking_graph()  # a compiled graph as a node: it inherits deadline_seconds
    for parent_asks_first in (True, False):
        builder = StateGraph(Seen)
        builder.add_node("sub", subgraph)
        builder.add_node("parent", lambda state: {"caller": [current_deadline()]})
        first, second = ("parent", "sub") if parent_asks_first else ("sub", "parent")
        builder.add_edge(START, first)
        builder.add_edge(first, second)
        out = await builder.compile().ainvoke({}, {"configurable": {"deadline_seconds": 5}})
        # One deadline, whichever asked first: the parent's budget started no later.
        assert out["seen"] == out["caller"]
        assert out["seen"][0] is not None


async def test_a_scope_around_a_nested_invoke_does_not_widen_its_budget() -> None:
    subgraph = budget_subgraph()

    async def call(state: Seen) -> dict[str, Any]:
        with deadline_scope(deadline_after(10)):
            out = await subgraph.ainvoke({}, {"configurable": {"deadline_seconds": 0.5}})
        return {"seen": out["seen"]}

    builder = StateGraph(Seen)
    builder.add_node("call", call)
    builder.add_edge(START, "call")
    out = await builder.compile().ainvoke({})
    (left,) = out["seen"]
    assert 0 < left <= 0.5


# The table of anchored budgets lets go of runs.


class TrackedControl(RunControl):
    """LangGraph's RunControl, weak-referenceable so the test can see it released."""


def asking_graph() -> CompiledStateGraph[Any]:
    builder = StateGraph(Seen)
    builder.add_node("look", lambda state: {"seen": [current_deadline()]})
    builder.add_edge(START, "look")
    return builder.compile()


async def test_budgets_of_finished_runs_are_forgotten_while_a_long_run_goes_on() -> None:
    release = asyncio.Event()
    asked = asyncio.Event()

    async def long_node(state: Seen) -> dict[str, Any]:
        seen = [current_deadline()]
        asked.set()
        await release.wait()
        return {"seen": seen}

    builder = StateGraph(Seen)
    builder.add_node("long", long_node)
    builder.add_edge(START, "long")
    long_run = asyncio.create_task(
        builder.compile().ainvoke({}, {"configurable": {"deadline_seconds": 600}})
    )
    await asked.wait()

    graph = asking_graph()
    finished = []
    for _ in range(3):  # runs that end well before their own (long) budget
        control = TrackedControl()
        await graph.ainvoke({}, {"configurable": {"deadline_seconds": 300}}, control=control)
        finished.append(weakref.ref(control))
        del control
    expired = []
    for _ in range(3):  # runs whose short budget passes (they end anyway)
        control = TrackedControl()
        await graph.ainvoke({}, {"configurable": {"deadline_seconds": 0.05}}, control=control)
        expired.append(weakref.ref(control))
        del control
    await asyncio.sleep(0.1)
    gc.collect()  # LangGraph's own reference cycles, not the budget table
    # The next budget anchored sweeps the table; the long run's entry does not hold it up.
    await graph.ainvoke({}, {"configurable": {"deadline_seconds": 300}})
    gc.collect()
    assert [ref() for ref in finished + expired] == [None] * 6
    release.set()
    await long_run


async def test_a_node_after_the_deadline_sees_it_passed_not_a_fresh_budget() -> None:
    async def slow(state: State) -> str:
        await asyncio.Event().wait()
        return "never"

    left: list[float | None] = []
    builder = StateGraph(State)
    builder.add_node(GatherByDeadline({"slow": slow}))  # returns partial work at the deadline
    builder.add_node("summarise", lambda state: left.append(remaining()) or {})
    builder.add_edge(START, "GatherByDeadline")
    builder.add_edge("GatherByDeadline", "summarise")
    out = await builder.compile().ainvoke({}, {"configurable": {"deadline_seconds": 0.2}})
    assert out["gathered"]["cancelled"] == ["slow"]
    assert left == [0.0]  # the run's budget is spent, though its deadline has passed
