"""Every concrete node class, the ``__call__`` generated for it, and what reads its code.

The protocol between ``base_node`` and what observes nodes, in one place:

* ``base_node`` generates a ``__call__`` for each concrete class (with ``execute``'s
  signature, ``__wrapped__`` set to ``execute``) and then calls ``register(cls)``.
* Observers never set ``cls.__call__`` themselves: they add a *call wrapper*
  (``add_call_wrapper("metrics", wrap)``), a function from the call below it to the call
  to install. Every registered class, present and future, then runs the wrappers around
  its generated call, in the order they were added; ``remove_call_wrapper`` puts the
  rest back, so with none the class runs exactly the generated call (nothing measured).
  Metrics use it; an OpenTelemetry layer can add its own beside them.
* What LangGraph and ``inspect`` read of the installed call (``__signature__``,
  ``__wrapped__``, annotations, names) is the generated call's, whatever wraps it.
* ``execute_code(cls)`` is the code object a class's call runs, how the blocking detector
  recognises a node's frames on a stack.

A ``WeakKeyDictionary`` so a class defined in a test or a notebook cell is forgotten
with it.
"""

from __future__ import annotations

import dis
import inspect
import threading
import weakref
from collections.abc import Callable
from types import CellType, CodeType, FunctionType
from typing import Any

__all__ = [
    "CallWrapper",
    "CodeView",
    "WrappedExecute",
    "add_call_wrapper",
    "execute_code",
    "generated_call",
    "register",
    "registered",
    "remove_call_wrapper",
]

CallWrapper = Callable[[Callable[..., Any]], Callable[..., Any]]
"""Takes the call below it (the generated ``__call__`` or another wrapper's) and returns the
call to install; the result must be a coroutine function when the call below is one."""

_generated: weakref.WeakKeyDictionary[type[Any], Callable[..., Any]] = weakref.WeakKeyDictionary()
_wrappers: dict[str, CallWrapper] = {}
# Held while the installed calls change: classes are defined and wrappers added from any thread.
_lock = threading.RLock()

# What LangGraph and inspect read of a node's __call__: kept identical under every wrapper.
_CALL_METADATA = ("__signature__", "__wrapped__", "__doc__", "__module__", "__qualname__")


def register(cls: type[Any]) -> None:
    """Remember ``cls`` and its generated ``__call__`` (just installed by ``base_node``), and
    install the current wrappers around it."""
    with _lock:
        _generated[cls] = cls.__dict__["__call__"]
        _install(cls)


def registered() -> list[type[Any]]:
    """The node classes registered so far (abstract intermediates are never registered)."""
    with _lock:
        return list(_generated)


def generated_call(cls: type[Any]) -> Callable[..., Any] | None:
    """The ``__call__`` ``base_node`` generated for ``cls``, whatever is installed over it;
    ``None`` for a class that was never registered."""
    return _generated.get(cls)


def execute_code(cls: type[Any]) -> CodeType | None:
    """The code object of the ``execute`` that ``cls``'s generated call runs (its outermost
    decorator's, when decorated), or ``None`` when that is not a Python function."""
    execute = getattr(_generated.get(cls), "__wrapped__", None)
    code = getattr(execute, "__code__", None)
    return code if isinstance(code, CodeType) else None


def add_call_wrapper(key: str, wrap: CallWrapper) -> None:
    """Run ``wrap`` around the call of every node class, present and future.

    Idempotent per ``key``: adding a key already present changes nothing.
    """
    with _lock:
        if key in _wrappers:
            return
        _wrappers[key] = wrap
        for cls in list(_generated):
            _install(cls)


def remove_call_wrapper(key: str) -> None:
    """Stop running the wrapper added as ``key``; a no-op when there is none."""
    with _lock:
        if _wrappers.pop(key, None) is None:
            return
        for cls in list(_generated):
            _install(cls)


def _install(cls: type[Any]) -> None:
    generated = _generated[cls]
    call = generated
    for wrap in _wrappers.values():
        call = wrap(call)
        for attribute in _CALL_METADATA:
            setattr(call, attribute, getattr(generated, attribute))
        call.__annotations__ = dict(generated.__annotations__)
    cls.__call__ = call


# -- what LangGraph reads of a node class's code ---------------------------------------------
#
# LangGraph finds the graphs a node invokes (its subgraphs: get_state(subgraphs=True),
# get_subgraphs(), editing a paused subgraph's state) by reading the node function's code
# once, when the graph is compiled: langgraph.pregel._utils.get_function_nonlocals takes
# ``node.__func__`` or else ``node.__wrapped__`` (and that one's ``__func__``), and reads its
# captured values, the globals it names, attribute chains from both, and nested code.
# A node instance offers ``__wrapped__`` for that: a view whose ``__func__`` is a probe
# function that is ``execute`` as LangGraph reads it.


def _template() -> None:
    return None


def _attribute(value: Any, name: str) -> Any:
    try:
        return getattr(value, name, None)
    except Exception:  # a property failing while the graph compiles finds nothing there
        return None


def _self_chains(code: CodeType, self_name: str, node: object) -> list[Any]:
    """The values along every ``self.a.b`` chain ``code`` loads, nested defs included."""
    values: list[Any] = []
    codes = [(code, False)]
    for current, nested in codes:
        codes.extend(
            (const, True)
            for const in current.co_consts
            if isinstance(const, CodeType) and self_name in const.co_freevars
        )
        value: Any = None
        for instruction in dis.get_instructions(current):
            opname = instruction.opname
            argval = instruction.argval
            # self is a local of execute (LOAD_FAST*, or LOAD_DEREF once a nested def
            # captures it) and a free variable of the nested defs that capture it.
            if opname == "LOAD_DEREF" or (not nested and opname.startswith("LOAD_FAST")):
                name = argval[-1] if isinstance(argval, tuple) else argval
                value = node if name == self_name else None
            elif opname in ("LOAD_ATTR", "LOAD_METHOD") and value is not None:
                value = _attribute(value, argval)
                if value is not None:
                    values.append(value)
            else:
                value = None
    return values


def _probe(execute: Callable[..., Any], self_name: str, node: object) -> Callable[..., Any]:
    """A function LangGraph reads as it would read ``execute`` (never meant to be called).

    Its own code does nothing; ``execute``'s code is its nested code, its closure is
    ``execute``'s plus the values ``execute`` reaches through ``self`` (what a closure is to a
    function, attributes are to a class node), and its names are ``execute``'s names. It
    reads the function behind every ``__wrapped__`` (``functools.wraps`` decorators; LangGraph
    follows one, so an ``execute`` behind stacked decorators is still read).
    """
    try:
        target: Any = inspect.unwrap(execute)
    except ValueError:  # a __wrapped__ cycle
        target = execute
    target = getattr(target, "__func__", target)
    if not isinstance(target, FunctionType):
        return _template  # nothing LangGraph could read either (a partial, a builtin)
    code = target.__code__
    closure = target.__closure__ or ()
    # A wrapped function of the state alone (no self) has no self chains to follow.
    extra = _self_chains(code, self_name, node) if code.co_varnames[:1] == (self_name,) else []
    probe_code = _template.__code__.replace(
        co_consts=(*_template.__code__.co_consts, code),
        co_names=code.co_names,
        co_freevars=code.co_freevars + tuple(f"{self_name}:{i}" for i in range(len(extra))),
        co_name=code.co_name,
        co_qualname=code.co_qualname,
        co_filename=code.co_filename,
    )
    cells = closure + tuple(CellType(value) for value in extra)
    return FunctionType(probe_code, target.__globals__, code.co_name, None, cells or None)


class CodeView:
    """``node.__wrapped__``: the node's call signature, and ``execute``'s code for LangGraph.

    ``inspect.signature(node)`` reads ``__signature__`` (what LangGraph injects), LangGraph's
    subgraph detection reads ``__func__`` (built only when read: when a graph compiles, never
    during a run), and calling the view calls the node.
    """

    __slots__ = ("__signature__", "_execute", "_node", "_self_name")

    def __init__(
        self,
        node: Callable[..., Any],
        execute: Callable[..., Any],
        self_name: str,
        signature: inspect.Signature,
    ) -> None:
        self._node = node
        self._execute = execute
        self._self_name = self_name
        self.__signature__ = signature

    @property
    def __func__(self) -> Callable[..., Any]:
        return _probe(self._execute, self._self_name, self._node)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._node(*args, **kwargs)


class WrappedExecute:
    """The ``__wrapped__`` descriptor of node classes: a ``CodeView`` for each instance.

    On the class itself there is no such attribute, so ``inspect.signature(NodeClass)``
    still describes the constructor.
    """

    def __get__(self, node: object, owner: type[Any] | None = None) -> CodeView:
        if node is None:
            raise AttributeError("__wrapped__")
        execute, self_name, signature = type(node)._execute_code  # type: ignore[attr-defined]
        return CodeView(node, execute, self_name, signature)  # type: ignore[arg-type]
