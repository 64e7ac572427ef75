"""Retry one operation inside a node, configured with LangGraph's own RetryPolicy.

    policy = RetryPolicy(initial_interval=0.1, max_attempts=4, retry_on=ConnectionError)
    value, attempts = await retry_call(lambda: fetch(url), policy, budget=2.0)

    builder.add_node(RetryNode(fetch_page, policy))  # fetch_page(state) -> {"page": ...}

Backoff is LangGraph's: ``initial_interval * backoff_factor ** (retry - 1)``, capped at
``max_interval``. With ``jitter`` a random extra of up to ``min(1 s, interval)`` is added
(LangGraph's node retry adds up to 1 s; operations retried inside a node are often
millisecond-scale, so here the extra never exceeds the interval itself). ``retry_on`` is
read as LangGraph reads it: an exception class, a sequence of them, or a predicate.

Never retried: LangGraph's control flow (``GraphInterrupt`` from ``interrupt()``,
``ParentCommand`` from ``Command(graph=Command.PARENT)``: any ``GraphBubbleUp``, see
``act_operator_lib.control``) passes through at once, untouched, as LangGraph's own node
retry lets it through, so a human-in-the-loop pause inside the operation pauses the run
and resuming it calls the operation again; ``asyncio.CancelledError`` (cancellation
always propagates); any error marked ``act_operator_lib.control.DoNotRetry`` (an open
circuit's ``CircuitOpenError``, which will refuse again until its ``retry_after``; an
``EgressBlockedError``), and anything once time is up: an attempt runs under the time left
before the run's deadline (``deadline.py``) and the optional ``budget``, and no sleep
ever ends past them; the last error is raised at once instead.

The attempts made are reported either way: a success returns ``Retried(value,
attempts)``; a failure re-raises the last error with a note listing every attempt.

When to use LangGraph's node-level ``RetryPolicy`` instead
(``builder.add_node(node, retry_policy=RetryPolicy(...))``): when the whole node should
run again, or the node is one call anyway. Use this recipe when one operation inside a
node is flaky and the node's other work (earlier calls, parsing, streaming already sent)
must not be redone, or when retries must respect a deadline shared by the run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from langgraph.types import RetryPolicy

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.control import CONTROL_FLOW, DoNotRetry
from act_operator_lib.metrics import record
from act_operator_lib.validate import check_bool, check_int, check_number

from .deadline import current_deadline

__all__ = ["Attempt", "Retried", "RetryNode", "RetryPolicy", "check_retry_policy", "retry_call"]

T = TypeVar("T")

DEFAULT_POLICY = RetryPolicy()
"""LangGraph's defaults: 3 attempts, 0.5 s doubling, jitter, its ``default_retry_on``."""


class Attempt(NamedTuple):
    """One call of the operation."""

    number: int
    """1 for the first call."""
    error: Exception | None
    """What it raised, or ``None`` for the success."""
    elapsed: float
    """Seconds the call took."""
    slept: float
    """Seconds slept after it before the next attempt (0 for the last)."""


class Retried(NamedTuple, Generic[T]):
    """A successful result and the attempts it took (the last one succeeded)."""

    value: T
    attempts: tuple[Attempt, ...]


def check_retry_policy(policy: RetryPolicy) -> RetryPolicy:
    """Return ``policy`` if its fields make sense for backoff, else raise ``ValueError``.

    LangGraph's ``RetryPolicy`` is a plain NamedTuple; this checks it once, up front.
    """
    if not isinstance(policy, RetryPolicy):
        raise TypeError(
            f"retry policy must be a langgraph RetryPolicy, got {type(policy).__name__}"
        )
    check_number("RetryPolicy", "initial_interval", policy.initial_interval, ge=0, unit="seconds")
    check_number("RetryPolicy", "backoff_factor", policy.backoff_factor, ge=1)
    check_number("RetryPolicy", "max_interval", policy.max_interval, ge=0, unit="seconds")
    check_int("RetryPolicy", "max_attempts", policy.max_attempts, min=1)
    check_bool("RetryPolicy", "jitter", policy.jitter)
    retry_on = policy.retry_on
    valid = (
        (isinstance(retry_on, type) and issubclass(retry_on, Exception))
        or (
            isinstance(retry_on, Sequence)
            and all(isinstance(e, type) and issubclass(e, Exception) for e in retry_on)
        )
        or (callable(retry_on) and not isinstance(retry_on, type))
    )
    if not valid:
        raise TypeError(
            "RetryPolicy retry_on must be an Exception class, a sequence of them, or a"
            f" predicate taking the exception, got {retry_on!r}"
        )
    return policy


def _should_retry(policy: RetryPolicy, exc: Exception) -> bool:
    if isinstance(exc, DoNotRetry):
        return False  # e.g. an open circuit refuses again until retry_after: only burns the budget
    retry_on = policy.retry_on
    if isinstance(retry_on, Sequence):
        return isinstance(exc, tuple(retry_on))
    if isinstance(retry_on, type):
        return isinstance(exc, retry_on)
    return bool(retry_on(exc))


def _interval(policy: RetryPolicy, retry: int) -> float:
    interval = min(
        policy.max_interval, policy.initial_interval * policy.backoff_factor ** (retry - 1)
    )
    if policy.jitter:
        interval += random.uniform(0, min(1.0, interval))
    return interval


def _report(name: str, attempts: list[Attempt], why: str) -> str:
    lines = [f"retry {name!r} gave up after {len(attempts)} attempt(s): {why}"]
    for attempt in attempts:
        slept = f", then slept {attempt.slept:.3g}s" if attempt.slept else ""
        lines.append(
            f"  attempt {attempt.number}: {type(attempt.error).__name__}: {attempt.error}"
            f" after {attempt.elapsed:.3g}s{slept}"
        )
    return "\n".join(lines)


async def retry_call(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    budget: float | None = None,
    deadline: float | None = None,
    name: str = "operation",
) -> Retried[T]:
    """Call ``operation`` until it succeeds, ``policy`` says stop, or time is up.

    value, attempts = await retry_call(lambda: fetch(url), RetryPolicy(max_attempts=5))

    ``budget``: seconds for all attempts and sleeps together (``None``: no limit).
    ``deadline``: absolute ``time.monotonic()`` deadline; defaults to
    ``current_deadline()`` (the run's, inside a node). ``name`` labels metrics and notes.
    """
    check_retry_policy(policy)
    if budget is not None and not budget > 0:
        raise ValueError(f"retry_call budget must be > 0 seconds or None, got {budget!r}")
    if deadline is None:
        deadline = current_deadline()
    if budget is not None:
        own = time.monotonic() + budget
        deadline = own if deadline is None else min(deadline, own)

    attempts: list[Attempt] = []
    for number in range(1, policy.max_attempts + 1):
        started = time.monotonic()
        if deadline is not None and started >= deadline:
            record("retry_timeouts", name=name)
            raise TimeoutError(f"retry {name!r}: the deadline passed before attempt {number}")
        limit = asyncio.timeout(None if deadline is None else deadline - started)
        try:
            async with limit:
                value = await operation()
        except CONTROL_FLOW:
            raise  # a pause or a redirect of the run, not a failure: never retried
        except Exception as exc:
            now = time.monotonic()
            attempts.append(Attempt(number, exc, now - started, 0.0))
            if limit.expired():
                record("retry_timeouts", name=name)
                error: Exception = TimeoutError(
                    f"retry {name!r}: time ran out during attempt {number}"
                )
                error.add_note(_report(name, attempts, "deadline or budget reached"))
                raise error from exc
            if not _should_retry(policy, exc):
                exc.add_note(_report(name, attempts, "not retryable"))
                raise
            if number == policy.max_attempts:
                record("retry_exhausted", name=name)
                exc.add_note(_report(name, attempts, f"max_attempts={policy.max_attempts}"))
                raise
            pause = _interval(policy, number)
            if deadline is not None and now + pause >= deadline:
                record("retry_exhausted", name=name)
                exc.add_note(_report(name, attempts, "the next sleep would end past the deadline"))
                raise
            attempts[-1] = attempts[-1]._replace(slept=pause)
            # The details reach the node span's event, never a series (too many values).
            details: dict[str, str | float] = {
                "attempt": number,
                "delay": pause,
                "error.type": type(exc).__qualname__,
            }
            record("retry_attempts", 1.0, details, name=name)
            await asyncio.sleep(pause)
        else:
            attempts.append(Attempt(number, None, time.monotonic() - started, 0.0))
            return Retried(value, tuple(attempts))
    raise AssertionError("unreachable: the last attempt returns or raises")


class RetryNode(AsyncBaseNode):
    """A node calling ``async def operation(state)`` with in-node retries.

        async def fetch_page(state: State) -> dict[str, Any]:
            return {"page": await http.get_text(state["url"])}

        builder.add_node(RetryNode(fetch_page, RetryPolicy(max_attempts=4)))
        # -> {"page": ...}; the attempts are logged when verbose and counted in metrics

    ``operation`` is a LangGraph node function: its update (a dict, a ``Command``, ...) is
    returned unchanged, as every wrapper node in the cookbook does (``CachedNode``,
    ``CircuitBreakerNode``, ``RateLimitedNode``, ``RaceNode``, ``HedgedNode``). Changed:
    there is no ``output_key`` any more; an operation that returned a bare value now
    returns ``{key: value}`` itself. The policy is checked at construction; ``budget``
    bounds all attempts and sleeps.
    """

    def __init__(
        self,
        operation: Callable[[Any], Awaitable[Any]],
        policy: RetryPolicy = DEFAULT_POLICY,
        *,
        budget: float | None = None,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not callable(operation):
            raise TypeError(
                f"RetryNode operation must be an async callable, got {type(operation).__name__}"
            )
        if budget is not None and not budget > 0:
            raise ValueError(f"RetryNode budget must be > 0 seconds or None, got {budget!r}")
        self.operation = operation
        self.policy = check_retry_policy(policy)
        self.budget = budget

    async def execute(self, state: Any) -> Any:
        outcome = await retry_call(
            lambda: self.operation(state), self.policy, budget=self.budget, name=self.name
        )
        self.log("succeeded", attempts=len(outcome.attempts))
        return outcome.value


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        city: str
        forecast: str
        expensive_work: int

    expensive_runs = 0
    calls = 0

    async def expensive_step(state: State) -> dict[str, Any]:
        global expensive_runs
        expensive_runs += 1
        return {"expensive_work": expensive_runs}

    async def flaky_forecast(state: State) -> dict[str, Any]:
        global calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"weather service hiccup #{calls}")
        return {"forecast": f"sunny in {state['city']}"}

    policy = RetryPolicy(initial_interval=0.01, backoff_factor=2, max_attempts=5, jitter=False)
    builder = StateGraph(State)
    builder.add_node("expensive_step", expensive_step)
    builder.add_node(RetryNode(flaky_forecast, policy))
    builder.add_edge(START, "expensive_step")
    builder.add_edge("expensive_step", "RetryNode")
    builder.add_edge("RetryNode", END)
    graph = builder.compile()

    out = asyncio.run(graph.ainvoke({"city": "Oslo"}))
    print("forecast:", out["forecast"], f"after {calls} calls")
    print("expensive step ran", out["expensive_work"], "time(s): only the operation was retried")

    async def always_down() -> str:
        raise ConnectionError("still down")

    try:
        asyncio.run(retry_call(always_down, policy._replace(max_attempts=3), name="forecast"))
    except ConnectionError as exc:
        print("\n".join(exc.__notes__))
