"""Parity: RetryPolicy, CachePolicy, TimeoutPolicy and error handlers around class nodes."""

import asyncio
import operator
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.cache.memory import InMemoryCache
from langgraph.errors import NodeError, NodeTimeoutError
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import CachePolicy, Command, RetryPolicy, TimeoutPolicy

from act_operator_lib import BaseNode
from tests.core.parity import Nodes, arun_pair, run_pair


class State(TypedDict, total=False):
    log: Annotated[list[Any], operator.add]
    x: int


def _retry(**overrides: Any) -> RetryPolicy:
    return RetryPolicy(
        **{"max_attempts": 3, "initial_interval": 0.001, "jitter": False, **overrides}
    )


def test_retry_until_success_with_attempt_numbers() -> None:
    def scenario(nodes: Nodes) -> Any:
        first_times: list[float | None] = []

        def flaky(state: State, runtime: Runtime) -> dict[str, Any]:
            info = runtime.execution_info
            assert info is not None
            first_times.append(info.node_first_attempt_time)
            if info.node_attempt < 3:
                raise ValueError(f"attempt {info.node_attempt}")
            return {"log": [f"ok on {info.node_attempt}"]}

        def after(state: State) -> dict[str, Any]:
            return {"log": ["after"]}

        builder = StateGraph(State)
        builder.add_node(nodes(flaky), retry_policy=_retry(retry_on=ValueError))
        builder.add_node(nodes(after))
        builder.add_edge(START, "flaky")
        builder.add_edge("flaky", "after")
        result = builder.compile().invoke({"log": []})
        return result, len(first_times), len(set(first_times)), first_times[0] is not None

    assert run_pair(scenario) == ({"log": ["ok on 3", "after"]}, 3, 1, True)


def test_retry_exhausted_raises_the_last_error() -> None:
    def scenario(nodes: Nodes) -> Any:
        def always(state: State) -> dict[str, Any]:
            raise ConnectionError("down")

        builder = StateGraph(State)
        builder.add_node(nodes(always), retry_policy=_retry(max_attempts=2))
        builder.add_edge(START, "always")
        return builder.compile().invoke({"log": []})

    with pytest.raises(ConnectionError, match="down"):
        run_pair(scenario)


def test_retry_skips_errors_it_does_not_match() -> None:
    def scenario(nodes: Nodes) -> Any:
        calls: list[int] = []

        def strict(state: State) -> dict[str, Any]:
            calls.append(1)
            raise ValueError("bad input")

        builder = StateGraph(State)
        builder.add_node(nodes(strict), retry_policy=_retry(retry_on=ConnectionError))
        builder.add_edge(START, "strict")
        try:
            builder.compile().invoke({"log": []})
        except ValueError as error:
            return len(calls), str(error)
        raise AssertionError("expected a ValueError")

    # The default retry_on would not retry a ValueError either.
    assert run_pair(scenario) == (1, "bad input")


def test_several_retry_policies_first_match_wins() -> None:
    def scenario(nodes: Nodes) -> Any:
        attempts: list[int] = []

        def picky(state: State, runtime: Runtime) -> dict[str, Any]:
            assert runtime.execution_info is not None
            attempts.append(runtime.execution_info.node_attempt)
            if len(attempts) < 2:
                raise KeyError("once")
            return {"log": [attempts[:]]}

        builder = StateGraph(State)
        builder.add_node(
            nodes(picky),
            retry_policy=[_retry(retry_on=ValueError), _retry(retry_on=KeyError)],
        )
        builder.add_edge(START, "picky")
        return builder.compile().invoke({"log": []})

    assert run_pair(scenario) == {"log": [[1, 2]]}


def test_cache_policy_skips_a_cached_node() -> None:
    def scenario(nodes: Nodes) -> Any:
        calls: list[int] = []

        def expensive(state: State) -> dict[str, Any]:
            calls.append(state["x"])
            return {"log": [state["x"] * 10]}

        builder = StateGraph(State)
        builder.add_node(nodes(expensive), cache_policy=CachePolicy(ttl=None))
        builder.add_edge(START, "expensive")
        graph = builder.compile(cache=InMemoryCache())
        runs = [list(graph.stream({"x": x}, stream_mode="updates")) for x in (1, 1, 2)]
        graph.clear_cache()
        runs.append(list(graph.stream({"x": 1}, stream_mode="updates")))
        return runs, calls

    runs, calls = run_pair(scenario)
    assert calls == [1, 2, 1]
    assert runs == [
        [{"expensive": {"log": [10]}}],
        [{"expensive": {"log": [10]}, "__metadata__": {"cached": True}}],
        [{"expensive": {"log": [20]}}],
        [{"expensive": {"log": [10]}}],
    ]


async def test_cache_policy_with_a_key_function_async() -> None:
    async def scenario(nodes: Nodes) -> Any:
        calls: list[int] = []

        async def keyed(state: State) -> dict[str, Any]:
            calls.append(state["x"])
            return {"log": [state["x"]]}

        builder = StateGraph(State)
        policy = CachePolicy(key_func=lambda s: str(s["x"] % 2))
        builder.add_node(nodes(keyed), cache_policy=policy)
        builder.add_edge(START, "keyed")
        graph = builder.compile(cache=InMemoryCache())
        results = [await graph.ainvoke({"x": x}) for x in (1, 3, 2)]
        return results, calls

    # 3 has the same key as 1: served from the cache.
    assert await arun_pair(scenario) == (
        [{"x": 1, "log": [1]}, {"x": 3, "log": [1]}, {"x": 2, "log": [2]}],
        [1, 2],
    )


async def test_run_timeout() -> None:
    async def scenario(nodes: Nodes) -> Any:
        async def slow(state: State) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {"log": ["never"]}

        builder = StateGraph(State)
        builder.add_node(nodes(slow), timeout=TimeoutPolicy(run_timeout=0.1))
        builder.add_edge(START, "slow")
        try:
            await builder.compile().ainvoke({"log": []})
        except NodeTimeoutError as error:
            return error.node, error.kind, error.run_timeout, error.idle_timeout
        raise AssertionError("expected NodeTimeoutError")

    assert await arun_pair(scenario) == ("slow", "run", 0.1, None)


async def test_idle_timeout_kept_alive_by_heartbeats() -> None:
    async def scenario(nodes: Nodes) -> Any:
        async def beating(state: State, runtime: Runtime) -> dict[str, Any]:
            # Ten beats 0.05 s apart outlast the 1 s idle timeout only if each beat counts:
            # the margins are wide so a loaded machine cannot flip the outcome.
            for _ in range(10):
                await asyncio.sleep(0.05)
                runtime.heartbeat()
            return {"log": ["alive"]}

        async def silent(state: State) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {"log": ["never"]}

        builder = StateGraph(State)
        policy = TimeoutPolicy(idle_timeout=1.0, refresh_on="heartbeat")
        builder.add_node(nodes(beating), timeout=policy)
        builder.add_node(nodes(silent), timeout=TimeoutPolicy(idle_timeout=0.1))
        builder.add_edge(START, "beating")
        builder.add_edge("beating", "silent")
        seen: list[Any] = []
        try:
            async for chunk in builder.compile().astream({"log": []}, stream_mode="updates"):
                seen.append(chunk)
        except NodeTimeoutError as error:
            seen.append((error.node, error.kind, error.idle_timeout))
        return seen

    assert await arun_pair(scenario) == [
        {"beating": {"log": ["alive"]}},
        ("silent", "idle", 0.1),
    ]


async def test_timeout_then_retry() -> None:
    async def scenario(nodes: Nodes) -> Any:
        attempts: list[int] = []

        async def flaky(state: State) -> dict[str, Any]:
            attempts.append(len(attempts))
            if len(attempts) < 2:
                await asyncio.sleep(30)
            return {"x": state["x"] + 1}

        builder = StateGraph(State)
        builder.add_node(
            nodes(flaky),
            timeout=TimeoutPolicy(run_timeout=0.2),
            retry_policy=_retry(retry_on=NodeTimeoutError),
        )
        builder.add_edge(START, "flaky")
        builder.add_edge("flaky", END)
        return await builder.compile().ainvoke({"log": [], "x": 0}), len(attempts)

    assert await arun_pair(scenario) == ({"log": [], "x": 1}, 2)


def test_timeout_on_a_sync_node_is_refused_at_compile() -> None:
    def scenario(nodes: Nodes) -> Any:
        def blocking(state: State) -> dict[str, Any]:
            return {}

        builder = StateGraph(State)
        builder.add_node(nodes(blocking), timeout=1.0)
        builder.add_edge(START, "blocking")
        return builder.compile()

    with pytest.raises(ValueError, match="blocking"):
        run_pair(scenario)


def test_error_handler_after_retries() -> None:
    def scenario(nodes: Nodes) -> Any:
        attempts: list[int] = []

        def failing(state: State) -> dict[str, Any]:
            attempts.append(1)
            raise ValueError("always")

        def handler(state: State, error: NodeError) -> dict[str, Any]:
            return {"log": [f"{error.node} failed: {error.error}"]}

        builder = StateGraph(State)
        builder.add_node(
            nodes(failing),
            retry_policy=_retry(max_attempts=2, retry_on=ValueError),
            error_handler=nodes(handler),
        )
        builder.add_edge(START, "failing")
        return builder.compile().invoke({"log": []}), len(attempts)

    assert run_pair(scenario) == ({"log": ["failing failed: always"]}, 2)


def test_error_handler_without_error_parameter_routes_with_command() -> None:
    def explode(state: State) -> dict[str, Any]:
        raise RuntimeError("no")

    def fallback(state: State) -> Command:
        return Command(update={"log": ["fallback"]}, goto="cleanup")

    def cleanup(state: State) -> dict[str, Any]:
        return {"log": ["cleanup"]}

    class Fallback(BaseNode):
        def execute(self, state: State) -> Command:
            return Command(update={"log": ["fallback"]}, goto="cleanup")

    def scenario(nodes: Nodes) -> Any:
        builder = StateGraph(State)
        builder.add_node(nodes(explode), error_handler=nodes(fallback, Fallback))
        builder.add_node(nodes(cleanup))
        builder.add_edge(START, "explode")
        return list(builder.compile().stream({"log": []}, stream_mode="updates"))

    updates = run_pair(scenario)
    assert updates[-1] == {"cleanup": {"log": ["cleanup"]}}
    assert {"log": ["fallback"]} in [next(iter(u.values())) for u in updates]


def test_default_error_handler_from_set_node_defaults() -> None:
    def scenario(nodes: Nodes) -> Any:
        def one(state: State) -> dict[str, Any]:
            raise ValueError("one")

        def two(state: State) -> dict[str, Any]:
            return {"log": ["two"]}

        def handler(state: State, error: NodeError) -> Command:
            return Command(update={"log": [f"handled {error.node}"]}, goto="two")

        builder = StateGraph(State)
        builder.set_node_defaults(error_handler=nodes(handler))
        builder.add_node(nodes(one))
        builder.add_node(nodes(two))
        builder.add_edge(START, "one")
        return builder.compile().invoke({"log": []})

    assert run_pair(scenario) == {"log": ["handled one", "two"]}


def test_error_handler_failing_fails_the_run() -> None:
    def scenario(nodes: Nodes) -> Any:
        def explode(state: State) -> dict[str, Any]:
            raise ValueError("first")

        def broken(state: State, error: NodeError) -> dict[str, Any]:
            raise RuntimeError(f"handler saw {error.error}")

        builder = StateGraph(State)
        builder.add_node(nodes(explode), error_handler=nodes(broken))
        builder.add_edge(START, "explode")
        return builder.compile().invoke({"log": []})

    with pytest.raises(RuntimeError, match="handler saw first"):
        run_pair(scenario)
