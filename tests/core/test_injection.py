"""Every parameter LangGraph injects into a function node, a class node's execute may declare.

This module keeps ``from __future__ import annotations``: every annotation below is a string,
the case in which LangGraph itself matches only a few spellings (``RunnableConfig | None`` is
not one of them in LangGraph 1.2), so a class node resolves them when the class is defined.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Annotated, Any, Optional, TypedDict, TypeVar

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.errors import NodeError
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, StreamWriter

from act_operator_lib import AsyncBaseNode, BaseNode


class State(TypedDict, total=False):
    n: int
    log: Annotated[list[Any], operator.add]


class Ctx(TypedDict):
    user: str


def _one(node: Any, **compile: Any) -> Any:
    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node("node", node)
    builder.add_edge(START, "node")
    builder.add_edge("node", END)
    return builder.compile(**compile)


# -- error handlers ---------------------------------------------------------------------------


class Explode(BaseNode):
    def execute(self, state: State) -> dict[str, Any]:
        raise ValueError(f"bad n={state['n']}")


class Recover(BaseNode):
    """A class error handler: LangGraph hands it the failure as ``error: NodeError``."""

    def execute(self, state: State, config: RunnableConfig, error: NodeError) -> dict[str, Any]:
        node = config["metadata"]["langgraph_node"]
        return {"log": [f"{node} caught {error.node}: {type(error.error).__name__}: {error.error}"]}


class RecoverAndRoute(AsyncBaseNode):
    async def execute(self, state: State, *, error: NodeError) -> Command[Any]:
        return Command(update={"log": [f"rerouted after {error.node}"]}, goto="fallback")


def recover(state: State, config: RunnableConfig, error: NodeError) -> dict[str, Any]:
    node = config["metadata"]["langgraph_node"]
    return {"log": [f"{node} caught {error.node}: {type(error.error).__name__}: {error.error}"]}


@pytest.mark.parametrize("handler", [Recover(), recover], ids=["class", "function"])
def test_class_error_handler_on_add_node(handler: Any) -> None:
    builder = StateGraph(State)
    builder.add_node("explode", Explode(), error_handler=handler)
    builder.add_edge(START, "explode")
    assert builder.compile().invoke({"n": 3}) == {
        "n": 3,
        "log": ["__error_handler__explode caught explode: ValueError: bad n=3"],
    }


async def test_class_error_handler_from_set_node_defaults_routes_with_a_command() -> None:
    builder = StateGraph(State).set_node_defaults(error_handler=RecoverAndRoute())
    builder.add_node("explode", Explode())
    builder.add_node("fallback", lambda state: {"log": ["fallback ran"]})
    builder.add_edge(START, "explode")
    result = await builder.compile().ainvoke({"n": 1})
    assert result == {"n": 1, "log": ["rerouted after explode", "fallback ran"]}


def test_error_outside_a_handler_is_none_as_for_a_function() -> None:
    class Plain(BaseNode):
        def execute(self, state: State, error: NodeError) -> dict[str, Any]:
            return {"log": [error]}

    assert _one(Plain()).invoke({"n": 0}, context={"user": "ada"}) == {"n": 0, "log": [None]}


# -- store, writer, previous: the older forms ------------------------------------------------


class OldForms(BaseNode):
    def execute(
        self, state: State, writer: StreamWriter, store: BaseStore, previous: Any
    ) -> dict[str, Any]:
        writer({"progress": state["n"]})
        store.put(("seen",), "n", {"n": state["n"]})
        item = store.get(("seen",), "n")
        return {"log": [item.value if item else None, previous]}


def old_forms(
    state: State, writer: StreamWriter, store: BaseStore, previous: Any
) -> dict[str, Any]:
    writer({"progress": state["n"]})
    store.put(("seen",), "n", {"n": state["n"]})
    item = store.get(("seen",), "n")
    return {"log": [item.value if item else None, previous]}


@pytest.mark.parametrize("node", [OldForms(), old_forms], ids=["class", "function"])
def test_writer_store_and_previous(node: Any) -> None:
    graph = _one(node, store=InMemoryStore())
    chunks = list(graph.stream({"n": 5}, stream_mode=["custom", "updates"]))
    assert chunks == [
        ("custom", {"progress": 5}),
        ("updates", {"node": {"log": [{"n": 5}, None]}}),
    ]


class OptionalStore(AsyncBaseNode):
    async def execute(self, state: State, store: Optional[BaseStore]) -> dict[str, Any]:  # noqa: UP045
        return {"log": [store]}


class RequiredStore(AsyncBaseNode):
    async def execute(self, state: State, store: BaseStore) -> dict[str, Any]:
        return {"log": [store]}


async def required_store(state: State, store: BaseStore) -> dict[str, Any]:
    return {"log": [store]}


@pytest.mark.parametrize(
    "node",
    [OptionalStore(), RequiredStore(), required_store],
    ids=["optional", "required", "function"],
)
async def test_store_without_a_store_in_the_graph_is_none(node: Any) -> None:
    assert await _one(node).ainvoke({"n": 0}) == {"n": 0, "log": [None]}


# -- PEP 563 annotations ----------------------------------------------------------------------


class Optionals(AsyncBaseNode):
    async def execute(
        self,
        state: State,
        config: RunnableConfig | None,
        runtime: Runtime[Ctx] | None,
        store: BaseStore | None,
    ) -> dict[str, Any]:
        assert config is not None
        assert runtime is not None
        return {"log": [config["configurable"]["thread_id"], runtime.context["user"], store]}


async def test_future_annotations_with_none_unions_are_injected() -> None:
    result = await _one(Optionals()).ainvoke(
        {"n": 0}, {"configurable": {"thread_id": "t9"}}, context={"user": "ada"}
    )
    assert result == {"n": 0, "log": ["t9", "ada", None]}


# -- an execute behind a signature-keeping decorator ------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def traced(calls: list[str]) -> Callable[[F], F]:
    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(method.__name__)
            return method(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


CALLS: list[str] = []


class Decorated(BaseNode):
    @traced(CALLS)
    def execute(self, state: State, config: RunnableConfig, runtime: Runtime[Ctx]) -> State:
        return {"log": [config["configurable"]["thread_id"], runtime.context["user"]]}


def test_execute_behind_functools_wraps_is_injected_and_keeps_its_hints() -> None:
    CALLS.clear()
    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node(Decorated())
    builder.add_edge(START, "Decorated")
    result = builder.compile().invoke(
        {"n": 0}, {"configurable": {"thread_id": "t1"}}, context={"user": "bo"}
    )
    assert result == {"n": 0, "log": ["t1", "bo"]}
    assert CALLS == ["execute"]
