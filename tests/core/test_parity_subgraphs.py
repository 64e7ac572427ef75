"""Parity: graphs invoked inside a node are seen as subgraphs, in every shape LangGraph detects.

LangGraph finds a graph a node calls by reading the node function's closure, the globals it
names, attribute chains it loads, nested code objects and ``__wrapped__``. Each shape below is
written once as a function and once as a class by hand (and also run through the generated
class); LangGraph's results for the function are the expected results for the class:
``compiled.nodes[name].subgraphs``, ``get_subgraphs()``, ``get_state(subgraphs=True)`` while the
subgraph is paused on an interrupt, and the resumed result.
"""

import functools
import operator
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, StateSnapshot, interrupt

from act_operator_lib import AsyncBaseNode, BaseNode
from tests.core.parity import Nodes, arun_pair, run_pair


class State(TypedDict):
    log: Annotated[list[Any], operator.add]


THREAD: RunnableConfig = {"configurable": {"thread_id": "parity-subgraphs"}}


def _leaf(tag: str) -> Any:
    """A compiled graph named ``tag`` that pauses for an answer, then logs it."""

    def ask(state: State) -> dict[str, Any]:
        return {"log": [f"{tag}:{interrupt(tag)}"]}

    builder = StateGraph(State)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    compiled = builder.compile()
    compiled.name = tag
    return compiled


class _Box:
    def __init__(self, payload: Any) -> None:
        self.payload = payload


def _last(result: dict[str, Any]) -> dict[str, Any]:
    return {"log": [result["log"][-1]]}


def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that keeps the signature, as most logging/tracing decorators do."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


MODULE_SUB = _leaf("module_global")
CHAIN = _Box(_Box(_leaf("attr_chain")))
HELPER_SUB = _leaf("helper")
WRAPPED_SUB = _leaf("wrapped")
ASYNC_SUB = _leaf("async_node")
IN_A_LIST = [_leaf("in_list")]


def _call_helper(state: State) -> dict[str, Any]:
    return _last(HELPER_SUB.invoke(state))


# Each factory returns (function node, the same node as a class written out by hand).


def module_global() -> tuple[Any, Any]:
    def module_global_node(state: State) -> dict[str, Any]:
        return _last(MODULE_SUB.invoke(state))

    class ModuleGlobal(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return _last(MODULE_SUB.invoke(state))

    return module_global_node, ModuleGlobal


def closure_capture() -> tuple[Any, Any]:
    sub = _leaf("closure")

    def closure_node(state: State) -> dict[str, Any]:
        return _last(sub.invoke(state))

    class Closure(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return _last(sub.invoke(state))

    return closure_node, Closure


def attribute_chain() -> tuple[Any, Any]:
    def attribute_chain_node(state: State) -> dict[str, Any]:
        return _last(CHAIN.payload.payload.invoke(state))

    class AttributeChain(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return _last(CHAIN.payload.payload.invoke(state))

    return attribute_chain_node, AttributeChain


def nested_def() -> tuple[Any, Any]:
    holder = _Box(_leaf("nested_def"))

    def nested_def_node(state: State) -> dict[str, Any]:
        def inner() -> Any:
            return holder.payload.invoke(state)

        return _last(inner())

    class NestedDef(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            def inner() -> Any:
                return holder.payload.invoke(state)

            return _last(inner())

    return nested_def_node, NestedDef


def helper_call() -> tuple[Any, Any]:
    def helper_node(state: State) -> dict[str, Any]:
        return _call_helper(state)

    class Helper(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return _call_helper(state)

    return helper_node, Helper


def wrapped() -> tuple[Any, Any]:
    @traced
    def wrapped_node(state: State) -> dict[str, Any]:
        return _last(WRAPPED_SUB.invoke(state))

    class Wrapped(BaseNode):
        @traced
        def execute(self, state: State) -> dict[str, Any]:
            return _last(WRAPPED_SUB.invoke(state))

    return wrapped_node, Wrapped


def in_a_list() -> tuple[Any, Any]:
    def in_a_list_node(state: State) -> dict[str, Any]:
        return _last(IN_A_LIST[0].invoke(state))

    class InAList(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return _last(IN_A_LIST[0].invoke(state))

    return in_a_list_node, InAList


def _observe(graph: Any, name: str) -> tuple[Any, ...]:
    detected = [getattr(g, "name", None) for g in graph.nodes[name].subgraphs]
    listed = [(n, g.name) for n, g in graph.get_subgraphs()]
    paused = graph.invoke({"log": ["start"]}, THREAD)
    task = graph.get_state(THREAD, subgraphs=True).tasks[0]
    sub = task.state.values if isinstance(task.state, StateSnapshot) else None
    resumed = graph.invoke(Command(resume="ok"), THREAD)
    return detected, listed, [i.value for i in paused["__interrupt__"]], sub, resumed


# (shape, the subgraph's name, whether LangGraph detects it in a function node)
SHAPES = [
    (module_global, "module_global", True),
    (closure_capture, "closure", True),
    (attribute_chain, "attr_chain", True),
    (nested_def, "nested_def", True),
    (wrapped, "wrapped", True),
    # LangGraph does not look inside a helper the node calls, nor into a list: a class node
    # must not see more than a function does either.
    (helper_call, "helper", False),
    (in_a_list, "in_list", False),
]


@pytest.mark.parametrize("written", [False, True], ids=["generated", "by_hand"])
@pytest.mark.parametrize(
    ("shape", "tag", "detectable"), SHAPES, ids=[shape.__name__ for shape, _, _ in SHAPES]
)
def test_subgraph_detection(shape: Any, tag: str, detectable: bool, written: bool) -> None:
    def scenario(nodes: Nodes) -> Any:
        fn, hand = shape()
        builder = StateGraph(State)
        builder.add_node(nodes(fn, hand if written else None))
        builder.add_edge(START, fn.__name__)
        graph = builder.compile(checkpointer=InMemorySaver())
        return fn.__name__, _observe(graph, fn.__name__)

    name, (detected, listed, paused, sub, resumed) = run_pair(scenario)
    assert paused == [tag]
    assert resumed == {"log": ["start", f"{tag}:ok"]}
    if detectable:
        assert detected == [tag]
        assert listed == [(name, tag)]
        assert sub == {"log": ["start"]}
    else:
        assert (detected, listed, sub) == ([], [], None)


@pytest.mark.parametrize("written", [False, True], ids=["generated", "by_hand"])
async def test_subgraph_detection_async_node(written: bool) -> None:
    async def async_node(state: State) -> dict[str, Any]:
        return _last(await ASYNC_SUB.ainvoke(state))

    class AsyncNode(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            return _last(await ASYNC_SUB.ainvoke(state))

    async def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(async_node, AsyncNode if written else None))
        builder.add_edge(START, "async_node")
        graph = builder.compile(checkpointer=InMemorySaver())
        detected = [g.name for g in graph.nodes["async_node"].subgraphs]
        listed = [(n, g.name) async for n, g in graph.aget_subgraphs()]
        await graph.ainvoke({"log": ["start"]}, THREAD)
        task = (await graph.aget_state(THREAD, subgraphs=True)).tasks[0]
        sub = task.state.values if isinstance(task.state, StateSnapshot) else None
        resumed = await graph.ainvoke(Command(resume="ok"), THREAD)
        return detected, listed, sub, resumed

    assert await arun_pair(scenario) == (
        ["async_node"],
        [("async_node", "async_node")],
        {"log": ["start"]},
        {"log": ["start", "async_node:ok"]},
    )


def test_subgraph_state_can_be_edited_from_the_parent() -> None:
    def scenario(nodes: Nodes) -> Any:
        fn, _ = closure_capture()
        builder = StateGraph(State)
        builder.add_node(nodes(fn))
        builder.add_edge(START, fn.__name__)
        graph = builder.compile(checkpointer=InMemorySaver())
        graph.invoke({"log": ["start"]}, THREAD)
        sub_state = graph.get_state(THREAD, subgraphs=True).tasks[0].state
        if not isinstance(sub_state, StateSnapshot):
            return "subgraph not visible"
        graph.update_state(sub_state.config, {"log": ["edited"]})
        edited = graph.get_state(THREAD, subgraphs=True).tasks[0].state
        return edited.values, graph.invoke(Command(resume="ok"), THREAD)

    assert run_pair(scenario) == ({"log": ["start", "edited"]}, {"log": ["start", "closure:ok"]})


def test_stream_with_subgraphs_names_the_calling_node() -> None:
    def scenario(nodes: Nodes) -> Any:
        fn, _ = module_global()
        builder = StateGraph(State)
        builder.add_node(nodes(fn))
        builder.add_edge(START, fn.__name__)
        graph = builder.compile(checkpointer=InMemorySaver())
        first = list(graph.stream({"log": []}, THREAD, stream_mode="updates", subgraphs=True))
        second = list(
            graph.stream(Command(resume="ok"), THREAD, stream_mode="updates", subgraphs=True)
        )
        return [ns for ns, _ in first + second], second[-1][1]

    namespaces, last = run_pair(scenario)
    assert {ns[0].split(":")[0] for ns in namespaces if ns} == {"module_global_node"}
    assert last == {"module_global_node": {"log": ["module_global:ok"]}}


def test_send_into_a_node_that_calls_a_subgraph() -> None:
    sub = StateGraph(State)
    sub.add_node("echo", lambda s: {"log": [f"echo:{len(s['log'])}"]})
    sub.add_edge(START, "echo")
    echo = sub.compile()

    def call_echo(state: State) -> dict[str, Any]:
        return _last(echo.invoke(state))

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(call_echo))
        builder.add_conditional_edges(
            START, lambda s: [Send("call_echo", {"log": ["x"] * n}) for n in (1, 2)]
        )
        graph = builder.compile()
        return graph.invoke({"log": []}), [c.name for c in graph.nodes["call_echo"].subgraphs]

    # A compiled graph is named "LangGraph" unless renamed.
    assert run_pair(scenario) == ({"log": ["echo:1", "echo:2"]}, ["LangGraph"])
