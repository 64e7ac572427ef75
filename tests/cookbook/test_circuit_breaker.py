"""The circuit-breaker recipe: closed, open, half-open, shared by name, in real graphs."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import threading
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.circuit_breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitBreakerNode,
    CircuitOpenError,
    circuit_breaker,
)
from act_operator_lib.cookbook.retry import retry_call
from langgraph.graph import START, StateGraph
from langgraph.types import RetryPolicy

from act_operator_lib import metrics
from tests.helpers import (
    VirtualClock,
    run_example,
    run_in_fresh_loops,
    run_in_virtual_time,
    unique,
)

# Tests about time run in virtual time (tests.helpers.run_in_virtual_time): the breaker
# and the event loop share a clock that moves only while the loop idles, so a reset
# timeout or a probe's bound is exact on a loaded machine.


class Call(TypedDict, total=False):
    fail_with: str  # "" for success, else the exception class name to raise
    result: str
    note: str


class Service:
    """A dependency whose next answers the test decides; counts the calls it gets."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.called = asyncio.Event()

    async def __call__(self, state: Call) -> dict[str, Any]:
        self.calls += 1
        self.called.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        errors = {"ConnectionError": ConnectionError, "ValueError": ValueError}
        if state.get("fail_with"):
            raise errors[state["fail_with"]]("service says no")
        return {"result": f"ok {self.calls}"}


def graph_for(service: Service, breaker: CircuitBreaker, **node_kwargs: Any) -> Any:
    builder = StateGraph(Call)
    builder.add_node("call", CircuitBreakerNode(service, breaker, name="call", **node_kwargs))
    builder.add_edge(START, "call")
    return builder.compile()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"failure_threshold": 0},
            ValueError,
            "BreakerPolicy failure_threshold must be an int >= 1, got 0",
        ),
        ({"failure_threshold": 1.5}, TypeError, "BreakerPolicy failure_threshold must be an int"),
        ({"reset_timeout": 0}, ValueError, "reset_timeout must be a finite number of seconds > 0"),
        ({"reset_timeout": -2.0}, ValueError, "reset_timeout must be .*, got -2.0"),
        (
            {"reset_timeout": float("inf")},
            ValueError,
            "reset_timeout must be a finite number .*, got inf",
        ),
        ({"reset_timeout": "5"}, TypeError, "BreakerPolicy reset_timeout must be a finite number"),
        ({"half_open_probes": 0}, ValueError, "BreakerPolicy half_open_probes must be an int >= 1"),
        ({"failure_on": "ConnectionError"}, TypeError, "BreakerPolicy failure_on must be"),
        ({"failure_on": (ConnectionError, int)}, TypeError, "BreakerPolicy failure_on must be"),
    ],
)
def test_invalid_policy_is_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        BreakerPolicy(**kwargs)


def test_misuse_names_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="CircuitBreaker policy must be a BreakerPolicy"):
        CircuitBreaker({"failure_threshold": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CircuitBreakerNode breaker must be a CircuitBreaker"):
        CircuitBreakerNode(Service(), "breaker")  # type: ignore[arg-type]
    name = unique("conflict")
    circuit_breaker(name, BreakerPolicy(failure_threshold=2))
    with pytest.raises(ValueError, match="already exists with policy=BreakerPolicy"):
        circuit_breaker(name, BreakerPolicy(failure_threshold=3))


def test_closed_open_half_open_and_back_in_a_graph() -> None:
    run_in_virtual_time(closed_open_half_open_and_back)


async def closed_open_half_open_and_back(clock: VirtualClock) -> None:
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=0.1)
    breaker = CircuitBreaker(policy, name="svc", clock=clock)
    service = Service()
    graph = graph_for(service, breaker)

    # A success between failures resets the count: failures must be consecutive.
    for fail_with in ("ConnectionError", "", "ConnectionError"):
        with pytest.raises(ConnectionError) if fail_with else contextlib.nullcontext():
            await graph.ainvoke({"fail_with": fail_with})
    assert breaker.state == "closed"
    with pytest.raises(ConnectionError):
        await graph.ainvoke({"fail_with": "ConnectionError"})
    assert breaker.state == "open"

    # Open: fail fast, without calling the service, saying when to come back.
    calls = service.calls
    with pytest.raises(CircuitOpenError) as refused:
        await graph.ainvoke({"fail_with": ""})
    assert service.calls == calls
    assert refused.value.retry_after == pytest.approx(0.1)
    assert refused.value.name == "svc"
    assert "circuit 'svc' is open; next probe in" in str(refused.value)

    # Half-open after the timeout: a failed probe re-opens for a full timeout...
    await asyncio.sleep(refused.value.retry_after + 0.01)
    assert breaker.state == "half_open"
    with pytest.raises(ConnectionError):
        await graph.ainvoke({"fail_with": "ConnectionError"})
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as again:
        await graph.ainvoke({"fail_with": ""})
    assert again.value.retry_after == pytest.approx(0.1)  # a full timeout again

    # ...and a successful probe closes it.
    await asyncio.sleep(again.value.retry_after + 0.01)
    result = await graph.ainvoke({"fail_with": ""})
    assert result["result"].startswith("ok")
    assert breaker.state == "closed"


async def test_open_circuit_returns_the_fallback_update() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, reset_timeout=5))
    graph = graph_for(
        Service(),
        breaker,
        when_open=lambda state, error: {"note": f"degraded, retry in {error.retry_after:.0f}s"},
    )
    with pytest.raises(ConnectionError):
        await graph.ainvoke({"fail_with": "ConnectionError"})
    result = await graph.ainvoke({"fail_with": ""})
    assert result == {"fail_with": "", "note": "degraded, retry in 5s"}


def test_half_open_lets_one_probe_through_at_a_time() -> None:
    async def main(clock: VirtualClock) -> None:
        policy = BreakerPolicy(failure_threshold=1, reset_timeout=0.02)
        breaker = CircuitBreaker(policy, clock=clock)
        service = Service(delay=0.1)
        graph = graph_for(service, breaker)
        with pytest.raises(ConnectionError):
            await graph.ainvoke({"fail_with": "ConnectionError"})
        await asyncio.sleep(0.03)

        probe = asyncio.create_task(graph.ainvoke({"fail_with": ""}))
        await asyncio.sleep(0.03)  # the probe is in flight
        with pytest.raises(CircuitOpenError):
            await graph.ainvoke({"fail_with": ""})
        assert (await probe)["result"].startswith("ok")
        assert service.calls == 2
        assert breaker.state == "closed"

    run_in_virtual_time(main)


def test_cancellation_is_not_a_failure_and_frees_the_probe_slot() -> None:
    run_in_virtual_time(cancellation_is_not_a_failure)


async def cancellation_is_not_a_failure(clock: VirtualClock) -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, reset_timeout=0.02), clock=clock)
    graph = graph_for(Service(delay=1.0), breaker)
    before = len(asyncio.all_tasks())

    run = asyncio.create_task(graph.ainvoke({"fail_with": ""}))
    await asyncio.sleep(0.05)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert breaker.state == "closed"  # a threshold of 1 would have opened on a failure

    # Open it with a failed call in a guarded block, then let the timeout pass.
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("down")
    assert breaker.state == "open"
    await asyncio.sleep(0.03)
    probe = asyncio.create_task(graph.ainvoke({"fail_with": ""}))
    await asyncio.sleep(0.05)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    # The cancelled probe told nothing: still half-open, and the next caller may probe.
    assert breaker.state == "half_open"
    with breaker.guard():
        pass
    assert breaker.state == "closed"
    assert len(asyncio.all_tasks()) == before


async def test_failure_on_decides_what_counts() -> None:
    by_class = CircuitBreaker(BreakerPolicy(failure_threshold=1, failure_on=ConnectionError))
    graph = graph_for(Service(), by_class)
    for _ in range(3):  # a ValueError means the service answered: not its fault
        with pytest.raises(ValueError, match="service says no"):
            await graph.ainvoke({"fail_with": "ValueError"})
    assert by_class.state == "closed"

    by_predicate = CircuitBreaker(
        BreakerPolicy(failure_threshold=1, failure_on=lambda e: "timeout" in str(e))
    )
    with pytest.raises(RuntimeError):
        await by_predicate.call(_raise, RuntimeError("bad request"))
    assert by_predicate.state == "closed"
    with pytest.raises(RuntimeError):
        await by_predicate.call(_raise, RuntimeError("upstream timeout"))
    assert by_predicate.state == "open"


async def _raise(error: Exception) -> None:
    raise error


async def test_an_open_circuit_is_not_retried() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, reset_timeout=10))
    service = Service()
    policy = RetryPolicy(
        max_attempts=6, initial_interval=0.001, jitter=False, retry_on=ConnectionError
    )

    class Retrying(TypedDict, total=False):
        result: str

    async def call_with_retries(state: Retrying) -> dict[str, Any]:
        retried = await retry_call(
            lambda: breaker.call(service, {"fail_with": "ConnectionError"}), policy
        )
        return retried.value

    builder = StateGraph(Retrying)
    builder.add_node("call", call_with_retries)
    builder.add_edge(START, "call")
    with pytest.raises(CircuitOpenError) as refused:
        await builder.compile().ainvoke({})
    # Two real failures opened the circuit; the third attempt was refused and not retried.
    assert service.calls == 2
    assert refused.value.retry_after > 9
    assert "not retryable" in "\n".join(refused.value.__notes__)


def run_in_two_loops(
    runner_factory: Callable[[], asyncio.Runner],
) -> tuple[CircuitBreaker, list[str]]:
    """One named breaker, used by two node instances, from two separate event loops."""
    name = unique("shared")
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=30)
    service = Service()
    first = graph_for(service, circuit_breaker(name, policy))
    second = graph_for(
        service, circuit_breaker(name, policy), when_open=lambda s, e: {"note": "open"}
    )
    outcomes = []

    async def fail_twice() -> None:
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await first.ainvoke({"fail_with": "ConnectionError"})

    async def then_call() -> None:
        outcomes.append((await second.ainvoke({"fail_with": ""}))["note"])

    run_in_fresh_loops(runner_factory, fail_twice, then_call)
    assert service.calls == 2
    return circuit_breaker(name, policy), outcomes


def test_a_named_breaker_is_shared_across_nodes_and_asyncio_run_calls() -> None:
    breaker, outcomes = run_in_two_loops(asyncio.Runner)
    assert outcomes == ["open"]
    assert breaker.state == "open"


def test_it_works_on_uvloop() -> None:
    breaker, outcomes = run_in_two_loops(lambda: asyncio.Runner(loop_factory=uvloop.new_event_loop))
    assert outcomes == ["open"]
    assert breaker.state == "open"


def test_circuit_open_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(CircuitOpenError("svc", 1.25)))
    assert (error.name, error.retry_after) == ("svc", 1.25)
    assert isinstance(error, RuntimeError)


def test_the_example_runs() -> None:
    out = run_example("circuit_breaker")
    assert "order 2: circuit open, retry in" in out
    assert "order 3: charged (circuit closed)" in out
    assert "called 4 times for 5 orders" in out


async def test_state_changes_are_recorded_as_metrics() -> None:
    name = unique("metered")
    breaker = circuit_breaker(name, BreakerPolicy(failure_threshold=1, reset_timeout=0.02))
    with metrics.collecting():
        with pytest.raises(ConnectionError):
            await breaker.call(_raise, ConnectionError("down"))
        await asyncio.sleep(0.03)
        await breaker.call(asyncio.sleep, 0)
        recorded = metrics.snapshot()
    assert [
        recorded.count("circuit_state_changes", name=name, state=state)
        for state in (
            "open",
            "half_open",
            "closed",
        )
    ] == [1, 1, 1]


async def test_a_call_admitted_before_the_circuit_opened_does_not_close_it() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, reset_timeout=10))
    slow = asyncio.create_task(breaker.call(asyncio.sleep, 0.05, "late answer"))
    await asyncio.sleep(0)
    with pytest.raises(ConnectionError):
        await breaker.call(_raise, ConnectionError("down"))
    assert breaker.state == "open"
    assert await slow == "late answer"  # admitted while closed, so it ran...
    assert breaker.state == "open"  # ...but says nothing about the circuit opened since


async def open_then_wait(breaker: CircuitBreaker) -> None:
    """Open ``breaker`` with one failure, then wait until it lets a probe through."""
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("down")
    assert breaker.state == "open"
    await asyncio.sleep(breaker.policy.reset_timeout + 0.02)
    assert breaker.state == "half_open"


def test_refusals_during_a_probe_say_when_the_probe_must_have_ended() -> None:
    async def main(clock: VirtualClock) -> None:
        policy = BreakerPolicy(failure_threshold=1, reset_timeout=1.0, probe_timeout=0.5)
        breaker = CircuitBreaker(policy, clock=clock)
        service = Service(delay=0.2)
        graph = graph_for(service, breaker)
        await open_then_wait(breaker)
        probe = asyncio.create_task(graph.ainvoke({"fail_with": ""}))
        await service.called.wait()  # the probe is in flight
        with pytest.raises(CircuitOpenError) as refused:
            await graph.ainvoke({"fail_with": ""})
        # Not a full reset_timeout: within probe_timeout the probe has closed or re-opened it.
        assert refused.value.retry_after == pytest.approx(0.5)
        assert (await probe)["result"].startswith("ok")
        assert breaker.state == "closed"

    run_in_virtual_time(main)


def test_a_hanging_probe_is_cut_off_and_counts_as_a_failure() -> None:
    # In virtual time: the quick probe at the end stays quick however starved the machine.
    run_in_virtual_time(hanging_probe_is_cut_off)


async def hanging_probe_is_cut_off(clock: VirtualClock) -> None:
    # failure_on leaves TimeoutError out: a probe past its bound counts all the same.
    policy = BreakerPolicy(
        failure_threshold=1, reset_timeout=0.05, probe_timeout=0.2, failure_on=ConnectionError
    )
    breaker = CircuitBreaker(policy, name="slow-svc", clock=clock)
    await open_then_wait(breaker)
    before = asyncio.all_tasks()
    hanging = graph_for(Service(delay=3600), breaker)
    with pytest.raises(TimeoutError, match=r"probe of circuit 'slow-svc' took longer than 0\.2s"):
        await asyncio.wait_for(hanging.ainvoke({"fail_with": ""}), 30)
    assert breaker.state == "open"
    assert asyncio.all_tasks() == before

    # The same bound holds for an async guard() block.
    await asyncio.sleep(0.07)
    with pytest.raises(TimeoutError, match=r"took longer than 0\.2s"):
        async with breaker.guard():
            await asyncio.sleep(3600)
    assert breaker.state == "open"

    # The circuit still recovers with a quick probe.
    await asyncio.sleep(0.07)
    assert (await graph_for(Service(), breaker).ainvoke({"fail_with": ""}))["result"] == "ok 1"
    assert breaker.state == "closed"


async def test_a_sync_probe_that_overruns_reopens_the_circuit_for_the_next_caller() -> None:
    # The probe runs in a thread, so the clock stands still until the test moves it.
    clock = VirtualClock()
    breaker = CircuitBreaker(
        BreakerPolicy(failure_threshold=1, reset_timeout=0.05, probe_timeout=0.2), clock=clock
    )
    entered, release = threading.Event(), threading.Event()

    def blocking_probe(state: Call) -> dict[str, Any]:
        with breaker.guard():  # plain with: nothing can cut a blocking call short
            entered.set()
            release.wait(60)
        return {"result": "late"}

    builder = StateGraph(Call)
    builder.add_node("probe", blocking_probe)
    builder.add_edge(START, "probe")
    sync_graph = builder.compile()
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("down")
    clock.advance(0.06)
    assert breaker.state == "half_open"
    probe = asyncio.create_task(asyncio.to_thread(sync_graph.invoke, {}))
    assert await asyncio.to_thread(entered.wait, 60)  # the probe is in flight
    with pytest.raises(CircuitOpenError) as during:
        await breaker.call(asyncio.sleep, 0)
    assert during.value.retry_after == pytest.approx(0.05)  # never beyond reset_timeout
    clock.advance(0.25)  # past probe_timeout: the next caller finds the probe overdue
    with pytest.raises(CircuitOpenError) as after:
        await breaker.call(asyncio.sleep, 0)
    assert breaker.state == "open"
    assert after.value.retry_after == pytest.approx(0.05)  # re-opened for a new reset_timeout
    release.set()
    assert (await probe)["result"] == "late"
    assert breaker.state == "open"  # the overdue probe's late answer says nothing now


async def test_a_timeout_inside_the_guarded_call_is_a_failure() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, reset_timeout=30))

    async def lookup(state: Call) -> dict[str, Any]:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(3600)
        return {"result": "never"}

    with pytest.raises(TimeoutError):
        await graph_for(lookup, breaker).ainvoke({})  # type: ignore[arg-type]
    assert breaker.state == "open"


async def test_a_node_timeout_policy_reaches_the_breaker_as_a_cancellation() -> None:
    from langgraph.errors import NodeTimeoutError
    from langgraph.types import TimeoutPolicy

    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, reset_timeout=30))
    builder = StateGraph(Call)
    builder.add_node(
        "call",
        CircuitBreakerNode(Service(delay=3600), breaker),
        timeout=TimeoutPolicy(run_timeout=0.05),
    )
    builder.add_edge(START, "call")
    with pytest.raises(NodeTimeoutError):
        await builder.compile().ainvoke({"fail_with": ""})
    assert breaker.state == "closed"  # cancelled from outside: neither failure nor success


def test_probe_timeout_is_checked() -> None:
    with pytest.raises(
        ValueError,
        match="BreakerPolicy probe_timeout must be a finite number of seconds > 0, got 0",
    ):
        BreakerPolicy(probe_timeout=0)
    with pytest.raises(ValueError, match="BreakerPolicy probe_timeout must be a finite number"):
        BreakerPolicy(probe_timeout=float("nan"))
    with pytest.raises(
        TypeError,
        match="BreakerPolicy probe_timeout must be a finite number of seconds > 0, got '1'",
    ):
        BreakerPolicy(probe_timeout="1")  # type: ignore[arg-type]
    assert BreakerPolicy().probe_timeout == 30.0


async def test_a_refusal_during_a_probe_never_waits_longer_than_an_open_circuit() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, reset_timeout=0.1))
    service = Service(delay=0.2)  # well within the default probe_timeout of 30 s
    graph = graph_for(service, breaker)
    await open_then_wait(breaker)
    probe = asyncio.create_task(graph.ainvoke({"fail_with": ""}))
    await service.called.wait()
    with pytest.raises(CircuitOpenError) as refused:
        await graph.ainvoke({"fail_with": ""})
    assert 0 < refused.value.retry_after <= 0.1
    assert (await probe)["result"].startswith("ok")
