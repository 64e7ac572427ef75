"""OpenTelemetry machinery behind ``act_operator_lib.tracing`` (imports opentelemetry-api).

Only ``tracing.enable()`` imports this module, so the library runs without the ``otel``
extra. Everything here reads LangGraph's identities from the task's config, which LangGraph
puts in ``var_child_runnable_config`` before calling a node.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import FrameType
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.errors import GraphBubbleUp, GraphInterrupt, ParentCommand
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
)

from act_operator_lib._internal.metric_types import Metric

INSTRUMENTATION = "act_operator_lib"
RUNS_ENV = "ACT_OPERATOR_LIB_OTEL_RUNS"
"""While set, LangChain's configure hook adds ``RunSpans`` to every callback manager."""

# -- which tracer ------------------------------------------------------------------------

_tracer: Tracer | None = None
_provider: TracerProvider | None = None  # None: follow the global provider


def configure(provider: TracerProvider | None) -> None:
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)


def live_tracer() -> Tracer | None:
    """The tracer to use, or ``None`` while no real provider is configured (the one check)."""
    global _tracer
    tracer = _tracer
    if tracer is not None:
        return tracer
    if _provider is not None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
        return None
    # The global provider is set once for the process: remember its tracer.
    tracer = _tracer = provider.get_tracer(INSTRUMENTATION)
    return tracer


# -- the run span ------------------------------------------------------------------------
#
# LangGraph starts a root chain run per invoke; a node task's callback manager names that
# run as its parent. The handler remembers each root run (and which root every nested
# chain belongs to) and ends the run's span when the run ends; the span itself is started
# by the first traced node of a run that has no current span, dated back to the run's start.


class _Run:
    __slots__ = ("lock", "name", "span", "start_ns")

    def __init__(self, name: str, start_ns: int) -> None:
        self.name = name
        self.start_ns = start_ns
        self.span: Span | None = None
        self.lock = threading.Lock()


_roots: dict[UUID, _Run] = {}
_root_of: dict[UUID, UUID] = {}


class RunSpans(BaseCallbackHandler):
    """Ends each graph run's span when the run ends (added by LangChain's configure hook)."""

    run_inline = True  # in the caller's context, never in an executor
    ignore_llm = ignore_retriever = ignore_agent = ignore_chat_model = True

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if parent_run_id is None:
            _roots[run_id] = _Run(str(kwargs.get("name") or "graph"), time.time_ns())
        else:
            root = _root_of.get(parent_run_id, parent_run_id)
            if root in _roots:
                _root_of[run_id] = root

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._ended(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._ended(run_id, error)

    @staticmethod
    def _ended(run_id: UUID, error: BaseException | None) -> None:
        if _root_of.pop(run_id, None) is not None:
            return
        run = _roots.pop(run_id, None)
        if run is None:
            return
        with run.lock:
            span, run.span = run.span, None
        if span is not None:
            if error is not None:
                fail(span, error)
            span.end()


def _run_parent(tracer: Tracer, config: Mapping[str, Any], thread_id: Any) -> Any:
    """The context holding this run's span (started now if needed), or ``None``."""
    callbacks = config.get("callbacks")
    parent_id = getattr(callbacks, "parent_run_id", None)
    if parent_id is None:
        return None
    run = _roots.get(_root_of.get(parent_id, parent_id))
    if run is None:
        return None
    with run.lock:
        span = run.span
        if span is None:
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.workflow.name": run.name,
                "langgraph.graph.name": run.name,
            }
            if thread_id is not None:
                attributes["gen_ai.conversation.id"] = str(thread_id)
            span = run.span = tracer.start_span(
                f"invoke_workflow {run.name}",
                context=otel_context.Context(),  # a root: nothing current at the run's start
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                start_time=run.start_ns,
            )
    return trace.set_span_in_context(span)


# -- node spans --------------------------------------------------------------------------

# The config a node span was opened for: a node called directly by another node's execute
# sees its caller's config and is named by its own name, not the graph node's.
_serving: ContextVar[object] = ContextVar("act_operator_lib_otel_serving", default=None)


# Whether runs get spans (``enable(run_spans=...)``): otherwise a node never looks for one.
run_spans = False


def _start(tracer: Tracer, own_name: str) -> tuple[Span, object, object]:
    config: Any = var_child_runnable_config.get()
    attributes: dict[str, Any]
    parent = None
    if config is None or config is _serving.get():
        name = own_name
        attributes = {"langgraph.node.name": name}
    else:
        metadata = config.get("metadata") or {}
        configurable = config.get("configurable") or {}
        name = metadata.get("langgraph_node", own_name)
        attributes = {"langgraph.node.name": name}
        step = metadata.get("langgraph_step")
        if step is not None:
            attributes["langgraph.step"] = step
        thread_id = configurable.get("thread_id")
        if thread_id is not None:
            attributes["gen_ai.conversation.id"] = str(thread_id)
        info = getattr(configurable.get("__pregel_runtime"), "execution_info", None)
        if info is not None:
            attributes["langgraph.task.id"] = info.task_id
            attributes["langgraph.node.attempt"] = info.node_attempt
            if info.checkpoint_ns:
                attributes["langgraph.checkpoint.ns"] = info.checkpoint_ns
        if run_spans and not trace.get_current_span().get_span_context().is_valid:
            parent = _run_parent(tracer, config, thread_id)
    span = tracer.start_span(
        f"node {name}", context=parent, kind=SpanKind.INTERNAL, attributes=attributes
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token, _serving.set(config)


def fail(span: Span, error: BaseException) -> None:
    """What an exception leaving a span means: control flow, a cancellation or a failure."""
    if isinstance(error, GraphBubbleUp):
        # interrupt() and Command(graph=PARENT) travel as exceptions; they are not failures.
        if isinstance(error, GraphInterrupt):
            span.add_event("langgraph.interrupt")
        elif isinstance(error, ParentCommand):
            span.add_event("langgraph.parent_command")
        else:
            span.add_event("langgraph.bubble_up", {"exception.type": type(error).__name__})
        return
    if isinstance(error, asyncio.CancelledError):
        span.add_event("cancelled")
        return
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _finish(span: Span, token: object, serving: object, error: BaseException | None) -> None:
    if error is not None:
        fail(span, error)
    if _stalls:
        _stall_event(span, time.time_ns())
    _serving.reset(serving)  # type: ignore[arg-type]
    otel_context.detach(token)  # type: ignore[arg-type]
    span.end()


def traced_call(plain: Callable[..., Any]) -> Callable[..., Any]:
    """A node class's ``__call__`` that runs ``plain`` inside the node's span."""
    call: Callable[..., Any]
    if inspect.iscoroutinefunction(plain):

        async def acall(self: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
            tracer = _tracer or live_tracer()
            if tracer is None:
                return await plain(self, state, *args, **kwargs)
            span, token, serving = _start(tracer, self.name)
            try:
                result = await plain(self, state, *args, **kwargs)
            except BaseException as error:
                _finish(span, token, serving, error)
                raise
            _finish(span, token, serving, None)
            return result

        call = acall
    else:

        def call(self: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
            tracer = _tracer or live_tracer()
            if tracer is None:
                return plain(self, state, *args, **kwargs)
            span, token, serving = _start(tracer, self.name)
            try:
                result = plain(self, state, *args, **kwargs)
            except BaseException as error:
                _finish(span, token, serving, error)
                raise
            _finish(span, token, serving, None)
            return result

    return call  # node_classes gives it the generated call's signature and names


def traced_function(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A function node running inside its span; LangGraph sees ``fn``'s signature."""
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _tracer or live_tracer()
            if tracer is None or not enabled:
                return await fn(*args, **kwargs)
            span, token, serving = _start(tracer, name)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as error:
                _finish(span, token, serving, error)
                raise
            _finish(span, token, serving, None)
            return result

        wrapper = awrapper
    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _tracer or live_tracer()
            if tracer is None or not enabled:
                return fn(*args, **kwargs)
            span, token, serving = _start(tracer, name)
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                _finish(span, token, serving, error)
                raise
            _finish(span, token, serving, None)
            return result

    return wrapper


enabled = False


# -- client spans and events -------------------------------------------------------------


class ClientSpan:
    """A client span made current for the ``with`` block; ``set`` adds an attribute."""

    __slots__ = ("_span", "_token")

    def __init__(self, tracer: Tracer, name: str, attributes: Mapping[str, Any]) -> None:
        self._span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        self._token: object = None

    def set(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)

    def __enter__(self) -> ClientSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if error is not None:
            fail(self._span, error)
        self._span.end()


def instrumented(target: str) -> bool:
    """Whether the instrumentation ``"module:Instrumentor"`` is imported and instrumenting.

    Reads the instrumentor's singleton (``BaseInstrumentor`` keeps it on the class) rather
    than calling the class, whose ``__init__`` may reset options the application chose.
    """
    module, _, name = target.partition(":")
    loaded = sys.modules.get(module)
    if loaded is None:
        return False
    instance = getattr(getattr(loaded, name, None), "_instance", None)
    return bool(getattr(instance, "is_instrumented_by_opentelemetry", False))


def client_span(name: str, attributes: Mapping[str, Any]) -> ClientSpan | None:
    tracer = _tracer or live_tracer()
    if tracer is None:
        return None
    return ClientSpan(tracer, name, attributes)


def add_event(name: str, attributes: Mapping[str, Any]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


def set_attribute(key: str, value: Any) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(key, value)


# -- recipe events and event-loop stalls -------------------------------------------------


def metric_event(
    metric: Metric,
    value: float,
    labels: Mapping[str, str],
    details: Mapping[str, str | float] | None,
) -> None:
    """The metrics sink: each recorded value is an event, named after the declared metric,
    on the current span (the node's, inside one), with the value, labels and details."""
    if not metric.recorded or metric.name == STALL:
        return  # node spans say it already; stalls go on the span they blocked (below)
    span = trace.get_current_span()
    if span.is_recording():
        attributes: dict[str, Any] = {"value": value, **labels}
        if details:
            attributes.update(details)
        span.add_event(metric.name, attributes)


STALL = "event_loop_stall_seconds"

# Node spans an event-loop stall is blocking now, with the stall's start (wall clock, ns) and
# node: written by the BlockingDetector's watchdog thread, taken by whichever comes first of
# the node span's end (the stall lasted until then, as far as the node is concerned) and
# the detector's next heartbeat (which knows the stall's duration).
_stalls: dict[Span, tuple[int, str | None]] = {}


def _node_codes() -> frozenset[object]:
    async def acoro(self: Any, state: Any) -> None:
        return None

    def sync(self: Any, state: Any) -> None:
        return None

    calls = (traced_call(acoro), traced_call(sync), traced_function(acoro, ""))
    return frozenset(call.__code__ for call in (*calls, traced_function(sync, "")))


def stall_began(frame: FrameType, start_ns: int, node: str | None) -> Span | None:
    """Called by the watchdog while the loop thread is blocked at ``frame``: remember the
    innermost node span on that stack (a local of the traced call's frame)."""
    codes = _NODE_CODES
    current: FrameType | None = frame
    while current is not None:
        if current.f_code in codes:
            span = current.f_locals.get("span")
            if isinstance(span, Span) and span.is_recording():
                # The stall may have begun before the node did (the heartbeat is periodic).
                began = max(start_ns, getattr(span, "start_time", None) or 0)
                _stalls[span] = (began, node)
                return span
            return None
        current = current.f_back
    return None


def stall_ended(span: Span, duration: float) -> None:
    """The detector's heartbeat ran again: the stall lasted ``duration`` seconds."""
    found = _stalls.pop(span, None)
    if found is not None:
        _add_stall(span, found, duration)


def _stall_event(span: Span, now_ns: int) -> None:
    found = _stalls.pop(span, None)
    if found is not None:
        _add_stall(span, found, (now_ns - found[0]) / 1e9)


def _add_stall(span: Span, found: tuple[int, str | None], duration: float) -> None:
    start_ns, node = found
    attributes: dict[str, Any] = {"value": duration}
    if node is not None:
        attributes["node"] = node
    span.add_event(STALL, attributes, timestamp=start_ns)


_NODE_CODES = _node_codes()
