"""Race and hedging: take the first successful result, cancel the rest.

    answer = await race(ask_primary, ask_mirror)                 # first success wins
    answer = await hedged(ask_primary, HedgePolicy(delay=0.2))   # backup if slow

    builder.add_node(RaceNode({"primary": ask_primary, "mirror": ask_mirror}))

``race`` starts every alternative at once; ``hedged`` starts one attempt and another
only when the running ones have been slower than ``delay`` (or have all failed), which
cuts tail latency for the price of a few duplicate calls. Either way the losers are
cancelled, and awaited, before the call returns. A failure is not a result: the race
goes on while some alternative is still running, and only when all have failed is an
``ExceptionGroup`` of every failure raised ("all N alternatives failed"). An alternative
that ends cancelled although the race did not cancel it (it awaited something cancelled
elsewhere) has failed too, and is counted: its entry is a ``RuntimeError`` caused by the
``CancelledError``. Both stop at the run's deadline (see ``deadline.py``) with
``TimeoutError``.

LangGraph's control flow is not a failure: an alternative that calls ``interrupt()`` (or
raises a ``ParentCommand``) before any alternative has won stops the others and the
exception passes through as it is, so the run pauses; resuming it runs the race again and
the ``interrupt()`` then returns the answer. After a winner, a loser's pause is dropped
with the loser.

Under a node ``RetryPolicy`` the ``ExceptionGroup`` of an all-failed race is retried by
LangGraph's ``default_retry_on`` whatever it holds; give ``retry_on`` a predicate that
looks inside (``lambda e: isinstance(e, ExceptionGroup) and e.subgroup(ConnectionError)``)
to retry only some failures.

When to use LangGraph's native features instead: several nodes fanned out with ``Send``
run to completion and all their results are kept, which is right when you want every
answer (then pick in a later node). Node-level ``RetryPolicy`` re-runs a node after a
failure, sequentially; hedging overlaps attempts, for idempotent reads only.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.control import CONTROL_FLOW
from act_operator_lib.metrics import current_node, record
from act_operator_lib.validate import check_int, check_number

from .deadline import remaining

__all__ = ["HedgePolicy", "HedgedNode", "RaceNode", "hedged", "race"]

T = TypeVar("T")


class _Contest(Generic[T]):
    """The shared bookkeeping of a race: the winner, the failures, the tasks to cancel."""

    __slots__ = ("changed", "control", "errors", "running", "tasks", "winner")

    def __init__(self) -> None:
        self.winner: list[T] = []  # empty until someone succeeds
        self.errors: list[Exception] = []
        # LangGraph control flow raised by an alternative before any winner: it ends the race.
        self.control: Exception | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.running = 0
        self.changed = asyncio.Event()

    def start(
        self, group: asyncio.TaskGroup, operation: Callable[[], Awaitable[T]], label: str
    ) -> None:
        # Counted when created, not when first run, so a waiter sees it as running at once.
        self.running += 1
        self.tasks.append(group.create_task(self._attempt(operation, label)))

    async def _attempt(self, operation: Callable[[], Awaitable[T]], label: str) -> None:
        try:
            value = await operation()
        except CONTROL_FLOW as control:
            if not self.winner and self.control is None:
                self.control = control
                raise  # the task group cancels the other alternatives
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the race, or whoever awaits it, cancelled this alternative
            # It awaited something cancelled elsewhere: a failed alternative.
            failure = RuntimeError(f"{label} was cancelled, though not by the race")
            failure.__cause__ = cancelled
            self.errors.append(failure)
        except Exception as exc:
            exc.add_note(f"raised by {label}")
            self.errors.append(exc)
        else:
            if not self.winner:
                self.winner.append(value)
                current = asyncio.current_task()
                for task in self.tasks:
                    if task is not current:
                        task.cancel()
        finally:
            self.running -= 1
            self.changed.set()

    async def run(self, contest: Callable[[asyncio.TaskGroup], Awaitable[None]]) -> None:
        """Run ``contest(group)`` in a task group under the run's deadline."""
        try:
            async with asyncio.timeout(remaining()), asyncio.TaskGroup() as group:
                await contest(group)
        except BaseExceptionGroup:
            if self.control is None:
                raise
            # Otherwise the group holds only the control flow: outcome() raises it unwrapped.

    def outcome(self, what: str) -> T:
        if self.control is not None:
            raise self.control
        if self.winner:
            return self.winner[0]
        raise ExceptionGroup(f"all {len(self.errors)} {what} failed", self.errors)


async def race(*alternatives: Callable[[], Awaitable[T]]) -> T:
    """The first successful result of ``alternatives``, all started at once.

    fastest = await race(lambda: fetch(mirror_a), lambda: fetch(mirror_b))

    Losers are cancelled; if all fail, raises ``ExceptionGroup`` of the failures (each
    with a note naming which alternative raised it).
    """
    if not alternatives:
        raise ValueError("race needs at least one alternative, got none")
    return await _race({f"alternative {i}": alt for i, alt in enumerate(alternatives)})


async def _race(alternatives: Mapping[str, Callable[[], Awaitable[T]]]) -> T:
    contest: _Contest[T] = _Contest()

    async def start_all(group: asyncio.TaskGroup) -> None:
        for label, alternative in alternatives.items():
            contest.start(group, alternative, label)

    await contest.run(start_all)
    return contest.outcome("alternatives")


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgePolicy:
    """When to start backup attempts of a slow operation."""

    delay: float
    """Seconds without a result before the next attempt starts."""
    max_attempts: int = 2
    """Most attempts in flight in total, the first included."""

    def __post_init__(self) -> None:
        check_number("HedgePolicy", "delay", self.delay, gt=0, unit="seconds")
        check_int("HedgePolicy", "max_attempts", self.max_attempts, min=1)


async def hedged(operation: Callable[[], Awaitable[T]], policy: HedgePolicy) -> T:
    """Run ``operation``; if no attempt succeeds within ``policy.delay``, start another.

    page = await hedged(lambda: fetch(url), HedgePolicy(delay=0.15))

    The next attempt also starts at once when every running attempt has failed. The
    first success wins and the other attempts are cancelled; if all
    ``policy.max_attempts`` fail, raises ``ExceptionGroup`` of the failures.
    """
    contest: _Contest[T] = _Contest()
    loop = asyncio.get_running_loop()

    async def start_attempts(group: asyncio.TaskGroup) -> None:
        for number in range(policy.max_attempts):
            if number:
                record("hedge_started", node=current_node())
            contest.start(group, operation, f"attempt {number + 1}")
            if number + 1 == policy.max_attempts:
                return
            # Wait for the delay to pass, unless someone wins or all running attempts fail.
            next_start = loop.time() + policy.delay
            while not contest.winner and contest.running and loop.time() < next_start:
                contest.changed.clear()
                try:
                    async with asyncio.timeout_at(next_start):
                        await contest.changed.wait()
                except TimeoutError:
                    break
            if contest.winner:
                return

    await contest.run(start_attempts)
    return contest.outcome("attempts")


class RaceNode(AsyncBaseNode):
    """A node racing named alternatives on the state; the first success is the update.

        async def from_cache(state: State) -> dict[str, Any]:
            return {"user": await cache.user(state["user_id"])}

        builder.add_node(RaceNode({"cache": from_cache, "db": from_db}))
        # -> the winning alternative's update, e.g. {"user": ...}

    Each alternative is a LangGraph node function, ``async def alt(state) -> update``,
    and the winner's update is returned unchanged, as every wrapper node in the cookbook
    does (``CachedNode``, ``CircuitBreakerNode``, ``RateLimitedNode``, ``RetryNode``,
    ``HedgedNode``). Changed: there is no ``output_key`` any more; an alternative that
    returned a bare value now returns ``{key: value}`` itself.
    """

    def __init__(
        self,
        alternatives: Mapping[str, Callable[[Any], Awaitable[Any]]],
        *,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not alternatives:
            raise ValueError("RaceNode alternatives must name at least one alternative")
        for key, alternative in alternatives.items():
            if not callable(alternative):
                raise TypeError(
                    f"RaceNode alternative {key!r} must be an async callable taking the state,"
                    f" got {type(alternative).__name__}"
                )
        self.alternatives = dict(alternatives)

    async def execute(self, state: Any) -> Any:
        return await _race(
            {
                f"alternative {key!r}": functools.partial(alt, state)
                for key, alt in self.alternatives.items()
            }
        )


class HedgedNode(AsyncBaseNode):
    """A node running ``async def operation(state)`` hedged under a ``HedgePolicy``.

        async def lookup(state: State) -> dict[str, Any]:
            return {"answer": await search(state["question"])}

        builder.add_node(HedgedNode(lookup, HedgePolicy(delay=0.1)))  # -> {"answer": ...}

    ``operation`` is a LangGraph node function and the first successful attempt's update
    is returned unchanged. Changed: there is no ``output_key`` any more; an operation
    that returned a bare value now returns ``{key: value}`` itself.
    """

    def __init__(
        self,
        operation: Callable[[Any], Awaitable[Any]],
        policy: HedgePolicy,
        *,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not callable(operation):
            raise TypeError(
                f"HedgedNode operation must be an async callable, got {type(operation).__name__}"
            )
        if not isinstance(policy, HedgePolicy):
            raise TypeError(f"HedgedNode policy must be a HedgePolicy, got {type(policy).__name__}")
        self.operation = operation
        self.policy = policy

    async def execute(self, state: Any) -> Any:
        return await hedged(lambda: self.operation(state), self.policy)


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        question: str
        answer: str
        hedged_answer: str

    async def flaky_primary(state: State) -> dict[str, str]:
        raise ConnectionError("primary is down")

    async def slow_mirror(state: State) -> dict[str, str]:
        await asyncio.sleep(0.3)
        return {"answer": "42 (slow mirror)"}

    async def fast_mirror(state: State) -> dict[str, str]:
        await asyncio.sleep(0.05)
        return {"answer": "42 (fast mirror)"}

    calls = 0

    async def sometimes_stuck(state: State) -> dict[str, str]:
        global calls
        calls += 1
        await asyncio.sleep(5 if calls == 1 else 0.02)  # the first call hangs
        return {"hedged_answer": f"42 (attempt {calls})"}

    builder = StateGraph(State)
    builder.add_node(RaceNode({"primary": flaky_primary, "slow": slow_mirror, "fast": fast_mirror}))
    builder.add_node(HedgedNode(sometimes_stuck, HedgePolicy(delay=0.1)))
    builder.add_edge(START, "RaceNode")
    builder.add_edge("RaceNode", "HedgedNode")
    builder.add_edge("HedgedNode", END)
    graph = builder.compile()

    started = time.monotonic()
    out = asyncio.run(graph.ainvoke({"question": "meaning of life?"}))
    print("race:", out["answer"])
    print("hedged:", out["hedged_answer"], "(the stuck first attempt was cancelled)")
    print(f"took {time.monotonic() - started:.2f}s")
