"""The resource lifecycle recipe: one close for everything, graceful drain, signal-driven worker."""

from __future__ import annotations

import asyncio
import json
import operator
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook import resources as resources_module
from act_operator_lib.cookbook.resources import (
    Job,
    PerLoop,
    ResourceClosedError,
    Resources,
    close_at_loop_shutdown,
    run_worker,
)
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphDrained
from langgraph.graph import StateGraph

from act_operator_lib.base_node import AsyncBaseNode
from tests.helpers import run_example
from tests.http_server import HttpTestServer

REPO = Path(__file__).resolve().parents[2]


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


STARTED: dict[str, asyncio.Event] = {}


class Step(AsyncBaseNode):
    def __init__(self, seconds: float, *, name: str) -> None:
        super().__init__(name=name)
        self.seconds = seconds

    async def execute(self, state: State) -> dict[str, Any]:
        if self.name in STARTED:
            STARTED[self.name].set()
        await asyncio.sleep(self.seconds)
        return {"steps": [self.name]}


def chain(*steps: tuple[str, float]) -> Any:
    builder = StateGraph(State)
    previous = "__start__"
    for name, seconds in steps:
        builder.add_node(name, Step(seconds, name=name))
        builder.add_edge(previous, name)
        previous = name
    return builder.compile(checkpointer=InMemorySaver())


class Closeable:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def aclose(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed to close")


class SyncCloseable(Closeable):
    def close(self) -> None:  # type: ignore[override]
        self.log.append(self.name)

    aclose = None  # type: ignore[assignment]


async def test_drain_lets_the_current_step_finish_and_resumes_later() -> None:
    graph = chain(("a", 0.05), ("b", 0.3), ("c", 0.05))
    STARTED["b"] = b_started = asyncio.Event()
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    closed: list[str] = []
    resources = Resources(drain_timeout=5)
    resources.add(Closeable("pool", closed))
    run = asyncio.create_task(resources.run(graph, {"steps": []}, config))
    await asyncio.wait_for(b_started.wait(), 5)
    del STARTED["b"]
    assert resources.in_flight == 1
    await resources.aclose()
    with pytest.raises(GraphDrained, match="shutdown"):
        await run
    assert closed == ["pool"]
    state = await graph.aget_state(config)
    assert state.values["steps"] == ["a", "b"]  # "b" was in flight and finished
    assert state.next == ("c",)
    assert (await graph.ainvoke(None, config))["steps"] == ["a", "b", "c"]
    with pytest.raises(ResourceClosedError, match="resources are draining"):
        await resources.run(graph, {"steps": []}, config)


async def test_drain_timeout_cancels_stragglers_without_leaks() -> None:
    graph = chain(("slow", 30.0))
    resources = Resources(drain_timeout=0.2)
    before = len(asyncio.all_tasks())
    runs = [
        asyncio.create_task(
            resources.run(graph, {"steps": []}, {"configurable": {"thread_id": f"s{i}"}})
        )
        for i in range(3)
    ]
    await asyncio.sleep(0.1)
    assert await resources.drain() == 3
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    assert all(isinstance(o, GraphDrained) for o in outcomes)
    assert "drain timed out after 0.2s" in str(outcomes[0])
    assert resources.in_flight == 0
    assert len(asyncio.all_tasks()) == before
    await resources.aclose()


async def test_cancelling_the_caller_is_not_a_drain() -> None:
    graph = chain(("slow", 30.0))
    resources = Resources()
    run = asyncio.create_task(
        resources.run(graph, {"steps": []}, {"configurable": {"thread_id": "c"}})
    )
    await asyncio.sleep(0.1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert resources.in_flight == 0
    await resources.aclose()


async def test_aclose_closes_everything_last_first_and_reports_failures() -> None:
    closed: list[str] = []
    resources = Resources()
    resources.add(Closeable("first", closed))
    resources.add(SyncCloseable("sync", closed))
    resources.add(Closeable("broken", closed, fail=True))
    resources.add(Closeable("last", closed))
    with pytest.raises(RuntimeError, match="broken failed to close"):
        await resources.aclose()
    assert closed == ["last", "broken", "sync", "first"]
    await resources.aclose()  # idempotent
    assert closed == ["last", "broken", "sync", "first"]
    with pytest.raises(ResourceClosedError):
        resources.add(Closeable("late", closed))

    two = Resources()
    two.add(Closeable("x", closed, fail=True))
    two.add(Closeable("y", closed, fail=True))
    with pytest.raises(ExceptionGroup) as group:
        await two.aclose()
    assert len(group.value.exceptions) == 2


def test_validation() -> None:
    with pytest.raises(ValueError, match="Resources drain_timeout must be a number >= 0, got -1"):
        Resources(drain_timeout=-1)
    with pytest.raises(
        TypeError, match=r"Resources.add\(\) needs an object with aclose\(\) or close\(\), got int"
    ):
        Resources().add(3)
    with pytest.raises(ValueError, match="run_worker concurrency must be an int >= 1, got 0"):
        asyncio.run(run_worker(None, _no_jobs(), Resources(), concurrency=0))


async def _no_jobs() -> Any:
    return
    yield


def test_close_at_loop_shutdown_runs_once_per_loop() -> None:
    closed: list[str] = []

    async def arm(tag: str, disarm_it: bool) -> None:
        async def close() -> None:
            await asyncio.sleep(0)  # the loop is still running here
            closed.append(tag)

        disarm = close_at_loop_shutdown(close)
        if disarm_it:
            disarm()

    asyncio.run(arm("one", False))
    asyncio.run(arm("two", True))
    assert closed == ["one"]


async def test_worker_stops_when_jobs_run_out() -> None:
    graph = chain(("a", 0.01))
    seen: list[Any] = []

    async def jobs() -> Any:
        for i in range(5):
            yield Job({"steps": []}, {"configurable": {"thread_id": f"w{i}"}})

    closed: list[str] = []
    resources = Resources()
    resources.add(Closeable("pool", closed))
    report = await run_worker(
        graph, jobs(), resources, concurrency=2, on_result=lambda j, r: seen.append(r)
    )
    assert (report.completed, report.drained, report.failed, report.signal) == (5, 0, 0, None)
    assert all(r["steps"] == ["a"] for r in seen)
    assert closed == ["pool"]


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, operator, sys
    from typing import Annotated, Any, TypedDict
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import StateGraph
    from act_operator_lib.cookbook.http_client import FetchJSON, HttpClient, HttpSettings
    from act_operator_lib.cookbook.resources import Job, Resources, run_worker

    class State(TypedDict, total=False):
        url: str
        response: Any
        steps: Annotated[list[str], operator.add]

    async def main() -> None:
        resources = Resources(drain_timeout=10)
        http = HttpClient(HttpSettings(base_url=sys.argv[1]), resources=resources)
        builder = StateGraph(State)
        builder.add_node(FetchJSON(http))
        builder.add_node("after", lambda state: {"steps": ["after"]})
        builder.add_edge("__start__", "FetchJSON")
        builder.add_edge("FetchJSON", "after")
        graph = builder.compile(checkpointer=InMemorySaver())

        async def jobs():
            i = 0
            while True:
                yield Job({"url": "/slow?delay=1", "steps": []}, {"configurable": {"thread_id": f"t{i}"}})
                i += 1
                if i == 4:
                    print("busy", flush=True)
                await asyncio.sleep(0.01)

        outcomes = []
        def on_result(job, outcome):
            outcomes.append((job, type(outcome).__name__))

        report = await run_worker(graph, jobs(), resources, concurrency=8, on_result=on_result)
        drained_states = []
        for job, kind in outcomes:
            if kind == "GraphDrained":
                state = await graph.aget_state(job.config)
                drained_states.append({"next": list(state.next), "fetched": "response" in state.values})
        print(json.dumps({
            "completed": report.completed, "drained": report.drained, "failed": report.failed,
            "signal": report.signal, "drained_states": drained_states,
            "open_sessions": len(HttpClient.sessions),
        }), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_drains_and_exits_cleanly_on_signal(
    sig: signal.Signals, http_server: HttpTestServer, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    worker = subprocess.Popen(
        [sys.executable, "-W", "error", str(script), http_server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "busy"
        worker.send_signal(sig)
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["signal"] == sig.name
    assert report["failed"] == 0
    # Every run the worker started either completed or was drained. The runs in flight
    # at the signal finished their HTTP step, then stopped before "after"; a run created
    # just before the signal may stop before its first step.
    states = report["drained_states"]
    assert len(states) == report["drained"]
    fetched = [state for state in states if state["fetched"]]
    assert all(state["next"] == ["after"] for state in fetched)
    assert all(state["next"] == ["FetchJSON"] for state in states if not state["fetched"])
    assert len(fetched) >= 4  # the four started before "busy" take a full second each
    assert http_server.hits["/slow"] == report["completed"] + len(fetched)
    assert report["open_sessions"] == 0
    assert "ResourceWarning" not in err


SIGNALS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, signal
    from langgraph.graph import StateGraph
    from act_operator_lib.cookbook.resources import Job, Resources, run_worker

    seen = []

    def app_sigterm(signum, frame):
        seen.append("app SIGTERM")

    async def main():
        builder = StateGraph(dict)
        builder.add_node("step", lambda state: {})
        builder.add_edge("__start__", "step")
        graph = builder.compile()

        async def jobs():
            yield Job({})

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: seen.append("loop SIGUSR1"))
        before = {s.name: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        await run_worker(
            graph, jobs(), Resources(),
            signals=(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1),
        )
        after = {s.name: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        loop.remove_signal_handler(signal.SIGUSR1)
        print(json.dumps({
            "same": {name: after[name] is before[name] for name in before}, "seen": sorted(seen),
        }))

    signal.signal(signal.SIGTERM, app_sigterm)
    asyncio.run(main())
    """
)


def test_worker_restores_the_signal_handlers_installed_before(tmp_path: Path) -> None:
    # In a subprocess: a handler left at the default action would kill the test run.
    script = tmp_path / "signals.py"
    script.write_text(SIGNALS_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The application's own SIGTERM handler, asyncio.run's SIGINT handler (Ctrl-C cancels
    # the main task) and a handler added with loop.add_signal_handler all survive.
    assert report == {
        "same": {"SIGTERM": True, "SIGINT": True},
        "seen": ["app SIGTERM", "loop SIGUSR1"],
    }


def test_example_runs() -> None:
    out = run_example("resources")
    assert "run stopped: Graph drained: shutdown" in out
    assert "completed steps: ['a', 'b'], next: ['c']" in out
    assert "resumed to the end: ['a', 'b', 'c']" in out
    assert "pool closed" in out


class Handle:
    """Stands in for a loop-bound session: remembers its loop and whether it was closed."""

    def __init__(self, log: list[str], tag: str = "") -> None:
        self.loop = asyncio.get_running_loop()
        self.log = log
        self.tag = tag
        self.closed = False

    async def close(self) -> None:
        assert asyncio.get_running_loop() is self.loop  # closed on its own, still running loop
        await asyncio.sleep(0)
        self.closed = True
        self.log.append(f"closed {self.tag}")


def registry(log: list[str]) -> PerLoop[Handle]:
    return PerLoop(
        close=Handle.close,
        is_closed=lambda h: h.closed,
        forgotten=lambda h: log.append(f"forgotten {h.tag}"),
    )


def test_per_loop_one_value_per_loop_closed_at_each_loop_shutdown() -> None:
    log: list[str] = []
    handles = registry(log)
    seen: list[Handle] = []

    async def use(tag: str) -> None:
        first = handles.get(lambda: Handle(log, tag))
        assert handles.get(lambda: Handle(log, "never")) is first
        assert handles.current() is first
        assert [(lp, key) for lp, key, _ in handles.items()] == [(first.loop, None)]
        seen.append(first)

    asyncio.run(use("a"))
    asyncio.run(use("b"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(use("c"))
    assert all(h.closed for h in seen)
    assert len({id(h.loop) for h in seen}) == 3
    assert log == ["forgotten a", "closed a", "forgotten b", "closed b", "forgotten c", "closed c"]
    assert handles.items() == []


async def test_per_loop_aclose_closes_this_loops_value_once() -> None:
    log: list[str] = []
    handles = registry(log)
    first = handles.get(lambda: Handle(log, "1"), "k")
    other = handles.get(lambda: Handle(log, "other"), "other")
    assert sorted(map(str, handles.loop_keys())) == ["k", "other"]
    await handles.aclose("k")
    await handles.aclose("k")  # nothing left to close
    assert first.closed
    assert not other.closed
    assert handles.current("k") is None
    second = handles.get(lambda: Handle(log, "2"), "k")
    assert second is not first
    assert log == ["forgotten 1", "closed 1"]
    await handles.aclose("k")
    await handles.aclose("other")
    assert len(handles) == 0


async def test_per_loop_replaces_a_value_closed_elsewhere() -> None:
    log: list[str] = []
    handles = registry(log)
    first = handles.get(lambda: Handle(log, "1"))
    await first.close()  # by hand, not through the registry
    second = handles.get(lambda: Handle(log, "2"))
    assert second is not first
    # Forgotten, never closed a second time; its loop-shutdown close was cancelled.
    assert log == ["closed 1", "forgotten 1"]
    await handles.aclose()
    assert log == ["closed 1", "forgotten 1", "forgotten 2", "closed 2"]


async def test_per_loop_aget_makes_once_under_concurrent_first_calls() -> None:
    log: list[str] = []
    handles = registry(log)
    made = 0

    async def make() -> Handle:
        nonlocal made
        made += 1
        await asyncio.sleep(0.01)
        return Handle(log, "async")

    got = await asyncio.gather(*(handles.aget(make, "db") for _ in range(20)))
    assert made == 1
    assert all(h is got[0] for h in got)
    await handles.aclose("db")
    assert log == ["forgotten async", "closed async"]


async def test_per_loop_aget_stores_nothing_when_make_fails_or_is_cancelled() -> None:
    log: list[str] = []
    handles = registry(log)
    started = asyncio.Event()

    async def fail() -> Handle:
        raise OSError("cannot connect")

    async def hang() -> Handle:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    with pytest.raises(OSError, match="cannot connect"):
        await handles.aget(fail)
    waiting = asyncio.ensure_future(handles.aget(hang))
    await started.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert handles.items() == []

    async def make() -> Handle:
        return Handle(log, "ok")

    value = await handles.aget(make)
    assert handles.current() is value
    await handles.aclose()


def test_per_loop_forgets_a_loop_closed_without_shutdown() -> None:
    log: list[str] = []
    handles = registry(log)

    async def use() -> Handle:
        return handles.get(lambda: Handle(log, "dead"))

    loop = asyncio.new_event_loop()
    dead = loop.run_until_complete(use())
    loop.close()  # no shutdown_asyncgens: the loop-shutdown close cannot run
    before = len(resources_module._parked)
    assert handles.items() == []  # inspection forgets it
    assert log == ["forgotten dead"]
    assert not dead.closed
    assert len(resources_module._parked) == before - 1  # its guard is gone too


def test_per_loop_gives_each_thread_loop_its_own_value() -> None:
    log: list[str] = []
    handles = registry(log)
    seen: list[Handle] = []
    lock = threading.Lock()

    def in_thread(i: int) -> None:
        async def use() -> None:
            value = handles.get(lambda: Handle(log, str(i)))
            await asyncio.sleep(0.01)
            assert handles.get(lambda: Handle(log, "never")) is value
            with lock:
                seen.append(value)

        asyncio.run(use())

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(h) for h in seen}) == 4
    assert all(h.closed for h in seen)
    assert handles.items() == []


def test_per_loop_refuses_callbacks_that_are_not_callable() -> None:
    with pytest.raises(TypeError, match="PerLoop close must be callable or None, got 3"):
        PerLoop(close=3)  # type: ignore[arg-type]
