"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def unique(prefix: str) -> str:
    """A name no other test uses (registries of named limiters/breakers are process-wide)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_in_fresh_loops(
    runner_factory: Callable[[], asyncio.Runner], *steps: Callable[[], Awaitable[T]]
) -> list[T]:
    """Run each step to completion on an event loop of its own, one after the other.

    run_in_fresh_loops(asyncio.Runner, fail_twice, then_call)  # two asyncio.run calls
    run_in_fresh_loops(lambda: asyncio.Runner(loop_factory=uvloop.new_event_loop), step)
    """
    results: list[T] = []
    for step in steps:
        with runner_factory() as runner:
            results.append(runner.run(step()))  # type: ignore[arg-type]
    return results


# Virtual time: for behaviour that is about time (a rate, a reset timeout), a test runs on
# an event loop whose clock moves only when the loop would otherwise sleep, and then
# straight to its next timer. Nothing else moves it, so a loaded machine (a test process
# at low priority beside busy ones) changes no time the code under test sees.


class VirtualClock:
    """Seconds that pass only when ``advance``d (by the test, or by its idle event loop).

    Hand it to a limiter or breaker as ``clock=`` and run the test with
    ``run_in_virtual_time``: the loop's ``time()`` is this clock too.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time on; without awaiting in between, this is an event-loop stall."""
        self.now += seconds


class _IdleJumpSelector(selectors.DefaultSelector):
    """Polls I/O without waiting; where the loop would sleep until a timer, jumps to it."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._virtual_clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        events: list[Any] = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer pending: only I/O (a thread's answer) can come
            return list(super().select(None))
        self._virtual_clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a ``VirtualClock``: sleeps and timers take no real time."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        super().__init__(_IdleJumpSelector(clock))

    def time(self) -> float:
        return self.clock.now


def run_in_virtual_time(main: Callable[[VirtualClock], Awaitable[T]]) -> T:
    """``main(clock)`` on a ``VirtualTimeLoop``; what it returns.

    For single-loop tests only: time jumps while a thread (``to_thread``) is still working.
    """
    clock = VirtualClock()
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(clock)) as runner:
        return runner.run(main(clock))  # type: ignore[arg-type]


async def other_tasks_after(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks still alive that were not there before, after letting cancellations settle."""
    for _ in range(100):
        if not asyncio.all_tasks() - before:
            break
        await asyncio.sleep(0.01)
    return asyncio.all_tasks() - before


# `langgraph dev` turns a blocking call on the event loop into a BlockingError, with the
# blockbuster configuration of its own in-memory runtime. The recipe tests and examples run
# under that very configuration (langgraph dev's function, not a copy), so a blocking call
# added to a recipe fails here before it fails in a user's dev server.

_guard: Any = None


def langgraph_dev_guard() -> Any:
    """The ``BlockBuster`` ``langgraph dev`` activates, configured by its own function; inactive."""
    global _guard
    if _guard is None:
        from langgraph_runtime_inmem.queue import _enable_blockbuster  # type: ignore[import-untyped]

        _guard = _enable_blockbuster()  # builds and activates it
        _guard.deactivate()
    return _guard


@contextlib.contextmanager
def blocking_guard() -> Iterator[None]:
    """Inside: a blocking call on a running event loop raises ``BlockingError``, as in ``langgraph dev``."""
    guard = langgraph_dev_guard()
    guard.activate()
    try:
        yield
    finally:
        guard.deactivate()


# The child starts as `langgraph dev` does: it imports the recipe module (dev loads a graph's
# module at startup), then activates the guard, then runs the module again as __main__. The
# order matters: a module first imported under the guard binds the patched functions (as
# multiprocessing.connection binds os.write), which a graph's own imports do not in dev.
_GUARDED_MAIN = (
    "import importlib, runpy, sys\n"
    "from langgraph_runtime_inmem.queue import _enable_blockbuster\n"
    "importlib.import_module(sys.argv[1])\n"
    "del sys.modules[sys.argv[1]]  # run afresh as __main__, its imports already loaded\n"
    "_enable_blockbuster()\n"
    "runpy.run_module(sys.argv[1], run_name='__main__', alter_sys=True)\n"
)


# How long a test waits for something that only a hang would keep from happening (an
# example's process to end, a waiter to queue). A guard against hangs, never a speed check:
# on a machine starved of CPU (the test process at nice 19 beside busy ones) starting Python
# and importing LangGraph alone can take minutes.
HANG_SECONDS = 900.0


def run_example(
    module: str,
    *,
    timeout: float = HANG_SECONDS,
    env: dict[str, str] | None = None,
    guard: bool = True,
    package: str = "act_operator_lib.cookbook",
) -> str:
    """Run ``python -W error -m <package>.<module>``; its stdout (fails on exit != 0).

    With ``guard`` (the default) the example runs under ``langgraph dev``'s blocking-call
    guard, as ``blocking_guard`` sets it up, turned on after the module's imports as in dev;
    ``guard=False`` is for a look at an example's own failure without the guard.
    """
    target = f"{package}.{module}"
    command = ["-c", _GUARDED_MAIN, target] if guard else ["-m", target]
    return subprocess.run(
        [sys.executable, "-W", "error", *command],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        env=env,
    ).stdout


async def cancel_after_first_chunk(stream: AsyncIterator[Any]) -> list[Any]:
    """Read ``stream`` in a task and cancel the task once a chunk arrived; the chunks read.

    Fails if no chunk comes within 10 s, or if the stream ends or fails instead of being
    cancelled.
    """
    received: list[Any] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)
            first.set()

    run = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    run.cancel()
    try:
        await run
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the test itself is being cancelled
        return received
    raise AssertionError(
        f"the stream ended after {len(received)} chunks instead of being cancelled"
    )
