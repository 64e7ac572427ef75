"""run_sync runs async graphs from sync code, inside running loops too, without nesting."""

from __future__ import annotations

import asyncio
import concurrent.futures
import operator
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

import aiohttp
import pytest
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime

from act_operator_lib import AsyncBaseNode
from act_operator_lib.sync import BackgroundLoop, background_loop, close_background_loop, run_sync
from tests.http_server import HttpTestServer

SHARED_THREAD = "act-operator-run-sync"


class State(TypedDict, total=False):
    n: int
    threads: Annotated[list[str], operator.add]


class Double(AsyncBaseNode):
    """Doubles n after a real await, and says which thread's loop ran it."""

    async def execute(self, state: State) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"n": state["n"] * 2, "threads": [threading.current_thread().name]}


def _graph() -> Any:
    builder = StateGraph(State)
    builder.add_node("first", Double())
    builder.add_node("second", Double())
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    return builder.compile()


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


@pytest.fixture(autouse=True)
def _fresh_shared_loop() -> Iterator[None]:
    close_background_loop()
    yield
    close_background_loop()
    assert SHARED_THREAD not in _threads()


def test_from_plain_sync_code_uses_a_fresh_loop_in_this_thread() -> None:
    result = run_sync(_graph().ainvoke({"n": 3}))
    me = threading.current_thread().name
    assert result == {"n": 12, "threads": [me, me]}
    assert SHARED_THREAD not in _threads()  # no background loop was needed
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # and none is left running


def test_astream_is_collected_into_a_list() -> None:
    chunks = run_sync(_graph().astream({"n": 1}, stream_mode="updates"))
    assert [list(chunk) for chunk in chunks] == [["first"], ["second"]]
    assert [chunk[name]["n"] for chunk, name in zip(chunks, ["first", "second"], strict=True)] == [
        2,
        4,
    ]


async def test_inside_a_running_loop_it_runs_on_the_background_loop() -> None:
    graph = _graph()
    coroutine = graph.ainvoke({"n": 1})
    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        asyncio.run(coroutine)  # what run_sync replaces
    coroutine.close()

    def sync_helper(n: int) -> dict[str, Any]:  # e.g. a sync library callback
        return run_sync(graph.ainvoke({"n": n}))

    assert sync_helper(5) == {"n": 20, "threads": [SHARED_THREAD, SHARED_THREAD]}
    assert sync_helper(6)["n"] == 24
    # Our own loop still works afterwards.
    assert (await graph.ainvoke({"n": 1}))["threads"] == [threading.current_thread().name] * 2


def test_concurrently_from_several_threads_with_and_without_running_loops() -> None:
    graph = _graph()

    def plain(n: int) -> int:
        return int(run_sync(graph.ainvoke({"n": n}))["n"])

    def inside_loop(n: int) -> int:
        async def main() -> int:
            return int(run_sync(graph.ainvoke({"n": n}))["n"])

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        plain_results = list(pool.map(plain, range(16)))
        loop_results = list(pool.map(inside_loop, range(16)))
    assert plain_results == loop_results == [n * 4 for n in range(16)]


def test_exceptions_propagate_unchanged() -> None:
    error = KeyError("the very same object")

    class Broken(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            raise error

    graph = StateGraph(State).add_node(Broken()).add_edge(START, "Broken").compile()
    with pytest.raises(KeyError) as raised:
        run_sync(graph.ainvoke({"n": 1}))
    assert raised.value is error

    async def inside() -> None:
        with pytest.raises(KeyError) as raised:
            run_sync(graph.ainvoke({"n": 1}))
        assert raised.value is error

    asyncio.run(inside())


def test_a_sync_result_is_refused_with_a_clear_error() -> None:
    def double(state: State) -> dict[str, Any]:
        return {"n": state["n"] * 2}

    graph = StateGraph(State).add_node(double).add_edge(START, "double").compile()
    with pytest.raises(TypeError, match=r"run_sync\(\) takes a coroutine .* got dict"):
        run_sync(graph.invoke({"n": 1}))  # ran already: invoke, not ainvoke


@dataclass
class Http:
    """What a node needs: a session pool made lazily on the loop that runs it."""

    url: str
    runner: BackgroundLoop
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    def session(self) -> aiohttp.ClientSession:
        if not self.sessions:
            session = aiohttp.ClientSession()
            self.runner.on_close(session.close)  # closed with the loop it belongs to
            self.sessions.append(session)
        return self.sessions[0]


class FetchJson(AsyncBaseNode):
    async def execute(self, state: State, runtime: Runtime[Http]) -> dict[str, Any]:
        async with runtime.context.session().get(runtime.context.url) as response:
            body = await response.json()
        return {"n": state["n"] + int(body["ok"])}


def test_pooled_resources_stay_on_the_loop_and_close_with_it() -> None:
    graph = (
        StateGraph(State, context_schema=Http)
        .add_node(FetchJson())
        .add_edge(START, "FetchJson")
        .compile()
    )
    with HttpTestServer() as server, BackgroundLoop(name="pool-owner") as runner:
        http = Http(url=server.url + "/json", runner=runner)
        # Two calls, one session: it stays valid because both ran on the same loop.
        assert runner.run(graph.ainvoke({"n": 0}, context=http))["n"] == 1
        assert runner.run(graph.ainvoke({"n": 1}, context=http))["n"] == 2
        assert len(http.sessions) == 1
        assert server.hits["/json"] == 2
        session = http.sessions[0]
        assert not session.closed
    assert session.closed  # closed by the loop's close(), on that loop
    assert "pool-owner" not in _threads()


def test_the_shared_loop_closes_its_resources_too() -> None:
    async def open_session() -> aiohttp.ClientSession:
        session = aiohttp.ClientSession()
        background_loop().on_close(session.close)
        return session

    async def from_async_code() -> aiohttp.ClientSession:
        return run_sync(open_session())

    session = asyncio.run(from_async_code())
    assert SHARED_THREAD in _threads()
    close_background_loop()
    assert session.closed
    assert SHARED_THREAD not in _threads()
    # A later call inside a running loop gets a new shared loop.
    assert asyncio.run(from_async_code()) is not session


class Interrupted(Exception):
    """Raised by a signal handler while the caller waits, like a KeyboardInterrupt."""


def test_interrupting_the_waiting_caller_cancels_the_work_and_waits_for_it() -> None:
    unwound = threading.Event()
    started = threading.Event()

    class Endless(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            try:
                started.set()
                await asyncio.sleep(60)
            finally:
                unwound.set()
            return {}

    graph = StateGraph(State).add_node(Endless()).add_edge(START, "Endless").compile()

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    runner = BackgroundLoop(name="interrupted")
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            runner.run(graph.ainvoke({"n": 1}))
        assert started.is_set()
        assert unwound.is_set()  # the node's finally ran before run() raised

        async def others() -> int:
            return len(asyncio.all_tasks()) - 1  # minus this one

        assert runner.run(others()) == 0  # nothing left running on the loop
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        runner.close()


def test_run_on_the_loops_own_thread_is_refused_not_deadlocked() -> None:
    with BackgroundLoop(name="self-call") as runner:

        async def calls_itself() -> str:
            inner = _graph().ainvoke({"n": 1})
            with pytest.raises(RuntimeError, match="own thread, which would wait for itself"):
                runner.run(inner)
            return "refused"

        assert runner.run(calls_itself()) == "refused"


def test_closed_loop_and_bad_arguments_are_refused() -> None:
    runner = BackgroundLoop()
    runner.close()  # never started: nothing to do
    runner.close()  # idempotent
    coroutine = _graph().ainvoke({"n": 1})
    with pytest.raises(RuntimeError, match="BackgroundLoop 'act-operator-loop' is closed"):
        runner.run(coroutine)
    with pytest.raises(ValueError, match="BackgroundLoop name must be a non-empty string, got ''"):
        BackgroundLoop(name="")
    with BackgroundLoop() as runner, pytest.raises(TypeError, match="takes a callable, got int"):
        runner.on_close(3)  # type: ignore[arg-type]


def test_close_cancels_runs_in_flight_and_lets_them_unwind() -> None:
    started, unwound = threading.Event(), threading.Event()

    class Endless(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            started.set()
            try:
                await asyncio.sleep(60)
            finally:
                unwound.set()
            return {}

    graph = StateGraph(State).add_node(Endless()).add_edge(START, "Endless").compile()
    runner = BackgroundLoop(name="closed-under-load")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(runner.run, graph.ainvoke({"n": 1}))
        assert started.wait(10)
        runner.close()
        with pytest.raises(asyncio.CancelledError):
            waiting.result(10)
    assert unwound.is_set()
    assert "closed-under-load" not in _threads()
