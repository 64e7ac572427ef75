"""Deadlines: a time budget for a whole run that every node of the run honours.

    graph.ainvoke(inputs, with_deadline(2.0))            # the whole run has 2 s
    graph.ainvoke(inputs, context=Ctx(deadline=deadline_after(2.0)))

    async with asyncio.timeout(clamp_timeout(5.0)):      # 5 s, or less if the run has less
        await fetch()
    builder.add_node(GatherByDeadline({"a": fetch_a, "b": fetch_b}))  # partial at the deadline

Where a deadline comes from (``current_deadline()``); when several apply, the earliest wins:

1. an enclosing ``deadline_scope(...)`` (narrows, never widens, the run's deadline);
2. ``deadline`` in the runtime context (attribute or mapping key) or in
   ``config["configurable"]``: an absolute time on the ``time.monotonic()`` clock, normally
   made by ``deadline_after(seconds)`` or ``with_deadline(seconds)`` when the caller
   invokes the graph, so the clock starts at invoke and every node sees the same instant.
   That clock only means something inside one process: across processes (a client of the
   LangGraph server, a run resumed elsewhere) pass ``deadline_seconds``;
3. ``deadline_seconds`` in the context or ``configurable``: a relative budget. LangGraph
   offers no hook at invoke time, so the budget starts when a node of the run (or of a
   graph it invokes) first reads the deadline (``current_deadline()``, ``remaining()``,
   ``clamp_timeout()``, or a recipe primitive that uses them): time spent before that, by
   nodes that never ask, is not counted. The instant is then remembered for the run, so
   later nodes see the same deadline and the next invoke gets a fresh budget.

A graph invoked inside a node (``subgraph.ainvoke(...)``, sync or async) is a run of its
own: if its invoke sets a budget, it gets that budget, which never replaces the caller's
and is clamped by it. One that sets none inherits the caller's; a compiled graph added as
a node shares its parent's. A caller's deadline that none of its nodes has read yet, and
that the nested invoke replaced (its own ``context``, or the same ``configurable`` key), is
not known inside the nested run, so it cannot clamp it (a caller's ``deadline_seconds``
then counts from the nested run's start); call ``remaining()`` before the nested invoke to
be sure it is clamped.
Runs are told apart by LangGraph's ``RunControl`` (the same object for a run and every
graph invoked inside it) together with the run's checkpoint namespace (distinct for every
nested invoke, numbered when a node invokes a graph more than once).

A run's remembered budget is forgotten once the run has ended (nothing but the table still
holds its ``RunControl``), so the table stays in proportion to the runs in flight, and a
minute after its deadline if its end cannot be seen that way (code outside LangGraph keeps
the ``RunControl``). Not at the deadline itself: a node of a run still going after it (the
one after a ``GatherByDeadline`` that returned partial work) sees the budget spent.

(Until this version budgets were keyed by the ``RunControl`` alone, so a nested invoke's
budget replaced its caller's; the table was pruned from the front only, so one long run
kept every later run's entry; a scope always beat the run's deadline, and an absolute
``deadline`` beat a ``deadline_seconds`` even when later.)

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
import functools
import heapq
import itertools
import math
import sys
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
from act_operator_lib.metrics import current_node, record

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


class _RunBudget:
    """What the table knows of one run: its deadline, or (not read yet) when it started."""

    __slots__ = ("control", "deadline", "forget_at", "started")

    def __init__(
        self, control: object, started: float, deadline: float | None, forget_at: float
    ) -> None:
        self.control = control  # held to tell a reused id() apart; see _sweep_ended
        self.started = started
        self.deadline = deadline
        self.forget_at = forget_at


# Runs' deadlines by (id(RunControl), run namespace). RunControl has __slots__ and no
# __weakref__, so entries hold it strongly; _sweep_ended drops the runs nobody else holds
# (the runs that ended). A run whose end cannot be seen that way (something outside
# LangGraph keeps its RunControl) goes _FORGET_AFTER past its deadline, each in deadline
# order (a heap), so one long run never keeps later, shorter ones alive. Not at the
# deadline itself: a node of a run still going (after GatherByDeadline returned partial
# work, say) must see the budget spent, not start a new one. The lock is for sync nodes.
_runs: dict[tuple[int, str], _RunBudget] = {}
_forget_heap: list[tuple[float, int, tuple[int, str]]] = []
_order = itertools.count()
_runs_lock = threading.Lock()
_swept_size = 0  # table size after the last sweep: sweep again once it has doubled
_FORGET_AFTER = 60.0

# LangGraph's checkpoint namespace: one "node:task_id" segment per nesting level, joined by
# "|", plus a counter segment when one task invokes a graph for the second time and on.
_NS_SEP = "|"
_NS_END = ":"


def _run_namespace(config: RunnableConfig | None, runtime: Runtime[Any] | None) -> str:
    """The namespace of the run a node belongs to: its task's namespace minus the task."""
    info = runtime.execution_info if runtime is not None else None
    task_ns = info.checkpoint_ns if info is not None else None
    if task_ns is None:
        task_ns = ((config or {}).get("configurable") or {}).get("checkpoint_ns") or ""
    return str(task_ns).rpartition(_NS_SEP)[0]


def _caller_namespace(run_ns: str) -> str | None:
    """The namespace of the run whose node invoked the run at ``run_ns``; None at the root."""
    if not run_ns:
        return None
    parts = run_ns.split(_NS_SEP)
    if _NS_END not in parts[-1]:
        parts.pop()  # the counter of a repeated invoke
    parts.pop()  # the calling task
    return _NS_SEP.join(parts)


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
    copied: RunnableConfig = {**(config or {})}
    copied["configurable"] = {**copied.get("configurable", {}), DEADLINE_KEY: deadline}
    return copied


def _lookup(source: Any, key: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def _earliest(a: float | None, b: float | None) -> float | None:
    return a if b is None else b if a is None or b < a else a


def resolve_deadline(
    config: RunnableConfig | None = None, runtime: Runtime[Any] | None = None
) -> float | None:
    """The run's absolute deadline from ``runtime.context`` / ``config``, or ``None``.

    deadline = resolve_deadline(config, runtime)  # inside a node that takes both

    The earliest of the ``deadline`` / ``deadline_seconds`` values found, clamped by the
    deadline of the run that invoked this one, if any (see the module docstring).
    """
    context = runtime.context if runtime is not None else None
    configurable = (config or {}).get("configurable") or {}
    absolute: float | None = None
    budget: float | None = None
    for source in (context, configurable):
        found = _lookup(source, DEADLINE_KEY)
        if found is not None:
            absolute = _earliest(absolute, float(found))
        found = _lookup(source, BUDGET_KEY)
        if found is not None:
            if not float(found) > 0:
                raise ValueError(f"{BUDGET_KEY} must be > 0 seconds, got {found!r}")
            budget = _earliest(budget, float(found))
    control = runtime.control if runtime is not None else None
    if control is None:  # called outside a run: a budget starts now
        return _earliest(absolute, None if budget is None else time.monotonic() + budget)
    run_ns = _run_namespace(config, runtime)
    if absolute is None and budget is None and not run_ns:
        return None  # a top-level run without a deadline: nothing to look up
    return _run_deadline(control, run_ns, absolute, budget)


def _run_deadline(
    control: object, run_ns: str, absolute: float | None, budget: float | None
) -> float | None:
    key = (id(control), run_ns)
    with _runs_lock:
        now = time.monotonic()
        _forget_at_deadlines(now)
        entry = _runs.get(key)
        if entry is not None and entry.control is not control:
            entry = None  # cannot happen while the entry holds its control; be safe
        if entry is not None and entry.deadline is not None:
            return entry.deadline
        if absolute is None and budget is None:  # nothing of its own: its callers' deadline
            return _callers_deadline(control, run_ns, None)
        started = entry.started if entry is not None else now
        own = _earliest(absolute, None if budget is None else started + budget)
        assert own is not None
        deadline = _earliest(own, _callers_deadline(control, run_ns, now))
        assert deadline is not None
        _remember(key, _RunBudget(control, started, deadline, deadline + _FORGET_AFTER))
        return deadline


def _callers_deadline(control: object, run_ns: str, started: float | None) -> float | None:
    """The earliest deadline of the runs that (transitively) invoked ``run_ns``.

    With ``started``, callers whose budget nobody has read yet are marked as started at
    that time, so their budget counts from no later than this nested run's. The mark lasts
    as long as the caller's run (it has no deadline yet to be forgotten after).
    """
    deadline = None
    caller_ns = _caller_namespace(run_ns)
    while caller_ns is not None:
        key = (id(control), caller_ns)
        entry = _runs.get(key)
        if entry is not None and entry.control is control:
            if entry.deadline is not None:
                deadline = _earliest(deadline, entry.deadline)
        elif started is not None:
            _remember(key, _RunBudget(control, started, None, math.inf))
        caller_ns = _caller_namespace(caller_ns)
    return deadline


def _remember(key: tuple[int, str], entry: _RunBudget) -> None:
    global _swept_size
    _runs[key] = entry
    if entry.forget_at < math.inf:
        heapq.heappush(_forget_heap, (entry.forget_at, next(_order), key))
    if len(_runs) > max(2 * _swept_size, 64) or len(_runs) <= 64:
        _sweep_ended()
        _swept_size = len(_runs)


def _forget_at_deadlines(now: float) -> None:
    while _forget_heap and _forget_heap[0][0] <= now:
        forget_at, _, key = heapq.heappop(_forget_heap)
        entry = _runs.get(key)
        if entry is not None and entry.forget_at == forget_at:
            del _runs[key]


def _sweep_ended() -> None:
    """Forget the runs that have ended: those whose RunControl only this table still holds.

    No node can ask with such a control again, so its entries can go. (A weak reference
    would say the same, but RunControl does not take one.)
    """
    held: dict[int, int] = {}
    for control_id, _ in _runs:
        held[control_id] = held.get(control_id, 0) + 1
    ended = {
        key
        for key, entry in _runs.items()
        # References: one per entry of this control, plus getrefcount's own argument.
        if sys.getrefcount(entry.control) <= held[key[0]] + 1
    }
    for key in ended:
        del _runs[key]
    if len(_forget_heap) > 2 * len(_runs) + 64:  # mostly runs swept already: rebuild
        _forget_heap[:] = [
            (entry.forget_at, next(_order), key)
            for key, entry in _runs.items()
            if entry.forget_at < math.inf
        ]
        heapq.heapify(_forget_heap)


def current_deadline() -> float | None:
    """The deadline in effect here, or ``None`` when there is none.

    The earlier of an enclosing ``deadline_scope`` and, inside a LangGraph node, the run's
    deadline (``resolve_deadline``); elsewhere there is none.
    """
    scoped = _scope.get()
    try:
        config = get_config()
    except RuntimeError:  # not inside a runnable
        return scoped
    run = resolve_deadline(config, get_runtime() if config.get("configurable") else None)
    return _earliest(scoped, run)


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
        record("gather_by_deadline_timeouts", node=current_node())
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
            {key: functools.partial(op, state) for key, op in self.operations.items()}, deadline
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
