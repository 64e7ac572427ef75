"""The offload recipe: real thread and process pools called from real graphs."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.offload import (
    BlockingCall,
    Offloader,
    OffloadSettings,
    UnpicklableCallError,
    count_primes,
)
from act_operator_lib.cookbook.resources import ResourceClosedError, Resources
from blockbuster import blockbuster_ctx
from langgraph.graph import StateGraph

from act_operator_lib import metrics
from tests.helpers import run_example

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


class State(TypedDict, total=False):
    n: int
    result: Any


def whoami(_: object) -> tuple[str, int, int]:
    return request_id.get(), threading.get_ident(), os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


class Gauge:
    """Counts calls running at once, from worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def work(self, seconds: float) -> float:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1
        return seconds


def graph_calling(pool: Offloader, fn: Any) -> Any:
    builder = StateGraph(State)
    builder.add_node(BlockingCall(pool, fn, input_key="n", output_key="result"))
    builder.add_edge("__start__", "BlockingCall")
    return builder.compile()


async def test_thread_call_keeps_context_variables() -> None:
    pool = Offloader(OffloadSettings(max_workers=2))

    class Tagged(TypedDict, total=False):
        n: int
        result: Any

    async def tag_then_call(state: Tagged) -> dict[str, Any]:
        request_id.set(f"req-{state['n']}")
        return {"result": await pool.run(whoami, None)}

    builder = StateGraph(Tagged)
    builder.add_node("call", tag_then_call)
    builder.add_edge("__start__", "call")
    graph = builder.compile()
    results = await asyncio.gather(*(graph.ainvoke({"n": i}) for i in range(4)))
    for i, result in enumerate(results):
        tag, thread, pid = result["result"]
        assert tag == f"req-{i}"
        assert thread != threading.get_ident()
        assert pid == os.getpid()
    await pool.aclose()


async def test_at_most_max_workers_run_at_once() -> None:
    pool = Offloader(OffloadSettings(max_workers=3))
    gauge = Gauge()
    graph = graph_calling(pool, gauge.work)
    started = time.monotonic()
    await asyncio.gather(*(graph.ainvoke({"n": 0.1}) for _ in range(9)))
    assert gauge.peak == 3
    assert time.monotonic() - started >= 0.3  # 9 calls, 3 at a time
    await pool.aclose()


async def test_metrics_pool_size_and_waits() -> None:
    with metrics.collecting():
        pool = Offloader(OffloadSettings(max_workers=2, name="metered-offload"))
        await asyncio.gather(*(pool.run(time.sleep, 0.05) for _ in range(5)))
        during = metrics.snapshot()
        await pool.aclose()
        after = metrics.snapshot()
    assert during.value("pool_size", name="metered-offload") == 2
    assert during.value("pool_waits", name="metered-offload") == 3  # 5 calls, 2 workers
    assert after.value("pool_size", name="metered-offload") == 0


async def test_errors_propagate() -> None:
    pool = Offloader()
    with pytest.raises(ValueError, match="from a thread"):
        await pool.run(fail, "from a thread")
    await pool.aclose()


async def test_cancellation_keeps_the_bound_and_skips_unstarted_calls() -> None:
    pool = Offloader(OffloadSettings(max_workers=1))
    gate = threading.Event()
    entered = threading.Event()
    ran: list[str] = []

    def blocking(tag: str) -> str:
        ran.append(tag)
        entered.set()
        gate.wait(5)
        return tag

    before = len(asyncio.all_tasks())
    running = asyncio.create_task(pool.run(blocking, "first"))
    assert await asyncio.to_thread(entered.wait, 5)  # "first" runs in the worker now
    queued = asyncio.create_task(pool.run(blocking, "second"))
    await asyncio.sleep(0.05)
    running.cancel()
    queued.cancel()
    await asyncio.gather(running, queued, return_exceptions=True)
    assert len(asyncio.all_tasks()) == before
    # "first" still occupies the only worker: a new call waits for it, not beside it.
    third = asyncio.create_task(pool.run(blocking, "third"))
    await asyncio.sleep(0.1)
    assert ran == ["first"]
    gate.set()
    assert await asyncio.wait_for(third, 5) == "third"
    assert ran == ["first", "third"]  # "second" was cancelled before it started
    await pool.aclose()


async def test_process_pool_runs_cpu_work_in_other_processes() -> None:
    pool = Offloader(OffloadSettings(kind="process", max_workers=2))
    graph = graph_calling(pool, count_primes)
    results = await asyncio.gather(graph.ainvoke({"n": 1000}), graph.ainvoke({"n": 100}))
    assert [r["result"] for r in results] == [168, 25]
    _, _, pid = await pool.run(whoami, None)
    assert pid != os.getpid()
    with pytest.raises(ValueError, match="from a process"):
        await pool.run(fail, "from a process")
    await pool.aclose()


def test_works_across_event_loops_and_closes() -> None:
    pool = Offloader(OffloadSettings(max_workers=2, name="loops-test"))

    async def use() -> int:
        return sum(await asyncio.gather(*(pool.run(len, "abc") for _ in range(4))))

    assert [asyncio.run(use()) for _ in range(3)] == [12, 12, 12]
    assert any(t.name.startswith("loops-test") for t in threading.enumerate())
    pool.close()
    assert not any(t.name.startswith("loops-test") for t in threading.enumerate())


async def test_resources_shut_the_pool_down() -> None:
    async with Resources() as resources:
        pool = Offloader(OffloadSettings(name="res-test"), resources=resources)
        assert await pool.run(sum, [1, 2, 3]) == 6
    assert not any(t.name.startswith("res-test") for t in threading.enumerate())
    assert "open=False" in repr(pool)


async def test_aclose_fails_queued_callers_and_starts_nothing_new() -> None:
    pool = Offloader(OffloadSettings(max_workers=1, name="closing-test"))
    gate = threading.Event()
    entered = threading.Event()

    def blocking(tag: str) -> str:
        entered.set()
        gate.wait(10)
        return tag

    running = asyncio.create_task(pool.run(blocking, "running"))
    try:
        assert await asyncio.to_thread(entered.wait, 5)
        queued = [asyncio.create_task(pool.run(blocking, f"queued-{i}")) for i in range(3)]
        await asyncio.sleep(0.05)  # all three wait for the only slot
        closing = asyncio.create_task(pool.aclose())
        # The waiters fail at once, while the running call still holds its worker.
        for task in queued:
            with pytest.raises(ResourceClosedError, match="Offloader 'closing-test' is closed"):
                await asyncio.wait_for(task, 5)
        assert not closing.done()
    finally:
        gate.set()
    assert await running == "running"  # a call already running finishes first
    await asyncio.wait_for(closing, 10)
    assert not any(t.name.startswith("closing-test") for t in threading.enumerate())
    with pytest.raises(ResourceClosedError, match="Offloader 'closing-test' is closed"):
        await pool.run(len, "abc")
    assert not any(t.name.startswith("closing-test") for t in threading.enumerate())
    assert "open=False" in repr(pool)


def exit_abruptly() -> None:
    os._exit(3)


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("die", [exit_abruptly, kill_myself])
async def test_a_dead_worker_process_is_replaced(die: Any) -> None:
    pool = Offloader(OffloadSettings(kind="process", max_workers=2))
    try:
        first_pid = await pool.run(os.getpid)
        with pytest.raises(BrokenProcessPool):
            await pool.run(die)
        # Later calls get a fresh pool: every one of them works.
        assert await asyncio.gather(*(pool.run(count_primes, 100) for _ in range(4))) == [25] * 4
        assert await pool.run(os.getpid) not in (first_pid, os.getpid())
    finally:
        await pool.aclose()


def first_item(items: Any, *, default: Any = None) -> Any:
    return next(iter(items), default)


async def test_an_unpicklable_call_names_what_could_not_be_pickled() -> None:
    pool = Offloader(OffloadSettings(kind="process", max_workers=1, name="cpu"))
    try:
        with pytest.raises(UnpicklableCallError, match=r"Offloader 'cpu' cannot send argument 1"):
            await pool.run(first_item, [threading.Lock()])
        with pytest.raises(UnpicklableCallError, match=r"cannot send keyword argument 'default'"):
            await pool.run(first_item, [], default=threading.Lock())
        with pytest.raises(
            UnpicklableCallError, match=r"cannot send the function test_an_unpicklable.*<lambda>"
        ):
            await pool.run(lambda: 1)
        with pytest.raises(TypeError):  # still a TypeError for code that caught one before
            await pool.run(first_item, [threading.Lock()])
        # An error raised by the function itself stays what it was.
        with pytest.raises(ValueError, match="from a process"):
            await pool.run(fail, "from a process")
        assert await pool.run(first_item, [7]) == 7  # the pool still works
    finally:
        await pool.aclose()


async def test_the_first_process_call_does_not_block_the_event_loop() -> None:
    # langgraph dev runs graphs under blockbuster: starting the pool on the loop would
    # fail there with BlockingError (pipe writes, process spawning).
    pool = Offloader(OffloadSettings(kind="process", max_workers=2))
    try:
        with blockbuster_ctx():
            results = await asyncio.gather(*(pool.run(count_primes, 100) for _ in range(4)))
            assert results == [25] * 4
            assert await pool.run(count_primes, 1000) == 168
    finally:
        await pool.aclose()


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="OffloadSettings max_workers must be an int >= 1, got 0"):
        OffloadSettings(max_workers=0)
    with pytest.raises(ValueError, match="kind must be 'thread' or 'process', got 'fiber'"):
        OffloadSettings(kind="fiber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_method must be"):
        OffloadSettings(start_method="vfork")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Offloader settings must be OffloadSettings"):
        Offloader(4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BlockingCall fn must be callable"):
        BlockingCall(Offloader(), 3, input_key="a", output_key="b")  # type: ignore[arg-type]


def test_example_runs() -> None:
    out = run_example("offload")
    assert "thread digest: req-42:2cf24dba5fb0" in out
    assert "primes below 20000: 2262" in out


def test_a_finished_event_loop_is_not_kept_alive_by_the_pool() -> None:
    # Each loop gets its own semaphore; once the loop shut down the pool holds nothing of
    # it (a semaphore a caller waited on references its loop, so a weak-keyed registry
    # kept every such loop alive).
    pool = Offloader(OffloadSettings(max_workers=1))
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def contend() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await asyncio.gather(*(pool.run(time.sleep, 0.01) for _ in range(3)))

    try:
        for _ in range(2):
            asyncio.run(contend())
        gc.collect()
        assert [ref() for ref in loops] == [None, None]
    finally:
        pool.close()
