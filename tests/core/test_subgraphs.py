"""A graph invoked inside execute is LangGraph's subgraph, as it is inside a function node.

LangGraph finds such graphs by reading the node function's code when the graph is compiled
(captured values, globals, attribute chains, nested defs, one ``__wrapped__``). A class node
shows it ``execute`` the same way, and also the attributes ``execute`` reaches through
``self``, which hold for a class what a closure holds for a function.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from act_operator_lib import AsyncBaseNode, BaseNode


class State(TypedDict, total=False):
    log: Annotated[list[str], operator.add]


def _leaf(tag: str) -> Any:
    """A compiled graph named ``tag`` that logs ``tag``."""
    builder = StateGraph(State)
    builder.add_node(tag, lambda state: {"log": [tag]})
    builder.add_edge(START, tag)
    builder.add_edge(tag, END)
    graph = builder.compile()
    graph.name = tag
    return graph


def _detect(node: Any) -> str | None:
    """The name of the subgraph LangGraph detects for ``node``, or None."""
    builder = StateGraph(State)
    builder.add_node("n", node)
    builder.add_edge(START, "n")
    builder.add_edge("n", END)
    subgraphs = builder.compile().nodes["n"].subgraphs
    return getattr(subgraphs[0], "name", "?") if subgraphs else None


class _Box:
    def __init__(self, payload: Any) -> None:
        self.payload = payload


MODULE_GRAPH = _leaf("module_global")
CHAIN = _Box(_Box(_leaf("attr_chain")))


class ModuleGlobal(BaseNode):
    def execute(self, state: State) -> Any:
        return MODULE_GRAPH.invoke(state)


class AttributeChain(BaseNode):
    def execute(self, state: State) -> Any:
        return CHAIN.payload.payload.invoke(state)


class AsyncModuleGlobal(AsyncBaseNode):
    async def execute(self, state: State) -> Any:
        return await MODULE_GRAPH.ainvoke(state)


def closure_capture() -> BaseNode:
    sub = _leaf("closure")

    class Captures(BaseNode):
        def execute(self, state: State) -> Any:
            return sub.invoke(state)

    return Captures()


def nested_def_captured_attribute() -> BaseNode:
    holder = _Box(_leaf("nested_captured"))

    class Nested(BaseNode):
        def execute(self, state: State) -> Any:
            def inner() -> Any:
                return holder.payload.invoke(state)

            return inner()

    return Nested()


class Holds(BaseNode):
    """The usual shape of a class node: the graph it calls is an attribute."""

    def __init__(self, sub: Any) -> None:
        super().__init__()
        self.sub = sub

    def execute(self, state: State) -> Any:
        return self.sub.invoke(state)


class HoldsDeep(AsyncBaseNode):
    def __init__(self, sub: Any) -> None:
        super().__init__()
        self.box = _Box(_Box(sub))

    async def execute(self, state: State) -> Any:
        async def inner() -> Any:
            return await self.box.payload.payload.ainvoke(state)

        return await inner()


class HoldsUnreachable(BaseNode):
    def __init__(self, sub: Any) -> None:
        super().__init__()
        self.sub = sub

    def execute(self, state: State) -> Any:
        if False:
            self.sub.invoke(state)
        return {"log": []}


class HoldsBesideState(BaseNode):
    """``state.sub`` is read from the state at run time, never from the node."""

    def __init__(self, sub: Any) -> None:
        super().__init__()
        self.sub = sub

    def execute(self, state: Any) -> Any:
        return state.sub.invoke({})


def logged(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, state: Any) -> Any:
        return method(self, state)

    return wrapper


class Decorated(BaseNode):
    @logged
    def execute(self, state: State) -> Any:
        return MODULE_GRAPH.invoke(state)


class DecoratedHolds(BaseNode):
    def __init__(self, sub: Any) -> None:
        super().__init__()
        self.sub = sub

    @logged
    def execute(self, state: State) -> Any:
        return self.sub.invoke(state)


def wrapper_set_by_hand() -> BaseNode:
    """``__wrapped__`` set by hand to a function of the state alone, read as LangGraph reads it."""
    sub = _leaf("via_wrapped")

    def inner(state: State) -> Any:
        return sub.invoke(state)

    def execute(self: Any, state: State) -> Any:
        return inner(state)

    execute.__wrapped__ = inner  # type: ignore[attr-defined]
    execute.__signature__ = inspect.signature(lambda self, state: None)  # type: ignore[attr-defined]
    return type("ByHand", (BaseNode,), {"execute": execute})()  # type: ignore[no-any-return]


class NoGraph(BaseNode):
    def execute(self, state: State) -> Any:
        return {"log": [str(len("abc"))]}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (ModuleGlobal, "module_global"),
        (AttributeChain, "attr_chain"),
        (AsyncModuleGlobal, "module_global"),
        (closure_capture, "closure"),
        (nested_def_captured_attribute, "nested_captured"),
        (lambda: Holds(_leaf("self_attr")), "self_attr"),
        (lambda: HoldsDeep(_leaf("self_chain_nested")), "self_chain_nested"),
        (Decorated, "module_global"),
        (lambda: DecoratedHolds(_leaf("decorated_self")), "decorated_self"),
        (wrapper_set_by_hand, "via_wrapped"),
        (NoGraph, None),
        (lambda: HoldsUnreachable(_leaf("unreachable")), None),
        (lambda: HoldsBesideState(_leaf("beside")), None),
    ],
    ids=[
        "module_global",
        "attribute_chain",
        "async_node",
        "closure_capture",
        "nested_def",
        "self_attribute",
        "self_chain_in_nested_async_def",
        "functools_wraps",
        "functools_wraps_self",
        "wrapped_by_hand",
        "no_subgraph",
        "unreachable_self_chain",
        "state_attribute",
    ],
)
def test_subgraph_detection(make: Callable[[], Any], expected: str | None) -> None:
    assert _detect(make()) == expected


def test_detection_follows_the_instance_not_the_class() -> None:
    assert _detect(Holds(_leaf("first"))) == "first"
    assert _detect(Holds(_leaf("second"))) == "second"


def test_what_detection_reads_leaves_the_class_and_the_node_as_they_were() -> None:
    node = Holds(_leaf("kept"))
    # The class still describes its constructor; the node, what LangGraph injects.
    assert list(inspect.signature(Holds).parameters) == ["sub"]
    assert list(inspect.signature(node).parameters) == ["state"]
    # The code LangGraph reads is never run, and is harmless if it is; the view calls the node.
    assert node.__wrapped__.__func__() is None
    assert node.__wrapped__({"log": []}) == {"log": ["kept"]}


# -- what detection gives a user: state, subgraph listing, editing ----------------------------


def ask(state: State) -> dict[str, Any]:
    answer = interrupt("approve?")
    return {"log": [f"answer={answer}"]}


SUB = StateGraph(State).add_node("ask", ask).add_edge(START, "ask").compile()


def call_sub(state: State) -> Any:
    return SUB.invoke(state)


class CallSub(BaseNode):
    def execute(self, state: State) -> Any:
        return SUB.invoke(state)


class CallHeldSub(AsyncBaseNode):
    def __init__(self, sub: Any) -> None:
        super().__init__()
        self.sub = sub

    async def execute(self, state: State) -> Any:
        return await self.sub.ainvoke(state)


def _parent(node: Any) -> Any:
    builder = StateGraph(State)
    builder.add_node("call_sub", node)
    builder.add_edge(START, "call_sub")
    return builder.compile(checkpointer=InMemorySaver())


def _observe(node: Any) -> dict[str, Any]:
    graph = _parent(node)
    cfg: RunnableConfig = {"configurable": {"thread_id": "1"}}
    graph.invoke({"log": ["start"]}, cfg)
    (task,) = graph.get_state(cfg, subgraphs=True).tasks
    sub_state = task.state
    listed = [(name, sub is SUB) for name, sub in graph.get_subgraphs()]
    # Edit the paused subgraph's state from the parent, then resume.
    graph.update_state(sub_state.config, {"log": ["edited"]})
    edited = graph.get_state(cfg, subgraphs=True).tasks[0].state.values
    final = graph.invoke(Command(resume="yes"), cfg)
    return {
        "sub_values": sub_state.values,
        "sub_next": sub_state.next,
        "sub_ns": sub_state.config["configurable"]["checkpoint_ns"].split(":")[0],
        "listed": listed,
        "edited": edited,
        "final": final,
    }


@pytest.mark.parametrize("node", [CallSub(), call_sub], ids=["class", "function"])
def test_subgraph_state_listing_and_editing_after_an_interrupt(node: Any) -> None:
    assert _observe(node) == {
        "sub_values": {"log": ["start"]},
        "sub_next": ("ask",),
        "sub_ns": "call_sub",
        "listed": [("call_sub", True)],
        "edited": {"log": ["start", "edited"]},
        "final": {"log": ["start", "start", "edited", "answer=yes"]},
    }


async def test_subgraph_held_by_an_async_node_is_seen_by_aget_state() -> None:
    graph = _parent(CallHeldSub(SUB))
    cfg: RunnableConfig = {"configurable": {"thread_id": "2"}}
    await graph.ainvoke({"log": ["a"]}, cfg)
    (task,) = (await graph.aget_state(cfg, subgraphs=True)).tasks
    assert task.state.values == {"log": ["a"]}
    assert task.state.next == ("ask",)
    assert [name async for name, _ in graph.aget_subgraphs()] == ["call_sub"]
