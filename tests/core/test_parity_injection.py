"""Parity: what LangGraph injects into a node (config, runtime, store, writer, error).

Each test runs one scenario twice through ``run_pair`` (function nodes, then class nodes) and
then asserts what LangGraph's own suite expects of a function node.
"""

import dataclasses
import operator
from typing import Annotated, Any, Optional, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config, get_store, get_stream_writer
from langgraph.errors import NodeError
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import StreamWriter

from act_operator_lib import AsyncBaseNode, BaseNode
from tests.core.parity import Nodes, arun_pair, run_pair


class State(TypedDict, total=False):
    log: Annotated[list[Any], operator.add]


class Ctx(TypedDict):
    user: str


@dataclasses.dataclass
class DataCtx:
    user: str
    limit: int = 3


def _one_node(nodes: Nodes, fn: Any, written: type[Any] | None = None, **compile: Any) -> Any:
    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node(nodes(fn, written))
    builder.add_edge(START, fn.__name__)
    builder.add_edge(fn.__name__, END)
    return builder.compile(**compile)


def test_config_is_the_runs_config() -> None:
    def read_config(state: State, config: RunnableConfig) -> dict[str, Any]:
        return {
            "log": [
                config["configurable"]["thread_id"],
                config["configurable"]["user_key"],
                sorted(config["tags"]),
                config["metadata"]["langgraph_node"],
                config["metadata"]["langgraph_step"],
                config is not None and get_config()["metadata"]["langgraph_node"],
            ]
        }

    def scenario(nodes: Nodes) -> Any:
        graph = _one_node(nodes, read_config, checkpointer=InMemorySaver())
        cfg: RunnableConfig = {
            "configurable": {"thread_id": "t1", "user_key": "k"},
            "tags": ["b", "a"],
        }
        return graph.invoke({"log": []}, cfg, context={"user": "ada"})

    assert run_pair(scenario) == {"log": ["t1", "k", ["a", "b"], "read_config", 1, "read_config"]}


def test_config_written_out_by_hand() -> None:
    def read_config(state: State, config: RunnableConfig) -> dict[str, Any]:
        return {"log": [config["configurable"]["thread_id"], config["metadata"]["langgraph_node"]]}

    class ReadConfig(BaseNode):
        def execute(self, state: State, config: RunnableConfig) -> dict[str, Any]:
            return {
                "log": [config["configurable"]["thread_id"], config["metadata"]["langgraph_node"]]
            }

    def scenario(nodes: Nodes) -> Any:
        graph = _one_node(nodes, read_config, ReadConfig, checkpointer=InMemorySaver())
        return graph.invoke({"log": []}, {"configurable": {"thread_id": "t2"}})

    assert run_pair(scenario) == {"log": ["t2", "read_config"]}


def test_optional_and_unannotated_config() -> None:
    def optional_config(state: State, config: Optional[RunnableConfig]) -> dict[str, Any]:  # noqa: UP045
        return {"log": [config is not None and config["configurable"]["thread_id"]]}

    def union_config(state: State, config: RunnableConfig | None = None) -> dict[str, Any]:
        return {"log": [config is not None and config["configurable"]["thread_id"]]}

    def bare_config(state, config):  # type: ignore[no-untyped-def]
        return {"log": [config["configurable"]["thread_id"]]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        for fn in (optional_config, union_config, bare_config):
            builder.add_node(nodes(fn))
        builder.add_edge(START, "optional_config")
        builder.add_edge("optional_config", "union_config")
        builder.add_edge("union_config", "bare_config")
        graph = builder.compile(checkpointer=InMemorySaver())
        return graph.invoke({"log": []}, {"configurable": {"thread_id": "t3"}})

    assert run_pair(scenario) == {"log": ["t3", "t3", "t3"]}


def test_runtime_context_store_and_writer() -> None:
    def use_runtime(state: State, runtime: Runtime[Ctx]) -> dict[str, Any]:
        runtime.stream_writer({"hello": runtime.context["user"]})
        assert runtime.store is not None
        runtime.store.put(("users",), "ada", {"seen": True})
        item = runtime.store.get(("users",), "ada")
        return {"log": [runtime.context["user"], item.value if item else None]}

    def scenario(nodes: Nodes) -> Any:
        graph = _one_node(nodes, use_runtime, store=InMemoryStore())
        return list(
            graph.stream({"log": []}, context={"user": "ada"}, stream_mode=["custom", "updates"])
        )

    assert run_pair(scenario) == [
        ("custom", {"hello": "ada"}),
        ("updates", {"use_runtime": {"log": ["ada", {"seen": True}]}}),
    ]


def test_runtime_with_a_dataclass_context() -> None:
    def with_data_ctx(state: State, runtime: Runtime[DataCtx]) -> dict[str, Any]:
        return {"log": [runtime.context.user, runtime.context.limit]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State, context_schema=DataCtx)
        builder.add_node(nodes(with_data_ctx))
        builder.add_edge(START, "with_data_ctx")
        return builder.compile().invoke({"log": []}, context=DataCtx(user="bo"))

    assert run_pair(scenario) == {"log": ["bo", 3]}


def test_runtime_execution_info() -> None:
    def info(state: State, runtime: Runtime[Ctx], config: RunnableConfig) -> dict[str, Any]:
        execution = runtime.execution_info
        assert execution is not None
        return {
            "log": [
                execution.thread_id,
                execution.node_attempt,
                isinstance(execution.node_first_attempt_time, float),
                execution.checkpoint_ns == config["configurable"]["checkpoint_ns"],
                execution.checkpoint_ns.startswith("info:"),
                execution.task_id == execution.checkpoint_ns.split(":")[1],
                execution.checkpoint_id,
            ]
        }

    def scenario(nodes: Nodes) -> Any:
        graph = _one_node(nodes, info, checkpointer=InMemorySaver())
        cfg: RunnableConfig = {"configurable": {"thread_id": "t4"}}
        result = graph.invoke({"log": []}, cfg, context={"user": "ada"})
        first_checkpoint = [s for s in graph.get_state_history(cfg) if s.metadata["step"] == 0]
        return result, first_checkpoint[0].config["configurable"]["checkpoint_id"]

    result, checkpoint_id = run_pair(scenario)
    assert result["log"][:6] == ["t4", 1, True, True, True, True]
    # The node runs from the checkpoint of the step before it.
    assert result["log"][6] == checkpoint_id


async def test_keyword_only_config_and_runtime_in_any_order() -> None:
    async def reversed_kw(
        state: State, *, runtime: Runtime[Ctx], config: RunnableConfig
    ) -> dict[str, Any]:
        return {"log": [runtime.context["user"], config["metadata"]["langgraph_node"]]}

    class ReversedKw(AsyncBaseNode):
        async def execute(
            self, state: State, *, runtime: Runtime[Ctx], config: RunnableConfig
        ) -> dict[str, Any]:
            return {"log": [runtime.context["user"], config["metadata"]["langgraph_node"]]}

    async def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State, context_schema=Ctx)
        builder.add_node(nodes(reversed_kw))
        builder.add_node("by_hand", nodes(reversed_kw, ReversedKw))
        builder.add_edge(START, "reversed_kw")
        builder.add_edge("reversed_kw", "by_hand")
        return await builder.compile().ainvoke({"log": []}, context={"user": "cy"})

    assert await arun_pair(scenario) == {"log": ["cy", "reversed_kw", "cy", "by_hand"]}


def test_store_parameter() -> None:
    def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
        store.put(("notes",), "k", {"n": len(state["log"])})
        return {"log": [store.get(("notes",), "k").value]}  # type: ignore[union-attr]

    def scenario(nodes: Nodes) -> Any:
        store = InMemoryStore()
        graph = _one_node(nodes, remember, store=store)
        result = graph.invoke({"log": ["x"]}, context={"user": "ada"})
        return result, [item.value for item in store.search(("notes",))]

    assert run_pair(scenario) == ({"log": ["x", {"n": 1}]}, [{"n": 1}])


def test_optional_store_parameter_without_a_store() -> None:
    def maybe_store(state: State, store: Optional[BaseStore]) -> dict[str, Any]:  # noqa: UP045
        return {"log": [store is None, get_store() is None]}

    def scenario(nodes: Nodes) -> Any:
        return _one_node(nodes, maybe_store).invoke({"log": []}, context={"user": "ada"})

    assert run_pair(scenario) == {"log": [True, True]}


def test_writer_parameter() -> None:
    def stream_progress(state: State, writer: StreamWriter) -> dict[str, Any]:
        writer({"progress": 1})
        get_stream_writer()({"progress": 2})
        return {"log": ["done"]}

    class StreamProgress(BaseNode):
        def execute(self, state: State, writer: StreamWriter) -> dict[str, Any]:
            writer({"progress": 1})
            get_stream_writer()({"progress": 2})
            return {"log": ["done"]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(stream_progress))
        builder.add_node("by_hand", nodes(stream_progress, StreamProgress))
        builder.add_edge(START, "stream_progress")
        builder.add_edge("stream_progress", "by_hand")
        graph = builder.compile()
        return list(graph.stream({"log": []}, stream_mode=["custom", "values"]))

    assert run_pair(scenario) == [
        ("values", {"log": []}),
        ("custom", {"progress": 1}),
        ("custom", {"progress": 2}),
        ("values", {"log": ["done"]}),
        ("custom", {"progress": 1}),
        ("custom", {"progress": 2}),
        ("values", {"log": ["done", "done"]}),
    ]


async def test_writer_and_store_with_config() -> None:
    async def all_three(
        state: State, config: RunnableConfig, writer: StreamWriter, store: BaseStore
    ) -> dict[str, Any]:
        writer(config["metadata"]["langgraph_node"])
        await store.aput(("ns",), "a", {"v": 1})
        return {"log": [(await store.aget(("ns",), "a")).value]}  # type: ignore[union-attr]

    async def scenario(nodes: Nodes) -> Any:
        graph = _one_node(nodes, all_three, store=InMemoryStore())
        return [c async for c in graph.astream({"log": []}, stream_mode=["custom", "updates"])]

    assert await arun_pair(scenario) == [
        ("custom", "all_three"),
        ("updates", {"all_three": {"log": [{"v": 1}]}}),
    ]


def test_error_handler_receives_node_error() -> None:
    def explode(state: State) -> dict[str, Any]:
        raise ValueError("boom")

    def recover(state: State, error: NodeError) -> dict[str, Any]:
        return {"log": [error.node, type(error.error).__name__, str(error.error)]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(explode), error_handler=nodes(recover))
        builder.add_edge(START, "explode")
        return builder.compile().invoke({"log": []})

    assert run_pair(scenario) == {"log": ["explode", "ValueError", "boom"]}


async def test_error_handler_written_out_by_hand() -> None:
    async def explode(state: State) -> dict[str, Any]:
        raise KeyError("missing")

    async def recover(state: State, config: RunnableConfig, error: NodeError) -> dict[str, Any]:
        return {"log": [error.node, repr(error.error), config["metadata"]["langgraph_node"]]}

    class Recover(AsyncBaseNode):
        async def execute(
            self, state: State, config: RunnableConfig, error: NodeError
        ) -> dict[str, Any]:
            return {"log": [error.node, repr(error.error), config["metadata"]["langgraph_node"]]}

    async def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(explode), error_handler=nodes(recover, Recover))
        builder.add_edge(START, "explode")
        return await builder.compile().ainvoke({"log": []})

    result = await arun_pair(scenario)
    # The handler runs as its own task, named after the node it handles.
    assert result["log"] == ["explode", "KeyError('missing')", "__error_handler__explode"]


def test_error_parameter_outside_a_handler_is_none() -> None:
    def plain(state: State, error: NodeError) -> dict[str, Any]:
        return {"log": [error]}

    def scenario(nodes: Nodes) -> Any:
        return _one_node(nodes, plain).invoke({"log": []}, context={"user": "ada"})

    assert run_pair(scenario) == {"log": [None]}


async def test_sync_nodes_under_ainvoke() -> None:
    def sync_node(state: State, config: RunnableConfig, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"log": [runtime.context["user"], config["metadata"]["langgraph_node"]]}

    async def scenario(nodes: Nodes) -> Any:
        return await _one_node(nodes, sync_node).ainvoke({"log": []}, context={"user": "di"})

    assert await arun_pair(scenario) == {"log": ["di", "sync_node"]}
