"""A class node may return whatever a function node may return in the same place.

LangGraph judges a node's return against the graph (keyed state or one root channel) and
the node's input can be a Send payload rather than the state, so the node class leaves
that judgement to LangGraph: the same values pass, and the same values fail with
LangGraph's own InvalidUpdateError naming the graph's node.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.errors import InvalidUpdateError
from langgraph.graph import START, StateGraph
from langgraph.types import Command, Send
from pydantic import BaseModel

from act_operator_lib import AsyncBaseNode, BaseNode


class Worker(BaseNode):
    def execute(self, state: Any) -> Any:
        return [f"worker|{state}"]


def worker(state: Any) -> Any:
    return [f"worker|{state}"]


@pytest.mark.parametrize("node", [Worker(), worker], ids=["class", "function"])
def test_send_payload_into_a_root_channel_graph(node: Any) -> None:
    builder = StateGraph(Annotated[list, operator.add])  # type: ignore[arg-type]
    builder.add_node("worker", node)
    builder.add_conditional_edges(START, lambda s: [Send("worker", 1)])
    assert builder.compile().invoke(["0"]) == ["0", "worker|1"]


class Keyed(TypedDict, total=False):
    n: int
    items: Annotated[list[str], operator.add]


class Item(AsyncBaseNode):
    async def execute(self, state: dict[str, Any]) -> dict[str, Any]:
        # The Send payload, not the graph state: it has no "n".
        return {"items": [f"{state['item']}!"]}


async def test_send_payload_differs_from_the_state_schema() -> None:
    builder = StateGraph(Keyed)
    builder.add_node("item", Item())
    builder.add_conditional_edges(
        START, lambda s: [Send("item", {"item": str(i)}) for i in range(s["n"])]
    )
    assert await builder.compile().ainvoke({"n": 3}) == {"n": 3, "items": ["0!", "1!", "2!"]}


class ReturnValue(BaseNode):
    """Returns the value it was built with, whatever its type.

    In a root-channel graph that update is the channel's value.
    """

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def execute(self, state: Any) -> Any:
        return self.value


@pytest.mark.parametrize("value", [5, "text", (1, 2), {"k": 1}])
def test_root_channel_values_of_any_type(value: Any) -> None:
    builder = StateGraph(Annotated[Any, lambda a, b: b])  # type: ignore[arg-type]
    builder.add_node("root", ReturnValue(value))
    builder.add_edge(START, "root")
    assert builder.compile().invoke(0) == value


@dataclasses.dataclass
class Data:
    n: int = 0


class Model(BaseModel):
    n: int = 0


class Other(BaseModel):
    """Not the graph's schema: LangGraph reads its annotated fields all the same."""

    n: int = 0
    extra: str = "ignored"


@pytest.mark.parametrize(
    ("schema", "value", "expected"),
    [
        (Keyed, {"n": 4}, {"n": 4}),
        (Keyed, None, {"n": 1}),
        (Keyed, Command(update={"n": 7}), {"n": 7}),
        (Keyed, [Command(update={"n": 8}), Command(update={"items": ["x"]})], {"n": 8}),
        (Keyed, (Command(update={"n": 9}),), {"n": 9}),
        (Keyed, Other(n=5), {"n": 5}),
        (Data, Data(n=3), {"n": 3}),
        (Model, Model(n=6), {"n": 6}),
    ],
    ids=["dict", "none", "command", "command-list", "command-tuple", "other-model", "dc", "pyd"],
)
def test_returns_a_function_node_may_make(schema: Any, value: Any, expected: Any) -> None:
    def run(node: Any) -> Any:
        builder = StateGraph(schema)
        builder.add_node("node", node)
        builder.add_edge(START, "node")
        initial = {"n": 1} if schema is Keyed else schema(n=1)
        return builder.compile().invoke(initial)

    by_class = run(ReturnValue(value))
    assert by_class == run(lambda state: value)
    assert {k: by_class[k] for k in expected} == expected


@pytest.mark.parametrize("value", [42, "text", [1, 2], object()], ids=["int", "str", "list", "obj"])
def test_invalid_return_fails_as_langgraph_fails_it_naming_the_graph_node(value: Any) -> None:
    def run(node: Any) -> InvalidUpdateError:
        builder = StateGraph(Keyed)
        builder.add_node("worker", node)
        builder.add_edge(START, "worker")
        with pytest.raises(InvalidUpdateError) as caught:
            builder.compile().invoke({"n": 1})
        return caught.value

    by_class = run(ReturnValue(value))
    by_function = run(lambda state: value)
    assert str(by_class) == str(by_function)
    assert str(by_class).startswith("Expected dict, got ")
    (note,) = by_class.__notes__
    assert note.startswith("During task with name 'worker' and id ")
    assert "ReturnValue" not in str(by_class) + note
