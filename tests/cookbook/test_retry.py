"""In-node retry with LangGraph's RetryPolicy, inside real compiled graphs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.circuit_breaker import CircuitOpenError
from act_operator_lib.cookbook.deadline import with_deadline
from act_operator_lib.cookbook.egress import EgressBlockedError
from act_operator_lib.cookbook.fanout import FanoutNode, FanoutPolicy
from act_operator_lib.cookbook.retry import Attempt, RetryNode, check_retry_policy, retry_call
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, RetryPolicy

from act_operator_lib import metrics
from act_operator_lib._internal.cookbook_index import dependency_closure, find_recipes
from act_operator_lib.control import DoNotRetry
from tests.helpers import run_example

FAST = RetryPolicy(initial_interval=0.001, backoff_factor=2, max_attempts=4, jitter=False)


class FanoutState(TypedDict, total=False):
    items: list[int]
    results: list[Any]
    errors: list[dict[str, Any]]


class State(TypedDict, total=False):
    city: str
    result: Any
    prepared: int


class Flaky:
    """Fails with ``error`` for the first ``failures`` calls, then returns a value."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionError("service hiccup")
        self.calls = 0

    async def __call__(self, state: Any = None) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls <= self.failures:
            raise self.error
        return f"ok after {self.calls} calls"


def as_update(operation: Flaky) -> Callable[[Any], Awaitable[dict[str, Any]]]:
    """``operation`` as a node function: its value becomes the update ``{"result": value}``."""

    async def node(state: Any) -> dict[str, Any]:
        return {"result": await operation(state)}

    return node


def retry_report(error: BaseException) -> str:
    """The note retry_call added (LangGraph adds its own "During task ..." note after it)."""
    return next(note for note in error.__notes__ if note.startswith("retry "))


def retry_graph(node: RetryNode) -> tuple[CompiledStateGraph[Any], list[int]]:
    """A graph whose first node does work that must not be redone by the retries."""
    prepared: list[int] = []

    async def prepare(state: State) -> dict[str, Any]:
        prepared.append(1)
        return {"prepared": len(prepared)}

    builder = StateGraph(State)
    builder.add_node("prepare", prepare)
    builder.add_node(node)
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", node.name)
    builder.add_edge(node.name, END)
    return builder.compile(), prepared


async def test_only_the_operation_is_retried_not_the_graph_or_node() -> None:
    flaky = Flaky(failures=2)
    graph, prepared = retry_graph(RetryNode(as_update(flaky), FAST))
    out = await graph.ainvoke({"city": "Oslo"})
    assert out["result"] == "ok after 3 calls"
    assert flaky.calls == 3
    assert prepared == [1]


async def test_the_operations_update_is_returned_unchanged() -> None:
    flaky = Flaky(failures=1)

    async def forecast(state: State) -> Command[Any]:
        return Command(update={"result": await flaky(state), "city": "Lima"})

    graph, _ = retry_graph(RetryNode(forecast, FAST))
    out = await graph.ainvoke({"city": "Oslo"})
    assert out == {"city": "Lima", "result": "ok after 2 calls", "prepared": 1}


async def test_attempts_are_reported_with_the_backoff_slept() -> None:
    flaky = Flaky(failures=4)
    policy = RetryPolicy(
        initial_interval=0.001, backoff_factor=2, max_interval=0.003, max_attempts=6, jitter=False
    )
    value, attempts = await retry_call(flaky, policy)
    assert value == "ok after 5 calls"
    assert [a.number for a in attempts] == [1, 2, 3, 4, 5]
    assert [a.slept for a in attempts] == [0.001, 0.002, 0.003, 0.003, 0.0]
    assert [type(a.error) for a in attempts] == [ConnectionError] * 4 + [type(None)]
    assert all(isinstance(a, Attempt) and a.elapsed >= 0 for a in attempts)


async def test_jitter_adds_at_most_the_interval() -> None:
    policy = RetryPolicy(initial_interval=0.002, backoff_factor=1, max_attempts=8, jitter=True)
    _, attempts = await retry_call(Flaky(failures=7), policy)
    slept = [a.slept for a in attempts[:-1]]
    assert all(0.002 <= s <= 0.004 for s in slept)
    assert len(set(slept)) > 1


async def test_exhaustion_reraises_the_last_error_with_every_attempt_noted() -> None:
    flaky = Flaky(failures=10)
    graph, _ = retry_graph(RetryNode(as_update(flaky), FAST, name="forecast"))
    with pytest.raises(ConnectionError, match="service hiccup") as caught:
        await graph.ainvoke({"city": "Oslo"})
    assert flaky.calls == 4
    report = retry_report(caught.value).splitlines()
    assert report[0] == "retry 'forecast' gave up after 4 attempt(s): max_attempts=4"
    assert report[1].startswith("  attempt 1: ConnectionError: service hiccup after ")
    assert report[1].endswith(", then slept 0.001s")
    assert report[3].endswith(", then slept 0.004s")
    assert "slept" not in report[4]


@pytest.mark.parametrize(
    "retry_on",
    [ConnectionError, (OSError, KeyError), lambda exc: isinstance(exc, ConnectionError)],
    ids=["class", "sequence", "predicate"],
)
async def test_retry_on_decides_what_is_retried(retry_on: Any) -> None:
    policy = FAST._replace(retry_on=retry_on)
    assert (await retry_call(Flaky(failures=1), policy)).value == "ok after 2 calls"
    not_retryable = Flaky(failures=1, error=ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input") as caught:
        await retry_call(not_retryable, policy)
    assert not_retryable.calls == 1
    assert "gave up after 1 attempt(s): not retryable" in retry_report(caught.value)


async def test_langgraphs_default_retry_on_is_the_default() -> None:
    retried = Flaky(failures=1)
    policy = RetryPolicy(initial_interval=0.001, jitter=False)
    assert (await retry_call(retried, policy)).value == "ok after 2 calls"
    plain_bug = Flaky(failures=1, error=TypeError("bug"))
    with pytest.raises(TypeError):
        await retry_call(plain_bug, policy)
    assert plain_bug.calls == 1


async def test_an_open_circuit_is_never_retried() -> None:
    refused = Flaky(failures=5, error=CircuitOpenError("payments", retry_after=3.0))
    with pytest.raises(CircuitOpenError) as caught:
        await retry_call(refused, FAST._replace(retry_on=Exception))
    assert refused.calls == 1
    assert caught.value.retry_after == 3.0


async def test_an_error_marked_do_not_retry_is_never_retried() -> None:
    class QuotaGone(DoNotRetry, ConnectionError):
        """A recipe's own refusal: marked in the core, so retry needs no import of it."""

    refused = Flaky(failures=5, error=QuotaGone("quota used up"))
    with pytest.raises(QuotaGone) as caught:
        await retry_call(refused, FAST._replace(retry_on=Exception))
    assert refused.calls == 1
    assert "gave up after 1 attempt(s): not retryable" in retry_report(caught.value)
    blocked = Flaky(failures=5, error=EgressBlockedError("http://10.0.0.1/", "private network"))
    with pytest.raises(EgressBlockedError):
        await retry_call(blocked, FAST._replace(retry_on=Exception))
    assert blocked.calls == 1


def test_copying_retry_brings_the_deadline_recipe_only() -> None:
    assert dependency_closure(find_recipes(), ["retry"]) == ["deadline", "retry"]


async def test_cancellation_is_never_retried_and_leaks_nothing() -> None:
    started = asyncio.Event()
    calls = 0

    async def hang() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.Event().wait()
        return "never"

    before = asyncio.all_tasks()
    policy = FAST._replace(retry_on=lambda exc: True)  # even when asked to retry everything
    call = asyncio.create_task(retry_call(hang, policy))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert calls == 1
    assert asyncio.all_tasks() == before


async def test_cancelling_a_run_during_the_backoff_sleep_stops_retrying() -> None:
    failed = asyncio.Event()
    calls = 0

    async def fail(state: State) -> str:
        nonlocal calls
        calls += 1
        failed.set()
        raise ConnectionError("down")

    graph, _ = retry_graph(RetryNode(fail, FAST._replace(initial_interval=3600)))
    before = asyncio.all_tasks()
    run = asyncio.create_task(graph.ainvoke({"city": "Oslo"}))
    await failed.wait()
    await asyncio.sleep(0)  # now in the hour-long backoff sleep
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert calls == 1
    assert asyncio.all_tasks() == before


async def test_no_sleep_ends_past_the_run_deadline() -> None:
    flaky = Flaky(failures=100)
    policy = RetryPolicy(initial_interval=0.1, backoff_factor=1, max_attempts=100, jitter=False)
    graph, _ = retry_graph(RetryNode(as_update(flaky), policy))
    with pytest.raises(ConnectionError) as caught:
        await graph.ainvoke({"city": "Oslo"}, with_deadline(0.5))
    assert "the next sleep would end past the deadline" in retry_report(caught.value)
    assert 1 <= flaky.calls <= 5  # calls 0.1 s apart within 0.5 s


async def test_the_budget_bounds_attempts_and_sleeps() -> None:
    flaky = Flaky(failures=100)
    policy = RetryPolicy(initial_interval=0.05, max_attempts=100, jitter=False)
    with pytest.raises(ConnectionError) as caught:
        await retry_call(flaky, policy, budget=0.03)
    assert flaky.calls == 1  # the first 0.05 s sleep would already overrun 0.03 s
    assert "past the deadline" in retry_report(caught.value)


async def test_an_attempt_still_running_at_the_deadline_is_cut_off() -> None:
    calls = 0

    async def hang(state: State) -> str:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        return "never"

    graph, _ = retry_graph(RetryNode(hang, FAST._replace(retry_on=Exception), name="hang"))
    with pytest.raises(TimeoutError, match="retry 'hang': time ran out during attempt 1") as caught:
        await graph.ainvoke({"city": "Oslo"}, with_deadline(0.3))
    assert calls == 1
    assert "deadline or budget reached" in retry_report(caught.value)


async def test_retries_inside_fan_out_items_share_the_run_deadline() -> None:
    calls: Counter[int] = Counter()
    policy = RetryPolicy(initial_interval=0.1, backoff_factor=1, max_attempts=1000, jitter=False)

    async def fetch(item: int) -> int:
        async def attempt() -> int:
            calls[item] += 1
            raise ConnectionError(f"item {item} unreachable")

        return (await retry_call(attempt, policy, name="fetch")).value

    builder = StateGraph(FanoutState)
    builder.add_node(FanoutNode(fetch, FanoutPolicy(limit=4, on_error="collect")))
    builder.add_edge(START, "FanoutNode")
    graph = builder.compile()
    out = await graph.ainvoke({"items": [0, 1, 2, 3]}, with_deadline(0.5))
    assert out["results"] == [None] * 4
    assert [e["error"] for e in out["errors"]] == [
        f"ConnectionError: item {n} unreachable" for n in range(4)
    ]
    # Every item's retries, 0.1 s apart, stopped at the one 0.5 s run deadline.
    assert all(1 <= calls[n] <= 5 for n in range(4))


async def test_attempts_exhaustion_and_timeouts_are_counted_in_metrics() -> None:
    before = metrics.snapshot()
    with metrics.collecting():
        await retry_call(Flaky(failures=2), FAST, name="counted")
        with pytest.raises(ConnectionError):
            await retry_call(Flaky(failures=9), FAST, name="counted")
        with pytest.raises(TimeoutError):
            await retry_call(asyncio.Event().wait, FAST, budget=0.01, name="counted")
    after = metrics.snapshot()

    def added(metric: str) -> float:
        return after.value(metric, name="counted") - before.value(metric, name="counted")

    assert added("retry_attempts") == 2 + 3
    assert added("retry_exhausted") == 1
    assert added("retry_timeouts") == 1


def test_the_same_graph_runs_under_several_asyncio_runs_and_uvloop() -> None:
    flaky = Flaky(failures=1)
    graph, prepared = retry_graph(RetryNode(as_update(flaky), FAST))
    for _ in range(3):
        flaky.calls = 0
        assert asyncio.run(graph.ainvoke({"city": "x"}))["result"] == "ok after 2 calls"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        flaky.calls = 0
        assert runner.run(graph.ainvoke({"city": "x"}))["result"] == "ok after 2 calls"
    assert len(prepared) == 4


@pytest.mark.parametrize(
    ("policy", "error", "message"),
    [
        (
            RetryPolicy(max_attempts=0),
            ValueError,
            "RetryPolicy max_attempts must be an int >= 1, got 0",
        ),
        (RetryPolicy(max_attempts=2.5), TypeError, "max_attempts must be an int >= 1, got 2.5"),  # type: ignore[arg-type]
        (
            RetryPolicy(initial_interval=-1),
            ValueError,
            "initial_interval must be a finite number of seconds >= 0, got -1",
        ),
        (
            RetryPolicy(backoff_factor=0.5),
            ValueError,
            "backoff_factor must be a finite number >= 1, got 0.5",
        ),
        (
            RetryPolicy(max_interval=-2),
            ValueError,
            "max_interval must be a finite number of seconds >= 0, got -2",
        ),
        (RetryPolicy(retry_on="Exception"), TypeError, "retry_on must be an Exception class"),  # type: ignore[arg-type]
        ({"max_attempts": 3}, TypeError, "must be a langgraph RetryPolicy, got dict"),
    ],
)
def test_invalid_policies_fail_at_construction(
    policy: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        check_retry_policy(policy)
    with pytest.raises(error, match=message):
        RetryNode(Flaky(0), policy)


async def test_invalid_budgets_fail_naming_the_parameter() -> None:
    with pytest.raises(ValueError, match="RetryNode budget must be > 0 seconds or None, got 0"):
        RetryNode(Flaky(0), FAST, budget=0)
    with pytest.raises(ValueError, match="retry_call budget must be > 0 seconds or None, got -1"):
        await retry_call(Flaky(0), FAST, budget=-1)
    with pytest.raises(TypeError, match="RetryNode operation must be an async callable"):
        RetryNode("fetch", FAST)  # type: ignore[arg-type]


def test_the_recipe_example_runs() -> None:
    out = run_example("retry")
    assert "forecast: sunny in Oslo after 3 calls" in out
    assert "expensive step ran 1 time(s)" in out
    assert "retry 'forecast' gave up after 3 attempt(s): max_attempts=3" in out
