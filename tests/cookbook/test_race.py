"""Race and hedged requests inside real compiled graphs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.deadline import with_deadline
from act_operator_lib.cookbook.race import HedgedNode, HedgePolicy, RaceNode, hedged, race
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from tests.helpers import run_example


class State(TypedDict, total=False):
    question: str
    result: Any


def graph_of(node: Any) -> CompiledStateGraph[Any]:
    builder = StateGraph(State)
    builder.add_node(node)
    builder.add_edge(START, node.name)
    builder.add_edge(node.name, END)
    return builder.compile()


class Hanging:
    """An operation that never finishes and records its start and cancellation."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, state: Any = None) -> str:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "never"


async def test_the_first_success_wins_and_the_losers_are_cancelled() -> None:
    slow_a, slow_b = Hanging(), Hanging()

    async def quick(state: State) -> dict[str, Any]:
        await slow_a.started.wait()  # win only once the others are mid-flight
        await slow_b.started.wait()
        return {"result": f"answer to {state['question']}"}

    graph = graph_of(RaceNode({"a": slow_a, "quick": quick, "b": slow_b}))
    before = asyncio.all_tasks()
    out = await graph.ainvoke({"question": "q"})
    assert out["result"] == "answer to q"
    assert slow_a.cancelled.is_set()
    assert slow_b.cancelled.is_set()
    assert asyncio.all_tasks() == before


async def test_a_failure_does_not_win_the_race() -> None:
    failed = asyncio.Event()

    async def broken() -> str:
        failed.set()
        raise ConnectionError("down")

    async def steady() -> str:
        await failed.wait()  # finish after the failure
        return "steady"

    assert await race(broken, steady) == "steady"


async def test_all_failures_are_raised_together() -> None:
    async def refuse(message: str) -> str:
        raise ConnectionError(message)

    with pytest.raises(ExceptionGroup, match="all 2 alternatives failed") as caught:
        await race(lambda: refuse("first"), lambda: refuse("second"))
    errors = caught.value.exceptions
    assert sorted(str(e) for e in errors) == ["first", "second"]
    assert sorted(e.__notes__[0] for e in errors) == [
        "raised by alternative 0",
        "raised by alternative 1",
    ]


async def test_the_node_names_each_failed_alternative() -> None:
    async def refuse(state: State) -> str:
        raise ConnectionError("refused")

    graph = graph_of(RaceNode({"cache": refuse, "database": refuse}))
    with pytest.raises(ExceptionGroup, match="all 2 alternatives failed") as caught:
        await graph.ainvoke({"question": "q"})
    notes = sorted(e.__notes__[0] for e in caught.value.exceptions)
    assert notes == ["raised by alternative 'cache'", "raised by alternative 'database'"]


async def test_hedge_starts_a_backup_when_the_first_attempt_is_slow() -> None:
    first = Hanging()
    calls = 0

    async def lookup(state: State) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"result": await first()}
        return {"result": f"attempt {calls}"}

    graph = graph_of(HedgedNode(lookup, HedgePolicy(delay=0.01)))
    before = asyncio.all_tasks()
    out = await graph.ainvoke({"question": "q"})
    assert out["result"] == "attempt 2"
    assert first.cancelled.is_set()
    assert asyncio.all_tasks() == before


async def test_hedge_starts_no_backup_when_the_first_attempt_is_quick() -> None:
    calls = 0

    async def lookup() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return "quick"

    assert await hedged(lookup, HedgePolicy(delay=30)) == "quick"
    assert calls == 1


async def test_hedge_starts_the_backup_at_once_when_the_first_attempt_fails() -> None:
    calls = 0

    async def lookup() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("reset")
        return "second try"

    # A 1-hour delay: only the failure can have started the second attempt.
    async with asyncio.timeout(30):
        assert await hedged(lookup, HedgePolicy(delay=3600)) == "second try"
    assert calls == 2


async def test_hedge_with_three_attempts_cancels_both_slow_ones() -> None:
    stuck = [Hanging(), Hanging()]
    calls = 0

    async def lookup() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return await stuck[calls - 1]()
        return "third"

    assert await hedged(lookup, HedgePolicy(delay=0.01, max_attempts=3)) == "third"
    assert all(h.cancelled.is_set() for h in stuck)


async def test_hedge_raises_all_failures_when_every_attempt_fails() -> None:
    async def lookup() -> str:
        raise TimeoutError("upstream timeout")

    with pytest.raises(ExceptionGroup, match="all 3 attempts failed") as caught:
        await hedged(lookup, HedgePolicy(delay=0.01, max_attempts=3))
    assert len(caught.value.exceptions) == 3


async def test_cancelling_a_race_mid_flight_leaks_nothing() -> None:
    hanging = [Hanging() for _ in range(3)]
    graph = graph_of(RaceNode({f"alt{i}": h for i, h in enumerate(hanging)}))
    before = asyncio.all_tasks()
    run = asyncio.create_task(graph.ainvoke({"question": "q"}))
    for h in hanging:
        await h.started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert all(h.cancelled.is_set() for h in hanging)
    assert asyncio.all_tasks() == before


@pytest.mark.parametrize(
    "node",
    [
        RaceNode({"a": Hanging(), "b": Hanging()}),
        HedgedNode(Hanging(), HedgePolicy(delay=0.01, max_attempts=3)),
    ],
    ids=["race", "hedged"],
)
async def test_race_and_hedge_stop_at_the_run_deadline(node: Any) -> None:
    before = asyncio.all_tasks()
    with pytest.raises(TimeoutError):
        await graph_of(node).ainvoke({"question": "q"}, with_deadline(0.05))
    assert asyncio.all_tasks() == before


def test_the_same_graph_runs_under_several_asyncio_runs_and_uvloop() -> None:
    async def fast(state: State) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"result": "fast"}

    async def never(state: State) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"result": "never"}

    race_graph = graph_of(RaceNode({"never": never, "fast": fast}))
    hedge_graph = graph_of(HedgedNode(fast, HedgePolicy(delay=0.5)))
    runs: list[Callable[[], Awaitable[Any]]] = [
        lambda: race_graph.ainvoke({"question": "q"}),
        lambda: hedge_graph.ainvoke({"question": "q"}),
    ] * 2
    for run in runs:
        assert asyncio.run(run())["result"] == "fast"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for run in runs:
            assert runner.run(run())["result"] == "fast"


async def test_the_winners_update_is_returned_unchanged() -> None:
    async def answer(state: State) -> dict[str, Any]:
        return {"result": "42", "question": "answered"}

    async def down(state: State) -> dict[str, Any]:
        raise ConnectionError("down")

    for node in (RaceNode({"down": down, "up": answer}), HedgedNode(answer, HedgePolicy(delay=1))):
        out = await graph_of(node).ainvoke({"question": "q"})
        assert out == {"question": "answered", "result": "42"}


async def test_invalid_arguments_fail_naming_the_parameter() -> None:
    with pytest.raises(
        ValueError, match="HedgePolicy delay must be a finite number of seconds > 0, got 0"
    ):
        HedgePolicy(delay=0)
    with pytest.raises(ValueError, match="HedgePolicy max_attempts must be an int >= 1, got 0"):
        HedgePolicy(delay=1, max_attempts=0)
    with pytest.raises(TypeError, match=r"HedgePolicy max_attempts must be an int >= 1, got 2\.0"):
        HedgePolicy(delay=1, max_attempts=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="race needs at least one alternative"):
        await race()
    with pytest.raises(ValueError, match="RaceNode alternatives must name at least one"):
        RaceNode({})
    with pytest.raises(TypeError, match="RaceNode alternative 'x' must be an async callable"):
        RaceNode({"x": "not callable"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="HedgedNode policy must be a HedgePolicy"):
        HedgedNode(Hanging(), 0.1)  # type: ignore[arg-type]


def test_the_recipe_example_runs() -> None:
    out = run_example("race")
    assert "race: 42 (fast mirror)" in out
    assert "hedged: 42 (attempt 2)" in out


class SharedLookup:
    """Alternatives waiting on one shared request that someone else may cancel."""

    def __init__(self) -> None:
        self.request: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting = 0
        self.all_waiting = asyncio.Event()

    async def wait(self, state: Any = None) -> str:
        self.waiting += 1
        if self.waiting == 2:
            self.all_waiting.set()
        return await asyncio.shield(self.request)  # CancelledError if the request is cancelled


async def test_alternatives_all_cancelled_elsewhere_fail_the_race_as_a_group() -> None:
    shared = SharedLookup()
    graph = graph_of(RaceNode({"cache": shared.wait, "mirror": shared.wait}))
    run = asyncio.create_task(graph.ainvoke({"question": "q"}))
    await shared.all_waiting.wait()
    shared.request.cancel()  # the request both alternatives waited for was cancelled
    with pytest.raises(ExceptionGroup, match="all 2 alternatives failed") as caught:
        await run
    messages = sorted(str(e) for e in caught.value.exceptions)
    assert messages == [
        "alternative 'cache' was cancelled, though not by the race",
        "alternative 'mirror' was cancelled, though not by the race",
    ]


async def test_the_failure_count_includes_alternatives_cancelled_elsewhere() -> None:
    shared = SharedLookup()

    async def refuse(state: State) -> str:
        await shared.all_waiting.wait()
        raise ConnectionError("refused")

    run = asyncio.create_task(
        graph_of(RaceNode({"a": shared.wait, "b": shared.wait, "c": refuse, "d": refuse})).ainvoke(
            {"question": "q"}
        )
    )
    await shared.all_waiting.wait()
    await asyncio.sleep(0.01)
    shared.request.cancel()
    with pytest.raises(ExceptionGroup, match="all 4 alternatives failed") as caught:
        await run
    assert sorted(type(e).__name__ for e in caught.value.exceptions) == [
        "ConnectionError",
        "ConnectionError",
        "RuntimeError",
        "RuntimeError",
    ]


async def test_hedged_attempts_cancelled_elsewhere_count_as_failures() -> None:
    shared = SharedLookup()
    run = asyncio.create_task(
        graph_of(HedgedNode(shared.wait, HedgePolicy(delay=0.01, max_attempts=2))).ainvoke(
            {"question": "q"}
        )
    )
    await shared.all_waiting.wait()  # the backup started after the delay
    shared.request.cancel()
    with pytest.raises(ExceptionGroup, match="all 2 attempts failed"):
        await run
