"""Adaptive concurrency limit: finds how much a dependency can take, and keeps under it.

    limiter = adaptive_limiter("search-api", AdaptiveLimit(min_limit=2, max_limit=256))
    async with limiter.slot():                  # waits while `limit` calls are in flight
        hits = await search(query)
    outcome = await bounded_map(search, queries, FanoutPolicy(limit=limiter))
    http = HttpClient(settings, limiter=limiter)  # every request of this client

A fixed limit is a guess: too low wastes the dependency's capacity, too high turns into
429s, timeouts and retries. This limit starts at ``initial_limit`` and moves by itself
between ``min_limit`` and ``max_limit``:

- **up while latency stays flat.** Each finished call reports its latency. As in TCP Vegas
  (Brakmo & Peterson, 1994), as adapted by Netflix's concurrency-limits ``VegasLimit``,
  the queue the limit builds at the dependency is estimated once per window of about
  ``limit`` calls (one round trip) as ``limit * (1 - baseline / latency)``, ``latency``
  being the window's median (robust to a few slow or lucky calls) and ``baseline`` the
  lowest window median seen lately (the dependency unloaded). At first the limit
  doubles every other window (Vegas' slow start) until a queue shows. Then, with
  ``log = log10(limit)``: no queue, + 6 log; up to 3 log calls queued, + log; 3 to 6
  log calls (for large limits: latency between halfway to ``tolerance`` and
  ``tolerance`` times the baseline, as Netflix's gradient tolerates), hold: this is the
  knee; more (latency rising above the baseline), - log.
- **down at once on overload.** A 429 or 503 (``HTTPStatusError`` of ``http_client``, or
  any exception with that ``status``) or a timeout (``TimeoutError``, which
  ``HTTPTimeoutError`` is) multiplies the limit by ``backoff`` (AIMD's multiplicative
  decrease), once per window of calls: rejections of calls admitted before the last
  decrease were that signal already; a call admitted since being rejected decreases it
  again.

Why Vegas rather than plain AIMD or the gradient: AIMD learns only from losses, so it has
to cause 429s to find the limit, again and again; Netflix's gradient compares a short to a
long moving average, whose baseline drifts up while the dependency stays overloaded. The
Vegas estimate reads the queue from the unloaded latency directly and settles at the knee,
before the dependency starts rejecting; the AIMD decrease remains for the overloads
latency cannot see (a quota, a 503 from a proxy).

Give each dependency (or each kind of call of similar cost) its own limiter: the
baseline is the unloaded latency of *these* calls, so a cheap health check through the
same limiter would make every real call look queued.

A cancelled call frees its slot and counts neither as a success nor as an overload; other
exceptions (a 404, a bug) free the slot and say nothing about capacity. Waiters are served
first come, first served. ``adaptive_limiter(name, ...)`` shares one limit by name across
nodes, runs, event loops and threads, like ``rate_limit.rate_limiter``. Metrics: the gauge
``adaptive_limit_size`` (the current limit, from when metrics are enabled),
``adaptive_in_flight``, ``adaptive_wait_seconds``, ``adaptive_overloads`` by ``reason``,
``adaptive_limit_changes`` by ``direction``.

When to use LangGraph's native tools instead: ``Send`` + ``max_concurrency`` in the run
config bounds how many nodes run at once with a fixed number, per run, with every item its
own checkpointed task, the right choice when the bound is known and per-item durability
matters; a node's ``RetryPolicy`` retries it after a failure. Use this limiter when the
right number is unknown or changes (a shared API, a database under other load), and when
one limit must hold across nodes and concurrent runs: ``max_concurrency`` cannot learn,
and a retry policy alone adds load to an overloaded dependency.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from act_operator_lib import metrics
from act_operator_lib.metrics import record
from act_operator_lib.named import Named
from act_operator_lib.validate import check_int, check_number

__all__ = ["AdaptiveLimit", "AdaptiveLimiter", "adaptive_limiter", "is_overload"]

P = ParamSpec("P")
R = TypeVar("R")

OVERLOAD_STATUSES = frozenset({429, 503})

# The limiters whose slot the current task holds: a nested slot of the same limiter (a
# fan-out and its HTTP client sharing one) passes through instead of waiting on itself.
_held: ContextVar[frozenset[int]] = ContextVar("adaptive_slots_held", default=frozenset())


def is_overload(error: BaseException) -> bool:
    """Whether ``error`` says the dependency is overloaded: a 429/503 answer or a timeout."""
    if isinstance(error, TimeoutError):
        return True
    return getattr(error, "status", None) in OVERLOAD_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveLimit:
    """Where an adaptive limit starts and how far it may move.

        AdaptiveLimit()                                      # 10, between 1 and 200
        AdaptiveLimit(initial_limit=4, min_limit=2, max_limit=64, backoff=0.5)

    Validated once, here: a bad value fails where the limiter is configured.
    """

    initial_limit: int = 10
    """Calls allowed in flight before anything was measured; within the bounds."""
    min_limit: int = 1
    """The limit never goes below this; >= 1."""
    max_limit: int = 200
    """The limit never goes above this; >= min_limit."""
    backoff: float = 0.9
    """The limit is multiplied by this on an overload (429/503, timeout); 0 < backoff < 1."""
    tolerance: float = 2.0
    """How far latency may rise above the baseline (a multiple of it) before the limit
    comes down; > 1 and finite. Lower (1.2 to 1.5) keeps queues and latency short; higher
    keeps the dependency busy despite jitter on the caller's side (a loaded event loop)."""
    baseline_window: float = 10.0
    """Seconds the lowest latency seen is trusted as the unloaded latency before it is
    measured afresh (the dependency may have become slower for good); > 0 and finite."""

    def __post_init__(self) -> None:
        for field in ("initial_limit", "min_limit", "max_limit"):
            check_int("AdaptiveLimit", field, getattr(self, field), min=1)
        check_number("AdaptiveLimit", "backoff", self.backoff, gt=0, lt=1)
        check_number("AdaptiveLimit", "tolerance", self.tolerance, gt=1)
        check_number("AdaptiveLimit", "baseline_window", self.baseline_window, gt=0, unit="seconds")
        if self.max_limit < self.min_limit:
            raise ValueError(
                f"AdaptiveLimit max_limit must be >= min_limit {self.min_limit},"
                f" got {self.max_limit!r}"
            )
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"AdaptiveLimit initial_limit must be between min_limit {self.min_limit}"
                f" and max_limit {self.max_limit}, got {self.initial_limit!r}"
            )


class _Window:
    """The calls finished since the limit was last decided on."""

    __slots__ = ("latencies", "peak")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.peak = 0  # most calls in flight when one of them finished

    def add(self, latency: float, in_flight: int) -> None:
        self.latencies.append(latency)
        if in_flight > self.peak:
            self.peak = in_flight

    def median(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2]


class _Waiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile: the waiter hands its slot back itself
        future.set_result(None)


class AdaptiveLimiter:
    """A concurrency limit that tunes itself; see the module docstring.

        limiter = AdaptiveLimiter(AdaptiveLimit(max_limit=64))  # private; adaptive_limiter shares
        async with limiter.slot():
            await call_dependency()
        value = await limiter.call(fetch, url)   # the same, for one call
        limiter.limit, limiter.in_flight         # now

    State is process-wide under a ``threading.Lock`` held for a few arithmetic steps only;
    a waiter on another event loop is woken with ``call_soon_threadsafe``.
    """

    __slots__ = (
        "_baseline",
        "_baseline_at",
        "_decreased_at",
        "_doubled",
        "_in_flight",
        "_limit",
        "_lock",
        "_queue",
        "_reported",
        "_slow_start",
        "_window",
        "is_overload",
        "name",
        "policy",
    )

    policy: AdaptiveLimit
    """The bounds and the backoff."""
    name: str
    """The name metrics use (the registry's key, for a shared limiter)."""

    def __init__(
        self,
        policy: AdaptiveLimit | None = None,
        *,
        name: str = "adaptive",
        is_overload: Callable[[BaseException], bool] = is_overload,
    ) -> None:
        policy = AdaptiveLimit() if policy is None else policy
        if not isinstance(policy, AdaptiveLimit):
            raise TypeError(f"AdaptiveLimiter policy must be an AdaptiveLimit, got {policy!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"AdaptiveLimiter name must be a non-empty string, got {name!r}")
        if not callable(is_overload):
            raise TypeError(
                f"AdaptiveLimiter is_overload must be a callable taking an exception, got {is_overload!r}"
            )
        self.policy = policy
        self.name = name
        self.is_overload = is_overload
        """Which exceptions are overload signals (default: 429/503 and timeouts)."""
        self._lock = threading.Lock()  # guards everything below, never held across an await
        self._limit = float(policy.initial_limit)
        self._in_flight = 0
        self._queue: deque[_Waiter] = deque()
        self._baseline = math.inf  # lowest window median lately: the dependency unloaded
        self._baseline_at = 0.0
        self._decreased_at = -math.inf
        self._slow_start = True  # doubling, until the first queue or overload is seen
        self._doubled = False  # the last window doubled: its successor measured a mix
        self._window = _Window()
        self._reported = 0  # the limit as the metrics gauge knows it

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimiter(name={self.name!r}, limit={self.limit}, in_flight={self._in_flight})"
        )

    @property
    def limit(self) -> int:
        """How many calls may be in flight now."""
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        """How many calls hold a slot now."""
        return self._in_flight

    def slot(self) -> _Slot:
        """An async context manager holding one slot for the calls inside it."""
        return _Slot(self)

    async def call(self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
        """``await fn(*args, **kwargs)`` in a slot; its outcome tunes the limit."""
        async with _Slot(self):
            return await fn(*args, **kwargs)

    def record_overload(self, started: float) -> None:
        """Report an overload the slot could not see: a call begun at ``started``
        (``time.monotonic()``) that a timeout *around* the slot cancelled (inside the slot
        it only saw a cancellation). ``bounded_map`` does this for its item timeouts."""
        with self._lock:
            record("adaptive_overloads", name=self.name, reason="TimeoutError")
            before = int(self._limit)
            self._on_overload(started, time.monotonic())
            after = int(self._limit)
        self._report(before, after)

    # -- slots ------------------------------------------------------------------------------

    async def _acquire(self) -> float:
        """Wait for a slot, first come first served; the time it was granted."""
        with self._lock:
            if not self._queue and self._in_flight < int(self._limit):
                self._in_flight += 1
                waiter = None
            else:
                waiter = _Waiter(asyncio.get_running_loop())
                self._queue.append(waiter)
        if waiter is not None:
            started = time.monotonic()
            try:
                await waiter.future
            except BaseException:  # cancelled while queued, or just after being granted
                with self._lock:
                    if waiter.granted:
                        self._in_flight -= 1
                        self._serve()
                    else:
                        waiter.granted = True  # marks it gone: _serve skips it
                raise
            record("adaptive_wait_seconds", time.monotonic() - started, name=self.name)
        record("adaptive_in_flight", 1, name=self.name)
        return time.monotonic()

    def _release(self, started: float, error: BaseException | None) -> None:
        """Free a slot and learn from how the call ended."""
        now = time.monotonic()
        with self._lock:
            in_flight = self._in_flight
            self._in_flight -= 1
            before = int(self._limit)
            if error is None:
                self._on_success(now - started, now, in_flight)
            elif not isinstance(error, asyncio.CancelledError) and self.is_overload(error):
                record("adaptive_overloads", name=self.name, reason=_reason(error))
                self._on_overload(started, now)
            after = int(self._limit)
            self._serve()
        record("adaptive_in_flight", -1, name=self.name)
        self._report(before, after)

    def _report(self, before: int, after: int) -> None:
        if after != before:
            record(
                "adaptive_limit_changes",
                name=self.name,
                direction="up" if after > before else "down",
            )
        if metrics.enabled() and after != self._reported:
            record("adaptive_limit_size", after - self._reported, name=self.name)
            self._reported = after

    # Everything below runs under self._lock.

    def _on_success(self, latency: float, now: float, in_flight: int) -> None:
        window = self._window
        window.add(latency, in_flight)
        limit = self._limit
        if len(window.latencies) < limit:
            return
        # A window of about `limit` calls (one round trip) has ended: decide once for it.
        self._window = _Window()
        median = window.median()
        if median < self._baseline or now - self._baseline_at > self.policy.baseline_window:
            self._baseline, self._baseline_at = median, now
        self._doubled, doubled = False, self._doubled
        if window.peak * 2 < limit:
            return  # the callers did not use the limit: their latency says nothing about more
        log = max(1.0, math.log10(limit))
        queue = limit * (1.0 - self._baseline / median) if median > 0 else 0.0
        # Vegas' thresholds (3 and 6 log10(limit) calls queued), widened for large limits
        # to what latency `tolerance` times the baseline (and half as far above it) mean,
        # so that jitter on the caller's side does not hold the limit below the capacity.
        tolerance = self.policy.tolerance
        beta = max(6 * log, limit * (1 - 1 / tolerance))
        alpha = max(3 * log, limit * (1 - 2 / (1 + tolerance)))
        threshold = max(log, alpha / 2)
        if queue > beta:
            self._slow_start = False
            limit -= log  # latency rose above the baseline: calls queue at the dependency
        elif queue > alpha:
            self._slow_start = False  # a small queue: the knee; hold
        elif queue > threshold:
            self._slow_start = False
            limit += log  # nearing the knee: creep up
        elif self._slow_start:
            if not doubled:  # every other window, as Vegas' slow start does
                limit *= 2
                self._doubled = True
        else:
            limit += 6 * log  # no queue at all: step up (Vegas: + beta)
        self._limit = min(max(limit, self.policy.min_limit), self.policy.max_limit)

    def _on_overload(self, started: float, now: float) -> None:
        # Calls admitted before the last decrease were admitted under the old, higher limit:
        # their rejections are the signal already acted on. A call admitted since then
        # being rejected means the lower limit is still too high.
        if started < self._decreased_at:
            return
        self._decreased_at = now
        self._slow_start = False
        self._window = _Window()
        limit = self._limit * self.policy.backoff
        self._limit = min(max(limit, self.policy.min_limit), self.policy.max_limit)

    def _serve(self) -> None:
        """Grant waiters in order while the limit allows."""
        queue = self._queue
        while queue and self._in_flight < int(self._limit):
            waiter = queue.popleft()
            if waiter.granted or waiter.future.done() or waiter.loop.is_closed():
                continue  # gone: cancelled, or its loop is closed
            waiter.granted = True
            self._in_flight += 1
            if not self._wake(waiter):
                waiter.granted = False
                self._in_flight -= 1

    @staticmethod
    def _wake(waiter: _Waiter) -> bool:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is waiter.loop:
            _resolve(waiter.future)
            return True
        try:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
        except RuntimeError:  # closed since we looked
            return False
        return True


def _reason(error: BaseException) -> str:
    status = getattr(error, "status", None)
    return str(status) if status is not None else type(error).__name__


class _Slot:
    """One slot of an ``AdaptiveLimiter``, held for the body of ``async with``."""

    __slots__ = ("limiter", "started", "token")

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self.limiter = limiter
        self.started = 0.0
        self.token: Any = None

    async def __aenter__(self) -> None:
        held = _held.get()
        key = id(self.limiter)
        if key in held:
            return  # this task already holds one of this limiter's slots
        self.started = await self.limiter._acquire()
        self.token = _held.set(held | {key})

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.token is None:
            return
        _held.reset(self.token)
        self.token = None
        self.limiter._release(self.started, exc)


_registry: Named[AdaptiveLimiter] = Named("adaptive_limiter")


def adaptive_limiter(name: str, policy: AdaptiveLimit | None = None) -> AdaptiveLimiter:
    """The adaptive limiter called ``name``, created with ``policy`` on first use.

        limiter = adaptive_limiter("search-api", AdaptiveLimit(max_limit=128))

    Asking again with the same name returns the same limiter (and what it has learnt);
    asking with a different policy is a mistake and raises ``ValueError``.
    """
    chosen = AdaptiveLimit() if policy is None else policy
    return _registry.get(name, lambda: AdaptiveLimiter(chosen, name=name), policy=chosen)


if __name__ == "__main__":
    import contextlib

    class Overloaded(Exception):
        status = 429

    class Dependency:
        """Serves 16 calls at once in 10 ms each; queues beyond that, rejects beyond 32."""

        def __init__(self) -> None:
            self.active = 0
            self.rejected = 0
            self.workers = asyncio.Semaphore(16)

        async def __call__(self, item: int) -> int:
            if self.active >= 32:
                self.rejected += 1
                raise Overloaded("429 Too Many Requests")
            self.active += 1
            try:
                async with self.workers:
                    await asyncio.sleep(0.01)
            finally:
                self.active -= 1
            return item

    async def main() -> None:
        dependency = Dependency()
        limiter = adaptive_limiter("example", AdaptiveLimit(initial_limit=2, max_limit=200))
        seen: list[int] = []

        async def worker(items: list[int]) -> None:
            for item in items:
                with contextlib.suppress(Overloaded):
                    await limiter.call(dependency, item)
                seen.append(limiter.limit)

        started = time.perf_counter()
        await asyncio.gather(*(worker(list(range(i, 2000, 200))) for i in range(200)))
        elapsed = time.perf_counter() - started
        print(f"limit: started at 2, then {seen[20]}, {seen[200]}, ..., finished at {seen[-1]}")
        print(f"2000 calls by 200 workers in {elapsed:.2f}s, {dependency.rejected} rejected")

    asyncio.run(main())
