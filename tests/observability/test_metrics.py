"""Per-node metrics: off by default, counted by graph node name when enabled."""

from __future__ import annotations

import asyncio
import inspect
import operator
import typing
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, RetryPolicy, Send, interrupt
from prometheus_client import REGISTRY, generate_latest

from act_operator_lib import AsyncBaseNode, BaseNode, metrics
from act_operator_lib._internal import node_classes


class State(TypedDict, total=False):
    n: int
    items: list[int]
    seen: Annotated[list[str], operator.add]


class Ctx(TypedDict):
    user: str


pytestmark = pytest.mark.usefixtures("clean_metrics")


class Increment(BaseNode):
    def execute(self, state: State) -> dict[str, Any]:
        return {"n": state.get("n", 0) + 1}


class Pause(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"seen": [self.name]}


class FlakyOnce(BaseNode):
    """Fails its first call with ValueError, then succeeds."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def execute(self, state: State) -> dict[str, Any]:
        if not self.failed:
            self.failed = True
            raise ValueError("first call fails")
        return {"seen": ["flaky"]}


def test_off_by_default_and_nothing_is_recorded() -> None:
    assert metrics.enabled() is False
    graph = StateGraph(State).add_node(Increment()).add_edge(START, "Increment").compile()
    assert graph.invoke({"n": 1})["n"] == 2
    # The class runs base_node's own generated __call__, untouched.
    assert Increment.__dict__["__call__"] is node_classes.generated_call(Increment)
    metrics.record("retry_attempts", name="x")
    assert metrics.snapshot() == metrics.Snapshot(nodes={}, series=())


async def test_calls_errors_and_latency_by_graph_node_name() -> None:
    builder = StateGraph(State)
    builder.add_node("pause", Pause())
    builder.add_node(
        "flaky",
        FlakyOnce(),
        retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.001, retry_on=ValueError),
    )
    builder.add_edge(START, "pause")
    builder.add_edge("pause", "flaky")
    graph = builder.compile()

    with metrics.collecting():
        result = await graph.ainvoke({"n": 0})
        await graph.ainvoke({"n": 0})
    assert result["seen"] == ["Pause", "flaky"]

    nodes = metrics.snapshot().nodes
    assert set(nodes) == {"pause", "flaky"}  # the graph's names, not the class names
    assert nodes["pause"].calls == 2
    assert nodes["pause"].errors == {}
    assert nodes["pause"].in_flight == 0
    assert nodes["pause"].latency.count == 2
    assert nodes["pause"].latency.p50 is not None
    assert nodes["pause"].latency.p50 >= 0.01  # it slept 10 ms
    # The first call of the first run failed and was retried; the second run's succeeded.
    assert nodes["flaky"].calls == 3
    assert nodes["flaky"].errors == {"ValueError": 1}
    assert sum(nodes["flaky"].latency.buckets) == 3


def test_node_called_directly_is_counted_under_its_own_name() -> None:
    with metrics.collecting():
        assert Increment(name="inc")({"n": 4}) == {"n": 5}
    assert metrics.snapshot().nodes["inc"].calls == 1


def test_exceptions_propagate_unchanged() -> None:
    error = LookupError("the very same object")

    class Broken(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            raise error

    graph = StateGraph(State).add_node(Broken()).add_edge(START, "Broken").compile()
    with metrics.collecting(), pytest.raises(LookupError) as raised:
        graph.invoke({"n": 0})
    assert raised.value is error
    assert metrics.snapshot().nodes["Broken"].errors == {"LookupError": 1}


class Route(AsyncBaseNode):
    """Takes every injectable parameter and routes with a typed Command."""

    async def execute(
        self, state: State, config: RunnableConfig, runtime: Runtime[Ctx]
    ) -> Command[Literal["left", "right"]]:
        tags = ",".join(config.get("tags", []))
        return Command(goto="left", update={"seen": [f"{runtime.context['user']}:{tags}"]})


class Left(BaseNode):
    def execute(self, state: State, *, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"seen": [f"left:{runtime.context['user']}"]}


def _routing_graph() -> Any:
    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node(Route())
    builder.add_node("left", Left())
    builder.add_node("right", Left())
    builder.add_edge(START, "Route")
    return builder.compile()


async def test_instrumented_nodes_get_the_same_injection_and_routing() -> None:
    plain_signature = inspect.signature(Route.__call__)
    plain_hints = typing.get_type_hints(Route.__call__)
    off_graph = _routing_graph()
    off = await off_graph.ainvoke({}, {"tags": ["t"]}, context={"user": "ada"})

    with metrics.collecting():
        assert inspect.signature(Route.__call__) == plain_signature
        assert typing.get_type_hints(Route.__call__) == plain_hints
        on_graph = _routing_graph()
        on = await on_graph.ainvoke({}, {"tags": ["t"]}, context={"user": "ada"})
        on_edges = {(e.source, e.target) for e in on_graph.get_graph().edges}

    assert on == off == {"seen": ["ada:t", "left:ada"]}
    assert on_edges == {(e.source, e.target) for e in off_graph.get_graph().edges}
    assert ("Route", "right") in on_edges  # drawn from the Command[Literal[...]] hint
    assert metrics.snapshot().nodes["Route"].calls == 1
    assert metrics.snapshot().nodes["left"].calls == 1


def test_enable_and_disable_swap_the_call_for_existing_and_new_classes() -> None:
    plain = Increment.__dict__["__call__"]
    metrics.enable()
    try:
        assert Increment.__dict__["__call__"] is not plain

        class DefinedWhileEnabled(BaseNode):
            def execute(self, state: State) -> dict[str, Any]:
                return {"n": 1}

        generated = node_classes.generated_call(DefinedWhileEnabled)
        assert generated is not None
        assert DefinedWhileEnabled.__dict__["__call__"] is not generated
        instrumented = Increment.__dict__["__call__"]
        metrics.enable()  # idempotent: not wrapped twice
        assert Increment.__dict__["__call__"] is instrumented
        assert node_classes.generated_call(Increment) is plain
    finally:
        metrics.disable()
    assert Increment.__dict__["__call__"] is plain
    assert DefinedWhileEnabled.__dict__["__call__"] is generated


def test_collecting_leaves_an_enabled_state_enabled() -> None:
    metrics.enable()
    with metrics.collecting():
        pass
    assert metrics.enabled() is True
    metrics.disable()
    with metrics.collecting():
        assert metrics.enabled() is True
    assert metrics.enabled() is False


class Gate(AsyncBaseNode):
    """Waits until the test opens the gate; tells it when it has started."""

    def __init__(self, started: asyncio.Semaphore, gate: asyncio.Event) -> None:
        super().__init__()
        self.started = started
        self.gate = gate

    async def execute(self, state: State) -> dict[str, Any]:
        self.started.release()
        await self.gate.wait()
        return {"seen": ["gate"]}


def _fan_out(state: State) -> list[Send]:
    return [Send("Gate", {"n": item}) for item in state["items"]]


def _gated_graph() -> tuple[Any, asyncio.Semaphore, asyncio.Event]:
    """A graph running one ``Gate`` per item at once, its started semaphore and its gate."""
    started, gate = asyncio.Semaphore(0), asyncio.Event()
    builder = StateGraph(State)
    builder.add_node(Gate(started, gate))
    builder.add_conditional_edges(START, _fan_out, ["Gate"])
    return builder.compile(), started, gate


async def test_in_flight_counts_calls_that_are_running() -> None:
    graph, started, gate = _gated_graph()

    with metrics.collecting():
        run = asyncio.create_task(graph.ainvoke({"items": [1, 2, 3]}))
        for _ in range(3):
            await started.acquire()
        assert metrics.snapshot().nodes["Gate"].in_flight == 3
        gate.set()
        assert (await run)["seen"] == ["gate"] * 3
    node = metrics.snapshot().nodes["Gate"]
    assert (node.calls, node.in_flight, node.errors) == (3, 0, {})


async def test_cancelled_run_leaves_nothing_in_flight_and_no_tasks() -> None:
    graph, started, _ = _gated_graph()  # the gate stays shut
    tasks_before = asyncio.all_tasks()

    with metrics.collecting():
        run = asyncio.create_task(graph.ainvoke({"items": [1, 2]}))
        for _ in range(2):
            await started.acquire()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == tasks_before
    node = metrics.snapshot().nodes["Gate"]
    assert (node.calls, node.in_flight) == (2, 0)
    assert node.errors == {"CancelledError": 2}


async def test_sync_nodes_in_executor_threads_are_counted_exactly() -> None:
    class Square(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return {"seen": [str(state["n"] ** 2)]}

    def fan_out(state: State) -> list[Send]:
        return [Send("Square", {"n": item}) for item in state["items"]]

    builder = StateGraph(State)
    builder.add_node(Square())
    builder.add_conditional_edges(START, fan_out, ["Square"])
    graph = builder.compile()
    with metrics.collecting():
        result = await graph.ainvoke({"items": list(range(60))})
    assert sorted(map(int, result["seen"])) == [n * n for n in range(60)]
    node = metrics.snapshot().nodes["Square"]
    assert (node.calls, node.in_flight, node.latency.count) == (60, 0, 60)


def test_interrupts_are_not_errors() -> None:
    class Approve(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return {"seen": [interrupt("approve?")]}

    graph = (
        StateGraph(State)
        .add_node(Approve())
        .add_edge(START, "Approve")
        .add_edge("Approve", END)
        .compile(checkpointer=InMemorySaver())
    )
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    with metrics.collecting():
        paused = graph.invoke({"n": 0}, config)
        assert "__interrupt__" in paused
        assert graph.invoke(Command(resume="yes"), config)["seen"] == ["yes"]
    node = metrics.snapshot().nodes["Approve"]
    assert (node.calls, node.errors) == (2, {})


class Fetch(AsyncBaseNode):
    """Stands in for a primitive that reports its own metrics."""

    async def execute(self, state: State) -> dict[str, Any]:
        metrics.record("retry_attempts", name=self.name)
        metrics.record("rate_limiter_wait_seconds", 0.001 * state["n"], name=self.name)
        metrics.record("pool_size", 1, name="pg")
        metrics.record("circuit_state_changes", name=self.name, state="open")
        return {"seen": [self.name]}


async def test_primitives_record_counters_gauges_and_observations() -> None:
    graph = StateGraph(State).add_node(Fetch()).add_edge(START, "Fetch").compile()
    with metrics.collecting():
        for n in range(1, 5):
            await graph.ainvoke({"n": n})
        metrics.record("pool_size", -3, name="pg")

    data = metrics.snapshot()
    assert data.value("retry_attempts", name="Fetch") == 4
    assert data.value("circuit_state_changes", state="open") == 4
    assert data.value("pool_size", name="pg") == 1  # +1 four times, then -3
    waits = [s for s in data.series if s.metric == "rate_limiter_wait_seconds"]
    assert len(waits) == 1
    assert waits[0].kind == "observation"
    assert data.count("rate_limiter_wait_seconds") == 4
    assert waits[0].latency is not None
    assert waits[0].latency.p50 == pytest.approx(0.002)
    assert waits[0].latency.p99 == pytest.approx(0.004)
    assert {s.metric: s.kind for s in data.series}["pool_size"] == "gauge"


async def test_prometheus_registry_exports_nodes_and_primitives_not_globally() -> None:
    graph = StateGraph(State).add_node(Fetch()).add_edge(START, "Fetch").compile()
    with metrics.collecting():
        await graph.ainvoke({"n": 2})
        await graph.ainvoke({"n": 2})

    text = generate_latest(metrics.prometheus_registry()).decode()
    assert 'act_node_calls_total{node="Fetch"} 2.0' in text
    assert 'act_node_latency_seconds_count{node="Fetch"} 2.0' in text
    assert 'act_node_in_flight{node="Fetch"} 0.0' in text
    assert 'act_retry_attempts_total{name="Fetch"} 2.0' in text
    assert 'act_rate_limiter_wait_seconds_count{name="Fetch"} 2.0' in text
    assert 'act_pool_size{name="pg"} 2.0' in text
    assert "act_node_calls" not in generate_latest(REGISTRY).decode()


def test_format_table_lists_every_node_and_metric() -> None:
    graph = StateGraph(State).add_node("inc", Increment()).add_edge(START, "inc").compile()
    with metrics.collecting():
        graph.invoke({"n": 0})
        metrics.record("cache_hits", 3, name="memo")
    table = metrics.format_table(metrics.snapshot())
    lines = table.splitlines()
    assert lines[0].split() == [
        "node",
        "calls",
        "errors",
        "in_flight",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    ]
    assert lines[1].split()[:4] == ["inc", "1", "0", "0"]
    assert any(line.split()[:4] == ["cache_hits", "name=memo", "3", "1"] for line in lines)


class Outer(AsyncBaseNode):
    """Calls another node directly, as a recipe wrapping a node would."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Pause(name="inner")

    async def execute(self, state: State) -> dict[str, Any]:
        return await self.inner(state)


async def test_a_node_called_by_another_is_counted_under_its_own_name() -> None:
    subgraph = StateGraph(State).add_node("leaf", Increment()).add_edge(START, "leaf").compile()
    builder = StateGraph(State)
    builder.add_node("wrapper", Outer())
    builder.add_node("sub", subgraph)
    builder.add_edge(START, "wrapper")
    builder.add_edge("wrapper", "sub")
    with metrics.collecting():
        result = await builder.compile().ainvoke({"n": 0})
    assert result["n"] == 1
    calls = {name: node.calls for name, node in metrics.snapshot().nodes.items()}
    # Not twice under "wrapper"; a subgraph's nodes keep their own graph names.
    assert calls == {"wrapper": 1, "inner": 1, "leaf": 1}
