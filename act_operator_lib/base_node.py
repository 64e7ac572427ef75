"""Class-based LangGraph nodes: subclass, implement ``execute``, add an instance to a graph.

    class Greet(AsyncBaseNode):
        async def execute(self, state: State, runtime: Runtime[Ctx]) -> dict[str, Any]:
            return {"greeting": f"hello {runtime.context.user}"}

    builder.add_node(Greet())  # a node named "Greet"

The parameters ``execute`` declares after ``state`` decide what LangGraph injects, exactly
as for a function node: ``config`` (the ``RunnableConfig``), ``runtime``
(``langgraph.runtime.Runtime``), ``error`` (``langgraph.errors.NodeError``, for a node used
as an error handler), and the older ``store``, ``writer`` and ``previous``; in any order,
positional or keyword-only, annotated as LangGraph requires (checked when the class is
defined; string annotations of ``from __future__ import annotations`` are resolved then).

The signature is checked once, when the class is defined, and a ``__call__`` matching it
is generated for the class, so a call costs one extra frame and no inspection. What
``execute`` returns reaches LangGraph untouched, which accepts or refuses it as it would
from a function node. ``node.__wrapped__`` shows LangGraph ``execute``'s code, so a graph
invoked inside ``execute`` is the node's subgraph, as inside a function node.
"""

from __future__ import annotations

import abc
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from langchain_core.runnables import RunnableConfig
from langgraph.errors import NodeError
from langgraph.store.base import BaseStore
from langgraph.types import StreamWriter

from act_operator_lib._internal import node_classes

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

__all__ = ["AsyncBaseNode", "BaseNode", "get_tags", "get_thread_id"]

logger = logging.getLogger("act_operator_lib.nodes")

_EMPTY = inspect.Parameter.empty

# What LangGraph 1.2 injects into a node function, by parameter name, and the annotations
# under which it does (None: whatever the annotation). The same table as LangGraph's
# RunnableCallable reads (langgraph._internal._runnable.KWARGS_CONFIG_KEYS, private, so
# tests/core/test_definition.py holds the two equal), plus `X | None` spelled as a union
# where LangGraph only matches Optional[X].
_INJECTED: dict[str, tuple[Any, ...] | None] = {
    "config": (_EMPTY, RunnableConfig, Optional[RunnableConfig]),  # noqa: UP045
    "runtime": None,
    "error": (NodeError,),
    "store": (_EMPTY, BaseStore, Optional[BaseStore]),  # noqa: UP045
    "writer": (_EMPTY, StreamWriter),
    "previous": None,
}
_ALLOWED = ", ".join(_INJECTED)
_SPELLED = {
    "config": "RunnableConfig or RunnableConfig | None (or left unannotated)",
    "error": "NodeError",
    "store": "BaseStore or BaseStore | None (or left unannotated)",
    "writer": "StreamWriter (or left unannotated)",
}
# The types LangGraph also recognises by their spelling alone.
_KNOWN: dict[str, Any] = {
    "RunnableConfig": RunnableConfig,
    "NodeError": NodeError,
    "BaseStore": BaseStore,
    "StreamWriter": StreamWriter,
}
_NO_MATCH = object()


def get_thread_id(config: RunnableConfig | None) -> str | None:
    """The ``thread_id`` of a run's config, or ``None`` when there is none."""
    if not config:
        return None
    thread_id = config.get("configurable", {}).get("thread_id")
    return None if thread_id is None else str(thread_id)


def get_tags(config: RunnableConfig | None) -> list[str]:
    """The tags of a run's config, or ``[]`` when there are none."""
    if not config:
        return []
    return list(config.get("tags") or ())


class _Node(abc.ABC):
    """What BaseNode and AsyncBaseNode share: naming, logging, class-time validation."""

    _is_async: ClassVar[bool]
    _execute_code: ClassVar[tuple[Callable[..., Any], str, inspect.Signature]]
    # LangGraph reads a node's code through __wrapped__ to find the graphs it invokes.
    __wrapped__ = node_classes.WrappedExecute()
    name: str
    """The node's name in a graph: the class name unless given to the constructor."""
    verbose: bool = False
    """When true, ``self.log`` writes through the ``logging`` module."""

    def __init__(self, *, name: str | None = None, verbose: bool = False) -> None:
        self.name = name or type(self).__name__
        self.verbose = verbose
        # StateGraph.add_node(node) names a node after its __name__.
        self.__name__ = self.name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__ and cls.__name__ in ("BaseNode", "AsyncBaseNode"):
            return
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        if "__call__" in cls.__dict__:
            raise TypeError(
                f"{cls.__qualname__} defines __call__; a node implements execute(self, state, ...)"
                " and its __call__ is generated"
            )
        execute = inspect.getattr_static(cls, "execute", None)
        if execute is None:
            kind = "async def" if cls._is_async else "def"
            raise TypeError(
                f"{cls.__qualname__} has no execute(); define `{kind} execute(self, state)`"
                f" (optionally also taking any of {_ALLOWED})"
            )
        if getattr(execute, "__isabstractmethod__", False):
            return  # an abstract intermediate class; its concrete subclasses are checked
        injected = _validate_execute(cls, execute)
        cls.__call__ = _build_call(cls, execute, injected)  # type: ignore[method-assign]
        # Metrics, when enabled, swap this __call__ for an instrumented one (and back).
        node_classes.register(cls)

    def log(self, message: str, **context: Any) -> None:
        """Log ``message`` with the node's name and ``context``, only when ``verbose``."""
        if self.verbose:
            details = "".join(f" {key}={value!r}" for key, value in context.items())
            logger.info("[%s] %s%s", self.name, message, details, extra={"node": self.name})

    @staticmethod
    def get_thread_id(config: RunnableConfig | None) -> str | None:
        """The ``thread_id`` of a run's config, or ``None`` when there is none."""
        return get_thread_id(config)

    @staticmethod
    def get_tags(config: RunnableConfig | None) -> list[str]:
        """The tags of a run's config, or ``[]`` when there are none."""
        return get_tags(config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class BaseNode(_Node):
    """A synchronous node: implement ``def execute(self, state[, config][, runtime])``.

    ``execute`` may also take ``error: NodeError`` (a node used as an error handler) and the
    older ``store``, ``writer`` and ``previous``. Add an instance to a graph, or call it alone
    in a unit test (what it does not receive is then ``None``):

        class Count(BaseNode):
            def execute(self, state: State) -> dict[str, Any]:
                return {"count": state["count"] + 1}

        builder.add_node(Count())
        Count()({"count": 1})  # {'count': 2}
    """

    _is_async = False

    if TYPE_CHECKING:

        def __call__(
            self,
            state: Any,
            config: RunnableConfig | None = None,
            runtime: Runtime[Any] | None = None,
            **injected: Any,
        ) -> Any: ...


class AsyncBaseNode(_Node):
    """An asynchronous node: implement ``async def execute(self, state[, config][, runtime])``.

    Takes the same parameters as ``BaseNode.execute``. Run graphs holding one with
    ``ainvoke`` / ``astream``.

        class Fetch(AsyncBaseNode):
            async def execute(self, state: State, runtime: Runtime[Ctx]) -> dict[str, Any]:
                return {"page": await runtime.context.client.get(state["url"])}
    """

    _is_async = True

    if TYPE_CHECKING:

        async def __call__(
            self,
            state: Any,
            config: RunnableConfig | None = None,
            runtime: Runtime[Any] | None = None,
            **injected: Any,
        ) -> Any: ...


def _resolve(annotation: Any, execute: Callable[..., Any]) -> Any:
    """``annotation`` evaluated as ``typing.get_type_hints`` would, or by its spelling."""
    if not isinstance(annotation, str):
        return annotation
    # Hints resolve in the module of the innermost __wrapped__ (a decorated execute).
    namespace: Any = execute
    while hasattr(namespace, "__wrapped__"):
        namespace = namespace.__wrapped__
    try:
        # A copy, so eval's __builtins__ entry stays out of the user's module.
        return eval(annotation, dict(getattr(namespace, "__globals__", {})))
    except Exception:
        pass
    # Not evaluable when the class is defined (a TYPE_CHECKING import, a later name): read
    # the spelling, as LangGraph does for the names it knows.
    text = annotation.replace(" ", "")
    optional = text.startswith(("Optional[", "typing.Optional[")) and text.endswith("]")
    if optional:
        parts = [text[text.index("[") + 1 : -1]]
    else:
        parts = [part for part in text.split("|") if part != "None"]
        optional = len(parts) == 1 and text.count("|") == 1
    known = _KNOWN.get(parts[0].rsplit(".", 1)[-1]) if len(parts) == 1 else None
    if known is None:
        return annotation
    return Optional[known] if optional else known  # noqa: UP045


def _validate_execute(cls: type[_Node], execute: object) -> tuple[inspect.Parameter, ...]:
    """Check ``cls.execute`` and return its parameters after ``state``, as LangGraph must see
    them: each annotation one LangGraph matches, each defaulting to ``None``."""
    where = f"{cls.__qualname__}.execute()"
    if isinstance(execute, staticmethod | classmethod):
        raise TypeError(
            f"{where} is a {type(execute).__name__}; it must be a plain method taking self"
        )
    if not inspect.isfunction(execute):
        raise TypeError(f"{where} must be a function, got {type(execute).__name__}")
    if inspect.isgeneratorfunction(execute) or inspect.isasyncgenfunction(execute):
        raise TypeError(
            f"{where} is a generator; a node returns its update (stream through runtime.stream_writer)"
        )
    is_async = inspect.iscoroutinefunction(execute)
    if is_async and not cls._is_async:
        raise TypeError(f"{where} is async def; subclass AsyncBaseNode for async nodes")
    if cls._is_async and not is_async:
        raise TypeError(f"{where} must be async def in an AsyncBaseNode; subclass BaseNode for def")

    params = list(inspect.signature(execute).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) < 2 or params[0].kind not in positional:
        raise TypeError(
            f"{where} must take (self, state, ...), got ({', '.join(map(str, params))})"
        )
    state = params[1]
    if state.name != "state" or state.kind not in positional:
        raise TypeError(
            f"{where} has first parameter '{state.name}' after self; it must be a positional 'state'"
        )
    injected: list[inspect.Parameter] = []
    for param in params[2:]:
        if param.name not in _INJECTED:
            raise TypeError(
                f"{where} has parameter '{param.name}'; allowed after 'state': {_ALLOWED}"
            )
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(
                f"{where} has parameter '{param}'; {param.name} must be a normal or keyword-only"
                " parameter"
            )
        annotation = param.annotation
        accepted = _INJECTED[param.name]
        if accepted is not None:
            resolved = _resolve(annotation, execute)
            match = next((kind for kind in accepted if kind == resolved), _NO_MATCH)
            if match is _NO_MATCH:
                if annotation is _EMPTY:
                    got = "no annotation"
                elif isinstance(annotation, str):
                    got = repr(annotation)
                else:
                    got = repr(inspect.formatannotation(annotation))
                raise TypeError(
                    f"{where} parameter '{param.name}' must be annotated"
                    f" {_SPELLED[param.name]} for LangGraph to inject it, got {got}"
                )
            # The very object LangGraph compares the annotation with.
            annotation = match
        injected.append(param.replace(annotation=annotation, default=None))
    return tuple(injected)


# The generated __call__ has exactly the parameters execute declares, each defaulting to
# None so a node is callable alone, and passes them on as execute takes them. Generating
# it (as dataclasses does) keeps a call to one frame with no per-call lookups. What the
# node returns goes to LangGraph untouched: only LangGraph knows whether the graph has one
# root channel and whether the input was a Send payload, so only it can judge the update.
_CALL_SOURCE = """\
{async_}def __call__(self, state{params}):
    return {await_}execute(self, state{args})
"""


def _build_call(
    cls: type[_Node], execute: Any, injected: tuple[inspect.Parameter, ...]
) -> Callable[..., Any]:
    is_async = cls._is_async
    params = args = ""
    keyword_only = False
    for param in injected:
        if param.kind is param.KEYWORD_ONLY:
            if not keyword_only:
                params += ", *"
                keyword_only = True
            args += f", {param.name}={param.name}"
        else:
            args += f", {param.name}"
        params += f", {param.name}=None"
    source = _CALL_SOURCE.format(
        async_="async " if is_async else "",
        await_="await " if is_async else "",
        params=params,
        args=args,
    )
    namespace: dict[str, Any] = {}
    exec(source, {"execute": execute}, namespace)
    call: Callable[..., Any] = namespace["__call__"]

    # LangGraph reads what to inject from inspect.signature(node) and the input schema and
    # Command routes from typing.get_type_hints(node.__call__): expose execute's own hints
    # (resolved in the user's module through __wrapped__) and a signature whose injected
    # parameters carry annotations LangGraph matches.
    self_param, state = list(inspect.signature(execute).parameters.values())[:2]
    signature = inspect.signature(execute).replace(parameters=[self_param, state, *injected])
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__wrapped__ = execute  # type: ignore[attr-defined]
    call.__annotations__ = dict(execute.__annotations__)
    call.__doc__ = execute.__doc__
    call.__module__ = cls.__module__
    call.__qualname__ = f"{cls.__qualname__}.__call__"
    # What node.__wrapped__ shows LangGraph: the signature without self, and execute's code.
    cls._execute_code = (
        execute,
        self_param.name,
        signature.replace(parameters=[state, *injected]),
    )
    return call
