"""Run async graphs from sync code: scripts, notebooks, sync web frameworks.

    from act_operator_lib.sync import run_sync

    result = run_sync(graph.ainvoke({"question": "..."}))            # the final state
    chunks = run_sync(graph.astream({"question": "..."}, stream_mode="updates"))  # a list

With no event loop running in the calling thread, ``run_sync`` runs the call on a fresh
loop, exactly like ``asyncio.run``. Inside a running loop (a notebook cell, a sync
function called from async code) ``asyncio.run`` fails with "cannot be called from a
running event loop" and nesting loops (``nest_asyncio``) breaks libraries that hold
loop-bound resources; ``run_sync`` instead hands the call to one shared
``BackgroundLoop``: an event loop on a daemon thread of its own, kept across calls so
that pools and sessions made on it stay valid there, and closed with them at exit
(``atexit``) or by ``close_background_loop()``. The calling thread waits meanwhile.

For a script that makes many calls sharing pooled resources, use a ``BackgroundLoop``
of your own so they all run on one loop, and close it when done:

    with BackgroundLoop() as runner:
        runner.on_close(pool.close)
        for question in questions:
            print(runner.run(graph.ainvoke({"question": question})))

In async code, ``await graph.ainvoke(...)`` instead: it is what all of this wraps.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar, overload

__all__ = ["BackgroundLoop", "background_loop", "close_background_loop", "run_sync"]

T = TypeVar("T")


@overload
def run_sync(work: Awaitable[T]) -> T: ...


@overload
def run_sync(work: AsyncIterable[T]) -> list[T]: ...


def run_sync(work: Awaitable[T] | AsyncIterable[T]) -> T | list[T]:
    """Run ``work`` to completion from sync code and return its result.

        run_sync(graph.ainvoke(inputs))            # what ainvoke returns
        run_sync(graph.astream(inputs))            # every chunk astream yields, as a list

    A fresh event loop when none is running in this thread; the shared background
    loop (see ``background_loop()``) when one is. Exceptions propagate unchanged.
    """
    coroutine = _as_coroutine(work, "run_sync()")
    result: T | list[T]
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        result = asyncio.run(coroutine)
    else:
        result = background_loop().run(coroutine)
    return result


class BackgroundLoop:
    """An event loop running in a daemon thread; run coroutines on it from any thread.

        with BackgroundLoop() as runner:
            state = runner.run(graph.ainvoke(inputs))

    Started on first use. ``close()`` runs the ``on_close`` callbacks on the loop (newest
    first), cancels whatever is still running there, finalises async generators and the
    default executor, then stops and closes the loop and joins its thread.
    """

    __slots__ = ("_closed", "_closers", "_lock", "_loop", "_thread", "name")

    def __init__(self, *, name: str = "act-operator-loop") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"BackgroundLoop name must be a non-empty string, got {name!r}")
        self.name = name
        """The loop thread's name."""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[Callable[[], object]] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (starting it if needed), e.g. for ``run_coroutine_threadsafe``."""
        with self._lock:
            return self._started_loop()

    def _started_loop(self) -> asyncio.AbstractEventLoop:
        # Called with self._lock held.
        if self._closed:
            raise RuntimeError(f"BackgroundLoop {self.name!r} is closed")
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            started = threading.Event()
            self._thread = threading.Thread(
                target=self._serve, args=(self._loop, started), name=self.name, daemon=True
            )
            self._thread.start()
            started.wait()
        return self._loop

    @overload
    def run(self, work: Awaitable[T]) -> T: ...

    @overload
    def run(self, work: AsyncIterable[T]) -> list[T]: ...

    def run(self, work: Awaitable[T] | AsyncIterable[T]) -> T | list[T]:
        """Run ``work`` on this loop and wait for its result (a list for async iterables).

        If the waiting thread is interrupted (``KeyboardInterrupt``), the work is
        cancelled and allowed to unwind before the interruption propagates.
        """
        coroutine = _as_coroutine(work, "BackgroundLoop.run()")
        done = threading.Event()
        tasks: list[asyncio.Task[Any]] = []

        def start() -> None:
            # Runs on the loop in the caller's context (call_soon_threadsafe copies it),
            # which the task inherits: config and tracing context vars carry over.
            task = loop.create_task(coroutine)
            task.add_done_callback(lambda _: done.set())
            tasks.append(task)

        def cancel() -> None:
            tasks[0].cancel()

        try:
            # Scheduled under the lock close() takes first, so a start() is always queued
            # before close()'s shutdown, which then cancels the task rather than losing it.
            with self._lock:
                loop = self._started_loop()
                if threading.current_thread() is self._thread:
                    raise RuntimeError(
                        f"BackgroundLoop.run() called on {self.name!r}'s own thread, which"
                        " would wait for itself forever; await the coroutine there instead"
                    )
                loop.call_soon_threadsafe(start)
        except BaseException:
            coroutine.close()  # never started: close it rather than warn "never awaited"
            raise
        try:
            done.wait()
        except BaseException:
            # Interrupted while waiting: stop the work too, and let it unwind (release its
            # connections, slots, files) before the interruption goes on. Callbacks run in
            # order, so the task exists by the time cancel() runs.
            loop.call_soon_threadsafe(cancel)
            done.wait()
            if not tasks[0].cancelled():
                tasks[0].exception()  # retrieved: no "exception was never retrieved" log
            raise
        result: T | list[T] = tasks[0].result()
        return result

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` on the loop when it closes, awaiting it if it returns an
        awaitable: how a pool or session made on this loop is closed with it.

            runner.on_close(session.close)
        """
        if not callable(callback):
            raise TypeError(
                f"BackgroundLoop.on_close() takes a callable, got {type(callback).__name__}"
            )
        with self._lock:
            if self._closed:
                raise RuntimeError(f"BackgroundLoop {self.name!r} is closed")
            self._closers.append(callback)

    def close(self) -> None:
        """Close what runs on the loop, then the loop and its thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, closers = self._loop, self._thread, self._closers[::-1]
            self._closers.clear()
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError(f"BackgroundLoop {self.name!r} cannot be closed from its own thread")
        try:
            asyncio.run_coroutine_threadsafe(_shut_down(loop, closers), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._loop else "not started"
        return f"BackgroundLoop(name={self.name!r}, {state})"

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()


_shared: BackgroundLoop | None = None
_shared_lock = threading.Lock()


def background_loop() -> BackgroundLoop:
    """The ``BackgroundLoop`` that ``run_sync`` uses inside running loops, made on first use
    (again after ``close_background_loop()``) and closed at interpreter exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed:
            if _shared is None:
                atexit.register(close_background_loop)
            _shared = BackgroundLoop(name="act-operator-run-sync")
        return _shared


def close_background_loop() -> None:
    """Close the shared background loop, if it was made, and what runs on it."""
    with _shared_lock:
        shared = _shared
    if shared is not None:
        shared.close()


def _as_coroutine(work: object, where: str) -> Coroutine[Any, Any, Any]:
    if inspect.iscoroutine(work):
        return work
    if inspect.isawaitable(work):
        return _await(work)
    if isinstance(work, AsyncIterable):
        return _collect(work)
    raise TypeError(
        f"{where} takes a coroutine (graph.ainvoke(...)) or an async iterable"
        f" (graph.astream(...)), got {type(work).__name__}"
    )


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _collect(items: AsyncIterable[T]) -> list[T]:
    aclose = getattr(items, "aclose", None)
    async with contextlib.AsyncExitStack() as stack:
        if aclose is not None:
            stack.push_async_callback(aclose)  # finalise the stream on the loop that ran it
        return [item async for item in items]


async def _shut_down(loop: asyncio.AbstractEventLoop, closers: list[Callable[[], object]]) -> None:
    errors: list[Exception] = []
    for close in closers:
        try:
            result = close()
            if inspect.isawaitable(result):
                await result
        except Exception as error:  # close the rest regardless; report all after
            errors.append(error)
    this = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks(loop) if task is not this]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()
    if errors:
        raise ExceptionGroup("BackgroundLoop on_close callbacks failed", errors)
