"""Blocking-code offload: run sync functions from async nodes in a bounded thread or process pool.

    threads = Offloader(OffloadSettings(max_workers=4))                 # context vars kept
    digest = await threads.run(hashlib.sha256, data)                     # in a worker thread
    cpu = Offloader(OffloadSettings(kind="process", max_workers=2))
    primes = await cpu.run(count_primes, 200_000)                        # in a worker process
    await threads.aclose(); await cpu.aclose()                           # or resources.add(...)

    builder.add_node(BlockingCall(cpu, count_primes, input_key="n", output_key="primes"))

At most ``max_workers`` calls run at once; more callers wait in asyncio (cancellable)
rather than piling up in the executor's queue. A thread call runs in a copy of the
caller's ``contextvars`` context, as ``asyncio.to_thread`` does. A cancelled caller
whose call has not started yet never runs it; one already running in a thread cannot be
interrupted, so its slot stays taken until it returns: the bound always holds.
The pool is created on first use (a process pool off the event loop, so the first call
does not block it) and shut down by ``aclose()`` (or ``Resources``).

Changed: after ``aclose()`` the offloader stays closed: callers waiting for a slot and
every later ``run()`` raise ``ResourceClosedError`` (before, they silently started a new
pool that outlived the close). A process pool whose worker died (``os._exit``, SIGKILL,
out-of-memory kill) is replaced: the calls it was running fail with ``BrokenProcessPool``,
later calls run in a fresh pool. A process call that cannot be pickled raises
``UnpicklableCallError`` (a ``TypeError``) naming the function or argument at fault.

When to use LangGraph's native tools instead: a whole blocking node needs nothing here,
make it a sync ``def`` node (``BaseNode``); under ``ainvoke`` LangGraph already runs it
in a thread with the context copied. Use this recipe when an async node calls blocking
code midway, when blocking work must be bounded separately from the default executor,
or for CPU-bound work that needs processes to escape the GIL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import multiprocessing
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.validate import check_choice, check_int, check_str

from .resources import PerLoop, ResourceClosedError, Resources

__all__ = ["BlockingCall", "OffloadSettings", "Offloader", "UnpicklableCallError"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadSettings:
    """Which pool and how big."""

    kind: Literal["thread", "process"] = "thread"
    """``"thread"`` for blocking I/O or C code that releases the GIL; ``"process"`` for CPU-bound Python."""
    max_workers: int = 4
    """Calls running at once (threads or processes in the pool)."""
    start_method: Literal["spawn", "forkserver", "fork"] = "forkserver"
    """How worker processes start: ``forkserver`` (POSIX) and ``spawn`` are safe in a threaded program; forkserver imports the modules once, not once per worker."""
    name: str = "offload"
    """Thread-name prefix and metrics label."""

    def __post_init__(self) -> None:
        check_choice("OffloadSettings", "kind", self.kind, ("thread", "process"))
        check_int("OffloadSettings", "max_workers", self.max_workers, min=1)
        methods = ("spawn", "forkserver", "fork")
        check_choice("OffloadSettings", "start_method", self.start_method, methods)
        check_str("OffloadSettings", "name", self.name)


class UnpicklableCallError(TypeError):
    """A process-pool call whose function or arguments cannot be pickled to a worker."""


class Offloader:
    """A bounded thread or process pool for sync functions called from async code.

    For example:

        pool = Offloader(OffloadSettings(max_workers=2))
        size = await pool.run(os.path.getsize, "/etc/hosts")
    """

    __slots__ = ("_closed", "_executor", "_guard", "_slots", "settings")

    def __init__(
        self, settings: OffloadSettings | None = None, *, resources: Resources | None = None
    ) -> None:
        if settings is not None and not isinstance(settings, OffloadSettings):
            raise TypeError(
                f"Offloader settings must be OffloadSettings, got {type(settings).__name__}"
            )
        self.settings = settings or OffloadSettings()
        self._executor: concurrent.futures.Executor | None = None
        self._closed = False
        self._guard = threading.Lock()
        # Semaphores belong to one loop: one per loop using this pool, forgotten when that
        # loop shuts down.
        self._slots: PerLoop[asyncio.Semaphore] = PerLoop()
        if resources is not None:
            resources.add(self)

    def _new_slots(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.settings.max_workers)

    def _closed_error(self) -> ResourceClosedError:
        return ResourceClosedError(f"Offloader {self.settings.name!r} is closed")

    def _pool(self) -> concurrent.futures.Executor:
        """The open pool, created if needed (a process pool: call this off the loop)."""
        with self._guard:
            if self._closed:
                raise self._closed_error()
            if self._executor is None:
                settings = self.settings
                if settings.kind == "thread":
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        settings.max_workers, thread_name_prefix=settings.name
                    )
                else:
                    self._executor = _start_process_pool(settings)
                record("pool_size", float(settings.max_workers), name=settings.name)  # a gauge
            return self._executor

    async def _submit(
        self, call: Callable[[], Any]
    ) -> tuple[concurrent.futures.Executor, concurrent.futures.Future[Any]]:
        executor = self._executor
        if executor is None:
            # Starting processes writes to pipes and forks: never on the event loop.
            executor = self._pool() if self.settings.kind == "thread" else None
            if executor is None:
                executor = await asyncio.to_thread(self._pool)
        try:
            return executor, executor.submit(call)
        except BrokenProcessPool:
            # A worker died since the last call: this call never reached that pool,
            # so it may run in a fresh one.
            self._discard(executor)
            executor = await asyncio.to_thread(self._pool)
            return executor, executor.submit(call)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            if self._closed:
                raise self._closed_error() from None
            raise

    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` in the pool; its result, or its exception raised here.

        Raises ``ResourceClosedError`` once ``aclose()`` has started, and for a process
        pool ``UnpicklableCallError`` when ``fn`` or an argument cannot be pickled and
        ``BrokenProcessPool`` when the worker running the call died.
        """
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        slots = self._slots.get(self._new_slots)
        if slots.locked():
            record("pool_waits", 1.0, name=self.settings.name)
        await slots.acquire()
        try:
            if self._closed:
                raise self._closed_error()  # woken by aclose(); the finally wakes the next
            if self.settings.kind == "thread":
                call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            else:
                call = functools.partial(fn, *args, **kwargs)  # must be picklable
            executor, work = await self._submit(call)
        except BaseException:
            slots.release()
            raise
        # The slot is freed when the work ends, not when the caller stops waiting: a
        # running thread cannot be interrupted and still occupies a worker.
        work.add_done_callback(functools.partial(_release_from_thread, loop, slots))
        try:
            return await asyncio.wrap_future(work)
        except BrokenProcessPool:
            self._discard(executor)
            raise
        except (TypeError, AttributeError, pickle.PicklingError) as exc:
            if self.settings.kind != "process":
                raise
            # Pickling failures surface as the error the object raised, like an error of
            # fn itself: tell them apart by pickling the pieces again (failures only).
            culprit = await asyncio.to_thread(_unpicklable_part, fn, args, kwargs)
            if culprit is None:
                raise
            raise UnpicklableCallError(
                f"Offloader {self.settings.name!r} cannot send {culprit} to a worker process:"
                f" {exc}; a process pool needs a module-level function and picklable arguments"
            ) from exc

    def _discard(self, broken: concurrent.futures.Executor) -> None:
        """Drop a pool whose worker died, so the next call starts a fresh one."""
        with self._guard:
            if self._executor is not broken:
                return  # already replaced by another caller
            self._executor = None
        record("pool_size", -float(self.settings.max_workers), name=self.settings.name)
        # Its workers are already terminated; wait=False only marks it shut down.
        broken.shutdown(wait=False, cancel_futures=True)

    def _detach(self) -> concurrent.futures.Executor | None:
        """Close the offloader for good and return the pool to shut down, if any."""
        with self._guard:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            record("pool_size", -float(self.settings.max_workers), name=self.settings.name)
        # Wake one waiter per loop: it sees the close, fails, and wakes the next one.
        for loop, _, slots in self._slots.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(slots.release)
        return executor

    async def aclose(self) -> None:
        """Shut the pool down for good: callers waiting for a slot and later calls raise
        ``ResourceClosedError``; calls already running finish first."""
        # The guard may be held by a thread starting a process pool: wait off the loop.
        if executor := await asyncio.to_thread(self._detach):
            # shutdown(wait=True) blocks: wait in a helper thread, not on the loop.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    def close(self) -> None:
        """``aclose()`` for sync code."""
        if executor := self._detach():
            executor.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        s = self.settings
        return f"Offloader(kind={s.kind!r}, max_workers={s.max_workers}, open={self._executor is not None})"


def _start_process_pool(settings: OffloadSettings) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool with every worker started (this blocks: run it in a thread)."""
    executor = concurrent.futures.ProcessPoolExecutor(
        settings.max_workers, mp_context=multiprocessing.get_context(settings.start_method)
    )
    # Workers start one per submit while none is idle: overlapping warm-up calls start
    # them all here, so no later submit forks from the event loop.
    try:
        warm_up = [executor.submit(_pause, 0.05) for _ in range(settings.max_workers)]
        for work in warm_up:
            work.result()
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    return executor


def _pause(seconds: float) -> None:
    time.sleep(seconds)  # by reference: a patched time.sleep (blockbuster) may not pickle


def _unpicklable_part(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Which of ``fn``, ``args`` and ``kwargs`` cannot be pickled, or None."""
    parts = [(f"the function {getattr(fn, '__qualname__', repr(fn))}", fn)]
    parts += [(f"argument {i} ({type(arg).__name__})", arg) for i, arg in enumerate(args, 1)]
    parts += [(f"keyword argument {k!r} ({type(v).__name__})", v) for k, v in kwargs.items()]
    for name, value in parts:
        try:
            pickle.dumps(value)
        except Exception:
            return name
    return None


def _release_from_thread(
    loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore, _: concurrent.futures.Future[Any]
) -> None:
    """Release ``slots`` on its loop (done callbacks run in the worker thread)."""
    if loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # the loop closed in between
        loop.call_soon_threadsafe(slots.release)


class BlockingCall(AsyncBaseNode):
    """A node calling ``fn(state[input_key])`` in an ``Offloader`` and storing the result.

    For example:

        builder.add_node(BlockingCall(cpu, count_primes, input_key="n", output_key="primes"))
    """

    def __init__(
        self,
        pool: Offloader,
        fn: Callable[[Any], Any],
        *,
        input_key: str,
        output_key: str,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not isinstance(pool, Offloader):
            raise TypeError(f"BlockingCall pool must be an Offloader, got {type(pool).__name__}")
        if not callable(fn):
            raise TypeError(f"BlockingCall fn must be callable, got {type(fn).__name__}")
        self.pool = pool
        self.fn = fn
        self.input_key = input_key
        self.output_key = output_key

    async def execute(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {self.output_key: await self.pool.run(self.fn, state[self.input_key])}


def count_primes(limit: int) -> int:
    """Primes below ``limit``, by trial division: deliberately CPU-bound."""
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


if __name__ == "__main__":
    import hashlib
    import time
    from typing import TypedDict

    from langgraph.graph import StateGraph

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

    def tagged_digest(data: bytes) -> str:
        # Runs in a worker thread, yet sees the caller's context variable.
        return f"{request_id.get()}:{hashlib.sha256(data).hexdigest()[:12]}"

    class State(TypedDict, total=False):
        n: int
        primes: int

    async def main() -> None:
        async with Resources() as resources:
            threads = Offloader(OffloadSettings(max_workers=2), resources=resources)
            cpu = Offloader(OffloadSettings(kind="process", max_workers=2), resources=resources)
            request_id.set("req-42")
            print(f"thread digest: {await threads.run(tagged_digest, b'hello')}")

            builder = StateGraph(State)
            builder.add_node(BlockingCall(cpu, count_primes, input_key="n", output_key="primes"))
            builder.add_edge("__start__", "BlockingCall")
            graph = builder.compile()
            started = time.perf_counter()
            results = await asyncio.gather(*(graph.ainvoke({"n": 20_000}) for _ in range(2)))
            took = time.perf_counter() - started
            print(
                f"primes below 20000: {results[0]['primes']} (2 runs in worker processes, {took:.1f}s)"
            )

    asyncio.run(main())
