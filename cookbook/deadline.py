"""Deadlines: a time budget set at invoke time that every node of the run honours.

    graph.ainvoke(inputs, with_deadline(2.0))            # the whole run has 2 s
    graph.ainvoke(inputs, context=Ctx(deadline=deadline_after(2.0)))

    async with asyncio.timeout(clamp_timeout(5.0)):      # 5 s, or less if the run has less
        await fetch()
    builder.add_node(GatherByDeadline({"a": fetch_a, "b": fetch_b}))  # partial at the deadline

Where a deadline comes from, first match wins (``current_deadline()``):

1. an enclosing ``deadline_scope(...)`` (narrows, never widens, the run's deadline);
2. the runtime context's ``deadline`` (attribute or mapping key), then
   ``config["configurable"]["deadline"]``: an absolute time on the ``time.monotonic()``
   clock, normally made by ``deadline_after(seconds)`` or ``with_deadline(seconds)``
   when the caller invokes the graph, so every node sees the same instant. That clock
   only means something inside one process: across processes (a client of the LangGraph
   server, a run resumed elsewhere) pass ``deadline_seconds``;
3. ``deadline_seconds`` in the context or ``configurable``: a relative budget. It is
   turned into an absolute deadline once per run, the first time a node asks, and
   remembered under the run's ``RunControl`` (LangGraph creates one per invoke and hands
   the same object to every node and subgraph of that run), so a second node sees the
   same deadline rather than a fresh budget, and the next invoke gets a fresh one.
   Prefer an absolute ``deadline``: its clock starts when the caller invokes.

The primitives of the other recipes (``bounded_map``, ``race``, ``retry_call``) call
``current_deadline()`` themselves, so inside a node they honour the run's deadline
with no arguments passed.

When to use LangGraph's native ``TimeoutPolicy`` instead: to cap one node attempt
(``builder.add_node(node, timeout=TimeoutPolicy(run_timeout=5))``), or to fail a node
that stops making progress (``idle_timeout`` with ``runtime.heartbeat()``). A deadline
is for a budget shared by the whole run, across nodes, and for returning partial work
instead of failing when time runs out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, NamedTuple, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config
from langgraph.runtime import Runtime, get_runtime

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record

__all__ = [
    "BUDGET_KEY",
    "DEADLINE_KEY",
    "GatherByDeadline",
    "PartialResults",
    "clamp_timeout",
    "current_deadline",
    "deadline_after",
    "deadline_scope",
    "gather_by_deadline",
    "remaining",
    "resolve_deadline",
    "with_deadline",
]

T = TypeVar("T")

DEADLINE_KEY = "deadline"
"""Key (configurable or context) of an absolute deadline on the ``time.monotonic()`` clock."""
BUDGET_KEY = "deadline_seconds"
"""Key (configurable or context) of a relative budget, anchored once per run."""

_scope: ContextVar[float | None] = ContextVar("act_operator_lib_deadline", default=None)
# Budgets anchored per run, keyed by id(RunControl). RunControl has no __weakref__, so
# an entry keeps the control itself (to tell a reused id apart) and is dropped, oldest
# first, once its deadline is _FORGET_AFTER past: only a run still asking that long after
# its deadline would re-anchor. The lock is for sync nodes, which run in threads.
_anchored: dict[int, tuple[object, float]] = {}
_anchored_lock = threading.Lock()
_FORGET_AFTER = 60.0


def deadline_after(seconds: float) -> float:
    """The absolute deadline ``seconds`` from now, on the ``time.monotonic()`` clock.

    graph.ainvoke(inputs, context=Ctx(deadline=deadline_after(2.0)))
    """
    if not seconds > 0:
        raise ValueError(f"deadline seconds must be > 0, got {seconds!r}")
    return time.monotonic() + seconds


def with_deadline(seconds: float, config: RunnableConfig | None = None) -> RunnableConfig:
    """A copy of ``config`` whose ``configurable`` carries a deadline ``seconds`` from now.

    await graph.ainvoke(inputs, with_deadline(2.0, {"configurable": {"thread_id": "1"}}))
    """
    deadline = deadline_after(seconds)
    config = dict(config or {})  # type: ignore[assignment]
    config["configurable"] = {**config.get("configurable", {}), DEADLINE_KEY: deadline}
    return config


def _lookup(source: Any, key: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def resolve_deadline(
    config: RunnableConfig | None = None, runtime: Runtime[Any] | None = None
) -> float | None:
    """The run's absolute deadline from ``runtime.context`` / ``config``, or ``None``.

    deadline = resolve_deadline(config, runtime)  # inside a node that takes both
    """
    context = runtime.context if runtime is not None else None
    configurable = (config or {}).get("configurable") or {}
    for source in (context, configurable):
        deadline = _lookup(source, DEADLINE_KEY)
        if deadline is not None:
            return float(deadline)
    for source in (context, configurable):
        budget = _lookup(source, BUDGET_KEY)
        if budget is not None:
            return _anchor_budget(float(budget), runtime)
    return None


def _anchor_budget(budget: float, runtime: Runtime[Any] | None) -> float:
    if not budget > 0:
        raise ValueError(f"{BUDGET_KEY} must be > 0 seconds, got {budget!r}")
    now = time.monotonic()
    control = runtime.control if runtime is not None else None
    if control is None:  # called outside a run: the budget starts now
        return now + budget
    with _anchored_lock:
        entry = _anchored.get(id(control))
        if entry is not None and entry[0] is control:
            return entry[1]
        while _anchored:  # insertion order is roughly deadline order: prune from the front
            oldest, (_, deadline) = next(iter(_anchored.items()))
            if deadline + _FORGET_AFTER >= now:
                break
            del _anchored[oldest]
        _anchored[id(control)] = (control, now + budget)
        return now + budget


def current_deadline() -> float | None:
    """The deadline in effect here, or ``None`` when there is none.

    An enclosing ``deadline_scope`` wins; inside a LangGraph node the run's deadline
    (``resolve_deadline``) applies; elsewhere there is none.
    """
    scoped = _scope.get()
    if scoped is not None:
        return scoped
    try:
        config = get_config()
    except RuntimeError:  # not inside a runnable
        return None
    return resolve_deadline(config, get_runtime() if config.get("configurable") else None)


def remaining(deadline: float | None = None) -> float | None:
    """Seconds left before ``deadline`` (default: ``current_deadline()``), at least 0.

    ``None`` means no deadline: no limit.
    """
    if deadline is None:
        deadline = current_deadline()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def clamp_timeout(timeout: float | None, deadline: float | None = None) -> float | None:
    """``timeout`` shortened to the time left before the deadline; for ``asyncio.timeout``.

    async with asyncio.timeout(clamp_timeout(5.0)):  # None (no limit) stays None
        await fetch()
    """
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
    left = remaining(deadline)
    if left is None:
        return timeout
    return left if timeout is None else min(timeout, left)


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[float | None]:
    """Make ``deadline`` (or the current one, if earlier) the deadline inside the block.

    with deadline_scope(deadline_after(1.0)):
        await bounded_map(fetch, urls)  # stops at the earlier of 1 s and the run's deadline
    """
    current = current_deadline()
    effective = (
        deadline if current is None else current if deadline is None else min(current, deadline)
    )
    token = _scope.set(effective)
    try:
        yield effective
    finally:
        _scope.reset(token)


class PartialResults(NamedTuple, Generic[T]):
    """What a set of operations produced by a deadline."""

    results: dict[str, T]
    """Values of the operations that finished in time, by name."""
    errors: dict[str, Exception]
    """Exceptions of the operations that failed in time, by name."""
    cancelled: tuple[str, ...]
    """Names of the operations still running at the deadline, now cancelled."""

    @property
    def partial(self) -> bool:
        """Whether some operation did not finish successfully."""
        return bool(self.errors or self.cancelled)


async def gather_by_deadline(
    operations: Mapping[str, Callable[[], Awaitable[T]]], deadline: float | None = None
) -> PartialResults[T]:
    """Run ``operations`` concurrently; at the deadline cancel those still running.

    found = await gather_by_deadline({"fast": fast, "slow": slow}, deadline_after(0.5))
    found.results  # {"fast": ...}; found.cancelled == ("slow",); found.partial is True

    ``deadline`` defaults to ``current_deadline()``; with none, all operations finish.
    Failures are collected rather than raised; cancelling the caller cancels them all.
    """
    results: dict[str, T] = {}
    errors: dict[str, Exception] = {}

    async def run(key: str, operation: Callable[[], Awaitable[T]]) -> None:
        try:
            results[key] = await operation()
        except Exception as exc:
            errors[key] = exc

    timeout = asyncio.timeout(remaining(deadline))
    try:
        async with timeout, asyncio.TaskGroup() as group:
            for key, operation in operations.items():
                group.create_task(run(key, operation))
    except TimeoutError:
        # run() catches the operations' own errors, so this is the deadline firing.
        if not timeout.expired():
            raise
        record("timeouts", name="gather_by_deadline")
    cancelled = tuple(key for key in operations if key not in results and key not in errors)
    return PartialResults(results, errors, cancelled)


class GatherByDeadline(AsyncBaseNode):
    """A node running named operations on the state, returning what finished by the deadline.

        builder.add_node(GatherByDeadline({"web": search_web, "docs": search_docs}, budget=2.0))
        # state update: {"gathered": {"results": {...}, "errors": {...},
        #                             "cancelled": [...], "partial": bool}}

    Each operation is ``async def op(state) -> value``. The deadline is the run's (see the
    module docstring), shortened to ``budget`` seconds from the node's start if given.
    Errors are reported as ``"ExcType: message"`` strings so the state stays serialisable.
    """

    def __init__(
        self,
        operations: Mapping[str, Callable[[Any], Awaitable[Any]]],
        *,
        budget: float | None = None,
        output_key: str = "gathered",
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not operations:
            raise ValueError("GatherByDeadline operations must name at least one operation")
        for key, operation in operations.items():
            if not callable(operation):
                raise TypeError(
                    f"GatherByDeadline operation {key!r} must be an async callable taking the"
                    f" state, got {type(operation).__name__}"
                )
        if budget is not None and not budget > 0:
            raise ValueError(f"GatherByDeadline budget must be > 0 seconds or None, got {budget!r}")
        self.operations = dict(operations)
        self.budget = budget
        self.output_key = output_key

    async def execute(self, state: Any) -> dict[str, Any]:
        deadline = current_deadline()  # inside a graph: the run's, via LangGraph's config
        if self.budget is not None:
            own = time.monotonic() + self.budget
            deadline = own if deadline is None else min(deadline, own)
        found = await gather_by_deadline(
            {key: (lambda op=op: op(state)) for key, op in self.operations.items()}, deadline
        )
        self.log("gathered", finished=len(found.results), cancelled=found.cancelled)
        return {
            self.output_key: {
                "results": found.results,
                "errors": {k: f"{type(e).__name__}: {e}" for k, e in found.errors.items()},
                "cancelled": list(found.cancelled),
                "partial": found.partial,
            }
        }


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        query: str
        plan: str
        gathered: dict[str, Any]

    async def plan(state: State) -> dict[str, Any]:
        # A first node spending part of the budget; the next node sees the same deadline.
        await asyncio.sleep(0.1)
        return {"plan": f"search for {state['query']!r}, {remaining():.2f}s left"}

    async def quick_source(state: State) -> str:
        await asyncio.sleep(0.05)
        return f"quick answer about {state['query']}"

    async def slow_source(state: State) -> str:
        await asyncio.sleep(10)
        return "never arrives"

    builder = StateGraph(State)
    builder.add_node("plan", plan)
    builder.add_node(GatherByDeadline({"quick": quick_source, "slow": slow_source}))
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "GatherByDeadline")
    builder.add_edge("GatherByDeadline", END)
    graph = builder.compile()

    async def main() -> None:
        started = time.monotonic()
        out = await graph.ainvoke({"query": "deadlines"}, with_deadline(0.5))
        print(out["plan"])
        print("gathered:", out["gathered"])
        print(f"took {time.monotonic() - started:.2f}s of a 0.50s budget")

    asyncio.run(main())
