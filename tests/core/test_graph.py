"""Class nodes inside real compiled graphs behave exactly like function nodes."""

from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, Send
from pydantic import BaseModel

from act_operator_lib import AsyncBaseNode, BaseNode, get_tags, get_thread_id


class State(TypedDict, total=False):
    n: int
    seen: Annotated[list[str], operator.add]
    messages: Annotated[list[AnyMessage], add_messages]


class Ctx(TypedDict):
    user: str


class Private(TypedDict):
    secret: str


@dataclasses.dataclass
class DataState:
    n: int = 0


class ModelState(BaseModel):
    n: int = 0


# -- injection -------------------------------------------------------------------------


class Seen(BaseNode):
    """Records what LangGraph injected, for every declared parameter."""

    def execute(self, state: State) -> dict[str, Any]:
        return {"seen": [f"{self.name}:state"]}


def _describe(name: str, config: Any = "absent", runtime: Any = "absent") -> list[str]:
    out = [f"{name}:state"]
    if config != "absent":
        assert isinstance(config, dict)
        out.append(f"{name}:config={get_thread_id(config)}")
    if runtime != "absent":
        assert isinstance(runtime, Runtime)
        out.append(f"{name}:runtime={runtime.context['user']}")
    return out


class SyncConfig(BaseNode):
    def execute(self, state: State, config: RunnableConfig) -> dict[str, Any]:
        return {"seen": _describe(self.name, config=config)}


class SyncRuntime(BaseNode):
    def execute(self, state: State, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"seen": _describe(self.name, runtime=runtime)}


class SyncBothReversed(BaseNode):
    def execute(
        self, state: State, runtime: Runtime[Ctx], config: RunnableConfig
    ) -> dict[str, Any]:
        return {"seen": _describe(self.name, config, runtime)}


class AsyncKeywordOnly(AsyncBaseNode):
    async def execute(
        self, state: State, *, config: RunnableConfig | None, runtime: Runtime[Ctx]
    ) -> dict[str, Any]:
        return {"seen": _describe(self.name, config, runtime)}


class AsyncUnannotated(AsyncBaseNode):
    async def execute(self, state, config, runtime):  # type: ignore[no-untyped-def]
        return {"seen": _describe(self.name, config, runtime)}


INJECTION_NODES = [
    Seen,
    SyncConfig,
    SyncRuntime,
    SyncBothReversed,
    AsyncKeywordOnly,
    AsyncUnannotated,
]


def _chain(*nodes: BaseNode | AsyncBaseNode, **compile_kwargs: Any) -> Any:
    builder = StateGraph(State, context_schema=Ctx)
    previous = START
    for node in nodes:
        builder.add_node(node)
        builder.add_edge(previous, node.name)
        previous = node.name
    builder.add_edge(previous, END)
    return builder.compile(**compile_kwargs)


EXPECTED_SEEN = [
    "Seen:state",
    "SyncConfig:state",
    "SyncConfig:config=t1",
    "SyncRuntime:state",
    "SyncRuntime:runtime=ada",
    "SyncBothReversed:state",
    "SyncBothReversed:config=t1",
    "SyncBothReversed:runtime=ada",
    "AsyncKeywordOnly:state",
    "AsyncKeywordOnly:config=t1",
    "AsyncKeywordOnly:runtime=ada",
    "AsyncUnannotated:state",
    "AsyncUnannotated:config=t1",
    "AsyncUnannotated:runtime=ada",
]


async def test_each_declared_parameter_receives_what_langgraph_injects() -> None:
    graph = _chain(*(cls() for cls in INJECTION_NODES), checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    result = await graph.ainvoke({"n": 0}, config, context={"user": "ada"})
    assert result["seen"] == EXPECTED_SEEN


def test_sync_nodes_under_invoke_and_ainvoke_get_the_same_injection() -> None:
    sync_nodes = [cls() for cls in INJECTION_NODES[:4]]
    graph = _chain(*sync_nodes, checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    result = graph.invoke({"n": 0}, config, context={"user": "ada"})
    assert result["seen"] == EXPECTED_SEEN[:8]


async def test_sync_nodes_run_under_ainvoke() -> None:
    graph = _chain(*(cls() for cls in INJECTION_NODES[:4]), checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    result = await graph.ainvoke({"n": 0}, config, context={"user": "ada"})
    assert result["seen"] == EXPECTED_SEEN[:8]


def test_async_node_under_sync_invoke_tells_the_user_to_use_ainvoke() -> None:
    graph = _chain(AsyncKeywordOnly())
    with pytest.raises(TypeError, match=r"ainvoke, astream"):
        graph.invoke({"n": 0}, context={"user": "ada"})


# -- returns -----------------------------------------------------------------------------


class Route(BaseNode):
    def execute(self, state: State) -> Command[Literal["Even", "Odd"]]:
        return Command(goto="Even" if state["n"] % 2 == 0 else "Odd", update={"n": state["n"] + 10})


class Even(BaseNode):
    def execute(self, state: State) -> dict[str, Any]:
        return {"seen": ["even"]}


class Odd(AsyncBaseNode):
    async def execute(self, state: State) -> None:
        return None


def _routing_graph() -> Any:
    builder = StateGraph(State)
    for node in (Route(), Even(), Odd()):
        builder.add_node(node)
    builder.add_edge(START, "Route")
    return builder.compile()


async def test_command_routes_and_none_returns() -> None:
    graph = _routing_graph()
    assert await graph.ainvoke({"n": 2}) == {"n": 12, "seen": ["even"], "messages": []}
    assert await graph.ainvoke({"n": 3}) == {"n": 13, "seen": [], "messages": []}


def test_command_return_hint_draws_the_routes() -> None:
    edges = {(e.source, e.target) for e in _routing_graph().get_graph().edges}
    assert {("Route", "Even"), ("Route", "Odd"), ("__start__", "Route")} <= edges


class Fan(BaseNode):
    def execute(self, state: State) -> list[Command[Any]]:
        return [Command(update={"seen": ["a"]}), Command(goto=[Send("Leaf", {"n": 1})])]


class Leaf(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, Any]:
        return {"seen": [f"leaf{state['n']}"]}


async def test_list_of_commands_with_send() -> None:
    builder = StateGraph(State)
    builder.add_node(Fan())
    builder.add_node(Leaf())
    builder.add_edge(START, "Fan")
    result = await builder.compile().ainvoke({"n": 0})
    assert result["seen"] == ["a", "leaf1"]


class DataNode(BaseNode):
    def execute(self, state: DataState) -> DataState:
        return DataState(n=state.n + 1)


class ModelNode(AsyncBaseNode):
    async def execute(self, state: ModelState) -> ModelState:
        return ModelState(n=state.n * 3)


def test_dataclass_state_instance_return() -> None:
    builder = StateGraph(DataState)
    builder.add_node(DataNode())
    builder.add_edge(START, "DataNode")
    assert builder.compile().invoke(DataState(n=1)) == {"n": 2}


async def test_pydantic_state_instance_return() -> None:
    builder = StateGraph(ModelState)
    builder.add_node(ModelNode())
    builder.add_edge(START, "ModelNode")
    assert await builder.compile().ainvoke(ModelState(n=2)) == {"n": 6}


class Append(BaseNode):
    def execute(self, state: list[int]) -> list[int]:
        return [len(state)]


def test_single_value_state_takes_its_own_type() -> None:
    builder = StateGraph(Annotated[list[int], operator.add])  # type: ignore[arg-type]
    builder.add_node(Append())
    builder.add_edge(START, "Append")
    assert builder.compile().invoke([7, 8]) == [7, 8, 2]


# -- type hints ------------------------------------------------------------------------------


class Writer(BaseNode):
    def execute(self, state: State) -> Private:
        return {"secret": "s3"}


class Reader(BaseNode):
    def execute(self, state: Private) -> dict[str, Any]:
        return {"seen": [f"read {state['secret']}"]}


def test_state_hint_becomes_the_node_input_schema() -> None:
    builder = StateGraph(State)
    builder.add_node(Writer())
    builder.add_node(Reader())
    builder.add_edge(START, "Writer")
    builder.add_edge("Writer", "Reader")
    assert builder.nodes["Reader"].input_schema is Private
    assert builder.compile().invoke({"n": 0}) == {"n": 0, "seen": ["read s3"], "messages": []}


# -- every way of running a graph ------------------------------------------------------------


class Count(BaseNode):
    def execute(self, state: State, config: RunnableConfig) -> dict[str, Any]:
        return {"n": state.get("n", 0) + 1, "seen": get_tags(config)}


class Talk(AsyncBaseNode):
    async def execute(
        self, state: State, config: RunnableConfig, runtime: Runtime[Ctx]
    ) -> dict[str, Any]:
        runtime.stream_writer({"progress": state["n"]})
        model = GenericFakeChatModel(
            messages=iter([AIMessage(content=f"hi {runtime.context['user']}")])
        )
        reply = await model.ainvoke("hello", config)
        return {"messages": [reply]}


def count(state: State, config: RunnableConfig) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1, "seen": get_tags(config)}


async def talk(state: State, config: RunnableConfig, runtime: Runtime[Ctx]) -> dict[str, Any]:
    runtime.stream_writer({"progress": state["n"]})
    model = GenericFakeChatModel(
        messages=iter([AIMessage(content=f"hi {runtime.context['user']}")])
    )
    reply = await model.ainvoke("hello", config)
    return {"messages": [reply]}


def _talk_graph(first: Any, second: Any) -> Any:
    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node("Count", first)
    builder.add_node("Talk", second)
    builder.add_edge(START, "Count")
    builder.add_edge("Count", "Talk")
    return builder.compile(checkpointer=InMemorySaver())


def _normalise(mode: str, chunk: Any) -> Any:
    """Drop what differs between two runs by nature (ids, timestamps)."""
    if mode == "messages":
        message, metadata = chunk
        return message.content, metadata["langgraph_node"]
    if mode in ("checkpoints", "debug", "tasks"):
        payload = chunk.get("payload", chunk)
        return mode, chunk.get("type"), payload.get("name"), sorted(payload)
    if mode == "values":
        return {k: [m.content for m in v] if k == "messages" else v for k, v in chunk.items()}
    if mode == "updates":
        return {
            node: {k: [m.content for m in v] if k == "messages" else v for k, v in update.items()}
            for node, update in chunk.items()
        }
    return chunk


STREAM_MODES = ["values", "updates", "custom", "messages", "checkpoints", "tasks", "debug"]


async def _stream(graph: Any, mode: str) -> list[Any]:
    config: RunnableConfig = {"configurable": {"thread_id": "x"}, "tags": ["t"]}
    return [
        _normalise(mode, chunk)
        async for chunk in graph.astream(
            {"n": 1}, config, context={"user": "ada"}, stream_mode=mode
        )
    ]


@pytest.mark.parametrize("mode", STREAM_MODES)
async def test_every_stream_mode_matches_function_nodes(mode: str) -> None:
    by_class = await _stream(_talk_graph(Count(), Talk()), mode)
    by_function = await _stream(_talk_graph(count, talk), mode)
    assert by_class == by_function
    assert by_class  # each mode produced output


def test_sync_stream_matches_function_nodes() -> None:
    def run(first: Any) -> list[Any]:
        builder = StateGraph(State)
        builder.add_node("Count", first)
        builder.add_edge(START, "Count")
        config: RunnableConfig = {"tags": ["t"]}
        return list(builder.compile().stream({"n": 1}, config, stream_mode=["values", "updates"]))

    assert (
        run(Count())
        == run(count)
        == [
            ("values", {"n": 1, "seen": [], "messages": []}),
            ("updates", {"Count": {"n": 2, "seen": ["t"]}}),
            ("values", {"n": 2, "seen": ["t"], "messages": []}),
        ]
    )


async def test_checkpointer_keeps_state_across_runs_per_thread() -> None:
    graph = _talk_graph(Count(), Talk())
    one: RunnableConfig = {"configurable": {"thread_id": "one"}}
    two: RunnableConfig = {"configurable": {"thread_id": "two"}}
    await graph.ainvoke({"n": 1}, one, context={"user": "ada"})
    await graph.ainvoke({"n": 5}, two, context={"user": "bob"})
    result = await graph.ainvoke({}, one, context={"user": "ada"})
    assert result["n"] == 3
    assert [m.content for m in result["messages"]] == ["hi ada", "hi ada"]
    snapshot = await graph.aget_state(two)
    assert snapshot.values["n"] == 6
    assert [m.content for m in snapshot.values["messages"]] == ["hi bob"]


class Remember(AsyncBaseNode):
    async def execute(self, state: State, runtime: Runtime[Ctx]) -> dict[str, Any]:
        assert runtime.store is not None
        namespace = ("users", runtime.context["user"])
        item = await runtime.store.aget(namespace, "visits")
        visits = (item.value["count"] if item else 0) + 1
        await runtime.store.aput(namespace, "visits", {"count": visits})
        return {"n": visits}


async def test_runtime_store() -> None:
    store = InMemoryStore()
    graph = _chain(Remember(), store=store)
    for _ in range(3):
        result = await graph.ainvoke({"n": 0}, context={"user": "ada"})
    assert result["n"] == 3
    item = await store.aget(("users", "ada"), "visits")
    assert item is not None
    assert item.value == {"count": 3}


class Add(BaseNode):
    def __init__(self, amount: int, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.amount = amount

    def execute(self, state: State) -> dict[str, Any]:
        return {"n": state["n"] + self.amount}


def test_many_instances_of_one_class_in_one_graph() -> None:
    builder = StateGraph(State)
    builder.add_node(Add(1, name="add_one"))
    builder.add_node("add_ten", Add(10))
    builder.add_node(Add(100))
    builder.add_edge(START, "add_one")
    builder.add_edge("add_one", "add_ten")
    builder.add_edge("add_ten", "Add")
    assert set(builder.nodes) == {"add_one", "add_ten", "Add"}
    assert builder.compile().invoke({"n": 0})["n"] == 111


# -- alone, and the helpers -------------------------------------------------------------------


class Received(BaseNode):
    def execute(
        self, state: State, config: RunnableConfig, runtime: Runtime[Ctx]
    ) -> dict[str, Any]:
        return {"config": config, "runtime": runtime}


class AsyncReceived(AsyncBaseNode):
    async def execute(
        self, state: State, *, runtime: Runtime[Ctx], config: RunnableConfig
    ) -> dict[str, Any]:
        return {"config": config, "runtime": runtime}


async def test_nodes_are_callable_alone_with_no_config_or_runtime() -> None:
    assert Add(2)({"n": 1}) == {"n": 3}
    assert Received()({"n": 0}) == {"config": None, "runtime": None}
    assert Received()({"n": 0}, {"tags": []}) == {"config": {"tags": []}, "runtime": None}
    assert await AsyncReceived()({"n": 0}) == {"config": None, "runtime": None}
    assert await Odd()({"n": 1}) is None
    assert await Leaf()({"n": 4}) == {"seen": ["leaf4"]}


def test_config_helpers_handle_missing_config() -> None:
    assert get_thread_id(None) is None
    assert get_tags(None) == []
    assert BaseNode.get_thread_id({"configurable": {"thread_id": 7}}) == "7"
    assert BaseNode.get_tags({"tags": ["a", "b"]}) == ["a", "b"]


class Chatty(BaseNode):
    def execute(self, state: State) -> None:
        self.log("working", n=state["n"])


def test_log_writes_only_when_verbose(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="act_operator_lib.nodes")
    Chatty()({"n": 1})
    assert caplog.records == []
    Chatty(verbose=True)({"n": 2})
    assert [r.getMessage() for r in caplog.records] == ["[Chatty] working n=2"]
    assert caplog.records[0].node == "Chatty"  # type: ignore[attr-defined]


def test_nothing_is_inspected_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import dis
    import inspect
    import typing

    graph = _chain(SyncConfig(), SyncRuntime(), SyncBothReversed(), checkpointer=InMemorySaver())
    node = Received()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspected during a call")

    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"n": 0}, config, context={"user": "ada"})  # LangGraph caches its own on first run
    # From then on, calls never inspect signatures or hints.
    monkeypatch.setattr(inspect, "signature", refuse)
    monkeypatch.setattr(typing, "get_type_hints", refuse)
    monkeypatch.setattr(dis, "get_instructions", refuse)  # read for subgraphs at compile only
    config = {"configurable": {"thread_id": "t2"}}
    seen = graph.invoke({"n": 0}, config, context={"user": "ada"})["seen"]
    assert seen == [line.replace("=t1", "=t2") for line in EXPECTED_SEEN[1:8]]
    assert node({"n": 0}) == {"config": None, "runtime": None}
