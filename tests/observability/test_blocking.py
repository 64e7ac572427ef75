"""The blocking detector names the node that stalled the loop and shows where."""

from __future__ import annotations

import asyncio
import operator
import threading
import time
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import START, StateGraph

from act_operator_lib import AsyncBaseNode, metrics
from act_operator_lib.blocking import BlockingDetector, Stall
from act_operator_lib.sync import run_sync
from tests.helpers import HANG_SECONDS

WATCHDOG = "act-operator-blocking-detector"


class State(TypedDict, total=False):
    seen: Annotated[list[str], operator.add]


_watching: list[BlockingDetector] = []


def watching(detector: BlockingDetector) -> BlockingDetector:
    """``detector``, made the one ``hold_the_loop`` waits for."""
    _watching[:] = [detector]
    return detector


def hold_the_loop(seconds: float) -> None:
    """Block the calling thread (the loop's) for ``seconds``, then on until the watched
    detector's watchdog has caught the stall. At nice 19 beside busy processes the watchdog
    thread can go without CPU for longer than any fixed stall: it would measure the stall
    afterwards but never see its stack, and what these tests check is what it sees."""
    detector = _watching[-1] if _watching else None
    began = time.monotonic()
    time.sleep(seconds)
    deadline = time.monotonic() + HANG_SECONDS
    while detector is not None and detector.caught_at < began and time.monotonic() < deadline:
        time.sleep(0.01)


class SleepsInsideAsync(AsyncBaseNode):
    """The classic bug: a blocking sleep inside async def execute."""

    async def execute(self, state: State) -> dict[str, Any]:
        hold_the_loop(0.2)  # the bug under test: time.sleep on the loop
        return {"seen": [self.name]}


class Polite(AsyncBaseNode):
    """Runs alongside, awaiting in small steps: never blocks the loop."""

    async def execute(self, state: State) -> dict[str, Any]:
        for _ in range(30):
            await asyncio.sleep(0.01)
        return {"seen": [self.name]}


def _parallel_graph() -> Any:
    builder = StateGraph(State)
    builder.add_node("slow", SleepsInsideAsync())
    builder.add_node("polite", Polite())
    builder.add_edge(START, "slow")
    builder.add_edge(START, "polite")
    return builder.compile()


# On a loaded machine the loop also stalls when the process simply gets no CPU, and the
# detector rightly reports that too, in whatever code was running. So the tests pick out
# the stall they caused by where it happened, and never count stalls exactly.


def held(stalls: list[Stall], seconds: float) -> list[Stall]:
    """The stalls caught inside ``hold_the_loop(seconds)``."""
    return [
        s
        for s in stalls
        if len(s.stack) >= 2
        and s.stack[-1].name == "hold_the_loop"
        and (s.stack[-2].line or "").startswith(f"hold_the_loop({seconds})")
    ]


def _heartbeats(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    # The loop's pending timers (a private list: asyncio has no public view of them).
    scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return [
        handle
        for handle in scheduled
        if not handle.cancelled()
        and isinstance(getattr(handle._callback, "__self__", None), BlockingDetector)  # type: ignore[attr-defined]
    ]


async def test_blocking_node_is_reported_by_name_with_its_stack() -> None:
    graph = _parallel_graph()
    async with watching(BlockingDetector(threshold=0.1)) as detector:
        result = await graph.ainvoke({})
    assert sorted(result["seen"]) == ["Polite", "SleepsInsideAsync"]

    sleeps = held(detector.stalls, 0.2)
    assert sleeps, f"the 0.2 s time.sleep was not reported: {detector.stalls}"
    assert {stall.node for stall in sleeps} == {"slow"}  # never "polite", which ran beside it
    stall = max(sleeps, key=lambda s: s.duration)
    assert stall.duration >= 0.2
    innermost, caller = stall.stack[-1], stall.stack[-2]
    assert (innermost.line or "").startswith("time.sleep(")  # the blocking call itself
    assert caller.name == "execute"
    assert caller.filename == __file__
    assert (caller.line or "").startswith("hold_the_loop(0.2)")
    report = stall.format()
    assert "Event loop blocked" in report
    assert "in node 'slow'" in report
    assert "hold_the_loop(0.2)" in report


async def test_cpu_bound_function_node_is_attributed_by_graph_name() -> None:
    def crunch(state: State) -> dict[str, Any]:
        raise AssertionError("only the async version runs under ainvoke")

    async def acrunch(state: State) -> dict[str, Any]:
        # 0.15 s of this thread's CPU time, and on until the watchdog has caught it: a
        # process starved of CPU may run the watchdog later than that.
        began = time.monotonic()
        end = time.thread_time() + 0.15
        deadline = time.monotonic() + HANG_SECONDS
        total = 0
        while (  # heavy CPU, no I/O call to intercept
            time.thread_time() < end or detector.caught_at < began
        ) and time.monotonic() < deadline:
            total += 1
        return {"seen": [f"crunched {total > 0}"]}

    builder = StateGraph(State)
    builder.add_node("crunch", acrunch)
    builder.add_edge(START, "crunch")
    graph = builder.compile()
    reported: list[Stall] = []
    detector = BlockingDetector(threshold=0.05, on_stall=reported.append)
    async with detector:
        assert (await graph.ainvoke({}))["seen"] == ["crunched True"]
    assert reported == detector.stalls
    crunching = [s for s in reported if any(frame.name == "acrunch" for frame in s.stack)]
    assert crunching, f"the 0.15 s loop was not reported: {reported}"
    assert {stall.node for stall in crunching} == {"crunch"}


async def test_well_behaved_graph_reports_nothing() -> None:
    builder = StateGraph(State)
    builder.add_node("polite", Polite())
    builder.add_edge(START, "polite")
    # A threshold well above any step of the run: only a process starved of CPU for a
    # second could stall that long, and Polite's 10 ms awaits never come near it.
    async with BlockingDetector(threshold=1.0) as detector:
        await builder.compile().ainvoke({})
    assert detector.stalls == []


async def test_off_means_no_thread_and_no_callbacks() -> None:
    loop = asyncio.get_running_loop()
    detector = BlockingDetector(threshold=0.1)
    assert not detector.running
    assert WATCHDOG not in {thread.name for thread in threading.enumerate()}
    assert _heartbeats(loop) == []

    async with detector:
        assert detector.running
        assert WATCHDOG in {thread.name for thread in threading.enumerate()}
        assert len(_heartbeats(loop)) == 1

    assert not detector.running
    assert WATCHDOG not in {thread.name for thread in threading.enumerate()}
    assert _heartbeats(loop) == []
    # A stall after stop() is not measured.
    time.sleep(0.15)  # noqa: ASYNC251 - a deliberate stall
    await asyncio.sleep(0.02)
    assert detector.stalls == []


async def test_stalls_are_logged_and_recorded_as_a_metric(caplog: pytest.LogCaptureFixture) -> None:
    builder = StateGraph(State)
    builder.add_node("slow", SleepsInsideAsync())
    builder.add_edge(START, "slow")
    metrics.reset()
    with metrics.collecting(), caplog.at_level("WARNING", logger="act_operator_lib.blocking"):
        async with watching(BlockingDetector(threshold=0.1)):
            await builder.compile().ainvoke({})
    assert any("in node 'slow'" in message for message in caplog.messages)
    assert metrics.snapshot().value("event_loop_stall_seconds", node="slow") >= 0.2
    metrics.reset()


async def test_start_twice_is_refused_and_restart_works() -> None:
    detector = watching(BlockingDetector(threshold=0.1))
    async with detector:
        with pytest.raises(RuntimeError, match="already running"):
            detector.start()
    async with detector:
        hold_the_loop(0.15)  # a deliberate stall
        await asyncio.sleep(0.03)
    sleeps = held(detector.stalls, 0.15)
    assert len(sleeps) == 1  # one stall, measured once after the restart
    assert sleeps[0].duration >= 0.15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0}, r"threshold must be a number of seconds > 0, got 0"),
        ({"threshold": float("nan")}, r"threshold must be a number of seconds > 0, got nan"),
        ({"threshold": "1"}, r"threshold must be a number of seconds > 0, got '1'"),
        ({"threshold": True}, r"threshold must be a number of seconds > 0, got True"),
        ({"threshold": 0.1, "interval": 0.5}, r"interval must be > 0 and <= threshold \(0.1\)"),
        ({"threshold": 0.1, "interval": 0}, r"interval must be > 0"),
    ],
)
def test_invalid_parameters_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BlockingDetector(**kwargs)


def test_on_stall_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_stall must be a callable taking a Stall, got int"):
        BlockingDetector(on_stall=3)  # type: ignore[arg-type]


async def test_cancelled_inside_the_detector_leaves_no_thread_or_callback() -> None:
    loop = asyncio.get_running_loop()
    detector = BlockingDetector(threshold=0.1)
    entered = asyncio.Event()

    async def watched() -> None:
        async with detector:
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(watched())
    await entered.wait()
    assert WATCHDOG in {thread.name for thread in threading.enumerate()}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not detector.running
    assert WATCHDOG not in {thread.name for thread in threading.enumerate()}
    assert _heartbeats(loop) == []


def test_watch_runs_a_graph_from_sync_code_under_the_detector() -> None:
    builder = StateGraph(State)
    builder.add_node("slow", SleepsInsideAsync())
    builder.add_edge(START, "slow")
    detector = watching(BlockingDetector(threshold=0.1, on_stall=lambda stall: None))
    result = run_sync(detector.watch(builder.compile().ainvoke({})))
    assert result == {"seen": ["SleepsInsideAsync"]}
    assert [stall.node for stall in held(detector.stalls, 0.2)] == ["slow"]
    assert not detector.running


async def test_report_shows_the_innermost_frames() -> None:
    builder = StateGraph(State)
    builder.add_node("slow", SleepsInsideAsync())
    builder.add_edge(START, "slow")
    async with watching(BlockingDetector(threshold=0.1, on_stall=lambda s: None)) as detector:
        await builder.compile().ainvoke({})
    [stall] = held(detector.stalls, 0.2)
    short, full = stall.format(), stall.format(limit=None)
    assert short.count('  File "') == 8
    assert full.count('  File "') == len(stall.stack) > 8
    assert short.rstrip().endswith(stall.stack[-1].line or "?")  # the blocking call, last
    assert "hold_the_loop(0.2)" in short
