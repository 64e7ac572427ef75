"""Parity: interrupts and resume, every stream mode, checkpoints, history and time travel."""

import functools
import operator
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, Interrupt, interrupt

from act_operator_lib import AsyncBaseNode, BaseNode
from tests.core.parity import Nodes, arun_pair, chain, run_pair


class Log(TypedDict):
    log: Annotated[list[Any], operator.add]


class State(Log, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


THREAD: RunnableConfig = {"configurable": {"thread_id": "parity"}}


def _chain(nodes: Nodes, *fns: Any, **compile: Any) -> Any:
    return chain(nodes, *fns, state=Log, **compile)


def first(state: Log) -> dict[str, Any]:
    return {"log": ["first"]}


def ask(state: Log) -> dict[str, Any]:
    answer = interrupt({"question": "name?", "seen": len(state["log"])})
    return {"log": [f"answer:{answer}"]}


class Ask(BaseNode):
    def execute(self, state: Log) -> dict[str, Any]:
        answer = interrupt({"question": "name?", "seen": len(state["log"])})
        return {"log": [f"answer:{answer}"]}


def last(state: Log) -> dict[str, Any]:
    return {"log": ["last"]}


# -- interrupts --------------------------------------------------------------------------


def test_interrupt_and_resume() -> None:
    def scenario(nodes: Nodes, written: type[Any] | None = None) -> Any:
        builder = StateGraph(Log)
        builder.add_node(nodes(first))
        builder.add_node("ask", nodes(ask, written))
        builder.add_node(nodes(last))
        builder.add_edge(START, "first")
        builder.add_edge("first", "ask")
        builder.add_edge("ask", "last")
        graph = builder.compile(checkpointer=InMemorySaver())
        paused = graph.invoke({"log": []}, THREAD)
        snapshot = graph.get_state(THREAD)
        resumed = graph.invoke(Command(resume="ada"), THREAD)
        return paused, snapshot.next, snapshot.tasks[0].interrupts, resumed

    for written in (None, Ask):
        paused, pending, interrupts, resumed = run_pair(
            functools.partial(scenario, written=written)
        )
        assert paused["log"] == ["first"]
        assert [i.value for i in paused["__interrupt__"]] == [{"question": "name?", "seen": 1}]
        assert pending == ("ask",)
        assert interrupts == tuple(paused["__interrupt__"])
        assert resumed == {"log": ["first", "answer:ada", "last"]}


def test_two_interrupts_in_one_node() -> None:
    def twice(state: State) -> dict[str, Any]:
        first_name = interrupt("first name?")
        last_name = interrupt("last name?")
        return {"log": [f"{first_name} {last_name}"]}

    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, twice, checkpointer=InMemorySaver())
        outputs = [graph.invoke({"log": []}, THREAD)]
        outputs.append(graph.invoke(Command(resume="Ada"), THREAD))
        outputs.append(graph.invoke(Command(resume="Lovelace"), THREAD))
        return outputs

    outputs = run_pair(scenario)
    assert [i.value for i in outputs[0]["__interrupt__"]] == ["first name?"]
    assert [i.value for i in outputs[1]["__interrupt__"]] == ["last name?"]
    assert outputs[2] == {"log": ["Ada Lovelace"]}


async def test_parallel_interrupts_resumed_by_id() -> None:
    async def left(state: State) -> dict[str, Any]:
        return {"log": [f"left:{interrupt('left?')}"]}

    async def right(state: State) -> dict[str, Any]:
        return {"log": [f"right:{interrupt('right?')}"]}

    async def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(Log)
        builder.add_node(nodes(left))
        builder.add_node(nodes(right))
        builder.add_edge(START, "left")
        builder.add_edge(START, "right")
        graph = builder.compile(checkpointer=InMemorySaver())
        paused = await graph.ainvoke({"log": []}, THREAD)
        pending: list[Interrupt] = paused["__interrupt__"]
        answers = {i.id: f"<{i.value}>" for i in pending}
        resumed = await graph.ainvoke(Command(resume=answers), THREAD)
        return sorted(i.value for i in pending), resumed

    assert await arun_pair(scenario) == (
        ["left?", "right?"],
        {"log": ["left:<left?>", "right:<right?>"]},
    )


def test_interrupt_before_and_after_then_update_state() -> None:
    def mid(state: Log) -> dict[str, Any]:
        return {"log": ["mid"]}

    def scenario(nodes: Nodes) -> Any:
        graph = _chain(
            nodes,
            first,
            mid,
            last,
            checkpointer=InMemorySaver(),
            interrupt_after=["first"],
            interrupt_before=["last"],
        )
        stops = [graph.invoke({"log": []}, THREAD), graph.get_state(THREAD).next]
        stops += [graph.invoke(None, THREAD), graph.get_state(THREAD).next]
        graph.update_state(THREAD, {"log": ["edited"]}, as_node="mid")
        stops += [graph.get_state(THREAD).next, graph.invoke(None, THREAD)]
        return stops

    assert run_pair(scenario) == [
        {"log": ["first"]},
        ("mid",),
        {"log": ["first", "mid"]},
        ("last",),
        ("last",),
        {"log": ["first", "mid", "edited", "last"]},
    ]


# -- stream modes -----------------------------------------------------------------------


def talk(state: State, config: RunnableConfig) -> dict[str, Any]:
    model = GenericFakeChatModel(messages=iter([AIMessage(content="hello there", id="ai-1")]))
    get_stream_writer()({"status": "talking"})
    return {"messages": [model.invoke(state["messages"], config)], "log": ["talk"]}


class Talk(BaseNode):
    def execute(self, state: State, config: RunnableConfig) -> dict[str, Any]:
        model = GenericFakeChatModel(messages=iter([AIMessage(content="hello there", id="ai-1")]))
        get_stream_writer()({"status": "talking"})
        return {"messages": [model.invoke(state["messages"], config)], "log": ["talk"]}


def _talk_graph(nodes: Nodes, written: type[Any] | None = None, **compile: Any) -> Any:
    builder = StateGraph(State)
    builder.add_node(nodes(first))
    builder.add_node("talk", nodes(talk, written))
    builder.add_edge(START, "first")
    builder.add_edge("first", "talk")
    return builder.compile(**compile)


INPUT = {"log": [], "messages": [("user", "hi")]}


def _stream(mode: str, written: type[Any] | None = None) -> list[Any]:
    def scenario(nodes: Nodes) -> Any:
        graph = _talk_graph(nodes, written, checkpointer=InMemorySaver())
        return list(graph.stream(INPUT, THREAD, stream_mode=mode))

    return run_pair(scenario)


def test_stream_values() -> None:
    chunks = _stream("values")
    assert [c["log"] for c in chunks] == [[], ["first"], ["first", "talk"]]
    assert chunks[-1]["messages"][-1].content == "hello there"


def test_stream_updates() -> None:
    chunks = _stream("updates")
    assert chunks[0] == {"first": {"log": ["first"]}}
    assert list(chunks[1]) == ["talk"]
    assert chunks[1]["talk"]["messages"][0].content == "hello there"


def test_stream_custom() -> None:
    assert _stream("custom") == [{"status": "talking"}]


def test_stream_messages() -> None:
    for written in (None, Talk):
        chunks = _stream("messages", written)
        assert "".join(token.content for token, _ in chunks) == "hello there"
        assert {meta["langgraph_node"] for _, meta in chunks} == {"talk"}
        assert {meta["langgraph_step"] for _, meta in chunks} == {2}


def test_stream_debug() -> None:
    chunks = _stream("debug")
    kinds = [(c["type"], c["payload"].get("name")) for c in chunks]
    assert ("task", "talk") in kinds
    assert ("task_result", "talk") in kinds
    assert ("checkpoint", None) in kinds


def test_stream_checkpoints() -> None:
    chunks = _stream("checkpoints")
    assert [c["metadata"]["step"] for c in chunks] == [-1, 0, 1, 2]
    assert [c["next"] for c in chunks] == [["__start__"], ["first"], ["talk"], []]


def test_stream_tasks() -> None:
    chunks = _stream("tasks")
    started = [c["name"] for c in chunks if "input" in c]
    finished = [(c["name"], c["error"]) for c in chunks if "result" in c]
    assert started == ["first", "talk"]
    assert finished == [("first", None), ("talk", None)]


async def test_astream_every_mode_at_once() -> None:
    async def slow_first(state: State) -> dict[str, Any]:
        get_stream_writer()("custom from async")
        return {"log": ["slow_first"]}

    class SlowFirst(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            get_stream_writer()("custom from async")
            return {"log": ["slow_first"]}

    modes = ["values", "updates", "custom", "messages", "debug", "checkpoints", "tasks"]

    async def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node("slow_first", nodes(slow_first, SlowFirst))
        builder.add_node("talk", nodes(talk))
        builder.add_edge(START, "slow_first")
        builder.add_edge("slow_first", "talk")
        graph = builder.compile(checkpointer=InMemorySaver())
        return [c async for c in graph.astream(INPUT, THREAD, stream_mode=modes)]

    chunks = await arun_pair(scenario)
    assert {mode for mode, _ in chunks} == set(modes)
    assert ("custom", "custom from async") in chunks
    assert ("updates", {"slow_first": {"log": ["slow_first"]}}) in chunks


def test_stream_from_an_interrupted_run() -> None:
    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, first, ask, checkpointer=InMemorySaver())
        paused = list(graph.stream({"log": []}, THREAD, stream_mode=["updates", "tasks"]))
        resumed = list(graph.stream(Command(resume="x"), THREAD, stream_mode="updates"))
        return paused, resumed

    paused, resumed = run_pair(scenario)
    interrupt_updates = [c for mode, c in paused if mode == "updates" and "__interrupt__" in c]
    assert [i.value for i in interrupt_updates[0]["__interrupt__"]] == [
        {"question": "name?", "seen": 1}
    ]
    assert resumed == [{"ask": {"log": ["answer:x"]}}]


# -- checkpoints and history ------------------------------------------------------------


def test_state_and_history() -> None:
    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, first, last, checkpointer=InMemorySaver())
        graph.invoke({"log": []}, THREAD)
        history = list(graph.get_state_history(THREAD))
        return graph.get_state(THREAD), history

    snapshot, history = run_pair(scenario)
    assert snapshot.values == {"log": ["first", "last"]}
    assert snapshot.next == ()
    assert [s.metadata["step"] for s in history] == [2, 1, 0, -1]
    assert [s.next for s in history] == [(), ("last",), ("first",), ("__start__",)]
    assert [s.metadata["source"] for s in history] == ["loop", "loop", "loop", "input"]


def test_replay_and_fork_from_a_past_checkpoint() -> None:
    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, first, last, checkpointer=InMemorySaver())
        graph.invoke({"log": []}, THREAD)
        before_last = next(s for s in graph.get_state_history(THREAD) if s.next == ("last",))
        replayed = graph.invoke(None, before_last.config)
        forked_config = graph.update_state(before_last.config, {"log": ["fork"]})
        forked = graph.invoke(None, forked_config)
        return replayed, forked, len(list(graph.get_state_history(THREAD)))

    replayed, forked, count = run_pair(scenario)
    assert replayed == {"log": ["first", "last"]}
    assert forked == {"log": ["first", "fork", "last"]}
    assert count == 8


def test_durability_modes() -> None:
    def scenario(nodes: Nodes) -> Any:
        counts = []
        for durability in ("exit", "async", "sync"):
            saver = InMemorySaver()
            graph = _chain(nodes, first, last, checkpointer=saver)
            graph.invoke({"log": []}, THREAD, durability=durability)
            counts.append((durability, len(list(saver.list(THREAD)))))
        return counts

    assert run_pair(scenario) == [("exit", 1), ("async", 4), ("sync", 4)]


def test_snapshots_are_identical_after_normalising_ids() -> None:
    # run_pair compares whole StateSnapshots: parent links and task ids match shape for shape.
    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, first, ask, checkpointer=InMemorySaver())
        graph.invoke({"log": []}, THREAD)
        return list(graph.get_state_history(THREAD))

    history = run_pair(scenario)
    assert [s.parent_config for s in history[:-1]] == [s.config for s in history[1:]]
    assert history[0].tasks[0].name == "ask"
    assert history[0].tasks[0].interrupts[0].value == {"question": "name?", "seen": 1}
