"""Find the nodes that block the event loop: each stall, by node, with the blocking stack.

    from act_operator_lib.blocking import BlockingDetector

    async with BlockingDetector(threshold=0.1) as detector:
        await graph.ainvoke({"url": "..."})
    for stall in detector.stalls:
        print(stall.format())  # Event loop blocked 0.203 s in node 'fetch': ... time.sleep(0.2)

An ``async def execute`` that calls ``time.sleep``, a sync HTTP client or heavy CPU code
stops every other node, stream and timeout of the process while it runs. The detector
is opt-in: while it is not running nothing is measured (no thread, no loop callback).

How: the event loop runs a heartbeat every ``interval`` seconds and a watchdog thread
watches it. When the heartbeat is overdue, the loop thread is stuck inside some
callback, so the watchdog takes that thread's stack (``sys._current_frames()``) right
then, while the blocking call is still on it, and finds the node on it: the graph's
name for it (the ``config`` LangGraph passes down the stack) or else the ``BaseNode`` whose
``execute`` is running. While the stall goes on it looks again every ``threshold`` and the
last look is kept (a first look may have found the loop waiting in its selector because the
process got no CPU). When the heartbeat runs again, the gap is the stall's duration.

When something else fits better:

* asyncio's debug mode (``PYTHONASYNCIODEBUG=1``, ``loop.slow_callback_duration``) logs
  slow callbacks after they finish, naming the task but not the line that blocked,
  and slows the whole loop; fine in development, too heavy for a service.
* blockbuster (the package LangGraph's own API server uses in its tests) makes known
  blocking functions (``time.sleep``, file and socket I/O) raise when called on the
  loop: the better tool to fail a test suite early. It cannot see CPU-bound code or an
  unknown C library; this detector measures what actually stalled, wherever it ran.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, TypeVar

from act_operator_lib import tracing
from act_operator_lib._internal import node_classes
from act_operator_lib.metrics import record

__all__ = ["BlockingDetector", "Stall"]

logger = logging.getLogger("act_operator_lib.blocking")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stall:
    """One time the event loop was blocked for longer than the threshold."""

    node: str | None
    """The graph node that was running when the watchdog looked, or ``None`` if none was."""
    duration: float
    """Seconds the loop went without running its heartbeat (overstates by < ``interval``)."""
    stack: traceback.StackSummary
    """The loop thread's stack while blocked; its last frame is the blocking call's site.
    Empty when the stall ended before the watchdog looked."""

    def format(self, limit: int | None = 8) -> str:
        """A readable report: duration, node and the innermost ``limit`` frames of the
        stack (all with ``None``), the blocking call last."""
        where = f" in node {self.node!r}" if self.node else ""
        head = f"Event loop blocked {self.duration:.3f} s{where}"
        if not self.stack:
            return head
        frames = self.stack if limit is None else self.stack[-limit:]
        lines = traceback.StackSummary.from_list(frames).format()
        return f"{head}; stack of the blocking call:\n{''.join(lines)}".rstrip()


class BlockingDetector:
    """Report each event-loop stall longer than ``threshold`` seconds, by node.

        async with BlockingDetector(threshold=0.1, on_stall=print_it) as detector:
            await graph.ainvoke(...)
        detector.stalls  # [Stall(node='fetch', duration=0.203, stack=...)]

    ``on_stall(stall)`` runs in the loop thread for each stall; by default stalls are
    logged as warnings on the ``act_operator_lib.blocking`` logger. Each stall is also
    recorded as the ``event_loop_stall_seconds`` metric (when metrics are enabled) and,
    while ``tracing`` is enabled, is an event of that name on the blocked node's span.
    ``interval`` (default: a fifth of the threshold, at most 10 ms) is how often the
    heartbeat runs, i.e. the precision of the measured durations.
    """

    __slots__ = (
        "_handle",
        "_last_beat",
        "_loop",
        "_loop_thread_id",
        "_sample",
        "_stopping",
        "_watchdog",
        "caught_at",
        "interval",
        "on_stall",
        "stalls",
        "threshold",
    )

    def __init__(
        self,
        threshold: float = 0.1,
        *,
        on_stall: Callable[[Stall], object] | None = None,
        interval: float | None = None,
    ) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
            or threshold <= 0
        ):
            raise ValueError(
                f"BlockingDetector threshold must be a number of seconds > 0, got {threshold!r}"
            )
        if interval is None:
            interval = min(threshold / 5, 0.01)
        elif (
            not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or not 0 < interval <= threshold
        ):
            raise ValueError(
                f"BlockingDetector interval must be > 0 and <= threshold ({threshold}), got {interval!r}"
            )
        if on_stall is not None and not callable(on_stall):
            raise TypeError(
                f"BlockingDetector on_stall must be a callable taking a Stall, got {type(on_stall).__name__}"
            )
        self.threshold = float(threshold)
        self.interval = float(interval)
        self.on_stall = on_stall
        self.stalls: list[Stall] = []
        """Every stall seen so far, oldest first."""
        self.caught_at = 0.0
        """When (``time.monotonic()``) the watchdog last took a blocked loop's stack; a
        stall it saw only after it ended has an empty ``stack``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id = 0
        self._handle: asyncio.TimerHandle | None = None
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_beat = 0.0
        # (beat it belongs to, node, stack, the node's span when tracing), written by the
        # watchdog, read by the beat.
        self._sample: tuple[float, str | None, traceback.StackSummary, Any] | None = None

    @property
    def running(self) -> bool:
        """Whether the detector is watching a loop."""
        return self._watchdog is not None

    def start(self) -> None:
        """Start watching the running loop; call it from a coroutine on that loop."""
        if self._watchdog is not None:
            raise RuntimeError("BlockingDetector is already running; stop() it first")
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._stopping.clear()
        self._last_beat = time.monotonic()
        self._handle = self._loop.call_later(self.interval, self._beat)
        self._watchdog = threading.Thread(
            target=self._watch, name="act-operator-blocking-detector", daemon=True
        )
        self._watchdog.start()

    def stop(self) -> None:
        """Stop watching: cancel the heartbeat and end the watchdog thread. Call it from
        the loop's thread, like ``start()``; a no-op when not running."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None
        self._loop = None

    async def watch(self, work: Awaitable[T]) -> T:
        """Await ``work`` with the detector running: ``run_sync(detector.watch(graph.ainvoke(x)))``."""
        async with self:
            return await work

    async def __aenter__(self) -> BlockingDetector:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- in the loop thread ------------------------------------------------------------

    def _beat(self) -> None:
        now = time.monotonic()
        previous, self._last_beat = self._last_beat, now
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval, self._beat)
        gap = now - previous
        if gap <= self.threshold:
            return
        sample, self._sample = self._sample, None
        node, stack, span = None, traceback.StackSummary(), None
        if sample is not None and sample[0] == previous:
            _, node, stack, span = sample
        stall = Stall(node=node, duration=gap, stack=stack)
        self.stalls.append(stall)
        record("event_loop_stall_seconds", gap, node=node or "")
        if span is not None:
            tracing._stall_ended(span, gap)
        if self.on_stall is not None:
            self.on_stall(stall)
        else:
            logger.warning("%s", stall.format(), extra={"node": node})

    # -- in the watchdog thread --------------------------------------------------------

    def _watch(self) -> None:
        # Look once the heartbeat is overdue, halfway to the threshold: early enough to
        # catch a stall just over it with its blocking call still on the stack. A stall that
        # goes on is looked at again every threshold (the last look is reported): the first
        # look may have found the loop idle in its selector (the process got no CPU) or in
        # code that ran just before the blocking call.
        overdue = self.interval + self.threshold / 2
        looked_beat, looked_at, idle = None, 0.0, False  # idle: found in its selector
        while not self._stopping.wait(self.interval):
            last_beat = self._last_beat
            now = time.monotonic()
            if now - last_beat < overdue:
                continue
            if last_beat == looked_beat and now - looked_at < self.threshold and not idle:
                continue
            frame = sys._current_frames().get(self._loop_thread_id)
            if frame is None:
                continue
            looked_beat, looked_at = last_beat, now
            idle = _idle(frame)
            node = _node_on_stack(frame)
            # While tracing, the stall becomes an event on the blocked node's span.
            started = time.time_ns() - int((now - last_beat) * 1e9)
            span = tracing._stall_began(frame, started, node)
            self._sample = (last_beat, node, traceback.extract_stack(frame), span)
            self.caught_at = now
            del frame  # do not keep the loop thread's frames alive


def _idle(frame: FrameType) -> bool:
    """Whether the loop thread is in its selector's wait (between callbacks, not in one)."""
    return frame.f_code.co_name in ("select", "poll", "control") and (
        "selectors" in frame.f_code.co_filename
    )


def _node_on_stack(frame: FrameType) -> str | None:
    """The innermost graph node on ``frame``'s stack: its name in the graph if LangGraph
    passed a config down to it, else the ``name`` of the ``BaseNode`` running there."""
    executes = {node_classes.execute_code(cls) for cls in node_classes.registered()}
    node_name = None
    current: FrameType | None = frame
    while current is not None:
        code = current.f_code
        if node_name is None and code in executes:
            node_name = getattr(current.f_locals.get("self"), "name", None)
        elif "config" in code.co_varnames:
            graph_name = _graph_node_name(current.f_locals.get("config"))
            if graph_name is not None:
                return graph_name
        current = current.f_back
    return node_name


def _graph_node_name(config: Any) -> str | None:
    if isinstance(config, Mapping):
        metadata = config.get("metadata")
        if isinstance(metadata, Mapping):
            name = metadata.get("langgraph_node")
            return name if isinstance(name, str) else None
    return None
