"""Run one scenario with function nodes, then with the same nodes as class nodes, and compare.

A scenario is a function taking a ``Nodes`` and returning what a user would observe (results,
stream chunks, snapshots). It builds every node it adds through ``nodes(fn)``:

    def scenario(nodes: Nodes) -> Any:
        def worker(state):
            return [f"worker|{state}"]

        builder = StateGraph(Annotated[list, operator.add])
        builder.add_node("worker", nodes(worker))
        ...
        return graph.invoke(["0"])

    assert run_pair(scenario) == ["0", "worker|1"]

``run_pair`` runs it twice: once where ``nodes(fn)`` is ``fn`` itself, once where it is an
instance of a ``BaseNode`` (``def``) or ``AsyncBaseNode`` (``async def``) class whose ``execute``
has ``fn``'s signature and calls ``fn``, named like ``fn``. ``nodes(fn, Written)`` uses a class
written out by hand instead of the generated one, so a generator bug cannot hide a difference.
The two observations must be equal once what legitimately differs between two runs (checkpoint,
task, run and interrupt ids, timestamps, elapsed times) is replaced by placeholders numbered in
order of appearance, so the same id in two places must stay the same id.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import BaseModel

from act_operator_lib import AsyncBaseNode, BaseNode

__all__ = ["Nodes", "arun_pair", "chain", "node_class", "normalise", "run_pair"]

Kind = Literal["function", "class"]
T = TypeVar("T")

_CALL_TEMPLATE = """\
{async_}def execute(self, state{params}):
    return {await_}fn(state{args})
"""


def node_class(fn: Callable[..., Any]) -> type[BaseNode] | type[AsyncBaseNode]:
    """A node class whose ``execute`` takes exactly ``fn``'s parameters and calls ``fn``.

    ``execute`` carries ``fn``'s signature (with ``self`` in front) and annotations, and
    ``__wrapped__ = fn`` the way ``functools.wraps`` sets it, so hints resolve in ``fn``'s module
    and anything that looks through a wrapper reaches ``fn``'s own code.
    """
    is_async = inspect.iscoroutinefunction(fn)
    signature = inspect.signature(fn)
    state, *rest = signature.parameters.values()
    params = ""
    for param in rest:
        if param.kind is param.KEYWORD_ONLY and "*" not in params:
            params += ", *"
        params += f", {param.name}"
    source = _CALL_TEMPLATE.format(
        async_="async " if is_async else "",
        await_="await " if is_async else "",
        params=params,
        args="".join(f", {p.name}={p.name}" for p in rest),
    )
    namespace: dict[str, Any] = {}
    exec(source, {"fn": fn}, namespace)
    execute = namespace["execute"]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    execute.__signature__ = signature.replace(parameters=[self_param, state, *rest])
    execute.__annotations__ = dict(getattr(fn, "__annotations__", {}))
    execute.__wrapped__ = fn
    execute.__module__ = fn.__module__
    execute.__qualname__ = f"{fn.__qualname__}.execute"
    base = AsyncBaseNode if is_async else BaseNode
    cls = type(fn.__name__, (base,), {"execute": execute, "__module__": fn.__module__})
    cls.__qualname__ = fn.__qualname__
    return cls


class Nodes:
    """What a scenario builds its nodes with: the function itself or a class node like it."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def __call__(self, fn: Callable[..., Any], written: type[Any] | None = None) -> Any:
        if self.kind == "function":
            return fn
        cls = written if written is not None else node_class(fn)
        return cls(name=fn.__name__)

    def __repr__(self) -> str:
        return f"Nodes({self.kind!r})"


# What differs between two runs of the same graph: uuid-shaped checkpoint/task/run ids,
# 32-hex interrupt ids, ISO timestamps, and elapsed times in timeout messages.
_VOLATILE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|\b[0-9a-f]{32}\b"
    r"|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)?"
)
_ELAPSED = re.compile(r"elapsed: [0-9.]+s")


def normalise(value: Any) -> Any:
    """``value`` as plain data, with volatile ids replaced by ``<id0>``, ``<id1>``, ..."""
    seen: dict[str, str] = {}

    def placeholder(match: re.Match[str]) -> str:
        return seen.setdefault(match.group(), f"<id{len(seen)}>")

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return _ELAPSED.sub("elapsed: <t>", _VOLATILE.sub(placeholder, item))
        if isinstance(item, BaseException):
            return ("raised", type(item).__name__, walk(str(item)))
        if isinstance(item, tuple) and hasattr(item, "_fields"):
            return (type(item).__name__, {f: walk(getattr(item, f)) for f in item._fields})
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            fields = {f.name: walk(getattr(item, f.name)) for f in dataclasses.fields(item)}
            return (type(item).__name__, fields)
        if isinstance(item, BaseModel):
            return (type(item).__name__, walk(item.model_dump()))
        if isinstance(item, dict):
            return {walk(k): walk(item[k]) for k in sorted(item, key=repr)}
        if isinstance(item, list | tuple):
            return type(item)(walk(i) for i in item)
        if isinstance(item, Send):
            return ("Send", walk(item.node), walk(item.arg))
        return item

    return walk(value)


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _compare(function: Any, klass: Any, errors: Literal["same", "both"]) -> Any:
    """Assert the two observations agree; return the function run's (or raise its error)."""
    if errors == "both" and isinstance(function, _Raised) and isinstance(klass, _Raised):
        # LangGraph's judgement is what matters: both refused, each naming the node.
        return function.error, klass.error
    left = normalise(function.error if isinstance(function, _Raised) else function)
    right = normalise(klass.error if isinstance(klass, _Raised) else klass)
    assert right == left, (
        f"class nodes differ from function nodes:\n  function: {left!r}\n  class:    {right!r}"
    )
    if isinstance(function, _Raised):
        raise function.error
    return function


def _run(scenario: Callable[[Nodes], T], kind: Kind) -> T | _Raised:
    try:
        return scenario(Nodes(kind))
    except Exception as error:
        return _Raised(error)


async def _arun(scenario: Callable[[Nodes], Awaitable[T]], kind: Kind) -> T | _Raised:
    try:
        return await scenario(Nodes(kind))
    except Exception as error:
        return _Raised(error)


def run_pair(scenario: Callable[[Nodes], T], *, errors: Literal["same", "both"] = "same") -> T:
    """Run ``scenario`` with function nodes and with class nodes; both must observe the same.

    Returns the function run's observation, or raises its error (after checking the class run
    raised the same one) so the caller asserts LangGraph's expected result with
    ``pytest.raises``. With ``errors="both"``, two errors of different types also agree
    (a class node may refuse a value earlier, with its own message) and the pair is returned.
    """
    function = _run(scenario, "function")
    klass = _run(scenario, "class")
    return _compare(function, klass, errors)  # type: ignore[no-any-return]


async def arun_pair(
    scenario: Callable[[Nodes], Awaitable[T]], *, errors: Literal["same", "both"] = "same"
) -> T:
    """``run_pair`` for a scenario that is a coroutine function."""
    function = await _arun(scenario, "function")
    klass = await _arun(scenario, "class")
    return _compare(function, klass, errors)  # type: ignore[no-any-return]


def chain(nodes: Nodes, *fns: Callable[..., Any], state: Any, **compile: Any) -> Any:
    """``StateGraph(state)`` running ``fns`` one after another, each added as ``nodes(fn)``.

    Each node is named after its function; ``compile`` goes to ``builder.compile()``.
    """
    builder = StateGraph(state)
    previous = START
    for fn in fns:
        builder.add_node(nodes(fn))
        builder.add_edge(previous, fn.__name__)
        previous = fn.__name__
    builder.add_edge(previous, END)
    return builder.compile(**compile)
