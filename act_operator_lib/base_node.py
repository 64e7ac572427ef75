"""Class-based LangGraph nodes: subclass, implement ``execute``, add an instance to a graph.

    class Greet(AsyncBaseNode):
        async def execute(self, state: State, runtime: Runtime[Ctx]) -> dict[str, Any]:
            return {"greeting": f"hello {runtime.context.user}"}

    builder.add_node(Greet())  # a node named "Greet"

The parameters ``execute`` declares after ``state`` decide what LangGraph injects,
exactly as for a function node: ``config`` (the ``RunnableConfig``) and/or ``runtime``
(``langgraph.runtime.Runtime``), in any order, positional or keyword-only.

The signature is checked once, when the class is defined, and a ``__call__`` matching it
is generated for the class, so a call costs one extra frame and no inspection.
"""

from __future__ import annotations

import abc
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.types import Command

from act_operator_lib._internal import node_classes

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

__all__ = ["AsyncBaseNode", "BaseNode", "get_tags", "get_thread_id"]

logger = logging.getLogger("act_operator_lib.nodes")

_INJECTABLE = ("config", "runtime")
_ALLOWED = ", ".join(_INJECTABLE)


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
                f" (optionally also taking {_ALLOWED})"
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

    Add an instance to a graph, or call it alone in a unit test:

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
        ) -> Any: ...


class AsyncBaseNode(_Node):
    """An asynchronous node: implement ``async def execute(self, state[, config][, runtime])``.

    Run graphs holding one with ``ainvoke`` / ``astream``.

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
        ) -> Any: ...


def _validate_execute(cls: type[_Node], execute: object) -> tuple[str, ...]:
    """Check ``cls.execute`` and return the names it takes after ``state``, in order."""
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
    injected: list[str] = []
    for param in params[2:]:
        if param.name not in _INJECTABLE:
            raise TypeError(
                f"{where} has parameter '{param.name}'; allowed after 'state': {_ALLOWED}"
            )
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(
                f"{where} has parameter '{param}'; {param.name} must be a normal or keyword-only"
                " parameter"
            )
        injected.append(param.name)
    return tuple(injected)


# The generated __call__ has exactly the parameters execute declares, each defaulting to
# None so a node is callable alone, and passes them by keyword (valid for both kinds).
# Generating it (as dataclasses does) keeps a call to one frame with no per-call lookups.
_CALL_SOURCE = """\
{async_}def __call__(self, state{params}):
    result = {await_}execute(self, state{args})
    if result is None or result.__class__ is dict:
        return result
    return check_return(self, result, state)
"""


def _build_call(cls: type[_Node], execute: Any, injected: tuple[str, ...]) -> Callable[..., Any]:
    is_async = cls._is_async
    source = _CALL_SOURCE.format(
        async_="async " if is_async else "",
        await_="await " if is_async else "",
        params="".join(f", {name}=None" for name in injected),
        args="".join(f", {name}={name}" for name in injected),
    )
    namespace: dict[str, Any] = {}
    exec(source, {"execute": execute, "check_return": _check_return}, namespace)
    call: Callable[..., Any] = namespace["__call__"]

    # LangGraph reads what to inject from inspect.signature(node) and the input schema and
    # Command routes from typing.get_type_hints(node.__call__): expose execute's own hints
    # (resolved in the user's module through __wrapped__) and a signature whose `config`
    # LangGraph recognises however the user annotated it.
    signature = inspect.signature(execute)
    parameters = [
        p.replace(annotation=RunnableConfig, default=None)
        if p.name == "config"
        else p.replace(default=None)
        if p.name == "runtime"
        else p
        for p in signature.parameters.values()
    ]
    call.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    call.__wrapped__ = execute  # type: ignore[attr-defined]
    call.__annotations__ = dict(execute.__annotations__)
    call.__doc__ = execute.__doc__
    call.__module__ = cls.__module__
    call.__qualname__ = f"{cls.__qualname__}.__call__"
    return call


def _check_return(node: _Node, result: object, state: object) -> object:
    """Accept what LangGraph accepts from a function node; name the node otherwise."""
    if isinstance(result, Mapping | Command | Runnable):
        return result
    if isinstance(result, list | tuple) and any(isinstance(item, Command) for item in result):
        return result
    result_type = type(result)
    # A graph whose state is a single value (e.g. Annotated[list, add]) takes that value;
    # a dataclass / pydantic / annotated state class is read field by field.
    if result_type is type(state) or any(
        inspect.get_annotations(klass) for klass in result_type.__mro__[:-1]
    ):
        return result
    if inspect.iscoroutine(result):
        result.close()  # never awaited: close it rather than warn later
    raise TypeError(
        f"node {node.name!r} returned {result_type.__name__}; a node returns a dict of state"
        " updates, a Command, a list of Commands, None, or an instance of the state schema"
    )
