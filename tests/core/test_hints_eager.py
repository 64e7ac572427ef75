"""Hints on execute reach LangGraph when they are evaluated eagerly (no __future__ import)."""

from typing import Any, Literal, TypedDict

from langgraph.graph import START, StateGraph
from langgraph.types import Command

from act_operator_lib import AsyncBaseNode, BaseNode


class State(TypedDict, total=False):
    n: int
    log: list[str]


class Private(TypedDict):
    hidden: int


class Start(BaseNode):
    def execute(self, state: State) -> Command[Literal["Hide", "Show"]]:
        return Command(goto="Hide" if state["n"] > 0 else "Show", update={"log": ["start"]})


class Hide(BaseNode):
    def execute(self, state: State) -> Private:
        return {"hidden": state["n"] * 2}


class Show(AsyncBaseNode):
    async def execute(self, state: Private) -> dict[str, Any]:
        return {"log": [f"hidden={state['hidden']}"]}


def _graph() -> Any:
    builder = StateGraph(State)
    for node in (Start(), Hide(), Show()):
        builder.add_node(node)
    builder.add_edge(START, "Start")
    builder.add_edge("Hide", "Show")
    return builder


async def test_private_input_schema_and_command_routes() -> None:
    builder = _graph()
    assert builder.nodes["Show"].input_schema is Private
    graph = builder.compile()
    edges = {(e.source, e.target) for e in graph.get_graph().edges}
    assert {("Start", "Hide"), ("Start", "Show"), ("Hide", "Show")} <= edges
    assert await graph.ainvoke({"n": 3}) == {"n": 3, "log": ["hidden=6"]}
