"""Token-bucket rate limiter shared by name across nodes and runs, also a chat-model rate_limiter.

    limiter = rate_limiter("search-api", RateLimit(rate=5, capacity=10))  # 5/s, bursts of 10
    async with limiter:  # waits for a token, first come first served
        await search(query)
    builder.add_node(RateLimitedNode(search_node, limiter))  # the same thing as a node
    model = ChatOpenAI(rate_limiter=limiter)  # a langchain-core BaseRateLimiter as well

Every ``rate_limiter(name, ...)`` call with the same name returns the same limiter, and a
limiter is one budget for the whole process: node instances, graphs, concurrent runs, every
``asyncio.run`` / ``run_sync`` call, other threads with their own event loops, and
synchronous callers (a chat model's ``invoke`` as well as its ``ainvoke``) all draw from
it. Waiters are served strictly in arrival order, whatever loop or thread they wait in; the
limiter never sleeps or awaits while holding its lock; a waiter cancelled while queued takes
no token. After an event-loop stall it releases at most ``capacity`` tokens at once and then
goes on at the rate: overdue grants are not made up in a burst. A grant a busy loop serves a
little late (by up to half a token's time, 5 ms at most) is dated back to when it was due, so
ordinary timer jitter does not lower the long-run rate; time lost beyond that is not made up
(``benchmarks/_control_rate.py`` shows how much, next to aiolimiter, on a loaded machine).
(Until this version each event loop, and synchronous callers, had a bucket of their own, so
every ``asyncio.run`` started with a full bucket; and a stall was made up at once.)

Shared by several worker processes (``shared=RedisBackend(...)``, see ``redis_backend``):

    limiter = rate_limiter("openai", RateLimit(rate=50, capacity=10), shared=RedisBackend(URL))

every process that names the same limiter on the same Redis draws from one budget. Each
acquire is one round trip running a GCRA script on the server (the bucket is one stored
number, the next token's due time on Redis's clock): it reserves the caller's place in the
one queue of all processes and answers how long to wait, and the wait happens here,
without polling. So callers are served in the order they reached Redis, across processes
(no process can starve another), and in arrival order within an event loop. A caller
cancelled while waiting gives its reservation back (one more round trip). ``limits`` and
``pyrate-limiter`` were compared: both decide "allowed now or not" and leave the waiting to
polling callers, which costs extra round trips per wait and serves waiters in no particular
order; a reservation gives exact spacing and FIFO at one round trip per acquire
(``benchmarks/bench_shared.py`` puts it against ``limits`` on the same server). When Redis
is unavailable, acquires raise ``RedisUnavailableError``, or with
``RedisBackend(fallback="local")`` use this process's own bucket, with a warning, until
Redis answers again.

When to use LangGraph's native tools instead: to bound how many nodes run at once, use
``max_concurrency`` in the run config (a concurrency limit, not a rate); to slow down
retries of a whole node after a 429, give the node a ``RetryPolicy``. Use this recipe when
calls per second to a shared dependency must stay under a quota across nodes and runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from langchain_core.rate_limiters import BaseRateLimiter
from langgraph.runtime import Runtime

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.named import Named
from act_operator_lib.validate import check_int, check_number

__all__ = ["RateLimit", "RateLimitedNode", "RateLimiter", "SharedBucketStore", "rate_limiter"]

logger = logging.getLogger("act_operator_lib.cookbook.rate_limit")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """How fast a limiter hands out tokens: ``rate`` per second, bursts up to ``capacity``.

        RateLimit(rate=200)              # 200 calls/s, evenly spaced
        RateLimit(rate=1, capacity=60)   # 60 per minute on average, all 60 at once allowed

    Validated once, here: a bad value fails where the limiter is configured.
    """

    rate: float
    """Tokens added per second; > 0."""
    capacity: int = 1
    """Most tokens the bucket holds (the largest burst); >= 1. A new limiter starts full."""

    def __post_init__(self) -> None:
        check_number("RateLimit", "rate", self.rate, gt=0, unit="tokens per second")
        check_int("RateLimit", "capacity", self.capacity, min=1)


# A grant served late (a busy loop, a coarse timer) is dated back to when it was due by at
# most this much, and by less than half a token: timer jitter then costs no rate, while the
# tokens a stall made overdue are never released together to make up for it.
_LATE_GRACE = 0.005


class _TokenBucket:
    """The budget of one limiter, and the one step that touches it.

        wait = bucket.take(tokens, at=clock())  # 0.0: taken; else seconds to wait

    The limiter reaches this state only through ``take`` and ``refund``, under its lock. A
    store shared by several processes (Redis, one server-side script per step) can take
    its place by implementing the same two steps; the waiter queue stays in the process.
    """

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, policy: RateLimit, now: float) -> None:
        self.rate = float(policy.rate)
        self.capacity = float(policy.capacity)
        self.level = self.capacity  # a new limiter starts full
        self.updated = now  # the time `level` was last brought up to date

    def take(self, tokens: int, at: float) -> float:
        """Take ``tokens`` as of ``at`` (the limiter's clock): 0.0 if taken, else the seconds
        from ``at`` until they will be there (nothing is taken then)."""
        if at > self.updated:
            level = self.level + (at - self.updated) * self.rate
            self.level = level if level < self.capacity else self.capacity
            self.updated = at
        if self.level >= tokens - 1e-9:  # a wait computed below must be enough
            self.level -= tokens
            return 0.0
        return self.updated + (tokens - self.level) / self.rate - at

    def refund(self, tokens: int) -> None:
        """Give back ``tokens`` taken for a caller that was cancelled before it could use them."""
        level = self.level + tokens
        self.level = level if level < self.capacity else self.capacity


class SharedBucketStore(Protocol):
    """What a limiter shared by processes needs from its store (``RedisBackend`` has it)."""

    url: str

    def use_local(self, error: ConnectionError, user: str) -> bool: ...

    async def reserve(
        self, name: str, *, rate: float, capacity: int, tokens: int, blocking: bool
    ) -> float | None: ...
    def reserve_sync(
        self, name: str, *, rate: float, capacity: int, tokens: int, blocking: bool
    ) -> float | None: ...
    async def refund(self, name: str, *, rate: float, tokens: int) -> None: ...


class _Waiter:
    """One queued caller: a future on its own event loop, or an event a thread sleeps on."""

    __slots__ = ("due", "event", "future", "gone", "granted", "loop", "tokens")

    def __init__(
        self,
        tokens: int,
        arrived: float,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
        event: threading.Event | None = None,
    ) -> None:
        self.tokens = tokens
        self.due = arrived  # when it can be served (known once it heads the queue)
        self.loop = loop
        self.future = future
        self.event = event
        self.granted = False  # its tokens were taken for it (set under the limiter's lock)
        self.gone = False  # it left the queue (cancelled) before being granted


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a waiter cancelled meanwhile hands its tokens back itself
        future.set_result(None)


class RateLimiter(BaseRateLimiter):
    """A FIFO-fair token bucket; ``async with limiter``, ``await limiter.aacquire()`` or
    ``limiter.acquire()`` from synchronous code.

        limiter = RateLimiter(RateLimit(rate=10))  # private; rate_limiter(name, ...) shares
        async with limiter:
            await call_api()
        await limiter.aacquire(tokens=3)  # a call that costs three tokens
        limiter.try_acquire()  # take a token only if one is free now

    One budget, whoever draws from it: the bucket (its level and the time it was last
    refilled, on the limiter's ``clock``) is process-wide under a ``threading.Lock``, and so is
    the single FIFO queue of waiters. Each waiter is woken on its own terms: a future on the
    event loop it waits in (resolved with ``call_soon_threadsafe`` from another thread), or
    an event a synchronous caller's thread sleeps on. Only the head of the queue is timed:
    every loop with a waiter queued sets one timer for the head's due time, and
    synchronous waiters wake for it too; whichever runs first serves the head (from any
    thread) and times the next one. So a loop that cannot run (blocked by a synchronous
    ``acquire`` on its own thread, or by ``run_sync`` waiting for another loop) holds up
    nobody. This was chosen over per-loop buckets or per-loop queues: those give every
    ``asyncio.run`` a fresh budget, or let callers on a busy loop be overtaken by later
    ones elsewhere. The lock is held for a few arithmetic steps only, never across a
    sleep or an await, so the uncontended ``aacquire`` is one lock round trip.

    Tokens pass straight from the bucket to the head waiter, so a newcomer can never take
    a token a queued waiter was promised. A waiter cancelled while queued takes nothing;
    one cancelled just after being granted gives its tokens back. A waiter whose event
    loop was closed without cancelling it is skipped.

    ``clock`` is where the limiter reads the time (default ``time.monotonic``, the clock
    asyncio's loops keep); tests pass a fake clock that their event loop shares, as
    aiolimiter's tests patch ``loop.time``. Timers are set as delays, so a clock must tick
    at the rate of the event loops' clocks. (New in this version; the clock was fixed.)
    """

    __slots__ = (
        "_armed",
        "_armed_due",
        "_armed_token",
        "_bucket",
        "_clock",
        "_grace",
        "_lock",
        "_loops",
        "_queue",
        "_turns",
        "name",
        "policy",
        "shared",
    )

    policy: RateLimit
    """The rate and burst capacity."""
    name: str
    """The name metrics and errors use (the registry's key, for a shared limiter)."""

    def __init__(
        self,
        policy: RateLimit,
        *,
        name: str = "rate_limiter",
        shared: SharedBucketStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(policy, RateLimit):
            raise TypeError(f"RateLimiter policy must be a RateLimit, got {policy!r}")
        if shared is not None and not callable(getattr(shared, "reserve", None)):
            raise TypeError(
                f"RateLimiter shared must be a shared store such as RedisBackend, got {shared!r}"
            )
        if not callable(clock):
            raise TypeError(
                f"RateLimiter clock must be a callable returning seconds, got {clock!r}"
            )
        self.policy = policy
        self.name = name
        self.shared = shared
        """The store the budget lives in when several processes share it, else ``None``."""
        self._clock = clock
        # With a shared store: one reservation at a time per event loop, in arrival order.
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # guards the bucket and the queue, never a sleep
        self._bucket = _TokenBucket(policy, clock())
        self._queue: deque[_Waiter] = deque()  # first come, first served, every caller
        # Event loops with waiters queued, and how many: each keeps time for the head.
        self._loops: dict[asyncio.AbstractEventLoop, int] = {}
        self._armed: _Waiter | None = None  # the head whose wake-up is set, and for when
        self._armed_due = 0.0
        self._armed_token = object()  # the timers of older wake-ups carry other tokens
        self._grace = min(_LATE_GRACE, 0.5 / policy.rate)

    def __repr__(self) -> str:
        return f"RateLimiter(name={self.name!r}, rate={self.policy.rate}, capacity={self.policy.capacity})"

    def _check_tokens(self, tokens: int) -> None:
        if not 1 <= tokens <= self.policy.capacity:
            raise ValueError(
                f"RateLimiter {self.name!r} tokens must be between 1 and capacity"
                f" {self.policy.capacity}, got {tokens!r}"
            )

    async def aacquire(self, *, blocking: bool = True, tokens: int = 1) -> bool:
        """Take ``tokens`` (default 1), waiting behind earlier callers; ``True`` once taken.

        With ``blocking=False`` it takes them only if free now and nobody is queued,
        returning ``False`` otherwise.
        """
        if tokens != 1:
            self._check_tokens(tokens)
        if self.shared is not None:
            return await self._aacquire_shared(tokens, blocking)
        with self._lock:
            now = self._clock()
            if not self._queue and self._bucket.take(tokens, now) == 0.0:
                future = None
            elif not blocking:
                return False
            else:
                loop = asyncio.get_running_loop()
                future = loop.create_future()
                waiter = _Waiter(tokens, now, loop, future)
                self._queue.append(waiter)
                queued_here = self._loops.get(loop, 0)
                self._loops[loop] = queued_here + 1
                if not queued_here:
                    self._armed = None  # so this loop, new to the queue, keeps time too
                self._serve(now)
        if future is None:
            record("rate_limiter_wait_seconds", 0.0, name=self.name)
            return True
        try:
            await future
        except BaseException:  # cancelled, or torn down with its loop
            with self._lock:
                self._leave(waiter)
            raise
        record("rate_limiter_wait_seconds", self._clock() - now, name=self.name)
        return True

    def acquire(self, *, blocking: bool = True, tokens: int = 1) -> bool:
        """Take ``tokens`` from synchronous code (any thread), sleeping for them if needed.

        The same budget and the same queue as ``aacquire``: a chat model's ``invoke`` and
        ``ainvoke`` share one rate.
        """
        if tokens != 1:
            self._check_tokens(tokens)
        if self.shared is not None:
            return self._acquire_shared(tokens, blocking)
        with self._lock:
            arrived = self._clock()
            taken = not self._queue and self._bucket.take(tokens, arrived) == 0.0
            if not taken:
                if not blocking:
                    return False
                waiter = _Waiter(tokens, arrived, event=threading.Event())
                self._queue.append(waiter)
                self._serve(arrived)
        if taken:
            record("rate_limiter_wait_seconds", 0.0, name=self.name)
            return True
        event = waiter.event
        assert event is not None
        try:
            while True:
                with self._lock:
                    now = self._clock()
                    if not waiter.granted and now >= self._armed_due:
                        # The head is due: serve it from this thread, whatever loop it
                        # waits on (that loop may be the one this very call is blocking).
                        self._armed = None
                        self._serve(now)
                    if waiter.granted:
                        break
                    timeout = max(self._armed_due - now, 0.0)
                    event.clear()  # any set() after this, under the lock, ends the wait
                event.wait(timeout)
        except BaseException:  # KeyboardInterrupt while sleeping
            with self._lock:
                self._leave(waiter)
            raise
        record("rate_limiter_wait_seconds", self._clock() - arrived, name=self.name)
        return True

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take ``tokens`` only if they are free now and nobody is waiting (never waits).

        With a shared store this is one synchronous round trip to it: from async code,
        prefer ``await aacquire(blocking=False)``.
        """
        self._check_tokens(tokens)
        if self.shared is not None:
            return self._acquire_shared(tokens, blocking=False)
        with self._lock:
            now = self._clock()
            self._serve(now)  # anyone queued and due is served first
            return not self._queue and self._bucket.take(tokens, now) == 0.0

    async def __aenter__(self) -> None:
        await self.aacquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    # With a shared store: reservations in the store, waits here.

    async def _aacquire_shared(self, tokens: int, blocking: bool) -> bool:
        shared = self.shared
        assert shared is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = asyncio.Lock()
        await turn.acquire()  # acquire/release rather than `async with`: two coroutines less
        try:
            wait = await shared.reserve(
                self.name,
                rate=self.policy.rate,
                capacity=self.policy.capacity,
                tokens=tokens,
                blocking=blocking,
            )
        except asyncio.CancelledError:
            # Cancelled mid round trip: the request was sent (a command goes out before
            # its answer is awaited), so the reservation is taken as made and given back.
            if blocking:
                await self._give_back(tokens)
            raise
        except ConnectionError as error:
            if not self._use_local(error):
                raise
            return await self._local().aacquire(blocking=blocking, tokens=tokens)
        finally:
            turn.release()
        if wait is None:
            return False
        if wait > 0.0:
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                await self._give_back(tokens)
                raise
        record("rate_limiter_wait_seconds", loop.time() - started, name=self.name)
        return True

    async def _give_back(self, tokens: int) -> None:
        """Return a cancelled caller's reservation to the shared bucket."""
        shared = self.shared
        assert shared is not None

        async def give_back() -> None:
            with contextlib.suppress(ConnectionError):
                await shared.refund(self.name, rate=self.policy.rate, tokens=tokens)

        # Shielded: the caller is being cancelled, the refund must still happen.
        await asyncio.shield(asyncio.ensure_future(give_back()))

    def _acquire_shared(self, tokens: int, blocking: bool) -> bool:
        shared = self.shared
        assert shared is not None
        started = self._clock()
        try:
            wait = shared.reserve_sync(
                self.name,
                rate=self.policy.rate,
                capacity=self.policy.capacity,
                tokens=tokens,
                blocking=blocking,
            )
        except ConnectionError as error:
            if not self._use_local(error):
                raise
            local = self._local()
            return local.acquire(blocking=blocking, tokens=tokens)
        if wait is None:
            return False
        if wait > 0.0:
            time.sleep(wait)
        record("rate_limiter_wait_seconds", self._clock() - started, name=self.name)
        return True

    def _use_local(self, error: ConnectionError) -> bool:
        """Whether an unavailable shared store falls back to this process's own bucket."""
        return self.shared is not None and self.shared.use_local(
            error, f"rate limiter {self.name!r}"
        )

    def _local(self) -> RateLimiter:
        """The in-process limiter a shared one falls back to."""
        with _fallbacks_lock:
            local = _fallbacks.get(self.name)
            if local is None:
                local = _fallbacks[self.name] = RateLimiter(
                    self.policy, name=self.name, clock=self._clock
                )
            return local

    # Everything below runs under self._lock.

    def _serve(self, now: float) -> None:
        """Grant waiters in order while the bucket allows; set the head's wake-up."""
        queue = self._queue
        while queue:
            waiter = queue[0]
            future, loop = waiter.future, waiter.loop
            if (
                waiter.gone
                or (future is not None and future.done())  # cancelled while queued
                or (loop is not None and loop.is_closed())  # nobody left to wake
            ):
                self._pop_head()
                continue
            # A head served late is served as of when it was due, but never earlier than
            # the grace allows: jitter is absorbed, a stall is not paid back in a burst.
            at = max(min(waiter.due, now), now - self._grace)
            wait = self._bucket.take(waiter.tokens, at)
            if wait > 0.0:
                waiter.due = at + wait
                self._arm(waiter)
                return
            self._pop_head()
            waiter.granted = True
            if not self._wake(waiter):
                waiter.granted = False
                self._bucket.refund(waiter.tokens)
        self._armed = None

    def _pop_head(self) -> None:
        loop = self._queue.popleft().loop
        if loop is not None:
            left = self._loops[loop] - 1
            if left:
                self._loops[loop] = left
            else:
                del self._loops[loop]

    def _wake(self, waiter: _Waiter) -> bool:
        """Tell a granted waiter; ``False`` if its event loop is closed."""
        if waiter.event is not None:
            waiter.event.set()
            return True
        assert waiter.loop is not None
        assert waiter.future is not None
        if _running_loop() is waiter.loop:
            _resolve(waiter.future)
            return True
        try:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
        except RuntimeError:  # closed since we looked
            return False
        return True

    def _arm(self, head: _Waiter) -> None:
        """Make sure ``head`` is served at ``head.due``.

        Every event loop with a waiter queued sets a timer for it (the first to fire
        serves, the rest find a newer token and do nothing), and synchronous waiters
        wake for it too: a loop blocked by a synchronous call, or by ``run_sync``
        waiting on another loop's waiter, cannot hold up the queue.
        """
        if self._armed is head and self._armed_due <= head.due:
            return  # an earlier (or the same) wake-up is already set
        token = object()
        self._armed, self._armed_due, self._armed_token = head, head.due, token
        if head.event is not None:
            head.event.set()  # a synchronous head times its own sleep
        running = _running_loop()
        for loop in self._loops:
            if loop is running:
                loop.call_later(head.due - self._clock(), self._on_timer, token)
            elif not loop.is_closed():
                # A loop closed since we looked: its waiters are skipped when reached.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._set_timer, loop, head.due, token)

    def _set_timer(self, loop: asyncio.AbstractEventLoop, due: float, token: object) -> None:
        # On that loop's thread: the delay is measured here, after the thread hop.
        loop.call_later(due - self._clock(), self._on_timer, token)

    def _on_timer(self, token: object) -> None:
        with self._lock:
            if self._armed_token is not token or self._armed is None:
                return  # superseded, or served from elsewhere
            self._armed = None
            self._serve(self._clock())

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter stops waiting (cancelled): tokens granted to it go back to the bucket."""
        if waiter.granted:
            waiter.granted = False
            self._bucket.refund(waiter.tokens)
        else:
            waiter.gone = True
        self._serve(self._clock())


_registry: Named[RateLimiter] = Named("rate_limiter")
_fallbacks: dict[str, RateLimiter] = {}
_fallbacks_lock = threading.Lock()


def rate_limiter(
    name: str, policy: RateLimit, *, shared: SharedBucketStore | None = None
) -> RateLimiter:
    """The limiter called ``name``, created with ``policy`` on first use.

        limiter = rate_limiter("openai", RateLimit(rate=50, capacity=50))
        limiter = rate_limiter("openai", RateLimit(rate=50), shared=RedisBackend(URL))

    Asking again with the same name returns the same limiter; asking with a different
    policy or another shared store is a mistake and raises ``ValueError``.
    """
    return _registry.get(
        name,
        lambda: RateLimiter(policy, name=name, shared=shared),
        policy=policy,
        shared=shared,
    )


class RateLimitedNode(AsyncBaseNode):
    """A node that takes a token from ``limiter`` before each call of ``operation(state)``.

        async def search(state: State) -> dict[str, Any]:
            return {"hits": await api.search(state["query"])}

        builder.add_node("search", RateLimitedNode(search, rate_limiter("api", RateLimit(rate=5))))

    ``operation`` is a LangGraph node function and its update is returned unchanged, as
    every wrapper node in the cookbook does. Time spent waiting is reported to
    ``stream_mode="custom"`` as
    ``{"rate_limited": name, "waited": seconds}`` when the wait was noticeable (> 1 ms).
    """

    def __init__(
        self,
        operation: Callable[[Any], Awaitable[dict[str, Any]]],
        limiter: RateLimiter,
        *,
        tokens: int = 1,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        if not callable(operation):
            raise TypeError(f"RateLimitedNode operation must be callable, got {operation!r}")
        if not isinstance(limiter, RateLimiter):
            raise TypeError(f"RateLimitedNode limiter must be a RateLimiter, got {limiter!r}")
        if not 1 <= tokens <= limiter.policy.capacity:
            raise ValueError(
                f"RateLimitedNode tokens must be between 1 and the limiter's capacity"
                f" {limiter.policy.capacity}, got {tokens!r}"
            )
        super().__init__(name=name or getattr(operation, "__name__", None), verbose=verbose)
        self.operation = operation
        self.limiter = limiter
        self.tokens = tokens

    async def execute(self, state: Any, runtime: Runtime[Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.limiter.aacquire(tokens=self.tokens)
        waited = loop.time() - started
        if waited > 0.001:
            self.log("waited for rate limiter", limiter=self.limiter.name, waited=waited)
            if runtime is not None:  # None when the node is called alone
                runtime.stream_writer({"rate_limited": self.limiter.name, "waited": waited})
        return await self.operation(state)


if __name__ == "__main__":
    from operator import add
    from typing import Annotated, TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        queries: list[str]
        answers: Annotated[list[str], add]

    async def answer(state: State) -> dict[str, Any]:
        return {"answers": [f"answer to {state['queries'][len(state.get('answers', []))]}"]}

    async def main() -> None:
        # 20 calls/s with bursts of 5: 12 calls take about (12 - 5) / 20 = 0.35 s.
        limiter = rate_limiter("example-api", RateLimit(rate=20, capacity=5))
        builder = StateGraph(State)
        builder.add_node("answer", RateLimitedNode(answer, limiter))
        builder.add_edge(START, "answer")
        builder.add_conditional_edges(
            "answer", lambda s: END if len(s["answers"]) >= len(s["queries"]) else "answer"
        )
        graph = builder.compile()
        loop = asyncio.get_running_loop()
        started = loop.time()
        queries = [f"q{i}" for i in range(12)]
        result = await graph.ainvoke({"queries": queries, "answers": []})
        elapsed = loop.time() - started
        print(
            f"{len(result['answers'])} rate-limited calls in {elapsed:.2f}s (a bucket of 5 at 20/s needs >= 0.35s)"
        )
        print(result["answers"][-1])

    asyncio.run(main())
