"""Token-bucket rate limiter shared by name across nodes and runs, also a chat-model rate_limiter.

    limiter = rate_limiter("search-api", RateLimit(rate=5, capacity=10))  # 5/s, bursts of 10
    async with limiter:  # waits for a token, first come first served
        await search(query)
    builder.add_node(RateLimitedNode(search_node, limiter))  # the same thing as a node
    model = ChatOpenAI(rate_limiter=limiter)  # a langchain-core BaseRateLimiter as well

Every ``rate_limiter(name, ...)`` call with the same name returns the same limiter, so node
instances, graphs and graph runs (every run on a server's event loop) draw from one budget.
Waiters are served strictly in arrival order, the limiter never sleeps while holding a lock,
and a waiter cancelled while queued takes no token. Each event loop has its own bucket
(futures belong to one loop), so the same graph can be run from several ``asyncio.run``
calls; synchronous callers (a chat model's ``invoke`` in a worker thread) share one
thread-safe bucket per limiter.

When to use LangGraph's native tools instead: to bound how many nodes run at once, use
``max_concurrency`` in the run config (a concurrency limit, not a rate); to slow down
retries of a whole node after a 429, give the node a ``RetryPolicy``. Use this recipe when
calls per second to a shared dependency must stay under a quota across nodes and runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from langchain_core.rate_limiters import BaseRateLimiter
from langgraph.runtime import Runtime

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record

__all__ = ["RateLimit", "RateLimitedNode", "RateLimiter", "rate_limiter"]


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
    """Most tokens the bucket holds (the largest burst); >= 1. A full bucket starts a loop."""

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, int | float):
            raise TypeError(f"RateLimit rate must be a number, got {self.rate!r}")
        if not self.rate > 0 or self.rate == float("inf"):
            raise ValueError(f"RateLimit rate must be > 0 and finite, got {self.rate!r}")
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int):
            raise TypeError(f"RateLimit capacity must be an int, got {self.capacity!r}")
        if self.capacity < 1:
            raise ValueError(f"RateLimit capacity must be >= 1, got {self.capacity!r}")


class _Bucket:
    """One event loop's tokens and its queue of waiting futures."""

    __slots__ = ("level", "loop", "timer", "updated", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self.loop = loop
        self.level = float(capacity)
        self.updated = loop.time()
        # (future, tokens wanted, loop.time() it arrived), first come first served.
        self.waiters: deque[tuple[asyncio.Future[None], int, float]] = deque()
        self.timer: asyncio.TimerHandle | None = None


class RateLimiter(BaseRateLimiter):
    """A FIFO-fair token bucket; ``async with limiter`` or ``await limiter.aacquire()``.

        limiter = RateLimiter(RateLimit(rate=10))  # private; rate_limiter(name, ...) shares
        async with limiter:
            await call_api()
        await limiter.aacquire(tokens=3)  # a call that costs three tokens
        limiter.try_acquire()  # take a token only if one is free now

    The design follows aiolimiter: ``loop.time()`` for the clock, a future per waiter, one
    timer for the head of the queue. Tokens pass straight from the timer to the waiter, so
    a newcomer can never take a token a queued waiter was promised.
    """

    __slots__ = ("_buckets", "_last", "_lock", "_sync_due", "name", "policy")

    policy: RateLimit
    """The rate and burst capacity."""
    name: str
    """The name metrics and errors use (the registry's key, for a shared limiter)."""

    def __init__(self, policy: RateLimit, *, name: str = "rate_limiter") -> None:
        if not isinstance(policy, RateLimit):
            raise TypeError(f"RateLimiter policy must be a RateLimit, got {policy!r}")
        self.policy = policy
        self.name = name
        self._lock = threading.Lock()  # guards bucket creation and the sync bucket, never a sleep
        self._buckets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Bucket] = (
            weakref.WeakKeyDictionary()
        )
        # The bucket last used: the common case (one loop) skips the weak-dict lookup.
        self._last: _Bucket | None = None
        # Synchronous callers: the theoretical time (time.monotonic) the next token is due.
        self._sync_due = 0.0

    def __repr__(self) -> str:
        return f"RateLimiter(name={self.name!r}, rate={self.policy.rate}, capacity={self.policy.capacity})"

    def _bucket(self, loop: asyncio.AbstractEventLoop) -> _Bucket:
        with self._lock:
            bucket = self._buckets.get(loop)
            if bucket is None:
                bucket = self._buckets[loop] = _Bucket(loop, self.policy.capacity)
            self._last = bucket
            return bucket

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
        loop = asyncio.get_running_loop()
        bucket = self._last
        if bucket is None or bucket.loop is not loop:
            bucket = self._bucket(loop)
        if tokens != 1:
            self._check_tokens(tokens)
        now = loop.time()
        if not bucket.waiters:
            level = bucket.level + (now - bucket.updated) * self.policy.rate
            bucket.level = level if level < self.policy.capacity else self.policy.capacity
            bucket.updated = now
            if bucket.level >= tokens:
                bucket.level -= tokens
                record("rate_limiter_wait_seconds", 0.0, name=self.name)
                return True
        if not blocking:
            return False

        future: asyncio.Future[None] = loop.create_future()
        bucket.waiters.append((future, tokens, now))
        if len(bucket.waiters) == 1:
            self._grant(bucket)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted just before the cancel landed: hand the tokens back.
                bucket.level = min(bucket.level + tokens, self.policy.capacity)
                self._grant(bucket)
            else:
                future.cancel()  # marks it skipped, if the cancel did not come through it
                # A _grant run between the cancel and now (a timer, a try_acquire) may have
                # dropped it already, leaving the queue empty.
                if bucket.waiters and bucket.waiters[0][0] is future:
                    self._grant(bucket)  # drops it and serves (or times) the new head
            raise
        record("rate_limiter_wait_seconds", loop.time() - now, name=self.name)
        return True

    def _grant(self, bucket: _Bucket) -> None:
        """Hand tokens to waiters in order; set a timer for when the head can be served."""
        if bucket.timer is not None:
            bucket.timer.cancel()
            bucket.timer = None
        rate, capacity = self.policy.rate, self.policy.capacity
        now = bucket.loop.time()
        level, updated = bucket.level, bucket.updated  # the level at time `updated`
        waiters = bucket.waiters
        while waiters:
            future, tokens, arrived = waiters[0]
            if future.done():  # cancelled while queued: it takes nothing
                waiters.popleft()
                continue
            # Serve the head at the moment a punctual limiter would have (enough tokens, and
            # not before it arrived), not when this callback happens to run: a late timer
            # then loses no tokens to the capacity cap, and the long-run rate stays exact.
            if arrived > updated:
                level = min(level + (arrived - updated) * rate, capacity)
                updated = arrived
            ready = updated + (tokens - level) / rate if level < tokens else updated
            if ready > now:
                bucket.timer = bucket.loop.call_at(ready, self._grant, bucket)
                break
            level = max(level + (ready - updated) * rate - tokens, 0.0)
            updated = ready
            waiters.popleft()
            future.set_result(None)
        bucket.level = min(level + (now - updated) * rate, capacity)
        bucket.updated = now

    async def __aenter__(self) -> None:
        await self.aacquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take ``tokens`` only if they are free now on this loop and nobody is waiting."""
        self._check_tokens(tokens)
        loop = asyncio.get_running_loop()
        bucket = self._last
        if bucket is None or bucket.loop is not loop:
            bucket = self._bucket(loop)
        self._grant(bucket)  # refills the bucket and serves anyone due first
        if bucket.waiters or bucket.level < tokens:
            return False
        bucket.level -= tokens
        return True

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take a token from a synchronous caller (any thread), sleeping for it if needed.

        Synchronous callers are queued by reservation: each takes the next due slot under
        a lock, then sleeps outside it.
        """
        interval = 1.0 / self.policy.rate
        burst = (self.policy.capacity - 1) * interval
        with self._lock:
            now = time.monotonic()
            slot = max(self._sync_due, now)
            start = max(slot - burst, now)  # a full bucket lets `capacity` calls start now
            if start > now and not blocking:
                return False
            self._sync_due = slot + interval
        waited = start - now
        if waited > 0:
            time.sleep(waited)
        record("rate_limiter_wait_seconds", waited, name=self.name)
        return True


_registry: dict[str, RateLimiter] = {}
_registry_lock = threading.Lock()


def rate_limiter(name: str, policy: RateLimit) -> RateLimiter:
    """The limiter called ``name``, created with ``policy`` on first use.

        limiter = rate_limiter("openai", RateLimit(rate=50, capacity=50))

    Asking again with the same name returns the same limiter; asking with a different
    policy is a mistake and raises ``ValueError``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"rate_limiter name must be a non-empty string, got {name!r}")
    with _registry_lock:
        limiter = _registry.get(name)
        if limiter is None:
            limiter = _registry[name] = RateLimiter(policy, name=name)
        elif limiter.policy != policy:
            raise ValueError(
                f"rate_limiter {name!r} already exists with {limiter.policy}; got {policy}"
            )
        return limiter


class RateLimitedNode(AsyncBaseNode):
    """A node that takes a token from ``limiter`` before each call of ``operation(state)``.

        async def search(state: State) -> dict[str, Any]:
            return {"hits": await api.search(state["query"])}

        builder.add_node("search", RateLimitedNode(search, rate_limiter("api", RateLimit(rate=5))))

    Time spent waiting is reported to ``stream_mode="custom"`` as
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
