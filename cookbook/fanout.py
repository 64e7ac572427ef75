"""Bounded fan-out: map an async function over many items, a limited number at a time.

    outcome = await bounded_map(fetch, urls, FanoutPolicy(limit=20, item_timeout=5.0))
    outcome.results  # in input order

    builder.add_node(FanoutNode(fetch, FanoutPolicy(limit=20, on_error="collect")))
    # reads state["items"], writes {"results": [...], "errors": [{"index": 3, "error": "..."}]}

``limit`` worker tasks pull items from one shared iterator, so 100 000 items never mean
100 000 pending tasks, and a generator is consumed lazily. Each item gets at most
``item_timeout`` seconds, shortened to the run's deadline (see ``deadline.py``); at the
deadline no further item is taken.

Failure policies: ``"fail_fast"`` cancels everything still running on the first error and
raises that item's own exception, with a note naming the item (and one per other item that
raised while being stopped), so the node fails as a plain node doing the same work would:
a node ``RetryPolicy`` reads it as it is (``retry_on=ConnectionError`` matches an item's
``ConnectionError``; the default ``default_retry_on`` does not retry a ``ValueError``), and
so do error handlers. (Changed: it used to raise an ``ExceptionGroup``, which LangGraph's
default retries whatever it holds.) ``"collect"`` finishes every item and reports the
failures next to the partial results.

LangGraph's control flow is never an item failure, under either policy: an ``interrupt()``
inside an item (``GraphInterrupt``) or a ``ParentCommand`` stops the other items and
passes through as it is, so the run pauses; resuming it runs the node again, and the
``interrupt()`` call then returns the answer. Give each item that may interrupt a node of
its own (``Send``) when several items must ask at once: within one node, concurrent
``interrupt()`` calls are matched to answers in the order they happen to run.

When to use LangGraph's native ``Send`` + ``max_concurrency`` instead: when each item is
real graph work that deserves its own task: its own node, retry policy, checkpointed
result (resumable per item after a crash), streaming and tracing. ``max_concurrency``
then bounds the whole step. This node runs the items inside one node: much less
overhead per item, results in order, but one checkpoint for the lot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.control import CONTROL_FLOW, is_control_flow
from act_operator_lib.metrics import current_node, record
from act_operator_lib.validate import check_choice, check_int, check_number

from .adaptive import AdaptiveLimiter
from .deadline import current_deadline

__all__ = ["FanoutNode", "FanoutPolicy", "FanoutResult", "ItemError", "bounded_map"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class FanoutPolicy:
    """How a fan-out runs its items."""

    limit: int | AdaptiveLimiter = 10
    """Most items in flight at once (the number of worker tasks), or an ``AdaptiveLimiter``
    (``adaptive.py``): then ``max_limit`` workers run each item in one of its slots, so
    the number in flight follows the dependency's latency and overloads (an item timeout
    counts as one)."""
    item_timeout: float | None = None
    """Seconds one item may take (``None``: no limit); always clamped to the deadline."""
    on_error: Literal["fail_fast", "collect"] = "fail_fast"
    """``"fail_fast"``: cancel the rest and raise; ``"collect"``: record and go on."""

    def __post_init__(self) -> None:
        if not isinstance(self.limit, AdaptiveLimiter):  # its AdaptiveLimit is checked
            check_int("FanoutPolicy", "limit", self.limit, min=1)
        check_number(
            "FanoutPolicy", "item_timeout", self.item_timeout, gt=0, unit="seconds", allow_none=True
        )
        check_choice("FanoutPolicy", "on_error", self.on_error, ("fail_fast", "collect"))


class ItemError(NamedTuple):
    """One item's failure under ``on_error="collect"``."""

    index: int  # type: ignore[assignment]  # shadows tuple.index(); the name is public API
    """Position of the item in the input."""
    error: Exception
    """What it raised (``TimeoutError`` for a timeout or the deadline)."""


class FanoutResult(NamedTuple, Generic[R]):
    """Results in input order (``None`` where an item failed) and the failures."""

    results: list[R | None]
    errors: list[ItemError]

    @property
    def partial(self) -> bool:
        """Whether some item failed."""
        return bool(self.errors)


async def bounded_map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    policy: FanoutPolicy = FanoutPolicy(),
    *,
    deadline: float | None = None,
) -> FanoutResult[R]:
    """Run ``fn`` on every item, ``policy.limit`` at a time; results in input order.

    outcome = await bounded_map(fetch, urls, FanoutPolicy(limit=20))

    ``deadline`` defaults to ``current_deadline()``. Items in flight at the deadline time
    out; the first item taken after it is not called and fails with ``TimeoutError``, and
    no later item is taken (an endless generator is fine), so under ``"collect"``
    ``results`` then ends with that item. Cancelling the caller cancels every item.
    """
    if deadline is None:
        deadline = current_deadline()
    fail_fast = policy.on_error == "fail_fast"
    item_timeout = policy.item_timeout
    limiter = policy.limit if isinstance(policy.limit, AdaptiveLimiter) else None

    async def in_slot(item: T) -> R:
        # Inside the item's timeout, so the wait for a slot counts against it.
        assert limiter is not None
        return await limiter.call(fn, item)

    call = fn if limiter is None else in_slot
    results: list[R | None] = []
    errors: list[ItemError] = []
    # What stopped the fan-out, first first: fail_fast's errors, or LangGraph control flow.
    stops: list[tuple[str, Exception]] = []
    halted = False  # once set, no worker takes another item
    # One iterator shared by the workers: next() never awaits, so each item is taken once.
    pending: Iterator[tuple[int, T]] = enumerate(items)

    async def work() -> None:
        nonlocal halted
        while not halted:
            try:
                index, item = next(pending)
            except StopIteration:
                return
            except Exception as exc:  # the iterable itself failed, as it would in a for loop
                halted = True
                stops.append(("the items iterable", exc))
                raise
            results.append(None)
            timeout = item_timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    halted = True
                    record("fanout_timeouts", node=current_node())
                    late = TimeoutError(
                        f"deadline passed before fan-out item {index} started;"
                        " no later item was taken"
                    )
                    if fail_fast:
                        stops.append((f"fan-out item {index}", late))
                        raise late
                    errors.append(ItemError(index, late))
                    return
                timeout = left if timeout is None else min(timeout, left)
            try:
                if timeout is None:
                    results[index] = await call(item)
                    continue
                limit = asyncio.timeout(timeout)
                try:
                    async with limit:
                        results[index] = await call(item)
                except TimeoutError:
                    if not limit.expired():
                        raise  # fn's own TimeoutError
                    cause = "deadline" if timeout != item_timeout else "item_timeout"
                    if limiter is not None and cause == "item_timeout":
                        # The slot saw a cancellation; tell the limiter it was a timeout.
                        limiter.record_overload(time.monotonic() - timeout)
                    raise TimeoutError(
                        f"fan-out item {index} timed out after {timeout:.3g}s ({cause})"
                    ) from None
            except CONTROL_FLOW as control:
                # A pause (interrupt()) or a redirect of the run: it ends the node as it is.
                halted = True
                stops.append((f"fan-out item {index}", control))
                raise
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    record("fanout_timeouts", node=current_node())
                if fail_fast:
                    halted = True
                    exc.add_note(f"fan-out item {index} failed; the other items were cancelled")
                    stops.append((f"fan-out item {index}", exc))
                    raise
                errors.append(ItemError(index, exc))

    workers = policy.limit if isinstance(policy.limit, int) else policy.limit.policy.max_limit
    if isinstance(items, Sized):
        workers = max(1, min(workers, len(items)))
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(work())
    except BaseExceptionGroup:
        if not stops:
            raise
    if stops:
        # Raised as itself, outside the except block, so that LangGraph's RetryPolicy and
        # error handlers see the item's exception as they would from a plain node.
        raise _first_stop(stops)
    errors.sort()
    return FanoutResult(results, errors)


def _first_stop(stops: list[tuple[str, Exception]]) -> Exception:
    """The exception that stopped the fan-out first, with the later ones noted on it."""
    first = stops[0][1]
    if not is_control_flow(first):  # control flow passes through untouched
        for where, other in stops[1:]:
            first.add_note(f"{where} also raised {type(other).__name__}: {other}")
    return first


class FanoutNode(AsyncBaseNode):
    """A node mapping ``async def fn(item)`` over ``state[input_key]`` with a bound.

        builder.add_node(FanoutNode(summarise, FanoutPolicy(limit=8, item_timeout=30)))

    Writes ``{output_key: results}``; under ``on_error="collect"`` also
    ``{errors_key: [{"index": i, "error": "ExcType: message"}, ...]}`` (serialisable).
    Under ``"fail_fast"`` the node raises the failed item's own exception, for the node's
    ``RetryPolicy`` and error handler to read; an ``interrupt()`` in an item pauses the run.
    """

    def __init__(
        self,
        fn: Callable[[Any], Awaitable[Any]],
        policy: FanoutPolicy = FanoutPolicy(),
        *,
        input_key: str = "items",
        output_key: str = "results",
        errors_key: str = "errors",
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not callable(fn):
            raise TypeError(f"FanoutNode fn must be an async callable, got {type(fn).__name__}")
        if not isinstance(policy, FanoutPolicy):
            raise TypeError(
                f"FanoutNode policy must be a FanoutPolicy, got {type(policy).__name__}"
            )
        self.fn = fn
        self.policy = policy
        self.input_key = input_key
        self.output_key = output_key
        self.errors_key = errors_key

    async def execute(self, state: Any) -> dict[str, Any]:
        try:  # a TypedDict state, or a dataclass / pydantic one
            items = (
                state[self.input_key]
                if isinstance(state, Mapping)
                else getattr(state, self.input_key)
            )
        except (KeyError, AttributeError):
            raise KeyError(
                f"{self.name} maps over state[{self.input_key!r}], which is missing"
            ) from None
        outcome = await bounded_map(self.fn, items, self.policy)
        self.log("fanned out", items=len(outcome.results), failed=len(outcome.errors))
        update: dict[str, Any] = {self.output_key: outcome.results}
        if self.policy.on_error == "collect":
            update[self.errors_key] = [
                {"index": e.index, "error": f"{type(e.error).__name__}: {e.error}"}
                for e in outcome.errors
            ]
        return update


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        items: list[int]
        results: list[Any]
        errors: list[dict[str, Any]]

    in_flight = peak = 0

    async def square_slowly(n: int) -> int:
        global in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.5 if n == 13 else 0.01)  # 13 is too slow for its timeout
            return n * n
        finally:
            in_flight -= 1

    builder = StateGraph(State)
    policy = FanoutPolicy(limit=10, item_timeout=0.2, on_error="collect")
    builder.add_node(FanoutNode(square_slowly, policy))
    builder.add_edge(START, "FanoutNode")
    builder.add_edge("FanoutNode", END)
    graph = builder.compile()

    started = time.monotonic()
    out = asyncio.run(graph.ainvoke({"items": list(range(100))}))
    print("first results:", out["results"][:5], "... item 13:", out["results"][13])
    print("errors:", out["errors"])
    print(f"100 items, limit 10, peak in flight {peak}, {time.monotonic() - started:.2f}s")
