"""Resource lifecycle: close every pool with one call, drain in-flight runs, stop on SIGTERM.

    resources = Resources(drain_timeout=30)
    http = resources.add(HttpClient(HttpSettings(timeout=10)))   # anything with aclose()/close()
    db = resources.add(PostgresPool(PostgresSettings(dsn=DSN)))
    async with resources:                                        # or: await resources.aclose()
        result = await resources.run(graph, {"url": ...})        # a tracked, drainable run

    # A long-running worker: processes jobs until SIGTERM/SIGINT, then drains and exits.
    report = await run_worker(graph, jobs, resources, concurrency=8)

    # One value per running event loop, closed when that loop shuts down (recipes' pools).
    sessions = PerLoop(close=lambda s: s.close())
    session = sessions.get(aiohttp.ClientSession)

``drain()`` stops new runs, asks every in-flight run to stop at its next superstep
boundary through LangGraph's own ``RunControl.request_drain()`` (the run raises
``GraphDrained``; with a checkpointer it resumes later from where it stopped), waits up
to ``drain_timeout`` for them, cancels what is left, then closes the resources in the
reverse order they were added.

When to use LangGraph's native tools instead: a single ``graph.ainvoke(..., control=
RunControl())`` with your own signal handler is all you need when the process owns no
pools; ``langgraph dev``/LangGraph Platform servers drain runs themselves. This recipe
adds what they lack: one owner for the sessions, pools and executors the nodes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphDrained
from langgraph.runtime import RunControl

__all__ = [
    "Job",
    "PerLoop",
    "ResourceClosedError",
    "Resources",
    "WorkerReport",
    "close_at_loop_shutdown",
    "run_worker",
]

logger = logging.getLogger("act_operator_lib.cookbook.resources")

T = TypeVar("T")


class ResourceClosedError(RuntimeError):
    """Raised when work is started on resources that are draining or closed."""


class Resources:
    """Owns the pooled resources a graph's nodes use and the runs that use them.

    For example:

        async with Resources() as resources:
            http = resources.add(HttpClient())
            await resources.run(graph, {"url": "http://127.0.0.1:8080/json"})
        # every added resource is closed here, last added first
    """

    __slots__ = ("_closed", "_draining", "_resources", "_runs", "drain_timeout")

    def __init__(self, *, drain_timeout: float = 30.0) -> None:
        if not isinstance(drain_timeout, int | float) or drain_timeout < 0:
            raise ValueError(
                f"Resources drain_timeout must be a number >= 0, got {drain_timeout!r}"
            )
        self.drain_timeout = float(drain_timeout)
        self._resources: list[Any] = []
        self._runs: dict[asyncio.Task[Any], RunControl] = {}
        self._draining = False
        self._closed = False

    @property
    def draining(self) -> bool:
        """True once ``drain()`` or ``aclose()`` started: no new runs are accepted."""
        return self._draining

    @property
    def in_flight(self) -> int:
        """How many runs started through ``run()`` have not finished yet."""
        return len(self._runs)

    def add(self, resource: T) -> T:
        """Register ``resource`` (it has ``aclose()`` or ``close()``) and return it."""
        if self._closed:
            raise ResourceClosedError(f"cannot add {resource!r}: these resources are closed")
        if not callable(getattr(resource, "aclose", None)) and not callable(
            getattr(resource, "close", None)
        ):
            raise TypeError(
                f"Resources.add() needs an object with aclose() or close(), got {type(resource).__name__}"
            )
        self._resources.append(resource)
        return resource

    async def run(
        self, graph: Any, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """``await graph.ainvoke(input, config, **kwargs)``, tracked so ``drain()`` can stop it.

        Raises ``ResourceClosedError`` when draining, and ``GraphDrained`` when a drain
        stopped this run (at a superstep boundary, or by cancellation after the timeout).
        """
        if self._draining:
            raise ResourceClosedError("not starting a run: resources are draining")
        control = RunControl()
        task = asyncio.ensure_future(graph.ainvoke(input, config, control=control, **kwargs))
        self._runs[task] = control
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled, not drained
            raise GraphDrained(control.drain_reason or "cancelled by drain") from None
        finally:
            self._runs.pop(task, None)

    async def drain(self, grace: float | None = None, *, reason: str = "shutdown") -> int:
        """Stop new runs, let in-flight ones stop at a superstep boundary, cancel stragglers.

        Waits up to ``grace`` seconds (default ``drain_timeout``) and returns how many
        runs had to be cancelled.
        """
        self._draining = True
        timeout = self.drain_timeout if grace is None else grace
        for control in self._runs.values():
            control.request_drain(reason)
        tasks = list(self._runs)
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            straggler = self._runs.get(task)
            if straggler is not None:
                straggler.request_drain(f"{reason}: drain timed out after {timeout:g}s")
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            logger.warning("drain cancelled %d run(s) after %.3gs", len(pending), timeout)
        return len(pending)

    async def aclose(self) -> None:
        """Drain, then close every resource, last added first. Safe to call twice."""
        if self._closed:
            return
        await self.drain()
        self._closed = True
        errors: list[Exception] = []
        while self._resources:
            resource = self._resources.pop()
            try:
                closer = getattr(resource, "aclose", None) or resource.close
                result = closer()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # close the others anyway, report all at the end
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("closing resources failed", errors)

    async def __aenter__(self) -> Resources:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "draining" if self._draining else "open"
        return f"Resources({state}, resources={len(self._resources)}, in_flight={self.in_flight})"


def close_at_loop_shutdown(close: Callable[[], Awaitable[object]]) -> Callable[[], None]:
    """Run ``await close()`` when the running loop shuts down (``asyncio.run`` exit).

        disarm = close_at_loop_shutdown(session.close)
        ...
        await session.close(); disarm()   # closed by hand: cancel the arrangement

    ``asyncio.run`` finalises unfinished async generators in ``loop.shutdown_asyncgens()``
    while the loop still runs, so a parked generator's ``finally`` is the one portable
    hook (asyncio and uvloop) to close a loop-bound pool before its loop is gone.
    """
    asyncio.get_running_loop()  # only a running loop installs the async generator hooks
    armed = True

    async def guard() -> Any:
        nonlocal armed
        try:
            yield
        finally:
            _parked.discard(agen)
            if armed:
                armed = False  # close() may call disarm(): make it a no-op
                await close()

    def disarm() -> None:
        nonlocal armed
        if not armed:
            return
        armed = False
        # Finish the generator now (its finally has nothing to await) so no finaliser
        # runs later on a loop that may be closed.
        with contextlib.suppress(StopAsyncIteration):
            agen.asend(None).send(None)

    agen = guard()
    # asend() registers the generator with the running loop; the first step runs
    # synchronously up to the yield.
    with contextlib.suppress(StopIteration):
        agen.asend(None).send(None)
    _parked.add(agen)
    return disarm


# The loop holds parked guards weakly: keep them alive until they ran.
_parked: set[Any] = set()


class PerLoop(Generic[T]):
    """One value per running event loop (and key): made on first use, closed when that loop
    shuts down. The registry behind every "one session/pool/semaphore per loop" recipe.

        sessions = PerLoop(close=lambda s: s.close(), is_closed=lambda s: s.closed)
        session = sessions.get(aiohttp.ClientSession)                 # this loop's, made once
        pool = await pools.aget(lambda: asyncpg.create_pool(dsn), dsn)  # async make, keyed
        await sessions.aclose()                                       # close this loop's now
        sessions.items()                                              # [(loop, key, value)]

    Loop-bound objects (asyncio primitives, aiohttp sessions, asyncpg pools, redis clients)
    must never be used from another loop, so each ``asyncio.run`` (or uvloop runner, or
    thread with its own loop) gets its own value. A value is closed when its loop shuts
    down (``close_at_loop_shutdown``), by ``aclose()``, or, if ``is_closed`` says it was
    closed elsewhere, replaced at the next ``get``. A loop closed without shutting down
    (``loop.close()`` alone) cannot run ``close``: its values are forgotten at the next
    creation or inspection. ``forgotten(value)`` is called once for every value that
    leaves, whichever way (for gauges). Values are held strongly: a ``WeakKeyDictionary``
    keyed by loop never lets go, because the values themselves reference their loop.
    Thread-safe; creation for one (loop, key) happens once, also under concurrent first calls.
    """

    __slots__ = ("_close", "_creating", "_entries", "_forgotten", "_is_closed", "_lock")

    def __init__(
        self,
        *,
        close: Callable[[T], Awaitable[object]] | None = None,
        is_closed: Callable[[T], bool] | None = None,
        forgotten: Callable[[T], object] | None = None,
    ) -> None:
        for field, value in (("close", close), ("is_closed", is_closed), ("forgotten", forgotten)):
            if value is not None and not callable(value):
                raise TypeError(f"PerLoop {field} must be callable or None, got {value!r}")
        self._close = close
        self._is_closed = is_closed
        self._forgotten = forgotten
        self._entries: dict[asyncio.AbstractEventLoop, dict[Hashable, _Entry[T]]] = {}
        self._creating: dict[tuple[asyncio.AbstractEventLoop, Hashable], asyncio.Lock] = {}
        # Reentrant: is_closed/forgotten callbacks may run while it is held.
        self._lock = threading.RLock()

    def get(self, make: Callable[[], T], key: Hashable = None) -> T:
        """The running loop's value for ``key``, made by ``make()`` on first use."""
        loop = asyncio.get_running_loop()
        entry = self._find(loop, key)
        if entry is not None:
            return entry.value
        with self._lock:  # make() never awaits: holding a thread lock keeps it to one call
            entry = self._find(loop, key)
            if entry is not None:
                return entry.value
            self._sweep()
            value = make()
            self._store(loop, key, value)
            return value

    async def aget(self, make: Callable[[], Awaitable[T]], key: Hashable = None) -> T:
        """``get`` for an async ``make``: concurrent first calls on a loop share one creation.

        A ``make()`` that fails or is cancelled stores nothing; the next caller tries again.
        """
        loop = asyncio.get_running_loop()
        entry = self._find(loop, key)
        if entry is not None:
            return entry.value
        with self._lock:
            creating = self._creating.setdefault((loop, key), asyncio.Lock())
        async with creating:
            entry = self._find(loop, key)
            if entry is not None:
                return entry.value
            value = await make()
            with self._lock:
                self._sweep()
                self._store(loop, key, value)
                # Later callers find the value: the lock is only needed until it exists.
                self._creating.pop((loop, key), None)
            return value

    def current(self, key: Hashable = None) -> T | None:
        """The running loop's value for ``key`` if there is one; never makes one."""
        entry = self._find(asyncio.get_running_loop(), key)
        return None if entry is None else entry.value

    def loop_keys(self) -> list[Hashable]:
        """The keys the running loop has values for."""
        loop = asyncio.get_running_loop()
        with self._lock:
            return list(self._entries.get(loop, ()))

    def items(self) -> list[tuple[asyncio.AbstractEventLoop, Hashable, T]]:
        """Every value held, as ``(loop, key, value)``; values of dead loops are forgotten first.

        For inspection (tests, metrics): what is open right now, on which loop.
        """
        with self._lock:
            self._sweep()
            return [
                (loop, key, entry.value)
                for loop, entries in self._entries.items()
                for key, entry in entries.items()
            ]

    def __len__(self) -> int:
        return len(self.items())

    async def aclose(self, key: Hashable = None) -> None:
        """Close the running loop's value for ``key`` now; the next ``get`` makes a new one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._entries.get(loop, {}).get(key)
            if entry is None or not self._remove(loop, key, entry):
                return
        entry.disarm()
        await self._release(entry.value)

    async def _shutdown(
        self, loop: asyncio.AbstractEventLoop, key: Hashable, entry: _Entry[T]
    ) -> None:
        """At loop shutdown: close the value unless ``aclose`` or a sweep removed it first."""
        with self._lock:
            if not self._remove(loop, key, entry):
                return
        await self._release(entry.value)

    async def _release(self, value: T) -> None:
        if self._forgotten is not None:
            self._forgotten(value)
        if self._close is not None:
            await self._close(value)

    def _find(self, loop: asyncio.AbstractEventLoop, key: Hashable) -> _Entry[T] | None:
        entries = self._entries.get(loop)
        entry = None if entries is None else entries.get(key)
        if entry is not None and self._is_closed is not None and self._is_closed(entry.value):
            self._drop(loop, key, entry)  # closed elsewhere: replace it
            return None
        return entry

    def _store(self, loop: asyncio.AbstractEventLoop, key: Hashable, value: T) -> None:
        entry = _Entry(value)
        self._entries.setdefault(loop, {})[key] = entry
        entry.disarm = close_at_loop_shutdown(lambda: self._shutdown(loop, key, entry))

    def _remove(self, loop: asyncio.AbstractEventLoop, key: Hashable, entry: _Entry[T]) -> bool:
        """Unregister ``entry`` if it is still registered; the caller holds the lock."""
        entries = self._entries.get(loop)
        if entries is None or entries.get(key) is not entry:
            return False
        del entries[key]
        if not entries:
            del self._entries[loop]
        return True

    def _drop(self, loop: asyncio.AbstractEventLoop, key: Hashable, entry: _Entry[T]) -> None:
        """Forget ``entry`` without closing it (closed elsewhere, or its loop is dead)."""
        with self._lock:
            if not self._remove(loop, key, entry):
                return
        entry.disarm()
        if self._forgotten is not None:
            self._forgotten(entry.value)

    def _sweep(self) -> None:
        """Forget what loops closed without shutting down left behind; the lock is held."""
        for loop in [loop for loop in self._entries if loop.is_closed()]:
            for key, entry in list(self._entries[loop].items()):
                self._drop(loop, key, entry)
        for pending in [k for k in self._creating if k[0].is_closed()]:
            del self._creating[pending]

    def __repr__(self) -> str:
        return f"PerLoop(loops={len(self._entries)}, values={len(self.items())})"


class _Entry(Generic[T]):
    """A value and the handle that cancels its loop-shutdown close."""

    __slots__ = ("disarm", "value")

    def __init__(self, value: T) -> None:
        self.value = value
        self.disarm: Callable[[], None] = _nothing


def _nothing() -> None:
    pass


class Job(NamedTuple):
    """One graph run for ``run_worker``: its input and config."""

    input: Any
    config: RunnableConfig | None = None


@dataclass(slots=True, kw_only=True)
class WorkerReport:
    """What ``run_worker`` did before it stopped."""

    completed: int = 0
    """Runs that finished."""
    drained: int = 0
    """Runs stopped by the drain (resumable from their checkpoint)."""
    failed: int = 0
    """Runs that raised."""
    signal: str | None = None
    """The signal that stopped the worker, or None when the jobs ran out."""


async def run_worker(
    graph: Any,
    jobs: AsyncIterable[Job],
    resources: Resources,
    *,
    concurrency: int = 8,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    on_result: Callable[[Job, Any], object] | None = None,
) -> WorkerReport:
    """Run graph jobs until they run out or a signal arrives; then drain and close ``resources``.

        report = await run_worker(graph, jobs_from_queue(), resources, concurrency=8)

    ``on_result(job, result_or_exception)`` sees every finished run. Install no other
    handler for ``signals`` meanwhile. On return each signal gets back exactly the handler
    it had before: a ``signal.signal`` handler (the application's own, or ``asyncio.run``'s
    Ctrl-C handler) or a ``loop.add_signal_handler`` callback. (Changed: before, they were
    reset to the default action, which lost the application's handler.)
    """
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"run_worker concurrency must be an int >= 1, got {concurrency!r}")
    loop = asyncio.get_running_loop()
    report = WorkerReport()
    stop = asyncio.Event()
    slots = asyncio.Semaphore(concurrency)

    def on_signal(sig: signal.Signals) -> None:
        report.signal = sig.name
        stop.set()

    previous = {sig: _installed_handler(loop, sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)

    async def run_one(job: Job) -> None:
        try:
            outcome: Any = await resources.run(graph, job.input, job.config)
            report.completed += 1
        except GraphDrained as exc:
            outcome = exc
            report.drained += 1
        except Exception as exc:  # one failed run never stops the worker
            outcome = exc
            report.failed += 1
            logger.exception("graph run failed")
        finally:
            slots.release()
        if on_result is not None:
            on_result(job, outcome)

    stopping = asyncio.ensure_future(stop.wait())
    iterator = aiter(jobs)
    try:
        async with asyncio.TaskGroup() as runs:
            while not stop.is_set():
                acquiring = asyncio.ensure_future(slots.acquire())
                await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    acquiring.cancel()
                    await asyncio.wait({acquiring})
                    break
                next_job = asyncio.ensure_future(anext(iterator, None))
                await asyncio.wait({next_job, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not next_job.done():
                    next_job.cancel()
                    await asyncio.wait({next_job})
                    slots.release()
                    break
                job = next_job.result()
                if job is None:
                    slots.release()
                    break
                runs.create_task(run_one(job))
            # Stop taking jobs; the in-flight runs finish or stop at a superstep boundary.
            await asyncio.sleep(0)  # let a just-created run register before the drain
            await resources.drain()
    finally:
        stopping.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
            _reinstall(loop, sig, previous[sig])
        aclose_jobs = getattr(iterator, "aclose", None)
        if aclose_jobs is not None:
            await aclose_jobs()
        await resources.aclose()
    return report


def _installed_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> Any:
    """What handles ``sig`` now: the loop's callback handle, or the ``signal`` handler."""
    # asyncio keeps add_signal_handler callbacks in a private dict (no public getter);
    # other loops without it fall back to the process-level handler.
    loop_handlers = getattr(loop, "_signal_handlers", None)
    if isinstance(loop_handlers, dict) and sig in loop_handlers:
        return loop_handlers[sig]
    return signal.getsignal(sig)


def _reinstall(loop: asyncio.AbstractEventLoop, sig: signal.Signals, handler: Any) -> None:
    if isinstance(handler, asyncio.Handle):
        if not handler.cancelled():
            callback, args = handler._callback, handler._args  # type: ignore[attr-defined]
            loop.add_signal_handler(sig, callback, *args)
    elif handler is not None:  # None: installed outside Python, nothing to restore
        signal.signal(sig, handler)


if __name__ == "__main__":
    import operator
    from typing import Annotated, TypedDict

    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import StateGraph

    from act_operator_lib.base_node import AsyncBaseNode

    class State(TypedDict):
        steps: Annotated[list[str], operator.add]

    class Step(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            print(f"running {self.name}")
            await asyncio.sleep(0.2)
            return {"steps": [self.name]}

    class Pool:
        """Stands in for a session or pool: reports when it is closed."""

        async def aclose(self) -> None:
            print("pool closed")

    builder = StateGraph(State)
    for name in ("a", "b", "c"):
        builder.add_node(name, Step(name=name))
    builder.add_edge("__start__", "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c")
    graph = builder.compile(checkpointer=InMemorySaver())

    async def main() -> None:
        resources = Resources(drain_timeout=1.0)
        resources.add(Pool())
        config: RunnableConfig = {"configurable": {"thread_id": "demo"}}
        run = asyncio.ensure_future(resources.run(graph, {"steps": []}, config))
        await asyncio.sleep(0.3)  # "a" is done, "b" is running
        await resources.aclose()  # drains: "b" finishes, "c" never starts
        try:
            await run
        except GraphDrained as exc:
            print(f"run stopped: {exc}")
        state = await graph.aget_state(config)
        print(f"completed steps: {state.values['steps']}, next: {list(state.next)}")
        resumed = await graph.ainvoke(None, config)
        print(f"resumed to the end: {resumed['steps']}")

    asyncio.run(main())
