"""Parity: everything a node may return, and nodes reached by ``Send``."""

import dataclasses
import operator
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langgraph.errors import InvalidUpdateError
from langgraph.graph import START, StateGraph
from langgraph.types import Command, Send
from pydantic import BaseModel

from act_operator_lib import BaseNode
from tests.core.parity import Nodes, arun_pair, chain, run_pair


class State(TypedDict, total=False):
    log: Annotated[list[Any], operator.add]
    n: int


class Item(TypedDict):
    item: str


@dataclasses.dataclass
class DataState:
    n: int = 0
    tag: str = ""


class ModelState(BaseModel):
    n: int = 0
    tag: str = ""


def _chain(nodes: Nodes, *fns: Any, state: Any = State) -> Any:
    return chain(nodes, *fns, state=state)


def test_dict_and_none() -> None:
    def update(state: State) -> dict[str, Any]:
        return {"log": ["update"], "n": 1}

    def nothing(state: State) -> None:
        return None

    def empty(state: State) -> dict[str, Any]:
        return {}

    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, update, nothing, empty)
        return list(graph.stream({"log": []}, stream_mode="updates"))

    assert run_pair(scenario) == [
        {"update": {"log": ["update"], "n": 1}},
        {"nothing": None},
        {"empty": None},
    ]


def test_command_update_and_goto() -> None:
    def route(state: State) -> Command[Literal["left", "right"]]:
        return Command(update={"log": ["route"]}, goto="right" if state["n"] else "left")

    def left(state: State) -> dict[str, Any]:
        return {"log": ["left"]}

    def right(state: State) -> dict[str, Any]:
        return {"log": ["right"]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        for fn in (route, left, right):
            builder.add_node(nodes(fn))
        builder.add_edge(START, "route")
        graph = builder.compile()
        drawn = sorted((e.source, e.target) for e in graph.get_graph().edges)
        return graph.invoke({"n": 0}), graph.invoke({"n": 1}), drawn

    to_left, to_right, drawn = run_pair(scenario)
    assert to_left == {"n": 0, "log": ["route", "left"]}
    assert to_right == {"n": 1, "log": ["route", "right"]}
    # -> Command[Literal[...]] draws the routes.
    assert ("route", "left") in drawn
    assert ("route", "right") in drawn


def test_list_of_commands() -> None:
    def fan(state: State) -> list[Command]:
        return [Command(update={"log": ["a"]}, goto="leaf"), Command(update={"n": 7})]

    def leaf(state: State) -> dict[str, Any]:
        return {"log": [f"leaf:{state['n']}"]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(fan))
        builder.add_node(nodes(leaf))
        builder.add_edge(START, "fan")
        return builder.compile().invoke({"log": [], "n": 0})

    assert run_pair(scenario) == {"log": ["a", "leaf:7"], "n": 7}


def test_command_goto_send() -> None:
    def dispatch(state: State) -> Command:
        return Command(goto=[Send("work", {"item": i}) for i in ("x", "y")])

    def work(state: Item) -> dict[str, Any]:
        return {"log": [state["item"].upper()]}

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(dispatch))
        builder.add_node(nodes(work))
        builder.add_edge(START, "dispatch")
        return builder.compile().invoke({"log": []})

    assert run_pair(scenario) == {"log": ["X", "Y"]}


def test_root_channel_state() -> None:
    def first(state: list[str]) -> list[str]:
        return [f"first|{len(state)}"]

    def second(state: list[str]) -> list[str]:
        return [f"second|{len(state)}"]

    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, first, second, state=Annotated[list, operator.add])
        return graph.invoke(["0"]), list(graph.stream(["0"], stream_mode="updates"))

    assert run_pair(scenario) == (
        ["0", "first|1", "second|2"],
        [{"first": ["first|1"]}, {"second": ["second|2"]}],
    )


def test_root_channel_of_a_plain_type() -> None:
    def shout(state: str) -> str:
        return state.upper() + "!"

    def scenario(nodes: Nodes) -> Any:
        return _chain(nodes, shout, state=str).invoke("hi")

    assert run_pair(scenario) == "HI!"


def test_send_payload_into_a_root_channel_graph() -> None:
    def worker(state: int) -> list[str]:
        return [f"worker|{state}"]

    class Worker(BaseNode):
        def execute(self, state: int) -> list[str]:
            return [f"worker|{state}"]

    def scenario(nodes: Nodes, written: type[Any] | None = None) -> Any:
        builder = StateGraph(Annotated[list, operator.add])
        builder.add_node("worker", nodes(worker, written))
        builder.add_conditional_edges(START, lambda s: [Send("worker", 1), Send("worker", 2)])
        return builder.compile().invoke(["0"])

    assert run_pair(scenario) == ["0", "worker|1", "worker|2"]
    assert run_pair(lambda nodes: scenario(nodes, Worker)) == ["0", "worker|1", "worker|2"]


def test_send_map_reduce_with_a_private_payload() -> None:
    class Overall(TypedDict, total=False):
        subjects: list[str]
        jokes: Annotated[list[str], operator.add]

    def generate(state: Item) -> dict[str, Any]:
        return {"jokes": [f"joke about {state['item']}"]}

    def edit(state: Overall) -> dict[str, Any]:
        return {"jokes": [f"{len(state['jokes'])} jokes"]}

    def fan_out(state: Overall) -> list[Send]:
        return [Send("generate", {"item": s}) for s in state["subjects"]]

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(Overall)
        builder.add_node(nodes(generate))
        builder.add_node(nodes(edit))
        builder.add_conditional_edges(START, fan_out)
        builder.add_edge("generate", "edit")
        graph = builder.compile()
        return graph.invoke({"subjects": ["cats", "dogs"]}), list(
            graph.stream({"subjects": ["owls"]}, stream_mode="updates")
        )

    assert run_pair(scenario) == (
        {"subjects": ["cats", "dogs"], "jokes": ["joke about cats", "joke about dogs", "2 jokes"]},
        [{"generate": {"jokes": ["joke about owls"]}}, {"edit": {"jokes": ["1 jokes"]}}],
    )


async def test_send_target_returns_a_command() -> None:
    async def worker(state: Item) -> Command:
        return Command(update={"log": [state["item"]]}, goto="done")

    async def done(state: State) -> dict[str, Any]:
        return {"n": len(state["log"])}

    async def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(worker))
        builder.add_node(nodes(done))
        builder.add_conditional_edges(
            START, lambda s: [Send("worker", {"item": "a"}), Send("worker", {"item": "b"})]
        )
        return await builder.compile().ainvoke({"log": []})

    assert await arun_pair(scenario) == {"log": ["a", "b"], "n": 2}


def test_dataclass_state_instance() -> None:
    def bump(state: DataState) -> DataState:
        return DataState(n=state.n + 1, tag="bumped")

    def partial(state: DataState) -> dict[str, Any]:
        return {"tag": f"{state.tag}+{state.n}"}

    def scenario(nodes: Nodes) -> Any:
        return _chain(nodes, bump, partial, state=DataState).invoke(DataState(n=1))

    assert run_pair(scenario) == {"n": 2, "tag": "bumped+2"}


def test_pydantic_state_instance() -> None:
    def bump(state: ModelState) -> ModelState:
        return ModelState(n=state.n + 1, tag="bumped")

    def partial(state: ModelState) -> dict[str, Any]:
        return {"tag": f"{state.tag}+{state.n}"}

    def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, bump, partial, state=ModelState)
        return graph.invoke({"n": 1}), list(graph.stream(ModelState(n=1), stream_mode="values"))

    result, values = run_pair(scenario)
    assert result == {"n": 2, "tag": "bumped+2"}
    assert values == [
        {"n": 1, "tag": ""},
        {"n": 2, "tag": "bumped"},
        {"n": 2, "tag": "bumped+2"},
    ]


async def test_pydantic_state_under_ainvoke() -> None:
    def bump(state: ModelState) -> ModelState:
        return ModelState(n=state.n + 1, tag="bumped")

    async def partial(state: ModelState) -> dict[str, Any]:
        return {"tag": f"{state.tag}+{state.n}"}

    async def scenario(nodes: Nodes) -> Any:
        graph = _chain(nodes, bump, partial, state=ModelState)
        return await graph.ainvoke(ModelState(n=4))

    assert await arun_pair(scenario) == {"n": 5, "tag": "bumped+5"}


@pytest.mark.parametrize(
    "returned",
    [42, [{"log": ["x"]}]],
    ids=["not-an-update", "a-list-without-commands-into-a-dict-state"],
)
def test_an_invalid_return_is_refused_naming_the_node(returned: Any) -> None:
    def worker(state: State) -> Any:
        return returned

    def scenario(nodes: Nodes) -> Any:
        return _chain(nodes, worker).invoke({"log": []})

    function_error, class_error = run_pair(scenario, errors="both")
    assert isinstance(function_error, InvalidUpdateError)
    # LangGraph itself judges a class node's return, as a function node's
    assert type(class_error) is type(function_error)
    assert str(class_error) == str(function_error)
    assert any("'worker'" in note for note in getattr(class_error, "__notes__", []))


def test_parent_command_from_a_subgraph_node() -> None:
    def hop(state: State) -> Command:
        return Command(graph=Command.PARENT, goto="after", update={"log": ["hop"]})

    def after(state: State) -> dict[str, Any]:
        return {"log": ["after"]}

    def scenario(nodes: Nodes) -> Any:
        sub = StateGraph(State)
        sub.add_node(nodes(hop))
        sub.add_edge(START, "hop")
        parent = StateGraph(State)
        parent.add_node("sub", sub.compile())
        parent.add_node(nodes(after))
        parent.add_edge(START, "sub")
        return parent.compile().invoke({"log": []})

    assert run_pair(scenario) == {"log": ["hop", "after"]}


def test_goto_an_unknown_node_is_ignored_like_a_function() -> None:
    def lost(state: State) -> Command:
        return Command(goto="nowhere", update={"log": ["lost"]})

    def scenario(nodes: Nodes) -> Any:
        return list(_chain(nodes, lost).stream({"log": []}, stream_mode="updates"))

    # LangGraph logs the write to an unknown branch and carries on.
    assert run_pair(scenario) == [{"lost": {"log": ["lost"]}}]
