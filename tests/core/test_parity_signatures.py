"""Parity of signatures: ``from __future__ import annotations`` and decorated ``execute``.

Under PEP 563 every annotation is a string. LangGraph matches a function's ``config`` by its
annotation text, so ``config: RunnableConfig | None`` silently turns config injection off for a
function node (with a UserWarning). A class node must get it right or refuse at definition.
"""

from __future__ import annotations

import functools
import operator
import warnings
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from act_operator_lib import AsyncBaseNode, BaseNode
from tests.core.parity import Nodes, arun_pair, run_pair


class State(TypedDict, total=False):
    log: Annotated[list[Any], operator.add]


class Ctx(TypedDict):
    user: str


def _one_node(nodes: Nodes, fn: Any, written: type[Any] | None = None) -> Any:
    builder = StateGraph(State, context_schema=Ctx)
    builder.add_node(nodes(fn, written))
    builder.add_edge(START, fn.__name__)
    builder.add_edge(fn.__name__, END)
    return builder.compile()


CFG: RunnableConfig = {"configurable": {"thread_id": "pep563"}}


def test_string_annotations_inject_config_and_optional_runtime() -> None:
    def both(
        state: State, config: RunnableConfig, runtime: Runtime[Ctx] | None = None
    ) -> dict[str, Any]:
        assert runtime is not None
        return {"log": [config["configurable"]["thread_id"], runtime.context["user"]]}

    class Both(BaseNode):
        def execute(
            self, state: State, config: RunnableConfig, runtime: Runtime[Ctx] | None = None
        ) -> dict[str, Any]:
            assert runtime is not None
            return {"log": [config["configurable"]["thread_id"], runtime.context["user"]]}

    for written in (None, Both):
        result = run_pair(
            lambda nodes, w=written: _one_node(nodes, both, w).invoke(
                {"log": []}, CFG, context={"user": "ada"}
            )
        )
        assert result == {"log": ["pep563", "ada"]}


async def test_string_annotations_in_an_async_node() -> None:
    async def both(
        state: State, *, runtime: Runtime[Ctx] | None, config: RunnableConfig
    ) -> dict[str, Any]:
        assert runtime is not None
        return {"log": [config["configurable"]["thread_id"], runtime.context["user"]]}

    async def scenario(nodes: Nodes) -> Any:
        return await _one_node(nodes, both).ainvoke({"log": []}, CFG, context={"user": "bo"})

    assert await arun_pair(scenario) == {"log": ["pep563", "bo"]}


def test_optional_config_under_string_annotations() -> None:
    def maybe(state: State, config: RunnableConfig | None = None) -> dict[str, Any]:
        return {"log": [None if config is None else config["configurable"]["thread_id"]]}

    # LangGraph 1.2: the function node gets no config, and says so with a UserWarning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        function_result = _one_node(Nodes("function"), maybe).invoke({"log": []}, CFG)
    assert function_result == {"log": [None]}
    assert any("'config' parameter should be typed" in str(w.message) for w in caught)

    # A class node must do better: receive the config, or refuse when the class is defined.
    refused: TypeError | None = None
    try:

        class Maybe(BaseNode):
            def execute(self, state: State, config: RunnableConfig | None = None) -> dict[str, Any]:
                return {"log": [None if config is None else config["configurable"]["thread_id"]]}

    except TypeError as error:
        refused = error
    if refused is not None:
        assert "config" in str(refused)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fallback either
        class_result = _one_node(Nodes("class"), maybe, Maybe).invoke({"log": []}, CFG)
    assert class_result == {"log": ["pep563"]}
    assert Maybe(name="alone")({"log": []}) == {"log": [None]}


def test_command_routes_drawn_from_string_annotations() -> None:
    def route(state: State) -> Command[Literal["yes", "no"]]:
        return Command(goto="yes")

    def yes(state: State) -> dict[str, Any]:
        return {"log": ["yes"]}

    def no(state: State) -> dict[str, Any]:
        return {"log": ["no"]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        for fn in (route, yes, no):
            builder.add_node(nodes(fn))
        builder.add_edge(START, "route")
        graph = builder.compile()
        edges = sorted((e.source, e.target, e.conditional) for e in graph.get_graph().edges)
        return graph.invoke({"log": []}), edges

    result, edges = run_pair(scenario)
    assert result == {"log": ["yes"]}
    assert ("route", "no", True) in edges
    assert ("route", "yes", True) in edges


def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that keeps the signature through functools.wraps."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def atraced(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return wrapper


def test_wrapped_execute_keeps_injection() -> None:
    @traced
    def decorated(state: State, config: RunnableConfig, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"log": [config["metadata"]["langgraph_node"], runtime.context["user"]]}

    class Decorated(BaseNode):
        @traced
        def execute(
            self, state: State, config: RunnableConfig, runtime: Runtime[Ctx]
        ) -> dict[str, Any]:
            return {"log": [config["metadata"]["langgraph_node"], runtime.context["user"]]}

    for written in (None, Decorated):
        result = run_pair(
            lambda nodes, w=written: _one_node(nodes, decorated, w).invoke(
                {"log": []}, context={"user": "cy"}
            )
        )
        assert result == {"log": ["decorated", "cy"]}


async def test_wrapped_async_execute_keeps_injection() -> None:
    @atraced
    async def decorated(state: State, *, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"log": [runtime.context["user"]]}

    class Decorated(AsyncBaseNode):
        @atraced
        async def execute(self, state: State, *, runtime: Runtime[Ctx]) -> dict[str, Any]:
            return {"log": [runtime.context["user"]]}

    async def scenario(nodes: Nodes) -> Any:
        graph = _one_node(nodes, decorated, Decorated)
        return await graph.ainvoke({"log": []}, context={"user": "di"})

    assert await arun_pair(scenario) == {"log": ["di"]}
