"""LangGraph's control flow (interrupt(), Command.PARENT) passes through every control recipe.

A human-in-the-loop pause inside a retried operation, a guarded call, a fan-out item or a
race alternative must pause the run, and resuming it must finish the work: never retried,
never counted as a failure, never wrapped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.circuit_breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitBreakerNode,
)
from act_operator_lib.cookbook.fanout import FanoutNode, FanoutPolicy
from act_operator_lib.cookbook.race import HedgedNode, HedgePolicy, RaceNode
from act_operator_lib.cookbook.retry import RetryNode, retry_call
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, RetryPolicy, interrupt

from act_operator_lib.control import CONTROL_FLOW, is_control_flow


class State(TypedDict, total=False):
    items: list[Any]
    results: list[Any]
    errors: list[dict[str, Any]]
    result: Any
    path: list[str]


def paused_graph(node: Any) -> tuple[Any, dict[str, Any]]:
    """``node`` alone in a graph with a checkpointer, and a fresh thread to run it on."""
    builder = StateGraph(State)
    name = getattr(node, "name", None) or node.__name__
    builder.add_node(name, node)
    builder.add_edge(START, name)
    builder.add_edge(name, END)
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    return builder.compile(checkpointer=InMemorySaver()), thread


def asked(out: dict[str, Any]) -> list[Any]:
    """The values of the interrupts a paused run surfaced."""
    return [pending.value for pending in out.get("__interrupt__", [])]


class Approval:
    """An operation that asks a human and counts how often it ran."""

    def __init__(self, question: str = "approve?") -> None:
        self.question = question
        self.calls = 0

    async def __call__(self, state: Any = None) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        return f"answer: {interrupt(self.question)}"


def as_update(operation: Any) -> Any:
    """``operation`` as a node function: its value becomes the update ``{"result": value}``."""

    async def node(state: Any) -> dict[str, Any]:
        return {"result": await operation(state)}

    return node


def test_the_rule_is_langgraphs_bubble_up() -> None:
    from langgraph.errors import GraphBubbleUp, GraphInterrupt, ParentCommand

    assert (GraphBubbleUp,) == CONTROL_FLOW
    assert is_control_flow(GraphInterrupt(()))
    assert is_control_flow(ParentCommand(Command(graph=Command.PARENT, goto="x")))
    assert not is_control_flow(ValueError("no"))
    assert not is_control_flow(asyncio.CancelledError())


# 1. retry


async def test_an_interrupt_in_a_retried_operation_pauses_at_once_and_resumes() -> None:
    approval = Approval()
    graph, thread = paused_graph(RetryNode(as_update(approval), RetryPolicy()))  # its defaults
    started = time.monotonic()
    out = await graph.ainvoke({}, thread)
    assert asked(out) == ["approve?"]
    assert approval.calls == 1  # not retried: the default policy would have run it 3 times
    assert time.monotonic() - started < 0.4  # and slept 0.5 s + 1 s before pausing
    out = await graph.ainvoke(Command(resume="yes"), thread)
    assert out["result"] == "answer: yes"
    assert approval.calls == 2  # the resumed run called the operation once more


async def test_a_parent_command_in_a_retried_operation_is_not_retried() -> None:
    # A subgraph invoked inside the operation routes the parent with Command.PARENT.
    inner = StateGraph(State)
    inner.add_node(
        "jump", lambda state: Command(graph=Command.PARENT, goto="done", update={"result": "up"})
    )
    inner.add_edge(START, "jump")
    subgraph = inner.compile()
    calls = 0

    async def ask_subgraph() -> Any:
        nonlocal calls
        calls += 1
        return await subgraph.ainvoke({})

    async def delegate(state: State) -> dict[str, Any]:
        await retry_call(ask_subgraph, RetryPolicy(initial_interval=0.01))
        return {"path": ["fell through"]}

    builder = StateGraph(State)
    builder.add_node("delegate", delegate)
    builder.add_node("done", lambda state: {"path": ["done"]})
    builder.add_edge(START, "delegate")
    out = await builder.compile().ainvoke({})
    assert out == {"result": "up", "path": ["done"]}
    assert calls == 1


# 2. circuit breaker


async def test_pending_approvals_neither_open_the_circuit_nor_block_their_resumes() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, reset_timeout=30))
    approval = Approval()

    async def charge(state: State) -> dict[str, Any]:
        return {"result": await approval()}

    builder = StateGraph(State)
    builder.add_node("charge", CircuitBreakerNode(charge, breaker))
    builder.add_edge(START, "charge")
    graph = builder.compile(checkpointer=InMemorySaver())
    threads = [{"configurable": {"thread_id": uuid.uuid4().hex}} for _ in range(4)]
    for thread in threads:
        assert asked(await graph.ainvoke({}, thread)) == ["approve?"]
    assert breaker.state == "closed"  # four pauses are not four failures
    for number, thread in enumerate(threads):
        out = await graph.ainvoke(Command(resume=f"yes {number}"), thread)
        assert out["result"] == f"answer: yes {number}"
    assert breaker.state == "closed"


async def test_an_interrupted_probe_frees_the_probe_slot() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, reset_timeout=0.05))
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("down")
    await asyncio.sleep(0.06)
    approval = Approval()

    async def probe(state: State) -> dict[str, Any]:
        return {"result": await breaker.call(approval)}

    graph, thread = paused_graph(probe)
    assert asked(await graph.ainvoke({}, thread)) == ["approve?"]
    assert breaker.state == "half_open"  # the pause said nothing about the dependency
    out = await graph.ainvoke(Command(resume="yes"), thread)  # admitted as the next probe
    assert out["result"] == "answer: yes"
    assert breaker.state == "closed"


# 3. fan-out and race


@pytest.mark.parametrize("on_error", ["fail_fast", "collect"])
async def test_an_interrupt_in_a_fan_out_item_pauses_the_run(on_error: Any) -> None:
    cancelled: list[int] = []
    gate = asyncio.Event()

    async def review(n: int) -> Any:
        if n == 2:
            await asyncio.sleep(0.01)  # the others are in flight when it asks
            return f"item 2 {interrupt('review item 2?')}"
        try:
            # Bounded, so a fan-out that does not stop at the pause still ends.
            await (asyncio.wait_for(gate.wait(), 10) if n == 4 else asyncio.sleep(0))
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    graph, thread = paused_graph(FanoutNode(review, FanoutPolicy(limit=5, on_error=on_error)))
    out = await graph.ainvoke({"items": list(range(5))}, thread)
    assert asked(out) == ["review item 2?"]
    assert "results" not in out
    assert cancelled == [4]  # the pause stopped the items still running
    gate.set()
    out = await graph.ainvoke(Command(resume="approved"), thread)
    assert out["results"] == [0, 1, "item 2 approved", 3, 4]
    assert out.get("errors", []) == []


async def test_an_interrupting_alternative_pauses_the_race_and_wins_on_resume() -> None:
    async def down(state: State) -> str:
        raise ConnectionError("down")

    async def slow(state: State) -> str:
        await asyncio.sleep(30)
        return "slow"

    graph, thread = paused_graph(
        RaceNode({"down": down, "human": as_update(Approval("which?")), "slow": slow})
    )
    started = time.monotonic()
    out = await graph.ainvoke({}, thread)
    assert asked(out) == ["which?"]
    assert time.monotonic() - started < 10  # the slow alternative was cancelled
    out = await graph.ainvoke(Command(resume="this one"), thread)
    assert out["result"] == "answer: this one"


async def test_an_interrupting_hedged_attempt_pauses_the_run() -> None:
    approval = Approval()
    hedge = HedgePolicy(delay=0.01, max_attempts=3)
    graph, thread = paused_graph(HedgedNode(as_update(approval), hedge))
    assert asked(await graph.ainvoke({}, thread)) == ["approve?"]
    assert approval.calls == 1  # a pause is not a failure: no backup attempt was started
    out = await graph.ainvoke(Command(resume="go"), thread)
    assert out["result"] == "answer: go"
